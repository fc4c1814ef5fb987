"""Fixtures and helpers for the sandbox stand-in tests (KubeFoundry, KAITO, models, faults).

Every test gets a fresh Kubernetes backend: the in-process KubeAPIServer, and, when
TESTCLUSTER_HOME is set, a fresh real test cluster too (tests/_testcluster.py).
Waiting is always on a watch with a deadline, never on a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _bounded import running_sandbox
from _testcluster import fresh_cluster

from orchestrator.sandbox import Faults, Sandbox, SandboxOptions
from orchestrator.sandbox._kube import Gone, Kube

NS = "kaito-workspace"
NAME = "integration-test-llama"
MODEL = "llama-3.2-1b-instruct"
CREATE_BODY = {
    "name": NAME,
    "namespace": NS,
    "provider": "kaito",
    "modelSource": "premade",
    "premadeModel": "llama3.2:1b",
    "ggufRunMode": "direct",
    "computeType": "cpu",
    "replicas": 1,
}
WS_COLLECTION = f"/apis/kaito.sh/v1beta1/namespaces/{NS}/workspaces"
#: How long a wait on a watch may take: only a hang reaches it. A loaded machine took
#: close to a minute to bring a KubeRay stand-in or a real model to ready. It stays under
#: pytest-timeout's 300 s, with room for the test's own setup and teardown.
DEADLINE = 150.0


def _kubeapi_available() -> bool:
    try:
        import orchestrator.sandbox.kubeapi  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=["kubeapi", "testcluster"])
def kube_backend(request: pytest.FixtureRequest) -> Any:
    """None for the in-process API (the Sandbox starts it), else a fresh test cluster's kubeconfig."""
    if request.param == "kubeapi":
        if not _kubeapi_available():
            pytest.skip("orchestrator.sandbox.kubeapi is not available")
        yield None
        return
    with fresh_cluster() as cluster:
        yield cluster.kubeconfig


def crd_dir() -> Path | None:
    value = os.environ.get("KAITO_CRDS_DIR")
    return Path(value) if value else None


SandboxFactory = Callable[..., Any]


@pytest.fixture
def make_sandbox(kube_backend: Path | None, stub_models: bool, tmp_path: Path) -> SandboxFactory:
    """``async with make_sandbox(faults=..., auth_token=...) as (sandbox, api, kube):``

    Stub models unless the test is marked ``model`` (see tests/README.md).
    """

    @asynccontextmanager
    async def factory(
        faults: Faults | None = None,
        auth_token: str | None = None,
    ) -> AsyncIterator[tuple[Sandbox, aiohttp.ClientSession, Kube]]:
        options = SandboxOptions(
            workdir=tmp_path / "sandbox",
            kubeconfig=kube_backend,
            faults=(faults or Faults()).model_copy(update={"stub_models": stub_models}),
            auth_token=auth_token,
            crd_dir=crd_dir(),
        )
        async with running_sandbox(options) as sandbox:
            kube = await Kube.from_kubeconfig(sandbox.kubeconfig)
            try:
                async with aiohttp.ClientSession(sandbox.api_url) as api:
                    yield sandbox, api, kube
            finally:
                await kube.close()

    return factory


# ---------------------------------------------------------------------------- waiting on watches


async def wait_for(
    kube: Kube,
    collection: str,
    name: str,
    predicate: Callable[[dict | None], bool],
    timeout: float = DEADLINE,
) -> dict | None:
    """Watch ``collection`` until the named object (None once it is gone) satisfies ``predicate``."""
    query = {"fieldSelector": f"metadata.name={name}"}

    async def _wait() -> dict | None:
        while True:
            try:
                listing = await kube.get(collection, query)
            except Exception:
                await asyncio.sleep(0.1)
                continue
            items = listing.get("items", [])
            current = items[0] if items else None
            if predicate(current):
                return current
            try:
                async for event in kube.watch(
                    collection, query, listing["metadata"].get("resourceVersion"), 10
                ):
                    obj = None if event["type"] == "DELETED" else event["object"]
                    if event["type"] == "BOOKMARK":
                        continue
                    if predicate(obj):
                        return obj
            except Gone:
                continue

    return await asyncio.wait_for(_wait(), timeout)


