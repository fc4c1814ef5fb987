"""Every provider in one run, as a user runs it: ``run --provider kaito,kuberay,dynamo``.

The command runs as a child process against the sandbox (the in-process Kubernetes API,
and a fresh test cluster with the real CRDs when TESTCLUSTER_HOME is set): one budget,
one JUnit file with a testsuite per provider, the findings of the real backend's
defects in it, ``--strict`` turning them into failures, ``--shard`` and
``[[deployments]]`` tables that name their provider. Models are stubs.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _bounded import running_sandbox
from _testcluster import provider_crds
from e2e_harness import Result, run_orchestrator, sandbox_kube_only

from orchestrator.clients import PODS, KubeClient
from orchestrator.sandbox import Delays, Faults, Sandbox, SandboxOptions

#: Above the harness's deadline (TIMEOUT) plus its SIGTERM grace and the sandbox's start
#: and stop, so that a stuck run is reported by the harness, with its output.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(360)]

ALL = "kaito,kuberay,dynamo"
#: The run's own budget, below the harness's deadline (TIMEOUT): a run that gets stuck
#: fails its phase with a named reason ("Wait Ready timed out"), diagnoses, cleans up and
#: reports, instead of being stopped from outside. A passing run takes about 30 s on a
#: loaded 2-core machine; the default budget (600 s) would outlast any test deadline.
BUDGET = ("--test-timeout", "180000")
#: The harness's deadline for one such run: the budget, its overshoot and some slack.
TIMEOUT = 240


@pytest.fixture
def faults() -> Faults:
    """A healthy sandbox with stub models; tests that need more parametrize ``faults``."""
    return Faults(stub_models=True)


#: The real backend's KubeRay defect (``kuberay-gone-before-pods``) is seen only while
#: the pods outlive the RayService: in the tests that assert the finding, they stay
#: Terminating longer than the default, so that it shows a state, not the outcome of a
#: close race. Every KubeRay and Dynamo Delete waits that time out, so the other tests
#: keep the default.
PODS_LINGER = pytest.mark.parametrize(
    "faults", [Faults(stub_models=True, delays=Delays(pod_termination=2.0))], ids=["pods-linger"]
)


@pytest.fixture
async def providers_sandbox(
    kubeconfig: Path | None, faults: Faults, tmp_path: Path
) -> AsyncIterator[Sandbox]:
    crds = os.environ.get("KAITO_CRDS_DIR")
    options = SandboxOptions(
        workdir=tmp_path / "sandbox",
        kubeconfig=kubeconfig,
        faults=faults,
        crd_dir=Path(crds) if crds and kubeconfig is not None else None,
        provider_crds=provider_crds() if kubeconfig is not None else {},
    )
    async with running_sandbox(options) as sb:
        yield sb


def suites(result: Result) -> dict[str, ET.Element]:
    result.cases()  # validates the file against the junit-10 schema
    root = ET.parse(result.junit).getroot()
    return {s.get("name", ""): s for s in root.iter("testsuite")}


def suite_findings(suite: ET.Element) -> set[str]:
    return {
        p.get("name", "").removeprefix("finding.")
        for p in suite.iter("property")
        if p.get("name", "").startswith("finding.")
    }


async def no_workload_pods(sb: Sandbox) -> list[str]:
    kube = await KubeClient.from_kubeconfig(str(sb.kubeconfig))
    try:
        left = []
        for namespace, selector in (
            ("kaito-workspace", "kaito.sh/workspace"),
            ("kuberay-system", "ray.io/cluster"),
            ("dynamo-system", "nvidia.com/dynamo-graph-deployment-name"),
        ):
            pods = await kube.list(PODS, namespace, label_selector=selector)
            left += [p["metadata"]["name"] for p in pods["items"]]
        return left
    finally:
        await kube.aclose()


@PODS_LINGER
async def test_every_provider_in_one_run(providers_sandbox: Sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(
        providers_sandbox, tmp_path, "--provider", ALL, *BUDGET, timeout=TIMEOUT
    )
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-2000:]
    found = suites(result)
    assert set(found) == {"kaito", "kuberay", "dynamo"}
    assert suite_findings(found["kaito"]) == set()
    assert suite_findings(found["kuberay"]) == {"kuberay-gone-before-pods"}
    assert suite_findings(found["dynamo"]) == {
        "dynamo-ready-replicas-zero",
        "dynamo-pods-not-listed",
    }
    # the console names them, with where they are explained
    assert "dynamo-ready-replicas-zero" in result.stdout
    assert "docs/PROVIDERS.md#kuberay-gone-before-pods" in result.stdout
    # one budget for all three: each run.json says so
    for provider in ("kuberay", "dynamo"):
        run = (result.artifacts / provider / "run.json").read_text()
        assert '"findings"' in run
    assert await no_workload_pods(providers_sandbox) == []


@PODS_LINGER
async def test_strict_fails_the_phases_that_found_something(
    providers_sandbox: Sandbox, tmp_path: Path
) -> None:
    result = await run_orchestrator(
        providers_sandbox, tmp_path, "--provider", "kuberay,dynamo", "--strict", timeout=240
    )
    assert result.code == 1
    found = suites(result)

    def failures(suite: ET.Element) -> list[str]:
        return [f.get("message", "") for f in suite.iter("failure")]

    assert failures(found["kuberay"]) == [
        "Delete: --strict: 1 finding(s): kuberay-gone-before-pods (deadline 120.0 s)"
    ]
    (dynamo,) = failures(found["dynamo"])
    assert dynamo.startswith("Wait Ready: --strict: 2 finding(s): dynamo-ready-replicas-zero")
    assert await no_workload_pods(providers_sandbox) == []  # cleanup still ran


@pytest.mark.parametrize(
    "faults",
    [Faults(stub_models=True, defects={"kuberay_get_404_while_pods_go": False})],
    ids=["behaving"],
)
async def test_strict_passes_a_behaving_backend(providers_sandbox: Sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(
        providers_sandbox, tmp_path, "--provider", "kuberay", "--strict", timeout=180
    )
    assert result.code == 0, result.stdout[-3000:]
    assert suite_findings(suites(result)["kuberay"]) == set()


async def test_shards_split_the_providers(providers_sandbox: Sandbox, tmp_path: Path) -> None:
    """Three providers over two jobs: 1/2 runs kaito and dynamo, 2/2 runs kuberay; a
    shard with nothing in it passes without making anything."""
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
    first = await run_orchestrator(
        providers_sandbox,
        tmp_path / "a",
        "--provider",
        ALL,
        "--shard",
        "1/2",
        *BUDGET,
        timeout=TIMEOUT,
    )
    second = await run_orchestrator(
        providers_sandbox,
        tmp_path / "b",
        "--provider",
        ALL,
        "--shard",
        "2/2",
        *BUDGET,
        timeout=TIMEOUT,
    )
    assert first.code == 0 and second.code == 0, first.stdout[-2000:] + second.stdout[-2000:]
    assert set(suites(first)) == {"kaito", "dynamo"}
    assert set(suites(second)) == {"kuberay"}
    empty = await run_orchestrator(
        providers_sandbox, tmp_path / "c", "--provider", "kuberay", "--shard", "2/2"
    )
    assert empty.code == 0
    assert "nothing to run" in empty.stdout
    assert suites(empty) == {}


async def test_deployments_name_their_provider(providers_sandbox: Sandbox, tmp_path: Path) -> None:
    config = tmp_path / "providers.toml"
    config.write_text(
        '[[deployments]]\nname = "ray-a"\nprovider = "kuberay"\n\n'
        '[[deployments]]\nname = "dyn-a"\nprovider = "dynamo"\nreplicas = 2\n'
    )
    result = await run_orchestrator(
        providers_sandbox, tmp_path, "--config", str(config), *BUDGET, timeout=TIMEOUT
    )
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-2000:]
    found = suites(result)
    assert set(found) == {"kuberay", "dynamo"}  # one deployment each: named by provider

    def prop(suite: ET.Element, name: str) -> str:
        return next(p.get("value", "") for p in suite.iter("property") if p.get("name") == name)

    # two deployments in one run: their names get the run id, so two jobs never collide
    assert prop(found["kuberay"], "deployment").startswith("ray-a-")
    assert prop(found["dynamo"], "deployment").startswith("dyn-a-")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--shard", "3/2"], "INDEX must be between 1 and COUNT"),
        (["--shard", "x"], "is not INDEX/COUNT"),
        (["--provider", "kuberay", "--deployment", "name=a,provider=Ray!"], "not a provider name"),
        (["--provider", "nope"], "no flow named 'nope'"),
    ],
)
# On the sandbox's own API only: the input is refused before any cluster is reached, so a
# test cluster's row would start a cluster and a sandbox only to repeat the same run.
@pytest.mark.parametrize("kubeconfig", ["sandbox-kube"], indirect=True)
async def test_bad_provider_input_is_exit_2(
    providers_sandbox: Sandbox, tmp_path: Path, args: list[str], message: str
) -> None:
    # Bad input on the command line is the subject: a fresh interpreter, as a user's.
    result = await run_orchestrator(providers_sandbox, tmp_path, *args, timeout=60, fresh=True)
    assert result.code == 2, result.stdout + result.stderr
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.model
@pytest.mark.parametrize("faults", [Faults()], ids=["real-model"])
@sandbox_kube_only("one real-model run per provider: on the sandbox's own API")
async def test_kuberay_and_dynamo_serve_a_real_model(
    providers_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Once per provider, a real llama.cpp model behind NAME-serve-svc and NAME-frontend
    (the in-process API only: the test cluster adds nothing to what a model says)."""
    result = await run_orchestrator(
        providers_sandbox, tmp_path, "--provider", "kuberay,dynamo", timeout=300
    )
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for name, suite in suites(result).items():
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert int(props["completion_tokens"] or 0) > 0, (name, props)
