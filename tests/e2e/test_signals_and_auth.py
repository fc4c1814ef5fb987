"""Interruption and authentication, through the real command.

Ctrl-C and SIGTERM in the middle of a run must still clean up and report, with
exit codes 130 and 143. A backend with auth on must see 401 reported as such,
and the token must appear in no log, artifact or report.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import anyio.abc
import pytest
from _bounded import running_sandbox
from e2e_harness import PHASES, Result, command, drive, hung, leftovers, run_orchestrator

from orchestrator.sandbox import Faults, Sandbox, SandboxOptions

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

TOKEN = "tok-e2e-7f3a9c1d-do-not-leak"
RUN_DEADLINE = 120.0


async def run_until_then_signal(
    sb: Sandbox, tmp_path: Path, marker: str, sig: signal.Signals
) -> Result:
    """Start the run, wait (with a deadline) until its output shows ``marker``, send ``sig``."""
    artifacts = tmp_path / "artifacts"
    argv, env = command(sb, artifacts)
    sent: list[bool] = []

    def on_output(output: str, proc: anyio.abc.Process) -> None:
        if not sent and marker in output:
            proc.send_signal(sig)
            sent.append(True)

    # The deadline the other harnesses give a whole run: only a hang reaches it, while a
    # loaded machine takes tens of seconds to install, deploy, be interrupted and clean up.
    ended = await drive(argv, env, tmp_path, RUN_DEADLINE, on_output)
    if ended.stopped is not None:
        pytest.fail(hung(ended, RUN_DEADLINE, sb), pytrace=False)
    assert sent, f"the run never printed {marker!r}:\n{ended.stdout}"
    return Result(ended.code, ended.stdout, ended.stderr, ended.seconds, artifacts)


@pytest.mark.parametrize("faults", [Faults(never_ready=True)])
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_signal_during_wait_ready_cleans_up_and_reports(
    sandbox, tmp_path: Path, sig, code
) -> None:
    result = await run_until_then_signal(sandbox, tmp_path, "Wait Ready ... started", sig)
    assert result.code == code, result.stdout
    assert result.status_of("Wait Ready")["status"] == "error", result.verdicts()
    assert result.status_of("Inference")["status"] == "skipped", result.verdicts()
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    assert result.run_json()["interrupted_by"] == sig.name
    assert await leftovers(sandbox) == []


@pytest.fixture
async def auth_sandbox(kubeconfig, stub_models: bool, tmp_path: Path):
    options = SandboxOptions(
        workdir=tmp_path / "sb",
        kubeconfig=kubeconfig,
        auth_token=TOKEN,
        faults=Faults(stub_models=stub_models),
    )
    async with running_sandbox(options) as sb:
        yield sb


def assert_token_nowhere(tmp_path: Path, result: Result) -> None:
    assert TOKEN not in result.stdout + result.stderr
    for path in result.artifacts.rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), f"token leaked into {path}"


@pytest.mark.parametrize("token, expected", [(None, 1), ("wrong-token", 1), (TOKEN, 0)])
async def test_backend_with_auth(
    auth_sandbox, tmp_path: Path, token: str | None, expected: int
) -> None:
    env = {"KUBEFOUNDRY_TOKEN": token} if token else {}
    result = await run_orchestrator(auth_sandbox, tmp_path, env=env)
    assert result.code == expected, result.stdout + result.stderr
    if expected:
        failure = result.status_of("Install KAITO")
        assert failure["status"] == "failure", result.verdicts()
        assert "401" in failure["message"] and "token" in failure["message"]
    else:
        for title in PHASES:
            assert result.status_of(title)["status"] == "passed", result.verdicts()
    assert_token_nowhere(tmp_path, result)


async def test_a_second_run_leaves_the_first_runs_deployment_alone(sandbox, tmp_path: Path) -> None:
    import httpx

    body = {
        "name": "integration-test-llama",
        "namespace": "kaito-workspace",
        "provider": "kaito",
        "modelSource": "premade",
        "premadeModel": "llama3.2:1b",
        "ggufRunMode": "direct",
        "computeType": "cpu",
        "replicas": 1,
    }
    async with httpx.AsyncClient() as http:
        await http.post(f"{sandbox.api_url}/api/installation/providers/kaito/install")
        assert (await http.post(f"{sandbox.api_url}/api/deployments", json=body)).status_code == 201
    result = await run_orchestrator(sandbox, tmp_path)
    assert result.code == 1
    failure = result.status_of("Deploy llama3.2:1b")
    assert "already exists" in failure["message"] and "not made by this run" in failure["message"]
    assert "409" not in failure["message"] and "Traceback" not in result.stdout + result.stderr
    assert await leftovers(sandbox) != []  # the first run's deployment is still there
