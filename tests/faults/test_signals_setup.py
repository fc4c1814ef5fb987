"""Signals from the first instruction: before any flow exists, a signal still ends the
run with cleanup of whatever exists, a report and 130/143; a credential plugin gets a
timeout and never outlives the run.

The kubeconfig's user is a credential plugin (``users[].user.exec``) that announces it
started by writing its pid into a FIFO and then blocks: the test waits on the FIFO (an
event, not a sleep) and then sends the signal, while the kubeconfig is still loading.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import _zygote
import anyio
import pytest
from anyio.streams.text import TextReceiveStream

pytestmark = pytest.mark.anyio

PLUGIN = textwrap.dedent(
    """\
    #!{python}
    import os, sys, time
    with open({fifo!r}, "w") as fifo:
        fifo.write(str(os.getpid()) + "\\n")
    time.sleep(3600)  # a plugin waiting for a login that never comes
    """
)


def kubeconfig_with_plugin(tmp_path: Path) -> tuple[Path, Path]:
    fifo = tmp_path / "plugin-started"
    os.mkfifo(fifo)
    plugin = tmp_path / "credential-plugin"
    plugin.write_text(PLUGIN.format(python=sys.executable, fifo=str(fifo)))
    plugin.chmod(0o755)
    exec_user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    return unreachable_kubeconfig(tmp_path / "kubeconfig", exec_user), fifo


def unreachable_kubeconfig(path: Path, user: dict[str, object]) -> Path:
    """A kubeconfig with ``user``'s credentials for a cluster nothing listens on: the
    run's setup (and a signal in it) happens before any Kubernetes request could."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent, the orchestrator, has exited).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


async def start_run(tmp_path: Path, kubeconfig: Path, *args: str) -> anyio.abc.Process:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "KUBECONFIG", "API_URL")}
    env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    argv = [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        "--no-live",
        "--api-url",
        "http://127.0.0.1:9",
        "--kubeconfig",
        str(kubeconfig),
        "--artifacts-dir",
        str(tmp_path / "artifacts"),
        *args,
    ]
    # Fresh, as a user starts it, with SIGINT at its default whatever this session has.
    return await _zygote.open_process(argv, env, tmp_path, fresh=True)


async def read_all(stream: object) -> str:
    out = []
    async for chunk in TextReceiveStream(stream):  # type: ignore[arg-type]
        out.append(chunk)
    return "".join(out)


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
async def test_a_signal_while_a_credential_plugin_runs_reports_and_ends_the_plugin(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    kubeconfig, fifo = kubeconfig_with_plugin(tmp_path)
    with anyio.fail_after(60):
        async with await start_run(tmp_path, kubeconfig) as proc:
            line = await anyio.to_thread.run_sync(lambda: fifo.open().readline())
            plugin_pid = int(line)
            proc.send_signal(sig)
            stdout, stderr = await read_all(proc.stdout), await read_all(proc.stderr)
            assert await proc.wait() == code, stdout + stderr
    out = stdout + stderr
    assert "Traceback" not in out, out
    assert f"interrupted by {sig.name} while the kubeconfig loaded" in out, out
    assert not alive(plugin_pid), "the credential plugin outlived the run"
    run = json.loads((tmp_path / "artifacts" / "run.json").read_text())
    assert (run["outcome"], run["interrupted_by"], run["exit_code"]) == (
        "interrupted",
        sig.name,
        code,
    )
    junit = (tmp_path / "artifacts" / "junit.xml").read_text()
    assert f"interrupted by {sig.name}" in junit


async def test_a_credential_plugin_that_never_answers_times_out(tmp_path: Path) -> None:
    kubeconfig, fifo = kubeconfig_with_plugin(tmp_path)
    with anyio.fail_after(60):
        async with await start_run(tmp_path, kubeconfig, "--credential-timeout", "500") as proc:
            plugin_pid = int(await anyio.to_thread.run_sync(lambda: fifo.open().readline()))
            stdout, stderr = await read_all(proc.stdout), await read_all(proc.stderr)
            code = await proc.wait()
    assert code == 2, stdout + stderr
    assert "credential plugin" in stderr and "no answer within 0.5 s" in stderr, stderr
    assert "Traceback" not in stdout + stderr
    assert not alive(plugin_pid), "the credential plugin outlived its timeout"
    assert (tmp_path / "artifacts" / "junit.xml").exists()


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
async def test_a_signal_while_the_backend_starts_stops_it_and_reports(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """Environment setup: the backend command never answers its health check."""
    kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig", {"token": "unused-token"})
    backend = tmp_path / "backend"
    backend.mkdir()
    # The backend says its pid through a FIFO: the test reads it when the backend is up,
    # so the signal never comes before there is a backend to outlive the run.
    pidfifo = tmp_path / "backend.pid"
    os.mkfifo(pidfifo)
    command = f"{sys.executable} -c \"import os,time; open('{pidfifo}','w').write(str(os.getpid())); time.sleep(3600)\""
    with anyio.fail_after(60):
        async with await start_run(
            tmp_path,
            kubeconfig,
            "--backend-dir",
            str(backend),
            "--backend-command",
            command,
            "--backend-port",
            "9",
        ) as proc:
            assert proc.stdout is not None
            seen = ""
            async for chunk in TextReceiveStream(proc.stdout):
                seen += chunk
                if "backend started" in seen:
                    break
            pid = int(await anyio.to_thread.run_sync(pidfifo.read_text, abandon_on_cancel=True))
            proc.send_signal(sig)
            stdout = seen + await read_all(proc.stdout)
            stderr = await read_all(proc.stderr)
            assert await proc.wait() == code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert not alive(pid), "the backend outlived the run"
    run = json.loads((tmp_path / "artifacts" / "environment" / "run.json").read_text())
    assert (run["outcome"], run["interrupted_by"]) == ("interrupted", sig.name)
