"""The KubeRay and Dynamo profiles, end to end on the sandbox: every finding shown by a
stand-in that has the real backend's defect, and absent when the stand-in behaves.

Each flow runs through the engine (the Runner, JUnit) against the sandbox's stand-ins,
on the in-process Kubernetes API and, when TESTCLUSTER_HOME is set, on a fresh test
cluster (with the real CRDs when KUBERAY_CRDS_DIR / DYNAMO_CRDS_DIR name them). Models
are stubs here: inference is proven, its words are not the subject.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
import xmlschema
from _testcluster import fresh_cluster, provider_crds
from proxy import HostileProxy

from orchestrator.clients import (
    CRDS,
    PODS,
    SECRETS,
    InferenceClient,
    InferenceRoute,
    KubeClient,
    KubeFoundryClient,
    NotFound,
    WatchHub,
)
from orchestrator.engine import Budget, JUnitReporter, Runner, RunRecord, SharedServices
from orchestrator.engine import redactor as process_redactor
from orchestrator.flows import (
    Deployment,
    FlowSettings,
    KubeFoundryFlow,
    ProviderProfile,
    WatchSpec,
    wait_for,
)
from orchestrator.flows._providers import ensure_token_secret
from orchestrator.flows.dynamo import DGDS, DynamoProfile
from orchestrator.flows.kuberay import RAYCLUSTERS, RAYSERVICES, KubeRayProfile
from orchestrator.sandbox import Faults, Sandbox, SandboxOptions

pytestmark = pytest.mark.anyio

XSD = xmlschema.XMLSchema(str(Path(__file__).parents[1] / "engine" / "junit.xsd"))
NAME = "llm"
#: Seconds a deleted KubeRay pod stays Terminating in the tests that assert
#: ``kuberay-gone-before-pods`` (the default is shorter: every Delete waits it out).
LINGER = 2.0


@pytest.fixture(params=["sandbox-kube", "testcluster"])
def kubeconfig(request: pytest.FixtureRequest) -> Iterator[Path | None]:
    if request.param == "sandbox-kube":
        yield None
        return
    with fresh_cluster() as cluster:
        yield cluster.kubeconfig


class Env:
    def __init__(self, sandbox: Sandbox, kube: KubeClient, tmp_path: Path) -> None:
        self.sandbox = sandbox
        self.kube = kube
        self.tmp_path = tmp_path
        self.runs = 0

    async def run(
        self,
        profile: ProviderProfile,
        *,
        strict: bool = False,
        name: str = NAME,
        replicas: int = 1,
        ready_timeout: float = 60.0,
    ) -> tuple[RunRecord, ET.Element]:
        """One whole flow through the engine, with the watch hub, as the command runs it."""
        self.runs += 1
        artifacts = self.tmp_path / f"run-{self.runs}"
        junit = artifacts / "junit.xml"
        api = KubeFoundryClient(self.sandbox.api_url)
        inference = InferenceClient(InferenceRoute("service-proxy"), kube=self.kube)
        try:
            async with SharedServices() as shared:
                hub = await shared.start("the watch hub", WatchHub(self.kube))
                flow = KubeFoundryFlow(
                    profile,
                    FlowSettings(
                        api_url=self.sandbox.api_url,
                        deployment_name=name,
                        replicas=replicas,
                        install_timeout=60,
                        ready_timeout=ready_timeout,
                        delete_timeout=60,
                        recheck=5,
                    ),
                    api=api,
                    kube=self.kube,
                    inference=inference,
                    hub=hub,
                )
                runner = Runner(
                    flow,
                    budget=Budget(240, 30),
                    reporters=[JUnitReporter(junit)],
                    artifacts_dir=artifacts,
                    cleanup_policy="always",
                    strict=strict,
                )
                record = await runner.run()
        finally:
            await api.aclose()
            await inference.aclose()
        XSD.validate(str(junit))
        return record, ET.parse(junit).getroot()


@pytest.fixture
def make_env(kubeconfig: Path | None, tmp_path: Path) -> Any:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def factory(**faults: Any) -> AsyncIterator[Env]:
        options = SandboxOptions(
            workdir=tmp_path / "sandbox",
            kubeconfig=kubeconfig,
            faults=Faults.model_validate({"stub_models": True, **faults}),
            provider_crds=provider_crds() if kubeconfig is not None else {},
        )
        async with Sandbox(options) as sandbox:
            kube = await KubeClient.from_kubeconfig(str(sandbox.kubeconfig))
            try:
                yield Env(sandbox, kube, tmp_path)
            finally:
                await kube.aclose()

    return factory


async def installed(env: Env, api: KubeFoundryClient, provider: str) -> None:
    """Wait (on the CRD's watch) until the backend says the provider is installed."""

    async def check() -> bool | None:
        return True if (await api.provider_status(provider)).installed else None

    with anyio.fail_after(60):
        await wait_for(
            check,
            kube=env.kube,
            watches=[WatchSpec(CRDS, None), WatchSpec(PODS, f"{provider}-system")],
            recheck=5,
        )


def findings(record: RunRecord) -> dict[str, str]:
    return {f.name: phase.name for phase, f in record.findings()}


def statuses(record: RunRecord) -> dict[str, str]:
    return {p.name: p.status for p in record.phase_records()}


def junit_findings(root: ET.Element) -> dict[str, str]:
    """finding.NAME properties, and that each shows in its testcase's system-out."""
    props = {
        p.get("name", "").removeprefix("finding."): p.get("value", "")
        for p in root.iter("property")
        if p.get("name", "").startswith("finding.")
    }
    outs = " ".join((case.findtext("system-out") or "") for case in root.iter("testcase"))
    for name in props:
        assert f"FINDING {name}" in outs, name
        assert f"docs/PROVIDERS.md#{name}" in props[name]
    return props


async def nothing_left(env: Env, namespace: str) -> None:
    """The workload, its pods and the Secret the flow made are gone from the cluster."""
    for res in (RAYSERVICES, RAYCLUSTERS, DGDS):
        try:
            listing = await env.kube.list(res, namespace)
        except NotFound:
            continue  # that provider's CRD is not installed
        assert not listing["items"], [o["metadata"]["name"] for o in listing["items"]]
    for selector in ("ray.io/cluster", "nvidia.com/dynamo-graph-deployment-name"):
        pods = await env.kube.list(PODS, namespace, label_selector=selector)
        assert not pods["items"], [p["metadata"]["name"] for p in pods["items"]]
    with pytest.raises(NotFound):
        await env.kube.get(SECRETS, "hf-token-secret", namespace)


# ---------------------------------------------------------------------------- KubeRay


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_kuberay_end_to_end(make_env: Any, defect: bool) -> None:
    """Install, the token Secret, deploy, serve-svc inference, delete until the pods are
    gone; the real backend's early 404 is a finding, absent when the stand-in behaves."""
    # The defect's finding is seen while the pods outlive the RayService: keep them
    # Terminating long enough that it shows a state, not the outcome of a close race.
    lingering = {"delays": {"pod_termination": LINGER}} if defect else {}
    async with make_env(defects={"kuberay_get_404_while_pods_go": defect}, **lingering) as env:
        record, root = await env.run(KubeRayProfile())
        assert record.outcome == "passed", [(p.name, p.reason) for p in record.phase_records()]
        expected = {"kuberay-gone-before-pods": "delete"} if defect else {}
        assert findings(record) == expected
        assert set(junit_findings(root)) == set(expected)
        props = record.all_properties()
        assert props["served_model_name"] == KubeRayProfile.default_model
        await nothing_left(env, "kuberay-system")


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_kuberay_replicas_above_max(make_env: Any, defect: bool) -> None:
    async with make_env(defects={"kuberay_clamps_replicas": defect}) as env:
        record, _ = await env.run(KubeRayProfile(), replicas=3)
        assert record.outcome == "passed"
        assert ("kuberay-replicas-clamped" in findings(record)) == defect


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_kuberay_pods_matched_by_prefix(make_env: Any, defect: bool) -> None:
    """Another deployment whose name starts with ours: the real /pods lists its pods too,
    and the flow's own pod set (its exact RayCluster) never takes them."""
    async with make_env(defects={"kuberay_pods_by_prefix": defect}) as env:
        api = KubeFoundryClient(env.sandbox.api_url)
        try:
            await api.install_provider("kuberay")
            await installed(env, api, "kuberay")
            await ensure_token_secret(env.kube, "kuberay-system", lambda _: None)
            decoy = Deployment("llm-b", "kuberay-system", KubeRayProfile.default_model)
            await api.create_deployment(KubeRayProfile().create_body(decoy))
            await env.sandbox.state.wait_recorded("llm-b", "serviceStatus=Running")
            record, _ = await env.run(KubeRayProfile())
            await api.delete_deployment("llm-b", "kuberay-system")
        finally:
            await api.aclose()
        assert record.outcome == "passed", [(p.name, p.reason) for p in record.phase_records()]
        assert ("kuberay-pods-by-prefix" in findings(record)) == defect


async def test_kuberay_strict_fails_on_a_finding(make_env: Any) -> None:
    async with make_env(delays={"pod_termination": LINGER}) as env:
        record, root = await env.run(KubeRayProfile(), strict=True)
        assert record.outcome == "failed" and record.failed_phase == "delete"
        delete = next(p for p in record.phases if p.name == "delete")
        assert delete.reason == "--strict: 1 finding(s): kuberay-gone-before-pods"
        assert statuses(record)["cleanup"] == "passed"
        await nothing_left(env, "kuberay-system")


@pytest.mark.parametrize("kubeconfig", ["sandbox-kube"], indirect=True)
async def test_a_library_run_with_a_short_hf_token_says_so_in_its_log_once(
    make_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library user's run has no command to warn before it: the flow that registers a
    token too short to be masked everywhere says so in the run's log (run.json, the
    JUnit system-out), once in the process, and never shows the value there."""
    token = "k3Y"
    monkeypatch.setenv("HF_TOKEN", token)
    process_redactor.clear()
    try:
        async with make_env() as env:
            first, root = await env.run(KubeRayProfile())
            second, _ = await env.run(KubeRayProfile())
    finally:
        process_redactor.clear()
    assert first.outcome == second.outcome == "passed"
    warning = "warning: HF_TOKEN is shorter than 6 characters"
    assert sum(warning in line for line in first.log) == 1, first.log_text()
    assert warning not in second.log_text()
    assert warning in " ".join(out.text or "" for out in root.iter("system-out"))
    run_json = (env.tmp_path / "run-1" / "run.json").read_text()
    assert warning in run_json and f" {token} " not in run_json


# ---------------------------------------------------------------------------- Dynamo


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_dynamo_end_to_end(make_env: Any, defect: bool) -> None:
    """Running with 0 ready replicas and no pods listed: decided from the pods, findings;
    absent when the stand-in behaves. Delete waits out the finalizer and the pods."""
    defects = {"dynamo_ready_always_zero": defect, "dynamo_pods_not_found": defect}
    async with make_env(defects=defects) as env:
        record, root = await env.run(DynamoProfile())
        assert record.outcome == "passed", [(p.name, p.reason) for p in record.phase_records()]
        expected = (
            {"dynamo-ready-replicas-zero": "wait_ready", "dynamo-pods-not-listed": "wait_ready"}
            if defect
            else {}
        )
        assert findings(record) == expected
        assert set(junit_findings(root)) == set(expected)
        await nothing_left(env, "dynamo-system")


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_dynamo_failed_workload_fails_fast(make_env: Any, defect: bool) -> None:
    """The operator marks the DGD failed: Wait Ready fails at once (not at its timeout),
    and the backend's Pending is a finding."""
    faults = {"operator_fails": True, "defects": {"dynamo_failed_shows_pending": defect}}
    async with make_env(**faults) as env:
        record, _ = await env.run(DynamoProfile(), ready_timeout=120)
        wait = next(p for p in record.phases if p.name == "wait_ready")
        assert wait.status == "failed" and not wait.timed_out
        assert "marked it failed" in (wait.reason or "")
        assert ("dynamo-failed-shown-pending" in findings(record)) == defect
        assert statuses(record)["cleanup"] == "passed"
        await nothing_left(env, "dynamo-system")


async def test_dynamo_readiness_reads_its_dgd_not_older_than_the_last_event(
    make_env: Any, tmp_path: Path
) -> None:
    """Wait Ready reads the DGD on every check (ClusterView.workload). Once a watch event
    on it has come, the read carries that event's resourceVersion, so that the API server
    may answer from its watch cache instead of a quorum read from etcd; on the sandbox's
    API and a real API server alike. Seen on the wire, through a proxy that forwards all."""
    async with make_env() as env:
        async with HostileProxy.for_kubeconfig(env.sandbox.kubeconfig) as proxy:
            proxied = proxy.write_kubeconfig(tmp_path / "proxied-kubeconfig")
            kube = await KubeClient.from_kubeconfig(str(proxied))
            direct, env.kube = env.kube, kube
            try:
                record, _ = await env.run(DynamoProfile())
            finally:
                env.kube = direct
                await kube.aclose()
        assert record.outcome == "passed", [(p.name, p.reason) for p in record.phase_records()]
    path = DGDS.path("dynamo-system", NAME)
    reads = [
        parse_qs(urlsplit(url).query)
        for method, url, watch in proxy.seen
        if method == "GET" and not watch and urlsplit(url).path == path
    ]
    versions = [int(q["resourceVersion"][0]) for q in reads if "resourceVersion" in q]
    assert versions and all(v > 0 for v in versions), reads
