"""Console output: plain lines off a terminal, a live view on one, always a verdict."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import pytest
from engine_fakes import FakeClock, FakeFlow, wait_for
from rich.console import Console

from orchestrator.engine import (
    Budget,
    ConsoleReporter,
    PhaseContext,
    PhaseFailed,
    Runner,
    RunRecord,
)

pytestmark = pytest.mark.anyio


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, force_terminal=False), buffer


async def run_with(
    reporter: ConsoleReporter, flow: FakeFlow, tmp_path: Path, clock: FakeClock | None = None
) -> None:
    clock = clock or FakeClock()
    budget = Budget(600, 60, clock, diagnose_floor=0.5, cleanup_floor=1)
    await Runner(
        flow, budget=budget, reporters=[reporter], artifacts_dir=tmp_path / "artifacts"
    ).run()


async def test_plain_output_lists_each_phase_with_time_and_outcome(tmp_path: Path) -> None:
    clock = FakeClock()

    def taking(seconds: float, fail: str | None = None):
        async def body(ctx: PhaseContext) -> None:
            clock.advance(seconds)
            if fail:
                raise PhaseFailed(fail)

        return body

    flow = FakeFlow(
        ("install-kaito", taking(1.2)),
        ("deploy", taking(0.8, "quota [exceeded]")),
        ("infer", "pass"),
        properties={"model": "phi", "provider": "kaito"},
    )
    console, buffer = plain_console()
    reporter = ConsoleReporter(console, junit_path="out/junit.xml")
    assert reporter.live is False
    await run_with(reporter, flow, tmp_path, clock)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == (
        "fake: budget 600 s (60 s reserved for diagnose and cleanup); model=phi, provider=kaito"
    )
    assert "[  0.0s] Install Kaito ... started (allowed 5.0 s)" in lines
    assert "[  1.2s] Install Kaito ... passed (1.2s)" in lines
    assert "[  2.0s] Deploy ... failed (0.8s): quota [exceeded]" in lines
    text = buffer.getvalue()
    assert "Diagnose ... passed" in text and "Cleanup ... passed" in text
    assert "Infer ... started" not in text
    # The summary: plain aligned lines (no box drawing in a log), every step with its
    # outcome, time and reason.
    start = lines.index("fake: summary")
    table = lines[start + 1 : start + 6]
    assert table[0].split() == ["Install", "Kaito", "passed", "1.2s"]
    assert table[1].split() == ["Deploy", "failed", "0.8s", "quota", "[exceeded]"]
    assert table[2].split() == ["Infer", "skipped", "-", "not", "reached"]
    assert not any(line.startswith(("│", "┃", "┏")) for line in lines)
    assert lines[-1] == (
        "FAILED fake in 2.0 s (exit code 1); failed at Deploy: quota [exceeded]; "
        "JUnit report: out/junit.xml"
    )
    assert "\x1b[" not in text


async def test_plain_verdict_for_a_passing_run(tmp_path: Path) -> None:
    console, buffer = plain_console()
    await run_with(ConsoleReporter(console), FakeFlow(("install", "pass")), tmp_path)
    assert buffer.getvalue().splitlines()[-1] == "PASSED fake in 0.0 s (exit code 0)"


async def test_plain_verdict_for_an_interrupted_run(tmp_path: Path) -> None:
    console, buffer = plain_console()
    flow = FakeFlow(("install", "pass"))
    runner = Runner(
        flow,
        budget=Budget(60, 5),
        reporters=[ConsoleReporter(console)],
        artifacts_dir=tmp_path / "a",
    )
    runner.interrupt("SIGTERM")
    await runner.run()
    last = buffer.getvalue().splitlines()[-1]
    assert last.startswith("INTERRUPTED fake in ")
    assert last.endswith("(exit code 143); interrupted by SIGTERM")


def test_live_mode_follows_the_terminal_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert ConsoleReporter(terminal).live is True
    assert ConsoleReporter(Console(file=io.StringIO(), force_terminal=False)).live is False
    assert ConsoleReporter(terminal, live=False).live is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert ConsoleReporter(Console(file=io.StringIO(), force_terminal=True)).live is False


async def test_the_live_view_runs_during_the_run_and_is_stopped_at_the_end(
    tmp_path: Path,
) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    reporter = ConsoleReporter(console, live=True, refresh_per_second=20)
    during: list[bool] = []

    async def look(ctx: PhaseContext) -> None:
        during.append(reporter._view is not None and reporter._view.is_started)

    await run_with(reporter, FakeFlow(("install", look), ("deploy", "fail")), tmp_path)
    assert during == [True]
    assert reporter._view is None
    text = buffer.getvalue()
    assert "s left" in text and "Install" in text
    assert "FAILED" in text and "deploy went wrong" in text


async def test_the_live_view_is_stopped_even_when_the_run_is_cancelled(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    reporter = ConsoleReporter(console, live=True)
    flow = FakeFlow(("install", "block"))
    runner = Runner(flow, budget=Budget(60, 5), reporters=[reporter], artifacts_dir=tmp_path / "a")
    views = []
    with anyio.fail_after(30):  # only a hang reaches this
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(flow.event("install"))
            views.append(reporter._view)
            tg.cancel_scope.cancel()
    assert views[0] is not None and not views[0].is_started
    assert reporter._view is None


def test_close_stops_a_live_view_that_never_got_its_run_finished() -> None:
    reporter = ConsoleReporter(Console(file=io.StringIO(), force_terminal=True), live=True)
    with reporter:
        reporter.run_started(RunRecord(suite="s"))
        view = reporter._view
        assert view is not None and view.is_started
    assert not view.is_started


async def test_prefixed_output_names_the_suite_and_never_goes_live(tmp_path: Path) -> None:
    console, out = plain_console()
    reporter = ConsoleReporter(console, live=True, prefix=True)
    assert reporter.live is False
    await run_with(reporter, FakeFlow(("install", "pass"), name="kaito-a"), tmp_path)
    lines = [line for line in out.getvalue().splitlines() if "Install" in line and "..." in line]
    assert lines and all(line.startswith("kaito-a: [") for line in lines)


# -- widths, logs and many flows ---------------------------------------------------------

LONG_REASON = (
    "pod integration-test-llama-0 container model: CrashLoopBackOff (image "
    "ghcr.io/kaito-project/aikit/llama3.2:1b); see /var/tmp/some/long/artifacts/path/"
    "integration-test-llama/diagnostics/pods.txt and run kubectl -n kaito-workspace "
    "describe pods -l kaito.sh/workspace=integration-test-llama"
)


def _failed_run() -> RunRecord:
    from orchestrator.engine import PhaseRecord

    record = RunRecord(suite="kaito", budget_total=600, budget_reserve=60)
    record.phases = [
        PhaseRecord(
            name="install", title="Install KAITO", status="passed", duration=1.4, allowed=180
        ),
        PhaseRecord(
            name="deploy", title="Deploy llama3.2:1b", status="passed", duration=0.6, allowed=60
        ),
        PhaseRecord(
            name="wait-ready",
            title="Wait Ready",
            status="failed",
            duration=12.3,
            allowed=300,
            reason=LONG_REASON,
        ),
        PhaseRecord(name="inference", title="Inference", status="skipped", reason="not reached"),
    ]
    record.cleanup.status = "running"
    record.cleanup.offset = 14.0
    record.cleanup.allowed = 120
    record.cleanup.note = "the Workspace and its pods to be gone"
    record.cleanup.last_seen = "pod integration-test-llama-0 Terminating"
    return record


@pytest.mark.parametrize("width", [80, 120])
def test_the_live_view_keeps_phases_and_times_at_any_width(width: int, tmp_path: Path) -> None:
    from orchestrator.engine import run_view, summary_table

    console = Console(width=width, record=True, force_terminal=True, color_system=None)
    console.print(run_view(_failed_run(), width=width, run_elapsed=17.5))
    console.print(summary_table(_failed_run()))
    text = console.export_text()
    console.save_svg(str(tmp_path / f"console-{width}.svg"), title="orchestrator")
    assert (tmp_path / f"console-{width}.svg").read_text().startswith("<svg")
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    titles = ["Install KAITO", "Deploy llama3.2:1b", "Wait Ready", "Inference", "Cleanup"]
    rows = {title: next(line for line in lines if title in line) for title in titles}
    assert "1.4s" in rows["Install KAITO"] and "180s" in rows["Install KAITO"]
    assert "0.6s" in rows["Deploy llama3.2:1b"]
    assert "12.3s" in rows["Wait Ready"] and "300s" in rows["Wait Ready"]
    # Cleanup is running: its own elapsed time, and the note says what it waits for.
    assert "3.5s" in rows["Cleanup"]
    # ... and what it waits for, whole: in its row when it fits, else below the table.
    joined = " ".join(line.strip() for line in lines)
    assert (
        "waiting for the Workspace and its pods to be gone; last seen: pod "
        "integration-test-llama-0 Terminating"
    ) in joined
    # The long reason is not cut: below the table, whole once its lines are joined.
    start = next(i for i, line in enumerate(lines) if line.startswith("Wait Ready failed:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Cleanup: waiting"))
    assert " ".join(line.strip() for line in lines[start:end]) == (
        f"Wait Ready failed: {LONG_REASON}"
    )
    assert "17.5 s elapsed · budget 582/600 s left" in text
    # The summary table keeps every step, outcome and duration on one row each.
    for title, outcome, took in [
        ("Install KAITO", "passed", "1.4s"),
        ("Deploy llama3.2:1b", "passed", "0.6s"),
        ("Wait Ready", "failed", "12.3s"),
    ]:
        assert any(title in line and outcome in line and took in line for line in lines)


def test_the_note_says_what_a_running_phase_waits_for_what_fails_and_last_saw() -> None:
    from orchestrator.engine import PhaseRecord
    from orchestrator.engine._console import phase_note

    phase = PhaseRecord(name="w", title="Wait", status="running")
    assert phase_note(phase) == ""
    ctx = PhaseContext(phase=phase, deadline=0.0, artifacts_dir=Path("."))
    ctx.note("1 ready replica")
    ctx.progress("phase Pending, 0/1 ready")
    assert phase_note(phase) == "waiting for 1 ready replica; last seen: phase Pending, 0/1 ready"
    ctx.failing("GET /api/deployments/x kept failing: answered 503: Service Unavailable")
    assert phase_note(phase) == (
        "waiting for 1 ready replica; GET /api/deployments/x kept failing: answered 503: "
        "Service Unavailable; last seen: phase Pending, 0/1 ready"
    )
    ctx.failing(None)
    assert phase_note(phase) == "waiting for 1 ready replica; last seen: phase Pending, 0/1 ready"
    phase.status = "failed"
    phase.reason = "timed out"
    assert phase_note(phase) == "timed out"


async def test_a_log_gets_whole_lines_however_long(tmp_path: Path) -> None:
    """A CI log viewer wraps by itself: a path or command cut in two cannot be copied."""

    async def fail(ctx: PhaseContext) -> None:
        raise PhaseFailed(LONG_REASON)

    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=False)
    await run_with(
        ConsoleReporter(console), FakeFlow(("install", "pass"), ("wait", fail)), tmp_path
    )
    text = buffer.getvalue()
    lines = text.splitlines()
    assert any(line.endswith(f"Wait ... failed (0.0s): {LONG_REASON}") for line in lines)
    assert any(
        line.split()[:3] == ["Wait", "failed", "0.0s"] and LONG_REASON in line for line in lines
    )
    assert lines[-1].startswith("FAILED fake") and lines[-1].endswith(LONG_REASON)


def test_many_flows_get_a_row_each_and_a_budget_footer() -> None:
    from orchestrator.engine import runs_view

    running = _failed_run()
    running.suite = "kaito-b"
    passed = RunRecord(suite="kaito-a", outcome="passed", time_spent=20.5)
    failed = _failed_run()
    failed.suite = "kaito-c"
    failed.outcome = "failed"
    failed.time_spent = 30.1
    console = Console(width=80, record=True, force_terminal=True, color_system=None)
    console.print(runs_view([passed, running, failed], width=80, run_elapsed=31.0, budget=600))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "kaito-a" in lines[1] and "done" in lines[1] and "20.5s" in lines[1]
    assert (
        "kaito-b" in lines[2]
        and "Cleanup" in lines[2]
        and "pod integration-test-llama-0 Terminating" in lines[2]
    )
    assert "kaito-c" in lines[3] and "Wait Ready" in lines[3] and "30.1s" in lines[3]
    assert lines[4] == "3 flows: 1 passed, 1 failed, 1 running · 31.0 s · budget 569/600 s left"
    # More flows than lines: what needs attention first, the rest counted.
    console = Console(width=80, height=6, record=True, force_terminal=True, color_system=None)
    console.print(runs_view([passed] * 5 + [failed], width=80, height=6, run_elapsed=31.0))
    lines = console.export_text().splitlines()
    assert "kaito-c" in lines[1] and "(4 not shown)" in lines[-1]


async def test_one_live_view_for_many_runs(tmp_path: Path) -> None:
    from orchestrator.engine import RunsView

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    view = RunsView(console, budget=600, refresh_per_second=20)
    seen: list[bool] = []

    async def look(ctx: PhaseContext) -> None:
        seen.append(view._view is not None and view._view.is_started)

    flows = [FakeFlow(("install", look), name=f"kaito-{i}") for i in range(3)]
    async with anyio.create_task_group() as tg:
        for flow in flows:
            budget = Budget(600, 60)
            tg.start_soon(
                Runner(
                    flow, budget=budget, reporters=[view], artifacts_dir=tmp_path / flow.name
                ).run
            )
    assert seen == [True, True, True]
    view.close()
    assert view._view is None
    text = buffer.getvalue()
    assert all(f"kaito-{i}" in text for i in range(3)) and "3 flows" in text


def test_flows_of_one_run_name_their_common_prefix_once() -> None:
    from orchestrator.engine import runs_view

    records = [RunRecord(suite=f"kaito-integration-test-llama-7574f-{i}") for i in (1, 2)]
    console = Console(width=80, record=True, force_terminal=True, color_system=None)
    console.print(runs_view(records, width=80, run_elapsed=1.0))
    lines = console.export_text().splitlines()
    assert lines[0].strip() == "kaito-integration-test-llama-7574f-…"
    assert lines[2].split()[1] == "1" and lines[3].split()[1] == "2"
