"""Several deployments in one run: each its own testsuite and cleanup; one failing dirties no other."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from e2e_harness import leftovers, run_orchestrator

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


async def test_one_failing_deployment_neither_stops_nor_dirties_the_other(
    sandbox, tmp_path: Path
) -> None:
    result = await run_orchestrator(
        sandbox, tmp_path, "--deployment", "name=good", "--deployment", "name=bad,model=nope:1b"
    )
    assert result.code == 1, result.stdout + result.stderr
    result.cases()  # validates the file against the schema
    root = ET.parse(result.junit).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert len(suites) == 2
    good = next(s for n, s in suites.items() if n.startswith("kaito-good-"))
    bad = next(s for n, s in suites.items() if n.startswith("kaito-bad-"))
    assert good.get("failures") == "0" and good.get("skipped") == "0"
    failure = bad.find("testcase/failure")
    assert failure is not None and "not in the backend's catalog" in failure.get("message", "")
    names = [n.removeprefix("kaito-") for n in suites]
    for name in names:
        assert await leftovers(sandbox, name=name) == []
    # Each deployment's artifacts (run.json, diagnostics) sit in a folder of its own.
    assert (result.artifacts / f"kaito-{names[0]}" / "run.json").exists()
    assert (
        next(p for p in result.artifacts.iterdir() if p.name.startswith("kaito-bad-"))
        / "diagnostics"
    ).exists()


async def test_parallel_copies_share_watches_and_all_pass(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path, "--parallel", "5")
    assert result.code == 0, result.stdout + result.stderr
    root = ET.parse(result.junit).getroot()
    assert len(list(root.iter("testsuite"))) == 5
    assert root.get("failures") == "0"
    # KAITO is checked once per run: one suite asked the backend, the other four name it.
    checked_by = [
        s.find("properties/property[@name='kaito_checked_by']") for s in root.iter("testsuite")
    ]
    askers = [
        s.get("name") for s, c in zip(root.iter("testsuite"), checked_by, strict=True) if c is None
    ]
    assert len(askers) == 1
    assert {c.get("value") for c in checked_by if c is not None} == set(askers)
    # Five deployments share a namespace; each read its own pods' events (a field-selected
    # list per pod, which both backends take) and found its own pod's pull there.
    records = [json.loads(p.read_text()) for p in result.artifacts.rglob("run.json")]
    assert len(records) == 5
    for record in records:
        ready = next(p for p in record["phases"] if p["name"] == "wait_ready")["properties"]
        assert ready["image_pull"] == "pulled", record["log"]
