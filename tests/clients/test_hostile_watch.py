"""The watch loop and the hub against a hostile Kubernetes API (the proxy in front of
the sandbox's API server): principles 1 and 3 at the level of one stream.

- garbage and ERROR events never end watching: the loop relists, says it was behind
  (``on_impaired``) and whole again, and later changes still arrive as events;
- a stream that falls silent is reopened;
- the hub never lets a stream's failure, nor its own, reach the task group that
  holds the runners.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from proxy import HostileProxy, Mutation

from orchestrator.clients import PODS, KubeClient, TransportError, WatchHub, watch
from orchestrator.sandbox.kubeapi import KubeAPIServer, KubeFaults

pytestmark = pytest.mark.anyio
NS = "hostile-watch"


@pytest.fixture
async def server() -> AsyncIterator[KubeAPIServer]:
    async with KubeAPIServer(faults=KubeFaults()) as srv:
        yield srv


@pytest.fixture
async def proxy(server: KubeAPIServer, tmp_path: Path) -> AsyncIterator[HostileProxy]:
    async with HostileProxy.for_kubeconfig(server.write_kubeconfig(tmp_path / "direct")) as p:
        yield p


@pytest.fixture
async def direct(server: KubeAPIServer, tmp_path: Path) -> AsyncIterator[KubeClient]:
    """A client that goes straight to the server: the test's own hands."""
    client = await KubeClient.from_kubeconfig(str(server.write_kubeconfig(tmp_path / "d2")))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def kube(proxy: HostileProxy, tmp_path: Path) -> AsyncIterator[KubeClient]:
    """The client under test, through the hostile proxy."""
    client = await KubeClient.from_kubeconfig(str(proxy.write_kubeconfig(tmp_path / "via")))
    try:
        yield client
    finally:
        await client.aclose()


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "img"}]},
    }


async def _until_added(events: AsyncIterator[Any], name: str) -> None:
    async for event in events:
        if event.type == "ADDED" and event.name == name:
            return


@pytest.mark.parametrize(
    "mutation",
    [
        Mutation("garbage_lines", watch=True, times=3),
        Mutation("error_event", watch=True, times=3),
        Mutation("status", watch=True, times=4, params={"status": 503}),
        Mutation("reset", watch=True, times=4),
    ],
    ids=lambda m: m.name,
)
async def test_a_failing_stream_is_recovered_and_says_so(
    proxy: HostileProxy, kube: KubeClient, direct: KubeClient, mutation: Mutation
) -> None:
    proxy.add(mutation)
    impaired: list[str | None] = []
    await direct.create(PODS, pod("before", app="h"), NS)
    with anyio.fail_after(30):
        events = watch(kube, PODS, NS, label_selector="app=h", on_impaired=impaired.append)
        await _until_added(events, "before")
        # Stay on until every injected failure has been served and recovered from.
        while mutation.times:
            await direct.create(PODS, pod(f"p{len(impaired)}-{mutation.times}", app="h"), NS)
            await _until_added(events, f"p{len(impaired)}-{mutation.times}")
        await direct.create(PODS, pod("after", app="h"), NS)
        await _until_added(events, "after")
        await events.aclose()
    assert any(why and "watch pods" in why for why in impaired), impaired
    assert impaired[-1] is None, impaired  # whole again


async def test_a_silent_stream_is_reopened(
    proxy: HostileProxy, kube: KubeClient, direct: KubeClient
) -> None:
    # The first watch connection gets the listing's events and then nothing, ever.
    proxy.add(Mutation("stall_watch", watch=True, times=1))
    with anyio.fail_after(30):
        await direct.create(PODS, pod("early", app="s"), NS)
        events = watch(kube, PODS, NS, label_selector="app=s", client_timeout=1.0)
        await _until_added(events, "early")  # the listing
        await direct.create(PODS, pod("late", app="s"), NS)
        await _until_added(events, "late")
        await events.aclose()
    assert kube.watches_opened >= 2
    assert proxy.applied[0][0] == "stall_watch"


async def test_the_hub_never_cancels_its_neighbours(
    proxy: HostileProxy, kube: KubeClient, direct: KubeClient
) -> None:
    # A runner-like task shares the hub's task group; garbage on every stream and a
    # subscriber whose predicate blows up must not cancel it.
    proxy.add(Mutation("garbage_lines", watch=True, times=None))
    finished = anyio.Event()
    impaired: list[str | None] = []
    with anyio.fail_after(30):
        async with WatchHub(kube, linger=0) as hub:

            async def runner() -> None:
                await direct.create(PODS, pod("r1", app="n"), NS)
                async with hub.subscribe(
                    PODS, NS, label_selector="app=n", on_impaired=impaired.append
                ) as events:
                    await _until_added(events, "r1")  # the listing
                    await direct.create(PODS, pod("r2", app="n"), NS)
                    await _until_added(events, "r2")  # through garbage and relists
                finished.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(runner)
                await finished.wait()
    assert any(why for why in impaired), impaired


def _closed_here(message: str) -> TransportError:
    error = TransportError(message)
    error.closed_here = True
    return error


