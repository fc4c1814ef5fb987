"""The KubeRay and Dynamo stand-ins: operators, KubeFoundry routes, and the backend's defects.

Each test runs on the in-process Kubernetes API and, when TESTCLUSTER_HOME is set, on a
fresh test cluster too (with the real CRDs when KUBERAY_CRDS_DIR / DYNAMO_CRDS_DIR name
them, so that every object the stand-ins write is validated by the real schemas). Each
defect of the real backend is shown on, and its absence when the stand-in behaves.
Models are stubs: what is tested here is the path to them, not their words.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _bounded import running_sandbox
from _fixtures import (  # noqa: F401 - fixtures are used by name
    DEADLINE,
    PodHistory,
    call,
    crash_loop_shape_problems,
    gone,
    kube_backend,
    wait_for,
)
from _testcluster import provider_crds

from orchestrator.sandbox import Faults, Sandbox, SandboxOptions
from orchestrator.sandbox._kube import Kube

pytestmark = pytest.mark.anyio

NS = "llm"
SECRET = "hf-token-secret"
RAY_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
RAYSERVICES = f"/apis/ray.io/v1/namespaces/{NS}/rayservices"
RAYCLUSTERS = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters"
DGDS = f"/apis/nvidia.com/v1alpha1/namespaces/{NS}/dynamographdeployments"
PODS = f"/api/v1/namespaces/{NS}/pods"


Env = tuple[Sandbox, aiohttp.ClientSession, Kube]


@pytest.fixture
def make_env(kube_backend: Path | None, tmp_path: Path) -> Any:
    @asynccontextmanager
    async def factory(**faults: Any) -> AsyncIterator[Env]:
        options = SandboxOptions(
            workdir=tmp_path / "sandbox",
            kubeconfig=kube_backend,
            faults=Faults.model_validate({"stub_models": True, **faults}),
            provider_crds=provider_crds() if kube_backend is not None else {},
        )
        async with running_sandbox(options) as sandbox:
            kube = await Kube.from_kubeconfig(sandbox.kubeconfig)
            try:
                async with aiohttp.ClientSession(sandbox.api_url) as api:
                    yield sandbox, api, kube
            finally:
                await kube.close()

    return factory


async def install(api: aiohttp.ClientSession, kube: Kube, provider: str) -> None:
    """Install through the API, then wait (on watches) until KubeFoundry says installed."""
    status, body = await call(api, "POST", f"/api/installation/providers/{provider}/install")
    assert status == 200, body
    assert body["success"] is True and "results" in body, body
    namespace = "kuberay-system" if provider == "kuberay" else "dynamo-system"
    pods = await kube.get(
        f"/api/v1/namespaces/{namespace}/pods",
        {"labelSelector": f"app.kubernetes.io/name={provider}-operator"},
    )
    operator = pods["items"][0]["metadata"]["name"]
    await wait_for(
        kube,
        f"/api/v1/namespaces/{namespace}/pods",
        operator,
        lambda p: p is not None and p.get("status", {}).get("phase") == "Running",
    )
    crd = "rayservices.ray.io" if provider == "kuberay" else "dynamographdeployments.nvidia.com"
    await wait_for(
        kube,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        crd,
        lambda obj: any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (obj or {}).get("status", {}).get("conditions") or []
        ),
    )
    served = RAYSERVICES if provider == "kuberay" else DGDS
    await wait_for(kube, served, "no-such-object", lambda _: True)  # the CRD is served
    status, body = await call(api, "GET", f"/api/installation/providers/{provider}/status")
    assert status == 200
    assert body["installed"] is True and body["crdFound"] and body["operatorRunning"], body


async def namespace_with_secret(kube: Kube, secret: bool = True) -> None:
    """The deployment namespace and, as the facts say to do offline, the token Secret."""
    await kube.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    )
    if secret:
        await kube.create(
            f"/api/v1/namespaces/{NS}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET, "namespace": NS},
                "stringData": {"HF_TOKEN": "hf_not_a_real_token"},
            },
        )


def ray_body(name: str = "ray-llm", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": NS,
        "provider": "kuberay",
        "modelId": RAY_MODEL,
        "hfTokenSecret": SECRET,
        "contextLength": 2048,
        "resources": {"gpu": 1},
        **extra,
    }


def dynamo_body(name: str = "dyn-llm", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": NS,
        "provider": "dynamo",
        "modelId": RAY_MODEL,
        "engine": "vllm",
        "hfTokenSecret": SECRET,
        "resources": {"gpu": 1},
        **extra,
    }


async def create(api: aiohttp.ClientSession, body: dict[str, Any]) -> None:
    status, answer = await call(api, "POST", "/api/deployments", json=body)
    assert status == 201, answer
    assert answer["provider"] == body["provider"]


def ray_running(obj: dict | None) -> bool:
    return obj is not None and obj.get("status", {}).get("serviceStatus") == "Running"


def dgd_state(state: str) -> Any:
    return lambda obj: obj is not None and obj.get("status", {}).get("state") == state


async def chat(kube: Kube, service: str, model: str) -> dict:
    path = f"/api/v1/namespaces/{NS}/services/{service}:8000/proxy/v1/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return await kube.request("POST", path, body=body)


async def pods_of(kube: Kube, selector: str) -> list[dict]:
    return list((await kube.get(PODS, {"labelSelector": selector})).get("items", []))


async def wait_no_pods(kube: Kube, selector: str) -> None:
    """Watch until no pod matches ``selector`` (a label watch: DELETED events end it)."""
    import asyncio

    async def _wait() -> None:
        while True:
            listing = await kube.get(PODS, {"labelSelector": selector})
            names = {p["metadata"]["name"] for p in listing.get("items", [])}
            if not names:
                return
            rv = listing["metadata"]["resourceVersion"]
            async for event in kube.watch(PODS, {"labelSelector": selector}, rv, 10):
                if event["type"] == "DELETED":
                    names.discard(event["object"]["metadata"]["name"])
                    if not names:
                        return

    await asyncio.wait_for(_wait(), 60)


# ---------------------------------------------------------------------------- KubeRay


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_kuberay_serves_then_deletes(make_env: Any, defect: bool) -> None:
    """RayService -> RayCluster -> head and worker pods -> NAME-serve-svc:8000 answers; on
    delete the real backend's GET is 404 while the RayCluster and pods are still there."""
    defects = {"kuberay_get_404_while_pods_go": defect}
    async with make_env(defects=defects) as (sandbox, api, kube):
        await install(api, kube, "kuberay")
        await namespace_with_secret(kube)
        await create(api, ray_body())
        service = await wait_for(kube, RAYSERVICES, "ray-llm", ray_running)
        assert service is not None
        cluster = service["status"]["activeServiceStatus"]["rayClusterName"]
        assert cluster.startswith("ray-llm-") and len(cluster) == len("ray-llm-") + 5

        status, body = await call(api, "GET", f"/api/deployments/ray-llm?namespace={NS}")
        assert status == 200, body
        assert body["provider"] == "kuberay" and body["phase"] == "Running"
        assert body["replicas"] == {"desired": 1, "ready": 1, "available": 1}
        assert body["frontendService"] == "ray-llm-serve-svc"
        assert body["modelId"] == RAY_MODEL and body["pods"] == []

        pods = await pods_of(kube, f"ray.io/cluster={cluster}")
        types = sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in pods)
        assert types == ["head", "worker"]
        assert all(p["metadata"]["labels"].get("ray.io/serve") == "true" for p in pods)
        services = {
            s["metadata"]["name"]
            for s in (await kube.get(f"/api/v1/namespaces/{NS}/services"))["items"]
        }
        assert {"ray-llm-head-svc", "ray-llm-serve-svc"} <= services
        answer = await chat(kube, "ray-llm-serve-svc", RAY_MODEL)
        assert answer["object"] == "chat.completion" and answer["model"] == RAY_MODEL

        status, listed = await call(api, "GET", f"/api/deployments/ray-llm/pods?namespace={NS}")
        assert status == 200 and len(listed["pods"]) == 2

        # Hold the collection of the workload, so "while pods still go" is a state, not a race.
        sandbox.update_faults({"stuck_delete": True})
        status, body = await call(api, "DELETE", f"/api/deployments/ray-llm?namespace={NS}")
        assert status == 200, body
        status, body = await call(api, "GET", f"/api/deployments/ray-llm?namespace={NS}")
        remaining = await pods_of(kube, f"ray.io/cluster={cluster}")
        if defect:
            assert status == 404, body
            assert remaining, "the stand-in should still hold the pods"
        else:
            assert status == 200 and body["phase"] == "Running", body
        sandbox.update_faults({"stuck_delete": False})
        await wait_for(kube, RAYSERVICES, "ray-llm", gone)
        await wait_no_pods(kube, f"ray.io/cluster={cluster}")
        assert await kube.get_or_none(f"{RAYCLUSTERS}/{cluster}") is None
        status, _ = await call(api, "GET", f"/api/deployments/ray-llm?namespace={NS}")
        assert status == 404


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_kuberay_replicas_above_max(make_env: Any, defect: bool) -> None:
    """replicas 3 with the default maxReplicas 2: the real backend sends it as is and KubeRay
    runs 2 workers; a behaving backend raises maxReplicas and 3 run."""
    async with make_env(defects={"kuberay_clamps_replicas": defect}) as (_, api, kube):
        await install(api, kube, "kuberay")
        await namespace_with_secret(kube)
        await create(api, ray_body(replicas=3))
        service = await wait_for(kube, RAYSERVICES, "ray-llm", ray_running)
        assert service is not None
        cluster = service["status"]["activeServiceStatus"]["rayClusterName"]
        workers = await pods_of(kube, f"ray.io/cluster={cluster},ray.io/node-type=worker")
        expected = 2 if defect else 3
        assert len(workers) == expected
        status, body = await call(api, "GET", f"/api/deployments/ray-llm?namespace={NS}")
        assert body["replicas"]["desired"] == expected


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_kuberay_pods_matched_by_prefix(make_env: Any, defect: bool) -> None:
    """Two deployments, one name a prefix of the other: the real /pods lists both's pods."""
    async with make_env(defects={"kuberay_pods_by_prefix": defect}) as (_, api, kube):
        await install(api, kube, "kuberay")
        await namespace_with_secret(kube)
        await create(api, ray_body("llm"))
        await create(api, ray_body("llm-b"))
        for name in ("llm", "llm-b"):
            await wait_for(kube, RAYSERVICES, name, ray_running)
        status, listed = await call(api, "GET", f"/api/deployments/llm/pods?namespace={NS}")
        assert status == 200
        clusters = {p["name"].rsplit("-", 1)[0] for p in listed["pods"]}
        own = [p for p in listed["pods"] if not p["name"].startswith("llm-b-")]
        assert len(own) == 2
        assert len(listed["pods"]) == (4 if defect else 2), clusters


