"""The runner: order, failures, deadlines, the budget, cleanup policies, interrupts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
from engine_fakes import BrokenReporter, FakeClock, FakeFlow, RecordingReporter, wait_for

from orchestrator.engine import (
    Budget,
    PhaseContext,
    PhaseFailed,
    PhaseRecord,
    Runner,
    SharedServices,
)

pytestmark = pytest.mark.anyio


def make_runner(
    flow: FakeFlow, tmp_path: Path, *, budget: Budget | None = None, **kwargs: object
) -> Runner:
    return Runner(
        flow,
        budget=budget or Budget(60, 10, diagnose_floor=0.5, cleanup_floor=1),
        artifacts_dir=tmp_path / "artifacts",
        **kwargs,  # type: ignore[arg-type]
    )


def statuses(runner: Runner) -> dict[str, str]:
    return {p.name: p.status for p in runner.record.phase_records()}


# -- the main path --------------------------------------------------------------------


async def test_happy_path_runs_phases_in_order_then_cleanup(tmp_path: Path) -> None:
    flow = FakeFlow(("install", "pass"), ("deploy", "pass"), ("infer", "pass"))
    reporter = RecordingReporter()
    runner = make_runner(flow, tmp_path, reporters=[reporter])
    record = await runner.run()
    assert flow.calls == ["install", "deploy", "infer", "cleanup"]
    assert statuses(runner) == {
        "install": "passed",
        "deploy": "passed",
        "infer": "passed",
        "cleanup": "passed",
    }
    assert record.diagnose is None
    assert (record.outcome, record.exit_code, record.failed_phase) == ("passed", 0, None)
    assert runner.state == "passed"
    assert reporter.events == [
        ("run_started",),
        ("phase_started", "install", "running"),
        ("phase_finished", "install", "passed"),
        ("phase_started", "deploy", "running"),
        ("phase_finished", "deploy", "passed"),
        ("phase_started", "infer", "running"),
        ("phase_finished", "infer", "passed"),
        ("phase_started", "cleanup", "running"),
        ("phase_finished", "cleanup", "passed"),
        ("run_finished", "passed"),
    ]
    for phase in record.phase_records():
        assert phase.started_at is not None and phase.started_at.utcoffset().total_seconds() == 0
        assert phase.ended_at is not None and phase.ended_at >= phase.started_at
        assert phase.duration is not None and phase.duration >= 0
        assert phase.allowed is not None and phase.allowed > 0
    assert record.time_spent is not None and record.ended_at is not None


async def test_run_json_is_the_record(tmp_path: Path) -> None:
    flow = FakeFlow(("install", "pass"), ("deploy", "fail"))
    record = await make_runner(flow, tmp_path).run()
    data = json.loads((tmp_path / "artifacts" / "run.json").read_text())
    assert data == json.loads(json.dumps(record.to_dict()))
    assert data["exit_code"] == 1 and data["failed_phase"] == "deploy"
    assert [p["status"] for p in data["phases"]] == ["passed", "failed"]


async def test_failure_diagnoses_cleans_up_and_skips_later_phases(tmp_path: Path) -> None:
    flow = FakeFlow(("install", "pass"), ("deploy", "fail"), ("infer", "pass"))
    runner = make_runner(flow, tmp_path)
    record = await runner.run()
    assert flow.calls == ["install", "deploy", "diagnose:deploy", "cleanup"]
    assert flow.diagnosed is record.phases[1]
    assert statuses(runner) == {
        "install": "passed",
        "deploy": "failed",
        "infer": "skipped",
        "diagnose": "passed",
        "cleanup": "passed",
    }
    deploy, infer = record.phases[1], record.phases[2]
    assert deploy.reason == "deploy went wrong"
    assert deploy.detail == "details of deploy"
    assert infer.reason == "not reached" and infer.started_at is None
    assert (record.outcome, record.exit_code, record.failed_phase) == ("failed", 1, "deploy")
    assert runner.state == "failed"


async def test_an_unexpected_exception_becomes_type_and_message(tmp_path: Path) -> None:
    flow = FakeFlow(("install", "raise"))
    record = await make_runner(flow, tmp_path).run()
    phase = record.phases[0]
    assert phase.status == "failed"
    assert phase.reason == "ValueError: bad value in install"
    assert phase.detail is not None and "Traceback" in phase.detail
    assert record.exit_code == 1


async def test_a_single_error_in_a_task_group_is_unwrapped(tmp_path: Path) -> None:
    async def grouped(ctx: PhaseContext) -> None:
        async with anyio.create_task_group() as tg:

            async def fail() -> None:
                raise PhaseFailed("pod crashed")

            tg.start_soon(fail)

    record = await make_runner(FakeFlow(("install", grouped)), tmp_path).run()
    assert record.phases[0].reason == "pod crashed"


async def test_a_multi_line_reason_keeps_one_line_and_moves_the_rest_to_detail(
    tmp_path: Path,
) -> None:
    async def body(ctx: PhaseContext) -> None:
        raise PhaseFailed("first line\nsecond line", detail="more")

    record = await make_runner(FakeFlow(("install", body)), tmp_path).run()
    assert record.phases[0].reason == "first line"
    assert record.phases[0].detail == "second line\nmore"


async def test_phase_context_logs_properties_deadline_and_artifacts(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    async def body(ctx: PhaseContext) -> None:
        ctx.log("pulling image")
        ctx.set_property("latency_ms", 42)
        seen["remaining"] = ctx.remaining()
        seen["deadline"] = ctx.deadline
        seen["artifacts"] = ctx.artifacts_dir
        seen["phase"] = ctx.phase.name
        seen["status"] = ctx.phase.status

    runner = make_runner(FakeFlow(("install", body, 3.0)), tmp_path)
    record = await runner.run()
    assert 2.5 < seen["remaining"] <= 3.0  # type: ignore[operator]
    assert seen["artifacts"] == tmp_path / "artifacts"
    assert (seen["phase"], seen["status"]) == ("install", "running")
    assert record.phases[0].properties == {"latency_ms": "42"}
    assert record.all_properties()["latency_ms"] == "42"
    assert any(line.endswith("install: pulling image") for line in record.log)
    assert all(line[2] == ":" and "+" in line.split()[1] for line in record.log)


# -- deadlines and the budget -----------------------------------------------------------


async def test_a_hanging_phase_times_out_with_a_reason_naming_phase_and_deadline(
    tmp_path: Path,
) -> None:
    flow = FakeFlow(("install", "pass"), ("wait-ready", "hang", 0.05), ("infer", "pass"))
    runner = make_runner(flow, tmp_path)
    record = await runner.run()
    phase = record.phases[1]
    assert phase.status == "failed" and phase.timed_out
    assert phase.reason is not None
    assert phase.reason.startswith("Wait Ready timed out after 0.1 s (phase timeout 0.05 s;")
    assert "budget left" in phase.reason and "capped" not in phase.reason
    assert phase.allowed == pytest.approx(0.05)
    assert phase.duration is not None and phase.duration >= 0.04
    assert record.phases[2].status == "skipped"
    assert flow.calls[-2:] == ["diagnose:wait-ready", "cleanup"]


async def test_a_timeout_says_how_to_give_the_phase_more_time(tmp_path: Path) -> None:
    import dataclasses

    flow = FakeFlow(("wait-ready", "hang", 0.05))
    flow._phases = [
        dataclasses.replace(p, timeout_setting="READY_TIMEOUT or --ready-timeout (ms)")
        for p in flow._phases
    ]
    record = await make_runner(flow, tmp_path).run()
    reason = record.phases[0].reason or ""
    assert reason.endswith("; if it only needs longer, raise READY_TIMEOUT or --ready-timeout (ms)")


async def test_the_runner_knows_the_settings_and_a_request_timeout_counts_as_one(
    tmp_path: Path,
) -> None:
    async def never_answered(ctx: PhaseContext) -> None:
        raise PhaseFailed("POST /api/deployments: no whole answer within 4.5 s", timed_out=True)

    flow = FakeFlow(("install", "hang", 0.05), name="a")
    record = await Runner(
        flow,
        budget=Budget(60, 5),
        artifacts_dir=tmp_path / "a",
        timeout_settings={"install": "INSTALL_TIMEOUT or --install-timeout (ms)"},
    ).run()
    assert (record.phases[0].reason or "").endswith(
        "; if it only needs longer, raise INSTALL_TIMEOUT or --install-timeout (ms)"
    )

    async def request_timed_out(ctx: PhaseContext) -> None:
        raise TimeoutError("GET /thing: no whole answer within 2.0 s")

    flow = FakeFlow(("deploy", request_timed_out), name="c")
    record = await Runner(
        flow,
        budget=Budget(60, 5),
        artifacts_dir=tmp_path / "c",
        timeout_settings={"deploy": "DEPLOY_TIMEOUT"},
    ).run()
    assert record.phases[0].timed_out
    assert (record.phases[0].reason or "").endswith("raise DEPLOY_TIMEOUT")
    flow = FakeFlow(("deploy", never_answered), name="b")
    record = await Runner(
        flow,
        budget=Budget(60, 5),
        artifacts_dir=tmp_path / "b",
        timeout_settings={"deploy": "DEPLOY_TIMEOUT"},
    ).run()
    phase = record.phases[0]
    assert phase.timed_out and phase.reason == (
        "POST /api/deployments: no whole answer within 4.5 s; if it only needs longer, "
        "raise DEPLOY_TIMEOUT"
    )


async def test_a_timeout_names_the_request_that_kept_failing_however_it_ended(
    tmp_path: Path,
) -> None:
    """A phase that runs out of time while a request keeps failing reports both, whether
    the phase's deadline ends it or the request's retries give up at that deadline; a
    request that answered again since is not named."""
    failing = "GET /api/deployments/x kept failing: answered 503: Service Unavailable"

    async def deadline_first(ctx: PhaseContext) -> None:
        ctx.progress("deployment phase Pending")
        ctx.failing(failing)
        await anyio.sleep_forever()

    async def retries_first(ctx: PhaseContext) -> None:
        ctx.failing(failing)
        raise PhaseFailed("ServerError: GET /api/deployments/x answered 503", timed_out=True)

    async def recovered(ctx: PhaseContext) -> None:
        ctx.failing(failing)
        ctx.failing(None)
        await anyio.sleep_forever()

    reasons = {}
    for name, body in [("a", deadline_first), ("b", retries_first), ("c", recovered)]:
        record = await Runner(
            FakeFlow(("wait-ready", body, 0.05), name=name),
            budget=Budget(60, 5),
            artifacts_dir=tmp_path / name,
            timeout_settings={"wait-ready": "READY_TIMEOUT"},
        ).run()
        phase = record.phases[0]
        assert phase.status == "failed" and phase.timed_out, phase
        reasons[name] = (phase.reason or "", phase.detail or "")
    reason, _ = reasons["a"]
    assert reason.startswith("Wait Ready timed out after 0.1 s (phase timeout 0.05 s;")
    assert reason.endswith(
        f") while {failing}; last seen: deployment phase Pending; if it only needs longer, "
        "raise READY_TIMEOUT"
    )
    reason, detail = reasons["b"]
    assert reason.startswith("Wait Ready timed out after 0.1 s (phase timeout 0.05 s;")
    assert reason.endswith(f") while {failing}; if it only needs longer, raise READY_TIMEOUT")
    assert detail == "the last error: ServerError: GET /api/deployments/x answered 503"
    reason, _ = reasons["c"]
    assert "kept failing" not in reason and reason.startswith("Wait Ready timed out")


async def test_a_phase_that_swallows_cancellation_still_counts_as_timed_out(
    tmp_path: Path,
) -> None:
    async def stubborn(ctx: PhaseContext) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            return

    record = await make_runner(FakeFlow(("install", stubborn, 0.03)), tmp_path).run()
    assert record.phases[0].status == "failed" and record.phases[0].timed_out


async def test_the_budget_caps_the_phase_deadline_and_keeps_the_reserve_for_cleanup(
    tmp_path: Path,
) -> None:
    cleanup_allowed: list[float] = []

    async def cleanup(ctx: PhaseContext) -> None:
        cleanup_allowed.append(ctx.remaining())

    flow = FakeFlow(("wait-ready", "hang", 30.0), cleanup=cleanup)
    budget = Budget(0.5, 0.4, diagnose_cap=0.05, diagnose_floor=0.01, cleanup_floor=0.01)
    record = await make_runner(flow, tmp_path, budget=budget).run()
    phase = record.phases[0]
    assert phase.allowed is not None and phase.allowed <= 0.1 + 1e-6
    assert phase.reason is not None and "capped by the run budget" in phase.reason
    assert record.diagnose is not None and record.diagnose.status == "passed"
    # Cleanup had most of the reserve left: 0.4 s minus what diagnose used.
    assert cleanup_allowed and cleanup_allowed[0] > 0.25
    assert record.cleanup.status == "passed"


async def test_an_exhausted_budget_fails_the_next_phase_at_once_and_still_cleans_up(
    tmp_path: Path,
) -> None:
    clock = FakeClock()

    async def slow(ctx: PhaseContext) -> None:
        clock.advance(500)  # the phase ate the whole budget

    flow = FakeFlow(("install", slow), ("deploy", "pass"), ("infer", "pass"))
    budget = Budget(100, 10, clock, diagnose_floor=0.5, cleanup_floor=2)
    runner = make_runner(flow, tmp_path, budget=budget)
    record = await runner.run()
    deploy = record.phases[1]
    assert "deploy" not in flow.calls
    assert deploy.status == "failed" and deploy.allowed == 0
    assert deploy.reason is not None and "budget ran out" in deploy.reason
    assert record.phases[2].status == "skipped"
    assert flow.calls[-2:] == ["diagnose:deploy", "cleanup"]
    assert record.diagnose is not None and record.diagnose.allowed == pytest.approx(0.5)
    assert record.cleanup.allowed == pytest.approx(2)
    assert record.cleanup.status == "passed"
    assert record.time_spent == pytest.approx(500)


# -- diagnose and cleanup ---------------------------------------------------------------


async def test_a_failing_diagnose_never_hides_the_original_failure(tmp_path: Path) -> None:
    async def broken(ctx: PhaseContext, failed: PhaseRecord) -> None:
        raise RuntimeError("cannot list events")

    flow = FakeFlow(("install", "pass"), ("deploy", "fail"), diagnose=broken)
    record = await make_runner(flow, tmp_path).run()
    assert record.failed_phase == "deploy"
    assert record.phases[1].reason == "deploy went wrong"
    assert record.diagnose is not None and record.diagnose.status == "failed"
    assert record.diagnose.reason == "RuntimeError: cannot list events"
    assert any("diagnose failed: RuntimeError: cannot list events" in line for line in record.log)
    assert record.cleanup.status == "passed" and "cleanup" in flow.calls
    assert (record.outcome, record.exit_code) == ("failed", 1)


async def test_a_hanging_diagnose_is_cut_off_and_cleanup_still_runs(tmp_path: Path) -> None:
    async def hang(ctx: PhaseContext, failed: PhaseRecord) -> None:
        await anyio.sleep_forever()

    budget = Budget(60, 0.1, diagnose_floor=0.01, cleanup_floor=1)
    flow = FakeFlow(("install", "fail"), diagnose=hang)
    record = await make_runner(flow, tmp_path, budget=budget).run()
    assert record.diagnose is not None and record.diagnose.timed_out
    assert record.cleanup.status == "passed"
    assert record.failed_phase == "install"


async def test_a_failing_cleanup_fails_an_otherwise_passing_run(tmp_path: Path) -> None:
    async def cleanup(ctx: PhaseContext) -> None:
        raise PhaseFailed("workspace still present after delete")

    flow = FakeFlow(("install", "pass"), cleanup=cleanup, hints=("kubectl delete ws demo",))
    runner = make_runner(flow, tmp_path)
    record = await runner.run()
    assert all(p.status == "passed" for p in record.phases)
    assert record.cleanup.status == "failed"
    assert record.cleanup.reason == "workspace still present after delete"
    assert record.cleanup.detail is not None and "kubectl delete ws demo" in record.cleanup.detail
    assert (record.outcome, record.exit_code, runner.state) == ("failed", 1, "failed")
    assert record.failed_phase is None


async def test_a_hanging_cleanup_times_out_and_fails_the_run(tmp_path: Path) -> None:
    async def cleanup(ctx: PhaseContext) -> None:
        await anyio.sleep_forever()

    budget = Budget(0.2, 0.1, cleanup_floor=0.01)
    flow = FakeFlow(("install", "pass"), cleanup=cleanup)
    record = await make_runner(flow, tmp_path, budget=budget).run()
    assert record.cleanup.status == "failed" and record.cleanup.timed_out
    assert record.cleanup.reason is not None and "Cleanup timed out" in record.cleanup.reason
    assert record.exit_code == 1


@pytest.mark.parametrize(
    ("policy", "behaviour", "cleaned", "cleanup_status"),
    [
        ("always", "pass", True, "passed"),
        ("always", "fail", True, "passed"),
        ("on-success", "pass", True, "passed"),
        ("on-success", "fail", False, "skipped"),
        ("never", "pass", False, "skipped"),
        ("never", "fail", False, "skipped"),
    ],
)
async def test_cleanup_policies(
    tmp_path: Path, policy: str, behaviour: str, cleaned: bool, cleanup_status: str
) -> None:
    flow = FakeFlow(("install", behaviour), hints=("kubectl get ws -n demo",))
    record = await make_runner(flow, tmp_path, cleanup_policy=policy).run()
    assert ("cleanup" in flow.calls) is cleaned
    assert record.cleanup.status == cleanup_status
    if not cleaned:
        assert record.cleanup.reason == f"resources kept (cleanup policy {policy})"
        assert record.cleanup.detail == "kubectl get ws -n demo"
    assert record.outcome == ("passed" if behaviour == "pass" else "failed")


async def test_an_unknown_cleanup_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cleanup_policy"):
        make_runner(FakeFlow(("install", "pass")), tmp_path, cleanup_policy="sometimes")


# -- interrupts -------------------------------------------------------------------------


async def _run_and_interrupt(runner: Runner, flow: FakeFlow, at: str, *signals: str) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(flow.event(at))
        for signame in signals:
            runner.interrupt(signame)


@pytest.mark.parametrize(("signame", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
async def test_interrupt_during_a_phase_cleans_up_and_exits_with_the_signal_code(
    tmp_path: Path, signame: str, code: int
) -> None:
    flow = FakeFlow(("install", "pass"), ("wait-ready", "block"), ("infer", "pass"))
    reporter = RecordingReporter()
    runner = make_runner(flow, tmp_path, reporters=[reporter])
    with anyio.fail_after(30):  # only a hang reaches this
        await _run_and_interrupt(runner, flow, "wait-ready", signame)
    record = runner.record
    assert statuses(runner) == {
        "install": "passed",
        "wait-ready": "interrupted",
        "infer": "skipped",
        "cleanup": "passed",
    }
    assert record.phases[1].reason == f"interrupted by {signame}"
    assert record.diagnose is None  # an interrupt skips diagnose
    assert flow.calls == ["install", "wait-ready", "cleanup"]
    assert (record.outcome, record.interrupted_by, record.exit_code) == (
        "interrupted",
        signame,
        code,
    )
    assert runner.state == "interrupted"
    assert reporter.events[-1] == ("run_finished", "interrupted")
    assert (tmp_path / "artifacts" / "run.json").exists()


async def test_interrupt_before_the_run_skips_every_phase_but_cleans_up(tmp_path: Path) -> None:
    flow = FakeFlow(("install", "pass"), ("deploy", "pass"))
    runner = make_runner(flow, tmp_path)
    runner.interrupt("SIGTERM")
    record = await runner.run()
    assert flow.calls == ["cleanup"]
    assert [p.status for p in record.phases] == ["skipped", "skipped"]
    assert (record.outcome, record.exit_code) == ("interrupted", 143)


async def test_interrupt_with_keep_on_failure_policy_still_cleans_up(tmp_path: Path) -> None:
    flow = FakeFlow(("install", "block"))
    runner = make_runner(flow, tmp_path, cleanup_policy="on-success")
    with anyio.fail_after(30):  # only a hang reaches this
        await _run_and_interrupt(runner, flow, "install", "SIGINT")
    assert "cleanup" in flow.calls and runner.record.cleanup.status == "passed"


async def test_interrupt_during_diagnose_stops_it_and_goes_to_cleanup(tmp_path: Path) -> None:
    async def hang(ctx: PhaseContext, failed: PhaseRecord) -> None:
        await anyio.sleep_forever()

    flow = FakeFlow(("install", "fail"), diagnose=hang)
    runner = make_runner(flow, tmp_path)
    with anyio.fail_after(30):  # only a hang reaches this
        await _run_and_interrupt(runner, flow, "diagnose", "SIGINT")
    record = runner.record
    assert record.diagnose is not None and record.diagnose.status == "interrupted"
    assert record.cleanup.status == "passed"
    assert record.failed_phase == "install"
    assert (record.outcome, record.exit_code) == ("interrupted", 130)


async def test_a_second_interrupt_during_cleanup_does_not_abort_it(tmp_path: Path) -> None:
    release = anyio.Event()

    async def cleanup(ctx: PhaseContext) -> None:
        await release.wait()
        ctx.log("deleted everything")

    flow = FakeFlow(("install", "block"), cleanup=cleanup)
    runner = make_runner(flow, tmp_path)
    with anyio.fail_after(30):  # only a hang reaches this
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(flow.event("install"))
            runner.interrupt("SIGINT")
            await wait_for(flow.event("cleanup"))
            runner.interrupt("SIGINT")
            release.set()
    record = runner.record
    assert record.cleanup.status == "passed"
    assert any("deleted everything" in line for line in record.log)
    assert any("received during cleanup: cleanup continues" in line for line in record.log)
    assert record.exit_code == 130


async def test_a_third_interrupt_abandons_cleanup_and_still_reports(tmp_path: Path) -> None:
    async def cleanup(ctx: PhaseContext) -> None:
        await anyio.sleep_forever()

    flow = FakeFlow(("install", "block"), cleanup=cleanup, hints=("kubectl delete ns demo",))
    reporter = RecordingReporter()
    runner = make_runner(flow, tmp_path, reporters=[reporter])
    with anyio.fail_after(30):  # only a hang reaches this
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(flow.event("install"))
            runner.interrupt("SIGINT")
            await wait_for(flow.event("cleanup"))
            runner.interrupt("SIGINT")
            runner.interrupt("SIGINT")
    record = runner.record
    assert record.cleanup.status == "interrupted"
    assert record.cleanup.reason is not None
    assert "abandoned after 3 signals" in record.cleanup.reason
    assert record.cleanup.detail is not None and "kubectl delete ns demo" in record.cleanup.detail
    assert (record.outcome, record.exit_code) == ("interrupted", 130)
    assert reporter.events[-1] == ("run_finished", "interrupted")
    assert (tmp_path / "artifacts" / "run.json").exists()


async def test_interrupt_after_the_run_is_ignored(tmp_path: Path) -> None:
    runner = make_runner(FakeFlow(("install", "pass")), tmp_path)
    record = await runner.run()
    runner.interrupt("SIGINT")
    assert (record.outcome, record.exit_code, record.interrupted_by) == ("passed", 0, None)


async def test_cancelling_the_run_from_outside_fails_it_and_still_cleans_up(
    tmp_path: Path,
) -> None:
    """No signal came, so the run is not "interrupted": it failed, and its cleanup ran."""
    flow = FakeFlow(("install", "pass"), ("deploy", "block"), ("infer", "pass"))
    reporter = RecordingReporter()
    runner = make_runner(flow, tmp_path, reporters=[reporter])
    with anyio.fail_after(30):  # only a hang reaches this
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(flow.event("deploy"))
            tg.cancel_scope.cancel()
    record = runner.record
    assert [p.status for p in record.phases] == ["passed", "failed", "skipped"]
    assert record.phases[1].reason is not None and "without a signal" in record.phases[1].reason
    assert flow.calls == ["install", "deploy", "cleanup"]
    assert record.cleanup.status == "passed"
    assert (record.outcome, record.exit_code, record.interrupted_by) == ("failed", 1, None)
    assert reporter.events[-1] == ("run_finished", "failed")
    data = json.loads((tmp_path / "artifacts" / "run.json").read_text())
    assert data["outcome"] == "failed"


async def test_a_cancelled_runner_cleans_up_even_though_its_scope_is_cancelled(
    tmp_path: Path,
) -> None:
    """Cleanup that awaits (deletes, waits for deletion) is shielded from that cancellation."""
    deleted = anyio.Event()

    async def cleanup(ctx: PhaseContext) -> None:
        await anyio.sleep(0)
        await anyio.sleep(0)
        deleted.set()

    flow = FakeFlow(("install", "block"), cleanup=cleanup)
    runner = make_runner(flow, tmp_path)
    with anyio.fail_after(30):  # only a hang reaches this
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(flow.event("install"))
            tg.cancel_scope.cancel()
    assert deleted.is_set()
    assert runner.record.cleanup.status == "passed"


# -- shared machinery ---------------------------------------------------------------


class Breakable:
    """A shared service (like a watch hub) that breaks when told to."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.exited = False
        self._break = anyio.Event()

    def breaks(self) -> None:
        self._break.set()

    async def __aenter__(self) -> Breakable:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._serve)
        self.entered.set()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        self.exited = True
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(*exc)  # type: ignore[arg-type]

    async def _serve(self) -> None:
        await self._break.wait()
        raise KeyError("a malformed line")


