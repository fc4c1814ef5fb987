"""Waiting for a condition that the cluster will tell us about.

The pattern every phase uses: ask the authority (``check``), and if the answer
is "not yet", sleep until a watch event says something changed, or until a
slow safety re-check is due. Watches make the wait react within milliseconds
and cost the servers nothing while nothing happens; the re-check covers the
one thing a watch cannot see (a change in the authority that no Kubernetes
object reflects).

Watch events can also carry bad news before the authority notices (a pod in
``ImagePullBackOff`` while KubeFoundry still says ``Pending``): ``inspect``
turns such an event into a failure reason and the wait ends at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from ..clients import ClientError, KubeClient, Resource, WatchEvent, WatchHub, watch

T = TypeVar("T")


@dataclass(frozen=True)
class WatchSpec:
    resource: Resource
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    #: Whether this watch's events are a reason to ask the authority again. A watch kept
    #: only for ``inspect`` (bad news early) says False, so that its events cost nothing
    #: when the authority's answer does not depend on them.
    wakes: bool = True


#: Seconds between questions to the authority while a watch may be behind (failing,
#: relisting, unavailable): the wait then reacts within seconds, not at the slow
#: safety re-check.
IMPAIRED_RECHECK = 2.0


class _Signal:
    """A level-triggered wake-up: set by any watcher, cleared by the waiter.

    A bare future of the running loop and a timer for the timeout: the waiter's task
    resumes straight from the future when a watcher sets it. It sits on the path from an
    event to the confirming read, which after an idle while runs cold: anyio's Event
    inside a ``move_on_after`` scope costs more there (the scope's bookkeeping on the
    way in and out, the event's own future), measured in the reaction benchmark as a
    slower wake. Watchers run in the waiter's own loop (the hub's task, or a task of
    this wait), never in another thread.
    """

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Whether a watcher woke the waiter (False: ``timeout`` ran out first)."""
        if not self._set:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        woken, self._set = self._set, False
        return woken


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Stop(Exception):
    """Raised by an ``inspect`` callback: the wait is over, and this is why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AskAgain(Exception):
    """Raised by a ``check``: the authority gave nothing to decide on this time (a 404 that
    the cluster contradicts): ask again after ``after`` seconds, or on a watch event.

    A check that looped on its own until it got an answer would keep the wait from what
    its watches said meanwhile: an ``inspect`` that stopped it would be heard only at the
    deadline. Raising this hands the pause back to the wait.
    """

    def __init__(self, after: float) -> None:
        super().__init__(f"ask again within {after:g} s")
        self.after = after


async def wait_for(
    check: Callable[[], Awaitable[T | None]],
    *,
    kube: KubeClient,
    watches: list[WatchSpec],
    recheck: float,
    inspect: Callable[[WatchEvent], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    server_timeout: int = 60,
    hub: WatchHub | None = None,
) -> T:
    """Return ``check()``'s first non-None answer; raise :class:`Stop` if ``inspect`` says so.

    A ``check`` that raises :class:`AskAgain` is asked again after the pause it names, or
    sooner on a watch event, unless ``inspect`` stopped the wait meanwhile.

    The watches are subscribed first, then ``check`` runs (the object may be ready
    already), and again after every burst of events and once more when a watch
    that was still taking its listing has it. The caller's deadline bounds the
    whole wait.
    """
    signal = _Signal()
    stopped: list[Stop] = []
    #: Why each watch that may be behind is (failing, relisting, unavailable).
    impaired: dict[int, str] = {}

    def health(index: int, why: str | None) -> None:
        """A watch fell behind (ask the authority now, and often until it is whole), or
        is whole again."""
        if why is None:
            impaired.pop(index, None)
            return
        if index not in impaired:
            signal.set()
        impaired[index] = why

    #: What ``inspect`` failed on (other than Stop) while the hub's task ran it.
    failed: list[Exception] = []

    def deliver(event: WatchEvent, wakes: bool) -> None:
        if inspect is not None:
            try:
                inspect(event)
            except Stop as stop:
                stopped.append(stop)
                wakes = True
        if wakes:
            signal.set()

    def hand_over(event: WatchEvent, wakes: bool) -> None:
        """``deliver``, run by the hub in its stream's task: a failure of ``inspect`` is
        kept for this wait to raise, never let loose on a stream others share."""
        try:
            deliver(event, wakes)
        except Exception as exc:
            failed.append(exc)
            signal.set()

    checks_begun = 0

    def live() -> None:
        """A watch now sees every change. If the authority was asked before that, a change
        in between may never show as an event (a deletion, above all): ask again."""
        if checks_begun:
            signal.set()

    def unavailable(index: int, spec: WatchSpec, exc: ClientError) -> None:
        # The watch loop recovers from what a server does; should anything still end
        # a watch, the wait goes on: the authority is asked at the impaired pace.
        if on_note:
            on_note(
                f"watch {spec.resource.plural} unavailable ({exc}); re-checking every "
                f"{min(recheck, IMPAIRED_RECHECK):g} s instead"
            )
        health(index, str(exc))

    async def pump(
        index: int,
        spec: WatchSpec,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """A watch of this wait's own (no hub), in a task of its own."""
        task_status.started()
        try:
            async for event in watch(
                kube,
                spec.resource,
                spec.namespace,
                label_selector=spec.label_selector,
                field_selector=spec.field_selector,
                server_timeout=server_timeout,
                on_note=on_note,
                on_synced=live,
                on_impaired=lambda why: health(index, why),
            ):
                deliver(event, spec.wakes)
        except ClientError as exc:
            unavailable(index, spec, exc)

    async def ask() -> T | None:
        nonlocal checks_begun
        #: Whether this question is the safety re-check: no watcher spoke for ``recheck``
        #: seconds while every watch looked whole.
        at_recheck = False
        while not stopped and not failed:
            checks_begun += 1
            try:
                answer = await check()
            except AskAgain as again:
                await signal.wait(again.after)
                at_recheck = False
                continue
            if answer is not None or stopped or failed:
                if answer is not None and at_recheck and on_note:
                    # Watches bring every change within milliseconds: an answer that only
                    # the re-check found is worth a line (a watch that stalled without an
                    # error, or an authority that moved without any object showing it).
                    on_note(
                        f"answered at the {recheck:g} s safety re-check, not after a watch "
                        "event (a watch stalled, or the change showed in no watched object)"
                    )
                return answer
            # While a watch may be behind, its silence proves nothing: ask more often.
            whole = not impaired
            woken = await signal.wait(recheck if whole else min(recheck, IMPAIRED_RECHECK))
            at_recheck = whole and not woken and bool(watches)
        return None

    result: T | None
    if hub is not None or not watches:
        # The hub hands each event to this wait in its own task: no task here to receive
        # them, and so nothing to cancel when the answer comes: leaving the block below
        # only takes the subscriptions off their streams.
        with ExitStack() as subscribed:
            # Subscribed before the first question, so that a shared stream that is
            # already live misses nothing after it; one still taking its listing calls live().
            for index, spec in enumerate(watches):
                assert hub is not None
                try:
                    subscribed.enter_context(
                        hub.listen(
                            spec.resource,
                            spec.namespace,
                            on_event=partial(hand_over, wakes=spec.wakes),
                            label_selector=spec.label_selector,
                            field_selector=spec.field_selector,
                            on_note=on_note,
                            on_ready=live,
                            on_impaired=partial(health, index),
                        )
                    )
                except ClientError as exc:
                    unavailable(index, spec, exc)
            result = await ask()
    else:
        async with anyio.create_task_group() as tg:
            for index, spec in enumerate(watches):
                await tg.start(pump, index, spec)
            result = await ask()
            tg.cancel_scope.cancel()
    # Raised outside the task group, so callers see the Stop itself and not an
    # exception group wrapping it.
    if failed:
        raise failed[0]
    if stopped:
        raise stopped[0]
    assert result is not None
    return result


def pod_summary(pod: dict[str, Any]) -> str:
    """``name: Phase (container: state reason)`` in one line, for logs and reasons."""
    meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
    parts = []
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        kind, detail = next(iter(state.items())) if len(state) == 1 else ("unknown", None)
        reason = (detail or {}).get("reason", "")
        parts.append(f"{cs.get('name')}: {kind}{' ' + reason if reason else ''}")
    deleting = " (deleting)" if meta.get("deletionTimestamp") else ""
    inner = f" ({'; '.join(parts)})" if parts else ""
    return f"{meta.get('name')}: {status.get('phase', 'Unknown')}{deleting}{inner}"
