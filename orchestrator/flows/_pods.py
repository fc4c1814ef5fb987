"""Reading pods: will this one ever be ready, is it ready now.

The backend's status of a deployment often lags or hides what its pods show (a
Workspace whose pod cannot pull its image stays ``Pending`` there for ever).
These read the pod objects the cluster sends, so that a wait can end at once
with the pod's own reason instead of running out its deadline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Container waiting reasons that no amount of waiting will fix.
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def pod_problem(
    pod: dict[str, Any], fatal_reasons: Iterable[str] = FATAL_WAITING_REASONS
) -> str | None:
    """Why this pod will never become ready, or None while it still may.

    A pod being deleted has no problem worth reporting (it is going away); otherwise
    the first container stuck for a fatal reason, then a Failed pod, is the reason.
    """
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    name = meta.get("name", "?")
    return _fatal_container(pod, name, frozenset(fatal_reasons)) or _failed_pod(pod, name)


def _container_statuses(status: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    return [cs for key in keys for cs in status.get(key) or []]


def _fatal_container(pod: dict[str, Any], name: str, fatal: frozenset[str]) -> str | None:
    """The first (init) container waiting for a reason that will not go away."""
    status = pod.get("status") or {}
    images = {
        c.get("name"): c.get("image") for c in (pod.get("spec") or {}).get("containers") or []
    }
    for cs in _container_statuses(status, "initContainerStatuses", "containerStatuses"):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in fatal:
            continue
        image = cs.get("image") or images.get(cs.get("name")) or "?"
        message = waiting.get("message") or ""
        last = (cs.get("lastState") or {}).get("terminated") or {}
        tail = f"; last exit code {last.get('exitCode')}" if last else ""
        return (
            f"pod {name} container {cs.get('name')}: {reason} (image {image})"
            f"{': ' + message if message else ''}{tail}; {NEXT_STEP.get(reason, DESCRIBE)}"
        )
    return None


DESCRIBE = "the pod's description and events, in the diagnostics, say more"
#: What a person does next about a container stuck for that reason.
NEXT_STEP = {
    **dict.fromkeys(
        ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"),
        "check that the image exists and that the nodes can pull it (a private registry "
        "needs an imagePullSecret); the pod's events, in the diagnostics, hold the "
        "registry's answer",
    ),
    **dict.fromkeys(
        ("CrashLoopBackOff", "RunContainerError"),
        "the container keeps exiting: its last log lines are in the diagnostics",
    ),
    **dict.fromkeys(
        ("CreateContainerConfigError", "CreateContainerError"),
        "a Secret, ConfigMap or volume it needs may be missing: the pod's events, in the "
        "diagnostics, name it",
    ),
}


def _failed_pod(pod: dict[str, Any], name: str) -> str | None:
    """A pod in phase Failed, with its reason and the exit codes of its containers."""
    status = pod.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    why = status.get("reason") or status.get("message") or ""
    exits = [
        f"{cs.get('name')} exit code {terminated.get('exitCode')}"
        for cs in _container_statuses(status, "containerStatuses")
        if (terminated := (cs.get("state") or {}).get("terminated"))
    ]
    return f"pod {name} Failed{': ' + why if why else ''}{' (' + ', '.join(exits) + ')' if exits else ''}"


def pod_ready(pod: dict[str, Any]) -> bool:
    """Running, not being deleted, and its Ready condition (or else every container) true."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    statuses = status.get("containerStatuses") or []
    return bool(statuses) and all(cs.get("ready") for cs in statuses)


def is_pod(obj: dict[str, Any]) -> bool:
    """Whether a watched object is a pod (a wait may watch pods and a workload at once)."""
    if "kind" in obj:
        return obj.get("kind") == "Pod"
    return isinstance((obj.get("spec") or {}).get("containers"), list)
