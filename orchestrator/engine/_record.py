"""The run record: the single source of truth that every reporter reads.

The runner writes into it as the run progresses; reporters (console, JUnit, run.json)
only read. Keeping one record instead of letting each reporter track its own state
means the console, the JUnit file and ``run.json`` can never disagree.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, computed_field

from ._redact import redact

PhaseStatus = Literal["pending", "running", "passed", "failed", "skipped", "interrupted"]
PhaseKind = Literal["phase", "diagnose", "cleanup"]
Outcome = Literal["passed", "failed", "interrupted"]

#: The log becomes JUnit system-out and part of run.json; an unbounded log from a
#: chatty controller would make both unreadable and could exhaust memory on long runs.
LOG_MAX_LINES = 2000
LOG_MAX_BYTES = 256 * 1024
LOG_MAX_LINE_BYTES = 8 * 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


class Finding(BaseModel):
    """A contradiction between the system under test and the ground truth, named.

    The phase decided from the ground truth and went on; the finding says what the system
    under test got wrong, and ``fact`` points at the documented fact it contradicts (or
    confirms), so a reader can tell a known defect from a new one. With ``--strict`` a
    finding fails its phase.
    """

    name: str
    message: str
    fact: str = ""

    def line(self) -> str:
        see = f" (see {self.fact})" if self.fact else ""
        return f"{self.name}: {self.message}{see}"


class PhaseRecord(BaseModel):
    """What happened to one phase (or to diagnose/cleanup)."""

    model_config = ConfigDict(validate_assignment=True)

    name: str
    title: str
    kind: PhaseKind = "phase"
    status: PhaseStatus = "pending"
    #: The phase's own configured timeout, before the budget capped it.
    timeout: float | None = None
    #: The seconds the phase was actually allowed (the deadline it was given).
    allowed: float | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    #: Seconds since the run started when this phase started (the runner's clock).
    offset: float | None = None
    #: Measured on the runner's monotonic clock, so wall-clock jumps cannot skew it.
    duration: float | None = None
    reason: str | None = None
    detail: str | None = None
    timed_out: bool = False
    #: The last state the phase saw while waiting (``PhaseContext.progress``): a timeout
    #: names it, so "timed out" also says what it was still waiting for.
    last_seen: str | None = None
    #: What the phase is waiting for now (``PhaseContext.note``), for the live console.
    note: str | None = None
    #: What a request of the phase keeps failing with, while it does
    #: (``PhaseContext.failing``): a timeout names it beside its own reason.
    failing: str | None = None
    #: Extra JUnit properties the phase set (e.g. a measured latency).
    properties: dict[str, str] = Field(default_factory=dict)
    #: What the phase found the system under test getting wrong (``PhaseContext.finding``).
    findings: list[Finding] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status not in ("pending", "running")


class RunRecord(BaseModel):
    """Everything about one run of one flow: phases, outcome, budget and the log."""

    model_config = ConfigDict(validate_assignment=True)

    suite: str
    properties: dict[str, str] = Field(default_factory=dict)
    phases: list[PhaseRecord] = Field(default_factory=list)
    diagnose: PhaseRecord | None = None
    cleanup: PhaseRecord = Field(
        default_factory=lambda: PhaseRecord(name="cleanup", title="Cleanup", kind="cleanup")
    )
    cleanup_policy: str = "always"
    outcome: Outcome | None = None
    interrupted_by: str | None = None
    #: The run never started because its input was bad: exit code 2, not 1.
    usage_error: bool = False
    budget_total: float = 0.0
    budget_reserve: float = 0.0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    time_spent: float | None = None
    artifacts_dir: str | None = None
    log: list[str] = Field(default_factory=list)
    log_dropped_lines: int = 0

    _log_bytes: int = PrivateAttr(default=0)

    # -- derived -------------------------------------------------------------------

    @computed_field  # type: ignore[prop-decorator]
    @property
    def exit_code(self) -> int:
        """0 passed, 1 failed (cleanup failure included), 2 bad input, 128+N for signal N."""
        if self.usage_error:
            return 2
        if self.outcome == "passed":
            return 0
        if self.outcome == "interrupted":
            return signal_exit_code(self.interrupted_by)
        return 1

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failed_phase(self) -> str | None:
        """The main-path phase that failed, so reporters need not search for it."""
        for phase in self.phases:
            if phase.status == "failed":
                return phase.name
        return None

    def findings(self) -> list[tuple[PhaseRecord, Finding]]:
        """Every finding of the run, with the phase that made it, in report order."""
        return [(phase, finding) for phase in self.phase_records() for finding in phase.findings]

    def phase_records(self) -> list[PhaseRecord]:
        """Main phases, then diagnose (if it was needed), then cleanup: report order."""
        extra = [self.diagnose] if self.diagnose is not None else []
        return [*self.phases, *extra, self.cleanup]

    def all_properties(self) -> dict[str, str]:
        """The flow's properties, those the phases set, then the engine's own.

        The engine's keys come last so a phase cannot overwrite the budget or verdict.
        """
        merged = dict(self.properties)
        for phase in self.phase_records():
            merged.update(phase.properties)
        merged["suite"] = self.suite
        merged["budget_seconds"] = _num(self.budget_total)
        merged["budget_reserve_seconds"] = _num(self.budget_reserve)
        if self.time_spent is not None:
            merged["time_spent_seconds"] = f"{self.time_spent:.3f}"
        merged["cleanup_policy"] = self.cleanup_policy
        if self.outcome is not None:
            merged["outcome"] = self.outcome
            merged["exit_code"] = str(self.exit_code)
        if self.interrupted_by:
            merged["interrupted_by"] = self.interrupted_by
        return merged

    # -- the bounded log -------------------------------------------------------------

    def append_log(self, line: str) -> None:
        """Append one line, dropping the oldest ones beyond the line and byte bounds.

        The tail is kept because the end of a log usually explains a failure. Secrets
        are masked first, so that a cut can never leave half of one behind.
        """
        line = redact(line)
        encoded = line.encode("utf-8", "replace")
        if len(encoded) > LOG_MAX_LINE_BYTES:
            line = encoded[:LOG_MAX_LINE_BYTES].decode("utf-8", "ignore") + " [line truncated]"
            encoded = line.encode("utf-8", "replace")
        self.log.append(line)
        self._log_bytes += len(encoded) + 1
        while self.log and (len(self.log) > LOG_MAX_LINES or self._log_bytes > LOG_MAX_BYTES):
            dropped = self.log.pop(0)
            self._log_bytes -= len(dropped.encode("utf-8", "replace")) + 1
            self.log_dropped_lines += 1

    def log_text(self) -> str:
        if not self.log_dropped_lines:
            return "\n".join(self.log)
        return "\n".join([f"[{self.log_dropped_lines} earlier log lines dropped]", *self.log])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (datetimes as ISO 8601 strings) for run.json and reporters."""
        return self.model_dump(mode="json")


def signal_exit_code(signame: str | None) -> int:
    """The shell convention 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
    if signame:
        try:
            return 128 + int(signal.Signals[signame])
        except KeyError:
            pass
    return 128 + int(signal.SIGINT)


def _num(value: float) -> str:
    return f"{value:g}"
