"""Work that the flows of one run share: done once, its proof taken by the others.

Flows running side by side all start with the same step (install the provider).
Letting each do it would send the backend N installs racing on one Helm
release; instead the first flow to get there does it, and the others wait for
that answer and take it. If the first one fails, the next tries in its turn:
a failure is never shared, only a success.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")


@dataclass(frozen=True)
class Proof(Generic[T]):
    """A success of shared work: who achieved it, when (monotonic), and what it gave."""

    by: str
    at: float
    value: T
    #: True for the caller that did the work, False for those that took its proof.
    here: bool = False

    @property
    def age(self) -> float:
        """Seconds since the work succeeded."""
        return time.monotonic() - self.at


@dataclass
class _Slot:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    proof: Proof[Any] | None = None


class OncePerRun:
    """A gate shared by the flows of one run: each key's work succeeds at most once.

    ::

        proof = await gate.once("install:kaito", flow.name, install)
        proof.here  # True in the flow that installed, False in the ones that waited

    Keys are the caller's choice: one per provider lets a run that tests KAITO and
    KubeRay install each once.
    """

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    async def once(self, key: str, who: str, work: Callable[[], Awaitable[T]]) -> Proof[T]:
        """Run ``work`` unless a flow of this run already succeeded at ``key``.

        The callers of one key queue: the first runs ``work``; the next ones wait, then
        take its proof, or run ``work`` themselves if it raised.
        """
        slot = self._slots.setdefault(key, _Slot())
        async with slot.lock:
            if slot.proof is not None:
                proof: Proof[T] = slot.proof
                return proof
            value = await work()
            slot.proof = Proof(who, time.monotonic(), value)
            return Proof(who, slot.proof.at, value, here=True)

    def proof(self, key: str) -> Proof[Any] | None:
        """The success recorded at ``key``, if any (without waiting)."""
        slot = self._slots.get(key)
        return slot.proof if slot else None
