"""GitHub Actions output: the job summary's table and Gantt chart, and the annotations."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from engine_fakes import FakeClock, FakeFlow

from orchestrator.engine import (
    Budget,
    GitHubReporter,
    PhaseContext,
    PhaseFailed,
    PhaseRecord,
    Runner,
    RunRecord,
)
from orchestrator.engine._github import cell, escape_data, escape_property, gantt

# Mermaid's Gantt grammar, as this chart uses it (mermaid.js.org/syntax/gantt): the
# header statements, sections, and tasks "<title> :<tags>, <id>, <start>, <end>" whose
# title holds no ':', '#' or ';', whose tags are crit/done/active, and whose start and
# end are in the dateFormat declared above them.
HEADER = [
    re.compile(r"^gantt$"),
    re.compile(r"^    title [^#;\n]+$"),
    re.compile(r"^    dateFormat HH:mm:ss\.SSS$"),
    re.compile(r"^    axisFormat %M:%S$"),
    re.compile(r"^    todayMarker off$"),
]
SECTION = re.compile(r"^    section [^:#;\n]+$")
TASK = re.compile(
    r"^    (?P<title>[^:#;%\n]+?) :(?P<tags>(?:(?:crit|done|active), )*)(?P<id>[A-Za-z]\w*), "
    r"(?P<start>\d\d:\d\d:\d\d\.\d{3}), (?P<end>\d\d:\d\d:\d\d\.\d{3})$"
)


def timed(clock: FakeClock, seconds: float, fail: str | None = None):
    async def body(ctx: PhaseContext) -> None:
        clock.advance(seconds)
        if fail:
            raise PhaseFailed(fail, detail="pods:\n  web-0 | Pending")

    return body


async def run(flow: FakeFlow, clock: FakeClock, tmp_path: Path) -> tuple[RunRecord, str, str]:
    out = io.StringIO()
    summary = tmp_path / "summary.md"
    reporter = GitHubReporter(summary, stream=out)
    budget = Budget(600, 60, clock, diagnose_floor=0.5, cleanup_floor=1)
    record = await Runner(
        flow, budget=budget, reporters=[reporter], artifacts_dir=tmp_path / "artifacts"
    ).run()
    return record, summary.read_text(), out.getvalue()


def mermaid_block(summary: str) -> list[str]:
    match = re.search(r"```mermaid\n(.*?)\n```", summary, re.S)
    assert match, summary
    return match.group(1).split("\n")


def check_gantt(lines: list[str]) -> list[re.Match[str]]:
    """Every line is valid; returns the task lines, in order."""
    for pattern, line in zip(HEADER, lines, strict=False):
        assert pattern.match(line), line
    tasks = []
    for line in lines[len(HEADER) :]:
        if SECTION.match(line):
            continue
        task = TASK.match(line)
        assert task, f"not a Gantt task line: {line!r}"
        assert task["start"] <= task["end"]
        tasks.append(task)
    ids = [t["id"] for t in tasks]
    assert len(ids) == len(set(ids)), ids
    return tasks


@pytest.mark.anyio
async def test_a_passing_run_gets_a_table_and_a_gantt_chart(tmp_path: Path) -> None:
    clock = FakeClock()
    flow = FakeFlow(
        ("install", timed(clock, 1.2)),
        ("wait-ready", timed(clock, 62.5)),
        properties={"model": "llama3.2:1b"},
    )
    record, summary, out = await run(flow, clock, tmp_path)
    assert record.outcome == "passed"
    assert summary.startswith("## ✅ fake: passed in 63.7 s\n")
    assert "| 1 | Install | ✅ passed | 1.2 s |  |" in summary
    assert "| 2 | Wait Ready | ✅ passed | 62.5 s |  |" in summary
    assert "| 3 | Cleanup | ✅ passed | 0.0 s |  |" in summary

    lines = mermaid_block(summary)
    tasks = check_gantt(lines)
    assert [(t["title"], t["tags"], t["start"], t["end"]) for t in tasks] == [
        ("Install", "done, ", "00:00:00.000", "00:00:01.200"),
        ("Wait Ready", "done, ", "00:00:01.200", "00:01:03.700"),
        ("Cleanup", "done, ", "00:01:03.700", "00:01:03.701"),
    ]
    assert "    section Run" in lines and "    section Cleanup" in lines
    assert "| model | llama3.2:1b |" in summary and "| outcome | passed |" in summary
    assert out == ""  # no annotation for a passing run


@pytest.mark.anyio
async def test_a_failing_run_marks_the_failed_phase_crit_and_annotates_it(tmp_path: Path) -> None:
    clock = FakeClock()
    flow = FakeFlow(
        ("install", timed(clock, 2)),
        ("deploy", timed(clock, 3, "quota | exceeded: 50% <used>")),
        ("infer", "pass"),
    )
    record, summary, out = await run(flow, clock, tmp_path)
    assert record.outcome == "failed"
    assert summary.startswith("## ❌ fake: failed")
    assert "**Deploy** failed: quota | exceeded: 50% &lt;used&gt;" in summary
    assert "| 2 | Deploy | ❌ failed | 3.0 s | quota \\| exceeded: 50% &lt;used&gt; |" in summary
    assert "| 3 | Infer | ⏭️ skipped | – | not reached |" in summary

    tasks = check_gantt(mermaid_block(summary))
    assert [(t["title"], t["tags"]) for t in tasks] == [
        ("Install", "done, "),
        ("Deploy", "crit, "),
        ("Diagnose", "done, "),
        ("Cleanup", "done, "),
    ]
    assert tasks[1]["start"] == "00:00:02.000" and tasks[1]["end"] == "00:00:05.000"

    assert out.splitlines() == [
        "::error title=fake%3A Deploy failed::quota | exceeded: 50%25 <used>%0Apods:%0A  web-0 | Pending"
    ]


def test_titles_that_would_break_the_gantt_grammar_are_made_plain() -> None:
    record = RunRecord(
        suite="kaito; #1",
        phases=[
            PhaseRecord(
                name="deploy",
                title="Deploy llama3.2:1b; #2 %% x",
                status="failed",
                offset=0.25,
                duration=1.0,
            ),
            PhaseRecord(name="odd", title=":#;", status="passed", offset=1.25, duration=0.0004),
        ],
        outcome="failed",
    )
    lines = gantt(record).strip().split("\n")
    assert lines[0] == "```mermaid" and lines[-1] == "```"
    tasks = check_gantt(lines[1:-1])
    assert [(t["title"], t["start"], t["end"]) for t in tasks] == [
        ("Deploy llama3.2 1b 2 x", "00:00:00.250", "00:00:01.250"),
        ("Phase 2", "00:00:01.250", "00:00:01.251"),
    ]
    assert lines[2] == "    title kaito 1 timeline"


def test_a_run_that_never_started_a_phase_has_no_chart() -> None:
    assert gantt(RunRecord(suite="kaito", phases=[PhaseRecord(name="a", title="A")])) == ""


def test_table_cells_escape_pipes_newlines_and_html() -> None:
    assert cell("a|b\r\nc\rd\ne") == "a\\|b<br>c<br>d<br>e"
    assert cell("<b>&</b>") == "&lt;b&gt;&amp;&lt;/b&gt;"
    assert cell("bell\x07 \x1b[31mred\x1b[0m") == "bell red"
    assert len(cell("x" * 5000)) == 500


def test_workflow_command_escaping() -> None:
    assert escape_data("50% done\r\nnext: a, b") == "50%25 done%0D%0Anext: a, b"
    assert escape_property("kaito: Deploy, retry\n%") == "kaito%3A Deploy%2C retry%0A%25"


def test_an_interrupted_run_is_a_warning_and_the_summary_says_by_what(tmp_path: Path) -> None:
    record = RunRecord(
        suite="kaito",
        outcome="interrupted",
        interrupted_by="SIGTERM",
        phases=[
            PhaseRecord(name="install", title="Install", status="interrupted", offset=0, duration=4)
        ],
    )
    out = io.StringIO()
    GitHubReporter(tmp_path / "summary.md", stream=out).run_finished(record)
    assert (
        out.getvalue()
        == "::warning title=kaito%3A interrupted::the run was interrupted by SIGTERM\n"
    )
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("## ⚠️ kaito: interrupted\n\nInterrupted by SIGTERM.")
    assert check_gantt(mermaid_block(summary))[0]["tags"] == "crit, "


def test_the_summary_path_comes_from_the_environment_and_is_appended_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "step_summary.md"
    target.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    record = RunRecord(suite="kaito", outcome="passed")
    GitHubReporter(stream=io.StringIO()).run_finished(record)
    text = target.read_text()
    assert text.startswith("earlier step\n## ✅ kaito: passed")

    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert GitHubReporter(stream=io.StringIO()).summary_path is None


def test_an_unwritable_summary_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    out = io.StringIO()
    GitHubReporter(tmp_path / "missing-dir" / "summary.md", stream=out).run_finished(
        RunRecord(suite="kaito", outcome="passed")
    )
    assert out.getvalue().startswith("::warning::cannot write the job summary")
