"""What the KubeRay and Dynamo operator stand-ins share: one custom resource, watched.

Each stand-in reconciles one kind of custom resource in all namespaces while its
operator pod exists (as the real operator, which only acts while it runs): it lists,
watches from the list's resourceVersion, relists on 410 and backs off on errors, and
keeps one worker per object that reconciles the latest version it has seen. The
helpers below create the pods that the fake kubelet then drives, and break them the
way a kubelet would when their Secret is missing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import aiohttp

from ._kube import JSON, Gone, Kube, KubeError, backoff
from .faults import SandboxState
from .kubeapi._images import (
    ERR_IMAGE_PULL,
    IMAGE_PULL_BACK_OFF,
    back_off_message,
    pull_events,
    rate_limited_error,
    waiting_message,
)
from .models import ModelFleet

log = logging.getLogger(__name__)

_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now() -> str:
    return _stamp(datetime.now(UTC))


def go_duration(seconds: float) -> str:
    return f"{max(0, round(seconds * 1000))}ms"


def suffix(length: int = 5) -> str:
    """A random name suffix like the ones controllers and ReplicaSets add."""
    return "".join(random.choices(_SUFFIX_CHARS, k=length))


def pod_running(pod: JSON | None) -> bool:
    return pod is not None and pod.get("status", {}).get("phase") == "Running"


def waiting_reason(pod: JSON) -> str | None:
    """The first container's waiting reason, if it is waiting."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting:
            return str(waiting.get("reason") or "") or None
    return None


def kubelet_settled(pod: JSON) -> bool:
    """The kubelet has bound the pod and written it waiting in ContainerCreating."""
    return bool(pod.get("spec", {}).get("nodeName")) and waiting_reason(pod) == "ContainerCreating"


def secret_refs(containers: list[JSON]) -> list[str]:
    """The Secrets the containers take their environment from (``envFrom[].secretRef``)."""
    names = []
    for container in containers:
        for source in container.get("envFrom") or []:
            name = (source.get("secretRef") or {}).get("name")
            if name and name not in names:
                names.append(name)
    return names


@dataclass
class Worker:
    """What the operator knows about one object between events."""

    latest: JSON
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    provision: asyncio.Task[None] | None = None
    finalize: asyncio.Task[None] | None = None


