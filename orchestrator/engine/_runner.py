"""The runner: walks a flow's phases through the machine under the budget.

Each phase coroutine runs inside its own ``anyio.CancelScope`` *outside* the state
machine; only when it has finished does the runner fire a trigger with the outcome.
Interrupts cancel that scope, never a trigger.

Only a signal interrupts a run (``interrupt``). Anything else that stops it is a
failure with a reason: shared machinery that breaks calls ``fail``, and a cancellation
from outside (a task group that some other task broke) fails the running phase, runs
cleanup in a shielded scope of its own, and only then lets the cancellation go on.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal, get_args

import anyio

from ._budget import Budget
from ._machine import DIAGNOSE, RunMachine
from ._phase import Flow, Phase, PhaseContext, PhaseFailed
from ._record import PhaseRecord, RunRecord, utcnow
from ._redact import redact
from ._reporter import FanOut, Reporter
from ._reports import RUN_JSON, ReportProblem, describe_os_error, discard, write_run_json

CleanupPolicy = Literal["always", "on-success", "never"]
Stage = Literal["idle", "main", "diagnose", "cleanup", "done"]

#: Signals it takes to abandon a running cleanup. The first stops the run (and is
#: usually what started cleanup); one more is easily sent by an impatient double
#: Ctrl-C, so only a third gives up on deleting what the run created.
ABANDON_CLEANUP_AFTER = 3
DETAIL_MAX_CHARS = 16_000


class Runner:
    """Runs one flow once and produces its :class:`RunRecord`."""

    def __init__(
        self,
        flow: Flow,
        *,
        budget: Budget,
        reporters: Iterable[Reporter] = (),
        artifacts_dir: str | os.PathLike[str],
        cleanup_policy: CleanupPolicy = "always",
        clock: Callable[[], float] | None = None,
        strict: bool = False,
        timeout_settings: Mapping[str, str] | None = None,
    ) -> None:
        if cleanup_policy not in get_args(CleanupPolicy):
            raise ValueError(
                f"cleanup_policy must be one of {', '.join(get_args(CleanupPolicy))}, "
                f"got {cleanup_policy!r}"
            )
        phases = list(flow.phases())
        for phase in phases:
            if not isinstance(phase, Phase):
                raise TypeError(f"flow {flow.name!r} returned {phase!r}, not a Phase")
        self.flow = flow
        self.budget = budget
        self.cleanup_policy: CleanupPolicy = cleanup_policy
        #: A finding fails the phase that made it (``--strict``).
        self.strict = strict
        #: Phase name -> how a user gives it more time (the app knows its settings'
        #: names; a flow may say it on its Phase too). Timeout reasons end with it.
        self._timeout_settings = dict(timeout_settings or {})
        self.artifacts_dir = Path(artifacts_dir)
        # One clock for durations and deadlines, so a phase's deadline and its budget agree.
        self._clock = clock if clock is not None else budget.clock
        self._phases = phases
        self._machine = RunMachine([phase.name for phase in phases])
        self.record = RunRecord(
            suite=flow.name,
            properties={str(k): str(v) for k, v in flow.properties().items()},
            phases=[PhaseRecord(name=p.name, title=p.title, timeout=p.timeout) for p in phases],
            cleanup_policy=cleanup_policy,
            budget_total=budget.total,
            budget_reserve=budget.reserve,
            artifacts_dir=str(self.artifacts_dir),
        )
        self._reporters = FanOut(reporters, self._log)
        self._stage: Stage = "idle"
        self._scope: anyio.CancelScope | None = None
        self._interrupted_scope: anyio.CancelScope | None = None
        self._failed_scope: anyio.CancelScope | None = None
        #: Why shared machinery this flow depends on failed (see :meth:`fail`).
        self._failure: str | None = None
        self._interrupts = 0
        self._t0: float | None = None
        self._ran = False
        #: Report files this runner could not write (run.json): empty when all is well.
        self.report_problems: list[ReportProblem] = []

    @property
    def state(self) -> str:
        """The machine's current state (a phase name, diagnose, cleanup or a verdict)."""
        return self._machine.state

    # -- interruption ----------------------------------------------------------------

    def interrupt(self, signame: str = "SIGINT") -> None:
        """Stop the run: cancel the running phase, then clean up and report.

        Call it on the event loop's thread, e.g. from ``loop.add_signal_handler``. It
        only sets flags and cancels a scope, so it is safe at any point of the run.
        """
        if self._stage == "done":
            self._log(f"{signame} received after the run finished; ignored")
            return
        self._interrupts += 1
        if self.record.interrupted_by is None:
            self.record.interrupted_by = signame
        if self._stage == "cleanup":
            if self._interrupts >= ABANDON_CLEANUP_AFTER:
                self._log(f"{signame} received again: abandoning cleanup; resources may remain")
                self._cancel_running()
            else:
                self._log(
                    f"{signame} received during cleanup: cleanup continues "
                    f"(signal {ABANDON_CLEANUP_AFTER} abandons it)"
                )
            return
        self._log(f"{signame} received: stopping the run, then cleaning up")
        self._cancel_running()

    def fail(self, reason: str) -> None:
        """Fail the run because something it depends on broke: not a signal.

        Shared machinery (a watch hub, an install gate, a reporter every flow writes
        through) calls it when it can no longer serve this flow. The running phase
        stops and fails with ``reason`` (a phase not yet started fails at once), then
        diagnose and cleanup run as after any failure. Diagnose and cleanup are not
        stopped: what the run created must still be deleted. Safe at any point of the
        run, on the event loop's thread.
        """
        if self._stage == "done":
            self._log(f"{reason} (after the run finished; ignored)")
            return
        if self._failure is None:
            self._failure = reason
        if self._stage in ("idle", "main"):
            self._log(f"{reason}: failing the run, then cleaning up")
            if self._scope is not None and self._interrupted_scope is not self._scope:
                self._failed_scope = self._scope
                self._scope.cancel()
        else:
            self._log(f"{reason} (during {self._stage}, which continues)")

    def _cancel_running(self) -> None:
        if self._scope is not None:
            self._interrupted_scope = self._scope
            self._scope.cancel()

    # -- the run ---------------------------------------------------------------------

    async def run(self) -> RunRecord:
        """Run the flow; always reports and writes ``run.json``, whatever happens."""
        if self._ran:
            raise RuntimeError("a Runner runs its flow once; create a new one")
        self._ran = True
        record = self.record
        self.budget.start()
        self._t0 = self._clock()
        record.started_at = utcnow()
        try:
            self._log(
                f"run {record.suite} started: budget {self.budget.total:g} s "
                f"({self.budget.reserve:g} s reserved), cleanup policy {self.cleanup_policy}"
            )
            self._reporters.run_started(record)
            try:
                self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                # The flow can still run (and clean up); only its files are lost, which
                # the missing run.json reports.
                self._log(f"artifacts dir {self.artifacts_dir}: {describe_os_error(exc)}")
            await self._main_path()
            self._skip_unreached()
            await self._diagnose()
            await self._cleanup()
            await self._finish()
        except anyio.get_cancelled_exc_class() as exc:
            await self._cleanup_after_cancel()
            self._abort(exc)
            raise
        except BaseException as exc:
            self._abort(exc)
            raise
        finally:
            self._stage = "done"
            record.ended_at = utcnow()
            record.time_spent = self._clock() - self._t0
            self._log(self._verdict_line())
            self._reporters.run_finished(record)
            self._write_run_json()
        return record

    async def _main_path(self) -> None:
        self._stage = "main"
        if self._interrupts:
            await self._machine.fire("interrupt")
            return
        await self._machine.fire("start")
        for phase, record in zip(self._phases, self.record.phases, strict=True):
            if self._interrupts:
                await self._machine.fire("interrupt")
                return
            deadline, allowed = self.budget.deadline_for(phase.timeout)
            if self._failure is not None:
                self._fail_unstarted(record, f"{record.title} not started: {self._failure}")
            elif allowed <= 0:
                self._fail_unstarted(record)
            else:
                await self._guarded(
                    record,
                    phase.run,
                    deadline,
                    allowed,
                    self._phase_timeout_reason(phase),
                    more_time=self._more_time(phase),
                )
            if record.status == "passed":
                await self._machine.fire("advance")
            elif record.status == "interrupted":
                await self._machine.fire("interrupt")
                return
            else:
                self._machine.model.failed = True
                await self._machine.fire("fail")
                return

    def _fail_unstarted(self, record: PhaseRecord, reason: str | None = None) -> None:
        record.allowed = 0.0
        self._begin(record)
        record.duration = 0.0
        record.status = "failed"
        record.reason = reason or (
            f"{record.title} not started: the run budget ran out "
            f"({self.budget.total:g} s total, {self.budget.reserve:g} s kept for diagnose and "
            f"cleanup, {self.budget.remaining:.1f} s left)"
        )
        self._end(record)

    def _skip_unreached(self) -> None:
        for record in self.record.phases:
            if record.status == "pending":
                record.status = "skipped"
                record.reason = "not reached"

    async def _diagnose(self) -> None:
        if self._machine.state != DIAGNOSE:
            return
        self._stage = "diagnose"
        failed = next(p for p in self.record.phases if p.status == "failed")
        record = PhaseRecord(name="diagnose", title="Diagnose", kind="diagnose")
        self.record.diagnose = record
        if self._interrupts:
            record.status = "skipped"
            record.reason = f"interrupted by {self.record.interrupted_by}"
            await self._machine.fire("interrupt")
            return
        deadline, allowed = self.budget.diagnose_deadline()

        async def body(ctx: PhaseContext) -> None:
            await self.flow.diagnose(ctx, failed)

        await self._guarded(record, body, deadline, allowed, self._reserve_timeout_reason(record))
        if record.status == "failed":
            # Diagnose is best effort: its trouble is logged but the verdict stays the
            # original failure.
            self._log(
                f"diagnose failed: {record.reason} (the run failed at {failed.title}: "
                f"{failed.reason})"
            )
        await self._machine.fire("interrupt" if record.status == "interrupted" else "diagnosed")

    async def _cleanup(self) -> None:
        self._stage = "cleanup"
        record = self.record.cleanup
        failed_main = self._machine.model.failed
        keep = self.cleanup_policy == "never" or (
            self.cleanup_policy == "on-success" and failed_main
        )
        if keep:
            record.offset = self._offset()
            record.status = "skipped"
            record.reason = f"resources kept (cleanup policy {self.cleanup_policy})"
            record.detail = self._hints() or None
            self._log(f"cleanup skipped: {record.reason}")
            self._reporters.phase_finished(self.record, record)
            return
        if self._interrupts >= ABANDON_CLEANUP_AFTER:
            record.status = "interrupted"
            record.reason = f"cleanup abandoned after {self._interrupts} signals"
            record.detail = self._hints() or None
            self._reporters.phase_finished(self.record, record)
            return
        deadline, allowed = self.budget.cleanup_deadline()
        await self._guarded(
            record, self.flow.cleanup, deadline, allowed, self._reserve_timeout_reason(record)
        )
        if record.status == "interrupted":
            record.reason = (
                f"cleanup abandoned after {self._interrupts} signals; resources may remain"
            )
        if record.status in ("failed", "interrupted"):
            self._machine.model.failed = True
            hints = self._hints()
            if hints:
                parts = [record.detail, "To clean up by hand:", hints]
                record.detail = "\n".join(filter(None, parts))

    async def _finish(self) -> None:
        self._machine.model.interrupted = self.record.interrupted_by is not None
        outcome = await self._machine.fire("finish")
        self.record.outcome = outcome  # type: ignore[assignment]

    async def _cleanup_after_cancel(self) -> None:
        """Cancelled from outside: fail what was running, then clean up anyway.

        The cancellation came from a scope around the runner (a task group that another
        task broke), not from a signal: the flow's resources must still be deleted, so
        cleanup runs shielded, under its own deadline from the budget reserve, and can
        still be abandoned by signals as usual.
        """
        if self._stage not in ("main", "diagnose"):
            return
        signal = self.record.interrupted_by
        why = (
            f"interrupted by {signal}"
            if signal is not None
            else "cancelled from outside the flow without a signal (shared machinery failed?)"
        )
        with anyio.CancelScope(shield=True):
            self._log(f"{why}: cleaning up")
            for record in self.record.phase_records():
                if record.status == "running":
                    record.status = "interrupted" if signal else "failed"
                    record.reason = why
                    self._end(record)
            self._skip_unreached()
            self._machine.model.failed = True
            await self._cleanup()

    def _abort(self, exc: BaseException) -> None:
        """Make the record truthful when the run itself was cancelled or broke.

        Only a signal makes a run "interrupted": a cancellation that no signal caused
        is a failure (exit code 1), since nothing asked the run to stop.
        """
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        if isinstance(exc, KeyboardInterrupt) and self.record.interrupted_by is None:
            self.record.interrupted_by = "SIGINT"
        signal = self.record.interrupted_by
        if cancelled:
            why = "the run was cancelled" + ("" if signal else " from outside, without a signal")
        else:
            why = f"the run aborted: {_one_line(exc)}"
        self._log(why)
        if not cancelled and not isinstance(exc, KeyboardInterrupt):
            self._log("".join(traceback.format_exception(exc))[-DETAIL_MAX_CHARS:])
        for record in self.record.phase_records():
            if record.status == "running":
                record.status = "interrupted" if signal else "failed"
                record.reason = why
            elif record.status == "pending":
                record.status = "skipped"
                record.reason = "not reached" if record.kind == "phase" else why
        if self.record.outcome is None:
            self.record.outcome = "interrupted" if signal is not None else "failed"

    # -- running one guarded step ----------------------------------------------------

    async def _guarded(
        self,
        record: PhaseRecord,
        body: Callable[[PhaseContext], Awaitable[None]],
        deadline: float,
        allowed: float,
        timeout_reason: Callable[[], str],
        *,
        more_time: str = "",
    ) -> None:
        """Run ``body`` under ``allowed`` seconds and record how it ended."""
        record.allowed = allowed
        self._begin(record)
        ctx = PhaseContext(
            phase=record,
            deadline=deadline,
            artifacts_dir=self.artifacts_dir,
            clock=self._clock,
            sink=self._log,
        )
        started = self._clock()
        scope = anyio.CancelScope(deadline=anyio.current_time() + allowed)
        error: Exception | None = None
        self._scope = scope
        try:
            with scope:
                await body(ctx)
        except Exception as exc:
            error = exc
        finally:
            self._scope = None
            record.duration = self._clock() - started
        if self._interrupted_scope is scope:
            record.status = "interrupted"
            record.reason = f"interrupted by {self.record.interrupted_by}"
        elif self._failed_scope is scope:
            record.status = "failed"
            record.reason = self._failure
            if error is not None:
                record.detail = _bounded("while stopping: " + _format_error(error))
        elif scope.cancel_called:
            record.status = "failed"
            record.timed_out = True
            record.reason = timeout_reason()
            if error is not None:
                record.detail = _bounded("after the deadline: " + _format_error(error))
        elif error is not None:
            record.status = "failed"
            record.reason, record.detail = _describe(error)
            inner = _unwrap(error)
            if (isinstance(inner, PhaseFailed) and inner.timed_out) or isinstance(
                inner, TimeoutError
            ):
                # A wait inside the phase (a request bounded by the phase's deadline) ran
                # out of time: a timeout too, and the way to allow more time applies.
                record.timed_out = True
                if record.failing:
                    # Retries that ran into the deadline: the phase's timeout, naming what
                    # kept failing, as when the deadline itself ends the phase.
                    ended_with = "\n".join(filter(None, [record.reason, record.detail]))
                    record.reason = timeout_reason()
                    record.detail = _bounded(f"the last error: {ended_with}")
                else:
                    record.reason += more_time
        elif self.strict and record.kind == "phase" and record.findings:
            record.status = "failed"
            names = ", ".join(f.name for f in record.findings)
            record.reason = f"--strict: {len(record.findings)} finding(s): {names}"
            record.detail = "\n".join(f.line() for f in record.findings)
        else:
            record.status = "passed"
        self._end(record)

    def _begin(self, record: PhaseRecord) -> None:
        record.status = "running"
        record.started_at = utcnow()
        record.offset = self._offset()
        allowed = "" if record.allowed is None else f" (allowed {record.allowed:.1f} s)"
        self._log(f"{record.title}: started{allowed}")
        self._reporters.phase_started(self.record, record)

    def _end(self, record: PhaseRecord) -> None:
        record.ended_at = utcnow()
        # A reason often quotes a peer (an error body, an event): what reporters read
        # holds no secret, whatever the peer echoed.
        if record.reason:
            record.reason = redact(record.reason)
        if record.detail:
            record.detail = redact(record.detail)
        took = f" in {record.duration:.1f} s" if record.duration is not None else ""
        why = f": {record.reason}" if record.reason else ""
        self._log(f"{record.title}: {record.status}{took}{why}")
        if record.detail:
            self._log(record.detail)
        self._reporters.phase_finished(self.record, record)

    def _phase_timeout_reason(self, phase: Phase) -> Callable[[], str]:
        def reason() -> str:
            allowed = self._allowed_of(phase.name)
            capped = ", capped by the run budget" if allowed < phase.timeout else ""
            record = next(p for p in self.record.phases if p.name == phase.name)
            return (
                f"{phase.title} timed out after {allowed:.1f} s (phase timeout "
                f"{phase.timeout:g} s{capped}; budget left {_secs(self.budget.remaining)} s)"
                f"{_while_failing(record)}{self._more_time(phase)}"
            )

        return reason

    def _more_time(self, phase: Phase) -> str:
        """The end of a timeout's reason: how to give the phase more time, if known."""
        allowed = self._allowed_of(phase.name)
        if allowed and allowed < phase.timeout:
            return "; to allow more time, raise the run's budget"
        setting = self._timeout_settings.get(phase.name) or phase.timeout_setting
        return f"; if it only needs longer, raise {setting}" if setting else ""

    def _reserve_timeout_reason(self, record: PhaseRecord) -> Callable[[], str]:
        def reason() -> str:
            return (
                f"{record.title} timed out after {record.allowed or 0:.1f} s (deadline from "
                f"the budget reserve; budget left {_secs(self.budget.remaining)} s)"
                f"{_while_failing(record)}"
            )

        return reason

    def _allowed_of(self, name: str) -> float:
        return next(p.allowed or 0.0 for p in self.record.phases if p.name == name)

    # -- helpers ---------------------------------------------------------------------

    def _hints(self) -> str:
        try:
            return "\n".join(str(h) for h in self.flow.keep_hints())
        except Exception as exc:
            self._log(f"keep_hints failed: {_one_line(exc)}")
            return ""

    def _offset(self) -> float:
        return 0.0 if self._t0 is None else self._clock() - self._t0

    def _log(self, message: str) -> None:
        stamp = utcnow().strftime("%H:%M:%S.%f")[:-3]
        prefix = f"{stamp} +{self._offset():.1f}s "
        for index, line in enumerate(str(message).splitlines() or [""]):
            self.record.append_log(prefix + ("  " if index else "") + line)

    def _verdict_line(self) -> str:
        record = self.record
        if record.outcome is None:
            return "run ended without a verdict"
        return f"run {record.suite} {record.outcome} (exit code {record.exit_code})"

    def _write_run_json(self) -> None:
        path = self.artifacts_dir / RUN_JSON
        try:
            write_run_json(self.record, path)
        except OSError as exc:
            # Never leave an earlier run's verdict in its place; the caller decides
            # what a missing report means (the app fails the run: EXIT_REPORTS).
            discard(path)
            self.report_problems.append(ReportProblem(path, describe_os_error(exc)))
            self._log(f"could not write {path}: {describe_os_error(exc)}")


