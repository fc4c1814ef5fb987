"""A stream or a read this client ends itself is not the server's end of it.

A close-delimited watch answer ends when its connection closes: closed by the server,
that is the stream's clean end, and the watch loop reopens it. Closed by this client
(``KubeClient.aclose`` under a consumer still reading), it read the same, and a chunked
one read as the server cutting it ("closed before the whole answer arrived"). Now
either says the client closed it, on both paths, and a read in flight at the close says
so too. The server's own end stays clean (tests/clients/test_lean_watch.py).

The peers hold their connection until the client ends it; the tests wait on events
(the first event taken, the request arrived), never on time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from test_lean_reads import (  # noqa: F401  (fixtures)
    HANG,
    NO_RETRY,
    Conn,
    client,
    reading,
    serve,
)
from test_lean_watch import HEAD, chunked, event, watching  # noqa: F401

from orchestrator.clients import PODS, KubeClient, RetryPolicy, TransportError
from orchestrator.clients.kube import check_object

pytestmark = pytest.mark.anyio

#: Retries as reads make them, within a bound short enough for a test that meets them.
RETRYING = RetryPolicy(max_elapsed=5)

#: A head whose body ends only when the connection closes.
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
FRAMINGS = {
    "chunked": HEAD + chunked(event("ADDED", "a") + b"\n"),
    "close-delimited": CLOSE_DELIMITED + event("ADDED", "a") + b"\n",
}


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("framing", list(FRAMINGS.values()), ids=list(FRAMINGS))
async def test_a_watch_the_client_closes_under_its_consumer_says_so(
    watching: Any, lean: bool, framing: bytes
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(framing)
        await w.drain()
        await r.read()  # held open until the client ends it

    kube: KubeClient = await watching(script)
    kube._lean_watches = lean
    first = anyio.Event()
    got: list[Any] = []
    outcome: list[BaseException | None] = []

    async def consume() -> None:
        try:
            async for ev in kube.watch_stream(PODS, "ns", resource_version="1"):
                got.append((ev.type, ev.name))
                first.set()
        except TransportError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)  # a clean end: the server's, which this was not
        first.set()

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await first.wait()
            await kube.aclose()
        await kube.peer.closed.wait()
    assert got == [("ADDED", "a")]
    assert len(outcome) == 1 and outcome[0] is not None, "the client's close read as the server's"
    assert "the stream was closed by this client" in str(outcome[0])


@pytest.mark.parametrize("policy", [NO_RETRY, RETRYING], ids=["no-retry", "retrying"])
async def test_a_read_in_flight_when_the_client_closes_says_so(
    reading: Any, policy: RetryPolicy
) -> None:
    """Under a policy that retries flakes too (as every read's does): the client's own
    close is no flake, and another try would only meet the closed client until the
    deadline, then say the session was closed instead of who closed it."""

    async def held(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.reader.read()  # no answer: held until the client ends it

    async with reading(held) as (peer, kube):
        outcome: list[BaseException] = []

        async def read() -> None:
            try:
                await kube.read("/api/v1/namespaces/ns/pods/p", check_object, policy)
            except TransportError as exc:
                outcome.append(exc)

        with anyio.fail_after(HANG):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await peer.until(lambda: len(peer.requests) == 1)
                await kube.aclose()
        assert len(outcome) == 1
        assert "closed by this client" in str(outcome[0]), outcome
        assert not outcome[0].after_retry and len(peer.requests) == 1  # the one try