async def test_shared_machinery_that_breaks_fails_each_flow_with_its_reason_and_each_cleans_up(
    tmp_path: Path,
) -> None:
    flows = [FakeFlow(("install", "pass"), ("wait", "block"), name=f"f{i}") for i in range(3)]
    runners = [
        Runner(
            flow,
            budget=Budget(60, 10, diagnose_floor=0.5, cleanup_floor=1),
            artifacts_dir=tmp_path / flow.name,
        )
        for flow in flows
    ]
    with anyio.fail_after(30):  # only a hang reaches this
        async with SharedServices() as shared:
            service = await shared.start("the stream hub", Breakable())

            def fail_all(reason: str) -> None:
                for runner in runners:
                    runner.fail(reason)

            shared.on_failure(fail_all)
            async with anyio.create_task_group() as tg:
                for runner in runners:
                    tg.start_soon(runner.run)
                for flow in flows:
                    await wait_for(flow.event("wait"))
                service.breaks()
    assert shared.failures == ["the stream hub failed: KeyError: 'a malformed line'"]
    for flow, runner in zip(flows, runners, strict=True):
        record = runner.record
        assert record.phases[1].status == "failed"
        assert record.phases[1].reason == shared.failures[0]
        assert flow.calls == ["install", "wait", "diagnose:wait", "cleanup"]
        assert record.cleanup.status == "passed"
        assert (record.outcome, record.exit_code, record.interrupted_by) == ("failed", 1, None)


