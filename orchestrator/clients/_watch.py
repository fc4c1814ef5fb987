"""Watching a resource without missing a change: list, then watch, forever.

The loop follows the pattern every mature Kubernetes client converges on
(kopf's watcher, client-go's reflector):

1. **List** first. The listing is the current state, so an object that is
   already in the wanted state is seen at once instead of waiting for a change
   that will never come. Its ``resourceVersion`` is where the watch starts, so
   nothing that happens between the list and the watch is lost.
2. **Watch** from that version. Each event moves the version forward; a
   ``BOOKMARK`` moves it without an object change. A watch with no version at
   all (the current objects, then every change, in one stream) would bring an
   event no sooner: the API server's watch cache serves it just as it serves
   this one (upstream k8s.io/apiserver keeps the gate that once sent such
   watches to etcd, ``WatchFromStorageWithoutResourceVersion``, locked off
   since 1.33), and measured side by side its events arrived at the same
   moment or later.
3. A stream that **ends** (the server's ``timeoutSeconds``, a proxy cutting it)
   is reopened from the last version seen: no relist, no gap. So is a stream
   **silent** for longer than the server's own timeout: a half-open connection.
   Streams that end at once without an event, one after another, are reopened after
   a growing pause, so that whatever ends them is not asked again without end.
4. **410 Gone** means the version is older than the server's history: relist,
   and compare with what we knew so that an object deleted while we were away
   is still reported as ``DELETED``.
5. **Flakes** (connection errors, 5xx, the 429 a CRD answers while its watch
   cache fills) are waited out with an exponential, jittered backoff (or the
   server's ``Retry-After``), so a struggling API server is not hammered by
   every watcher at once. A stream that **keeps failing** is relisted: whatever
   state it was in is no longer trusted.
6. **Broken bytes** (a line that is not JSON, an event of the wrong shape) and
   **ERROR events** mean the stream can no longer be trusted either: relist,
   after a backoff. Watching never turns itself off; answers such as 403 or a
   resource type that does not exist yet are retried at the backoff's slowest pace.

The loop never raises for anything the server does: it reports, through
``on_impaired``, when its view may be behind (with the reason) and when it is
whole again, so that a waiter can ask its authority more often meanwhile. It ends
on this side's own close (``KubeClient.aclose``) only: at once, with the
:class:`TransportError` that says the client closed it (``closed_here``), since
every stream or listing it would open after that is refused without a word to the
server.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ._errors import ClientError, HTTPStatusError, ProtocolError, TransportError
from ._retry import NO_RETRY
from .kube import KubeClient, Resource, WatchEvent

#: Consecutive failures of one stream after which it is relisted rather than reopened.
RELIST_AFTER_FAILURES = 3
#: A stream that ends cleanly sooner than this after it opened, without a single event,
#: is a very short one: reopened after a growing pause, not at once (see :func:`watch`).
SHORT_STREAM = 1.0


@dataclass
class Backoff:
    """Exponential backoff with jitter between reconnects."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    _failures: int = field(default=0, init=False)

    @property
    def failures(self) -> int:
        return self._failures

    def next_delay(self) -> float:
        self._failures += 1
        cap = min(self.maximum, self.initial * self.factor ** (self._failures - 1))
        return random.uniform(cap / 2, cap)

    def reset(self) -> None:
        self._failures = 0


@dataclass(frozen=True)
class _Target:
    """What is watched: the resource, where, and the server-side selectors."""

    resource: Resource
    namespace: str | None
    label_selector: str | None
    field_selector: str | None


@dataclass
class _View:
    """What the loop knows: every object as last seen, and the version to watch from
    (None: a listing is due)."""

    known: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    version: str | None = None


class _Relist(Exception):
    """The stream's view can no longer be trusted: list again (after ``pause`` s)."""

    def __init__(self, reason: str, *, pause: bool = True) -> None:
        super().__init__(reason)
        self.pause = pause


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _rv(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("resourceVersion") or "")


async def _relist(client: KubeClient, target: _Target, view: _View) -> AsyncIterator[WatchEvent]:
    """List, and yield what changed against what the view knew: ``DELETED`` for what is
    gone, ``ADDED``/``MODIFIED`` for what is new or newer. Moves the view to the list's
    version."""
    listing = await client.list(
        target.resource,
        target.namespace,
        label_selector=target.label_selector,
        field_selector=target.field_selector,
        retry=NO_RETRY,  # the loop has its own backoff, and says meanwhile that it is behind
    )
    current = {_key(o): o for o in listing["items"]}
    for key, obj in list(view.known.items()):
        if key not in current:
            del view.known[key]
            yield WatchEvent("DELETED", obj)
    for key, obj in current.items():
        old = view.known.get(key)
        if old is None or _rv(old) != _rv(obj):
            view.known[key] = obj
            yield WatchEvent("ADDED" if old is None else "MODIFIED", obj)
    view.version = str(listing.get("metadata", {}).get("resourceVersion") or "") or None


def _filed(view: _View, event: WatchEvent) -> bool:
    """Take a stream's event into the view: whether it is an object change to hand on.
    Bookmarks only move the version; an ERROR ends the stream with :class:`_Relist`."""
    kind = event.type
    if kind == "ERROR":
        raise _error_event(event.object)
    meta = event.object["metadata"]
    if version := meta.get("resourceVersion"):
        view.version = str(version)
    if kind == "BOOKMARK":
        return False
    key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    if kind == "DELETED":
        view.known.pop(key, None)
    else:
        view.known[key] = event.object
    return True


