"""The provider-neutral flow and its profiles, run through the engine against small fakes.

What a profile says must be what the flow does: the body it creates, the Service it asks
for inference, the objects it waits on after the delete and looks for in the leak check,
the Secret it makes before the create and deletes after. Each test runs a whole flow in
milliseconds; the end-to-end suites run the same flow against the sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from flow_fakes import FakeBackend, FakeCluster, FakeModel, Workload

from orchestrator.clients import (
    EVENTS,
    PODS,
    SECRETS,
    SERVICES,
    HTTPStatusError,
    KubeFoundryClient,
    Resource,
    RetryPolicy,
)
from orchestrator.engine import Budget, Finding, Runner, RunRecord
from orchestrator.flows import (
    ClusterView,
    Deployment,
    Endpoint,
    FlowSettings,
    KubeFoundryFlow,
    OncePerRun,
    Owned,
    ProviderProfile,
    Readiness,
    pod_problem,
    pod_ready,
)
from orchestrator.flows.kaito import WORKSPACES, KaitoProfile

pytestmark = pytest.mark.anyio

RAY = Resource("ray.io", "v1", "rayservices")


def kaito_workload() -> Workload:
    return Workload(WORKSPACES, "Workspace", lambda name: {"kaito.sh/workspace": name})


class RayLikeProfile(ProviderProfile):
    """A provider unlike KAITO in every way the profile can say: a Secret first, a
    RayService, pods found by a label prefix, a Service named from the deployment on
    port 8000, and readiness read from the pods because the backend's count is wrong."""

    provider = "raylike"
    title = "RayLike"
    workload = RAY
    workload_kind = "RayService"
    default_namespace = "ray"
    default_model = "org/model"
    readiness_reads_pods = True

    def create_body(self, d: Deployment) -> dict[str, Any]:
        return {"name": d.name, "namespace": d.namespace, "provider": "raylike", "modelId": d.model}

    async def prepare(self, kube: Any, d: Deployment, log: Any) -> list[Owned]:
        body = {"metadata": {"name": "hf-token", "namespace": d.namespace}, "data": {}}
        await kube.create(SECRETS, body, d.namespace)
        return [Owned("Secret", SECRETS, "hf-token", d.namespace)]

    def pod_selector(self, d: Deployment) -> str:
        return "ray.io/cluster"

    def owns_pod(self, d: Deployment, pod: dict[str, Any]) -> bool:
        labels = pod["metadata"].get("labels") or {}
        return str(labels.get("ray.io/cluster", "")).startswith(f"{d.name}-")

    def service_selector(self, d: Deployment) -> str | None:
        return f"ray.io/serve={d.name}"

    def endpoint(self, d: Deployment) -> Endpoint:
        return Endpoint(f"{d.name}-serve-svc", 8000)

    async def readiness(self, status: Any, cluster: ClusterView) -> Readiness:
        pods = await cluster.pods()
        problems = [
            problem for p in pods if (problem := pod_problem(p, self.fatal_waiting_reasons))
        ]
        if problems:
            return Readiness(False, failure=problems[0])
        ready = any(pod_ready(p) for p in pods)
        findings = ()
        if ready and status.replicas.ready == 0:
            findings = (Finding(name="ready-count", message="backend says 0 ready"),)
        return Readiness(ready, findings=findings)


def raylike_workload() -> Workload:
    return Workload(
        RAY,
        "RayService",
        lambda name: {"ray.io/cluster": f"{name}-abcde", "ray.io/serve": name},
        service_name=lambda name: f"{name}-serve-svc",
        reports_ready=False,
    )


async def run(
    profile: ProviderProfile,
    backend: FakeBackend,
    tmp_path: Path,
    model: FakeModel | None = None,
    budget: Budget | None = None,
    **settings: Any,
) -> tuple[KubeFoundryFlow, RunRecord]:
    api = backend.client()
    inference = (model or FakeModel()).client()
    flow = KubeFoundryFlow(
        profile,
        FlowSettings(
            api_url="http://backend.test",
            wait_strategy="poll",
            poll_interval=0.01,
            **settings,
        ),
        api=api,
        kube=backend.cluster,  # type: ignore[arg-type]
        inference=inference,
    )
    runner = Runner(
        flow,
        budget=budget or Budget(30, 10),
        reporters=[],
        artifacts_dir=tmp_path,
        cleanup_policy="always",
    )
    try:
        record = await runner.run()
    finally:
        await api.aclose()
        await inference.aclose()
    return flow, record


