"""A stand-in for the KAITO workspace controller, talking only to the Kubernetes API.

It does what KAITO v0.8.0 visibly does for a Workspace with an inference template:
adds its finalizer, creates the Service, the headless Service and the model Pod, and
moves the ResourceReady / InferenceReady / WorkspaceSucceeded conditions (with KAITO's
own reason and message strings), then tears everything down before releasing the
finalizer on deletion. The pod "runs" on the fake kubelet; the model behind the Service
is a real llama.cpp server reached through the model front (``fake-kubelet/proxy-to``).
It reconciles only while an operator pod is Running, as the real operator would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ._kube import JSON, Gone, Kube, KubeError, backoff
from ._kubefoundry.installation import OPERATOR_HOLD
from .faults import SandboxState
from .models import ModelFleet, served_name_for_image

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kaito.sh", "v1beta1", "workspaces"
WORKSPACES = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
FINALIZER = "workspace.finalizer.kaito.sh"
OPERATOR_NAMESPACE = "kaito-workspace"
OPERATOR_SELECTOR = "app.kubernetes.io/name=kaito-workspace"
MODEL_PORT = 5000
DEFAULT_IMAGE = "ghcr.io/kaito-project/aikit/llama3.2:1b"
CRASH_LINE = (
    "llama.cpp server: error loading model: failed to allocate compute buffer (exit code 1)"
)

# (reason, message) exactly as KAITO writes them.
CONDITIONS = {
    "ResourceReady": ("workspaceResourceStatusSuccess", "workspace resource is ready"),
    "InferenceReady": (
        "WorkspaceInferenceStatusSuccess",
        "Inference has been deployed successfully",
    ),
    "WorkspaceSucceeded": ("workspaceSucceeded", "workspace succeeds"),
    "WorkspaceDeleting": ("workspaceDeleted", "workspace is being deleted"),
}


def workspace_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _go_duration(seconds: float) -> str:
    return f"{max(0, round(seconds * 1000))}ms"


@dataclass
class _Worker:
    """What the controller knows about one Workspace between events."""

    latest: JSON
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    provision: asyncio.Task[None] | None = None
    finalize: asyncio.Task[None] | None = None


class KaitoController:
    """Reconciles Workspaces in all namespaces until cancelled."""

    def __init__(self, kube: Kube, fleet: ModelFleet, state: SandboxState) -> None:
        self.kube = kube
        self.fleet = fleet
        self.state = state
        self._workers: dict[tuple[str, str], _Worker] = {}
        self._operator_pods: set[str] = set()
        #: Operator pods held in ContainerCreating by the install, each released by a task.
        self._operator_starts: dict[str, asyncio.Task[None]] = {}
        self._operator_present = asyncio.Event()
        self._operator_absent = asyncio.Event()
        self._operator_absent.set()
        #: For readiness probes: one session, so that fifty probes do not each pay for a
        #: session, a connector and a new connection.
        self._probes: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        operator_watch = asyncio.create_task(self._watch_operator(), name="kaito operator watch")
        try:
            while True:
                await self._operator_present.wait()
                log.info("operator pod present: reconciling Workspaces")
                reconcile = asyncio.create_task(
                    self._watch_workspaces(), name="kaito workspace watch"
                )
                absent = asyncio.create_task(self._operator_absent.wait())
                try:
                    await asyncio.wait({reconcile, absent}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reconcile, absent):
                        task.cancel()
                    await asyncio.gather(reconcile, absent, return_exceptions=True)
                    await self._stop_workers()
                if reconcile.done() and not reconcile.cancelled() and reconcile.exception():
                    raise reconcile.exception()  # type: ignore[misc]
        finally:
            operator_watch.cancel()
            await asyncio.gather(operator_watch, return_exceptions=True)
            await _cancel(*self._operator_starts.values())
            await self._stop_workers()
            if self._probes is not None:
                await self._probes.close()

    # ------------------------------------------------------------------ watches

    async def _watch_operator(self) -> None:
        collection = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods"
        query = {"labelSelector": OPERATOR_SELECTOR}
        attempt = 0
        while True:
            try:
                listing = await self.kube.get(collection, query)
                for p in listing.get("items", []):
                    self._release_later(p)
                self._operator_pods = {
                    p["metadata"]["name"] for p in listing.get("items", []) if _running(p)
                }
                self._operator_changed()
                rv = listing["metadata"].get("resourceVersion")
                attempt = 0
                while True:
                    async for event in self.kube.watch(collection, query, rv):
                        rv = event["object"].get("metadata", {}).get("resourceVersion", rv)
                        pod = event["object"]["metadata"].get("name")
                        if event["type"] != "DELETED":
                            self._release_later(event["object"])
                        if event["type"] in ("ADDED", "MODIFIED") and _running(event["object"]):
                            self._operator_pods.add(pod)
                        elif event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self._operator_pods.discard(pod)
                        self._operator_changed()
            except Gone:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("operator watch: %s", exc)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    def _release_later(self, pod: JSON) -> None:
        """Start the operator pod ``delays.operator_start`` seconds after the install made it."""
        meta = pod.get("metadata", {})
        uid = meta.get("uid", "")
        if OPERATOR_HOLD not in (meta.get("annotations") or {}) or uid in self._operator_starts:
            return
        self._operator_starts[uid] = asyncio.create_task(
            self._release(meta["namespace"], meta["name"], "operator_start", time.monotonic()),
            name=f"operator start {meta['name']}",
        )

    async def _release(
        self, namespace: str, name: str, delay: str, since: float, pulled: str | None = None
    ) -> None:
        """After ``delays.<delay>``, let the kubelet start a pod held in ContainerCreating.

        A hold rather than the kubelet's own delay annotation, because the knob is then
        live: a test can hold a pod and let it go. With ``pulled`` (an image), the wait is
        the image pull, reported in the kubelet's words, as a cold node reports it.
        """
        await self.state.wait_delay(delay, since)
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        release = {
            k: None for k in (OPERATOR_HOLD, "fake-kubelet/phase", "fake-kubelet/waiting-reason")
        }
        try:
            if pulled is not None:
                pod = await self.kube.get(path)
                took = _go_duration(time.monotonic() - since)
                await self._event(
                    pod,
                    "Pulled",
                    f'Successfully pulled image "{pulled}" in {took} ({took} including '
                    "waiting). Image size: 1325400000 bytes.",
                    "Normal",
                )
            await self.kube.merge_patch(path, {"metadata": {"annotations": release}})
        except KubeError as exc:
            log.debug("releasing pod %s/%s: %s", namespace, name, exc)
            return
        self.state.record(namespace, name, "pod released")

    def _operator_changed(self) -> None:
        if self._operator_pods:
            self._operator_absent.clear()
            self._operator_present.set()
        else:
            self._operator_present.clear()
            self._operator_absent.set()

    async def _watch_workspaces(self) -> None:
        """List, then watch from the list's resourceVersion; relist on 410, back off on errors."""
        attempt = 0
        while True:
            try:
                listing = await self.kube.get(WORKSPACES)
                attempt = 0
                seen = set()
                for item in listing.get("items", []):
                    seen.add(self._dispatch(item))
                for key in set(self._workers) - seen:
                    await self._forget(key)
                rv = listing["metadata"].get("resourceVersion")
                while True:
                    async for event in self.kube.watch(WORKSPACES, resource_version=rv):
                        obj = event["object"]
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._dispatch(obj)
                        elif event["type"] == "DELETED":
                            meta = obj["metadata"]
                            await self._forget((meta["namespace"], meta["name"]))
            except Gone:
                continue
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                # 404: the CRD is not there yet; 429: its watch cache is still warming up.
                log.debug("workspace watch: %s", exc)
            except Exception as exc:
                log.debug("workspace watch: %r", exc)
            await asyncio.sleep(backoff(attempt, cap=1.0))
            attempt += 1

    def _dispatch(self, obj: JSON) -> tuple[str, str]:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        worker = self._workers.get(key)
        if worker is None:
            worker = self._workers[key] = _Worker(latest=obj)
            worker.task = asyncio.create_task(
                self._work(key, worker), name=f"workspace {key[0]}/{key[1]}"
            )
        worker.latest = obj
        worker.wake.set()
        return key

    async def _forget(self, key: tuple[str, str]) -> None:
        """The Workspace is gone: stop its worker, and clean up if we never got to finalize it."""
        worker = self._workers.pop(key, None)
        if worker is None:
            return
        await _cancel(worker.task, worker.provision)
        if worker.finalize is not None:
            # Our finalizer release raced its own DELETED event: let it finish its bookkeeping.
            try:
                await asyncio.wait_for(worker.finalize, 10)
                return
            except Exception:
                pass
        await self._delete_children(*key)
        await self.fleet.remove(*key)

    async def _stop_workers(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await _cancel(worker.task, worker.provision, worker.finalize)

    # ------------------------------------------------------------------ reconcile

    async def _work(self, key: tuple[str, str], worker: _Worker) -> None:
        attempt = 0
        while True:
            await worker.wake.wait()
            worker.wake.clear()
            try:
                await self._reconcile(key, worker, worker.latest)
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("reconcile %s/%s: %r", *key, exc)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                worker.wake.set()

    async def _reconcile(self, key: tuple[str, str], worker: _Worker, obj: JSON) -> None:
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            if FINALIZER in finalizers and worker.finalize is None:
                await _cancel(worker.provision)
                worker.finalize = asyncio.create_task(self._finalize(*key))
            return
        if FINALIZER not in finalizers:
            await self.kube.merge_patch(
                workspace_path(*key),
                {
                    "metadata": {
                        "finalizers": finalizers + [FINALIZER],
                        "resourceVersion": meta["resourceVersion"],
                    }
                },
            )
        if worker.provision is None:
            worker.provision = asyncio.create_task(self._provision(key, obj))

    async def _provision(self, key: tuple[str, str], obj: JSON) -> None:
        namespace, name = key
        try:
            await self.state.wait_delay("resource", time.monotonic())
            faults = self.state.faults
            broken = faults.image_pull_error or faults.crash_loop
            container = _model_container(obj)
            if not broken:
                alias = served_name_for_image(container["image"]) or name
                self.fleet.ensure(namespace, name, alias)
            created = time.monotonic()
            await self._create_children(
                namespace, name, container, faults.image_pull_error, faults.crash_loop
            )
            await self._set_conditions(namespace, name, ["ResourceReady"])
            if broken:
                await self._break_pod(namespace, name, container["image"], faults.crash_loop)
                return
            await self._release(namespace, f"{name}-0", "pod_start", created, container["image"])
            pod = await self._wait_pod(
                namespace, f"{name}-0", lambda p: p.get("status", {}).get("phase") == "Running"
            )
            self.state.record(namespace, name, "pod Running")
            upstream = await self.fleet.wait_ready(namespace, name)
            await self._probe(upstream)
            self.state.record(namespace, name, "model server answering")
            await self.state.wait_delay("inference_ready", time.monotonic())
            if self.state.faults.never_ready:
                self.state.record(namespace, name, "InferenceReady withheld (never_ready)")
                await self.state.until(lambda f: not f.never_ready)
            node = pod.get("spec", {}).get("nodeName")
            await self._set_conditions(
                namespace,
                name,
                ["InferenceReady", "WorkspaceSucceeded"],
                extra={
                    "workerNodes": [node] if node else [],
                    "targetNodeCount": obj.get("resource", {}).get("count", 1),
                },
            )
            await self._keep_pod(namespace, name, container)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("provisioning %s/%s failed: %r", namespace, name, exc)
            self.state.record(namespace, name, f"provisioning failed: {exc}")

    async def _finalize(self, namespace: str, name: str) -> None:
        """Tear down the children, then release the finalizer; retried until it succeeds."""
        try:
            await self._set_conditions(namespace, name, ["WorkspaceDeleting"])
        except KubeError:
            pass
        # KAITO keeps the other conditions while it tears down, so the backend still says
        # Running (with WorkspaceDeleting=True) until the Workspace is gone.
        await self.state.wait_delay("finalize", time.monotonic())
        if self.state.faults.stuck_delete:
            self.state.record(namespace, name, "finalizer kept (stuck_delete)")
            await self.state.until(lambda f: not f.stuck_delete)
        attempt = 0
        while True:
            try:
                await self._delete_children(namespace, name)
                self.state.record(namespace, name, "pod and services deleted")
                await self.fleet.remove(namespace, name)
                await self._remove_finalizer(namespace, name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("finalize %s/%s: %r", namespace, name, exc)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def _remove_finalizer(self, namespace: str, name: str) -> None:
        while True:
            current = await self.kube.get_or_none(workspace_path(namespace, name))
            if current is None:
                return
            meta = current["metadata"]
            rest = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
            try:
                await self.kube.merge_patch(
                    workspace_path(namespace, name),
                    {"metadata": {"finalizers": rest, "resourceVersion": meta["resourceVersion"]}},
                )
                self.state.record(namespace, name, "finalizer removed")
                return
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise

    # ------------------------------------------------------------------ children

    async def _create_children(
        self, namespace: str, name: str, container: JSON, image_pull_error: bool, crash_loop: bool
    ) -> None:
        selector = {"kaito.sh/workspace": name}
        port = {"name": "http", "port": 80, "targetPort": MODEL_PORT, "protocol": "TCP"}
        services = f"/api/v1/namespaces/{namespace}/services"
        await self.kube.create(
            services,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": selector,
                    "annotations": {"fake-kubelet/proxy-to": self.fleet.url_for(namespace, name)},
                },
                "spec": {"type": "ClusterIP", "selector": selector, "ports": [port]},
            },
        )
        await self.kube.create(
            services,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": f"{name}-headless",
                    "namespace": namespace,
                    "labels": selector,
                },
                "spec": {
                    "clusterIP": "None",
                    "selector": selector,
                    "ports": [port],
                    "publishNotReadyAddresses": True,
                },
            },
        )
        await self._create_pod(namespace, name, container, image_pull_error, crash_loop)
        self.state.record(namespace, name, "pod and services created")

    async def _create_pod(
        self,
        namespace: str,
        name: str,
        container: JSON,
        image_pull_error: bool = False,
        crash_loop: bool = False,
    ) -> None:
        selector = {"kaito.sh/workspace": name}
        if image_pull_error:
            annotations = {
                "fake-kubelet/phase": "Pending",
                "fake-kubelet/waiting-reason": "ErrImagePull",
            }
        elif crash_loop:
            annotations = {
                "fake-kubelet/phase": "Pending",
                "fake-kubelet/waiting-reason": "CrashLoopBackOff",
                "fake-kubelet/log": CRASH_LINE,
            }
        else:
            # Held in ContainerCreating (the image pull) until ``_release`` lets it start.
            annotations = {
                "fake-kubelet/phase": "Pending",
                "fake-kubelet/waiting-reason": "ContainerCreating",
                OPERATOR_HOLD: "delays.pod_start",
            }
        pod_name = f"{name}-0"
        pod = await self.kube.create(
            f"/api/v1/namespaces/{namespace}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": namespace,
                    "annotations": annotations,
                    "labels": {
                        **selector,
                        "statefulset.kubernetes.io/pod-name": pod_name,
                        "apps.kubernetes.io/pod-index": "0",
                    },
                },
                "spec": {"containers": [container]},
            },
        )
        if pod is not None and not (image_pull_error or crash_loop):
            await self._event(pod, "Pulling", f'Pulling image "{container["image"]}"', "Normal")

    async def _keep_pod(self, namespace: str, name: str, container: JSON) -> None:
        """Bring the model pod back whenever it is deleted, as the StatefulSet under a KAITO
        Workspace does. Runs until the Workspace is deleted (which cancels provisioning first,
        so the teardown's own pod deletion is never undone)."""
        pods = f"/api/v1/namespaces/{namespace}/pods"
        pod_name = f"{name}-0"
        while True:
            try:
                await self.kube.wait_gone(pods, pod_name, timeout=3600)
            except TimeoutError:
                continue
            self.state.record(namespace, name, "pod deleted")
            created = time.monotonic()
            await self._create_pod(namespace, name, container)
            self.state.record(namespace, name, "pod recreated")
            await self._release(namespace, pod_name, "pod_start", created, container["image"])
            await self._wait_pod(
                namespace, pod_name, lambda p: p.get("status", {}).get("phase") == "Running"
            )
            self.state.record(namespace, name, "recreated pod Running")

    async def _delete_children(self, namespace: str, name: str) -> None:
        targets = [("pods", f"{name}-0"), ("services", name), ("services", f"{name}-headless")]
        for kind, obj in targets:
            await self.kube.delete(f"/api/v1/namespaces/{namespace}/{kind}/{obj}")
        await asyncio.gather(
            *(
                self.kube.wait_gone(f"/api/v1/namespaces/{namespace}/{kind}", obj)
                for kind, obj in targets
            )
        )

    async def _break_pod(self, namespace: str, name: str, image: str, crash_loop: bool) -> None:
        """Make the kubelet's side of a broken pod visible: waiting reason, events, restarts."""
        reason = "CrashLoopBackOff" if crash_loop else "ErrImagePull"
        pod = await self._wait_pod(namespace, f"{name}-0", lambda p: _waiting_reason(p) == reason)
        self.state.record(namespace, name, f"pod {reason}")
        if crash_loop:
            message = f"back-off 40s restarting failed container=model pod={name}-0_{namespace}({pod['metadata']['uid']})"
            status = {
                "containerStatuses": [
                    {
                        "name": "model",
                        "image": image,
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": message}},
                        "lastState": {
                            "terminated": {"exitCode": 1, "reason": "Error", "message": CRASH_LINE}
                        },
                    }
                ]
            }
            try:
                await self.kube.merge_patch(
                    f"/api/v1/namespaces/{namespace}/pods/{name}-0/status", {"status": status}
                )
            except KubeError as exc:
                log.debug("pod status patch: %s", exc)
            await self._event(
                pod,
                "BackOff",
                "Back-off restarting failed container model in pod "
                f"{name}-0_{namespace}({pod['metadata']['uid']})",
            )
        else:
            await self._event(
                pod,
                "Failed",
                f'Failed to pull image "{image}": rpc error: code = NotFound desc = '
                f'failed to pull and unpack image "{image}": not found',
            )
            await self._event(pod, "Failed", "Error: ErrImagePull")

    async def _event(self, pod: JSON, reason: str, message: str, type_: str = "Warning") -> None:
        meta = pod["metadata"]
        now = _now()
        try:
            await self.kube.create(
                f"/api/v1/namespaces/{meta['namespace']}/events",
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {
                        "generateName": f"{meta['name']}.",
                        "namespace": meta["namespace"],
                    },
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "uid": meta.get("uid"),
                        "fieldPath": "spec.containers{model}",
                    },
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "count": 1,
                    "source": {
                        "component": "kubelet",
                        "host": pod.get("spec", {}).get("nodeName", ""),
                    },
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "reportingComponent": "kubelet",
                },
            )
        except KubeError as exc:
            log.debug("event: %s", exc)

    async def _wait_pod(
        self, namespace: str, name: str, predicate: Any, timeout: float = 120.0
    ) -> JSON:
        collection = f"/api/v1/namespaces/{namespace}/pods"
        query = {"fieldSelector": f"metadata.name={name}"}

        async def _wait() -> JSON:
            while True:
                listing = await self.kube.get(collection, query)
                pod: JSON
                for pod in listing.get("items", []):
                    if predicate(pod):
                        return pod
                try:
                    async for event in self.kube.watch(
                        collection, query, listing["metadata"].get("resourceVersion")
                    ):
                        pod = event["object"]
                        if event["type"] in ("ADDED", "MODIFIED") and predicate(pod):
                            return pod
                except Gone:
                    continue

        return await asyncio.wait_for(_wait(), timeout)

    async def _probe(self, upstream: str) -> None:
        """The model server answers /health (what KAITO's readiness probe would check)."""
        if self._probes is None or self._probes.closed:
            self._probes = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._probes.get(f"{upstream}/health") as resp:
            if resp.status != 200:
                raise RuntimeError(f"model server /health answered {resp.status}")

    async def _set_conditions(
        self, namespace: str, name: str, types: list[str], extra: dict[str, Any] | None = None
    ) -> None:
        """Set the given conditions True through the status subresource (merge patch)."""
        current = await self.kube.get(workspace_path(namespace, name))
        conditions = list(current.get("status", {}).get("conditions") or [])
        now = _now()
        for ctype in types:
            reason, message = CONDITIONS[ctype]
            new = {
                "type": ctype,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
                "observedGeneration": current["metadata"].get("generation", 1),
            }
            for i, cond in enumerate(conditions):
                if cond.get("type") == ctype:
                    if cond.get("status") == "True":
                        new["lastTransitionTime"] = cond.get("lastTransitionTime", now)
                    conditions[i] = new
                    break
            else:
                conditions.append(new)
        status: dict[str, Any] = {"conditions": conditions, **(extra or {})}
        await self.kube.merge_patch(workspace_path(namespace, name) + "/status", {"status": status})
        for ctype in types:
            self.state.record(namespace, name, f"{ctype}=True")


def _model_container(obj: JSON) -> JSON:
    """The model container of the Workspace's inference template, normalised for the pod."""
    containers = (
        obj.get("inference", {}).get("template", {}).get("spec", {}).get("containers") or []
    )
    source = containers[0] if containers else {}
    container: JSON = {
        "name": "model",
        "image": source.get("image", DEFAULT_IMAGE),
        "ports": [{"containerPort": MODEL_PORT, "protocol": "TCP"}],
    }
    for key in ("args", "command", "env", "resources"):
        if key in source:
            container[key] = source[key]
    return container


def _running(pod: JSON) -> bool:
    return bool(
        pod.get("status", {}).get("phase") == "Running"
        and not pod.get("metadata", {}).get("deletionTimestamp")
    )


def _waiting_reason(pod: JSON) -> str | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting:
            return str(waiting.get("reason") or "") or None
    return None


async def _cancel(*tasks: asyncio.Task[Any] | None) -> None:
    pending = [t for t in tasks if t is not None and not t.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
