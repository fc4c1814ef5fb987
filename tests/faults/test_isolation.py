"""Isolation: shared machinery that breaks fails the flows that depend on it; it never
cancels their runners, so every flow still cleans up and the exit code is 1, not 130.

The break is injected into the real command: a ``sitecustomize`` module (on the child's
``PYTHONPATH``) replaces the watch hub's task for the deployments' pods with one that
raises a plain bug, outside the recovery its stream loop has, once every flow is past
Deploy: the hub's task group itself fails, as any shared machinery's could.
"""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from e2e_harness import leftovers
from faults_harness import run_with_hooks, started

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

INJECT = textwrap.dedent(
    """
    from orchestrator.clients._hub import WatchHub

    real_pump = WatchHub._pump

    async def broken_pump(self, stream):
        if stream.resource.plural == "pods" and stream.namespace == "kaito-workspace":
            raise KeyError("injected: the shared stream broke")
        await real_pump(self, stream)

    WatchHub._pump = broken_pump
    """
)


async def test_a_broken_shared_stream_fails_every_flow_and_each_cleans_up(
    sandbox, tmp_path: Path
) -> None:
    sandbox.update_faults({"stub_models": True})
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT)
    result = await run_with_hooks(
        sandbox,
        tmp_path,
        "--parallel",
        "3",
        hooks=[(started("Cleanup"), lambda _proc: None)],
        env={"PYTHONPATH": str(inject), "CI": "true"},
    )
    out = result.stdout + result.stderr
    assert result.code == 1, out
    assert "Traceback" not in out and "interrupted" not in out.lower(), out
    root = ET.parse(result.junit).getroot()
    suites = list(root.iter("testsuite"))
    assert len(suites) == 3
    for suite in suites:
        cases = {c.get("name", "").split(".")[-1]: c for c in suite.iter("testcase")}
        failed = [c for c in cases.values() if c.find("failure") is not None]
        assert failed, f"{suite.get('name')} did not fail"
        message = failed[0].find("failure").get("message", "")  # type: ignore[union-attr]
        assert "watch hub failed" in message and "injected" in message, message
        cleanup = next(c for n, c in cases.items() if n.endswith("Cleanup"))
        assert cleanup.find("failure") is None and cleanup.find("error") is None
        assert await leftovers(sandbox, name=suite.get("name", "").removeprefix("kaito-")) == []