def condition(obj: dict | None, ctype: str) -> str | None:
    for cond in (obj or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond.get("status")
    return None


def running_workspace(obj: dict | None) -> bool:
    return (
        condition(obj, "InferenceReady") == "True"
        and condition(obj, "WorkspaceSucceeded") == "True"
    )


def pod_phase(phase: str) -> Callable[[dict | None], bool]:
    return lambda pod: pod is not None and pod.get("status", {}).get("phase") == phase


def waiting_reason(reason: str) -> Callable[[dict | None], bool]:
    def check(pod: dict | None) -> bool:
        for status in (pod or {}).get("status", {}).get("containerStatuses") or []:
            if (status.get("state") or {}).get("waiting", {}).get("reason") == reason:
                return True
        return False

    return check


def gone(obj: dict | None) -> bool:
    return obj is None


def not_ready_problems(pod: dict, phase: str) -> list[str]:
    """What in ``pod`` differs from a kubelet's pod in ``phase`` whose container is not
    ready: bound to a node, Ready and ContainersReady False for ContainersNotReady."""
    problems: list[str] = []
    status = pod.get("status") or {}
    if status.get("phase") != phase:
        problems.append(f"phase {status.get('phase')!r}, a kubelet shows {phase}")
    if not (pod.get("spec") or {}).get("nodeName"):
        problems.append("not bound to a node")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("Ready", "ContainersReady"):
        cond = conditions.get(kind) or {}
        if (cond.get("status"), cond.get("reason")) != ("False", "ContainersNotReady"):
            problems.append(f"condition {kind} {cond}, a kubelet shows False/ContainersNotReady")
    return problems


def crash_loop_shape_problems(pod: dict) -> list[str]:
    """What in ``pod`` differs from the status a kubelet writes for a crash-looping pod.

    A container that started, exited and is backing off: the pod stays ``Running`` (its
    containers have all been created and one is restarting: the kubelet's phase rules,
    restartPolicy Always), not ready, and in one and the same write the container shows
    ``waiting: CrashLoopBackOff`` with its back-off message, ``restartCount`` above 0 and
    the instance that ended in ``lastState.terminated`` (exit code, reason, times, the
    container's ID), with the image and container IDs it ran with. Empty when it agrees.
    """
    status = pod.get("status") or {}
    problems = not_ready_problems(pod, "Running")
    looping = [
        cs
        for cs in status.get("containerStatuses") or []
        if ((cs.get("state") or {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff"
    ]
    if not looping:
        problems.append("no container waiting in CrashLoopBackOff")
    for cs in looping:
        name = cs.get("name")
        waiting = cs["state"]["waiting"]
        if not str(waiting.get("message", "")).startswith("back-off "):
            problems.append(f"{name}: waiting message {waiting.get('message')!r}")
        restarts = cs.get("restartCount")
        if not isinstance(restarts, int) or restarts < 1:
            problems.append(f"{name}: restartCount {restarts!r} in the CrashLoopBackOff write")
        if cs.get("ready") is not False or cs.get("started") is not False:
            problems.append(f"{name}: ready {cs.get('ready')!r}, started {cs.get('started')!r}")
        if not cs.get("containerID") or not cs.get("imageID") or not cs.get("image"):
            problems.append(f"{name}: image/imageID/containerID missing from a container that ran")
        last = (cs.get("lastState") or {}).get("terminated") or {}
        code = last.get("exitCode")
        if not isinstance(code, int) or code == 0:
            problems.append(f"{name}: lastState.terminated exitCode {code!r}")
        for key in ("reason", "startedAt", "finishedAt", "containerID"):
            if not last.get(key):
                problems.append(f"{name}: lastState.terminated without {key}")
    return problems


#: The container waiting reasons of an image that cannot be pulled, in the order a kubelet
#: shows them: the pull fails, then it backs off before the next try.
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff")


def pull_shape_problems(pod: dict) -> list[str]:
    """What in ``pod`` differs from the status a kubelet writes for a container whose image
    cannot be pulled. The words are the kubelet's (pkg/kubelet/images, kuberuntime): the
    waiting message is the runtime's error for ErrImagePull (containerd: ``rpc error: code
    = NotFound desc = failed to pull and unpack image "REF": ...``) and ``Back-off pulling
    image "IMAGE"`` for ImagePullBackOff. The pod is Pending (no container ever started),
    bound, not ready; the container never started, was never restarted and has no container
    or image ID. Empty when it agrees.
    """
    status = pod.get("status") or {}
    problems = not_ready_problems(pod, "Pending")
    images = {c["name"]: c.get("image") for c in pod["spec"]["containers"]}
    pulling = [
        cs
        for cs in status.get("containerStatuses") or []
        if ((cs.get("state") or {}).get("waiting") or {}).get("reason") in PULL_REASONS
    ]
    if not pulling:
        problems.append(f"no container waiting in {' or '.join(PULL_REASONS)}")
    for cs in pulling:
        name, image = cs.get("name"), images.get(cs.get("name"))
        waiting = cs["state"]["waiting"]
        message = str(waiting.get("message") or "")
        if waiting["reason"] == "ErrImagePull":
            ok = message.startswith("rpc error: code = NotFound desc = failed to pull and unpack")
        else:
            ok = message == f'Back-off pulling image "{image}"'
        if not ok:
            problems.append(f"{name}: {waiting['reason']} with the message {message!r}")
        if cs.get("image") != image:
            problems.append(f"{name}: image {cs.get('image')!r}, the spec names {image!r}")
        if cs.get("ready") is not False or cs.get("started") is not False:
            problems.append(f"{name}: ready {cs.get('ready')!r}, started {cs.get('started')!r}")
        if cs.get("restartCount") != 0 or cs.get("containerID") or cs.get("imageID"):
            problems.append(f"{name}: restarts/containerID/imageID of a container that never ran")
    return problems


def pull_events_problems(events: list[dict], pod: dict, shown: list[str]) -> list[str]:
    """What in the pod's events differs from those a kubelet writes for the pull reasons
    ``shown`` (in order): ``Normal Pulling``, then per ErrImagePull ``Warning Failed``
    ``Failed to pull image "IMAGE": ERROR`` and ``Warning Failed`` ``Error: ErrImagePull``,
    per ImagePullBackOff ``Normal BackOff`` ``Back-off pulling image "IMAGE"`` (a back-off
    is Normal to a kubelet) and ``Warning Failed`` ``Error: ImagePullBackOff``; each from
    the kubelet, about the container. Empty when they agree."""
    container = pod["spec"]["containers"][0]
    image = container["image"]
    expected: list[tuple[str, str, str]] = [("Normal", "Pulling", f'Pulling image "{image}"')]
    for reason in shown:
        if reason == "ErrImagePull":
            expected += [
                ("Warning", "Failed", f'Failed to pull image "{image}": rpc error: '),
                ("Warning", "Failed", "Error: ErrImagePull"),
            ]
        else:
            expected += [
                ("Normal", "BackOff", f'Back-off pulling image "{image}"'),
                ("Warning", "Failed", "Error: ImagePullBackOff"),
            ]
    mine = sorted(  # in the order written: both backends count resourceVersions up
        (
            e
            for e in events
            if (e.get("involvedObject") or {}).get("name") == pod["metadata"]["name"]
            and e.get("reason") in ("Pulling", "Failed", "BackOff")
        ),
        key=lambda e: int(e["metadata"]["resourceVersion"]),
    )
    got = [(e.get("type"), e.get("reason"), str(e.get("message"))) for e in mine]
    problems = []
    if len(got) != len(expected) or any(
        (t, r) != (et, er) or not m.startswith(em)
        for (t, r, m), (et, er, em) in zip(got, expected, strict=False)
    ):
        problems.append(f"events {got}, a kubelet writes {expected} (message prefixes)")
    for e in mine:
        if (e.get("source") or {}).get("component") != "kubelet":
            problems.append(f"{e.get('reason')} event from {e.get('source')}, not the kubelet")
        field = (e.get("involvedObject") or {}).get("fieldPath")
        if field != f"spec.containers{{{container['name']}}}":
            problems.append(f"{e.get('reason')} event about {field!r}, not the container")
    return problems


# ---------------------------------------------------------------------------- the flow's steps


async def call(
    api: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with api.request(method, path, **kwargs) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def install_kaito(api: aiohttp.ClientSession, kube: Kube) -> None:
    """Install through the API, then wait (on watches) until KubeFoundry reports it installed."""
    status, body = await call(api, "POST", "/api/installation/providers/kaito/install")
    assert status == 200, body
    await wait_for(
        kube,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "workspaces.kaito.sh",
        lambda crd: any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (crd or {}).get("status", {}).get("conditions") or []
        ),
    )
    pods = await kube.get(
        f"/api/v1/namespaces/{NS}/pods", {"labelSelector": "app.kubernetes.io/name=kaito-workspace"}
    )
    operator = pods["items"][0]["metadata"]["name"]
    await wait_for(kube, f"/api/v1/namespaces/{NS}/pods", operator, pod_phase("Running"))
    await wait_for(kube, WS_COLLECTION, "no-such-workspace", lambda _: True)  # the CRD is served
    status, body = await call(api, "GET", "/api/installation/providers/kaito/status")
    assert body["installed"] is True, body


async def create_deployment(api: aiohttp.ClientSession, body: dict | None = None) -> None:
    status, answer = await call(api, "POST", "/api/deployments", json=body or CREATE_BODY)
    assert status == 201, answer


async def chat(kube: Kube, content: str = "Say hello.", max_tokens: int = 8, **extra: Any) -> dict:
    """A chat completion through the Kubernetes API server's service proxy."""
    path = f"/api/v1/namespaces/{NS}/services/{NAME}:80/proxy/v1/chat/completions"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        **extra,
    }
    return await kube.request("POST", path, body=body)


async def proxy_raw(kube: Kube, path: str, body: dict | None = None) -> tuple[int, bytes]:
    """Status and raw body of a service-proxy request (for streams and error answers)."""
    full = f"/api/v1/namespaces/{NS}/services/{NAME}:80/proxy/{path}"
    resp = await kube._send(
        "POST" if body is not None else "GET",
        full,
        None,
        body,
        "application/json",
        "application/json, text/event-stream",
    )
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


# ---------------------------------------------------------------------------- every state seen


class PodHistory:
    """Every version of the pods a query selects, in order, from a watch opened before
    they exist.

    A watch delivers each write to the pod (both backends keep the history a watch from
    a listed resourceVersion replays), so a state shown even for a moment is recorded,
    which a wait for the final state would skip. ``until`` waits for a version that
    satisfies a predicate.
    """

    def __init__(self, kube: Kube, collection: str, query: dict[str, str]) -> None:
        self.kube, self.collection, self.query = kube, collection, query
        self.versions: list[dict] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PodHistory:
        listing = await self.kube.get(self.collection, self.query)
        self.versions.extend(listing.get("items", []))
        self._task = asyncio.create_task(self._record(listing["metadata"]["resourceVersion"]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _record(self, rv: str) -> None:
        try:
            while True:  # a watch the server ends is resumed from the last version seen
                async for event in self.kube.watch(self.collection, self.query, rv, 60):
                    obj = event["object"]
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.versions.append(obj)
                        self._changed.set()
        finally:
            self._changed.set()  # a waiter sees the watch end instead of its deadline

    async def until(self, predicate: Callable[[dict], bool], timeout: float = DEADLINE) -> dict:
        async def _wait() -> dict:
            seen = 0
            while True:
                for version in self.versions[seen:]:
                    if predicate(version):
                        return version
                seen = len(self.versions)
                self._changed.clear()
                assert self._task is not None
                if self._task.done():
                    raise AssertionError(f"the watch of {self.query} ended: {self._task!r}")
                await self._changed.wait()

        return await asyncio.wait_for(_wait(), timeout)
