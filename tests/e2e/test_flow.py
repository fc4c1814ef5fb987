"""The real command against the sandbox: the passing flow and one failure per phase.

Every test checks the same things a CI user relies on: the exit code, which
phase failed and why (in the JUnit failure message), that diagnostics were
written, that the JUnit file is valid, and that nothing this run created is left.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import PHASES, leftovers, run_orchestrator

from orchestrator.sandbox import Faults
from orchestrator.sandbox.kaito import CRASH_LINE

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

DIAG_FILES = ["pods-all.txt", "describe-pods.txt", "events.txt", "backend-exchanges.json"]


def assert_diagnostics(artifacts: Path) -> None:
    diag = artifacts / "diagnostics"
    missing = [f for f in DIAG_FILES if not (diag / f).exists()]
    assert not missing, f"diagnostics missing {missing}: {sorted(p.name for p in diag.glob('*'))}"


@pytest.mark.model  # the one run of the whole flow with the real model, on each backend
async def test_passing_flow(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    cases = result.cases()
    for title in PHASES:
        assert result.status_of(title)["status"] == "passed", result.verdicts()
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    assert len(cases) == len(PHASES) + 1
    record = result.run_json()
    assert record["outcome"] == "passed"
    assert not (result.artifacts / "diagnostics").exists()
    assert await leftovers(sandbox) == []
    # The install answer came before the operator ran, as on a real cluster: the flow
    # had to wait for it, and did.
    log = "\n".join(record["log"])
    assert "install started: KAITO installation started" in log, log
    answered = next(e for e in sandbox.timeline if e.event == "pod released")
    assert answered.namespace == "kaito-workspace" and answered.name.startswith("kaito-workspace-")
    # Inference once: one streamed request gave the timing and the verdict.
    served = [e for e in sandbox.timeline if e.event == "chat completion served"]
    assert len(served) == 1, served
    inference = next(p for p in record["phases"] if p["name"] == "inference")["properties"]
    assert inference["inference_streamed"] == "true"
    latency, ttft = int(inference["inference_latency_ms"]), int(inference["time_to_first_token_ms"])
    assert 0 <= ttft <= latency and float(inference["tokens_per_second"]) > 0
    assert int(inference["completion_tokens"]) >= 1
    # The pull the kubelet reported (the sandbox holds the pod for delays.pod_start).
    ready = next(p for p in record["phases"] if p["name"] == "wait_ready")["properties"]
    assert ready["image_pull"] == "pulled" and ready["image"].startswith("ghcr.io/kaito-project/")
    assert float(ready["image_pull_seconds"]) > 0


@pytest.mark.parametrize("faults", [Faults(install_fails=True)])
async def test_failing_install(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Install KAITO")
    assert failure["status"] == "failure", result.verdicts()
    assert "Install KAITO" in failure["message"] and "install failed" in failure["message"]
    for title in PHASES[1:]:
        assert result.status_of(title)["status"] == "skipped", result.verdicts()
    assert_diagnostics(result.artifacts)
    assert await leftovers(sandbox) == []


@pytest.mark.parametrize("faults", [Faults(never_ready=True)])
async def test_deployment_that_never_becomes_ready(sandbox, tmp_path: Path) -> None:
    # The phase's timeout is what ends it, at any length; 10 s leave a loaded machine the
    # time to read the deployment's status at least once, which the reason quotes.
    result = await run_orchestrator(sandbox, tmp_path, "--deployment-ready-timeout", "10000")
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Wait Ready")
    assert failure["status"] == "failure", result.verdicts()
    assert "timed out" in failure["message"] and "Pending" in failure["message"]
    assert result.status_of("Inference")["status"] == "skipped", result.verdicts()
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    assert_diagnostics(result.artifacts)
    assert await leftovers(sandbox) == []


@pytest.mark.parametrize("faults", [Faults(image_pull_error=True)])
async def test_image_pull_error_fails_fast_naming_the_image(sandbox, tmp_path: Path) -> None:
    # The phase may wait 300 s; an image that cannot be pulled must end it at once.
    result = await run_orchestrator(sandbox, tmp_path, "--deployment-ready-timeout", "300000")
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Wait Ready")
    assert failure["status"] == "failure", result.verdicts()
    assert "ErrImagePull" in failure["message"] or "ImagePullBackOff" in failure["message"]
    assert "ghcr.io/kaito-project/aikit/llama3.2:1b" in failure["message"]
    assert failure["message"].startswith(
        "Wait Ready: pod integration-test-llama-0 container model:"
    )
    # Ended by the pod's state, not by the phase's 300 s timeout.
    assert "timed out" not in failure["message"], failure["message"]
    # The kubelet's own words reach the reason: the runtime's error while the pull fails,
    # the back-off after it.
    image = "ghcr.io/kaito-project/aikit/llama3.2:1b"
    assert (
        f"ErrImagePull (image {image}): rpc error: code = NotFound desc = failed to pull "
        f'and unpack image "{image}"'
        in failure["message"]
        or f'ImagePullBackOff (image {image}): Back-off pulling image "{image}"'
        in failure["message"]
    ), failure["message"]
    assert_diagnostics(result.artifacts)
    described = (result.artifacts / "diagnostics" / "describe-pods.txt").read_text()
    lines = (
        f'Normal   Pulling            Pulling image "{image}"',
        f'Warning  Failed             Failed to pull image "{image}": rpc error: ',
        "Warning  Failed             Error: ErrImagePull",
    )
    for line in lines:
        assert line in described, described
    at = [described.index(line) for line in lines]
    assert at == sorted(at), described  # in the order written, though in one second
    assert await leftovers(sandbox) == []


@pytest.mark.parametrize("faults", [Faults(inference="malformed")])
async def test_invalid_inference_response_lists_every_schema_error(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Inference")
    assert failure["status"] == "failure", result.verdicts()
    assert "invalid chat completion" in failure["message"]
    assert failure["message"].count(";") >= 1, failure["message"]  # more than one error listed
    assert result.status_of("Delete")["status"] == "skipped", result.verdicts()
    assert_diagnostics(result.artifacts)
    assert await leftovers(sandbox) == []


@pytest.mark.parametrize("faults", [Faults(stuck_delete=True)])
async def test_stuck_delete_fails_in_delete_and_says_what_is_left(sandbox, tmp_path: Path) -> None:
    # Both timeouts are what end their phases (the finalizer is never released), but the
    # Delete phase's must leave a loaded machine the time to send the DELETE and see what
    # is left, or its reason names the request instead of the finalizer.
    result = await run_orchestrator(
        sandbox,
        tmp_path,
        "--delete-timeout",
        "10000",
        "--cleanup-reserve",
        "4000",
        "--test-timeout",
        "120000",
    )
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Delete")
    assert failure["status"] == "failure", result.verdicts()
    assert "timed out" in failure["message"]
    assert "workspace.finalizer.kaito.sh" in failure["message"]
    cleanup = result.status_of("Cleanup")
    assert cleanup["status"] == "failure", result.verdicts()
    assert (
        "still there: Workspace" in cleanup["message"]
        and "workspace.finalizer.kaito.sh" in cleanup["message"]
    )
    assert_diagnostics(result.artifacts)
    # Once the finalizer is released the cluster is clean again.
    sandbox.update_faults({"stuck_delete": False})


@pytest.mark.parametrize("faults", [Faults(crash_loop=True)])
async def test_crash_loop_fails_fast_with_the_last_log_lines(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Wait Ready")
    assert "CrashLoopBackOff" in failure["message"]
    diagnostics = result.artifacts / "diagnostics"
    logs = diagnostics / "logs"
    previous = logs / "integration-test-llama-0_model.previous.log"
    assert previous.is_file(), sorted(p.name for p in logs.glob("*"))
    # The crashed instance's own last line, on the sandbox's API and a real API server
    # alike (asked as ``previous``, which a kubelet, the sandbox and the test cluster
    # all serve for a container in CrashLoopBackOff), and no failed log request.
    assert previous.read_text().splitlines()[-1] == CRASH_LINE
    assert previous.name in (logs / "integration-test-llama-0_model.log").read_text()
    errors = diagnostics / "errors.txt"
    assert not errors.exists() or "logs of" not in errors.read_text(), errors.read_text()
    assert await leftovers(sandbox) == []
