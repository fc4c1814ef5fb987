"""End-to-end fixtures: a sandbox on loopback, and the real command run against it.

Each test gets a fresh sandbox (KubeFoundry stand-in, KAITO controller, model
servers) on a fresh Kubernetes API: the sandbox's own, and, when
``TESTCLUSTER_HOME`` names the shared test cluster, a real API server too. The
orchestrator runs as a child process exactly as a user runs it, so exit codes,
signals and the files it writes are tested for real.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import xmlschema
from _bounded import running_sandbox
from _testcluster import fresh_cluster

from orchestrator.clients import PODS, KubeClient, NotFound
from orchestrator.flows.kaito import WORKSPACES
from orchestrator.sandbox import Faults, Sandbox, SandboxOptions

ROOT = Path(__file__).resolve().parents[2]
XSD = ROOT / "tests" / "engine" / "junit.xsd"


@functools.cache
def junit_schema() -> xmlschema.XMLSchema:
    """The JUnit schema, built once per worker: building it costs more CPU than most
    checks it serves, and ``Result.cases`` runs on every status a test asks about."""
    return xmlschema.XMLSchema(str(XSD))


PHASES = ["Install KAITO", "Deploy llama3.2:1b", "Wait Ready", "Inference", "Delete"]


@pytest.fixture(params=["sandbox-kube", "testcluster"])
def kubeconfig(request: pytest.FixtureRequest) -> Iterator[Path | None]:
    """None: the sandbox starts its in-process Kubernetes API. A path: a fresh test cluster."""
    if request.param == "sandbox-kube":
        yield None
        return
    with fresh_cluster() as cluster:
        yield cluster.kubeconfig


@pytest.fixture
def faults() -> Faults:
    """Override in a test module (or parametrize) to inject faults."""
    return Faults()


@pytest.fixture
async def sandbox(
    kubeconfig: Path | None, faults: Faults, stub_models: bool, tmp_path: Path
) -> AsyncIterator[Sandbox]:
    """A running sandbox; stub models unless the test is marked ``model`` (tests/README.md)."""
    crds = os.environ.get("KAITO_CRDS_DIR")
    options = SandboxOptions(
        workdir=tmp_path / "sandbox",
        kubeconfig=kubeconfig,
        # A copy: a parametrized Faults object is shared by every backend's run.
        faults=faults.model_copy(update={"stub_models": stub_models}),
        crd_dir=Path(crds) if crds and kubeconfig is not None else None,
    )
    async with running_sandbox(options) as sb:
        yield sb


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float
    artifacts: Path

    @property
    def junit(self) -> Path:
        return self.artifacts / "junit.xml"

    def cases(self) -> dict[str, dict[str, Any]]:
        """testcase name -> {status, message} from the JUnit file, validated against the schema."""
        junit_schema().validate(str(self.junit))
        import xml.etree.ElementTree as ET

        out: dict[str, dict[str, Any]] = {}
        for case in ET.parse(self.junit).getroot().iter("testcase"):
            status, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    status, message = tag, el.get("message", "")
            out[case.get("name", "")] = {"status": status, "message": message}
        return out

    def verdicts(self) -> str:
        """Every testcase's status and reason, and the run's output: what an assertion on a
        verdict shows when it fails, so that 'failure' != 'passed' comes with its why."""
        try:
            lines = [
                f"{name}: {case['status']}" + (f" ({case['message']})" if case["message"] else "")
                for name, case in self.cases().items()
            ]
        except Exception as exc:  # no or an invalid report: that is the news then
            lines = [f"no readable JUnit report: {exc!r}"]
        return "\n".join([*lines, "--- output ---", self.stdout[-4000:], self.stderr[-2000:]])

    def status_of(self, title: str) -> dict[str, Any]:
        for name, case in self.cases().items():
            if name.endswith(title):
                return case
        raise AssertionError(f"no testcase named like {title!r} in {list(self.cases())}")

    def run_json(self) -> dict[str, Any]:
        return json.loads((self.artifacts / "run.json").read_text())


def command(
    sb: Sandbox, artifacts: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The ``orchestrator run`` command line against ``sb``, and the environment to run it in.

    The caller's CI, KUBECONFIG and API_URL are dropped, so that only what the test says
    reaches the run; colours off and output unbuffered, so that markers arrive as printed.
    """
    full_env = {k: v for k, v in os.environ.items() if k not in ("CI", "KUBECONFIG", "API_URL")}
    full_env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    argv = [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        "--no-live",
        "--api-url",
        sb.api_url,
        "--kubeconfig",
        str(sb.kubeconfig),
        "--artifacts-dir",
        str(artifacts),
        "--cleanup",
        "always",
        *args,
    ]
    return argv, full_env


async def run_orchestrator(
    sb: Sandbox, tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> Result:
    """Run ``python -m orchestrator run`` against ``sb`` and wait for it, with a deadline."""
    artifacts = tmp_path / "artifacts"
    argv, full_env = command(sb, artifacts, *args, env=env)
    started = time.monotonic()
    with anyio.fail_after(timeout):
        proc = await anyio.run_process(argv, env=full_env, cwd=tmp_path, check=False)
    return Result(
        proc.returncode,
        proc.stdout.decode(),
        proc.stderr.decode(),
        time.monotonic() - started,
        artifacts,
    )


async def leftovers(
    sb: Sandbox,
    name: str = "integration-test-llama",
    namespace: str = "kaito-workspace",
    *,
    kube: KubeClient | None = None,
) -> list[str]:
    """What of the deployment is still in the cluster, checked through the API and Kubernetes.

    ``kube``: a client the caller already holds (a new one costs a TLS context's CPU)."""
    left: list[str] = []
    own = kube is None
    client = await KubeClient.from_kubeconfig(str(sb.kubeconfig)) if kube is None else kube
    try:
        try:
            await client.get(WORKSPACES, name, namespace)
            left.append(f"workspace {name}")
        except NotFound:
            pass
        pods = await client.list(PODS, namespace, label_selector=f"kaito.sh/workspace={name}")
        left += [p["metadata"]["name"] for p in pods.get("items") or []]
    finally:
        if own:
            await client.aclose()
    import httpx

    async with httpx.AsyncClient() as http:
        r = await http.get(f"{sb.api_url}/api/deployments/{name}", params={"namespace": namespace})
        if r.status_code != 404:
            left.append(f"backend still answers {r.status_code} for {name}")
    return left
