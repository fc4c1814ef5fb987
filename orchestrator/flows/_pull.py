"""How long the model's image pull took, as the kubelet told it in the pod's events.

On a fresh node the model image is most of a deployment's wait (minutes for a
gigabyte image), and a cached image is the cheapest speed-up a CI job has. So the
flow reports the pull it saw: ``pulled`` with its duration, or ``present`` when the
kubelet found the image on the node. The kubelet's own figure ("Successfully pulled
image X in 2m54.3s") is taken when it gives one, since event timestamps have whole
seconds; otherwise the time from ``Pulling`` to ``Pulled``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_PULLED_IN = re.compile(r'Successfully pulled image "(?P<image>[^"]+)" in (?P<took>[0-9hmsuµn.]+)')
_PRESENT = re.compile(r'Container image "(?P<image>[^"]+)" already present on machine')
_PULLING = re.compile(r'Pulling image "(?P<image>[^"]+)"')
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?)(h|ms|us|µs|ns|m|s)")


@dataclass(frozen=True)
class ImagePull:
    """One image's pull on one pod: ``pulled`` (with ``seconds`` when known) or ``present``."""

    pod: str
    image: str
    state: str
    seconds: float | None = None


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration such as ``2m54.321s`` or ``312ms``; None if it is not one."""
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def image_pulls(events: Iterable[dict[str, Any]], pods: set[str]) -> list[ImagePull]:
    """The pulls of the named pods' images, from their kubelet events, one per pod and image.

    A ``pulled`` outcome wins over ``present`` for the same pod and image (the sandbox's
    kubelet, like a restarted container, may say both).
    """
    pulling: dict[tuple[str, str], datetime] = {}
    found: dict[tuple[str, str], ImagePull] = {}
    for event in sorted(events, key=_when_key):
        pod = _pod_of(event)
        if pod not in pods or event.get("reason") not in ("Pulling", "Pulled"):
            continue
        message = str(event.get("message") or "")
        pull = _pull_of(pod, message, pulling, _when(event))
        if pull is None:
            continue
        key = (pod, pull.image)
        if pull.state == "pulled" or key not in found:
            found[key] = pull
    return list(found.values())


def _pull_of(
    pod: str, message: str, pulling: dict[tuple[str, str], datetime], when: datetime | None
) -> ImagePull | None:
    if (m := _PULLING.search(message)) is not None:
        if when is not None:
            pulling.setdefault((pod, m["image"]), when)
        return None
    if (m := _PULLED_IN.search(message)) is not None:
        seconds = go_duration(m["took"])
        began = pulling.get((pod, m["image"]))
        if seconds is None and began is not None and when is not None:
            seconds = (when - began).total_seconds()
        return ImagePull(pod, m["image"], "pulled", seconds)
    if (m := _PRESENT.search(message)) is not None:
        return ImagePull(pod, m["image"], "present", 0.0)
    return None


def _pod_of(event: dict[str, Any]) -> str:
    involved = event.get("involvedObject") or event.get("regarding") or {}
    return str(involved.get("name") or "") if involved.get("kind", "Pod") == "Pod" else ""


def _when(event: dict[str, Any]) -> datetime | None:
    for key in ("eventTime", "lastTimestamp", "firstTimestamp"):
        value = event.get(key)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


def _when_key(event: dict[str, Any]) -> str:
    when = _when(event)
    return when.isoformat() if when is not None else ""


def summary(pulls: list[ImagePull]) -> dict[str, str]:
    """JUnit properties for the pulls: the longest pull's time, and pulled/present."""
    if not pulls:
        return {"image_pull": "unknown"}
    longest = max(pulls, key=lambda p: p.seconds or 0.0)
    props = {
        "image_pull": "pulled" if any(p.state == "pulled" for p in pulls) else "present",
        "image": longest.image,
    }
    if longest.seconds is not None:
        props["image_pull_seconds"] = f"{longest.seconds:.1f}"
    return props
