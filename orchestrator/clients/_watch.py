"""Watching a resource without missing a change: list, then watch, forever.

The loop follows the pattern every mature Kubernetes client converges on
(kopf's ``watching.py``, client-go's reflector):

1. **List** first. The listing is the current state, so an object that is
   already in the wanted state is seen at once instead of waiting for a change
   that will never come. Its ``resourceVersion`` is where the watch starts, so
   nothing that happens between the list and the watch is lost.
2. **Watch** from that version. Each event moves the version forward; a
   ``BOOKMARK`` moves it without an object change.
3. A stream that **ends** (the server's ``timeoutSeconds``, a proxy cutting it,
   a restart) is reopened from the last version seen: no relist, no gap.
4. **410 Gone** means the version is older than the server's history: relist,
   and compare with what we knew so that an object deleted while we were away
   is still reported as ``DELETED``.
5. **Flakes** (connection errors, 5xx, and the 429 a CRD answers while its
   watch cache fills right after it is established) are waited out with an
   exponential, jittered backoff, so that a struggling API server is not
   hammered by every watcher at once.

Anything else (403, 404 for a resource type that does not exist) is an answer
and is raised to the caller.
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ._errors import ClientError, HTTPStatusError, ServerError, TooManyRequests, TransportError
from .kube import KubeClient, Resource


@dataclass(frozen=True)
class WatchEvent:
    """A change to one object. ``type`` is ADDED, MODIFIED or DELETED.

    Objects present at the first listing arrive as ADDED too, so a consumer
    needs one code path for "it was already there" and "it just appeared".
    """

    type: str
    object: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.object.get("metadata", {}).get("name", ""))


@dataclass
class Backoff:
    """Exponential backoff with full jitter between reconnects."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    _failures: int = field(default=0, init=False)

    def next_delay(self) -> float:
        self._failures += 1
        cap = min(self.maximum, self.initial * self.factor ** (self._failures - 1))
        return random.uniform(cap / 2, cap)

    def reset(self) -> None:
        self._failures = 0


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def _rv(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("resourceVersion", ""))


class _Gone(Exception):
    """The watch's resourceVersion is too old: relist."""


async def watch(
    client: KubeClient,
    resource: Resource,
    namespace: str | None = None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
    server_timeout: int = 60,
    client_timeout: float | None = None,
    backoff: Backoff | None = None,
    on_note: Callable[[str], None] | None = None,
    on_synced: Callable[[], None] | None = None,
) -> AsyncGenerator[WatchEvent, None]:
    """Yield every change to the matching objects, starting with those that exist now.

    Runs until the caller stops iterating (or cancels): the deadline belongs to
    the caller, which knows which phase it is in. ``on_synced`` is called once the
    events of a (re)listing have all been taken: from then on, what the caller has
    seen is the whole current state, as of the listing.
    """
    backoff = backoff or Backoff()
    note = on_note or (lambda _msg: None)
    known: dict[tuple[str, str], dict[str, Any]] = {}
    version: str | None = None

    while True:
        try:
            if version is None:
                listing = await client.list(
                    resource,
                    namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                )
                version = str(listing.get("metadata", {}).get("resourceVersion") or "") or None
                current = {_key(o): o for o in listing.get("items") or []}
                for key, obj in list(known.items()):
                    if key not in current:
                        del known[key]
                        yield WatchEvent("DELETED", obj)
                for key, obj in current.items():
                    old = known.get(key)
                    if old is None or _rv(old) != _rv(obj):
                        known[key] = obj
                        yield WatchEvent("ADDED" if old is None else "MODIFIED", obj)
                backoff.reset()
                if on_synced is not None:
                    on_synced()

            async for raw in client.watch_stream(
                resource,
                namespace,
                resource_version=version,
                label_selector=label_selector,
                field_selector=field_selector,
                server_timeout=server_timeout,
                client_timeout=client_timeout,
            ):
                kind = raw.get("type")
                obj = raw.get("object") or {}
                if kind == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise _Gone(obj.get("message", "resource version too old"))
                    raise HTTPStatusError(
                        int(code or 500),
                        str(obj.get("message", "watch error")),
                        method="WATCH",
                        path=resource.path(namespace),
                        body=obj,
                    )
                if _rv(obj):
                    version = _rv(obj)
                if kind == "BOOKMARK":
                    continue
                backoff.reset()
                key = _key(obj)
                if kind == "DELETED":
                    known.pop(key, None)
                else:
                    known[key] = obj
                yield WatchEvent(str(kind), obj)
            # A clean end of stream: the server's timeout, or someone cut it. Reopen from
            # where we were; a tiny jitter keeps a server that ends every stream at once
            # from being hit in lockstep.
            await anyio.sleep(random.uniform(0, 0.05))
        except _Gone as exc:
            note(f"watch {resource.plural}: {exc}; relisting")
            version = None
        except HTTPStatusError as exc:
            if exc.status == 410:
                note(f"watch {resource.plural}: 410 Gone; relisting")
                version = None
                continue
            if not isinstance(exc, (ServerError, TooManyRequests)):
                raise
            delay = max(backoff.next_delay(), getattr(exc, "retry_after", None) or 0.0)
            note(f"watch {resource.plural}: {exc.status} {exc.message}; retrying in {delay:.2f} s")
            await anyio.sleep(delay)
        except TransportError as exc:
            delay = backoff.next_delay()
            note(f"watch {resource.plural}: {exc}; reconnecting in {delay:.2f} s")
            await anyio.sleep(delay)


__all__ = ["watch", "WatchEvent", "Backoff", "ClientError"]
