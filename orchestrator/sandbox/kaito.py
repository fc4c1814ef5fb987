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
import contextlib
import logging
import time
from typing import Any

from ._kube import JSON, KubeError, backoff
from ._kubefoundry.installation import OPERATOR_HOLD
from ._operator import (
    CustomResourceOperator,
    cancel,
    go_duration,
    kubelet_settled,
    now,
    pod_running,
)
from .models import served_name_for_image

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kaito.sh", "v1beta1", "workspaces"
FINALIZER = "workspace.finalizer.kaito.sh"
OPERATOR_NAMESPACE = "kaito-workspace"
OPERATOR_SELECTOR = "app.kubernetes.io/name=kaito-workspace"
MODEL_PORT = 5000
DEFAULT_IMAGE = "ghcr.io/kaito-project/aikit/llama3.2:1b"
#: An annotation the stand-in bumps on a released pod that is still Pending, so that the
#: kubelet sees a change and looks at the pod again (see ``KaitoController._release``).
KUBELET_NUDGE = "sandbox.orchestrator/nudge"
#: The longest wait for a released pod to start before it is touched again.
RELEASE_RECHECK_CAP = 8.0
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


class KaitoController(CustomResourceOperator):
    """Reconciles Workspaces in all namespaces while a kaito-workspace pod is Running.

    The watch loop, the per-Workspace workers and the collection of what a deleted
    Workspace left behind are the shared operator's; what is KAITO's own is here: the
    operator pod that the install holds in ContainerCreating until ``delays.operator_start``,
    the model pod held for its image pull, and KAITO's conditions and finalizer.
    """

    group = GROUP
    version = VERSION
    plural = PLURAL
    operator_namespace = OPERATOR_NAMESPACE
    operator_selector = OPERATOR_SELECTOR
    label = "kaito-workspace"
    finalizer = FINALIZER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Operator pods held in ContainerCreating by the install, each released by a task.
        self._operator_starts: dict[str, asyncio.Task[JSON | None]] = {}

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await cancel(*self._operator_starts.values())

    # ------------------------------------------------------------------ the operator pod

    def operator_ready(self, pod: JSON) -> bool:
        """Only a Running operator pod that is not being deleted reconciles (unlike a pod that
        merely exists): the install holds it in ContainerCreating for a while."""
        return pod_running(pod) and not pod.get("metadata", {}).get("deletionTimestamp")

    def operator_seen(self, pod: JSON) -> None:
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
    ) -> JSON | None:
        """After ``delays.<delay>``, let the kubelet start a pod held in ContainerCreating,
        and see that it does: return the pod once it has left Pending (None if it is gone).

        A hold rather than the kubelet's own delay annotation, because the knob is then
        live: a test can hold a pod and let it go. With ``pulled`` (an image), the wait is
        the image pull, reported in the kubelet's words, as a cold node reports it.

        The release is an edit the kubelet must notice, and a kubelet can miss one: the
        test cluster's drops a pod's change that arrives while it is still writing that
        pod's previous state (its work on the pod in flight), and then never looks again.
        Released once, the pod stayed ContainerCreating for good, the Workspace never got
        past ResourceReady, and a run waited out Wait Ready; a release done again changes
        nothing and so wakes nothing. So the release waits until the kubelet has settled
        the held pod, and until the pod leaves Pending it is touched again, with backoff,
        as a controller requeues: each touch is a change the kubelet acts on when idle.
        """
        await self.state.wait_delay(delay, since)
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        release: JSON = {
            k: None for k in (OPERATOR_HOLD, "fake-kubelet/phase", "fake-kubelet/waiting-reason")
        }
        attempt = 0
        while True:
            wait = min(RELEASE_RECHECK_CAP, 2.0**attempt)
            try:
                pod = await self.kube.get_or_none(path)
                if pod is None or not _held_or_starting(pod):
                    return pod
                if OPERATOR_HOLD in (pod["metadata"].get("annotations") or {}):
                    if not kubelet_settled(pod):
                        # The kubelet is still writing the held state: a release now
                        # could land in the middle of that and be dropped (and if it
                        # never settles, the touches below still get the release seen).
                        with contextlib.suppress(TimeoutError):
                            await self.wait_pod(namespace, name, kubelet_settled, timeout=wait)
                    if pulled is not None:
                        took = go_duration(time.monotonic() - since)
                        await self.event(
                            pod,
                            "Pulled",
                            f'Successfully pulled image "{pulled}" in {took} ({took} including '
                            "waiting). Image size: 1325400000 bytes.",
                            "model",
                            "Normal",
                        )
                        pulled = None
                    await self.kube.merge_patch(path, {"metadata": {"annotations": release}})
                    self.state.record(namespace, name, "pod released")
                else:
                    await self.kube.merge_patch(
                        path, {"metadata": {"annotations": {KUBELET_NUDGE: str(attempt)}}}
                    )
                    self.state.record(namespace, name, "pod still Pending: kubelet nudged")
                    log.info(
                        "pod %s/%s still Pending after its release: kubelet nudged", namespace, name
                    )
                return await self.wait_pod(namespace, name, _started, timeout=wait)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                pass
            except Exception as exc:
                log.debug("releasing pod %s/%s: %r", namespace, name, exc)
                await asyncio.sleep(backoff(attempt))
            attempt += 1

    # ------------------------------------------------------------------ reconcile

    async def gone(self, namespace: str, name: str) -> None:
        """The Workspace went without our finalizer: collect its pod, Services and model."""
        await self._delete_children(namespace, name)
        await self.fleet.remove(namespace, name)

    async def provision(self, key: tuple[str, str], obj: JSON) -> None:
        await self.requeue(key, "workspace", lambda: self._bring_up(key, obj))

    async def _bring_up(self, key: tuple[str, str], obj: JSON) -> None:
        namespace, name = key
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
            await self._break_pod(namespace, name, faults.crash_loop)
            return
        if faults.image_pull_rate_limited:
            await self.show_pull_rate_limited(
                namespace,
                f"{name}-0",
                lambda reason: self.state.record(namespace, name, f"pod {reason} (rate limited)"),
            )
        await self._release(namespace, f"{name}-0", "pod_start", created, container["image"])
        pod = await self.wait_pod(
            namespace, f"{name}-0", lambda p: p.get("status", {}).get("phase") == "Running"
        )
        self.state.record(namespace, name, "pod Running")
        upstream = await self.fleet.wait_ready(namespace, name)
        await self.probe(upstream)
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

    async def finalize(self, namespace: str, name: str) -> None:
        """Say it is deleting, tear down the children, then release the finalizer; retried
        until it succeeds."""
        try:
            await self._set_conditions(namespace, name, ["WorkspaceDeleting"])
        except KubeError:
            pass
        # KAITO keeps the other conditions while it tears down, so the backend still says
        # Running (with WorkspaceDeleting=True) until the Workspace is gone.
        await self.state.wait_delay("finalize", time.monotonic())
        await self.hold_while_stuck(namespace, name)
        attempt = 0
        while True:
            try:
                await self._delete_children(namespace, name)
                self.state.record(namespace, name, "pod and services deleted")
                await self.fleet.remove(namespace, name)
                await self.remove_finalizer(namespace, name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("finalize %s/%s: %r", namespace, name, exc)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    # ------------------------------------------------------------------ children

    async def _create_children(
        self, namespace: str, name: str, container: JSON, image_pull_error: bool, crash_loop: bool
    ) -> None:
        selector = {"kaito.sh/workspace": name}
        port = {"name": "http", "port": 80, "targetPort": MODEL_PORT, "protocol": "TCP"}
        # KAITO's Services select the pods by label but carry none of their own (only an
        # owner reference to the Workspace): a client finds them by name, as it must here.
        await self.create_service(
            namespace,
            name,
            selector,
            [port],
            labels={},
            proxy_to=self.fleet.url_for(namespace, name),
        )
        await self.kube.create(
            f"/api/v1/namespaces/{namespace}/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"{name}-headless", "namespace": namespace},
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
            # Waiting in ContainerCreating until ``show_pull_failure`` shows the pull fail.
            annotations = {"fake-kubelet/phase": "Pending"}
        elif crash_loop:
            # Waiting in ContainerCreating until ``show_crash`` moves it to CrashLoopBackOff.
            annotations = {"fake-kubelet/phase": "Pending", "fake-kubelet/log": CRASH_LINE}
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
            await self.event(
                pod, "Pulling", f'Pulling image "{container["image"]}"', "model", "Normal"
            )

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
            pod = await self._release(namespace, pod_name, "pod_start", created, container["image"])
            # Recorded as the release sees it start: another wait would begin after the
            # change it waits for, and a run that moves on at once (its Delete cancels
            # this) would leave the restart unrecorded.
            if pod is None:
                continue  # deleted again before it started: recreate it
            if _phase(pod) != "Running":
                pod = await self.wait_pod(namespace, pod_name, lambda p: _phase(p) == "Running")
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

    async def _break_pod(self, namespace: str, name: str, crash_loop: bool) -> None:
        """Make the kubelet's side of a broken pod visible: waiting reason, events, restarts.

        Each waiting reason is recorded (``pod REASON``) once its status and events are
        written: a reader that waits for the entry finds them there, as a kubelet's would
        be by the time anyone looks."""
        if crash_loop:
            await self.show_crash(namespace, f"{name}-0", CRASH_LINE)
            self.state.record(namespace, name, "pod CrashLoopBackOff")
            return
        await self.show_pull_failure(
            namespace,
            f"{name}-0",
            lambda reason: self.state.record(namespace, name, f"pod {reason}"),
        )

    async def _set_conditions(
        self, namespace: str, name: str, types: list[str], extra: dict[str, Any] | None = None
    ) -> None:
        """Set the given conditions True through the status subresource (merge patch)."""
        current = await self.kube.get(self.path(namespace, name))
        conditions = list(current.get("status", {}).get("conditions") or [])
        stamp = now()
        for ctype in types:
            reason, message = CONDITIONS[ctype]
            new = {
                "type": ctype,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": stamp,
                "observedGeneration": current["metadata"].get("generation", 1),
            }
            for i, cond in enumerate(conditions):
                if cond.get("type") == ctype:
                    if cond.get("status") == "True":
                        new["lastTransitionTime"] = cond.get("lastTransitionTime", stamp)
                    conditions[i] = new
                    break
            else:
                conditions.append(new)
        status: dict[str, Any] = {"conditions": conditions, **(extra or {})}
        await self.kube.merge_patch(self.path(namespace, name) + "/status", {"status": status})
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


def _held_or_starting(pod: JSON) -> bool:
    """Pending and not being deleted: a release (or a nudge) still has something to do."""
    phase = pod.get("status", {}).get("phase")
    return phase in (None, "", "Pending") and not pod["metadata"].get("deletionTimestamp")


def _phase(pod: JSON) -> str | None:
    phase = pod.get("status", {}).get("phase")
    return phase if isinstance(phase, str) else None


def _started(pod: JSON) -> bool:
    return not _held_or_starting(pod)
