"""Fake flows, clocks and reporters for the engine tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from orchestrator.engine import Phase, PhaseContext, PhaseFailed, PhaseRecord, RunRecord

Body = Callable[[PhaseContext], Awaitable[None]]
WAIT = 5.0  # the longest any test waits for an event before it fails


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeFlow:
    """A flow whose phases and hooks record what ran and can be told how to behave."""

    def __init__(
        self,
        *steps: tuple[str, str | Body] | tuple[str, str | Body, float],
        name: str = "fake",
        diagnose: Callable[[PhaseContext, PhaseRecord], Awaitable[None]] | None = None,
        cleanup: Body | None = None,
        hints: tuple[str, ...] = ("kubectl get workspaces -A",),
        properties: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.calls: list[str] = []
        self.entered: dict[str, anyio.Event] = {}
        default = {"model": "tiny", "provider": "fake"}
        self._props = properties if properties is not None else default
        self._hints = list(hints)
        self._diagnose = diagnose
        self._cleanup = cleanup
        self.diagnosed: PhaseRecord | None = None
        self._phases = []
        for step in steps:
            phase_name, behaviour, *rest = step
            timeout = rest[0] if rest else 5.0
            self._phases.append(
                Phase(
                    phase_name,
                    phase_name.replace("-", " ").title(),
                    timeout,
                    self._body(phase_name, behaviour),
                )
            )

    def event(self, key: str) -> anyio.Event:
        return self.entered.setdefault(key, anyio.Event())

    def _body(self, name: str, behaviour: str | Body) -> Body:
        async def body(ctx: PhaseContext) -> None:
            self.calls.append(name)
            self.event(name).set()
            if callable(behaviour):
                await behaviour(ctx)
            elif behaviour == "pass":
                return
            elif behaviour == "fail":
                raise PhaseFailed(f"{name} went wrong", detail=f"details of {name}")
            elif behaviour == "raise":
                raise ValueError(f"bad value in {name}")
            elif behaviour in ("hang", "block"):
                await anyio.sleep_forever()
            else:
                raise AssertionError(f"unknown behaviour {behaviour!r}")

        return body

    def phases(self) -> list[Phase]:
        return list(self._phases)

    def properties(self) -> dict[str, str]:
        return dict(self._props)

    async def diagnose(self, ctx: PhaseContext, failed: PhaseRecord) -> None:
        self.calls.append(f"diagnose:{failed.name}")
        self.diagnosed = failed
        self.event("diagnose").set()
        if self._diagnose is not None:
            await self._diagnose(ctx, failed)

    async def cleanup(self, ctx: PhaseContext) -> None:
        self.calls.append("cleanup")
        self.event("cleanup").set()
        if self._cleanup is not None:
            await self._cleanup(ctx)

    def keep_hints(self) -> list[str]:
        return list(self._hints)


class RecordingReporter:
    """Remembers every call, with the status of the phase at that moment."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def run_started(self, record: RunRecord) -> None:
        self.events.append(("run_started",))

    def phase_started(self, record: RunRecord, phase: PhaseRecord) -> None:
        self.events.append(("phase_started", phase.name, phase.status))

    def phase_finished(self, record: RunRecord, phase: PhaseRecord) -> None:
        self.events.append(("phase_finished", phase.name, phase.status))

    def run_finished(self, record: RunRecord) -> None:
        self.events.append(("run_finished", str(record.outcome)))


class BrokenReporter:
    """Raises from every hook."""

    def run_started(self, record: RunRecord) -> None:
        raise RuntimeError("console exploded")

    def phase_started(self, record: RunRecord, phase: PhaseRecord) -> None:
        raise RuntimeError("console exploded")

    def phase_finished(self, record: RunRecord, phase: PhaseRecord) -> None:
        raise RuntimeError("console exploded")

    def run_finished(self, record: RunRecord) -> None:
        raise RuntimeError("console exploded")


async def wait_for(event: anyio.Event, timeout: float = WAIT) -> None:
    with anyio.fail_after(timeout):
        await event.wait()


def artifacts(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"