def _error_event(status: dict[str, Any]) -> _Relist:
    """An ERROR event: 410 means "relist now"; anything else, "relist after a pause"."""
    code, message = status.get("code"), str(status.get("message") or "watch error")[:300]
    if code == 410:
        return _Relist(message, pause=False)
    return _Relist(f"ERROR event ({code}): {message}")


def _after_failure(exc: Exception, backoff: Backoff) -> tuple[str, float, bool]:
    """What a failure means: ``(what to say, how long to wait, whether to relist)``."""
    if isinstance(exc, _Relist):
        return str(exc), backoff.next_delay() if exc.pause else 0.0, True
    if isinstance(exc, HTTPStatusError) and exc.status == 410:
        return "410 Gone", 0.0, True
    delay = backoff.next_delay()
    if isinstance(exc, HTTPStatusError):
        delay = max(delay, min(exc.retry_after or 0.0, backoff.maximum * 2))
        why = f"{exc.status} {exc.message}"
    else:
        why = str(exc)
    relist = isinstance(exc, ProtocolError) or backoff.failures >= RELIST_AFTER_FAILURES
    return why, delay, relist


def _ignore(_value: object) -> None:
    pass


@dataclass
class _Health:
    """Whether the caller's view may be behind the server, told only when it changes."""

    tell: Callable[[str | None], None]
    backoff: Backoff
    #: Until the first stream is live: a caller that starts a watch over hears it.
    behind: bool = True

    def live(self) -> None:
        """The server accepted the watch, from the listing's version or from the last one
        seen: nothing was missed."""
        self.backoff.reset()
        if self.behind:
            self.behind = False
            self.tell(None)

    def lost(self, why: str) -> None:
        self.behind = True
        self.tell(why)


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
    on_impaired: Callable[[str | None], None] | None = None,
) -> AsyncGenerator[WatchEvent, None]:
    """Yield every change to the matching objects, starting with those that exist now.

    Runs until the caller stops iterating (or cancels): the deadline belongs to
    the caller, which knows which phase it is in. The client's close ends it with a
    :class:`TransportError` whose ``closed_here`` is set. ``on_synced`` is called once the
    events of a (re)listing have all been taken: from then on, what the caller has
    seen is the whole current state, as of the listing. ``on_impaired`` is called
    with the reason when a failure may have left the caller's view behind, and with
    None once a stream is live again (accepted by the server, after the relisting if
    one was due): a listing alone is whole only for a moment. ``client_timeout`` is the
    longest silence taken before the stream is reopened (default: the server's timeout
    + 15 s).
    """
    target = _Target(resource, namespace, label_selector, field_selector)
    health = _Health(on_impaired or _ignore, backoff or Backoff())
    note, synced = on_note or _ignore, on_synced or (lambda: None)
    view = _View()
    #: Very short streams in a row; reset by a stream that brought an event or lasted.
    short = Backoff()
    while True:
        try:
            if view.version is None:
                async for event in _relist(client, target, view):
                    yield event
                synced()
            # One watch connection from the view's version, its events taken here rather
            # than in a generator of their own: each event resumes every generator between
            # the bytes and its consumer, and after an idle while each resumption runs cold.
            opened, heard = time.monotonic(), False
            async for event in client.watch_stream(
                resource,
                namespace,
                resource_version=view.version,
                label_selector=label_selector,
                field_selector=field_selector,
                server_timeout=server_timeout,
                client_timeout=client_timeout,
                on_open=health.live,
            ):
                heard = True
                if _filed(view, event):
                    yield event
            # A clean end of stream: the server's timeout, or someone cut it. Reopen from
            # where we were; a tiny jitter keeps a server that ends every stream at once
            # from being hit in lockstep. A stream that ended within a second without a
            # single event (client-go's reflector calls it a "very short watch") says the
            # server or something on the way ends every stream at once: reopening at once
            # would ask it again and again, tens of times a second, for as long as the wait
            # lasts. The pause grows as such streams follow each other; nothing is missed
            # meanwhile, since each one starts from the last version seen.
            if heard or time.monotonic() - opened >= min(SHORT_STREAM, server_timeout / 2):
                short.reset()
                await anyio.sleep(random.uniform(0, 0.05))
            else:
                delay = short.next_delay()
                if short.failures > 1:
                    note(
                        f"watch {resource.plural}: the stream ended at once without an event "
                        f"({short.failures} in a row); reopening in {delay:.2f} s"
                    )
                await anyio.sleep(delay)
        except (ClientError, _Relist) as exc:
            if client.closed:  # this side's close, not the server's doing: nothing to reopen
                raise _ended_here(exc, resource) from None
            await _recover(exc, f"watch {resource.plural}", view, health, note)


def _ended_here(exc: Exception, resource: Resource) -> TransportError:
    """The error a watch loop ends with once its client is closed: the failure itself when
    it says so (a stream or a read the close cut short), else one that does."""
    if isinstance(exc, TransportError) and exc.closed_here:
        return exc
    error = TransportError(
        f"watch {resource.plural}: the client was closed by its owner, not by the server"
    )
    error.closed_here = True
    return error


async def _recover(
    exc: Exception, what: str, view: _View, health: _Health, note: Callable[[str], None]
) -> None:
    """After a failure: say so, forget the version if a relisting is due, and back off."""
    why, delay, relist = _after_failure(exc, health.backoff)
    if relist:
        view.version = None
    health.lost(f"{what}: {why}")
    note(f"{what}: {why}; {'relisting' if relist else 'reconnecting'} in {delay:.2f} s")
    await anyio.sleep(delay)


__all__ = ["watch", "WatchEvent", "Backoff", "ClientError", "TransportError"]