class CustomResourceOperator:
    """Reconciles one custom resource type in all namespaces until cancelled.

    Subclasses say which resource, finalizer and operator pod, and implement
    :meth:`provision` (bring a new object up, once) and :meth:`gone` (the object was
    deleted; whatever it left behind is theirs to collect). :meth:`reconcile`, the
    finalizer's life and the teardown behind it are the same for every operator; one
    whose teardown is more than :meth:`gone` overrides :meth:`finalize`.
    """

    group = ""
    version = ""
    plural = ""
    operator_namespace = ""
    operator_selector = ""
    label = "operator"
    #: The finalizer the operator puts on each object, so that it tears down first.
    finalizer = ""

    def operator_ready(self, pod: JSON) -> bool:
        """Whether this operator pod counts as running the operator (by default: it exists)."""
        return True

    def operator_seen(self, pod: JSON) -> None:
        """Called with every operator pod the watch lists or sees change (not deletions)."""

    def __init__(self, kube: Kube, fleet: ModelFleet, state: SandboxState) -> None:
        self.kube = kube
        self.fleet = fleet
        self.state = state
        self.workers: dict[tuple[str, str], Worker] = {}
        self._operator_pods: set[str] = set()
        self._present = asyncio.Event()
        self._absent = asyncio.Event()
        self._absent.set()
        self._probes: aiohttp.ClientSession | None = None

    @property
    def collection(self) -> str:
        return f"/apis/{self.group}/{self.version}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        return f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}/{name}"

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        operator_watch = asyncio.create_task(self._watch_operator(), name=f"{self.label} pod watch")
        try:
            while True:
                await self._present.wait()
                log.info("%s pod present: reconciling %s", self.label, self.plural)
                reconcile = asyncio.create_task(
                    self._watch_objects(), name=f"{self.label} {self.plural} watch"
                )
                absent = asyncio.create_task(self._absent.wait())
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
            await self._stop_workers()
            if self._probes is not None:
                await self._probes.close()

    async def _watch_operator(self) -> None:
        collection = f"/api/v1/namespaces/{self.operator_namespace}/pods"
        query = {"labelSelector": self.operator_selector}
        attempt = 0
        while True:
            try:
                listing = await self.kube.get(collection, query)
                for p in listing.get("items", []):
                    self.operator_seen(p)
                self._operator_pods = {
                    p["metadata"]["name"]
                    for p in listing.get("items", [])
                    if self.operator_ready(p)
                }
                self._operator_changed()
                rv = listing["metadata"].get("resourceVersion")
                attempt = 0
                while True:
                    async for event in self.kube.watch(collection, query, rv):
                        rv = event["object"].get("metadata", {}).get("resourceVersion", rv)
                        obj = event["object"]
                        pod = obj["metadata"].get("name")
                        if event["type"] != "DELETED":
                            self.operator_seen(obj)
                        if event["type"] in ("ADDED", "MODIFIED") and self.operator_ready(obj):
                            self._operator_pods.add(pod)
                        elif event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self._operator_pods.discard(pod)
                        self._operator_changed()
            except Gone:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("%s pod watch: %s", self.label, exc)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    def _operator_changed(self) -> None:
        if self._operator_pods:
            self._absent.clear()
            self._present.set()
        else:
            self._present.clear()
            self._absent.set()

    async def _watch_objects(self) -> None:
        """List, then watch from the list's resourceVersion; relist on 410, back off on errors."""
        attempt = 0
        while True:
            try:
                listing = await self.kube.get(self.collection)
                attempt = 0
                seen = {self._dispatch(item) for item in listing.get("items", [])}
                for key in set(self.workers) - seen:
                    await self._forget(key)
                rv = listing["metadata"].get("resourceVersion")
                while True:
                    async for event in self.kube.watch(self.collection, resource_version=rv):
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
            except Exception as exc:
                # 404: the CRD is not there yet; 429: its watch cache is still warming up.
                log.debug("%s watch: %r", self.plural, exc)
            await asyncio.sleep(backoff(attempt, cap=1.0))
            attempt += 1

    def _dispatch(self, obj: JSON) -> tuple[str, str]:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        worker = self.workers.get(key)
        if worker is None:
            worker = self.workers[key] = Worker(latest=obj)
            worker.task = asyncio.create_task(self._work(key, worker), name=f"{self.plural} {key}")
        worker.latest = obj
        worker.wake.set()
        return key

    async def _forget(self, key: tuple[str, str]) -> None:
        """The object is gone: stop its worker and collect what it left behind."""
        worker = self.workers.pop(key, None)
        if worker is None:
            return
        await cancel(worker.task, worker.provision)
        if worker.finalize is not None:
            # Our finalizer release raced its own DELETED event: let it finish.
            try:
                async with asyncio.timeout(10):  # not wait_for: see Kube.wait_gone
                    await worker.finalize
                return
            except Exception:
                pass
        self.state.record(key[0], key[1], f"{self.plural} gone")
        task = asyncio.create_task(self._collect(key), name=f"collect {key}")
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _collect(self, key: tuple[str, str]) -> None:
        attempt = 0
        while True:
            try:
                await self.gone(*key)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("collect %s: %r", key, exc)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def _stop_workers(self) -> None:
        workers, self.workers = list(self.workers.values()), {}
        for worker in workers:
            await cancel(worker.task, worker.provision, worker.finalize)

    async def _work(self, key: tuple[str, str], worker: Worker) -> None:
        attempt = 0
        while True:
            await worker.wake.wait()
            worker.wake.clear()
            try:
                await self.reconcile(key, worker, worker.latest)
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("reconcile %s/%s: %r", *key, exc)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                worker.wake.set()

    # ------------------------------------------------------------------ for subclasses

    async def reconcile(self, key: tuple[str, str], worker: Worker, obj: JSON) -> None:
        """Called with the latest object after every change: a new object gets the
        finalizer and is brought up once; one being deleted is torn down once (what was
        still being brought up is stopped first), and the finalizer released after."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            if self.finalizer in (meta.get("finalizers") or []) and worker.finalize is None:
                await cancel(worker.provision)
                # Requeued until it succeeds, as a controller requeues a failed reconcile:
                # a teardown that died on one error left the finalizer for good, since
                # no later event starts another while this one is recorded.
                worker.finalize = asyncio.create_task(
                    self.requeue(key, "teardown", lambda: self.finalize(*key), "teardown"),
                    name=f"teardown {key}",
                )
            return
        if self.holds_finalizer():
            await self.ensure_finalizer(obj)
        if worker.provision is None:
            worker.provision = asyncio.create_task(self.provision(key, obj))

    def holds_finalizer(self) -> bool:
        """Whether new objects get the finalizer (a backend defect may need them without)."""
        return True

    async def provision(self, key: tuple[str, str], obj: JSON) -> None:
        """Bring the new object ``obj`` up (cancelled if it is deleted meanwhile)."""
        raise NotImplementedError

    async def finalize(self, namespace: str, name: str) -> None:
        """Tear down what the object made, then release the finalizer."""
        await self.hold_while_stuck(namespace, name)
        await self.gone(namespace, name)
        await self.remove_finalizer(namespace, name)

    async def hold_while_stuck(self, namespace: str, name: str) -> None:
        """Keep the finalizer while the ``stuck_delete`` fault is on: a teardown that hangs."""
        if self.state.faults.stuck_delete:
            self.state.record(namespace, name, "finalizer kept (stuck_delete)")
            await self.state.until(lambda f: not f.stuck_delete)

    async def gone(self, namespace: str, name: str) -> None:
        """Collect what a deleted object left behind (retried until it succeeds)."""

    async def requeue(
        self,
        key: tuple[str, str],
        kind: str,
        step: Callable[[], Awaitable[None]],
        what: str = "provisioning",
    ) -> None:
        """Run ``step`` until it succeeds, backing off between tries.

        A real controller requeues a reconcile that failed (a request that timed out on a
        loaded API server, a conflict) instead of giving up on the object: a stand-in that
        gave up left a deployment that could never become ready, and its run waited out
        Wait Ready's whole timeout.
        """
        namespace, name = key
        attempt = 0
        while True:
            try:
                await step()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s %s/%s failed, requeued: %r", kind, namespace, name, exc)
                self.state.record(namespace, name, f"{what} failed: {exc!r}; requeued")
            await asyncio.sleep(backoff(attempt, cap=5.0))
            attempt += 1

    async def ensure_finalizer(self, obj: JSON) -> None:
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if self.finalizer in finalizers:
            return
        await self.kube.merge_patch(
            self.path(meta["namespace"], meta["name"]),
            {
                "metadata": {
                    "finalizers": finalizers + [self.finalizer],
                    "resourceVersion": meta["resourceVersion"],
                }
            },
        )

    async def remove_finalizer(self, namespace: str, name: str) -> None:
        while True:
            current = await self.kube.get_or_none(self.path(namespace, name))
            if current is None:
                return
            meta = current["metadata"]
            rest = [f for f in meta.get("finalizers") or [] if f != self.finalizer]
            try:
                await self.kube.merge_patch(
                    self.path(namespace, name),
                    {"metadata": {"finalizers": rest, "resourceVersion": meta["resourceVersion"]}},
                )
                self.state.record(namespace, name, "finalizer removed")
                return
            except KubeError as exc:
                if exc.status not in (404, 409):
                    raise

    async def patch_status(self, path: str, status: JSON) -> None:
        await self.kube.merge_patch(path + "/status", {"status": status})

    async def missing_secrets(self, namespace: str, names: list[str]) -> list[str]:
        missing = []
        for name in names:
            if (
                await self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
                is None
            ):
                missing.append(name)
        return missing

    async def create_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        containers: list[JSON],
        *,
        missing_secret: str | None = None,
        crash: str | None = None,
    ) -> None:
        """A pod for the fake kubelet: Running after ``delays.pod_start``, or broken.

        ``missing_secret``: the kubelet cannot build the environment
        (CreateContainerConfigError, as when the Hugging Face token Secret is absent).
        ``crash``: the container exits at once with this line in its log.
        """
        delays = self.state.faults.delays
        annotations = {
            "fake-kubelet/delay": go_duration(delays.pod_start),
            "fake-kubelet/termination-delay": go_duration(delays.pod_termination),
        }
        if missing_secret:
            # Waiting in ContainerCreating until ``show_config_error`` shows why it stays.
            annotations["fake-kubelet/phase"] = "Pending"
        elif crash:
            # Waiting in ContainerCreating until ``show_crash`` moves it to CrashLoopBackOff.
            annotations.update({"fake-kubelet/phase": "Pending", "fake-kubelet/log": crash})
        pod = await self.kube.create(
            f"/api/v1/namespaces/{namespace}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": annotations,
                },
                "spec": {"containers": containers, "terminationGracePeriodSeconds": 30},
            },
        )
        if pod is not None and missing_secret:
            await self.show_config_error(namespace, name, missing_secret)

    async def show_config_error(self, namespace: str, name: str, secret: str) -> JSON | None:
        """Show the pod ``name`` unable to start for want of the Secret ``secret``, as a
        kubelet does when it cannot build a container's environment: one status write with
        the container waiting in CreateContainerConfigError and the API's error as its
        message (``secret "NAME" not found``), then the container start's event, ``Error:``
        and that message. Written as :meth:`show_pull_failure` writes its states (the test
        cluster's fake kubelet gives an annotated reason no message). Returns the pod as
        written (None if it went first).
        """
        pod = await self._settled(namespace, name)
        if pod is None:
            return None
        message = f'secret "{secret}" not found'
        patch = partial(_waiting, reason="CreateContainerConfigError", message=message)
        written = await self._write_status(namespace, name, patch)
        if written is not None:
            container = written["spec"]["containers"][0]["name"]
            await self.event(written, "Failed", f"Error: {message}", container)
        return written

    async def show_crash(self, namespace: str, name: str, line: str) -> JSON | None:
        """Show the pod ``name`` crash-looping, as a kubelet does: Running, not ready, its
        container in CrashLoopBackOff with its restarts and the last termination (``line``
        its message), then a BackOff event. Returns the pod as written (None if it went
        first).

        A kubelet reports CrashLoopBackOff only for a container that has exited and been
        restarted, and the waiting reason, the restart count and the last termination
        arrive in one status write: no one ever sees the back-off with no restart. The
        stand-ins once let the fake kubelet show the reason (with the restart count 0 it
        knows nothing better of) and added the restarts after, and a waiter fast enough to
        collect diagnostics in between reported a crash loop without restarts.

        So the pod is created waiting in ContainerCreating (``create_pod``), and once the
        fake kubelet has bound it and written that state, one write of pods/status brings
        the crash-loop state and the kubelet's ``fake-kubelet/waiting-reason`` annotation
        together. The annotation must move in the same write: the fake kubelet rewrites a
        pod annotated Pending whose waiting reason differs from the annotation's (to a
        fresh Pending status, restart count 0) whatever phase the pod shows, so the
        annotation moved before would bring that state back and moved after would be too
        late. pods/status takes metadata changes as
        kube-apiserver's does (only the spec is kept from before). Waiting for the written
        ContainerCreating state first keeps the node binding before the crash, as on a
        node, and a kubelet write still under way when ours lands conflicts and is retried
        from the pod as it now is, which agrees with the annotation and is left alone.
        """
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"

        async def crash() -> JSON:
            pod = await self.wait_pod(namespace, name, kubelet_settled, 300.0)
            return await self.kube.merge_patch(f"{path}/status", _crash_loop(pod, line))

        written = await self._retried(namespace, name, "crash loop", crash)
        if written is None:
            return None
        container = written["spec"]["containers"][0]["name"]
        await self.event(
            written,
            "BackOff",
            f"Back-off restarting failed container {container} in pod "
            f"{name}_{namespace}({written['metadata']['uid']})",
            container,
        )
        return written

    async def show_pull_failure(
        self, namespace: str, name: str, record: Callable[[str], None]
    ) -> JSON | None:
        """Show the pod ``name`` failing to pull its image, as a kubelet does: the pull
        begun (``Pulling``), failed (waiting ``ErrImagePull`` with the runtime's error, its
        ``Failed`` events), and after ``delays.image_pull_backoff`` backed off (waiting
        ``ImagePullBackOff``, a ``BackOff`` event and ``Error: ImagePullBackOff``), each
        state in one status write with its events after it (words: ``kubeapi._images``).
        ``record`` is told each reason once its events are written. A kubelet goes on
        retrying, ever more slowly; the pod stays in the back-off here. Returns the pod
        as last written (None if it went first).

        As with :meth:`show_crash`, the pod is created waiting in ContainerCreating, and
        the waiting reason and the fake kubelet's ``fake-kubelet/waiting-reason``
        annotation move together in one write of pods/status, on both backends: the test
        cluster's fake kubelet writes an annotated reason with no message and no events,
        where a kubelet's diagnostics are in exactly those.
        """
        pod = await self._settled(namespace, name)
        if pod is None:
            return None
        container = pod["spec"]["containers"][0]
        image = container.get("image", "")
        await self.event(pod, "Pulling", f'Pulling image "{image}"', container["name"], "Normal")
        for reason in (ERR_IMAGE_PULL, IMAGE_PULL_BACK_OFF):
            if reason == IMAGE_PULL_BACK_OFF:
                await self.state.wait_delay("image_pull_backoff", time.monotonic())
            written = await self._write_status(
                namespace, name, partial(_pull_failure, reason=reason)
            )
            if written is None:
                return None
            for type_, why, message in pull_events(reason, image):
                await self.event(written, why, message, container["name"], type_)
            record(reason)
            pod = written
        return pod

    async def show_pull_rate_limited(
        self, namespace: str, name: str, record: Callable[[str], None]
    ) -> JSON | None:
        """Show the pod ``name``'s pull refused by a registry's rate limit until the
        ``image_pull_rate_limited`` fault is lifted, then the kubelet's next try under way:
        waiting ``ErrImagePull`` with containerd's 429 ``toomanyrequests`` error and its
        ``Failed`` events, after ``delays.image_pull_backoff`` (read once) backed off, and
        once lifted ``Pulling`` again in ContainerCreating, where the pod's hold can be
        released as on a healthy pull. ``record`` is told each reason once its events are
        written. Returns the pod as last written (None if it went first).

        The states are written as :meth:`show_pull_failure` writes them (the waiting
        reason and the fake kubelet's annotation in one write of pods/status).
        """
        pod = await self._settled(namespace, name)
        if pod is None:
            return None
        container = pod["spec"]["containers"][0]
        cname, image = container["name"], container.get("image", "")
        refused = rate_limited_error(image)
        written = await self._write_status(
            namespace, name, partial(_waiting, reason=ERR_IMAGE_PULL, message=refused)
        )
        if written is None:
            return None
        await self.event(written, "Failed", f'Failed to pull image "{image}": {refused}', cname)
        await self.event(written, "Failed", f"Error: {ERR_IMAGE_PULL}", cname)
        record(ERR_IMAGE_PULL)
        lifted = asyncio.ensure_future(self.state.until(lambda f: not f.image_pull_rate_limited))
        try:
            try:
                async with asyncio.timeout(self.state.faults.delays.image_pull_backoff):
                    await asyncio.shield(lifted)
            except TimeoutError:
                message = back_off_message(image)
                written = await self._write_status(
                    namespace, name, partial(_waiting, reason=IMAGE_PULL_BACK_OFF, message=message)
                )
                if written is None:
                    return None
                await self.event(written, "BackOff", message, cname, "Normal")
                await self.event(written, "Failed", f"Error: {IMAGE_PULL_BACK_OFF}", cname)
                record(IMAGE_PULL_BACK_OFF)
                await lifted
        finally:
            lifted.cancel()
        written = await self._write_status(
            namespace, name, partial(_waiting, reason="ContainerCreating", message="")
        )
        if written is not None:
            await self.event(written, "Pulling", f'Pulling image "{image}"', cname, "Normal")
            record("ContainerCreating")
        return written

    async def _settled(self, namespace: str, name: str) -> JSON | None:
        """The pod once the fake kubelet has bound it and written it in ContainerCreating
        (None if it went first)."""
        return await self._retried(
            namespace,
            name,
            "settling",
            lambda: self.wait_pod(namespace, name, kubelet_settled, 300.0),
        )

    async def _write_status(
        self, namespace: str, name: str, patch: Callable[[JSON], JSON]
    ) -> JSON | None:
        """Merge ``patch(pod)`` into the pod's status, from the pod as it now is; retried
        (a kubelet write in between conflicts on the resourceVersion). None: the pod went."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"

        async def write() -> JSON:
            return await self.kube.merge_patch(f"{path}/status", patch(await self.kube.get(path)))

        return await self._retried(namespace, name, "status", write)

    async def _retried(
        self, namespace: str, name: str, what: str, step: Callable[[], Awaitable[JSON]]
    ) -> JSON | None:
        """``step``'s result, tried again after any failure (a conflict with a kubelet
        write, a watch that broke, a server restarting) until it succeeds; None once the
        pod is gone (a 404), as a kubelet stops writing a deleted pod's state."""
        attempt = 0
        while True:
            try:
                return await step()
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                if exc.status == 404:
                    return None
                log.debug("pod %s/%s %s: %s", namespace, name, what, exc)
            except Exception as exc:
                log.debug("pod %s/%s %s: %r", namespace, name, what, exc)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def create_service(
        self,
        namespace: str,
        name: str,
        selector: dict[str, str],
        ports: list[JSON],
        *,
        labels: dict[str, str] | None = None,
        proxy_to: str | None = None,
    ) -> None:
        metadata: JSON = {"name": name, "namespace": namespace}
        if labels is None or labels:
            metadata["labels"] = selector if labels is None else labels
        if proxy_to:
            metadata["annotations"] = {"fake-kubelet/proxy-to": proxy_to}
        await self.kube.create(
            f"/api/v1/namespaces/{namespace}/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata,
                "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
            },
        )

    async def list_pods(self, namespace: str, selector: str) -> list[JSON]:
        listing = await self.kube.get(
            f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector}
        )
        return list(listing.get("items", []))

    async def wait_pod(
        self, namespace: str, name: str, predicate: Callable[[JSON], bool], timeout: float = 120.0
    ) -> JSON:
        """Watch the pod ``name`` until it satisfies ``predicate``; return it."""
        pods = await self.wait_pods(
            namespace,
            "",
            lambda pods: any(predicate(p) for p in pods),
            timeout,
            field_selector=f"metadata.name={name}",
        )
        return next(p for p in pods if predicate(p))

    async def wait_pods(
        self,
        namespace: str,
        selector: str,
        predicate: Callable[[list[JSON]], bool],
        timeout: float = 300.0,
        field_selector: str = "",
    ) -> list[JSON]:
        """Watch the pods of ``selector`` until their set satisfies ``predicate``."""
        collection = f"/api/v1/namespaces/{namespace}/pods"
        query = {"labelSelector": selector} if selector else {"fieldSelector": field_selector}

        async def _wait() -> list[JSON]:
            while True:
                listing = await self.kube.get(collection, query)
                pods = {p["metadata"]["name"]: p for p in listing.get("items", [])}
                if predicate(list(pods.values())):
                    return list(pods.values())
                try:
                    async for event in self.kube.watch(
                        collection, query, listing["metadata"].get("resourceVersion")
                    ):
                        obj = event["object"]
                        name = obj.get("metadata", {}).get("name")
                        if event["type"] in ("ADDED", "MODIFIED"):
                            pods[name] = obj
                        elif event["type"] == "DELETED":
                            pods.pop(name, None)
                        else:
                            continue
                        if predicate(list(pods.values())):
                            return list(pods.values())
                except Gone:
                    continue

        async with asyncio.timeout(timeout):  # not wait_for: see Kube.wait_gone
            return await _wait()

    async def delete_pods(self, namespace: str, selector: str) -> None:
        """Delete the pods of ``selector`` and wait until the kubelet has let them go."""
        for pod in await self.list_pods(namespace, selector):
            await self.kube.delete(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}")
        await self.wait_pods(namespace, selector, lambda pods: not pods)

    async def probe(self, upstream: str) -> None:
        """The model server answers /health (what a readiness probe would check)."""
        if self._probes is None or self._probes.closed:
            self._probes = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._probes.get(f"{upstream}/health") as resp:
            if resp.status != 200:
                raise RuntimeError(f"model server /health answered {resp.status}")

    async def event(
        self, obj: JSON, reason: str, message: str, container: str = "", type_: str = "Warning"
    ) -> None:
        """An event about ``obj`` (a pod: from the kubelet on its node, else from this operator)."""
        meta = obj["metadata"]
        kind = obj.get("kind", "Pod")
        stamp = now()
        involved: JSON = {
            "apiVersion": obj.get("apiVersion", "v1"),
            "kind": kind,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        component = "kubelet" if kind == "Pod" else self.label
        source: JSON = {"component": component}
        if kind == "Pod":
            source["host"] = obj.get("spec", {}).get("nodeName", "")
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
                    "involvedObject": involved,
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "count": 1,
                    "source": source,
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "reportingComponent": component,
                },
            )
        except KubeError as exc:
            log.debug("event: %s", exc)


