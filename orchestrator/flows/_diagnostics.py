"""What a person needs to debug a failed run, written next to the report.

Every collector runs on its own: one that fails (the cluster is gone, a pod
has no log yet) is noted in ``errors.txt`` and the others still run, and none
of them can hide the failure that brought us here. Every file is bounded so
that a crash-looping pod cannot fill a CI runner's disk.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..clients import EVENTS, PODS, ClientError, KubeClient, KubeFoundryClient, Resource
from ..engine import redact

FILE_LIMIT = 1 << 20  # bytes per file
LOG_TAIL = 500


def _bounded(text: str, limit: int = FILE_LIMIT) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    cut = data[-limit:].decode("utf-8", "ignore")
    return f"[... {len(data) - limit} bytes cut ...]\n{cut}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_bounded(redact(text)), encoding="utf-8")


def _safe_name(value: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in value)[:120]


def _event_time(ev: dict[str, Any]) -> str:
    return str(
        ev.get("lastTimestamp")
        or ev.get("eventTime")
        or ev.get("firstTimestamp")
        or ev.get("metadata", {}).get("creationTimestamp")
        or ""
    )


def _event_order(ev: dict[str, Any]) -> tuple[str, int]:
    """Oldest first: by time, then, within one second (a kubelet's events carry whole
    seconds: a failed pull's ``Pulling``, ``Failed`` and ``Error: ErrImagePull`` share one),
    by resourceVersion where it is a number, as etcd's are: a list comes in name order,
    which for generated names is no order at all."""
    version = str((ev.get("metadata") or {}).get("resourceVersion") or "")
    return _event_time(ev), int(version) if version.isdigit() else -1


def _describe_pod(pod: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """The pod as ``kubectl describe pod`` shows it: who, containers, conditions, events."""
    lines = [
        *_pod_header(pod),
        "Containers:",
        *_container_lines(pod),
        "Conditions:",
        *_condition_lines(pod),
        "Events:",
        *_event_lines(pod, events),
    ]
    return "\n".join(lines) + "\n"


def _pod_header(pod: dict[str, Any]) -> list[str]:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {}) or {}
    labels = ", ".join(f"{k}={v}" for k, v in (meta.get("labels") or {}).items())
    lines = [
        f"Name:         {meta.get('name')}",
        f"Namespace:    {meta.get('namespace')}",
        f"Node:         {spec.get('nodeName') or '<none>'}",
        f"Labels:       {labels or '<none>'}",
        f"Status:       {status.get('phase')}{' (deleting)' if meta.get('deletionTimestamp') else ''}",
    ]
    if status.get("reason") or status.get("message"):
        lines.append(
            f"Reason:       {status.get('reason', '')} {status.get('message', '')}".rstrip()
        )
    return lines


def _container_lines(pod: dict[str, Any]) -> list[str]:
    spec, status = pod.get("spec", {}), pod.get("status", {}) or {}
    images = {c.get("name"): c.get("image") for c in spec.get("containers") or []}
    lines = []
    for cs in status.get("containerStatuses") or []:
        lines.append(f"  {cs.get('name')}:")
        lines.append(f"    Image:         {cs.get('image') or images.get(cs.get('name'))}")
        lines += _state_lines(cs)
        lines.append(f"    Ready:         {cs.get('ready')}")
        lines.append(f"    Restart Count: {cs.get('restartCount', 0)}")
    return lines


def _state_lines(cs: dict[str, Any]) -> list[str]:
    """A container's state and last state, each with its details (reason, exit code)."""
    lines = []
    for label, key in (("State", "state"), ("Last State", "lastState")):
        for kind, detail in (cs.get(key) or {}).items():
            extra = ", ".join(f"{k}={v}" for k, v in (detail or {}).items())
            lines.append(f"    {label + ':':<14} {kind.capitalize()} {extra}".rstrip())
    return lines


def _condition_lines(pod: dict[str, Any]) -> list[str]:
    status = pod.get("status", {}) or {}
    return [
        f"  {cond.get('type'):<16} {cond.get('status')} {cond.get('reason') or ''}".rstrip()
        for cond in status.get("conditions") or []
    ]


def _event_lines(pod: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """The events about this pod, oldest first."""
    name = pod.get("metadata", {}).get("name")
    mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
    lines = [
        f"  {_event_time(ev):<22} {ev.get('type', ''):<8} {ev.get('reason', ''):<18} "
        f"{ev.get('message', '')}"
        for ev in sorted(mine, key=_event_order)
    ]
    return lines or ["  <none>"]


async def collect_diagnostics(
    out: Path,
    *,
    kube: KubeClient,
    api: KubeFoundryClient,
    namespace: str,
    deployment: str,
    workload: Resource,
    workload_kind: str = "Workspace",
    log: Callable[[str], None],
) -> None:
    """Write pods, describe, logs, events, the workload and the backend exchanges under ``out``.

    ``workload`` is the custom resource the backend made for ``deployment`` (a KAITO
    Workspace, a RayService, a DynamoGraphDeployment); it is written as
    ``<kind>.json`` (``workspace.json``).
    """
    out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []

    async def step(what: str, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except (ClientError, OSError, ValueError) as exc:
            errors.append(f"{what}: {exc}")

    events: list[dict[str, Any]] = []
    ns_pods: list[dict[str, Any]] = []

    async def all_pods() -> None:
        listing = await kube.list(PODS)
        rows = [f"{'NAMESPACE':<24} {'NAME':<48} {'PHASE':<10} {'READY':<6} RESTARTS"]
        for p in listing.get("items") or []:
            st = p.get("status") or {}
            cs = st.get("containerStatuses") or []
            ready = f"{sum(1 for c in cs if c.get('ready'))}/{len(cs)}"
            restarts = sum(int(c.get("restartCount") or 0) for c in cs)
            rows.append(
                f"{p['metadata'].get('namespace', ''):<24} {p['metadata'].get('name', ''):<48} "
                f"{st.get('phase', ''):<10} {ready:<6} {restarts}"
            )
        _write(out / "pods-all.txt", "\n".join(rows) + "\n")

    async def ns_events() -> None:
        listing = await kube.list(EVENTS, namespace)
        events.extend(sorted(listing.get("items") or [], key=_event_order))
        rows = [
            f"{_event_time(e):<22} {e.get('type', ''):<8} {e.get('reason', ''):<18} "
            f"{(e.get('involvedObject') or {}).get('kind', '')}/"
            f"{(e.get('involvedObject') or {}).get('name', '')}: {e.get('message', '')}"
            for e in events
        ]
        _write(out / "events.txt", "\n".join(rows) + "\n" if rows else "no events\n")

    async def describe() -> None:
        listing = await kube.list(PODS, namespace)
        ns_pods.extend(listing.get("items") or [])
        text = "\n".join(_describe_pod(p, events) for p in ns_pods) or f"no pods in {namespace}\n"
        _write(out / "describe-pods.txt", text)

    async def logs() -> None:
        for pod in ns_pods:
            name = pod["metadata"]["name"]
            status = pod.get("status") or {}
            # Init containers too: one that crash-loops (Init:CrashLoopBackOff) holds the
            # pod back, and its log says why.
            statuses = (status.get("initContainerStatuses") or []) + (
                status.get("containerStatuses") or []
            )
            for cs in statuses:
                container = cs.get("name")
                base = out / "logs" / f"{_safe_name(name)}_{_safe_name(container)}"
                previous = base.with_name(base.name + ".previous.log")
                waiting = (cs.get("state") or {}).get("waiting")
                exited = (cs.get("lastState") or {}).get("terminated")
                if waiting is not None:
                    # No instance runs. A kubelet serves the one that last exited (a
                    # crash loop's) both as the current log and as ``previous``; a fake
                    # kubelet (the test cluster's) answers the current one 400 "waiting
                    # to start". ``previous`` gets that instance from all, asked once.
                    why = (waiting or {}).get("reason", "unknown reason")
                    _write(
                        base.with_suffix(".log"),
                        f"(no running instance: the container is waiting: {why}; "
                        + (
                            f"the one that last exited is in {previous.name})\n"
                            if exited
                            else "none has run yet)\n"
                        ),
                    )
                else:
                    try:
                        text = await kube.pod_log(
                            name, namespace, container=container, tail_lines=LOG_TAIL
                        )
                        _write(base.with_suffix(".log"), text)
                    except ClientError as exc:
                        errors.append(f"logs of {name}/{container}: {exc}")
                if exited:
                    try:
                        text = await kube.pod_log(
                            name, namespace, container=container, tail_lines=LOG_TAIL, previous=True
                        )
                        _write(previous, text)
                    except ClientError as exc:
                        errors.append(f"previous logs of {name}/{container}: {exc}")

    workload_file = out / f"{_safe_name(workload_kind.lower())}.json"

    async def workload_object() -> None:
        try:
            obj = await kube.get(workload, deployment, namespace)
        except ClientError as exc:
            _write(workload_file, json.dumps({"error": str(exc)}, indent=2))
            return
        obj.get("metadata", {}).pop("managedFields", None)
        _write(workload_file, json.dumps(obj, indent=2))

    async def backend() -> None:
        _write(
            out / "backend-exchanges.json", json.dumps(api.journal.to_list(), indent=2, default=str)
        )

    await step("backend exchanges", backend)
    await step("all pods", all_pods)
    await step("events", ns_events)
    await step("describe pods", describe)
    await step("container logs", logs)
    await step(workload_kind, workload_object)
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    if errors:
        _write(out / "errors.txt", f"collected {stamp}\n" + "\n".join(errors) + "\n")
        for e in errors:
            log(f"diagnostics: {e}")
    log(f"diagnostics written to {out}")
