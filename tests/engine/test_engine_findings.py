"""Findings: a phase that decided from the ground truth says what the system under test got
wrong, in JUnit (property and testcase output), the console and run.json; --strict fails it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from engine_fakes import FakeFlow
from rich.console import Console
from test_engine_junit import cases, parse, run_flow

from orchestrator.engine import Budget, ConsoleReporter, PhaseContext, Runner

pytestmark = pytest.mark.anyio

FACT = "PROVIDERS.md#3-status"


async def finds(ctx: PhaseContext) -> None:
    ctx.finding("ready-replicas-zero", "Running with 0 ready replicas; 1 pod ready", FACT)
    ctx.finding("ready-replicas-zero", "said twice, recorded once", FACT)


async def test_a_finding_is_reported_and_the_phase_passes(tmp_path: Path) -> None:
    flow = FakeFlow(("wait-ready", finds), ("delete", "pass"))
    record, path = await run_flow(flow, tmp_path)
    assert record.outcome == "passed"
    phase = record.phases[0]
    assert [f.name for f in phase.findings] == ["ready-replicas-zero"]
    assert phase.findings[0].fact == FACT

    root = parse(path)  # still valid junit-10
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["finding.ready-replicas-zero"] == (
        f"ready-replicas-zero: Running with 0 ready replicas; 1 pod ready (see {FACT})"
    )
    wait_ready, delete = cases(root)[:2]
    out = wait_ready.find("system-out")
    assert out is not None and "FINDING ready-replicas-zero" in (out.text or "")
    assert FACT in (out.text or "")
    assert delete.find("system-out") is None
    run_json = json.loads((tmp_path / "artifacts" / "run.json").read_text())
    assert run_json["phases"][0]["findings"][0]["name"] == "ready-replicas-zero"


async def test_strict_fails_the_phase_that_found_something(tmp_path: Path) -> None:
    flow = FakeFlow(("wait-ready", finds), ("delete", "pass"))
    record, path = await run_flow(flow, tmp_path, strict=True)
    assert record.outcome == "failed" and record.failed_phase == "wait-ready"
    assert record.phases[0].reason == "--strict: 1 finding(s): ready-replicas-zero"
    assert record.phases[1].status == "skipped"
    failure = cases(parse(path))[0].find("failure")
    assert failure is not None and "--strict" in (failure.get("message") or "")


async def test_strict_without_findings_changes_nothing(tmp_path: Path) -> None:
    record, _ = await run_flow(FakeFlow(("wait-ready", "pass")), tmp_path, strict=True)
    assert record.outcome == "passed"


async def test_the_console_lists_the_findings(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    runner = Runner(
        FakeFlow(("wait-ready", finds)),
        budget=Budget(60, 5, diagnose_floor=0.5, cleanup_floor=1),
        reporters=[ConsoleReporter(console, live=False)],
        artifacts_dir=tmp_path,
    )
    await runner.run()
    text = out.getvalue()
    assert "1 finding(s)" in text
    assert "Wait Ready: ready-replicas-zero: Running with 0 ready replicas" in text


async def test_github_gets_a_findings_table_and_a_warning_each(tmp_path: Path) -> None:
    from orchestrator.engine._github import job_summary, workflow_commands

    record, _ = await run_flow(FakeFlow(("wait-ready", finds)), tmp_path)
    summary = job_summary(record)
    assert "**Findings**" in summary and "| Wait Ready | ready-replicas-zero |" in summary
    assert FACT in summary
    (warning,) = workflow_commands(record)
    assert warning.startswith("::warning title=fake%3A finding ready-replicas-zero::")

    strict, _ = await run_flow(FakeFlow(("wait-ready", finds)), tmp_path / "s", strict=True)
    commands = workflow_commands(strict)
    assert not any(c.startswith("::warning") for c in commands)  # the ::error says it
    assert any(c.startswith("::error") and "ready-replicas-zero" in c for c in commands)
