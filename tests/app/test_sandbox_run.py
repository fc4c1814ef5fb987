"""``run --sandbox`` as a user meets it: quiet, cleaned up, and hints that still work."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import _zygote
import pytest

from orchestrator._app import _SandboxLog

STUB = ["--sandbox-fault", "stub_models=true"]


def user_env() -> dict[str, str]:
    """This environment without what would point a run at another cluster or a CI job."""
    return {k: v for k, v in os.environ.items() if k not in ("CI", "KUBECONFIG", "API_URL")}


def orchestrator(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = user_env()
    env["COLUMNS"] = "40"  # a narrow log: nothing may be wrapped to fit it
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def started(
    *args: str, cwd: Path, signals: Mapping[int, _zygote.Disposition] = _zygote.RUN_SIGNALS
) -> subprocess.Popen[str]:
    """``python -m orchestrator ARGS`` running, with ``signals`` at the dispositions given
    whatever this session was started with (a test that sends one is its Ctrl-C)."""
    return subprocess.Popen(
        _zygote.with_signals([sys.executable, "-m", "orchestrator", *args], signals),
        cwd=cwd,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_sandbox_log_goes_to_a_file_and_is_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _SandboxLog(tmp_path / "sandbox.log") as log:
        logging.getLogger("aiohttp.server").error("Error handling request")
        logging.getLogger("orchestrator.sandbox.kaito").info("reconciling")
    logging.getLogger("aiohttp.server").debug("after: not captured")
    assert log.problems == 1
    text = (tmp_path / "sandbox.log").read_text()
    assert "ERROR aiohttp.server: Error handling request" in text and "reconciling" in text
    assert capsys.readouterr().err == ""
    assert logging.getLogger("aiohttp").propagate is True


def test_the_sandbox_log_is_masked_as_each_record_is_written(tmp_path: Path) -> None:
    # aiohttp's access log writes request lines, query strings included.
    with _SandboxLog(tmp_path / "sandbox.log"):
        logging.getLogger("aiohttp.access").warning(
            'GET /api/deployments?token=s3cr3t-in-a-query "Authorization: Bearer abc.def"'
        )
    text = (tmp_path / "sandbox.log").read_text()
    assert "s3cr3t" not in text and "abc.def" not in text, text
    assert "?token=*** " in text, text


@pytest.mark.cluster
def test_a_failed_sandbox_run_cleans_up_and_prints_no_dead_commands(tmp_path: Path) -> None:
    """The sandbox is gone when the run ends: commands for it would fail, so the run
    cleans up (exercising Cleanup) and prints none."""
    out = orchestrator(
        "run", "--sandbox", *STUB, "--sandbox-fault", "crash_loop=true",
        "--artifacts-dir", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "kubectl" not in out.stdout and "curl" not in out.stdout
    assert out.stderr == ""
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["cleanup"]["status"] == "passed"
    # What each wait waited for, as the live view's Note column showed it.
    notes = {p["name"]: p["note"] for p in run["phases"]}
    assert notes["install"] == "the backend to report KAITO installed"
    assert notes["wait_ready"] == "deployment integration-test-llama Running with a ready replica"
    reason = (
        "pod integration-test-llama-0 container model: CrashLoopBackOff "
        "(image ghcr.io/kaito-project/aikit/llama3.2:1b)"
    )
    mentions = [line for line in out.stdout.splitlines() if "CrashLoopBackOff" in line]
    assert len(mentions) >= 3 and all(reason in line for line in mentions), mentions
    assert f"Diagnostics (pods, logs, events): {tmp_path / 'diagnostics'}" in out.stdout
    assert "its last log lines are in the diagnostics" in mentions[-1]
    first = out.stdout.splitlines()[0]
    assert first.startswith("sandbox: API_URL=http://127.0.0.1:") and " KUBECONFIG=" in first


@pytest.mark.cluster
def test_keep_sandbox_keeps_it_serving_until_ctrl_c(tmp_path: Path) -> None:
    args = ["run", "--sandbox", "--keep-sandbox", *STUB, "--sandbox-fault", "crash_loop=true"]
    proc = started(*args, "--artifacts-dir", str(tmp_path), cwd=tmp_path)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # ends when the process does: no wait without an end
            lines.append(line)
            if line.startswith("Ctrl-C stops it"):
                break
        text = "".join(lines)
        assert "kubectl -n kaito-workspace" in text  # the hints: they apply now
        export = next(line for line in lines if line.strip().startswith("export API_URL="))
        api_url = export.split("API_URL=")[1].split()[0]
        name = "integration-test-llama?namespace=kaito-workspace"
        with urllib.request.urlopen(f"{api_url}/api/deployments/{name}", timeout=10) as resp:
            assert json.load(resp)["name"] == "integration-test-llama"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 1  # the run's verdict, not the Ctrl-C
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_sandbox_command_started_with_sigint_ignored_keeps_ignoring_it(
    tmp_path: Path,
) -> None:
    """``orchestrator sandbox &`` from a script: a Ctrl-C for the foreground job is not its.

    SIGINT then SIGTERM are sent once it serves: both are pending together and SIGINT
    (the lower number) would be taken first, so the exit code tells which one stopped it,
    143 for SIGTERM; 130 would mean a handler was put over the ignore."""
    ignore_sigint: dict[int, _zygote.Disposition] = {**_zygote.RUN_SIGNALS, signal.SIGINT: "ignore"}
    proc = started(
        "sandbox", "--port", "0", "--workdir", str(tmp_path), cwd=tmp_path, signals=ignore_sigint
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the process does: no wait without an end
            if line.startswith("sandbox serving"):
                break
        status = Path(f"/proc/{proc.pid}/status").read_text()
        ignored = next(
            v for k, _, v in (s.partition(":\t") for s in status.splitlines()) if k == "SigIgn"
        )
        assert int(ignored, 16) & 1 << (signal.SIGINT - 1), status
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