async def test_a_failure_before_a_flow_starts_fails_its_first_phase_without_running_it(
    tmp_path: Path,
) -> None:
    flow = FakeFlow(("install", "pass"), ("deploy", "pass"))
    runner = make_runner(flow, tmp_path)
    runner.fail("the stream hub failed: OSError")
    record = await runner.run()
    assert flow.calls == ["diagnose:install", "cleanup"]
    assert record.phases[0].reason == "Install not started: the stream hub failed: OSError"
    assert (record.outcome, record.exit_code) == ("failed", 1)


async def test_a_failure_during_cleanup_lets_cleanup_finish(tmp_path: Path) -> None:
    release = anyio.Event()

    async def cleanup(ctx: PhaseContext) -> None:
        await release.wait()

    flow = FakeFlow(("install", "pass"), cleanup=cleanup)
    runner = make_runner(flow, tmp_path)
    with anyio.fail_after(30):  # only a hang reaches this
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(flow.event("cleanup"))
            runner.fail("the stream hub failed: OSError")
            release.set()
    assert runner.record.cleanup.status == "passed"
    assert runner.record.outcome == "passed"


async def test_a_service_that_cannot_start_raises_to_the_caller(tmp_path: Path) -> None:
    class Refuses:
        async def __aenter__(self) -> None:
            raise OSError("no route to host")

        async def __aexit__(self, *exc: object) -> None:
            return None

    with pytest.raises(OSError, match="no route"):
        async with SharedServices() as shared:
            await shared.start("the hub", Refuses())


