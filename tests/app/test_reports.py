"""Reports are part of the verdict: rewritten or removed on every exit path, and a
report that cannot be written fails the run (exit 3) instead of being named."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator._app import _check_reports
from orchestrator.engine import (
    EXIT_REPORTS,
    Budget,
    JUnitReporter,
    Phase,
    PhaseContext,
    PhaseRecord,
    Runner,
    clear_reports,
)

ROOT = Path(__file__).resolve().parents[2]


def orchestrator(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


class OnePhase:
    """A flow of one phase, no cleanup to do."""

    name = "one"

    def __init__(self, body: Callable[[PhaseContext], Awaitable[None]] | None = None) -> None:
        self._body = body

    def phases(self) -> list[Phase]:
        async def run(ctx: PhaseContext) -> None:
            if self._body is not None:
                await self._body(ctx)

        return [Phase("install", "Install", 5.0, run)]

    def properties(self) -> dict[str, str]:
        return {}

    async def diagnose(self, ctx: PhaseContext, failed: PhaseRecord) -> None:
        pass

    async def cleanup(self, ctx: PhaseContext) -> None:
        pass

    def keep_hints(self) -> list[str]:
        return []


def stale_reports(artifacts: Path) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "run.json").write_text(json.dumps({"outcome": "passed", "exit_code": 0}))
    (artifacts / "junit.xml").write_text('<testsuites tests="6" failures="0"/>')


def test_a_configuration_error_rewrites_every_report(tmp_path: Path) -> None:
    artifacts = tmp_path / "results"
    stale_reports(artifacts)
    out = orchestrator(
        "run", "--artifacts-dir", str(artifacts), "--test-timeout", "x", cwd=tmp_path
    )
    assert out.returncode == 2, out.stderr
    run = json.loads((artifacts / "run.json").read_text())
    assert run["outcome"] == "failed" and run["exit_code"] == 2
    assert "--test-timeout" in run["phases"][0]["reason"]
    root = ET.parse(artifacts / "junit.xml").getroot()
    assert root.attrib["failures"] == "1"


def test_an_unusable_artifacts_dir_is_exit_3_and_names_no_report(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "results"
    out = orchestrator("run", "--artifacts-dir", str(target), cwd=tmp_path)
    assert out.returncode == EXIT_REPORTS == 3
    assert f"{target}: Not a directory" in out.stderr
    assert "--artifacts-dir" in out.stderr  # what to do next
    assert "Traceback" not in out.stderr and "Reports:" not in out.stdout


def test_the_previous_runs_reports_are_removed_before_a_run(tmp_path: Path) -> None:
    stale_reports(tmp_path)
    assert clear_reports(tmp_path) == []
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "junit.xml").exists()
    (tmp_path / "run.json").mkdir()
    [problem] = clear_reports(tmp_path)
    assert problem.path == tmp_path / "run.json" and problem.error == "is a directory"


@pytest.mark.anyio
async def test_reports_that_cannot_be_written_fail_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def block_reports(ctx: PhaseContext) -> None:
        # Something takes the reports' places while the run goes on (a full disk, a
        # directory of the same name, a permission change all end the same way).
        (ctx.artifacts_dir / "run.json").mkdir()
        (tmp_path / "junit.xml").unlink(missing_ok=True)
        (tmp_path / "junit.xml").mkdir()
        (tmp_path / "junit.xml" / "keep").write_text("")

    junit = JUnitReporter(tmp_path / "junit.xml")
    runner = Runner(
        OnePhase(block_reports),
        budget=Budget(60, 5),
        reporters=[junit],
        artifacts_dir=tmp_path / "flow",
    )
    record = await runner.run()
    assert record.outcome == "passed"
    assert [p.path.name for p in runner.report_problems] == ["run.json"]
    buffer = io.StringIO()
    code = _check_reports(0, junit, [runner], Console(file=buffer))
    assert code == 3
    err = capsys.readouterr().err
    assert f"{tmp_path / 'junit.xml'}: " in err and f"{tmp_path / 'flow' / 'run.json'}: " in err
    assert "Reports:" not in buffer.getvalue()
    # A signal's exit code is kept: the interruption is the first thing to know.
    assert _check_reports(130, junit, [runner], Console(file=io.StringIO())) == 130


@pytest.mark.anyio
async def test_written_reports_are_named_after_they_are_written(tmp_path: Path) -> None:
    junit = JUnitReporter(tmp_path / "junit.xml")
    runner = Runner(
        OnePhase(),
        budget=Budget(60, 5),
        reporters=[junit],
        artifacts_dir=tmp_path,
    )
    await runner.run()
    buffer = io.StringIO()
    assert _check_reports(0, junit, [runner], Console(file=buffer)) == 0
    assert buffer.getvalue() == f"Reports: {tmp_path / 'junit.xml'}, {tmp_path / 'run.json'}\n"
    assert (tmp_path / "junit.xml").is_file() and (tmp_path / "run.json").is_file()


def test_an_earlier_runs_folders_go_and_everything_else_stays(tmp_path: Path) -> None:
    from orchestrator._app import _prepare_reports

    stale_reports(tmp_path)
    flow = tmp_path / "kaito-integration-test-llama-abc12-1"
    flow.mkdir()
    (flow / "run.json").write_text(
        json.dumps({"suite": flow.name, "phases": [], "outcome": "passed"})
    )
    (tmp_path / "diagnostics").mkdir()
    (tmp_path / "diagnostics" / "pods.txt").write_text("CrashLoopBackOff")
    (tmp_path / "sandbox.log").write_text("old")
    (tmp_path / "history.jsonl").write_text("{}\n")
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "run.json").write_text('{"not": "ours"}')
    assert _prepare_reports(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl", "notes"]
    assert (mine / "run.json").exists()


def test_a_signal_at_the_very_end_of_a_run_of_several_flows_keeps_its_reports(
    tmp_path: Path,
) -> None:
    """A signal after the run gave its handlers back ends the command with 130/143 and,
    when the run had not reported, a report saying it stopped before starting. A run of
    several flows reports in junit.xml and one run.json per flow, in folders of their
    own: those must stay, not be replaced by a report of a run that never started."""
    import time

    from orchestrator.cli import _report_stopped

    started = time.time() - 1
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="kaito-a"/><testsuite name="kaito-b"/></testsuites>'
    )
    for folder in ("kaito-a", "kaito-b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "run.json").write_text('{"outcome": "passed"}')
    before = junit.read_text()
    _report_stopped("SIGTERM", str(tmp_path), started)
    assert junit.read_text() == before
    assert not (tmp_path / "run.json").exists()
