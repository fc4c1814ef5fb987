"""Fault knobs and the timeline: how a test makes the sandbox misbehave, and sees when it moved.

The orchestrator has to fail fast and name the cause when KubeFoundry, KAITO or the
model misbehave. Each knob here makes one such failure happen on demand, at start or
while a run is in flight (``POST /_sandbox/faults``), so every diagnostic path of the
flow can be exercised without a broken cluster.
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

InferenceFault = Literal["ok", "malformed", "empty", "wrong_object"]


class Delays(BaseModel):
    """Seconds the stand-ins wait before each step, small so that a whole flow takes seconds."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    resource: float = Field(0.2, ge=0, description="Workspace seen -> ResourceReady, pod and services")
    pod_start: float = Field(0.3, ge=0, description="pod created -> Running (fake-kubelet/delay)")
    inference_ready: float = Field(0.2, ge=0, description="pod Running and model up -> InferenceReady")


class Faults(BaseModel):
    """Everything that can be made to go wrong; the defaults are a healthy installation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    install_fails: bool = False
    never_ready: bool = False
    image_pull_error: bool = False
    crash_loop: bool = False
    inference: InferenceFault = "ok"
    model_loading_seconds: float = Field(0, ge=0)
    stuck_delete: bool = False
    backend_errors: int = Field(0, ge=0)
    delays: Delays = Field(default_factory=Delays)


class TimelineEntry(BaseModel):
    """One moment the sandbox changed something a flow waits for."""

    at: str
    elapsed: float
    namespace: str
    name: str
    event: str


class SandboxState:
    """The faults in force and the timeline, shared by the stand-ins of one sandbox.

    Faults are read at the moment they matter, and every change wakes whoever waits
    on a delay, so shortening a delay at run time takes effect at once.
    """

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults.model_copy(deep=True) if faults else Faults()
        self.timeline: list[TimelineEntry] = []
        self._started = time.monotonic()
        self._changed = asyncio.Event()

    def update(self, patch: dict[str, Any]) -> Faults:
        """Merge a partial JSON object into the faults (nested ``delays`` too) and validate it."""
        merged = self.faults.model_dump()
        for key, value in patch.items():
            if key == "delays" and isinstance(value, dict):
                merged["delays"].update(value)
            else:
                merged[key] = value
        self.faults = Faults.model_validate(merged)
        self._notify()
        return self.faults

    def take_backend_error(self) -> bool:
        """Consume one of the ``backend_errors`` if any are left."""
        if self.faults.backend_errors <= 0:
            return False
        self.faults.backend_errors -= 1
        return True

    def record(self, namespace: str, name: str, event: str) -> None:
        self.timeline.append(
            TimelineEntry(
                at=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                elapsed=round(time.monotonic() - self._started, 3),
                namespace=namespace,
                name=name,
                event=event,
            )
        )
        self._notify()

    async def wait_recorded(self, name: str, event: str) -> TimelineEntry:
        """Wait until the timeline has ``event`` for the object ``name`` (for tests: no polling)."""
        while True:
            for entry in self.timeline:
                if entry.name == name and entry.event == event:
                    return entry
            await self._changed.wait()

    async def wait_delay(self, which: str, since: float) -> None:
        """Wait until ``delays.<which>`` seconds have passed since ``since`` (a monotonic time).

        The delay is re-read whenever the faults change.
        """
        while True:
            remaining = since + getattr(self.faults.delays, which) - time.monotonic()
            if remaining <= 0:
                return
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def until(self, predicate: Callable[[Faults], bool]) -> None:
        """Wait until the faults satisfy ``predicate`` (lets a test lift a fault mid-run)."""
        while not predicate(self.faults):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
