"""One watch stream per resource type and namespace, shared by every waiter.

A run with fifty deployments in one namespace would otherwise open fifty pod
watches and fifty Workspace watches, each with its own list at start and its
own reconnects: the API server pays for every one, and so does the client.
The hub keeps a single list-then-watch loop (:func:`watch`) per
``(resource, namespace)`` and fans each event out to the subscribers whose
selectors match, evaluated here on the client.

A new subscriber first receives the objects the hub already knows (as
``ADDED``), so "check the object before you watch it" holds for the second
waiter as much as for the first. Selectors the hub cannot evaluate locally
(set-based label selectors, unusual field selectors) get a stream of their
own, so correctness never depends on the sharing.

The hub runs in a task group that also holds every runner, so nothing a
stream meets may escape it: a peer's broken bytes, a failing or silent
stream are the watch loop's to recover from (relist, reconnect), and even a
failure of the hub's own code only makes that stream *impaired*, which its
subscribers hear about (``on_impaired``) and answer by asking their
authorities more often. The hub's view wakes waiters; it never decides for them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from ._errors import ClientError, TransportError, clip
from ._watch import Backoff, WatchEvent, watch
from .kube import KubeClient, Resource

_EQUALITY = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s*$")
_LOCAL_FIELDS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
}


def index_key(label_selector: str | None, field_selector: str | None) -> tuple[str, ...] | None:
    """A value every matching object carries: its name, or one ``key=value`` label.

    The hub files a subscriber under it, so an event is only tested against the
    subscribers that could want it: fifty flows' waiters on one stream then cost an
    event a few dictionary lookups instead of fifty selector evaluations.
    """
    for term in filter(None, (field_selector or "").split(",")):
        m = _EQUALITY.match(term)
        if m and m.group(1) == "metadata.name" and m.group(2) != "!=":
            return ("name", m.group(3))
    for term in filter(None, (label_selector or "").split(",")):
        m = _EQUALITY.match(term)
        if m and m.group(2) != "!=":
            return ("label", m.group(1), m.group(3))
    return None


def _keys_of(obj: dict[str, Any]) -> list[tuple[str, ...]]:
    meta = obj.get("metadata", {})
    return [
        ("name", str(meta.get("name", ""))),
        *(("label", k, v) for k, v in (meta.get("labels") or {}).items()),
    ]


def compile_selector(
    label_selector: str | None, field_selector: str | None
) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate for the selectors, or None when they can't be evaluated locally."""
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for term in filter(None, (label_selector or "").split(",")):
        if m := _EQUALITY.match(term):
            key, op, value = m.groups()
            want = op != "!="
            tests.append(_label_equals(key, value, want))
        elif m := _EXISTS.match(term):
            negate, key = m.groups()
            tests.append(_label_exists(key, not negate))
        else:
            return None
    for term in filter(None, (field_selector or "").split(",")):
        m = _EQUALITY.match(term)
        if not m or m.group(1) not in _LOCAL_FIELDS:
            return None
        path, op, value = _LOCAL_FIELDS[m.group(1)], m.group(2), m.group(3)
        want = op != "!="
        tests.append(_field_equals(path, value, want))
    return lambda obj: all(t(obj) for t in tests)


def _labels(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata", {}).get("labels") or {}


def _label_equals(key: str, value: str, want: bool) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (_labels(obj).get(key) == value) == want


def _label_exists(key: str, want: bool) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (key in _labels(obj)) == want


def _field_equals(
    path: tuple[str, str], value: str, want: bool
) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get(path[0], {}).get(path[1]) == value) == want


class _Sink(Protocol):
    """Where a subscriber's events go: a memory stream, or a :class:`_Callback`."""

    def send_nowait(self, item: WatchEvent, /) -> None: ...

    def close(self) -> None: ...


class _Callback:
    """A subscriber that takes each event in the hub's own task, as it arrives."""

    __slots__ = ("send_nowait",)

    def __init__(self, on_event: Callable[[WatchEvent], None]) -> None:
        self.send_nowait = on_event

    def close(self) -> None:
        pass


_Entry = tuple[Callable[[dict[str, Any]], bool], _Sink]


