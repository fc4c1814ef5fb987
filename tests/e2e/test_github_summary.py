"""Under GitHub Actions: a job summary that renders, and an annotation for the failing phase."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from e2e_harness import run_orchestrator

from orchestrator.sandbox import Faults

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

# Mermaid's task grammar: "<title> :<tags>, <id>, <start>, <end>" with dateFormat HH:mm:ss.SSS.
GANTT_TASK = re.compile(
    r"^ {4}[^:#;]+ :((crit|active|done), )*[A-Za-z][A-Za-z0-9_]*, "
    r"\d{2}:\d{2}:\d{2}\.\d{3}, \d{2}:\d{2}:\d{2}\.\d{3}$"
)


@pytest.mark.parametrize("faults", [Faults(image_pull_error=True)])
async def test_summary_and_annotation_for_a_failing_run(sandbox, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    result = await run_orchestrator(
        sandbox, tmp_path, env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    )
    assert result.code == 1
    text = summary.read_text()
    # A Markdown table with a header separator and a row per phase.
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) >= 2 + 5 and set(table[1].replace("|", "").strip()) <= set("-: ")
    assert any("Wait Ready" in row and "failed" in row for row in table)
    # A Mermaid gantt block whose task lines all follow the task grammar.
    block = text.split("```mermaid", 1)[1].split("```", 1)[0].splitlines()
    assert block[1].strip() == "gantt"
    tasks = [line for line in block if line.startswith("    ") and " :" in line]
    assert tasks and all(GANTT_TASK.match(t) for t in tasks), tasks
    assert any(t.lstrip().startswith("Wait Ready") and ":crit," in t for t in tasks)
    # The annotation names the failing phase, on one line.
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert any(
        "Wait Ready" in e and ("ErrImagePull" in e or "ImagePullBackOff" in e) for e in errors
    ), result.stdout[-2000:]