@pytest.mark.parametrize(
    "error",
    [RuntimeError, TransportError, _closed_here],
    ids=["runtime-error", "transport-error", "closed-here-while-open"],
)
async def test_a_failure_of_the_hub_itself_only_impairs_the_stream(
    kube: KubeClient,
    direct: KubeClient,
    monkeypatch: pytest.MonkeyPatch,
    error: Callable[[str], Exception],
) -> None:
    """Whatever the hub's own code (or a subscriber's callback) fails with, a
    TransportError too: the hub's task holds every run's streams, so what it raised would
    end them all. Only the close of its client ends a stream (test_watch_after_close.py);
    an error that says so while the client is open starts it over like any other."""
    import orchestrator.clients._hub as hub_module

    calls = {"n": 0}
    original = hub_module._keys_of

    def flaky(obj: dict[str, Any]) -> list[tuple[str, ...]]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise error("a bug in the hub")
        return original(obj)

    monkeypatch.setattr(hub_module, "_keys_of", flaky)
    impaired: list[str | None] = []
    whole_again = anyio.Event()

    def heard(why: str | None) -> None:
        impaired.append(why)
        if why is None and len(impaired) > 1:
            whole_again.set()

    await direct.create(PODS, pod("b1", app="b"), NS)
    with anyio.fail_after(30):
        async with WatchHub(kube, linger=0) as hub:
            async with hub.subscribe(PODS, NS, label_selector="app=b", on_impaired=heard) as events:
                await _until_added(events, "b1")  # after the stream started over
                await whole_again.wait()  # and once its new watch is live
    assert impaired and "a bug in the hub" in (impaired[0] or ""), impaired


async def test_a_trickling_answer_is_ended_naming_the_route_and_what_arrived(
    proxy: HostileProxy, kube: KubeClient, direct: KubeClient
) -> None:
    from orchestrator.clients import NO_RETRY, RequestTimeout
    from orchestrator.clients.kube import check_object

    await direct.create(PODS, pod("t1", app="t"), NS)
    proxy.add(
        Mutation("trickle", watch=False, times=None, params={"interval": 0.05, "forever": True})
    )
    # A byte every 50 ms never lets a read time out: only the request's own deadline (3 s)
    # ends it. No other deadline races that one: the phase's here is a minute away, which
    # only a hang reaches, so on a machine however loaded the call ends with the request's
    # own error. (A phase's deadline near enough to cut a request's short is
    # test_retry_by_time's subject, and arithmetic there.)
    with anyio.fail_after(60):
        with pytest.raises(RequestTimeout) as err:
            await kube.read(PODS.path(NS, "t1"), check_object, NO_RETRY, timeout=3)
    message = str(err.value)
    assert f"GET /api/v1/namespaces/{NS}/pods/t1" in message, message
    assert "bytes of the body arrived" in message and "answered 200" in message, message
    assert err.value.received and err.value.received > 0


async def test_a_waiter_asks_its_authority_often_while_its_watch_is_impaired(
    proxy: HostileProxy, kube: KubeClient
) -> None:
    from orchestrator.flows import WatchSpec, wait_for

    # Lists work, every watch answers 503: no event will ever wake the waiter.
    proxy.add(Mutation("status", watch=True, times=None, params={"status": 503}))
    calls = 0

    async def check() -> bool | None:
        nonlocal calls
        calls += 1
        return True if calls >= 4 else None

    # At the slow re-check (60 s), four questions would take three minutes.
    with anyio.fail_after(30):
        async with WatchHub(kube, linger=0) as hub:
            assert await wait_for(
                check, kube=kube, watches=[WatchSpec(PODS, NS)], recheck=60, hub=hub
            )


async def test_a_stalled_watch_is_met_by_the_safety_recheck_which_says_so(
    proxy: HostileProxy, kube: KubeClient
) -> None:
    from orchestrator.flows import WatchSpec, wait_for

    # Lists work; every watch is accepted and then says nothing, without an error: the
    # waiter cannot tell, and only the safety re-check asks the authority again.
    proxy.add(Mutation("stall_watch", watch=True, times=None))
    notes: list[str] = []
    asked_while_live = 0

    async with WatchHub(kube, linger=0) as hub:

        async def check() -> bool | None:
            # The authority says yes only once the waiter has asked while its watch was
            # live: after that no event can come, so only the re-check can ask again.
            nonlocal asked_while_live
            if hub.known(PODS, NS) is None:
                return None
            asked_while_live += 1
            return True if asked_while_live > 1 else None

        with anyio.fail_after(30):
            assert await wait_for(
                check,
                kube=kube,
                watches=[WatchSpec(PODS, NS)],
                recheck=1,
                hub=hub,
                on_note=notes.append,
            )
    assert any(name == "stall_watch" for name, _, _ in proxy.applied)
    assert [n for n in notes if "safety re-check" in n] == [
        "answered at the 1 s safety re-check, not after a watch event (a watch stalled, "
        "or the change showed in no watched object)"
    ], notes


async def test_a_wait_that_an_event_ends_does_not_blame_the_recheck(
    kube: KubeClient, direct: KubeClient
) -> None:
    from orchestrator.flows import WatchSpec, wait_for

    notes: list[str] = []
    async with WatchHub(kube, linger=0) as hub:

        async def check() -> bool | None:
            seen = hub.known(PODS, NS, label_selector="app=e") or []
            return True if seen else None

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(direct.create, PODS, pod("wanted", app="e"), NS)
                # At a 60 s re-check only the pod's event can end this wait in time.
                assert await wait_for(
                    check,
                    kube=kube,
                    watches=[WatchSpec(PODS, NS, label_selector="app=e")],
                    recheck=60,
                    hub=hub,
                    on_note=notes.append,
                )
    assert not [n for n in notes if "safety re-check" in n], notes