@dataclass
class _Stream:
    resource: Resource
    namespace: str | None
    label_selector: str | None = None
    field_selector: str | None = None
    known: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: The subscribers, filed by :func:`index_key` (None: tested on every event).
    index: dict[tuple[str, ...] | None, list[_Entry]] = field(default_factory=dict)
    scope: anyio.CancelScope | None = None
    #: The scope of the running watch loop: cancelled to start the stream over.
    feed: anyio.CancelScope | None = None
    #: Why the stream was last asked to start over (see :meth:`WatchHub.resync`).
    resync_reason: str = ""
    #: Why the stream's view may be behind the server now (None: it is whole).
    impaired: str | None = None
    #: Each subscriber's impairment callback, told when ``impaired`` changes.
    on_impaired: list[Callable[[str | None], None]] = field(default_factory=list)
    #: ``known`` holds the whole state as of a listing, kept current by the events since.
    synced: bool = False
    #: Called once the first listing has been taken (or the stream failed).
    on_ready: list[Callable[[], None]] = field(default_factory=list)
    #: When the stream was last left without subscribers (``anyio.current_time()``).
    idle_since: float = 0.0
    #: Whether a task watches for the stream being left alone long enough, to close it.
    closing: bool = False
    #: Each subscriber's note callback: a relist or a reconnect is news to every waiter
    #: on the stream, in its own phase's log.
    notes: list[Callable[[str], None]] = field(default_factory=list)

    @property
    def subscribers(self) -> list[_Entry]:
        return [entry for filed in self.index.values() for entry in filed]

    @property
    def listened(self) -> bool:
        """Whether anyone subscribes, without listing them all on each waiter's way out:
        ``index`` holds no empty list (:meth:`remove` drops it)."""
        return bool(self.index)

    def add(self, entry: _Entry, key: tuple[str, ...] | None) -> None:
        self.index.setdefault(key, []).append(entry)

    def remove(self, entry: _Entry, key: tuple[str, ...] | None) -> None:
        filed = self.index[key]
        filed.remove(entry)
        if not filed:
            del self.index[key]

    def candidates(self, obj: dict[str, Any]) -> list[_Entry]:
        """The subscribers that may want ``obj``: those filed under one of its keys, and the unfiled."""
        found = list(self.index.get(None, ()))
        for key in _keys_of(obj):
            found += self.index.get(key, ())
        return found


