"""``orchestrator merge-junit``: one JUnit file and one summary from a matrix of jobs."""

from __future__ import annotations

from pathlib import Path

import xmlschema

from orchestrator.cli import main
from orchestrator.engine import PhaseRecord, RunRecord, junit_xml

SCHEMA = xmlschema.XMLSchema(Path(__file__).parents[1] / "engine" / "junit.xsd")


def job(tmp_path: Path, provider: str, status: str = "passed", finding: bool = False) -> Path:
    phase = PhaseRecord(name="wait_ready", title="Wait Ready", status=status, duration=2.0)
    if status == "failed":
        phase.reason = "deployment never Running"
    if finding:
        phase.properties["finding.ready-replicas-zero"] = "ready-replicas-zero: 0 ready (see F)"
    record = RunRecord(suite=provider, phases=[phase], outcome="passed", time_spent=3.5)
    record.cleanup.status = "passed"
    path = tmp_path / f"integration-test-results-{provider}" / "junit.xml"
    path.parent.mkdir(parents=True)
    path.write_text(junit_xml([record]))
    return path


def test_merges_every_suite_and_summarizes(tmp_path: Path) -> None:
    files = [
        job(tmp_path, "kaito"),
        job(tmp_path, "kuberay", finding=True),
        job(tmp_path, "dynamo", "failed"),
    ]
    out, summary = tmp_path / "junit.xml", tmp_path / "summary.md"
    code = main(["merge-junit", *map(str, files), "-o", str(out), "--summary", str(summary)])
    assert code == 0
    SCHEMA.validate(str(out))
    text = out.read_text()
    for name in ("kaito", "kuberay", "dynamo"):
        assert f'testsuite name="{name}"' in text
    assert 'tests="6"' in text.splitlines()[1] and 'failures="1"' in text.splitlines()[1]
    md = summary.read_text()
    assert md.startswith("## Integration tests: failed")
    assert "| kuberay | ✅ passed | 2 |" in md
    assert "| dynamo | ❌ failed |" in md
    assert "deployment never Running" in md
    assert "### Findings" in md and "ready-replicas-zero: 0 ready (see F)" in md


def test_an_unreadable_report_is_named_and_the_rest_still_merged(tmp_path: Path) -> None:
    good = job(tmp_path, "kaito")
    bad = tmp_path / "bad.xml"
    bad.write_text("<html>not junit")
    missing = tmp_path / "nowhere.xml"
    out, summary = tmp_path / "junit.xml", tmp_path / "summary.md"
    code = main(
        [
            "merge-junit",
            str(good),
            str(bad),
            str(missing),
            "-o",
            str(out),
            "--summary",
            str(summary),
        ]
    )
    assert code == 2
    SCHEMA.validate(str(out))
    assert 'testsuite name="kaito"' in out.read_text()
    md = summary.read_text()
    assert "bad.xml" in md and "nowhere.xml" in md and "could not be read" in md


def test_a_credential_in_a_report_is_masked_in_the_summary(tmp_path: Path) -> None:
    # A report this run did not write (another tool's, an older version's) may hold one.
    path = job(tmp_path, "kaito", "failed")
    path.write_text(
        path.read_text().replace(
            "deployment never Running", "refused https://ci:hunter22@registry.example/v2"
        )
    )
    out, summary = tmp_path / "junit.xml", tmp_path / "summary.md"
    assert main(["merge-junit", str(path), "-o", str(out), "--summary", str(summary)]) == 0
    for text in (summary.read_text(), out.read_text()):
        assert "hunter22" not in text and "https://ci:***@registry.example/v2" in text