_background: set[asyncio.Task[None]] = set()


#: How long a cancelled task may take to end before it is cancelled again (see ``cancel``).
CANCEL_AGAIN_AFTER = 1.0


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and return once every one has ended.

    A task can lose a cancellation: on Python 3.11, ``asyncio.wait_for`` returns what it
    waited for instead of raising when the cancel lands in the loop iteration in which
    that completed, and the task carries on as if never asked. A bring-up that lost its
    cancel when its Workspace was deleted would carry on (waiting for a pod the cleanup
    had deleted, requeued for ever), and the teardown waiting behind this call would
    never begin: the Workspace would keep its finalizer for good. So a task still running
    ``CANCEL_AGAIN_AFTER`` seconds after a cancel is cancelled again (as anyio's cancel
    scopes cancel each await until the task is out), for as long as it runs.
    """
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN_AFTER)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a task that failed as it ended is not news
        for task in pending:
            log.warning("%s outlived its cancellation: cancelled again", task.get_name())


#: Restarts a crash-looping container has behind it when it is shown (a kubelet's back-off
#: reaches 40 s at the third).
CRASH_RESTARTS = 3
#: How long the instance that crashed last ran before it exited.
CRASH_RAN_FOR = timedelta(seconds=2)


def _crash_loop(pod: JSON, line: str) -> JSON:
    """The pods/status merge patch that puts ``pod``'s first container in CrashLoopBackOff,
    in the shape a kubelet writes it.

    The pod is ``Running``: its containers were all created and one is restarting, and a
    kubelet keeps such a pod Running under restartPolicy Always (its phase rules count a
    container waiting with a last termination as one that ran; only Pending pods have
    never started one). Not ready: the Ready and ContainersReady conditions are False
    with ContainersNotReady, naming the container. The container carries the image and
    container IDs of the instance that ran, ``restartCount`` above 0, and that instance
    in ``lastState.terminated`` (exit code 1, Error, when it started and exited, ``line``
    its message), all in the write that brings the waiting reason.
    """
    meta, container = pod["metadata"], pod["spec"]["containers"][0]
    name = container["name"]
    message = (
        f"back-off 40s restarting failed container={name} "
        f"pod={meta['name']}_{meta['namespace']}({meta['uid']})"
    )
    finished = datetime.now(UTC)
    container_id = f"fake://{meta['uid']}/{name}"
    conditions = _not_ready(pod, name)
    return {
        "metadata": {
            "annotations": {"fake-kubelet/waiting-reason": "CrashLoopBackOff"},
            # The write is for the ContainerCreating state waited for: the container
            # crashes after it was being created, never before.
            "resourceVersion": meta["resourceVersion"],
        },
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": name,
                    "image": container.get("image", ""),
                    "imageID": container.get("image", ""),
                    "containerID": container_id,
                    "ready": False,
                    "started": False,
                    "restartCount": CRASH_RESTARTS,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": message}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": line,
                            "startedAt": _stamp(finished - CRASH_RAN_FOR),
                            "finishedAt": _stamp(finished),
                            "containerID": container_id,
                        }
                    },
                }
            ],
        },
    }


def _not_ready(pod: JSON, container: str) -> list[JSON]:
    """The pod's conditions with Ready and ContainersReady False, as a kubelet writes them
    for a pod whose ``container`` is not ready."""
    not_ready = {
        "status": "False",
        "reason": "ContainersNotReady",
        "message": f"containers with unready status: [{container}]",
    }
    return [
        {**cond, **not_ready} if cond.get("type") in ("Ready", "ContainersReady") else cond
        for cond in (pod.get("status") or {}).get("conditions") or []
    ]


def _pull_failure(pod: JSON, reason: str) -> JSON:
    """The pods/status merge patch that shows ``pod``'s first container waiting for its
    image with ``reason`` (ErrImagePull, ImagePullBackOff), in the kubelet's words."""
    image = pod["spec"]["containers"][0].get("image", "")
    return _waiting(pod, reason, waiting_message(reason, image))


def _waiting(pod: JSON, reason: str, message: str) -> JSON:
    """The pods/status merge patch that shows ``pod``'s first container waiting to start
    with ``reason`` and ``message``, in the shape a kubelet writes: Pending, not ready,
    never started, no container or image ID (nothing ran), and the fake kubelet's
    annotation for the reason in the same write."""
    meta, container = pod["metadata"], pod["spec"]["containers"][0]
    name, image = container["name"], container.get("image", "")
    return {
        "metadata": {
            "annotations": {"fake-kubelet/waiting-reason": reason},
            "resourceVersion": meta["resourceVersion"],
        },
        "status": {
            "phase": "Pending",
            "conditions": _not_ready(pod, name),
            "containerStatuses": [
                {
                    "name": name,
                    "image": image,
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {"reason": reason, **({"message": message} if message else {})}
                    },
                    "lastState": {},
                }
            ],
        },
    }


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(ctype: str, status: bool, reason: str, message: str, generation: int = 1) -> JSON:
    return {
        "type": ctype,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now(),
        "observedGeneration": generation,
    }