async def test_missing_token_secret_stops_the_pods(make_env: Any) -> None:
    """The backend never checks hfTokenSecret; without the Secret the pods cannot start."""
    async with make_env() as (sandbox, api, kube):
        await install(api, kube, "kuberay")
        await namespace_with_secret(kube, secret=False)
        await create(api, ray_body())
        await wait_for(kube, RAYSERVICES, "ray-llm", lambda o: o is not None and "status" in o)

        def config_error(pod: dict | None) -> bool:
            for status in (pod or {}).get("status", {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") == "CreateContainerConfigError":
                    return True
            return False

        service = await kube.get(f"{RAYSERVICES}/ray-llm")
        cluster = service["status"]["pendingServiceStatus"]["rayClusterName"]
        pod = await wait_for(kube, PODS, f"{cluster}-head", config_error)
        status, body = await call(api, "GET", f"/api/deployments/ray-llm?namespace={NS}")
        assert body["phase"] == "Pending"
        # As a kubelet shows it, on both backends: the API's error as the waiting message,
        # in the write that brings the reason, and the container start's event in the
        # same words; no event names the reason alone.
        assert pod is not None and pod["status"]["phase"] == "Pending"
        [cs] = pod["status"]["containerStatuses"]
        assert cs["state"]["waiting"]["message"] == f'secret "{SECRET}" not found', cs
        assert (cs["ready"], cs["started"], cs["restartCount"]) == (False, False, 0), cs
        ready = {c["type"]: c for c in pod["status"]["conditions"]}["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "ContainersNotReady"), ready
        async with asyncio.timeout(DEADLINE):  # recorded once every pod's event is written
            await sandbox.state.wait_recorded("ray-llm", "pods cannot start: secret missing")
        events = await kube.get(
            f"/api/v1/namespaces/{NS}/events",
            {"fieldSelector": f"involvedObject.name={cluster}-head"},
        )
        failed = [
            (e["type"], e["message"], e["source"]["component"])
            for e in events["items"]
            if e["reason"] == "Failed"
        ]
        assert failed == [("Warning", f'Error: secret "{SECRET}" not found', "kubelet")]


# ---------------------------------------------------------------------------- Dynamo


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_dynamo_serves_then_deletes(make_env: Any, defect: bool) -> None:
    """DGD -> frontend and worker pods -> NAME-frontend:8000 answers; the real backend says
    ready 0 and finds no pods; the DGD stays until the operator has let its finalizer go."""
    defects = {"dynamo_ready_always_zero": defect, "dynamo_pods_not_found": defect}
    async with make_env(defects=defects) as (sandbox, api, kube):
        await install(api, kube, "dynamo")
        await namespace_with_secret(kube)
        await create(api, dynamo_body(replicas=2, servedModelName="tiny"))
        dgd = await wait_for(kube, DGDS, "dyn-llm", dgd_state("successful"))
        assert dgd is not None and "nvidia.com/finalizer" in dgd["metadata"]["finalizers"]
        status, body = await call(api, "GET", f"/api/deployments/dyn-llm?namespace={NS}")
        assert status == 200 and body["phase"] == "Running", body
        assert body["provider"] == "dynamo" and body["frontendService"] == "dyn-llm-frontend"
        assert body["servedModelName"] == "tiny" and body["modelId"] == RAY_MODEL
        ready = 0 if defect else 2
        assert body["replicas"] == {"desired": 2, "ready": ready, "available": ready}

        pods = await pods_of(kube, "nvidia.com/dynamo-graph-deployment-name=dyn-llm")
        kinds = sorted(p["metadata"]["labels"]["nvidia.com/dynamo-component-type"] for p in pods)
        assert kinds == ["frontend", "worker", "worker"]
        assert all("app.kubernetes.io/instance" not in p["metadata"]["labels"] for p in pods)
        answer = await chat(kube, "dyn-llm-frontend", "tiny")
        assert answer["model"] == "tiny"

        status, listed = await call(api, "GET", f"/api/deployments/dyn-llm/pods?namespace={NS}")
        assert len(listed["pods"]) == (0 if defect else 3)
        status, logs = await call(api, "GET", f"/api/deployments/dyn-llm/logs?namespace={NS}")
        assert status == 200
        assert (logs["podName"] == "") == defect

        sandbox.update_faults({"stuck_delete": True})
        status, body = await call(api, "DELETE", f"/api/deployments/dyn-llm?namespace={NS}")
        assert status == 200, body
        await sandbox.state.wait_recorded("dyn-llm", "finalizer kept (stuck_delete)")
        status, body = await call(api, "GET", f"/api/deployments/dyn-llm?namespace={NS}")
        assert status == 200 and body["phase"] == "Running", body
        sandbox.update_faults({"stuck_delete": False})
        await wait_for(kube, DGDS, "dyn-llm", gone)
        assert not await pods_of(kube, "nvidia.com/dynamo-graph-deployment-name=dyn-llm")


@pytest.mark.parametrize("defect", [True, False], ids=["real-backend", "behaving"])
async def test_dynamo_failed_state(make_env: Any, defect: bool) -> None:
    """The operator marks the DGD failed; the real backend still shows Pending."""
    faults = {"operator_fails": True, "defects": {"dynamo_failed_shows_pending": defect}}
    async with make_env(**faults) as (_, api, kube):
        await install(api, kube, "dynamo")
        await namespace_with_secret(kube)
        await create(api, dynamo_body())
        await wait_for(kube, DGDS, "dyn-llm", dgd_state("failed"))
        status, body = await call(api, "GET", f"/api/deployments/dyn-llm?namespace={NS}")
        assert body["phase"] == ("Pending" if defect else "Failed")


async def test_dynamo_worker_without_gpu_crashes(make_env: Any) -> None:
    """Sent without ``resources``, the worker requests no GPU and its CUDA engine fails: it
    crash-loops, and every version of its pod that shows the back-off shows it as a
    kubelet does: Running, with its restarts and last termination in the same write."""
    async with make_env() as (sandbox, api, kube):
        await install(api, kube, "dynamo")
        await namespace_with_secret(kube)
        body = dynamo_body()
        del body["resources"]
        selector = "nvidia.com/dynamo-graph-deployment-name=dyn-llm"
        workers = {"labelSelector": selector + ",nvidia.com/dynamo-component-type=worker"}
        async with PodHistory(kube, PODS, workers) as history:
            await create(api, body)
            crashed = await history.until(
                lambda p: "No CUDA GPUs" in str(p.get("status", {}).get("containerStatuses"))
            )
        await sandbox.state.wait_recorded("dyn-llm", "2 pods created")
        dgd = await wait_for(kube, DGDS, "dyn-llm", dgd_state("pending"))
        worker = dgd["spec"]["services"]["VllmWorker"]  # type: ignore[index]
        assert "resources" not in worker
        [status] = crashed["status"]["containerStatuses"]
        assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert status["restartCount"] > 0
        shown = [
            (v["metadata"]["resourceVersion"], s.get("restartCount", 0))
            for v in history.versions
            for s in v.get("status", {}).get("containerStatuses") or []
            if (s.get("state") or {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"
        ]
        assert all(restarts > 0 for _, restarts in shown), shown
        wrong = {
            v["metadata"]["resourceVersion"]: problems
            for v in history.versions
            if any(
                (s.get("state") or {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"
                for s in v.get("status", {}).get("containerStatuses") or []
            )
            and (problems := crash_loop_shape_problems(v))
        }
        assert not wrong, wrong


# ---------------------------------------------------------------------------- the routes


async def test_create_validation(make_env: Any) -> None:
    """The provider schemas' answers: engine required for Dynamo, the token Secret required,
    unknown keys dropped, and a namespace that does not exist is 404."""
    async with make_env() as (_, api, kube):
        await install(api, kube, "dynamo")
        body = dynamo_body()
        del body["engine"], body["hfTokenSecret"]
        status, answer = await call(api, "POST", "/api/deployments", json=body)
        assert status == 400
        assert "engine: Required" in answer["error"]["message"]
        assert "hfTokenSecret: Required" in answer["error"]["message"]
        status, answer = await call(api, "POST", "/api/deployments", json=ray_body(engine="sglang"))
        assert status == 400 and "engine" in answer["error"]["message"]
        status, answer = await call(
            api, "POST", "/api/deployments", json=dynamo_body(namespace="nowhere")
        )
        assert status == 404, answer
        await namespace_with_secret(kube)
        status, answer = await call(
            api, "POST", "/api/deployments/preview", json=dynamo_body(premadeModel="x")
        )
        assert status == 200
        manifest = answer["resources"][0]["manifest"]
        assert manifest["kind"] == "DynamoGraphDeployment" and "premadeModel" not in str(manifest)
        assert answer["primaryResource"]["apiVersion"] == "nvidia.com/v1alpha1"


#: A test-cluster row only: the sandbox's own API enforces no CRD schema to check against.
@pytest.mark.parametrize("kube_backend", ["testcluster"], indirect=True)
async def test_real_crds_accept_what_the_stand_ins_write(
    make_env: Any, kube_backend: Path | None
) -> None:
    """On the test cluster with the real CRDs, the statuses the stand-ins write survive the
    schema (nothing pruned), and what the real schema drops is dropped."""
    crds = provider_crds()
    if set(crds) != {"kuberay", "dynamo"}:
        pytest.skip("needs KUBERAY_CRDS_DIR and DYNAMO_CRDS_DIR (the real CRDs)")
    async with make_env() as (_, api, kube):
        await install(api, kube, "kuberay")
        await install(api, kube, "dynamo")
        await namespace_with_secret(kube)
        await create(api, ray_body())
        await create(api, dynamo_body(routerMode="kv"))
        service = await wait_for(kube, RAYSERVICES, "ray-llm", ray_running)
        dgd = await wait_for(kube, DGDS, "dyn-llm", dgd_state("successful"))
        assert service is not None and dgd is not None
        active = service["status"]["activeServiceStatus"]
        assert active["rayClusterStatus"]["availableWorkerReplicas"] == 1
        assert active["applicationStatuses"]["llm_app"]["status"] == "RUNNING"
        assert {c["type"] for c in service["status"]["conditions"]} == {
            "Ready",
            "UpgradeInProgress",
        }
        cluster = await kube.get(f"{RAYCLUSTERS}/{active['rayClusterName']}")
        assert cluster["status"]["state"] == "ready"
        assert cluster["status"]["head"]["podName"].endswith("-head")
        assert cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 2
        assert dgd["status"]["conditions"][0]["reason"] == "all_resources_are_ready"
        assert dgd["spec"]["services"]["VllmWorker"]["resources"]["limits"]["gpu"] == "1"
        assert "router-mode" not in dgd["spec"]["services"]["Frontend"]  # not in the schema


@pytest.mark.parametrize(
    "service_status, phase",
    [
        ("Running", "Running"),
        # KubeFoundry compares with "Running" exactly: anything else, in any case, is Pending
        # (docs: PROVIDERS.md, status table), so a stand-in that read more as Running would
        # pass a wait the real backend never ends.
        ("running", "Pending"),
        ("Ready", "Pending"),
        ("ready", "Pending"),
        ("", "Pending"),
        (None, "Pending"),
    ],
)
def test_kuberay_phase_is_running_only_for_service_status_running(
    service_status: str | None, phase: str
) -> None:
    from orchestrator.sandbox._kubefoundry import providers

    status = {} if service_status is None else {"serviceStatus": service_status}
    service = {"metadata": {"name": "ray-llm", "namespace": NS}, "spec": {}, "status": status}
    answer = providers.deployment_status(service, providers.KUBERAY, Faults().defects)
    assert answer["phase"] == phase
