"""The event loop a run goes on: asyncio's own, or uvloop when asked for.

``ORCHESTRATOR_EVENT_LOOP=uvloop`` runs ``orchestrator run`` on uvloop (libuv, in C; the
``uvloop`` extra installs it), so that the reaction benchmark can compare the two loops
on the same code path (``benchmarks/bench.py --loops uvloop,asyncio``). It is not the
default: measured side by side on a busy two-core machine, uvloop moved neither the
waiter's reaction nor its confirming read by more than the spread between runs (see
the README's benchmark section), and a loop of its own is one more way for signals,
child processes and TLS to behave differently from what the tests run on.

Imported only by the commands that start a loop: ``--help`` and ``--version`` never pay
for it, and uvloop is imported only when chosen.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: The environment variable that chooses the loop.
ENV = "ORCHESTRATOR_EVENT_LOOP"
CHOICES = ("asyncio", "uvloop")


class LoopChoiceError(ValueError):
    """The environment asks for a loop that is unknown or not installed."""


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the run's loop (None: asyncio's own), as ``ORCHESTRATOR_EVENT_LOOP`` says."""
    choice = (choice if choice is not None else os.environ.get(ENV, "")).strip().lower()
    if choice in ("", "asyncio"):
        return None
    if choice != "uvloop":
        raise LoopChoiceError(
            f"{ENV} (environment): expected asyncio or uvloop, got {choice[:40]!r}"
        )
    try:
        import uvloop
    except ImportError as exc:
        raise LoopChoiceError(
            f"{ENV} (environment): uvloop is not installed ({exc}); "
            "install with: pip install 'orchestrator[uvloop]'"
        ) from None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which loop runs (the benchmark records it)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, choice: str | None = None) -> T:
    """``asyncio.run(main)``, on the chosen loop."""
    try:
        factory = loop_factory(choice)
    except LoopChoiceError:
        main.close()  # never started: no "was never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
