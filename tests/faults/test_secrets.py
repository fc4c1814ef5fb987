"""Secrets never leave the process: one redactor in front of every sink.

A backend that echoes the request's Authorization header in every error body (the
sandbox's ``echo_authorization``) puts the token into reasons, retry notes, the
diagnostics and the exchanges they quote. Whatever the peer echoed, neither the token
nor a ``Bearer`` credential may reach the console, junit.xml, run.json, the
diagnostics, the GitHub summary or its annotations.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import sys
import textwrap
import urllib.parse
from pathlib import Path

import anyio
import anyio.abc
import pytest
import yaml
from _bounded import running_sandbox
from _client_cert import client_key_pair, with_inline_client_key
from e2e_harness import Result, run_orchestrator
from test_signals_setup import alive, read_all, start_run, unreachable_kubeconfig

from orchestrator.engine import Redactor
from orchestrator.sandbox import Faults, SandboxOptions

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

TOKEN = "tok-9b-5e1f0c7a-never-in-a-report"
WRONG = "wrong-4d2b9e-also-secret"
BEARER = re.compile(r"(?i)bearer\s+(?!\*\*\*|tokens?\b)[A-Za-z0-9]")


@pytest.fixture
async def echoing(kubeconfig, tmp_path: Path):
    faults = Faults(echo_authorization=True, stub_models=True)
    options = SandboxOptions(
        workdir=tmp_path / "sb", kubeconfig=kubeconfig, auth_token=TOKEN, faults=faults
    )
    async with running_sandbox(options) as sb:
        yield sb


def everything_written(result: Result) -> dict[str, str]:
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    for path in sorted(result.artifacts.rglob("*")):
        if path.is_file():
            texts[str(path.relative_to(result.artifacts))] = path.read_text(errors="replace")
    return texts


def assert_no_secret(result: Result, *secrets: str) -> None:
    texts = everything_written(result)
    assert len(texts) > 4, sorted(texts)  # reports and diagnostics were written
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {name}"
        assert not BEARER.search(text), f"a bearer credential leaked into {name}"


async def test_a_wrong_token_echoed_in_a_401_reaches_no_sink(echoing, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    result = await run_orchestrator(
        echoing,
        tmp_path,
        env={
            "KUBEFOUNDRY_TOKEN": WRONG,
            "GITHUB_ACTIONS": "true",
            "GITHUB_STEP_SUMMARY": str(summary),
        },
    )
    assert result.code == 1, result.stdout + result.stderr
    assert "401" in result.status_of("Install KAITO")["message"]
    assert [n for n, t in everything_written(result).items() if "Bearer ***" in t]
    assert "::error" in result.stdout
    assert_no_secret(result, WRONG, TOKEN)
    assert WRONG not in summary.read_text() and not BEARER.search(summary.read_text())


async def test_the_right_token_echoed_in_errors_retries_and_diagnostics_reaches_no_sink(
    echoing, tmp_path: Path
) -> None:
    # Two 503s (each retried, and the retry notes quote the body), then a deployment
    # whose model is not in the catalog: its 404 fails Deploy and the diagnostics run.
    echoing.update_faults({"backend_errors": 2})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = await run_orchestrator(
        echoing, tmp_path, "--model", "nope:1b", "--token-file", str(token_file)
    )
    assert result.code == 1, result.stdout + result.stderr
    assert "not in the backend's catalog" in result.status_of("Deploy nope:1b")["message"]
    # The echoes did reach the reports, masked: the retry notes and the diagnostics.
    masked = [n for n, t in everything_written(result).items() if "Bearer ***" in t]
    assert masked, "the peer's echo was never seen: the test proves nothing"
    assert (result.artifacts / "diagnostics").is_dir()
    assert_no_secret(result, TOKEN)


def test_the_redactor_masks_secrets_however_they_are_split_or_encoded() -> None:
    r = Redactor([TOKEN])
    styled = "tok-9b-\x1b[1m5e1f0c7a\x1b[0m-never-in\n    -a-report"
    assert r(f"x {TOKEN} y") == "x *** y"
    assert r(styled) == "***"
    assert r("a%20" + TOKEN.replace("-", "-")) == "a%20***"
    assert r('{"authorization": "Bearer abc.DEF-123"}') == '{"authorization": "Bearer ***"}'
    assert r("Authorization: Basic dXNlcjpwYXNz") == "Authorization: Basic ***"
    assert r("proxy-authorization=zzz&x=1") == "proxy-authorization=***&x=1"
    assert r("bearer%20zzzzzzzz") == "bearer%20***"
    # Plain words are not credentials.
    text = "check the bearer token (KUBEFOUNDRY_TOKEN or token_file)"
    assert r(text) == text
    # A short value is masked where it stands as a word, not inside longer words.
    assert r.add("abc") is False
    assert r("token abc refused; abcdef") == "token *** refused; abcdef"


KILLED_BACKEND = textwrap.dedent(
    """\
    import base64, json, os, sys, time, urllib.parse
    token = os.environ["KUBEFOUNDRY_TOKEN"]
    out = sys.stdout
    # The token whole, then split across two writes (two reads of the pipe, most
    # often), then as a peer may quote it: URL-encoded, JSON-escaped, in base64.
    out.write(f"GET /api/deployments X-Token: {{token}}\\n"); out.flush()
    out.write(f"retrying with token={{token[:9]}}"); out.flush()
    time.sleep(0.2)
    out.write(f"{{token[9:]}} after a 503\\n"); out.flush()
    out.write(f"url: /x?t={{urllib.parse.quote(token, safe='')}}\\n")
    out.write('body: {{"token": "%s"}}\\n' % token.replace("/", "\\\\/"))
    out.write(f"secret data: {{base64.b64encode(token.encode()).decode()}}\\n")
    # A backend that shows the cluster credentials it was given: the kubeconfig's token.
    with open(os.environ["KUBECONFIG"]) as kubeconfig:
        out.write(f"cluster user: {{json.load(kubeconfig)['users'][0]['user']['token']}}\\n")
    out.write("{marker}\\n"); out.flush()
    with open({fifo!r}, "w") as fifo:
        fifo.write(str(os.getpid()))
    time.sleep(3600)  # a backend that never gets healthy: the run is killed meanwhile
    """
)


KUBE_TOKEN = "kube-tok-4e9d1c-in-the-kubeconfig"


async def test_a_run_killed_mid_way_leaves_no_secret_in_any_file(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, a cancelled CI job) gives the run no chance to tidy up:
    every file it leaves must already be masked, the backend's log included."""
    token = "tok/7c3e-9a1f5d-killed-mid-way"
    marker = "the backend logged everything"
    fifo = tmp_path / "backend.pid"
    os.mkfifo(fifo)
    script = tmp_path / "backend.py"
    script.write_text(KILLED_BACKEND.format(fifo=str(fifo), marker=marker))
    (tmp_path / "backend").mkdir()
    kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig", {"token": KUBE_TOKEN})
    log = tmp_path / "artifacts" / "environment" / "backend.log"
    os.environ["KUBEFOUNDRY_TOKEN"] = token  # start_run copies the environment
    try:
        with anyio.fail_after(60):
            async with await start_run(
                tmp_path,
                kubeconfig,
                "--backend-dir",
                str(tmp_path / "backend"),
                "--backend-command",
                f"{sys.executable} {script}",
                "--backend-port",
                "9",
            ) as proc:
                pid = int(await anyio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True))
                # Its log reaches the file through the run's pump: wait for the last line.
                while marker not in log.read_text(errors="replace"):
                    await anyio.sleep(0.01)
                proc.kill()
                stdout, stderr = await read_all(proc.stdout), await read_all(proc.stderr)
                assert await proc.wait() == -signal.SIGKILL, stdout + stderr
    finally:
        os.environ.pop("KUBEFOUNDRY_TOKEN", None)
    # Nothing is left to stop it: the backend is this test's to end.
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)
    forms = {
        token,
        KUBE_TOKEN,  # registered before the environment starts, not once the flows do
        urllib.parse.quote(token, safe=""),
        token.replace("/", "\\/"),
        base64.b64encode(token.encode()).decode()[:-4],
        token[9:],  # the second half of the split write, alone
    }
    texts = {"stdout": stdout, "stderr": stderr}
    texts |= {
        str(p.relative_to(tmp_path)): p.read_text(errors="replace")
        for p in (tmp_path / "artifacts").rglob("*")
        if p.is_file()
    }
    assert "backend.log" in " ".join(texts)
    for name, text in texts.items():
        for form in forms:
            assert form not in text, f"{form!r} is in {name} after the run was killed"
    written = log.read_text()
    assert written.count("***") == 6, written  # it was logged, masked, every time
    assert "X-Token: ***" in written and "retrying with token=*** after a 503" in written


