"""Reading pods: will this one ever be ready, is it ready now.

The backend's status of a deployment often lags or hides what its pods show (a
Workspace whose pod cannot pull its image stays ``Pending`` there for ever).
These read the pod objects the cluster sends, so that a wait can end at once
with the pod's own reason instead of running out its deadline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: Container waiting reasons that no amount of waiting will fix (the two pull reasons
#: only when the registry's answer is definitive: see :data:`DEFINITIVE_PULL_ANSWERS`).
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


#: The waiting reasons of a failed image pull, which the kubelet retries with back-off.
PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff"})

#: Words (lower case) of a registry's answer that no retry will change.
#:
#: A kubelet retries a failed pull with back-off, and most failures clear on their own:
#: a rate limit (Docker Hub's 429 ``toomanyrequests`` in CI), a 5xx, an i/o timeout, a
#: reset connection, a TLS handshake timeout. Failing a run at the first ErrImagePull
#: would report those as failures of the system under test. These answers, though, say
#: the image is not there or not ours to pull, and waiting only burns the budget: the
#: wait ends at once on them, and goes on (naming the answer) on any other.
DEFINITIVE_PULL_ANSWERS = (
    "not found",
    "code = notfound",
    "manifest unknown",
    "name unknown",
    "repository does not exist",
    "unauthorized",
    "authentication required",
    "denied",
    "forbidden",
    "invalid reference format",
    "invalidimagename",
    "errimageneverpull",
)


#: What a pull's error quotes rather than says: quoted strings, and words with a ``/``
#: or ``@`` in them (image references, registry URLs, digests).
_QUOTED = re.compile(r'"[^"]*"|\S*[/@]\S*')


def pull_is_definitive(answer: str) -> bool:
    """Whether an image pull's error says a retry cannot succeed (see the list above).

    Only the error's own words count, not the image references and URLs it quotes: an
    image named ``ghcr.io/o/denied-app`` that hits a rate limit is still retried.
    """
    text = _QUOTED.sub(" ", answer).lower()
    return any(word in text for word in DEFINITIVE_PULL_ANSWERS)


class PullErrors:
    """What each container's image pull last failed with, across one wait's pod events.

    ``ImagePullBackOff``'s own message is only ``Back-off pulling image "X"``: whether
    waiting can help is decided by the ``ErrImagePull`` that came before it. A wait keeps
    one of these for its pod events, hands it to :func:`pod_problem`, logs what
    :meth:`new_notes` returns (once per distinct answer), and names :meth:`retrying` in
    its progress, so that a wait that runs out of time still says which pull it was.
    """

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], str] = {}
        self._retrying: dict[tuple[str, str], str] = {}
        self._noted: set[tuple[str, str, str]] = set()
        self._notes: list[str] = []

    def answer(self, pod: str, container: str, reason: str, message: str) -> str | None:
        """The registry's last answer for this container's pull (None if not seen yet)."""
        if reason == "ErrImagePull" and message:
            self._answers[(pod, container)] = message
        return self._answers.get((pod, container))

    def retried(self, pod: str, container: str, image: str, answer: str | None) -> None:
        """Note a pull that the kubelet goes on retrying."""
        what = f"pod {pod} cannot pull image {image} yet (the kubelet retries)"
        self._retrying[(pod, container)] = f"{what}: {answer}" if answer else what
        if answer and (pod, container, answer) not in self._noted:
            self._noted.add((pod, container, answer))
            self._notes.append(self._retrying[(pod, container)])

    def passed(self, pod: str, container: str) -> None:
        """The container is no longer waiting on a pull."""
        self._retrying.pop((pod, container), None)

    def new_notes(self) -> list[str]:
        """The answers not handed out before, in the order they were first seen."""
        notes, self._notes = self._notes, []
        return notes

    def retrying(self) -> str | None:
        """The pull failure a wait is still waiting out, the latest first, if any."""
        return next(reversed(self._retrying.values()), None)


def pod_problem(
    pod: dict[str, Any],
    fatal_reasons: Iterable[str] = FATAL_WAITING_REASONS,
    pulls: PullErrors | None = None,
) -> str | None:
    """Why this pod will never become ready, or None while it still may.

    A pod being deleted has no problem worth reporting (it is going away); otherwise
    the first container stuck for a fatal reason, then a Failed pod, is the reason. A
    failed image pull is fatal only on a definitive answer (:func:`pull_is_definitive`),
    the one its waiting message gives or, for a back-off, the last one ``pulls`` saw.
    """
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    name = meta.get("name", "?")
    pulls = PullErrors() if pulls is None else pulls
    return _fatal_container(pod, name, frozenset(fatal_reasons), pulls) or _failed_pod(pod, name)


def _container_statuses(status: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    return [cs for key in keys for cs in status.get(key) or []]


def _fatal_container(
    pod: dict[str, Any], name: str, fatal: frozenset[str], pulls: PullErrors
) -> str | None:
    """The first (init) container waiting for a reason that will not go away."""
    status = pod.get("status") or {}
    images = {
        c.get("name"): c.get("image") for c in (pod.get("spec") or {}).get("containers") or []
    }
    for cs in _container_statuses(status, "initContainerStatuses", "containerStatuses"):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        container = str(cs.get("name"))
        if reason not in PULL_REASONS:
            pulls.passed(name, container)
        if reason not in fatal:
            continue
        image = cs.get("image") or images.get(cs.get("name")) or "?"
        message = waiting.get("message") or ""
        if reason in PULL_REASONS:
            answer = pulls.answer(name, container, reason, message)
            if answer is None or not pull_is_definitive(answer):
                pulls.retried(name, container, image, answer)
                continue
            message = answer
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
