"""Framing without end on aiohttp's path: a chunk extension that never ends.

aiohttp's parser takes a chunk extension (``5;aaaa...``) of any length, handing nothing
on and holding nothing, so no bound of its own meets it: a peer sending one at full
speed kept a watch for ever (a core busy the while) and a read or a backend request
until its deadline, then again on every retry. The lean path ends such an answer once
:data:`MAX_HEAD` bytes have come without a byte of body; aiohttp's path now does the
same, on the Kubernetes reads and watches and on the backend's transport.

The peers are plain asyncio servers that write until the client goes; each test waits
on what happened (the error, the connection closed), never on time.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import pytest
from test_lean_reads import (  # noqa: F401  (fixtures)
    HANG,
    NO_RETRY,
    TOKEN,
    Conn,
    client,
    health_refused,
    reading,
    serve,
)
from test_lean_watch import HEAD, chunked, event, take, watching  # noqa: F401

from orchestrator.clients import (
    KubeClient,
    LimitExceeded,
    TransportError,
)
from orchestrator.clients._http1 import MAX_HEAD
from orchestrator.clients.kube import check_object

pytestmark = pytest.mark.anyio
PATH = "/api/v1/namespaces/ns/pods/p"
CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
BOUND = f"a chunk header or trailer over {MAX_HEAD} bytes"


async def endless_extension(conn: Conn, before: bytes) -> None:
    """``before``, then a chunk extension, until the client goes."""
    if await conn.request() is None:
        return
    try:
        await conn.send(before + b"5;ext=")
        while True:
            await conn.send(b"a" * 4096)
    except ConnectionError:
        pass


async def test_a_read_on_aiohttps_path_ends_at_the_bound(
    reading: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)

    async def hostile(conn: Conn) -> None:
        await endless_extension(conn, CHUNKED + chunked(b"{"))

    async with reading(hostile) as (peer, kube):
        with anyio.fail_after(HANG), pytest.raises(LimitExceeded) as err:
            await kube.read(PATH, check_object, NO_RETRY, timeout=HANG)
        assert f"GET {PATH}" in str(err.value) and BOUND in str(err.value)
        assert TOKEN not in str(err.value)
        await peer.until(lambda: peer.closed == 1)


async def test_a_watch_on_aiohttps_path_ends_at_the_bound(watching: Any) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunked(event("ADDED", "a") + b"\n") + b"5;ext=")
        while True:
            w.write(b"a" * 4096)
            await w.drain()

    kube = await watching(script)
    kube._lean_watches = False
    got: list[Any] = []
    with pytest.raises(TransportError, match=BOUND):
        await take(kube, got)
    assert got == [("ADDED", "a")]
    with anyio.fail_after(HANG):
        await kube.peer.closed.wait()


async def test_a_backend_answer_ends_at_the_bound(serve: Any) -> None:
    """The backend's client says it is the peer's protocol: not retried, as a body past
    any answer's size is not (tests/clients/test_answer_size.py)."""

    async def hostile(conn: Conn) -> None:
        await endless_extension(conn, CHUNKED)

    peer = await serve(hostile)
    refused = await health_refused(peer.port)
    assert f"GET /api/health: {BOUND}" in str(refused)
    assert TOKEN not in str(refused) and len(peer.requests) == 1
    await peer.until(lambda: peer.closed == 1)


async def test_a_body_in_many_small_chunks_is_not_taken_for_endless_framing(
    reading: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk headers that do end, each with its bytes of body: no bound met, however many
    (here, more bytes of framing than the bound, in all)."""
    monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)

    framing = 0
    # A body long enough that most of it comes after the head has been taken (a read
    # is at most 256 KiB), each of its bytes behind a chunk header of 1000 bytes.
    pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {"x": "v" * 1000}}}
    body = json.dumps(pod).encode()

    async def chatty(conn: Conn) -> None:
        nonlocal framing
        while await conn.request():
            await conn.send(CHUNKED)
            for i in range(len(body)):
                header = b"1;ext=" + b"e" * 1000 + b"\r\n"
                framing += len(header)
                await conn.send(header + body[i : i + 1] + b"\r\n")
            await conn.send(b"0\r\n\r\n")

    async with reading(chatty) as (_, kube):
        with anyio.fail_after(HANG):
            got = await kube.read(PATH, check_object, NO_RETRY)
        assert got == pod
        assert framing > 4 * MAX_HEAD + 256 * 1024


def answer_for(name: str) -> bytes:
    body = json.dumps({"metadata": {"name": name, "namespace": "ns"}}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % len(body) + body


@pytest.mark.parametrize("route", ["read", "exchange"])
async def test_bytes_after_an_answer_are_never_the_next_requests_answer(
    reading: Any, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """A peer's bytes after an answer (a body longer than its Content-Length, a second
    answer slipped in while the connection is idle) close the connection: aiohttp would
    keep them and hand them to the next request on it as its answer."""
    monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)
    slip = anyio.Event()

    async def slipping(conn: Conn) -> None:
        while request := await conn.request():
            name = request.split(b" ")[1].rsplit(b"/", 1)[-1].decode()
            await conn.send(answer_for(name))
            if name == "a2":
                await slip.wait()
                await conn.send(answer_for("slipped-in"))

    async def get(kube: KubeClient, name: str) -> Any:
        path = f"/api/v1/namespaces/ns/pods/{name}"
        if route == "read":
            return await kube.read(path, check_object, NO_RETRY)
        return await kube.request("GET", path)

    async with reading(slipping) as (peer, kube):
        # aiohttp closes a connection idle past its keep-alive (15 s) on its own: that
        # close must not stand in for the one the slipped-in bytes make.
        kube._api.rest_client.pool_manager.connector._keepalive_timeout = 3600
        with anyio.fail_after(HANG):
            assert (await get(kube, "a"))["metadata"]["name"] == "a"
            # The connection is kept between answers that end where they say they do.
            assert (await get(kube, "a2"))["metadata"]["name"] == "a2"
            assert peer.connections == 1
            slip.set()
            await peer.until(lambda: peer.closed == 1)  # closed by the client, on them
            assert (await get(kube, "b"))["metadata"]["name"] == "b"
        assert peer.connections == 2