def statuses(record: RunRecord) -> dict[str, str]:
    return {p.name: p.status for p in record.phases}


async def test_kaito_profile_runs_the_plan_and_leaves_nothing(tmp_path: Path) -> None:
    backend = FakeBackend(FakeCluster(), kaito_workload())
    model = FakeModel()
    flow, record = await run(KaitoProfile(), backend, tmp_path, model)
    assert record.exit_code == 0, [(p.name, p.reason) for p in record.phases]
    assert set(statuses(record).values()) == {"passed"}
    assert backend.bodies == [
        {
            "name": "integration-test-llama",
            "namespace": "kaito-workspace",
            "provider": "kaito",
            "modelSource": "premade",
            "premadeModel": "llama3.2:1b",
            "ggufRunMode": "direct",
            "computeType": "cpu",
            "replicas": 1,
        }
    ]
    # The catalog's model name, at the Service named like the deployment.
    assert model.asked == [
        (
            "/api/deployments/kaito-workspace/integration-test-llama/proxy/v1/chat/completions",
            "llama-3.2-1b",
        )
    ]
    assert backend.cluster.objects == {}
    assert record.properties["provider"] == "kaito"
    assert flow.name == "kaito"


async def test_a_profile_unlike_kaito_is_served_waited_on_and_cleaned_as_it_says(
    tmp_path: Path,
) -> None:
    cluster = FakeCluster()
    # A pod of another deployment whose label merely shares the key: not ours.
    cluster.put(
        PODS,
        {
            "kind": "Pod",
            "metadata": {"name": "other-0", "namespace": "ray", "labels": {"ray.io/cluster": "x"}},
            "status": {"phase": "Pending"},
        },
    )
    backend = FakeBackend(cluster, raylike_workload())
    model = FakeModel()
    flow, record = await run(RayLikeProfile(), backend, tmp_path, model, deployment_name="llm")
    assert record.exit_code == 0, [(p.name, p.reason) for p in record.phases]
    assert model.asked == [
        ("/api/deployments/ray/llm-serve-svc/proxy/v1/chat/completions", "org/model")
    ]
    wait_ready = next(p for p in record.phases if p.name == "wait_ready")
    assert [f.name for f in wait_ready.findings] == ["ready-count"]
    # The Secret made before the create is gone, and so is everything of the deployment;
    # the other deployment's pod is untouched.
    assert ("secrets", "hf-token") in cluster.deleted
    assert list(cluster.objects) == [("pods", "ray", "other-0")]
    assert record.properties["provider"] == "raylike" and record.suite == "raylike"


async def test_readiness_read_from_pods_fails_fast_on_a_fatal_pod(tmp_path: Path) -> None:
    workload = raylike_workload()
    workload.container_state = {
        "waiting": {"reason": "ErrImagePull", "message": "model:1: not found"}
    }
    backend = FakeBackend(FakeCluster(), workload)
    _, record = await run(RayLikeProfile(), backend, tmp_path, deployment_name="llm")
    wait_ready = next(p for p in record.phases if p.name == "wait_ready")
    assert wait_ready.status == "failed"
    # The profile's failure, with the backend's conditions, and not a timeout.
    assert wait_ready.reason == (
        "deployment llm (no conditions): pod llm-0 container model: ErrImagePull "
        "(image model:1): model:1: not found; check that the image exists and that the nodes can pull it "
        "(a private registry needs an imagePullSecret); the pod's events, in the "
        "diagnostics, hold the registry's answer"
    )
    assert record.cleanup.status == "passed"


async def test_an_existing_deployment_is_reported_and_never_touched(tmp_path: Path) -> None:
    cluster = FakeCluster()
    backend = FakeBackend(cluster, kaito_workload())
    backend._make("integration-test-llama", "kaito-workspace")
    before = dict(cluster.objects)
    _, record = await run(KaitoProfile(), backend, tmp_path)
    deploy = next(p for p in record.phases if p.name == "deploy")
    assert deploy.status == "failed"
    assert "already exists" in (deploy.reason or "") and "left alone" in (deploy.reason or "")
    assert ("POST", "/api/deployments") not in backend.requests
    assert cluster.objects == before and cluster.deleted == []


