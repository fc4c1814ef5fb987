"""In-memory object store with one global resourceVersion counter and a bounded event history.

Like etcd behind the watch cache: every write gets the next resourceVersion,
watchers see events in that order, and a watch can resume from any version
still in the history ring (older ones answer 410, as after a compaction).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import string
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _errors as errors
from ._clone import clone
from ._resources import ResourceType
from ._selectors import FieldSelector, LabelSelector
from ._strategy import prepare_create, prepare_update

Obj = dict[str, Any]

# A watcher that falls this far behind is closed; its client re-lists (as with
# a slow consumer of kube-apiserver's watch cache). Keeps memory bounded.
_MAX_PENDING = 10_000


def now_rfc3339(offset_seconds: float = 0) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    rv: int
    key: str
    namespace: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None = None
    #: Selectable fields of ``obj`` and ``old``, computed once for all watchers (many of
    #: the sandbox's own watches select one object by name).
    fields: dict[int, dict[str, str]] = field(default_factory=dict, compare=False, repr=False)


@dataclass(eq=False)
class Watcher:
    """One open watch: events reach it through `queue`; None means the stream must end."""

    key: str
    namespace: str
    labels: LabelSelector
    fields: FieldSelector
    rt: ResourceType
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)

    def offer(self, ev: Event) -> None:
        if ev.key != self.key or (self.namespace and ev.namespace != self.namespace):
            return
        out = self._filtered(ev)
        if out is None:
            return
        if self.queue.qsize() >= _MAX_PENDING:
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(out)

    def _match(self, obj: Obj | None, ev: Event) -> bool:
        if obj is None or not self.labels.matches(obj):
            return False
        if not self.fields.terms:  # most watches select by label only
            return True
        fields = ev.fields.get(id(obj))
        if fields is None:
            fields = ev.fields[id(obj)] = self.rt.fields_of(obj)
        return self.fields.matches(fields)

    def _filtered(self, ev: Event) -> tuple[str, Obj] | None:
        """Selector-aware event type: an object moving out of the selection is DELETED for this watcher."""
        now = self._match(ev.obj, ev)
        if ev.type == "MODIFIED":
            before = self._match(ev.old, ev)
            if now and before:
                return "MODIFIED", ev.obj
            if now:
                return "ADDED", ev.obj
            if before:
                return "DELETED", ev.obj
            return None
        return (ev.type, ev.obj) if now else None


Listener = Callable[[Event], None]


class Store:
    def __init__(self, history: int = 1000) -> None:
        self.rv = 0
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._history: deque[Event] = deque(maxlen=max(1, history))
        self._evicted_rv = 0
        self._watchers: set[Watcher] = set()
        self._listeners: list[Listener] = []

    # -- plumbing --------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """In-process observers (the fake kubelet, CRD registration) see every event synchronously."""
        self._listeners.append(listener)

    def _emit(self, ev: Event) -> None:
        if len(self._history) == self._history.maxlen:
            self._evicted_rv = self._history[0].rv
        self._history.append(ev)
        for w in list(self._watchers):
            w.offer(ev)
        for listener in list(self._listeners):
            listener(ev)

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(rt.key, {})

    def _decorate(self, rt: ResourceType, obj: Obj) -> Obj:
        out = clone(obj)
        out["apiVersion"] = rt.api_version
        out["kind"] = rt.kind
        return out

    # -- reads -----------------------------------------------------------------

    def peek(self, rt: ResourceType, namespace: str, name: str) -> Obj | None:
        """The stored object itself (no copy): for in-process readers that do not mutate it."""
        return self._bucket(rt).get((namespace if rt.namespaced else "", name))

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.peek(rt, namespace, name)
        if obj is None:
            raise errors.not_found(rt.plural, name, rt.group)
        return self._decorate(rt, obj)

    def list(
        self, rt: ResourceType, namespace: str, labels: LabelSelector, fields: FieldSelector
    ) -> tuple[list[Obj], int]:
        items = [
            self._decorate(rt, obj)
            for (ns, _), obj in sorted(self._bucket(rt).items(), key=lambda kv: kv[0])
            if (not namespace or ns == namespace)
            and labels.matches(obj)
            and (not fields.terms or fields.matches(rt.fields_of(obj)))
        ]
        return items, self.rv

    def iter_all(self, rt: ResourceType) -> Iterator[Obj]:
        return iter(list(self._bucket(rt).values()))

    # -- writes ----------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str, obj: Obj) -> Obj:
        obj = clone(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                meta["name"] = meta["generateName"] + suffix
            else:
                raise errors.invalid(
                    rt.kind,
                    "",
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                    rt.group,
                )
        if rt.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        k = (meta.get("namespace", ""), meta["name"])
        bucket = self._bucket(rt)
        if k in bucket:
            raise errors.already_exists(rt.plural, meta["name"], rt.group)
        for drop in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(drop, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        prepare_create(rt, obj)
        obj.pop("apiVersion", None) if rt.group == "" else obj.setdefault(
            "apiVersion", rt.api_version
        )
        obj.pop("kind", None) if rt.group == "" else obj.setdefault("kind", rt.kind)
        meta["resourceVersion"] = str(self._next_rv())
        bucket[k] = obj
        self._emit(Event(self.rv, rt.key, k[0], "ADDED", self._decorate(rt, obj)))
        return self._decorate(rt, obj)

    def update(
        self, rt: ResourceType, namespace: str, name: str, new: Obj, *, status_only: bool = False
    ) -> Obj:
        """PUT semantics: optimistic concurrency on metadata.resourceVersion, no-op writes are not stored."""
        k = (namespace if rt.namespaced else "", name)
        bucket = self._bucket(rt)
        old = bucket.get(k)
        if old is None:
            raise errors.not_found(rt.plural, name, rt.group)
        new = clone(new)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise errors.bad_request("the name of the object does not match the name on the URL")
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.plural, name, rt.group)
        old_meta = old["metadata"]
        for keep in (
            "uid",
            "creationTimestamp",
            "namespace",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if keep in old_meta:
                meta[keep] = old_meta[keep]
            else:
                meta.pop(keep, None)
        meta["name"] = name
        meta["resourceVersion"] = old_meta["resourceVersion"]
        stored = prepare_update(rt, new, old, status_only)
        if rt.group == "":
            stored.pop("apiVersion", None)
            stored.pop("kind", None)
        else:
            stored["apiVersion"], stored["kind"] = old.get("apiVersion", rt.api_version), rt.kind
        if stored == old:
            return self._decorate(rt, old)
        if old_meta.get("deletionTimestamp") and not stored["metadata"].get("finalizers"):
            if rt.key != "/pods" or old_meta.get("deletionGracePeriodSeconds") == 0:
                bucket[k] = stored
                return self._remove(rt, k)
        stored["metadata"]["resourceVersion"] = str(self._next_rv())
        bucket[k] = stored
        self._emit(
            Event(
                self.rv,
                rt.key,
                k[0],
                "MODIFIED",
                self._decorate(rt, stored),
                self._decorate(rt, old),
            )
        )
        return self._decorate(rt, stored)

    def _remove(self, rt: ResourceType, k: tuple[str, str]) -> Obj:
        obj = self._bucket(rt).pop(k)
        obj = clone(obj)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        out = self._decorate(rt, obj)
        self._emit(Event(self.rv, rt.key, k[0], "DELETED", out))
        return out

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        grace: int | None = None,
        uid: str | None = None,
        graceful_pods: bool = True,
    ) -> tuple[Obj, bool]:
        """Returns (object, gone). Pods on a node terminate gracefully; finalizers hold any object back."""
        k = (namespace if rt.namespaced else "", name)
        cur = self._bucket(rt).get(k)
        if cur is None:
            raise errors.not_found(rt.plural, name, rt.group)
        meta = cur["metadata"]
        if uid and uid != meta.get("uid"):
            raise errors.conflict(
                rt.plural,
                name,
                rt.group,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {meta.get('uid')}",
            )
        period = 0
        if rt.key == "/pods" and graceful_pods:
            period = (
                grace
                if grace is not None
                else int((cur.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            )
            phase = (cur.get("status") or {}).get("phase")
            if not (cur.get("spec") or {}).get("nodeName") or phase in ("Succeeded", "Failed"):
                period = 0
            period = max(period, 0)
        if period == 0 and not meta.get("finalizers"):
            return self._remove(rt, k), True
        current = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and current is not None and current <= period:
            return self._decorate(rt, cur), False
        old = clone(cur)
        meta["deletionTimestamp"] = now_rfc3339(period)
        meta["deletionGracePeriodSeconds"] = period
        meta["generation"] = meta.get("generation", 1) + 1
        meta["resourceVersion"] = str(self._next_rv())
        self._emit(
            Event(
                self.rv, rt.key, k[0], "MODIFIED", self._decorate(rt, cur), self._decorate(rt, old)
            )
        )
        return self._decorate(rt, cur), False

    def drop_type(self, rt: ResourceType) -> None:
        """Delete every object of a type (its CRD went away), with DELETED events."""
        for k in sorted(self._bucket(rt)):
            self._remove(rt, k)
        self._objects.pop(rt.key, None)

    # -- watch -----------------------------------------------------------------

    def oldest_resumable(self, rt: ResourceType) -> int:
        return max(rt.created_rv, self._evicted_rv)

    def watch(
        self,
        rt: ResourceType,
        namespace: str,
        since: int | None,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> Watcher:
        """Open a watch: from `since` (events after it) or, without one, the current state as ADDED events."""
        w = Watcher(rt.key, namespace, labels, fields, rt)
        if since is None:
            for obj in self.list(rt, namespace, labels, fields)[0]:
                w.queue.put_nowait(("ADDED", obj))
        else:
            oldest = self.oldest_resumable(rt)
            if since < oldest:
                raise errors.expired(f"too old resource version: {since} ({oldest})")
            for ev in self._history:
                if ev.rv > since:
                    w.offer(ev)
        self._watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        self._watchers.discard(w)

    def close_watchers(self) -> None:
        for w in list(self._watchers):
            w.queue.put_nowait(None)
        self._watchers.clear()