# -- reporters and misuse -----------------------------------------------------------------


async def test_a_broken_reporter_is_logged_and_never_breaks_the_run(tmp_path: Path) -> None:
    after = RecordingReporter()
    flow = FakeFlow(("install", "pass"))
    runner = make_runner(flow, tmp_path, reporters=[BrokenReporter(), after])
    record = await runner.run()
    assert record.outcome == "passed"
    assert after.events[0] == ("run_started",) and after.events[-1] == ("run_finished", "passed")
    assert any(
        "reporter BrokenReporter.phase_started failed: RuntimeError: console exploded" in line
        for line in record.log
    )


async def test_a_runner_runs_once(tmp_path: Path) -> None:
    runner = make_runner(FakeFlow(("install", "pass")), tmp_path)
    await runner.run()
    with pytest.raises(RuntimeError, match="once"):
        await runner.run()


def test_duplicate_phase_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        make_runner(FakeFlow(("install", "pass"), ("install", "pass")), tmp_path)


async def test_a_detached_context_lets_a_phase_run_on_its_own(tmp_path: Path) -> None:
    began = time.monotonic()
    ctx = PhaseContext.detached("Wait Ready", timeout=20, artifacts_dir=tmp_path)
    ctx.log("hello")
    ctx.set_property("k", 1)
    remaining, took = ctx.remaining(), time.monotonic() - began
    assert ctx.lines == ["wait-ready: hello"]
    assert ctx.phase.properties == {"k": "1"}
    # Its deadline is 20 s from its start: bounded by what this test took, however long
    # a loaded machine made that, not by a second's margin.
    assert 20 - took <= remaining <= 20


async def test_a_timeout_names_what_the_phase_last_saw(tmp_path: Path) -> None:
    async def waits(ctx: PhaseContext) -> None:
        ctx.progress("phase Pending, ready 0/1")
        ctx.progress("phase Pending, ready 0/1 (ResourceReady=True)")
        await anyio.sleep_forever()

    flow = FakeFlow(("install", "pass"), ("wait-ready", waits, 0.05))
    record = await make_runner(flow, tmp_path).run()
    reason = record.phases[1].reason or ""
    assert record.phases[1].timed_out
    assert reason.endswith("; last seen: phase Pending, ready 0/1 (ResourceReady=True)")
    assert "progress" not in " ".join(record.log)  # progress notes are not log lines
