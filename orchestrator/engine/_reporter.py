"""Reporters: observers of the run record.

Reporters are synchronous on purpose: the runner calls ``run_finished`` from a
``finally`` block, possibly while the run is being cancelled, where awaiting is not
reliable. A reporter that raises is logged and otherwise ignored: a broken console must
never cost us the JUnit file, and neither may change the verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from ._record import PhaseRecord, RunRecord


@runtime_checkable
class Reporter(Protocol):
    def run_started(self, record: RunRecord) -> None: ...

    def phase_started(self, record: RunRecord, phase: PhaseRecord) -> None: ...

    def phase_finished(self, record: RunRecord, phase: PhaseRecord) -> None: ...

    def run_finished(self, record: RunRecord) -> None: ...


class FanOut:
    """Calls every reporter in order; an exception is passed to ``on_error``."""

    def __init__(self, reporters: Iterable[Reporter], on_error: Callable[[str], None]) -> None:
        self.reporters = list(reporters)
        self._on_error = on_error

    def run_started(self, record: RunRecord) -> None:
        self._each("run_started", record)

    def phase_started(self, record: RunRecord, phase: PhaseRecord) -> None:
        self._each("phase_started", record, phase)

    def phase_finished(self, record: RunRecord, phase: PhaseRecord) -> None:
        self._each("phase_finished", record, phase)

    def run_finished(self, record: RunRecord) -> None:
        self._each("run_finished", record)

    def _each(self, method: str, *args: object) -> None:
        for reporter in self.reporters:
            try:
                getattr(reporter, method)(*args)
            except Exception as exc:
                self._on_error(
                    f"reporter {type(reporter).__name__}.{method} failed: "
                    f"{type(exc).__name__}: {exc}"
                )
