"""A watch loop whose client is closed ends, named; it does not reopen against it.

The watch loop (``watch``) recovers from everything a server does: a stream that ends
is reopened, a failure waited out and relisted. After this side's own close
(``KubeClient.aclose``) it took the close for one more failure: reopened, relisted,
failed again, backed off, for as long as its task lived, and the hub's pump, which
starts a failed stream over, did the same. Now the loop ends at once with the
:class:`TransportError` that says the client closed it (``closed_here``), and the hub's
stream ends, impaired with that reason, its subscriptions closed.

The peer lists and streams until the client goes; the tests wait on events (the first
event taken, the loop's end), never on time.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from test_lean_reads import (  # noqa: F401  (fixtures)
    HANG,
    Conn,
    client,
    reading,
    serve,
)
from test_lean_watch import HEAD, chunked, event

from orchestrator.clients import PODS, TransportError, WatchHub, watch

pytestmark = pytest.mark.anyio


def listing() -> bytes:
    body = json.dumps(
        {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}
    ).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


async def lists_and_streams(conn: Conn) -> None:
    """A list answered at once; a watch streams one event, then is held open."""
    while request := await conn.request():
        if b"watch=true" in request:
            await conn.send(HEAD + chunked(event("ADDED", "a", rv="2") + b"\n"))
            await conn.reader.read()  # held open until the client ends it
            return
        await conn.send(listing())


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
async def test_a_watch_loop_ends_named_when_its_client_is_closed(reading: Any, lean: bool) -> None:
    async with reading(lists_and_streams) as (peer, kube):
        kube._lean_watches = lean
        first = anyio.Event()
        notes: list[str] = []
        outcome: list[BaseException | None] = []

        async def consume() -> None:
            try:
                async for _ in watch(kube, PODS, "ns", on_note=notes.append):
                    first.set()
            except TransportError as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        with anyio.fail_after(HANG):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await first.wait()
                sent = len(peer.requests)
                await kube.aclose()
        assert len(outcome) == 1 and isinstance(outcome[0], TransportError), outcome
        assert outcome[0].closed_here
        assert "closed by this client" in str(outcome[0])
        assert not any("reconnecting" in n or "relisting" in n for n in notes), notes
        assert len(peer.requests) == sent  # nothing sent after the close


async def test_a_hub_stream_ends_impaired_when_its_client_is_closed(reading: Any) -> None:
    async with reading(lists_and_streams) as (peer, kube):
        first = anyio.Event()
        impaired: list[str | None] = []
        ended = anyio.Event()

        async def subscriber(hub: WatchHub) -> None:
            async with hub.subscribe(PODS, "ns", on_impaired=impaired.append) as events:
                async for _ in events:
                    first.set()
            ended.set()  # the subscription's events ended: its stream is gone

        with anyio.fail_after(HANG):
            async with WatchHub(kube, linger=0) as hub:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(subscriber, hub)
                    await first.wait()
                    await kube.aclose()
                    await ended.wait()
                assert hub.streams_open == 0
        assert impaired and impaired[-1] is not None
        assert "closed by this client" in impaired[-1]
