"""Running the real command through hostile peers, and what every such run must show.

``hostile`` (a fixture) puts a :class:`HostileProxy` in front of the sandbox's
Kubernetes API (the sandbox's own or the test cluster's; the model's traffic goes
through it too, by the service proxy) and another in front of the KubeFoundry
stand-in. :func:`run_hostile` runs ``python -m orchestrator run`` through both, and
:func:`assert_survived` checks the promise: a named reason, a documented exit code,
cleanup done, nothing left in the cluster (by name and by label), no secret in any
output or artifact, and no traceback.

Reused by the soak script: ``Hostile.start(sandbox)`` outside pytest.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import pytest
from e2e_harness import Result, drive, hung
from faults_harness import assert_clean
from proxy import HostileProxy

from orchestrator.sandbox import Faults, Sandbox

#: The backend token every hostile run sends: a secret no output may show.
BACKEND_TOKEN = "hostile-backend-token-5f3c9a"
#: Exit codes a run may end with when a peer misbehaves (docs: 0 passed, 1 failed).
DOCUMENTED_EXITS = (0, 1)
#: The safety re-check of every hostile run, ms (a test may pass its own): a peer that
#: stalls a watch leaves the wait to it, and at the 30 s default each such stall costs
#: half a minute. Above the 2 s pace of an impaired watch, so that the two stay
#: different paths.
RECHECK_MS = "3000"


@dataclass
class Hostile:
    """The two proxies of one sandbox, and the kubeconfig that goes through the first."""

    kube: HostileProxy
    backend: HostileProxy
    kubeconfig: Path
    sandbox: Sandbox

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.kube.token, BACKEND_TOKEN) if s]

    @classmethod
    async def start(cls, sandbox: Sandbox, stack: AsyncExitStack, workdir: Path) -> Hostile:
        kube = await stack.enter_async_context(HostileProxy.for_kubeconfig(sandbox.kubeconfig))
        backend = await stack.enter_async_context(HostileProxy(sandbox.api_url))
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(kube, backend, kube.write_kubeconfig(workdir / "kubeconfig"), sandbox)

    def clear(self) -> None:
        self.kube.clear()
        self.backend.clear()


@pytest.fixture
def faults() -> Faults:
    """Stub models: the model's answers are not the subject of these tests, its bytes are."""
    return Faults(stub_models=True)


@pytest.fixture
async def hostile(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[Hostile]:
    async with AsyncExitStack() as stack:
        yield await Hostile.start(sandbox, stack, tmp_path / "hostile")


async def run_hostile(
    h: Hostile,
    artifacts: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    hooks: list[tuple[str, Callable[[], object]]] | None = None,
) -> Result:
    """Run ``python -m orchestrator run`` through the hostile proxies, with ``CI`` set
    (cleanup always), the backend token in the environment and the short safety
    re-check (:data:`RECHECK_MS`).

    ``hooks``: ``(marker, action)`` pairs, in order; each action runs once the run's
    output shows its marker (``"Delete ... started"``), so that a peer can turn hostile
    in the middle of a given phase.
    """
    full_env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "API_URL")}
    full_env.update(
        {"NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "CI": "true", "KUBEFOUNDRY_TOKEN": BACKEND_TOKEN}
    )
    full_env.update(env or {})
    argv = [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        "--no-live",
        "--api-url",
        h.backend.url,
        "--kubeconfig",
        str(h.kubeconfig),
        "--artifacts-dir",
        str(artifacts),
        "--cleanup",
        "always",
        "--recheck-interval",
        RECHECK_MS,
        *args,
    ]
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    pending = list(hooks or [])

    def on_output(output: str, proc: anyio.abc.Process) -> None:
        while pending and pending[0][0] in output:
            _, action = pending.pop(0)
            action()

    ended = await drive(argv, full_env, artifacts.parent, timeout, on_output)
    if ended.stopped is not None:
        pytest.fail(hung(ended, timeout, h.sandbox), pytrace=False)
    assert not pending, f"the run never printed {[m for m, _ in pending]}"
    return Result(ended.code, ended.stdout, ended.stderr, ended.seconds, artifacts)


def quoted_forms(secret: str) -> list[str]:
    """``secret`` as a peer may quote it (proxy.ECHO_FORMS): as is, percent-encoded,
    JSON-escaped, and the part of its base64 that only it decides, at each alignment
    (all three bytes offsets inside a longer value). Base64 inside a longer value is
    left out for a value shorter than six characters: the redactor masks a short value's
    base64 only as a whole token (the fragment would be a few characters that ordinary
    text holds too), and the peers quote it inside one."""
    forms = {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}
    forms.add(json.dumps(secret)[1:-1].replace("/", "\\/"))
    if len(secret) >= 6:
        for offset in range(3):
            encoded = base64.b64encode(b"\0" * offset + secret.encode()).decode()
            forms.add(encoded[-(-offset * 8 // 6) : (offset + len(secret)) * 8 // 6])
    return sorted(forms)


def secrets_shown(result: Result, secrets: list[str]) -> list[str]:
    """Where a secret shows, in any form a peer may quote it: the console, stderr, or
    any file the run wrote."""
    found = []
    for secret in secrets:
        for form in quoted_forms(secret):
            if form in result.stdout:
                found.append(f"{secret[:4]}... ({form[:4]}...) in stdout")
            if form in result.stderr:
                found.append(f"{secret[:4]}... ({form[:4]}...) in stderr")
            if result.artifacts.exists():
                for path in result.artifacts.rglob("*"):
                    if path.is_file() and form.encode() in path.read_bytes():
                        where = path.relative_to(result.artifacts)
                        found.append(f"{secret[:4]}... ({form[:4]}...) in {where}")
    return found


async def assert_survived(h: Hostile, result: Result) -> None:
    """Whatever the peers did: a named reason, a documented exit, cleanup done, nothing
    left, no secret anywhere, no traceback."""
    out = result.stdout + result.stderr
    assert result.code in DOCUMENTED_EXITS, f"exit {result.code}:\n{out}"
    assert "Traceback" not in out, out
    cases = result.cases()  # the JUnit file exists and is valid
    failed = [c for c in cases.values() if c["status"] in ("failure", "error")]
    if result.code == 1:
        assert failed and all(c["message"].strip() for c in failed), cases
    else:
        assert not failed, cases
    assert result.status_of("Cleanup")["status"] == "passed", out
    assert secrets_shown(result, h.secrets) == []
    h.clear()  # the leak check asks the real peers, not the hostile ones
    await assert_clean(h.sandbox)
