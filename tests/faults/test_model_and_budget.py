"""The model's own faults, and a budget that runs out: waited for when it is a flake, reported when it is not."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import Result, run_orchestrator
from faults_harness import assert_clean, install_kaito_first, run_log

from orchestrator.sandbox import Faults, Sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


@pytest.mark.parametrize("faults", [Faults(model_loading_seconds=10)])
async def test_model_loading_503_for_ten_seconds_is_waited_out(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    assert result.status_of("Inference")["status"] == "passed", result.verdicts()
    assert "Loading model" in run_log(result)
    await assert_clean(sandbox)


@pytest.mark.parametrize("faults", [Faults(inference="empty")])
async def test_empty_completion_fails_inference_listing_the_schema_errors(
    sandbox, tmp_path: Path
) -> None:
    # Also the "empty-content" row of the quality gate below: the same run, checked once.
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Inference")
    assert failure["status"] == "failure", result.verdicts()
    assert "invalid chat completion" in failure["message"]
    assert "choices.0.message.content: must not be empty" in failure["message"]
    assert_names_the_check(result, sandbox, "empty-content", "must not be empty")
    assert result.status_of("Delete")["status"] == "skipped", result.verdicts()
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    await assert_clean(sandbox)


def assert_names_the_check(result: Result, sandbox: Sandbox, check: str, needle: str) -> None:
    """Inference failed on the quality gate's ``check``, after one served completion."""
    failure = result.status_of("Inference")
    assert f"(1 violation of {check}): {check}: " in failure["message"], failure["message"]
    assert needle in failure["message"]
    inference = next(p for p in result.run_json()["phases"] if p["name"] == "inference")
    assert inference["properties"]["inference_failed_checks"] == check
    served = [e for e in sandbox.timeline if e.event == "chat completion served"]
    assert len(served) == 1, served


@pytest.mark.parametrize(
    "faults, check, needle",
    [
        (
            Faults(inference="wrong_chat_template"),
            "template-tokens",
            "leaked chat-template tokens '<|im_start|>' (ChatML), '<|im_end|>' (ChatML)",
        ),
        (
            Faults(inference="wrong_model"),
            "model-name",
            "answered as 'qwen2.5-0.5b-instruct', but the catalog names the model "
            "'llama-3.2-1b-instruct'",
        ),
        # The empty answer ("empty-content") is checked on the run of the test above.
    ],
)
async def test_a_broken_deployment_fails_inference_naming_the_check(
    sandbox, tmp_path: Path, check: str, needle: str
) -> None:
    # Schema-valid answers both: only the quality gate catches them.
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Inference")
    assert failure["status"] == "failure", result.verdicts()
    assert_names_the_check(result, sandbox, check, needle)
    await assert_clean(sandbox)


async def test_the_expected_answer_is_asked_at_temperature_zero_only_when_set(
    sandbox, tmp_path: Path
) -> None:
    # The stub model answers "Hello there, friend." to everything.
    for run in ("met", "missed"):
        (tmp_path / run).mkdir()
    met = await run_orchestrator(sandbox, tmp_path / "met", "--inference-expect", r"\bfriend\b")
    assert met.code == 0, met.stdout + met.stderr
    inference = next(p for p in met.run_json()["phases"] if p["name"] == "inference")
    assert inference["properties"]["inference_expectation"] == "met"
    served = [e for e in sandbox.timeline if e.event == "chat completion served"]
    assert len(served) == 2, served  # the measured answer, then the deterministic prompt
    missed = await run_orchestrator(
        sandbox, tmp_path / "missed", "--inference-expect", "(?i)paris",
        "--inference-expect-prompt", "What is the capital of France?",
    )  # fmt: skip
    assert missed.code == 1, missed.stdout + missed.stderr
    failure = missed.status_of("Inference")
    assert "(1 violation of expectation)" in failure["message"]
    assert "'Hello there, friend.' does not match /(?i)paris/" in failure["message"]
    await assert_clean(sandbox)


@pytest.mark.parametrize("faults", [Faults(never_ready=True)])
async def test_budget_running_out_in_wait_ready_still_diagnoses_and_cleans_up(
    sandbox, tmp_path: Path
) -> None:
    # The budget runs out in Wait Ready whatever the machine's load: the stand-in never
    # reports the model ready (never_ready), so Wait Ready, once reached, can only end on
    # the budget; and KAITO is installed before the run, so the run reaches Wait Ready
    # after a few requests (a status check, the model lookup, the create) instead of the
    # API server's CRD work, well inside its 15 s. The reserve is far above what a loaded
    # machine's diagnose and cleanup need and costs nothing when they end early: the run
    # takes about 15 s either way, under its 105 s budget (and the harness's 120 s).
    await install_kaito_first(sandbox)
    result = await run_orchestrator(
        sandbox, tmp_path, "--test-timeout", "105000", "--cleanup-reserve", "90000"
    )
    assert result.code == 1, result.stdout + result.stderr
    for title in ("Install KAITO", "Deploy llama3.2:1b"):
        assert result.status_of(title)["status"] == "passed", result.verdicts()
    failure = result.status_of("Wait Ready")
    assert failure["status"] == "failure", result.verdicts()
    assert "capped by the run budget" in failure["message"], failure["message"]
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    record = result.run_json()
    assert record["diagnose"]["status"] == "passed", result.verdicts()
    assert (result.artifacts / "diagnostics" / "describe-pods.txt").exists()
    assert record["time_spent"] < 105, result.verdicts()
    await assert_clean(sandbox)
