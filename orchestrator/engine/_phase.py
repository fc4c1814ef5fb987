"""Phases, the context a phase runs in, and the Flow protocol.

A flow is plain data (a list of phases) plus hooks, so that the engine can own every
cross-cutting concern (deadlines, the budget, reporting, interruption) exactly once
and a new provider only writes the steps that are specific to it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ._record import Finding, PhaseRecord

#: State names the machine uses for itself; a phase cannot take them.
RESERVED_NAMES = frozenset({"pending", "diagnose", "cleanup", "passed", "failed", "interrupted"})


class PhaseFailed(Exception):
    """Raised by a phase to fail with a one-line reason a human can act on.

    ``detail`` holds longer context (a response body, an event list) that belongs in
    the report but would drown the one-line verdict.
    """

    def __init__(self, reason: str, *, detail: str | None = None, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        #: The phase ran out of time inside (a request that never answered, bounded by
        #: the phase's deadline): reported as a timeout, with how to allow more time.
        self.timed_out = timed_out


@dataclass(frozen=True)
class Phase:
    """One step of a flow's main path, with its own timeout in seconds."""

    name: str
    title: str
    timeout: float
    run: Callable[[PhaseContext], Awaitable[None]]
    #: How a user gives this phase more time ("DEPLOY_TIMEOUT or --deploy-timeout, in
    #: ms"): a timeout's reason ends with it, so the message says what to do next.
    timeout_setting: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("a phase needs a non-empty name")
        if self.name in RESERVED_NAMES:
            raise ValueError(f"phase name {self.name!r} is reserved by the engine")
        if not self.title:
            raise ValueError(f"phase {self.name!r} needs a title")
        if not (isinstance(self.timeout, int | float) and math.isfinite(self.timeout)) or (
            self.timeout <= 0
        ):
            raise ValueError(f"phase {self.name!r}: timeout must be a positive number of seconds")


@dataclass
class PhaseContext:
    """What a running phase (or diagnose, or cleanup) may know and do.

    Phases get their deadline instead of a timeout so that nested waits (a watch, a
    retry loop) can share one deadline rather than each adding its own.
    """

    phase: PhaseRecord
    #: Absolute deadline on ``clock`` (the runner's clock).
    deadline: float
    artifacts_dir: Path
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    #: Where log lines go; the runner timestamps them into the run log. Without a sink
    #: they are kept in ``lines`` (handy when a phase is exercised on its own).
    sink: Callable[[str], None] | None = field(default=None, repr=False)
    lines: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def detached(
        cls, title: str = "Detached", timeout: float = 30.0, artifacts_dir: Path | None = None
    ) -> PhaseContext:
        """A context outside any run, to exercise one phase or hook on its own."""
        record = PhaseRecord(
            name=title.lower().replace(" ", "-"),
            title=title,
            status="running",
            timeout=timeout,
            allowed=timeout,
        )
        return cls(record, time.monotonic() + timeout, artifacts_dir or Path.cwd())

    def remaining(self) -> float:
        """Seconds left before this phase's deadline (never negative)."""
        return max(0.0, self.deadline - self.clock())

    def log(self, message: str) -> None:
        """Add a timestamped line to the run log (JUnit system-out, run.json)."""
        line = f"{self.phase.name}: {message}"
        if self.sink is None:
            self.lines.append(line)
        else:
            self.sink(line)

    def set_property(self, key: str, value: object) -> None:
        """Record an extra JUnit property, e.g. a measured latency."""
        self.phase.properties[str(key)] = str(value)

    def finding(self, name: str, message: str, fact: str = "") -> None:
        """Record that the system under test contradicts what the phase saw for itself.

        The phase goes on, deciding from what it saw; the finding goes to the console, the
        JUnit testcase (a ``finding.NAME`` property and its system-out) and run.json, and
        fails the phase under ``--strict``. ``fact`` names the documented fact it relates
        to (a document and anchor). The same finding is recorded once per phase.
        """
        if any(f.name == name for f in self.phase.findings):
            return
        found = Finding(name=name, message=message, fact=fact)
        self.phase.findings = [*self.phase.findings, found]
        self.phase.properties[f"finding.{name}"] = found.line()
        self.log(f"FINDING {found.line()}")

    def progress(self, state: str) -> None:
        """Note what the phase is waiting on now, without logging it.

        Called on every re-check of a wait; only the latest is kept, and a timeout's
        reason quotes it ("... last seen: phase Pending, 0/1 ready").
        """
        self.phase.last_seen = state

    def failing(self, what: str | None) -> None:
        """Note what a request of the phase keeps failing with ("GET /x answered 503:
        ..."), or None once it succeeds again.

        A phase that runs out of time while a request keeps failing ends as a timeout
        whose reason also names this, whichever came first: the phase's deadline, or the
        request's own retries giving up at it. Only the latest is kept.
        """
        self.phase.failing = what

    def note(self, waiting_for: str) -> None:
        """Say what the phase is waiting for now ("deployment Running, 1 ready replica").

        The live console shows it beside what the phase last saw (``progress``), so a
        person watching a long wait knows what would end it. Only the latest is kept.
        """
        self.phase.note = waiting_for


@runtime_checkable
class Flow(Protocol):
    """What the engine needs from a provider's flow."""

    #: The JUnit testsuite name.
    name: str

    def phases(self) -> list[Phase]:
        """The main path, in order."""
        ...

    def properties(self) -> dict[str, str]:
        """JUnit properties describing the run (model, provider, ...)."""
        ...

    async def diagnose(self, ctx: PhaseContext, failed: PhaseRecord) -> None:
        """Collect evidence about ``failed`` (events, logs) into the log and artifacts."""
        ...

    async def cleanup(self, ctx: PhaseContext) -> None:
        """Delete what this run created."""
        ...

    def keep_hints(self) -> list[str]:
        """Commands to inspect or delete resources that cleanup left in place."""
        ...