async def test_a_leaked_service_with_the_runs_labels_fails_the_run_and_cleanup_removes_it(
    tmp_path: Path,
) -> None:
    cluster = FakeCluster()
    backend = FakeBackend(cluster, kaito_workload())
    original = backend._remove

    def remove_but_forget_a_service(name: str, ns: str) -> None:
        original(name, ns)
        cluster.put(
            SERVICES,
            {
                "metadata": {
                    "name": f"{name}-extra",
                    "namespace": ns,
                    "labels": {"kaito.sh/workspace": name},
                }
            },
        )

    backend._remove = remove_but_forget_a_service  # type: ignore[method-assign]
    budget = Budget(30, 0.5, cleanup_cap=0.5, cleanup_floor=0.5)
    _, record = await run(KaitoProfile(), backend, tmp_path, budget=budget, delete_timeout=0.5)
    assert record.exit_code == 1
    delete = next(p for p in record.phases if p.name == "delete")
    assert "Service kaito-workspace/integration-test-llama-extra" in (delete.reason or "")
    # Cleanup deleted it by the run's labels, and its final listing found nothing.
    assert record.cleanup.status == "passed", record.cleanup.reason
    assert cluster.of(SERVICES) == []


async def test_a_model_missing_from_the_catalog_fails_deploy_before_any_create(
    tmp_path: Path,
) -> None:
    backend = FakeBackend(FakeCluster(), kaito_workload(), catalog={})
    _, record = await run(KaitoProfile(), backend, tmp_path)
    deploy = next(p for p in record.phases if p.name == "deploy")
    assert deploy.reason == "model 'llama3.2:1b' is not in the backend's catalog"
    assert ("POST", "/api/deployments") not in backend.requests


async def test_flows_of_one_run_install_a_provider_once(tmp_path: Path) -> None:
    backend = FakeBackend(FakeCluster(), kaito_workload(), installed=False)
    gate = OncePerRun()
    api = backend.client()
    model = FakeModel().client()
    flows = [
        KubeFoundryFlow(
            KaitoProfile(),
            FlowSettings(
                api_url="http://backend.test",
                deployment_name=f"d{i}",
                suite=f"kaito-d{i}",
                wait_strategy="poll",
                poll_interval=0.01,
            ),
            api=api,
            kube=backend.cluster,  # type: ignore[arg-type]
            inference=model,
            install_gate=gate,
        )
        for i in range(3)
    ]
    records = []
    for i, flow in enumerate(flows):
        runner = Runner(
            flow,
            budget=Budget(30, 10),
            reporters=[],
            artifacts_dir=tmp_path / str(i),
            cleanup_policy="always",
        )
        records.append(await runner.run())
    await api.aclose()
    await model.aclose()
    assert [r.exit_code for r in records] == [0, 0, 0]
    installs = [r for r in backend.requests if r[1].endswith("/install")]
    assert installs == [("POST", "/api/installation/providers/kaito/install")]
    taken = [r.phases[0].properties.get("kaito_checked_by") for r in records]
    assert taken == [None, "kaito-d0", "kaito-d0"]


