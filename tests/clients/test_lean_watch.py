"""A watch on the lean HTTP/1.1 path (orchestrator/clients/_watch1.py).

Where reads go the lean way, so does a watch: its own connection, the answer parsed by
llhttp, each line parsed as it arrives. What ``KubeClient.watch_stream`` promises stays:
events in order, whatever the chunking; a line it refuses is a :class:`ProtocolError`
after the events before it; an endless line, a silence, a cut connection or a non-200
each end the stream with the error aiohttp's path gives; an encoded stream goes back to
aiohttp's path; a closed client leaves no watch connection open.

The peers are plain asyncio servers, so that a test decides every byte and every close;
each waits on what happened (a connection closed), never on time.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.clients import (
    PODS,
    HTTPStatusError,
    KubeClient,
    ProtocolError,
    TransportError,
    watch,
)
from orchestrator.clients import kube as kube_module

pytestmark = pytest.mark.anyio
TOKEN = "lean-watch-t0ken"
#: A bound on each test's waits: far above what any of them takes, only against a hang.
HANG = 30

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def event(kind: str, name: str, rv: str = "1") -> bytes:
    obj = {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}
    return json.dumps({"type": kind, "object": obj}).encode()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


class Peer:
    """A server that answers every connection with ``script``; ``closed`` is set once a
    connection the client opened is gone."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await reader.read()
            except ConnectionError:
                pass
            self.closed.set()


@pytest.fixture
async def watching(tmp_path: Path) -> AsyncIterator[Callable[[Script], Awaitable[KubeClient]]]:
    servers: list[asyncio.Server] = []
    clients: list[KubeClient] = []

    async def start(script: Script) -> KubeClient:
        peer = Peer(script)
        server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        path = tmp_path / f"kubeconfig-{len(servers)}"
        path.write_text(json.dumps(config))
        kube = await KubeClient.from_kubeconfig(str(path))
        kube.peer = peer  # type: ignore[attr-defined]
        clients.append(kube)
        return kube

    yield start
    for kube in clients:
        await kube.aclose()
    for server in servers:
        server.close()
        await server.wait_closed()


async def take(kube: KubeClient, into: list[Any], **kwargs: Any) -> None:
    with anyio.fail_after(HANG):
        async for ev in kube.watch_stream(PODS, "ns", resource_version="1", **kwargs):
            into.append((ev.type, ev.name))


async def test_events_arrive_in_order_however_the_lines_are_cut(watching: Any) -> None:
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        lines = event("ADDED", "a") + b"\n\n" + event("MODIFIED", "b") + b"\n"
        w.write(HEAD + chunked(lines[:7], lines[7:60], lines[60:]))
        w.write(chunked(b"  \n", event("DELETED", "c")[:5]))
        await w.drain()
        w.write(chunked(event("DELETED", "c")[5:]) + b"0\r\n\r\n")  # the last line has no \n
        await w.drain()

    kube = await watching(script)
    opened: list[bool] = []
    got: list[Any] = []
    await take(kube, got, on_open=lambda: opened.append(True))
    assert got == [("ADDED", "a"), ("MODIFIED", "b"), ("DELETED", "c")]
    assert opened == [True]
    request = kube.peer.requests[0]
    assert request.startswith(b"GET /api/v1/namespaces/ns/pods?watch=true&resourceVersion=1")
    assert f"authorization: Bearer {TOKEN}".encode() in request.lower().replace(
        b"bearer", b"Bearer"
    )
    assert kube.watches_opened == 1 and kube._watching == set()


async def test_a_refused_line_ends_the_stream_after_the_events_before_it(watching: Any) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunked(event("ADDED", "a") + b"\nnot json\n" + event("ADDED", "b")))
        await w.drain()
        await r.read()  # held open until the client ends it

    kube = await watching(script)
    got: list[Any] = []
    with pytest.raises(ProtocolError, match="WATCH /api/v1/namespaces/ns/pods"):
        await take(kube, got)
    assert got == [("ADDED", "a")]
    with anyio.fail_after(HANG):
        await kube.peer.closed.wait()


