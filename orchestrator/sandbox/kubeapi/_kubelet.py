"""A fake kubelet driving pods through their lifecycle, honouring the test cluster's annotations.

It reacts to store events (no polling): each pod change schedules one look at
the fresh pod on the event loop; delays are loop timers.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from typing import Any

from ._clone import clone
from ._errors import ApiError
from ._images import PULL_REASONS, pull_events, waiting_message
from ._logs import PodLogs, container_status
from ._resources import ResourceType
from ._store import Event, Store, now_rfc3339

ANN_PHASE = "fake-kubelet/phase"
ANN_EXIT_CODE = "fake-kubelet/exit-code"
ANN_DELAY = "fake-kubelet/delay"
ANN_WAITING = "fake-kubelet/waiting-reason"
ANN_TERM_DELAY = "fake-kubelet/termination-delay"

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | None) -> float:
    """Go's time.ParseDuration, in seconds; anything unparsable counts as 0 (as the test cluster ignores it)."""
    if not text:
        return 0.0
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(body):
        if m.start() != pos:
            return 0.0
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or pos == 0:
        return 0.0
    return sign * total


def node_ip(node: str) -> str:
    m = re.fullmatch(r"fake-node-(\d+)", node)
    if not m:
        return "10.0.255.1"
    i = int(m.group(1))
    return f"10.0.{i // 250}.{i % 250 + 1}"


def _wanted_phase(pod: dict[str, Any]) -> str:
    value = _annotations(pod).get(ANN_PHASE, "")
    if value in ("Succeeded", "Failed"):
        return value
    if value in ("Pending", "Unschedulable"):
        return "Pending"
    return "Running"


def _annotations(pod: dict[str, Any]) -> dict[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def _waiting_reason(pod: dict[str, Any]) -> str:
    return _annotations(pod).get(ANN_WAITING) or "ContainerCreating"


def _first_waiting_reason(pod: dict[str, Any]) -> str | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return None
    return ((statuses[0].get("state") or {}).get("waiting") or {}).get("reason")


def _pod_ref(pod: dict[str, Any]) -> str:
    """A pod as the kubelet names it in its messages: ``NAME_NAMESPACE(UID)``."""
    meta = pod["metadata"]
    return f"{meta['name']}_{meta['namespace']}({meta.get('uid', '')})"


def _crash_loop(pod: dict[str, Any], container: dict[str, Any], now: str) -> dict[str, Any]:
    """A container's status fields as a kubelet writes them once it has exited, been
    restarted and exited again, and waits out its first back-off: waiting in
    CrashLoopBackOff with one restart and, in the same write, the instance that ended
    in ``lastState`` (the ``fake-kubelet/exit-code`` annotation's code, else 1)."""
    meta, name = pod["metadata"], container["name"]
    try:
        code = int(_annotations(pod).get(ANN_EXIT_CODE) or 1)
    except ValueError:
        code = 1
    container_id = f"fake://{meta['uid']}/{name}"
    return {
        "state": {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off 10s restarting failed container={name} pod={_pod_ref(pod)}",
            }
        },
        "lastState": {
            "terminated": {
                "exitCode": code,
                "reason": "Error" if code else "Completed",
                "startedAt": now,
                "finishedAt": now,
                "containerID": container_id,
            }
        },
        "restartCount": 1,
        "started": False,
        "imageID": container.get("image", ""),
        "containerID": container_id,
    }