class WatchHub:
    """Shared watches. Use as ``async with WatchHub(kube) as hub:`` around the runs."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        server_timeout: int = 60,
        linger: float = 30.0,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.kube = kube
        self.server_timeout = server_timeout
        #: Seconds a stream nobody listens to is kept open. Phases follow each other within
        #: moments (Wait Ready, then Inference, then Delete watching the same pods), so
        #: closing at once would mean a new connection and a relist for the next phase.
        self.linger = linger
        self._note = on_note
        self._streams: dict[tuple[Any, ...], _Stream] = {}
        self._tg: TaskGroup | None = None
        self._closed = False

    @property
    def streams_open(self) -> int:
        """Watch loops running now: what the API server is paying for."""
        return sum(1 for s in self._streams.values() if s.scope is not None)

    async def __aenter__(self) -> WatchHub:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(*exc)
        finally:
            self._shut()

    def _shut(self) -> None:
        """No live view any more (closed, or its task group broke): what the streams knew
        is forgotten, each is impaired and its subscriptions end, so that their waiters
        ask the authority instead of trusting a dead stream; a new subscription fails."""
        self._closed = True
        for stream in self._streams.values():
            stream.scope = None
            stream.known.clear()
            stream.synced = False
            _impaired(stream, "the watch hub has stopped")
            for _, send in list(stream.subscribers):
                send.close()

    def known(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]] | None:
        """The matching objects as the running stream last saw them, without asking the
        API server; None when no synced stream covers them.

        This is the watches' view, a moment behind the server: good for "is it still
        there?" while waiting, not as the final word, which a fresh list gives.
        """
        key, predicate, _ = _routing(resource, namespace, label_selector, field_selector)
        stream = self._streams.get(key)
        if (
            self._closed
            or stream is None
            or stream.scope is None
            or not stream.synced
            or stream.impaired
        ):
            return None
        return [obj for obj in stream.known.values() if predicate(obj)]

    def impaired(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> str | None:
        """Why the stream serving these selectors may be behind the server, or None."""
        key, _, _ = _routing(resource, namespace, label_selector, field_selector)
        stream = self._streams.get(key)
        return stream.impaired if stream is not None else None

    def resync(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        reason: str = "a fresh read disagreed with the stream's view",
    ) -> None:
        """Start the stream serving these selectors over, with a new listing.

        For a waiter whose fresh read contradicted the stream (it still shows an object
        the server no longer has): a stream can stall without any error to tell, and then
        neither wakes anyone nor learns anything until its silence runs out.
        """
        key, _, _ = _routing(resource, namespace, label_selector, field_selector)
        stream = self._streams.get(key)
        if stream is not None and stream.feed is not None and not stream.feed.cancel_called:
            stream.resync_reason = reason
            stream.feed.cancel()

    @asynccontextmanager
    async def subscribe(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_note: Callable[[str], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_impaired: Callable[[str | None], None] | None = None,
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """Events for the matching objects: those known now first, then every change.

        ``on_ready`` is called once the subscription sees every change: at once when the
        stream has already taken its listing, else when it has. A caller that asked the
        authority before that moment should ask again then: a change in between (a
        deletion, above all) may reach it as no event at all. ``on_impaired`` is called
        with a reason whenever the stream may be behind (failing, relisting), and with
        None when it is whole again; at once if it is impaired when subscribing. The
        events never end with an error: a stream's failure is the hub's to recover from.
        """
        send, receive = anyio.create_memory_object_stream[WatchEvent](max_buffer_size=10_000)
        with self._joined(
            send,
            resource,
            namespace,
            label_selector,
            field_selector,
            on_note,
            on_ready,
            on_impaired,
        ):
            async with receive:
                yield _iterate(receive)

    def listen(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        on_event: Callable[[WatchEvent], None],
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_note: Callable[[str], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_impaired: Callable[[str | None], None] | None = None,
    ) -> AbstractContextManager[None]:
        """:meth:`subscribe`, with each event handed to ``on_event`` in the hub's own task.

        For a waiter that only needs to be woken: no task of its own to receive the
        events, so an event reaches it one scheduling step sooner, and leaving (a plain
        ``with`` block) cancels nothing. ``on_event`` runs inside the stream's loop, so
        it must be quick and must not raise: what it fails on, it keeps for its owner
        (a failure here would start the shared stream over, for every subscriber). The
        objects known now are handed to it before this returns.
        """
        return self._joined(
            _Callback(on_event),
            resource,
            namespace,
            label_selector,
            field_selector,
            on_note,
            on_ready,
            on_impaired,
        )

    @contextmanager
    def _joined(
        self,
        send: _Sink,
        resource: Resource,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
        on_note: Callable[[str], None] | None,
        on_ready: Callable[[], None] | None,
        on_impaired: Callable[[str | None], None] | None,
    ) -> Iterator[None]:
        """``send`` gets the matching objects known now, then every change, until the block ends."""
        if self._tg is None:
            raise RuntimeError("WatchHub used outside 'async with'")
        if self._closed:
            raise ClientError("the watch hub has stopped")
        key, predicate, filed_under = _routing(resource, namespace, label_selector, field_selector)
        stream = self._streams.get(key)
        if stream is None:
            own = predicate is _always  # a stream of its own: the server filters it
            stream = _Stream(
                resource, namespace, *((label_selector, field_selector) if own else ())
            )
        self._streams[key] = stream
        for obj in list(stream.known.values()):
            if predicate(obj):
                send.send_nowait(WatchEvent("ADDED", obj))
        entry = (predicate, send)
        stream.add(entry, filed_under)
        if on_note is not None:
            stream.notes.append(on_note)
        if on_ready is not None:
            if stream.synced:
                on_ready()
            else:
                stream.on_ready.append(on_ready)
        if on_impaired is not None:
            stream.on_impaired.append(on_impaired)
            if stream.impaired:
                on_impaired(stream.impaired)
        if stream.scope is None:
            stream.scope = anyio.CancelScope()
            self._tg.start_soon(self._pump, stream)
            if self.linger > 0 and not stream.closing:
                # Started with the stream, so that no waiter pays for it on its way out.
                stream.closing = True
                self._tg.start_soon(self._close_when_idle, key, stream)
        try:
            yield
        finally:
            stream.remove(entry, filed_under)
            if on_note is not None:
                stream.notes.remove(on_note)
            if on_impaired is not None:
                stream.on_impaired.remove(on_impaired)
            send.close()
            if not stream.listened and stream.scope is not None and not self._closed:
                # Nobody listens: stop paying for the stream, after a while. The task that
                # closes it runs from the stream's start (see _close_when_idle): starting a
                # task here cost a waiter tens of microseconds (about 60 on a loaded
                # two-core machine, 0.1-0.2 ms after an idle while), on the way from its
                # answer to its return. It is started here only if it is gone.
                if self.linger > 0 and self._tg is not None:
                    stream.idle_since = anyio.current_time()
                    if not stream.closing:
                        stream.closing = True
                        self._tg.start_soon(self._close_when_idle, key, stream)
                else:
                    self._close(key, stream)

    async def _close_when_idle(self, key: tuple[Any, ...], stream: _Stream) -> None:
        """Close the stream once nobody has listened to it for ``linger`` seconds. A
        subscriber that came and went meanwhile moves that moment on.

        The task starts with the stream and lives as long as it, looking again every
        ``linger`` seconds while someone listens, so that a waiter leaving never starts
        it: a task started there cost that waiter 0.1-0.2 ms between its answer and its
        return (measured in the reaction benchmark's waiter, after an idle second).
        """
        try:
            while self._streams.get(key) is stream and stream.scope is not None:
                if stream.listened:
                    await anyio.sleep(self.linger)
                elif anyio.current_time() >= stream.idle_since + self.linger:
                    self._close(key, stream)
                    return
                else:
                    await anyio.sleep(stream.idle_since + self.linger - anyio.current_time())
        finally:
            stream.closing = False

    def _close(self, key: tuple[Any, ...], stream: _Stream) -> None:
        """Stop the stream; a later subscriber starts a new one, with a fresh listing."""
        if stream.scope is not None:
            stream.scope.cancel()
            stream.scope = None
        stream.known.clear()
        self._streams.pop(key, None)

    async def _pump(self, stream: _Stream) -> None:
        """Feed the stream's subscribers until the stream is closed. Never raises.

        The watch loop recovers from everything a server does. Should the hub itself
        fail on an event (a bug, or an object no check foresaw), the stream is marked
        impaired, its view dropped, and it starts over with a fresh listing. Only the
        close of its client ends it (impaired, its subscriptions closed).
        """
        scope = stream.scope
        assert scope is not None
        backoff = Backoff(initial=0.5, maximum=5.0)

        def note(message: str) -> None:
            if self._note is not None:
                self._note(message)
            for callback in list(stream.notes):
                callback(message)

        with scope:
            while True:
                stream.feed = feed = anyio.CancelScope()
                try:
                    with feed:
                        await self._feed(stream, note)
                except Exception as exc:  # the hub's own failure: never a runner's
                    if isinstance(exc, TransportError) and exc.closed_here and self.kube.closed:
                        # The watch loop's end on this side's close: nothing to start over
                        # against.
                        self._ended_here(stream, exc, note)
                        return
                    # Anything else, a TransportError included (the watch loop recovers
                    # from the server's, so one here is a bug or a callback's), starts the
                    # stream over: raised, it would end the hub, and every run with it.
                    why = f"watch {stream.resource.plural}: {type(exc).__name__}: {clip(str(exc))}"
                    stream.known.clear()
                    stream.synced = False
                    _impaired(stream, why)
                    note(f"{why}; starting the stream over")
                    await anyio.sleep(backoff.next_delay())
                if feed.cancel_called:
                    why = f"watch {stream.resource.plural}: {stream.resync_reason}"
                    stream.known.clear()
                    stream.synced = False
                    _impaired(stream, why)
                    note(f"{why}; starting the stream over")

    def _ended_here(
        self, stream: _Stream, exc: TransportError, note: Callable[[str], None]
    ) -> None:
        """The stream's client was closed (``KubeClient.aclose``): the stream ends instead
        of starting over against it, impaired with that reason, its subscriptions closed
        (as :meth:`_shut` ends them), so that no waiter trusts a view that stopped."""
        why = clip(str(exc))
        stream.known.clear()
        stream.synced = False
        stream.scope = None
        _impaired(stream, why)
        note(f"{why}; the stream has ended")
        for _, send in list(stream.subscribers):
            send.close()

    async def _feed(self, stream: _Stream, note: Callable[[str], None]) -> None:
        async for event in watch(
            self.kube,
            stream.resource,
            stream.namespace,
            label_selector=stream.label_selector,
            field_selector=stream.field_selector,
            server_timeout=self.server_timeout,
            on_note=note,
            on_synced=lambda: _synced(stream),
            on_impaired=lambda why: _impaired(stream, why),
        ):
            meta = event.object["metadata"]
            k = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            if event.type == "DELETED":
                stream.known.pop(k, None)
            else:
                stream.known[k] = event.object
            for predicate, send in stream.candidates(event.object):
                if predicate(event.object):
                    try:
                        send.send_nowait(event)
                    except (
                        anyio.WouldBlock,
                        anyio.ClosedResourceError,
                        anyio.BrokenResourceError,
                    ):
                        pass


def _routing(
    resource: Resource,
    namespace: str | None,
    label_selector: str | None,
    field_selector: str | None,
) -> tuple[tuple[Any, ...], Callable[[dict[str, Any]], bool], tuple[str, ...] | None]:
    """Which stream serves these selectors, the predicate its events pass, and the key a
    subscriber is filed under. Selectors the hub cannot evaluate get a stream of their
    own, filtered by the server."""
    predicate = compile_selector(label_selector, field_selector)
    if predicate is None:
        return (resource, namespace, label_selector, field_selector), _always, None
    return (resource, namespace), predicate, index_key(label_selector, field_selector)


def _synced(stream: _Stream) -> None:
    stream.synced = True
    _ready(stream)


def _impaired(stream: _Stream, why: str | None) -> None:
    if stream.impaired == why:
        return
    stream.impaired = why
    for callback in list(stream.on_impaired):
        callback(why)


def _ready(stream: _Stream) -> None:
    callbacks, stream.on_ready = stream.on_ready, []
    for callback in callbacks:
        callback()


def _always(_obj: dict[str, Any]) -> bool:
    return True


async def _iterate(receive: Any) -> AsyncIterator[WatchEvent]:
    async for event in receive:
        yield event
