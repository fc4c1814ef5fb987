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
    # The summary table: every step with its outcome and reason.
    table = [line for line in lines if line.startswith("│")]
    assert any("Install Kaito" in r and "passed" in r and "1.2s" in r for r in table)
    assert any("Deploy" in r and "failed" in r and "quota [exceeded]" in r for r in table)
    assert any("Infer" in r and "skipped" in r and "not reached" in r for r in table)
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
    assert "budget left" in text and "Install" in text
    assert "FAILED" in text and "deploy went wrong" in text


async def test_the_live_view_is_stopped_even_when_the_run_is_cancelled(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    reporter = ConsoleReporter(console, live=True)
    flow = FakeFlow(("install", "block"))
    runner = Runner(flow, budget=Budget(60, 5), reporters=[reporter], artifacts_dir=tmp_path / "a")
    views = []
    with anyio.fail_after(5):
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
