"""The example in examples/ is a third-party flow: installed as a package, run by name.

The package is installed the way a user would (pip, from its own pyproject.toml) into a
directory of its own, and the orchestrator finds it through its entry point: the
repository is not changed, and nothing but the example's public imports make it work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_harness import ROOT, leftovers, run_orchestrator

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

EXAMPLE = ROOT / "examples" / "kaito-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed into a directory that PYTHONPATH then names.

    From a copy of its source (a build writes next to the sources), without build
    isolation or an index: the test venv's setuptools builds it, offline, in seconds.
    """
    work = tmp_path_factory.mktemp("example")
    source = work / "src"
    shutil.copytree(EXAMPLE, source)
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_the_installed_flow_is_listed_with_its_description(installed: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "flows"],
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("kaito-example "))
    assert "ready only when its model pod agrees" in line
    assert "[orchestrator-kaito-example 0.1.0]" in line


async def test_the_example_runs_by_name_and_leaves_nothing(
    sandbox, installed: Path, tmp_path: Path
) -> None:
    result = await run_orchestrator(
        sandbox, tmp_path, "--flow", "kaito-example", env={"PYTHONPATH": str(installed)}
    )
    assert result.code == 0, result.verdicts()
    cases = result.cases()
    assert list(cases) and all(c["status"] == "passed" for c in cases.values()), cases
    assert "Install KAITO" in " ".join(cases)
    log = (result.artifacts / "run.json").read_text()
    assert "made Secret integration-test-llama-notes" in log
    assert "deleted Secret kaito-workspace/integration-test-llama-notes" in log
    assert await leftovers(sandbox) == []