async def test_an_endless_line_is_a_protocol_error(
    watching: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_module, "MAX_LINE", 1000)

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD)
        for _ in range(5):
            w.write(chunked(b"x" * 300))
            await w.drain()
        await r.read()  # held open until the client ends it

    kube = await watching(script)
    with pytest.raises(ProtocolError, match="a watch line longer than 1000 bytes"):
        await take(kube, [])


async def test_a_silent_stream_is_a_transport_error(watching: Any) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunked(event("ADDED", "a") + b"\n"))
        await w.drain()
        await r.read()  # held open until the client ends it

    kube = await watching(script)
    got: list[Any] = []
    with pytest.raises(TransportError, match="silent for more than 0.2 s"):
        await take(kube, got, client_timeout=0.2)
    assert got == [("ADDED", "a")]


async def test_a_stream_cut_mid_answer_is_a_transport_error(watching: Any) -> None:
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunked(event("ADDED", "a") + b"\n") + b'40\r\n{"ty')
        await w.drain()

    kube = await watching(script)
    got: list[Any] = []
    with pytest.raises(TransportError, match="the stream broke"):
        await take(kube, got)
    assert got == [("ADDED", "a")]


async def test_a_refusal_is_the_servers_status_error(watching: Any) -> None:
    body = json.dumps({"kind": "Status", "code": 429, "message": "too many, wait"}).encode()

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(
            b"HTTP/1.1 429 X\r\nRetry-After: 3\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await w.drain()

    kube = await watching(script)
    opened: list[bool] = []
    with pytest.raises(HTTPStatusError, match="too many, wait") as caught:
        await take(kube, [], on_open=lambda: opened.append(True))
    assert caught.value.status == 429 and caught.value.retry_after == 3
    assert opened == []


async def test_an_encoded_stream_goes_back_to_aiohttps_path(watching: Any) -> None:
    body = gzip.compress(event("ADDED", "a") + b"\n" + event("ADDED", "b") + b"\n")

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        await w.drain()

    kube = await watching(script)
    got: list[Any] = []
    await take(kube, got)
    assert got == [("ADDED", "a"), ("ADDED", "b")]
    assert kube._lean_watches is False
    assert len(kube.peer.requests) == 2


async def test_a_closed_client_leaves_no_watch_connection(watching: Any) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunked(event("ADDED", "a") + b"\n"))
        await w.drain()
        await r.read()  # held open until the client ends it

    kube = await watching(script)
    stream = kube.watch_stream(PODS, "ns", resource_version="1")
    with anyio.fail_after(HANG):
        first = await stream.__anext__()
        assert first.name == "a"
        await kube.aclose()
        await kube.peer.closed.wait()
        with pytest.raises(TransportError):
            await stream.__anext__()


async def test_streams_that_end_at_once_are_reopened_after_a_growing_pause(watching: Any) -> None:
    """A server that accepts every watch and ends it at once, without an event: the loop
    reopens after a pause that grows from one such stream to the next (client-go's "very
    short watch"), instead of asking again tens of times a second. Only lower bounds on
    the pauses are checked: a loaded machine makes them longer, never shorter."""
    opens: list[float] = []
    fifth = anyio.Event()
    peer: list[Peer] = []

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if b"watch=true" in peer[0].requests[-1]:
            opens.append(time.monotonic())
            if len(opens) == 5:
                fifth.set()
            w.write(HEAD + b"0\r\n\r\n")
        else:
            body = json.dumps({"metadata": {"resourceVersion": "5"}, "items": []}).encode()
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        await w.drain()

    kube = await watching(script)
    peer.append(kube.peer)  # type: ignore[attr-defined]
    notes: list[str] = []

    async def loop() -> None:
        async for _event in watch(kube, PODS, "ns", on_note=notes.append):
            pass

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop)
            await fifth.wait()
            tg.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(opens, opens[1:], strict=False)]
    # Pauses drawn from [0.05, 0.1], [0.1, 0.2], [0.2, 0.4], [0.4, 0.8] s.
    assert gaps[2] >= 0.2 and gaps[3] >= 0.4, gaps
    assert any("ended at once without an event (2 in a row)" in n for n in notes), notes
