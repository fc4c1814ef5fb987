"""Every failure message a user can meet ends in what to do next: the setting to change,
the command to run, the list of valid names. One test per message class."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import fault_names

pytestmark = pytest.mark.anyio


def orchestrator(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("CI", "KUBECONFIG", "API_URL")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_kubeconfig_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = orchestrator(
        "run", "--api-url", "http://127.0.0.1:9", "--artifacts-dir", str(tmp_path / "a"),
        cwd=tmp_path, env={"HOME": str(home)},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    text = out.stdout + out.stderr
    assert f"no kubeconfig: {home}/.kube/config (the default; KUBECONFIG is not set)" in text
    assert "KUBECONFIG" in text and "--sandbox" in text and "--create-cluster" in text
    # The loader's own words would send the reader inside a file that does not exist.
    assert "current-context" not in text and "Config not found" not in text
    out = orchestrator(
        "run", "--kubeconfig", str(tmp_path / "nope.yaml"), "--artifacts-dir",
        str(tmp_path / "a"), cwd=tmp_path,
    )  # fmt: skip
    assert f"no kubeconfig: {tmp_path / 'nope.yaml'} (KUBECONFIG or --kubeconfig)" in out.stderr


def test_a_broken_kubeconfig_names_the_file_and_the_way_out(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [\n")
    out = orchestrator(
        "run", "--artifacts-dir", str(tmp_path / "a"), cwd=tmp_path,
        env={"KUBECONFIG": str(broken)},
    )  # fmt: skip
    assert out.returncode == 2
    assert f"kubeconfig {broken} (KUBECONFIG or --kubeconfig): cannot be loaded" in out.stderr
    assert "kubectl config view" in out.stderr and "--sandbox" in out.stderr


def test_an_unknown_fault_lists_the_valid_names_and_so_does_help(tmp_path: Path) -> None:
    out = orchestrator(
        "run", "--sandbox", "--sandbox-fault", "crashloop=true", "--sandbox-fault",
        "delays.podstart=1", "--artifacts-dir", str(tmp_path / "a"), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2
    names = fault_names()
    assert "crash_loop" in names and "delays.pod_start" in names and "bad_body.route" in names
    for line in ("--sandbox-fault crashloop: ", "--sandbox-fault delays.podstart: "):
        [problem] = [x for x in out.stderr.splitlines() if line in x]
        assert problem.endswith("no such fault; valid names: " + ", ".join(names))
    help_text = " ".join(orchestrator("run", "--help", cwd=tmp_path).stdout.split())
    assert "names: " + ", ".join(names) in help_text


def test_an_unknown_option_shows_the_commands_own_usage(tmp_path: Path) -> None:
    for argv in (["run", "--bogus"], ["--bogus"]):
        out = orchestrator(*argv, cwd=tmp_path)
        assert out.returncode == 2
        assert out.stderr.startswith("usage: orchestrator run ")
        assert "--sandbox" in out.stderr  # run's options, not just COMMAND
        assert out.stderr.rstrip().endswith(
            "orchestrator run: error: unrecognized arguments: --bogus"
        )
    out = orchestrator("history", "--bogus", cwd=tmp_path)
    assert out.stderr.startswith("usage: orchestrator history ")


def test_keep_sandbox_without_sandbox_says_how_to_fix_it(tmp_path: Path) -> None:
    out = orchestrator("run", "--keep-sandbox", "--artifacts-dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2
    assert "--keep-sandbox needs --sandbox: add --sandbox, or drop it" in out.stderr


def test_load_image_without_create_cluster_says_it_needs_it(tmp_path: Path) -> None:
    out = orchestrator(
        "run", "--load-image", "ghcr.io/kaito-project/aikit/llama3.2:1b",
        "--artifacts-dir", str(tmp_path / "a"), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "--load-image" in out.stderr and "needs --create-cluster" in out.stderr


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    """A loopback port that refuses connections, held for as long as it is used: bound but
    not listening, so a connect is refused at once and no other process (a test cluster
    picking its ports, a stand-in) can take it meanwhile and answer instead."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_no_backend_names_api_url_and_the_ways_to_get_one() -> None:
    import pytest

    from orchestrator._app import _check_backend, _ConfigProblem

    with _closed_port() as port, pytest.raises(_ConfigProblem) as caught:
        url = f"http://127.0.0.1:{port}"
        await _check_backend(url, window=0.3)
    message = str(caught.value)
    assert message.startswith(f"no KubeFoundry backend answers at {url} (API_URL or --api-url): ")
    assert "connection refused" in message
    for way in ("bun run dev", "--sandbox", "--create-cluster --backend-dir"):
        assert way in message


async def test_a_backend_that_answers_anything_is_there() -> None:
    """A 503 is the backend's answer, for the flow to report; only silence is "no backend"."""
    from aiohttp import web

    from orchestrator._app import _check_backend

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/api/health", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        await _check_backend(f"http://127.0.0.1:{runner.addresses[0][1]}", window=0.3)
    finally:
        await runner.cleanup()


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_no_backend_is_a_configuration_error_with_a_report(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    # A second of refused connections instead of the default 10 s (test_config.py): the
    # same message, exit and report, and the setting shown to reach the check.
    with _closed_port() as port:
        out = orchestrator(
            "run", "--api-url", f"http://127.0.0.1:{port}", "--artifacts-dir",
            str(tmp_path / "a"), "--backend-wait", "1000", cwd=tmp_path,
            env={"KUBECONFIG": str(tmp_path / "kubeconfig")},
        )  # fmt: skip
    assert out.returncode == 2
    assert "no KubeFoundry backend answers" in out.stderr and "--sandbox" in out.stderr
    assert "connection refused (for 1 s)" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "retrying" not in out.stdout
    assert "no KubeFoundry backend" in (tmp_path / "a" / "run.json").read_text()


def test_a_stuck_container_says_what_to_look_at_for_its_reason() -> None:
    from orchestrator.flows._pods import FATAL_WAITING_REASONS, PullErrors, pod_problem

    not_found = "rpc error: code = NotFound desc = failed to pull and unpack image: not found"

    def stuck(reason: str) -> str:
        def pod(waiting: dict[str, str]) -> dict[str, Any]:
            return {
                "metadata": {"name": "m-0"},
                "spec": {"containers": [{"name": "model", "image": "img:1"}]},
                "status": {
                    "phase": "Pending",
                    "containerStatuses": [{"name": "model", "state": {"waiting": waiting}}],
                },
            }

        # A pull ends the wait on a definitive answer only, which a back-off's message
        # lacks: the pull error before it gives it.
        pulls = PullErrors()
        pod_problem(pod({"reason": "ErrImagePull", "message": not_found}), pulls=pulls)
        problem = pod_problem(pod({"reason": reason}), pulls=pulls)
        assert problem is not None
        return problem

    assert "the nodes can pull it" in stuck("ImagePullBackOff")
    assert "the nodes can pull it" in stuck("ErrImagePull")
    assert stuck("CrashLoopBackOff").endswith("its last log lines are in the diagnostics")
    assert "a Secret, ConfigMap or volume" in stuck("CreateContainerConfigError")
    for reason in FATAL_WAITING_REASONS:
        assert "diagnostics" in stuck(reason).rsplit(";", 1)[1], reason