class UnavailableAfterCreate(FakeBackend):
    """Creates the deployment, then answers every read of it with a 503, as a backend
    whose Kubernetes client broke would: a flake that never ends."""

    def client(self) -> KubeFoundryClient:
        return KubeFoundryClient(
            "http://backend.test",
            transport=httpx.MockTransport(self.handle),
            retry=RetryPolicy(initial=0.01, maximum=0.05),
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        made = self.bodies and parts[:2] == ["api", "deployments"] and len(parts) == 3
        if made and request.method == "GET":
            self.requests.append((request.method, request.url.path))
            return httpx.Response(
                503, json={"error": {"message": "Service Unavailable", "statusCode": 503}}
            )
        return super().handle(request)


async def test_a_phase_that_runs_out_while_a_request_keeps_failing_names_both(
    tmp_path: Path,
) -> None:
    """Wait Ready's read of the deployment answers 503 until the phase's time is up: the
    reason is the phase's timeout and names the route with its last answer, not a bare
    timeout and not the 503 alone."""
    backend = UnavailableAfterCreate(FakeCluster(), kaito_workload())
    _, record = await run(KaitoProfile(), backend, tmp_path, ready_timeout=1.0)
    phase = next(p for p in record.phases if p.name == "wait_ready")
    assert phase.status == "failed" and phase.timed_out, (phase.reason, phase.detail)
    reason = phase.reason or ""
    assert reason.startswith("Wait Ready timed out after 1.0 s (phase timeout 1 s;"), reason
    assert (
        " while GET /api/deployments/integration-test-llama kept failing: answered 503: "
        "Service Unavailable" in reason
    ), reason
    reads = [r for r in backend.requests if r == ("GET", "/api/deployments/integration-test-llama")]
    assert len(reads) > 3  # retried by time until the deadline, then reported


class ReadsItsWorkload(KaitoProfile):
    """A third-party reading that looks at its custom resource through the public view."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any] | None] = []

    async def readiness(self, status: Any, cluster: ClusterView) -> Readiness:
        workload = await cluster.workload()
        self.seen.append(workload)
        return Readiness(workload is not None and status.phase == "Running")


async def test_a_reading_gets_its_workload_through_the_cluster_view(tmp_path: Path) -> None:
    """``ClusterView.workload()`` is the deployment's custom resource as the API server has
    it (None before it exists); with no watch event seen (polling here) it is a plain read,
    asking for no resourceVersion."""
    backend = FakeBackend(FakeCluster(), kaito_workload())
    profile = ReadsItsWorkload()
    _, record = await run(profile, backend, tmp_path)
    assert record.exit_code == 0, [(p.name, p.reason) for p in record.phases]
    found = [w for w in profile.seen if w is not None]
    assert found and all(
        (w["kind"], w["metadata"]["name"]) == ("Workspace", "integration-test-llama") for w in found
    )
    reads = [g for g in backend.cluster.gets if g[:2] == ("workspaces", "integration-test-llama")]
    assert reads and all(version is None for _, _, version in reads)


class ResetAfterDelete(FakeBackend):
    """Deletes the deployment, then drops the connection before answering, as a backend
    that restarts at that moment does: the retry of the DELETE finds nothing to delete."""

    dropped = False

    def client(self) -> KubeFoundryClient:
        return KubeFoundryClient(
            "http://backend.test",
            transport=httpx.MockTransport(self.handle),
            retry=RetryPolicy(initial=0.01, maximum=0.05),
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        response = super().handle(request)
        if request.method == "DELETE" and response.status_code == 200 and not self.dropped:
            self.dropped = True
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


async def test_a_delete_whose_answer_was_lost_is_not_a_deployment_that_vanished(
    tmp_path: Path,
) -> None:
    backend = ResetAfterDelete(FakeCluster(), kaito_workload())
    _, record = await run(KaitoProfile(), backend, tmp_path)
    delete = next(p for p in record.phases if p.name == "delete")
    assert delete.status == "passed", (delete.reason, delete.detail)
    deletes = [r for r in backend.requests if r[0] == "DELETE"]
    assert len(deletes) == 2 and backend.dropped  # the lost answer, then the retry's 404
    assert any("delete met 404 after a retry" in line for line in record.log), record.log
    assert record.exit_code == 0 and set(statuses(record).values()) == {"passed"}
    assert backend.cluster.objects == {}


class ResetAfterCreate(ResetAfterDelete):
    """Creates the deployment, then drops the connection before answering: the retry of
    the POST finds it there, and is refused 409 as the real backend refuses a second."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        creating = request.method == "POST" and request.url.path == "/api/deployments"
        if creating and self.dropped:
            self.requests.append(("POST", "/api/deployments"))
            return httpx.Response(409, json={"error": {"message": "already exists"}})
        response = FakeBackend.handle(self, request)
        if creating and response.status_code == 201:
            self.dropped = True
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


async def test_a_create_whose_answer_was_lost_is_the_runs_own_deployment(tmp_path: Path) -> None:
    backend = ResetAfterCreate(FakeCluster(), kaito_workload())
    _, record = await run(KaitoProfile(), backend, tmp_path)
    creates = [r for r in backend.requests if r == ("POST", "/api/deployments")]
    assert len(creates) == 2 and backend.dropped  # the lost answer, then the retry's 409
    assert any("create met 409 after a retry" in line for line in record.log), record.log
    assert record.exit_code == 0 and set(statuses(record).values()) == {"passed"}
    assert backend.cluster.objects == {}


OWN_POD, OTHER_POD = "integration-test-llama-0", "another-llama-0"


def pulled(pod: str, image: str, took: str, ns: str = "kaito-workspace") -> dict[str, Any]:
    """A kubelet's ``Pulled`` event for ``pod``."""
    return {
        "metadata": {"name": f"{pod}.{image}", "namespace": ns},
        "involvedObject": {"kind": "Pod", "name": pod, "namespace": ns},
        "reason": "Pulled",
        "message": f'Successfully pulled image "{image}" in {took}',
        "lastTimestamp": "2026-11-30T05:00:00Z",
    }


def two_deployments_events(cluster: FakeCluster) -> None:
    """This run's pod's pull, and a longer one of another deployment's pod in its namespace."""
    cluster.put(EVENTS, pulled(OWN_POD, "model:1", "2.5s"))
    for i in range(20):
        cluster.put(EVENTS, pulled(OTHER_POD, f"other:{i}", "9m0s"))


async def test_wait_ready_reads_only_its_own_pods_events(tmp_path: Path) -> None:
    """With several deployments in one namespace, each flow reads its own pods' events:
    a namespace-wide list would make every one of N flows read every flow's events."""
    cluster = FakeCluster()
    two_deployments_events(cluster)
    _, record = await run(KaitoProfile(), FakeBackend(cluster, kaito_workload()), tmp_path)
    ready = next(p for p in record.phases if p.name == "wait_ready")
    assert ready.status == "passed", ready.reason
    assert ready.properties["image_pull"] == "pulled" and ready.properties["image"] == "model:1"
    assert ready.properties["image_pull_seconds"] == "2.5"
    reads = [(ns, items) for plural, ns, _, items in cluster.lists if plural == "events"]
    assert reads and all(ns == "kaito-workspace" for ns, _ in reads), reads
    read = [e["involvedObject"]["name"] for _, items in reads for e in items]
    assert read == [OWN_POD], read


class IgnoresEventSelectors(FakeCluster):
    """A server that answers an events list with the whole namespace, whatever it asked."""

    async def list(self, res: Resource, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if res == EVENTS:
            kwargs["field_selector"] = None
        return await super().list(res, *args, **kwargs)


async def test_a_server_ignoring_the_events_selector_does_not_report_another_pods_pull(
    tmp_path: Path,
) -> None:
    cluster = IgnoresEventSelectors()
    two_deployments_events(cluster)
    _, record = await run(KaitoProfile(), FakeBackend(cluster, kaito_workload()), tmp_path)
    ready = next(p for p in record.phases if p.name == "wait_ready")
    assert ready.status == "passed", ready.reason
    assert ready.properties["image"] == "model:1", ready.properties
    assert ready.properties["image_pull_seconds"] == "2.5"
    assert not [line for line in record.log if OTHER_POD in line], record.log


class RefusesEventSelectors(FakeCluster):
    """A server that does not take the events' field selector (a 400, as the real one
    answers a field it does not know)."""

    async def list(self, res: Resource, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if res == EVENTS:
            label = str(kwargs.get("field_selector")).split("=")[0]
            raise HTTPStatusError(400, f"field label not supported: {label}", method="GET")
        return await super().list(res, *args, **kwargs)


async def test_unreadable_events_are_noted_and_wait_ready_passes(tmp_path: Path) -> None:
    cluster = RefusesEventSelectors()
    two_deployments_events(cluster)
    _, record = await run(KaitoProfile(), FakeBackend(cluster, kaito_workload()), tmp_path)
    ready = next(p for p in record.phases if p.name == "wait_ready")
    assert ready.status == "passed", ready.reason
    assert "image_pull" not in ready.properties and "image" not in ready.properties
    noted = [line for line in record.log if "image pull time not read" in line]
    assert len(noted) == 1 and "field label not supported" in noted[0], record.log


class NotFoundWhileDeployed(FakeBackend):
    """The real backend's GET of a deployment turns *every* failure to read it (its
    Kubernetes client timing out, the API server busy) into ``404 Deployment not found``
    (KUBEFOUNDRY.md): after the create, the next ``misses`` GETs answer so, while the
    workload is in the cluster all along; ``connected`` is what its cluster status says."""

    def __init__(self, *args: Any, misses: int, connected: bool = True) -> None:
        super().__init__(*args)
        self.misses = misses
        self.connected = connected
        self.created = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/cluster/status":
            self.requests.append((request.method, path))
            body: dict[str, Any] = {"connected": self.connected}
            if not self.connected:
                body["error"] = "connect ECONNREFUSED 127.0.0.1:6443"
            return httpx.Response(200, json=body)
        getting = request.method == "GET" and path.count("/") == 3
        if getting and path.startswith("/api/deployments/") and self.created and self.misses:
            self.misses -= 1
            self.requests.append(("GET", path))
            return httpx.Response(
                404, json={"error": {"message": "Deployment not found", "statusCode": 404}}
            )
        response = super().handle(request)
        self.created = self.created or response.status_code == 201
        return response


async def test_a_404_while_the_workload_is_there_is_a_finding_and_the_wait_goes_on(
    tmp_path: Path,
) -> None:
    backend = NotFoundWhileDeployed(FakeCluster(), kaito_workload(), misses=2)
    _, record = await run(KaitoProfile(), backend, tmp_path)
    wait_ready = next(p for p in record.phases if p.name == "wait_ready")
    assert wait_ready.status == "passed", wait_ready.reason
    assert [f.name for f in wait_ready.findings] == ["backend-404-while-deployed"]
    message = wait_ready.findings[0].message
    assert "Deployment not found" in message and "Workspace kaito-workspace/" in message
    assert backend.misses == 0  # both 404s were met, and the wait asked again after them
    assert record.exit_code == 0 and set(statuses(record).values()) == {"passed"}
    assert backend.cluster.objects == {}


async def test_a_404_from_a_backend_without_its_cluster_fails_wait_ready_saying_so(
    tmp_path: Path,
) -> None:
    backend = NotFoundWhileDeployed(FakeCluster(), kaito_workload(), misses=1, connected=False)
    _, record = await run(KaitoProfile(), backend, tmp_path)
    wait_ready = next(p for p in record.phases if p.name == "wait_ready")
    assert wait_ready.status == "failed"
    reason = wait_ready.reason or ""
    assert "not connected to the cluster (connect ECONNREFUSED 127.0.0.1:6443)" in reason, reason
    assert "Deployment not found" in reason
    assert record.cleanup.status == "passed", record.cleanup.reason


async def test_a_404_once_the_workload_is_gone_fails_wait_ready_as_vanished(
    tmp_path: Path,
) -> None:
    cluster = FakeCluster()
    backend = NotFoundWhileDeployed(cluster, kaito_workload(), misses=1)
    original = backend._make

    def made_then_lost(name: str, ns: str) -> None:
        original(name, ns)
        del cluster.objects[(WORKSPACES.plural, ns, name)]  # deleted behind the run's back

    backend._make = made_then_lost  # type: ignore[method-assign]
    _, record = await run(KaitoProfile(), backend, tmp_path)
    wait_ready = next(p for p in record.phases if p.name == "wait_ready")
    assert wait_ready.status == "failed" and wait_ready.findings == []
    reason = wait_ready.reason or ""
    assert "Workspace kaito-workspace/integration-test-llama is not in the cluster" in reason


async def test_install_is_not_tried_by_a_backend_that_cannot_reach_its_cluster(
    tmp_path: Path,
) -> None:
    """A backend that cannot reach its cluster still answers 200 everywhere: its provider
    status then reads ``installed: false`` (KUBEFOUNDRY.md), which is no reason to run helm.
    The cluster status says why, and Install fails with it instead of installing."""
    backend = NotFoundWhileDeployed(
        FakeCluster(), kaito_workload(), False, misses=0, connected=False
    )
    _, record = await run(KaitoProfile(), backend, tmp_path)
    install = next(p for p in record.phases if p.name == "install")
    assert install.status == "failed"
    reason = install.reason or ""
    assert "not connected to the cluster (connect ECONNREFUSED 127.0.0.1:6443)" in reason, reason
    assert not any(path.endswith("/install") for _, path in backend.requests), backend.requests
    assert record.cleanup.status == "passed", record.cleanup.reason


class VersionLookupHangs(FakeBackend):
    """KubeFoundry's KubeRay and Dynamo status and install routes ask GitHub's
    releases/latest for the version with no timeout (PROVIDERS.md): on a cluster without
    internet whose firewall drops the packets, the status route never answers."""

    def handle(self, request: httpx.Request) -> Any:
        if request.url.path.startswith("/api/installation/providers/"):

            async def never() -> httpx.Response:
                await anyio.sleep(3600)
                raise AssertionError("unreachable")

            return never()
        return super().handle(request)


async def test_a_provider_status_that_hangs_on_its_version_lookup_is_named(
    tmp_path: Path,
) -> None:
    from orchestrator.flows.kuberay import KubeRayProfile

    backend = VersionLookupHangs(FakeCluster(), raylike_workload())
    _, record = await run(KubeRayProfile(), backend, tmp_path, install_timeout=1.0)
    install = next(p for p in record.phases if p.name == "install")
    assert install.status in ("failed", "timeout"), install.status
    reason = install.reason or ""
    assert "GET /api/installation/providers/kuberay/status" in reason, reason
    assert "releases/latest" in reason and "KUBERAY_VERSION" in reason, reason
    assert record.cleanup.status == "passed", record.cleanup.reason


class StaysPending(FakeBackend):
    """A Workspace that fails stays Pending in the backend (KUBEFOUNDRY.md): only its
    conditions say why (their reason and message)."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        response = super().handle(request)
        if request.method == "GET" and response.status_code == 200 and "phase" in response.text:
            body = json.loads(response.content)
            body["phase"] = "Pending"
            body["replicas"]["ready"] = 0
            body["conditions"] = [
                {
                    "type": "ResourceReady",
                    "status": "False",
                    "reason": "workspaceResourceStatusFailed",
                    "message": "no ready nodes match the label selector kubernetes.io/os=linux",
                },
                {"type": "InferenceReady", "status": "Unknown"},
            ]
            return httpx.Response(200, json=body)
        return response


async def test_a_workspace_that_stays_pending_is_timed_out_quoting_its_conditions(
    tmp_path: Path,
) -> None:
    backend = StaysPending(FakeCluster(), kaito_workload())
    _, record = await run(KaitoProfile(), backend, tmp_path, ready_timeout=0.5)
    wait_ready = next(p for p in record.phases if p.name == "wait_ready")
    assert wait_ready.status != "passed"
    reason = wait_ready.reason or ""
    assert (
        "ResourceReady=False (workspaceResourceStatusFailed: no ready nodes match the label "
        "selector kubernetes.io/os=linux), InferenceReady=Unknown" in reason
    ), reason
    assert record.cleanup.status == "passed", record.cleanup.reason


async def test_a_kaito_service_left_behind_is_found_by_its_name(tmp_path: Path) -> None:
    """KAITO's Services carry no label (its GenerateServiceManifest sets none, only an
    owner reference): a leak check by label never sees them, so they are looked for by
    the names KAITO gives them, NAME and NAME-headless."""
    cluster = FakeCluster()
    backend = FakeBackend(cluster, kaito_workload())
    original = backend._remove

    def remove_but_forget_the_headless_service(name: str, ns: str) -> None:
        original(name, ns)
        cluster.put(SERVICES, {"metadata": {"name": f"{name}-headless", "namespace": ns}})

    backend._remove = remove_but_forget_the_headless_service  # type: ignore[method-assign]
    budget = Budget(30, 0.5, cleanup_cap=0.5, cleanup_floor=0.5)
    _, record = await run(KaitoProfile(), backend, tmp_path, budget=budget, delete_timeout=0.5)
    assert record.exit_code == 1
    delete = next(p for p in record.phases if p.name == "delete")
    assert "Service kaito-workspace/integration-test-llama-headless" in (delete.reason or "")
    assert record.cleanup.status == "passed", record.cleanup.reason
    assert cluster.of(SERVICES) == []


@pytest.mark.parametrize(
    "profile, names",
    [
        ("kaito", ["d", "d-headless"]),
        ("dynamo", ["d-frontend"]),
        ("kuberay", ["d-head-svc", "d-serve-svc"]),
    ],
)
def test_each_providers_documented_services_are_tracked_by_name(
    profile: str, names: list[str]
) -> None:
    """The Services each provider makes, by the names KUBEFOUNDRY.md and PROVIDERS.md give:
    the Delete wait and the leak check look for them by name, whatever labels the operator
    puts on them (KAITO's carry none; the operators' labels are not documented)."""
    from orchestrator.flows.dynamo import DynamoProfile
    from orchestrator.flows.kuberay import KubeRayProfile

    chosen = {"kaito": KaitoProfile, "dynamo": DynamoProfile, "kuberay": KubeRayProfile}[profile]()
    tracked = chosen.tracked(Deployment("d", "ns", "m"))
    by_name = [
        t.field_selector.removeprefix("metadata.name=")
        for t in tracked
        if t.resource == SERVICES and t.field_selector
    ]
    assert by_name == names


class EventsOnCue:
    """A watch hub that sends nothing until told: ``send`` hands an event to every wait
    listening on its resource now, as the hub's stream task would."""

    def __init__(self) -> None:
        self.listening: list[tuple[Resource, Any]] = []

    def listen(self, resource: Resource, namespace: str | None = None, **kw: Any) -> Any:
        import contextlib

        entry = (resource, kw["on_event"])

        @contextlib.contextmanager
        def subscribed() -> Any:
            self.listening.append(entry)
            try:
                yield
            finally:
                self.listening.remove(entry)

        return subscribed()

    def known(self, *args: Any, **kw: Any) -> None:
        return None  # no whole view: every read goes to the cluster

    def resync(self, *args: Any, **kw: Any) -> None:
        pass

    def send(self, resource: Resource, obj: dict[str, Any]) -> None:
        from orchestrator.clients import WatchEvent

        for listened, on_event in list(self.listening):
            if listened == resource:
                on_event(WatchEvent("MODIFIED", obj))


async def test_a_pod_that_cannot_start_ends_wait_ready_while_the_backend_answers_404(
    tmp_path: Path,
) -> None:
    """A pod event that says the model can never start ends Wait Ready at once (the
    pod's reason, not a timeout), even while the backend's GET keeps answering 404 for
    a workload the cluster has: the 404 is weighed and asked again, but it must not hold
    the wait past what the watches already know."""
    hub = EventsOnCue()
    backend = NotFoundWhileDeployed(FakeCluster(), kaito_workload(), misses=10**6)
    handle = backend.handle

    def answering(request: httpx.Request) -> httpx.Response:
        response = handle(request)
        if response.status_code == 404 and backend.created:
            # While the wait weighs this 404, the pod's watch says it cannot pull its image.
            pod = dict(backend.cluster.of(PODS)[0])
            pod["status"] = {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "model",
                        "image": "model:1",
                        "state": {
                            "waiting": {"reason": "ErrImagePull", "message": "model:1: not found"}
                        },
                    }
                ],
            }
            hub.send(PODS, pod)
        return response

    backend.handle = answering  # type: ignore[method-assign]
    api, inference = backend.client(), FakeModel().client()
    flow = KubeFoundryFlow(
        KaitoProfile(),
        FlowSettings(api_url="http://backend.test", ready_timeout=5.0),
        api=api,
        kube=backend.cluster,  # type: ignore[arg-type]
        inference=inference,
        hub=hub,  # type: ignore[arg-type]
    )
    runner = Runner(
        flow, budget=Budget(30, 10), reporters=[], artifacts_dir=tmp_path, cleanup_policy="always"
    )
    try:
        record = await runner.run()
    finally:
        await api.aclose()
        await inference.aclose()
    wait_ready = next(p for p in record.phases if p.name == "wait_ready")
    assert wait_ready.status == "failed" and not wait_ready.timed_out, [
        (p.name, p.reason) for p in record.phases
    ]
    assert "ErrImagePull (image model:1): model:1: not found" in (wait_ready.reason or "")
    assert [f.name for f in wait_ready.findings] == ["backend-404-while-deployed"]
    assert record.cleanup.status == "passed", record.cleanup.reason
