"""The watch loop and the shared hub, against the sandbox's Kubernetes API over loopback.

Faults are injected in the server (cut streams, 410 Gone), so these tests show
the client recovering from the real wire behaviour, not from a mock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from orchestrator.clients import PODS, KubeClient, WatchHub, compile_selector, watch
from orchestrator.sandbox.kubeapi import KubeAPIServer, KubeFaults

pytestmark = pytest.mark.anyio
NS = "watch-tests"


@pytest.fixture
async def server() -> AsyncIterator[KubeAPIServer]:
    async with KubeAPIServer(faults=KubeFaults()) as srv:
        yield srv


@pytest.fixture
async def kube(server: KubeAPIServer, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.from_kubeconfig(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield client
    finally:
        await client.aclose()


def pod(name: str, **labels: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"fake-kubelet/phase": "Pending"},
        },
        "spec": {"containers": [{"name": "c", "image": "img"}]},
    }


async def test_objects_present_before_the_watch_arrive_first(kube: KubeClient) -> None:
    await kube.create(PODS, pod("early", app="x"), NS)
    with anyio.fail_after(10):
        async for event in watch(kube, PODS, NS, label_selector="app=x"):
            assert (event.type, event.name) == ("ADDED", "early")
            break


async def test_cut_streams_lose_no_change(server: KubeAPIServer, kube: KubeClient) -> None:
    server.faults.watch_cut_after = 0.2
    names = [f"p{i}" for i in range(6)]
    seen: list[str] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def writer() -> None:
                for name in names:
                    await kube.create(PODS, pod(name, app="cut"), NS)
                    await anyio.sleep(0.1)  # spread the writes across several cut streams

            tg.start_soon(writer)
            async for event in watch(kube, PODS, NS, label_selector="app=cut"):
                if event.type == "ADDED" and event.name not in seen:
                    seen.append(event.name)
                if len(seen) == len(names):
                    break
    assert seen == names
    assert kube.watches_opened >= 2  # the stream was really cut and reopened


async def test_410_relists_and_reports_what_was_deleted_meanwhile(
    server: KubeAPIServer, kube: KubeClient
) -> None:
    await kube.create(PODS, pod("stays", app="g"), NS)
    await kube.create(PODS, pod("goes", app="g"), NS)
    events: list[tuple[str, str]] = []
    with anyio.fail_after(20):
        async for event in watch(kube, PODS, NS, label_selector="app=g"):
            events.append((event.type, event.name))
            if len(events) == 2:
                # While the watcher is away: one pod goes, and the next watch gets 410.
                server.faults.gone_once = True
                await kube.delete(PODS, "goes", NS, grace_period=0)
            if ("DELETED", "goes") in events:
                break
    assert sorted(events[:2]) == [("ADDED", "goes"), ("ADDED", "stays")]
    assert ("DELETED", "goes") in events


@pytest.mark.parametrize(
    "labels, fields, obj, expected",
    [
        ("app=x", None, {"metadata": {"labels": {"app": "x"}}}, True),
        ("app=x,tier!=db", None, {"metadata": {"labels": {"app": "x", "tier": "db"}}}, False),
        ("app", None, {"metadata": {"labels": {"app": "y"}}}, True),
        ("!app", None, {"metadata": {"labels": {}}}, True),
        (None, "metadata.name=w", {"metadata": {"name": "w"}}, True),
        (None, "metadata.name=w", {"metadata": {"name": "v"}}, False),
    ],
)
def test_local_selectors(labels, fields, obj, expected) -> None:
    predicate = compile_selector(labels, fields)
    assert predicate is not None and predicate(obj) is expected


def test_selectors_the_hub_cannot_evaluate_get_their_own_stream() -> None:
    assert compile_selector("app in (a,b)", None) is None
    assert compile_selector(None, "status.phase=Running") is None


async def test_the_hub_shares_one_stream_per_resource_and_namespace(kube: KubeClient) -> None:
    names = [f"w{i}" for i in range(10)]
    got: dict[str, anyio.Event] = {n: anyio.Event() for n in names}
    async with WatchHub(kube, linger=0) as hub:
        async with anyio.create_task_group() as tg:

            async def waiter(name: str, ready: anyio.Event) -> None:
                async with hub.subscribe(PODS, NS, label_selector=f"app={name}") as events:
                    ready.set()
                    async for event in events:
                        assert event.object["metadata"]["labels"]["app"] == name  # filtered
                        got[name].set()
                        return

            for name in names:
                ready = anyio.Event()
                tg.start_soon(waiter, name, ready)
                await ready.wait()
            assert hub.streams_open == 1
            for name in names:
                await kube.create(PODS, pod(name, app=name), NS)
            with anyio.fail_after(10):
                for name in names:
                    await got[name].wait()
        assert hub.streams_open == 0  # the last subscriber gone, the stream stops
    assert kube.watches_opened == 1


async def test_a_late_subscriber_sees_what_the_hub_already_knows(kube: KubeClient) -> None:
    await kube.create(PODS, pod("known", app="late"), NS)
    async with WatchHub(kube) as hub:
        async with hub.subscribe(PODS, NS, label_selector="app=late") as first:
            with anyio.fail_after(10):
                async for event in first:
                    assert event.name == "known"
                    break
            async with hub.subscribe(PODS, NS, label_selector="app=late") as second:
                with anyio.fail_after(10):
                    async for event in second:
                        assert (event.type, event.name) == ("ADDED", "known")
                        break


async def test_the_hub_answers_what_it_knows_only_once_synced(kube: KubeClient) -> None:
    await kube.create(PODS, pod("a", app="k"), NS)
    await kube.create(PODS, pod("b", app="other"), NS)
    async with WatchHub(kube, linger=0) as hub:
        assert hub.known(PODS, NS, label_selector="app=k") is None  # no stream yet
        async with hub.subscribe(PODS, NS, label_selector="app=k") as events:
            with anyio.fail_after(10):
                async for event in events:
                    assert event.name == "a"
                    break
                # Once every task is blocked, the pump has taken the whole listing and
                # is waiting on the watch stream.
                await anyio.wait_all_tasks_blocked()
            assert [o["metadata"]["name"] for o in hub.known(PODS, NS, label_selector="app=k")] == [
                "a"
            ]
            assert (
                hub.known(PODS, NS, field_selector="metadata.name=b")[0]["metadata"]["name"] == "b"
            )
            await kube.delete(PODS, "a", NS, grace_period=0)
            with anyio.fail_after(10):
                async for event in events:
                    if event.type == "DELETED":
                        break
            assert hub.known(PODS, NS, label_selector="app=k") == []
        assert hub.known(PODS, NS, label_selector="app=k") is None  # stream stopped


async def test_events_of_a_watch_that_does_not_wake_reach_inspect_only(kube: KubeClient) -> None:
    """A watch kept for bad news (``wakes=False``) must not make the waiter ask again."""
    from orchestrator.flows._waiting import WatchSpec, wait_for

    seen: list[str] = []
    quiet_seen, marks_seen = anyio.Event(), anyio.Event()
    checks = 0

    def inspect(event) -> None:
        seen.append(event.name)
        if sum(n.startswith("q") for n in seen) == 3:
            quiet_seen.set()
        if {"mark-quiet", "mark-go"} <= set(seen):
            marks_seen.set()

    async def check() -> bool | None:
        nonlocal checks
        checks += 1
        return True if "go" in seen else None

    async with WatchHub(kube) as hub:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    assert (
                        await wait_for(
                            check,
                            kube=kube,
                            recheck=60,
                            inspect=inspect,
                            hub=hub,
                            watches=[
                                WatchSpec(PODS, NS, label_selector="role=quiet", wakes=False),
                                WatchSpec(PODS, NS, label_selector="role=go"),
                            ],
                        )
                        is True
                    )

                tg.start_soon(waiter)
                # Watching, past both listings: a watch that gets its listing after the
                # first look asks once more, and a task waiting on that listing's bytes
                # counts as blocked, so idle tasks alone do not say the looks are over.
                # An object each watch shows says so (neither is named "go" or "q...").
                await kube.create(PODS, pod("mark-quiet", role="quiet"), NS)
                await kube.create(PODS, pod("mark-go", role="go"), NS)
                await marks_seen.wait()
                await anyio.wait_all_tasks_blocked()
                before = checks
                for name in ("q1", "q2", "q3"):
                    await kube.create(PODS, pod(name, role="quiet"), NS)
                await quiet_seen.wait()
                await anyio.wait_all_tasks_blocked()
                assert checks == before  # three events, no question
                await kube.create(PODS, pod("go", role="go"), NS)
    assert checks == before + 1


@pytest.mark.parametrize(
    "labels, fields, key",
    [
        ("app=x", None, ("label", "app", "x")),
        ("tier!=db,app==x", None, ("label", "app", "x")),
        ("app=x", "metadata.name=w", ("name", "w")),
        ("!app", None, None),
        ("app", "metadata.name!=w", None),
    ],
)
def test_subscribers_are_filed_under_a_value_every_match_carries(labels, fields, key) -> None:
    from orchestrator.clients._hub import index_key

    assert index_key(labels, fields) == key


async def test_filed_subscribers_get_their_objects_and_only_theirs(kube: KubeClient) -> None:
    async with WatchHub(kube) as hub:
        got: dict[str, list[str]] = {"by-label": [], "by-name": [], "unfiled": []}
        done = anyio.Event()

        async def collect(which: str, **selectors: str) -> None:
            async with hub.subscribe(PODS, NS, **selectors) as events:
                ready[which].set()
                async for event in events:  # a pod changes a few times: count each once
                    if event.name not in got[which]:
                        got[which].append(event.name)
                    if all(len(v) >= n for v, n in zip(got.values(), (2, 1, 3), strict=True)):
                        done.set()

        ready = {k: anyio.Event() for k in got}
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: collect("by-label", label_selector="team=blue"))
                tg.start_soon(lambda: collect("by-name", field_selector="metadata.name=red-1"))
                tg.start_soon(lambda: collect("unfiled", label_selector="team"))
                for event in ready.values():
                    await event.wait()
                await kube.create(PODS, pod("blue-1", team="blue"), NS)
                await kube.create(PODS, pod("red-1", team="red"), NS)
                await kube.create(PODS, pod("blue-2", team="blue"), NS)
                await done.wait()
                tg.cancel_scope.cancel()
    assert got == {
        "by-label": ["blue-1", "blue-2"],
        "by-name": ["red-1"],
        "unfiled": ["blue-1", "red-1", "blue-2"],
    }


async def test_a_deletion_between_the_answer_and_the_watch_is_not_missed(kube: KubeClient) -> None:
    """The waiter asks, and the object goes at once: the wait must end on the events (or on
    the question asked again once the new stream has listed), not on the slow re-check.
    Which of the two it is depends on timing; either way nothing may be missed."""
    from orchestrator.flows._waiting import WatchSpec, wait_for

    await kube.create(PODS, pod("doomed", app="doomed"), NS)
    answers: list[bool] = []

    async def gone() -> bool | None:
        listed = await kube.list(PODS, NS, label_selector="app=doomed")
        if not answers:  # delete it right after the first answer, before the stream lists
            await kube.delete(PODS, "doomed", NS, grace_period=0)
        answers.append(not listed["items"])
        return True if answers[-1] else None

    async with WatchHub(kube) as hub:
        with anyio.fail_after(60):  # the safety re-check is an hour away
            assert (
                await wait_for(
                    gone,
                    kube=kube,
                    recheck=3600,
                    hub=hub,
                    watches=[WatchSpec(PODS, NS, label_selector="app=doomed")],
                )
                is True
            )
    assert answers[0] is False and answers[-1] is True


async def test_a_stream_left_alone_lingers_for_the_next_subscriber(kube: KubeClient) -> None:
    """Phases follow each other within moments: the next one reuses the stream, already
    listed, instead of opening a new connection."""
    await kube.create(PODS, pod("kept", app="linger"), NS)
    sent: list[tuple[int, int]] = []
    async with WatchHub(kube, linger=60) as hub:
        for _ in range(3):
            async with hub.subscribe(PODS, NS, label_selector="app=linger") as events:
                with anyio.fail_after(10):
                    async for event in events:
                        assert event.name == "kept"
                        break
            await anyio.wait_all_tasks_blocked()  # the stream is watching, or closed
            assert hub.streams_open == 1  # nobody listens, the stream is kept
            # The stream lists, then opens its watch: a task awaiting the watch's answer
            # counts as blocked, so the count is taken once the server has accepted it.
            with anyio.fail_after(10):
                while kube.watches_opened < 1:
                    await anyio.sleep(0)  # the loop serves its I/O (the server's too)
            sent.append((kube.requests_sent, kube.watches_opened))
    assert sent[0] == sent[1] == sent[2]  # no new list, no new watch
    assert kube.watches_opened <= 1


async def test_a_stream_left_alone_closes_after_lingering(kube: KubeClient) -> None:
    """Subscribers that come and go keep it; once nobody has listened for ``linger``
    seconds, the stream stops, and the next subscriber starts a new one."""
    await kube.create(PODS, pod("gone-soon", app="brief"), NS)
    async with WatchHub(kube, linger=0.2) as hub:
        for _ in range(3):
            async with hub.subscribe(PODS, NS, label_selector="app=brief") as events:
                with anyio.fail_after(10):
                    async for event in events:
                        assert event.name == "gone-soon"
                        break
        with anyio.fail_after(10):
            while hub.streams_open:
                await anyio.sleep(0.05)
        opened = kube.watches_opened
        async with hub.subscribe(PODS, NS, label_selector="app=brief") as events:
            with anyio.fail_after(10):
                async for event in events:
                    assert event.name == "gone-soon"
                    break
            assert hub.streams_open == 1
        with anyio.fail_after(10):
            while kube.watches_opened == opened:  # a new stream: listed, then watching
                await anyio.sleep(0.05)


async def test_a_waiter_asks_again_once_a_late_watch_has_its_listing() -> None:
    """A watch that takes its listing after the first question may have missed a change
    that no event will ever show: the waiter asks once more, events or not."""
    from contextlib import contextmanager

    from orchestrator.flows import WatchSpec, wait_for

    class LateHub:
        """A hub whose stream lists only when told to, and never sends an event."""

        on_ready = None

        @contextmanager
        def listen(self, *args, on_ready=None, **kwargs):
            self.on_ready = on_ready
            yield

    hub = LateHub()
    asked = anyio.Event()
    answers = iter([None, True])

    async def check() -> bool | None:
        asked.set()
        return next(answers)

    with anyio.fail_after(60):  # the safety re-check is an hour away
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                assert (
                    await wait_for(
                        check,
                        kube=None,
                        recheck=3600,
                        hub=hub,  # type: ignore[arg-type]
                        watches=[WatchSpec(PODS, NS)],
                    )
                    is True
                )
                tg.cancel_scope.cancel()

            tg.start_soon(waiter)
            await asked.wait()
            await anyio.wait_all_tasks_blocked()
            hub.on_ready()  # the listing is in, after the first answer
            await anyio.sleep_forever()


async def test_on_ready_comes_with_the_listing_or_at_once(kube: KubeClient) -> None:
    calls: list[str] = []
    listed = anyio.Event()

    def first() -> None:
        calls.append("first")
        listed.set()

    async with WatchHub(kube) as hub:
        async with hub.subscribe(PODS, NS, on_ready=first):
            assert calls == []  # the new stream has not listed yet
            with anyio.fail_after(10):
                await listed.wait()
            assert hub.known(PODS, NS) is not None  # called once the listing was taken
            async with hub.subscribe(
                PODS, NS, label_selector="app=x", on_ready=lambda: calls.append("second")
            ):
                assert calls == ["first", "second"]  # already listed: at once


async def test_a_failing_inspect_ends_its_wait_and_no_one_elses(kube: KubeClient) -> None:
    """The hub hands events to a waiter in the stream's own task: what the waiter's
    ``inspect`` fails on is raised by that wait, and the stream others share goes on."""
    from orchestrator.flows import WatchSpec, wait_for

    def broken(event) -> None:
        if event.name == "bad":
            raise ValueError("inspect broke on bad")

    others: list[str] = []
    async with WatchHub(kube) as hub:
        with anyio.fail_after(10):
            async with hub.subscribe(PODS, NS) as events:

                async def never() -> bool | None:
                    return None

                async with anyio.create_task_group() as tg:

                    async def waiter() -> None:
                        with pytest.raises(ValueError, match="inspect broke on bad"):
                            await wait_for(
                                never,
                                kube=kube,
                                recheck=60,
                                inspect=broken,
                                hub=hub,
                                watches=[WatchSpec(PODS, NS)],
                            )

                    tg.start_soon(waiter)
                    await anyio.wait_all_tasks_blocked()
                    await kube.create(PODS, pod("bad"), NS)
                await kube.create(PODS, pod("after"), NS)
                async for event in events:
                    others.append(event.name)
                    if event.name == "after":
                        break
        assert others[0] == "bad" and others[-1] == "after"  # (the fake kubelet edits "bad")
        assert hub.impaired(PODS, NS) is None  # the shared stream never started over
        assert hub.known(PODS, NS) is not None


async def test_a_silent_watch_leaves_the_answer_to_the_safety_recheck() -> None:
    """No event ever comes (the authority moved, and no watched object shows it): the
    waiter asks again when the re-check is due, and says that only the re-check found it."""
    from contextlib import contextmanager

    from orchestrator.flows import WatchSpec, wait_for

    class SilentHub:
        """A hub whose stream is whole at once and never sends an event."""

        @contextmanager
        def listen(self, *args, on_ready=None, **kwargs):
            on_ready()
            yield

    answers = iter([None, True])
    notes: list[str] = []

    async def check() -> bool | None:
        return next(answers)

    with anyio.fail_after(60):  # the re-check is due after 0.05 s; a lost timer hangs here
        answer = await wait_for(
            check,
            kube=None,  # type: ignore[arg-type]
            recheck=0.05,
            hub=SilentHub(),  # type: ignore[arg-type]
            watches=[WatchSpec(PODS, NS)],
            on_note=notes.append,
        )
    assert answer is True
    assert any("safety re-check" in note for note in notes), notes
