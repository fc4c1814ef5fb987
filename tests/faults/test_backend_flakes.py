"""Flakes of the backend are retried and the run passes; broken answers are not, and fail naming the field.

Each row injects its fault through the sandbox's knobs and checks the verdict, the reason
in the JUnit file (validated against the schema), the exit code, that nothing the run
created is left, and a bound on the time it took.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import PHASES, run_orchestrator
from faults_harness import assert_clean, run_log, run_with_hooks, started

from orchestrator.sandbox import Delays, Faults

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


def assert_passed(result) -> None:
    assert result.code == 0, result.stdout + result.stderr
    for title in PHASES + ["Cleanup"]:
        assert result.status_of(title)["status"] == "passed", title


@pytest.mark.parametrize(
    "faults",
    [
        Faults(backend_errors=3, backend_error_status=502),
        Faults(backend_errors=3, backend_error_status=503),
    ],
    ids=["502", "503"],
)
async def test_gateway_errors_three_in_a_row_are_retried(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path)
    assert_passed(result)
    assert sandbox.faults.backend_errors == 0  # all three were served, and survived
    await assert_clean(sandbox)


@pytest.mark.parametrize("faults", [Faults(backend_resets=3)])
async def test_connection_resets_are_retried(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path)
    assert_passed(result)
    assert sandbox.faults.backend_resets == 0
    await assert_clean(sandbox)


async def test_backend_restarted_mid_run(sandbox, tmp_path: Path) -> None:
    # Down for a second while Wait Ready asks it every few hundred milliseconds: the
    # open connection is reset, then refused, then the same URL answers again.
    result = await run_with_hooks(
        sandbox,
        tmp_path,
        hooks=[(started("Wait Ready"), lambda _proc: sandbox.restart_backend(down_for=1.0))],
    )
    assert_passed(result)
    await assert_clean(sandbox)


@pytest.mark.parametrize(
    "kind, needle", [("invalid_json", "not valid JSON"), ("wrong_shape", "replicas.ready")]
)
async def test_broken_status_body_fails_wait_ready_naming_the_field(
    sandbox, tmp_path: Path, kind: str, needle: str
) -> None:
    sandbox.update_faults({"bad_body": {"route": "deployment_status", "kind": kind}})
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Wait Ready")
    assert failure["status"] == "failure", result.verdicts()
    assert needle in failure["message"] and "GET /api/deployments/" in failure["message"]
    assert result.status_of("Inference")["status"] == "skipped", result.verdicts()
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    # Answers are not flakes: the broken body was not asked for again and again.
    assert "retrying in" not in run_log(result), run_log(result)
    sandbox.update_faults({"bad_body": None})
    await assert_clean(sandbox)


async def test_broken_create_answer_fails_deploy_and_the_deployment_is_still_cleaned_up(
    sandbox, tmp_path: Path
) -> None:
    # The backend created the deployment, then answered with a body missing ``name``: the
    # run cannot trust the answer, but must still delete what it asked for.
    sandbox.update_faults({"bad_body": {"route": "create", "kind": "wrong_shape"}})
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Deploy llama3.2:1b")
    assert failure["status"] == "failure" and "name: Field required" in failure["message"], (
        result.verdicts()
    )
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    await assert_clean(sandbox)


async def test_a_hanging_backend_is_ended_by_the_phase_timeout(sandbox, tmp_path: Path) -> None:
    # The status route answers Deploy's one look for an existing deployment, then never
    # again: Wait Ready's first question is the one that hangs, whatever the machine's load
    # (a hook flipping the fault when the phase starts raced that question, and lost it
    # when the run asked first and then waited out the phase on its watches).
    sandbox.update_faults({"hang_route": "deployment_status", "hang_after": 1})
    # The phase's timeout is the subject, and a hung request meets it whatever its length;
    # it only has to leave the run time to send that request (seconds on a loaded machine).
    result = await run_orchestrator(sandbox, tmp_path, "--deployment-ready-timeout", "10000")
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Wait Ready")
    assert failure["status"] == "failure", result.verdicts()
    # The request's own deadline ends just before the phase's, so the reason names the
    # route that hung and what had arrived, not only the phase.
    message = failure["message"]
    assert "GET /api/deployments/integration-test-llama" in message, message
    assert "no whole answer within" in message and "no answer" in message, message
    # ... and what to do next: the setting that gives the phase more time.
    assert "raise DEPLOYMENT_READY_TIMEOUT or --deployment-ready-timeout (ms)" in message
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    assert result.run_json()["budget_total"] == 600  # the whole budget was never at stake
    sandbox.update_faults({"hang_route": None})
    await assert_clean(sandbox)


async def test_a_status_route_that_keeps_failing_ends_wait_ready_naming_both(
    sandbox, tmp_path: Path
) -> None:
    # From Wait Ready on, every backend request answers 503 until the phase has failed; the
    # model is held short of InferenceReady until then, so that only the 503s can end the wait.
    sandbox.update_faults({"delays": {"inference_ready": 3600}})

    def failing(_proc: object) -> None:
        # The model becomes ready as the 503s start: should the run have asked before this
        # hook ran (a loaded machine's test process is slow to read), the change wakes its
        # wait, and the question asked then meets the 503s, so the reason names them.
        sandbox.update_faults(
            {"backend_errors": 10**6, "delays": {"inference_ready": Delays().inference_ready}}
        )

    def healthy_again(_proc: object) -> None:
        sandbox.update_faults({"backend_errors": 0})

    # The phase's timeout ends the run whatever its length; 10 s leave a loaded machine
    # the time to see the change and ask.
    result = await run_with_hooks(
        sandbox,
        tmp_path,
        "--deployment-ready-timeout",
        "10000",
        hooks=[(started("Wait Ready"), failing), ("Wait Ready ... failed", healthy_again)],
    )
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Wait Ready")
    assert failure["status"] == "failure", result.verdicts()
    message = failure["message"]
    # The phase's timeout, and the route with what it kept answering, in one reason.
    assert "Wait Ready timed out after 10.0 s (phase timeout 10 s;" in message, message
    assert (
        "while GET /api/deployments/integration-test-llama kept failing: answered 503" in message
    ), message
    assert "raise DEPLOYMENT_READY_TIMEOUT or --deployment-ready-timeout (ms)" in message
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    await assert_clean(sandbox)