# The test cluster through the ``kubeconfig`` fixture: its parameter names the backend, so
# that the worker's pool starts the cluster ahead (tests/README.md).
@pytest.mark.parametrize("kubeconfig", ["testcluster"], indirect=True)
async def test_a_killed_run_leaves_no_client_key_on_disk(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kubeconfig that carries its client key inline (as kind writes it): the Kubernetes
    client's TLS context needs it as a file, and a SIGKILLed run must not leave that
    file behind (the library removes its own only at a normal exit)."""
    cert, key = client_key_pair(tmp_path)
    config = yaml.safe_load(kubeconfig.read_text())
    for entry in config["users"]:
        entry["user"] = with_inline_client_key(entry["user"], cert, key)
    inline = tmp_path / "kubeconfig"
    inline.write_text(yaml.safe_dump(config))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))  # start_run copies the environment
    # The backend: a listener that accepts and never answers. The run checks it only
    # once its Kubernetes client is built, so a connection means the key is loaded.
    connected = anyio.Event()

    async def accept(stream: anyio.abc.SocketStream) -> None:
        connected.set()
        await anyio.sleep_forever()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, accept)
            with anyio.fail_after(60):
                async with await start_run(
                    tmp_path, inline, "--api-url", f"http://127.0.0.1:{port}"
                ) as proc:
                    await connected.wait()
                    proc.kill()
                    stdout, stderr = await read_all(proc.stdout), await read_all(proc.stderr)
                    assert await proc.wait() == -signal.SIGKILL, stdout + stderr
            tg.cancel_scope.cancel()
    body = b"".join(key.splitlines()[1:-1])
    left = [
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p.is_file() and body in b"".join(p.read_bytes().splitlines())
    ]
    assert left == [], left
    assert list(temporary.rglob("*")) == [], "the run left files in the temporary directory"