class FakeKubelet:
    def __init__(
        self,
        store: Store,
        types: dict[str, ResourceType],
        logs: PodLogs,
        nodes: int = 2,
        gpus: int = 8,
    ) -> None:
        self._store = store
        self._pods = types["pods"]
        self._events = types["events"]
        self._nodes_rt = types["nodes"]
        self._logs = logs
        self._nodes = nodes
        self._gpus = gpus
        self._ip_counter = 0
        self._event_counter = 0
        self._inflight: set[str] = set()
        self._terminating: set[str] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._create_nodes()
        self._store.add_listener(self._on_event)

    def stop(self) -> None:
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        self._loop = None

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        if self._loop is None:
            return

        def run() -> None:
            self._timers.discard(handle)
            fn(*args)

        handle = self._loop.call_later(max(delay, 0.0), run)
        self._timers.add(handle)

    def _create_nodes(self) -> None:
        for i in range(self._nodes):
            name = f"fake-node-{i}"
            capacity = {"cpu": "32", "memory": "256Gi", "pods": "110"}
            if self._gpus:
                capacity["nvidia.com/gpu"] = str(self._gpus)
            now = now_rfc3339()
            node = {
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "fake-kubelet",
                    },
                },
                "spec": {},
            }
            created = self._store.create(self._nodes_rt, "", node)
            created["status"] = {
                "capacity": capacity,
                "allocatable": dict(capacity),
                "phase": "Running",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "fake kubelet is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": node_ip(name)},
                    {"type": "Hostname", "address": name},
                ],
                "nodeInfo": {
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kernelVersion": "",
                    "osImage": "",
                    "containerRuntimeVersion": "",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            }
            self._store.update(self._nodes_rt, "", name, created, status_only=True)

    # -- reacting to pods ----------------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        if ev.key != self._pods.key:
            return
        meta = ev.obj["metadata"]
        if ev.type == "DELETED":
            self._later(60.0, self._logs.forget, meta["uid"])
            return
        self._logs.observe(ev.old, ev.obj)
        if self._loop is not None:
            self._loop.call_soon(self._handle, meta["namespace"], meta["name"], meta["uid"])

    def _fresh(self, ns: str, name: str, uid: str) -> dict[str, Any] | None:
        pod = self._store.peek(self._pods, ns, name)
        if pod is None or pod["metadata"].get("uid") != uid:
            return None
        return clone(pod)

    def _handle(self, ns: str, name: str, uid: str) -> None:
        pod = self._fresh(ns, name, uid)
        if pod is None or self._loop is None:
            return
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            if meta.get("deletionGracePeriodSeconds") == 0 or uid in self._terminating:
                return
            self._terminating.add(uid)
            self._begin_termination(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return
        want = _wanted_phase(pod)
        node = (pod.get("spec") or {}).get("nodeName")
        if _annotations(pod).get(ANN_PHASE) == "Unschedulable":
            if node or any(
                c.get("type") == "PodScheduled"
                for c in (pod.get("status") or {}).get("conditions") or []
            ):
                return
        elif want == "Pending":
            if node and _first_waiting_reason(pod) == _waiting_reason(pod):
                return
        elif phase == want:
            return
        if uid in self._inflight:
            return
        self._inflight.add(uid)
        try:
            self._drive(pod, want)
        except ApiError:
            self._inflight.discard(uid)

    def _write(self, pod: dict[str, Any], *, status: bool) -> dict[str, Any]:
        meta = pod["metadata"]
        return self._store.update(
            self._pods, meta["namespace"], meta["name"], pod, status_only=status
        )

    def _drive(self, pod: dict[str, Any], want: str) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        if _annotations(pod).get(ANN_PHASE) == "Unschedulable":
            msg = (
                f"0/{self._nodes} nodes are available: {self._nodes} node(s) didn't match "
                "the fake-kubelet/phase=Unschedulable annotation."
            )
            pod.setdefault("status", {})["conditions"] = [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": msg,
                    "lastProbeTime": None,
                    "lastTransitionTime": now_rfc3339(),
                }
            ]
            pod = self._write(pod, status=True)
            self._event(pod, "", "Warning", "FailedScheduling", msg, "default-scheduler")
            self._inflight.discard(uid)
            return
        if not pod.setdefault("spec", {}).get("nodeName"):
            node = f"fake-node-{zlib.crc32(f'{ns}/{name}'.encode()) % max(self._nodes, 1)}"
            pod["spec"]["nodeName"] = node
            pod = self._write(pod, status=False)
            self._event(
                pod,
                "",
                "Normal",
                "Scheduled",
                f"Successfully assigned {ns}/{name} to {node}",
                "default-scheduler",
            )
        if want == "Pending":
            reason = _waiting_reason(pod)
            if _first_waiting_reason(pod) != reason:
                pod["status"] = self._pod_status(pod, "Pending")
                pod = self._write(pod, status=True)
                self._warn_waiting(pod, reason)
            self._inflight.discard(uid)
            return
        if not (pod.get("status") or {}).get("containerStatuses"):
            pod["status"] = self._pod_status(pod, "Pending")
            pod = self._write(pod, status=True)
        delay = parse_duration(_annotations(pod).get(ANN_DELAY))
        if delay > 0:
            self._later(delay, self._finish_start, ns, name, uid, want)
        else:
            self._finish_start(ns, name, uid, want)

    def _finish_start(self, ns: str, name: str, uid: str, want: str) -> None:
        try:
            pod = self._fresh(ns, name, uid)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in (want, "Succeeded", "Failed"):
                return
            started = [
                c
                for c in pod["spec"].get("containers") or []
                if "running" not in ((container_status(pod, c["name"]) or {}).get("state") or {})
            ]
            pod["status"] = self._pod_status(pod, want)
            pod = self._write(pod, status=True)
            for c in started:
                fp = f"spec.containers{{{c['name']}}}"
                self._event(
                    pod,
                    fp,
                    "Normal",
                    "Pulled",
                    f'Container image "{c.get("image", "")}" already present on machine',
                    "kubelet",
                )
                self._event(
                    pod, fp, "Normal", "Created", f"Created container: {c['name']}", "kubelet"
                )
                self._event(
                    pod, fp, "Normal", "Started", f"Started container {c['name']}", "kubelet"
                )
        except ApiError:
            pass
        finally:
            self._inflight.discard(uid)
            if self._loop is not None:
                self._loop.call_soon(self._handle, ns, name, uid)

    def _warn_waiting(self, pod: dict[str, Any], reason: str) -> None:
        """What a real kubelet reports for a container stuck waiting (the test cluster stays
        silent): for an image pull, the image manager's and the container start's events in
        a kubelet's words (``_images``)."""
        if reason == "ContainerCreating":
            return
        for c in pod["spec"].get("containers") or []:
            fp = f"spec.containers{{{c['name']}}}"
            image = c.get("image", "")
            if reason in PULL_REASONS:
                # A kubelet gets to a back-off through a failed pull: the whole story.
                self._event(pod, fp, "Normal", "Pulling", f'Pulling image "{image}"', "kubelet")
                for step in PULL_REASONS[: PULL_REASONS.index(reason) + 1]:
                    for type_, why, message in pull_events(step, image):
                        self._event(pod, fp, type_, why, message, "kubelet")
            elif reason == "CrashLoopBackOff":
                self._event(
                    pod,
                    fp,
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {c['name']} in pod {_pod_ref(pod)}",
                    "kubelet",
                )
            else:
                self._event(pod, fp, "Warning", "Failed", f"Error: {reason}", "kubelet")

    def _pod_status(self, pod: dict[str, Any], phase: str) -> dict[str, Any]:
        """The status for ``phase``; "Pending" with the waiting reason CrashLoopBackOff is a
        container that ran, exited and is backing off, which a kubelet shows Running (see
        ``_crash_loop``), where the test cluster's fake kubelet writes Pending with no
        restart, a shape no kubelet writes."""
        now = now_rfc3339()
        crash_loop = phase == "Pending" and _waiting_reason(pod) == "CrashLoopBackOff"
        if crash_loop:
            phase = "Running"
        old = pod.get("status") or {}
        node = pod["spec"].get("nodeName", "")
        pod_ip = old.get("podIP")
        if not pod_ip:
            self._ip_counter += 1
            i = self._ip_counter
            pod_ip = f"10.244.{(i // 250) % 250}.{i % 250 + 1}"
        ready, not_ready = "True", ""
        if phase == "Pending" or crash_loop:
            ready, not_ready = "False", "ContainersNotReady"
        elif phase in ("Succeeded", "Failed"):
            ready, not_ready = "False", "PodCompleted"

        def cond(kind: str, status: str, reason: str = "") -> dict[str, Any]:
            c: dict[str, Any] = {
                "type": kind,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
            if reason:
                c["reason"] = reason
            return c

        uid = pod["metadata"]["uid"]
        st: dict[str, Any] = {
            "phase": phase,
            "conditions": [
                cond("PodScheduled", "True"),
                cond("Initialized", "True"),
                cond("ContainersReady", ready, not_ready),
                cond("Ready", ready, not_ready),
            ],
            "hostIP": node_ip(node),
            "hostIPs": [{"ip": node_ip(node)}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": old.get("startTime") or now,
            "qosClass": "BestEffort",
        }
        if phase != "Pending" and pod["spec"].get("initContainers"):
            st["initContainerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": c.get("image", ""),
                    "containerID": f"fake://{uid}/{c['name']}",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": now,
                            "finishedAt": now,
                            "containerID": f"fake://{uid}/{c['name']}",
                        }
                    },
                    "lastState": {},
                }
                for c in pod["spec"]["initContainers"]
            ]
        statuses = []
        for c in pod["spec"].get("containers") or []:
            prev = container_status(pod, c["name"]) or {}
            started_at = ((prev.get("state") or {}).get("running") or {}).get("startedAt") or now
            cs: dict[str, Any] = {
                "name": c["name"],
                "state": {},
                "lastState": {},
                "ready": False,
                "restartCount": 0,
                "image": c.get("image", ""),
                "imageID": "",
            }
            if crash_loop:
                cs.update(_crash_loop(pod, c, now))
            elif phase == "Pending":
                waiting = {"reason": _waiting_reason(pod)}
                if waiting["reason"] in PULL_REASONS:
                    # As a kubelet words it; the test cluster's fake kubelet gives no message.
                    waiting["message"] = waiting_message(waiting["reason"], c.get("image", ""))
                cs["state"] = {"waiting": waiting}
                cs["started"] = False
            else:
                cs["imageID"] = c.get("image", "")
                cs["containerID"] = f"fake://{uid}/{c['name']}"
                if phase == "Running":
                    cs["ready"], cs["started"] = True, True
                    cs["state"] = {"running": {"startedAt": started_at}}
                else:
                    code, reason = 0, "Completed"
                    if phase == "Failed":
                        reason = "Error"
                        try:
                            code = int(_annotations(pod).get(ANN_EXIT_CODE) or 1)
                        except ValueError:
                            code = 1
                    cs["started"] = False
                    cs["state"] = {
                        "terminated": {
                            "exitCode": code,
                            "reason": reason,
                            "startedAt": started_at,
                            "finishedAt": now,
                            "containerID": cs["containerID"],
                        }
                    }
            statuses.append(cs)
        st["containerStatuses"] = statuses
        return st

    # -- graceful deletion -------------------------------------------------------

    def _begin_termination(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        grace = float(meta.get("deletionGracePeriodSeconds") or 0)
        delay = min(max(parse_duration(_annotations(pod).get(ANN_TERM_DELAY)), 0.0), grace)
        for c in pod["spec"].get("containers") or []:
            if "running" in ((container_status(pod, c["name"]) or {}).get("state") or {}):
                self._event(
                    pod,
                    f"spec.containers{{{c['name']}}}",
                    "Normal",
                    "Killing",
                    f"Stopping container {c['name']}",
                    "kubelet",
                )
        self._later(delay, self._finish_termination, meta["namespace"], meta["name"], meta["uid"])

    def _finish_termination(self, ns: str, name: str, uid: str) -> None:
        try:
            pod = self._fresh(ns, name, uid)
            if pod is None:
                return
            now = now_rfc3339()
            status = pod.setdefault("status", {})
            changed, all_zero = False, True
            for cs in status.get("containerStatuses") or []:
                running = (cs.get("state") or {}).get("running")
                if running is not None:
                    cs["state"] = {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": running.get("startedAt"),
                            "finishedAt": now,
                            "containerID": cs.get("containerID", ""),
                        }
                    }
                    cs["ready"], cs["started"], changed = False, False, True
                term = (cs.get("state") or {}).get("terminated")
                if term is None or term.get("exitCode") != 0:
                    all_zero = False
            if changed:
                if status.get("containerStatuses"):
                    status["phase"] = "Succeeded" if all_zero else "Failed"
                for c in status.get("conditions") or []:
                    if c.get("type") in ("Ready", "ContainersReady"):
                        c.update(status="False", reason="PodCompleted", lastTransitionTime=now)
                self._write(pod, status=True)
            self._store.delete(self._pods, ns, name, grace=0, uid=uid)
        except ApiError:
            pass
        finally:
            self._terminating.discard(uid)

    # -- events ----------------------------------------------------------------

    def _event(
        self,
        pod: dict[str, Any],
        field_path: str,
        kind: str,
        reason: str,
        message: str,
        component: str,
    ) -> None:
        meta = pod["metadata"]
        host = pod["spec"].get("nodeName", "") if component == "kubelet" else ""
        now = now_rfc3339()
        self._event_counter += 1
        involved = {
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if field_path:
            involved["fieldPath"] = field_path
        ev = {
            "metadata": {
                "name": f"{meta['name']}.{time.time_ns() + self._event_counter:x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "source": {"component": component, **({"host": host} if host else {})},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": host,
        }
        try:
            self._store.create(self._events, meta["namespace"], ev)
        except ApiError:
            pass
