"""BackendProcess: stand-in ``bun`` scripts and the sandbox's KubeFoundry API as a real child."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from environment_fakes import Standins, free_port

from orchestrator.environment import BackendProcess, EnvironmentSetupError

pytestmark = pytest.mark.anyio

WAIT = 60.0


def bun(tmp_path: Path, mode: str, **options: object) -> BackendProcess:
    return BackendProcess(
        tmp_path,
        port=free_port(),
        kubeconfig=tmp_path / "kubeconfig",
        log_path=tmp_path / "artifacts" / "backend.log",
        env={"STANDIN_MODE": mode},
        **options,
    )  # type: ignore[arg-type]


async def test_a_missing_bun_is_a_clear_error(tmp_path: Path, standins: Standins) -> None:
    standins.remove("bun")
    with pytest.raises(EnvironmentSetupError, match="bun not found on PATH; install Bun"):
        await bun(tmp_path, "silent").start()


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path, standins: Standins) -> None:
    backend = BackendProcess(tmp_path / "kube-foundry" / "backend", log_path=tmp_path / "b.log")
    with pytest.raises(EnvironmentSetupError, match="backend directory .* does not exist"):
        await backend.start()


async def test_a_backend_that_never_answers_hits_the_deadline_with_a_clear_message(
    tmp_path: Path, standins: Standins, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The message names the last probe's outcome, and whether a probe has finished by
    # the deadline is the machine's business: building the client and the first GET
    # took 0.1-0.8 s here at load 15, and more in a full parallel run, where "no
    # answer yet" (true: no GET had ended) once came back. So the test sees each GET
    # end and asks for the reason that matches what happened, no more and no less.
    ended: list[httpx.HTTPError] = []
    get = httpx.AsyncClient.get

    async def seen_get(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> httpx.Response:
        try:
            return await get(self, *args, **kwargs)
        except httpx.HTTPError as exc:
            ended.append(exc)
            raise

    monkeypatch.setattr(httpx.AsyncClient, "get", seen_get)
    backend = bun(tmp_path, "silent")
    async with backend:
        began = time.monotonic()
        with pytest.raises(EnvironmentSetupError) as caught:
            await backend.wait_healthy(began + 1.0)
        assert time.monotonic() - began >= 1.0
    message = str(caught.value)
    assert "\n" not in message
    assert f"did not answer GET http://127.0.0.1:{backend.port}/api/health" in message
    assert all(isinstance(exc, httpx.ConnectError) for exc in ended), ended
    reason = "connection refused" if ended else "no answer yet"
    assert f"before the deadline (last: {reason}); " in message
    # PORT and KUBECONFIG reached the child, and its output reached the log.
    assert f"bun run dev PORT={backend.port} KUBECONFIG={tmp_path / 'kubeconfig'}" in message
    assert backend.returncode == -signal.SIGTERM


async def test_a_deadline_that_passed_before_any_probe_says_no_answer_yet(
    tmp_path: Path, standins: Standins
) -> None:
    backend = bun(tmp_path, "silent")
    async with backend:
        with pytest.raises(EnvironmentSetupError) as caught:
            await backend.wait_healthy(time.monotonic())
    assert "with 200 before the deadline (last: no answer yet); " in str(caught.value)


async def test_a_backend_that_dies_at_start_is_reported_at_once_with_its_log(
    tmp_path: Path, standins: Standins
) -> None:
    backend = bun(tmp_path, "die")
    async with backend:
        with pytest.raises(EnvironmentSetupError) as caught:
            await backend.wait_healthy(time.monotonic() + WAIT)
    # Reported from the exit itself (the message says so), not from the deadline.
    message = str(caught.value)
    assert message.startswith("the backend exited with code 1 before /api/health answered")
    assert "Cannot find package 'hono'" in message and "Did you run bun install?" in message
    assert caught.value.detail is not None and caught.value.detail.endswith(
        "Did you run bun install?"
    )


async def test_the_sandbox_api_as_a_real_backend_is_detected_healthy_and_stopped(
    tmp_path: Path,
) -> None:
    port = free_port()
    backend = BackendProcess(
        tmp_path,
        [
            sys.executable,
            "-m",
            "orchestrator",
            "sandbox",
            "--port",
            str(port),
            "--workdir",
            str(tmp_path / "sandbox"),
        ],
        port=port,
        kubeconfig=None,
        log_path=tmp_path / "artifacts" / "backend.log",
        grace=10,
    )
    await backend.start()
    try:
        with anyio.fail_after(WAIT):
            await backend.wait_healthy(time.monotonic() + WAIT)
        async with httpx.AsyncClient(trust_env=False) as http:
            assert (await http.get(backend.health_url)).json()["status"] == "healthy"
        assert f"API_URL=http://127.0.0.1:{port}" in backend.log_tail()
    finally:
        code = await backend.stop()
    # The sandbox handles SIGTERM (it stops its model servers first) and exits 128 + 15:
    # stopped by SIGTERM, not killed after the grace period (that would be -SIGKILL).
    assert code == 128 + signal.SIGTERM
    async with httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(backend.health_url)
    assert await backend.stop() == code  # stopping twice is harmless


async def test_a_backend_ignoring_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, standins: Standins
) -> None:
    lines: list[str] = []
    backend = bun(tmp_path, "stubborn", grace=0.5, log=lines.append)
    await backend.start()
    try:
        # Healthy means the stand-in has installed its SIGTERM handler already.
        with anyio.fail_after(WAIT):
            await backend.wait_healthy(time.monotonic() + WAIT)
    finally:
        began = time.monotonic()
        code = await backend.stop()
    assert code == -signal.SIGKILL
    assert time.monotonic() - began >= 0.5
    assert any("ignored SIGTERM" in line for line in lines)
    assert "ignoring SIGTERM" in backend.log_tail()


async def test_stop_is_not_cut_short_by_cancellation(tmp_path: Path, standins: Standins) -> None:
    backend = bun(tmp_path, "stubborn", grace=0.3)
    await backend.start()
    with anyio.fail_after(WAIT):
        await backend.wait_healthy(time.monotonic() + WAIT)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await backend.stop()
    assert backend.returncode == -signal.SIGKILL
