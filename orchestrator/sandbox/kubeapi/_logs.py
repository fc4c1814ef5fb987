"""Synthetic container logs, recorded from pod status changes like the test cluster's fake kubelet."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, cast

Line = tuple[dt.datetime, str]

ANN_LOG = "fake-kubelet/log"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for st in status.get(key) or []:
            if st.get("name") == name:
                return cast(dict[str, Any], st)
    return None


def _started(st: dict[str, Any] | None) -> bool:
    if not st:
        return False
    state = st.get("state") or {}
    return "running" in state or bool((state.get("terminated") or {}).get("startedAt"))


def _terminated(st: dict[str, Any] | None) -> dict[str, Any] | None:
    return ((st or {}).get("state") or {}).get("terminated")


class PodLogs:
    """Per pod UID and container: lines with their time. Followers wait on `changed()`."""

    def __init__(self) -> None:
        self._lines: dict[str, dict[str, list[Line]]] = {}
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._changed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def observe(self, old: dict[str, Any] | None, cur: dict[str, Any]) -> None:
        uid = cur["metadata"]["uid"]
        per = self._lines.setdefault(uid, {})
        now = _utcnow()
        status = cur.get("status") or {}
        statuses = list(status.get("initContainerStatuses") or []) + list(
            status.get("containerStatuses") or []
        )
        for st in statuses:
            before = container_status(old, st["name"]) if old else None
            if _started(st) and not _started(before):
                per.setdefault(st["name"], []).append(
                    (
                        now,
                        f"container {st['name']} started on node {(cur.get('spec') or {}).get('nodeName', '')}",
                    )
                )
        old_phase = ((old or {}).get("status") or {}).get("phase")
        new_phase = status.get("phase")
        if old is not None and old_phase != new_phase and new_phase:
            spec = cur.get("spec") or {}
            for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
                per.setdefault(c["name"], []).append(
                    (now, f"pod phase changed: {old_phase or ''} -> {new_phase}")
                )
        for st in statuses:
            term = _terminated(st)
            before = container_status(old, st["name"]) if old else None
            if term and not _terminated(before):
                per.setdefault(st["name"], []).append(
                    (
                        now,
                        f"container {st['name']} terminated: exit code {term.get('exitCode', 0)} ({term.get('reason', '')})",
                    )
                )
        self._notify()

    def forget(self, uid: str) -> None:
        self._lines.pop(uid, None)

    def lines(self, pod: dict[str, Any], container: str) -> list[Line]:
        """Synthetic lines, then the annotation text (read now, so it always comes last)."""
        out = list(self._lines.get(pod["metadata"]["uid"], {}).get(container, []))
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        text = annotations.get(f"{ANN_LOG}.{container}", annotations.get(ANN_LOG, ""))
        if text:
            st = container_status(pod, container) or {}
            state = st.get("state") or {}
            t = (
                parse_time((state.get("running") or {}).get("startedAt"))
                or parse_time((state.get("terminated") or {}).get("startedAt"))
                or parse_time(pod["metadata"].get("creationTimestamp"))
                or _utcnow()
            )
            if out and out[-1][0] > t:
                t = out[-1][0]
            for s in text.removesuffix("\n").split("\n"):
                out.append((t, s))
        return out


def render(
    lines: list[Line],
    *,
    timestamps: bool = False,
    tail: int | None = None,
    since: dt.datetime | None = None,
    limit_bytes: int | None = None,
) -> bytes:
    if since is not None:
        lines = [ln for ln in lines if ln[0] >= since]
    if tail is not None and tail < len(lines):
        lines = lines[len(lines) - tail :] if tail else []
    parts = []
    for t, s in lines:
        prefix = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") + " " if timestamps else ""
        parts.append(f"{prefix}{s}\n")
    out = "".join(parts).encode()
    if limit_bytes is not None:
        out = out[:limit_bytes]
    return out