def _while_failing(record: PhaseRecord) -> str:
    """What a timeout's reason adds: the request that kept failing, what was last seen."""
    failing = f" while {record.failing}" if record.failing else ""
    seen = f"; last seen: {record.last_seen}" if record.last_seen else ""
    return failing + seen


def _unwrap(error: BaseException) -> BaseException:
    """The one error inside task groups' exception groups of one."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _describe(error: BaseException) -> tuple[str, str | None]:
    """A one-line reason and an optional detail for an error a phase raised."""
    error = _unwrap(error)
    if isinstance(error, PhaseFailed):
        first, _, rest = error.reason.strip().partition("\n")
        detail = "\n".join(filter(None, [rest.strip(), error.detail]))
        return first or "phase failed", _bounded(detail) if detail else None
    return _one_line(error), _bounded(_format_error(error))


def _secs(value: float) -> str:
    """Whole seconds for real runs, a decimal for the short ones tests use."""
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _one_line(error: BaseException) -> str:
    text = redact(str(error)).strip().split("\n", 1)[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _format_error(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)).rstrip()


def _bounded(text: str) -> str:
    text = redact(text)  # before a cut that could leave half a secret behind
    if len(text) <= DETAIL_MAX_CHARS:
        return text
    return "[...]\n" + text[-DETAIL_MAX_CHARS:]
