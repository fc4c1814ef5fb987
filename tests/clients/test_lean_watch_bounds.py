"""Bounds of the lean watch connection (orchestrator/clients/_watch1.py) against a peer
that plays with HTTP's framing, and against a consumer slower than the peer.

- A line that arrives in many small chunks costs what its bytes cost, not the square of
  its pieces: a peer's 1-byte chunks must not keep a core busy for minutes.
- A chunked body's trailer or a chunk header that never ends is bounded like an answer's
  head: the stream ends with a named error instead of the client holding it all.
- While the connection stops reading for a consumer that has not caught up, the peer is
  not silent: only the peer's own silence ends the stream (as aiohttp's sock_read).

The connection is driven directly with a recording transport (and, for the silence, a
clock the test moves), or through ``KubeClient.watch_stream`` against a scripted peer;
no test waits on time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from _client_cert import client_key_pair
from test_lean_watch import HANG, HEAD, chunked, event, take, watching  # noqa: F401
from test_tls import PROXY_VARIABLES

from orchestrator.clients import PODS, HTTPStatusError, KubeClient, TransportError
from orchestrator.clients import kube as kube_module
from orchestrator.clients._http1 import MAX_HEAD
from orchestrator.clients._watch1 import MAX_QUEUED, LineTooLong, WatchConnection

pytestmark = pytest.mark.anyio


class Recording(asyncio.Transport):
    """A transport that keeps what the connection asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.paused = False
        self.written = bytearray()

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """The parts of a loop the connection uses, with a time the test sets."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = 0.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def create_future(self) -> asyncio.Future[None]:
        return self.loop.create_future()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the time on and run each timer then due (those they arm too)."""
        self.now += seconds
        while due := [t for t in self.timers if not t.cancelled and t.when <= self.now]:
            for timer in due:
                self.timers.remove(timer)
                timer.callback()


def connect(loop: Any, max_line: int, silence: float = 100.0) -> tuple[Any, Recording]:
    conn: WatchConnection[bytes] = WatchConnection(loop, bytes, silence, max_line)
    transport = Recording()
    conn.connection_made(transport)
    conn.send(b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(HEAD)
    assert conn.status == 200
    return conn, transport


async def test_a_line_in_small_chunks_is_copied_once_not_once_a_chunk() -> None:
    # 256 Ki chunks of 16 bytes: copied once a chunk, that is 256 Ki copies of up to
    # 4 MiB (about 512 GiB moved); copied once, 4 MiB. The bound is only against that hang.
    loop = asyncio.get_running_loop()
    conn, _ = connect(loop, max_line=8 << 20)
    piece = chunked(*[b"x" * 16] * 512)
    deadline = loop.time() + HANG
    for _ in range(512):
        conn.data_received(piece)
        assert loop.time() < deadline, "each small chunk copied the whole line again"
    conn.data_received(chunked(b"\n"))
    assert list(conn.items) == [b"x" * (4 << 20)] and conn.failure is None
    assert len(conn._pending) == 0


async def test_a_line_in_small_chunks_past_the_bound_is_refused_with_its_start() -> None:
    loop = asyncio.get_running_loop()
    conn, transport = connect(loop, max_line=1000)
    conn.data_received(chunked(b"{", *[b"y"] * 600))
    conn.data_received(chunked(*[b"z"] * 600))
    assert isinstance(conn.failure, LineTooLong) and transport.closing
    assert conn.failure.start == b"{" + b"y" * 199 and not conn.items


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"0\r\nX-Trailer: ", id="a-trailer"),
        pytest.param(b"1;ext=", id="a-chunk-extension"),
    ],
)
async def test_an_endless_chunk_header_or_trailer_ends_the_stream(
    watching: Any, framing: bytes
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunked(event("ADDED", "a") + b"\n") + framing)
        for _ in range(4 * MAX_HEAD // 4096):  # well past the bound, then held open
            w.write(b"a" * 4096)
            await w.drain()
        await r.read()

    kube = await watching(script)
    got: list[Any] = []
    with pytest.raises(TransportError, match="a chunk header or trailer over"):
        await take(kube, got)
    assert got == [("ADDED", "a")]
    with anyio.fail_after(HANG):
        await kube.peer.closed.wait()


async def test_a_consumer_behind_is_not_the_peers_silence() -> None:
    clock = Clock(asyncio.get_running_loop())
    conn, transport = connect(cast(Any, clock), max_line=1 << 20, silence=5.0)
    line = json.dumps({"type": "ADDED"}).encode() + b"\n"
    conn.data_received(chunked(line * (MAX_QUEUED + 1)))
    assert transport.paused  # the consumer has not taken them: no more reading
    clock.advance(60.0)
    assert conn.failure is None and not transport.closing
    conn.items.clear()  # the consumer caught up
    conn.wait()
    assert not transport.paused
    clock.advance(4.9)
    assert conn.failure is None
    clock.advance(0.2)  # now the peer is silent for longer than 5 s
    assert isinstance(conn.failure, TimeoutError) and transport.closing


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
async def test_a_switching_answer_is_the_servers_status_on_either_path(
    watching: Any, lean: bool
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        w.write(event("ADDED", "a") + b"\n")
        await w.drain()
        await r.read()  # held open until the client ends it

    kube = await watching(script)
    kube._lean_watches = lean
    got: list[Any] = []
    with pytest.raises(HTTPStatusError, match="answered 101: HTTP 101") as caught:
        await take(kube, got)
    assert caught.value.status == 101 and got == []
    with anyio.fail_after(HANG):
        await kube.peer.closed.wait()


async def test_a_watch_connected_after_the_client_closed_is_not_kept(
    watching: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(HEAD + chunked(event("ADDED", "a") + b"\n"))
        await w.drain()
        await r.read()  # held open until the client ends it

    kube = await watching(script)
    loop = asyncio.get_running_loop()
    connect, connecting, go_on = loop.create_connection, asyncio.Event(), asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> Any:
        connecting.set()
        await go_on.wait()  # the client closes meanwhile
        return await connect(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", held)
    got: list[Any] = []
    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with pytest.raises(TransportError, match="the client is closed"):
                    await take(kube, got)

            tg.start_soon(watch)
            await connecting.wait()
            await kube.aclose()
            go_on.set()
        await kube.peer.closed.wait()  # the connection made meanwhile is closed at once
    assert got == [] and kube._watching == set()


async def test_a_tls_watch_the_consumer_left_is_gone_once_the_client_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer leaves the stream: its TLS goodbye goes out, and this peer never answers
    it. The client's aclose still leaves nothing behind (it waits CLOSE_GRACE, then cuts)."""
    for name in PROXY_VARIABLES + ("ALL_PROXY",):
        monkeypatch.delenv(name, raising=False)
    cert, key = client_key_pair(tmp_path)
    (tmp_path / "peer.crt").write_bytes(cert)
    (tmp_path / "peer.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "peer.crt", tmp_path / "peer.key")
    gone = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)

        async def step(action: Callable[[], Any]) -> Any:
            while True:
                try:
                    return action()
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("closed") from None
                    incoming.write(data)

        try:
            await step(tls.do_handshake)
            request = b""
            while b"\r\n\r\n" not in request:
                request += await step(lambda: tls.read(65536))
            tls.write(HEAD + chunked(event("ADDED", "a") + b"\n"))
            writer.write(outgoing.read())
            while await reader.read(65536):  # a goodbye comes: never answered
                pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            gone.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": f"https://127.0.0.1:{port}",
                    "certificate-authority-data": base64.b64encode(cert).decode(),
                },
            }
        ],
        "users": [{"name": "u", "user": {"token": "tls-watch-t0ken"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    kube = await KubeClient.from_kubeconfig(str(tmp_path / "kubeconfig"))
    try:
        with anyio.fail_after(HANG):
            stream = kube.watch_stream(PODS, "ns", resource_version="1")
            assert (await stream.__anext__()).name == "a"
            (conn,) = kube._watching  # the lean way: a connection of its own
            await stream.aclose()
            await kube.aclose()
            assert conn.lost.done(), "the watch's connection outlived the client"
            await gone.wait()
    finally:
        await kube.aclose()
        server.close()
        await server.wait_closed()


async def test_a_line_in_small_reads_on_aiohttps_path_is_copied_once_not_once_a_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiohttp's path (a proxy, a cookie) splits what its reader hands on: a peer that
    # trickles a line in small reads must not make each read copy the line so far.
    monkeypatch.setattr(kube_module, "MAX_LINE", 8 << 20)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG

    class Content:
        async def iter_any(self) -> AsyncIterator[bytes]:
            for _ in range(256 << 10):
                yield b"x" * 16
                assert loop.time() < deadline, "each small read copied the whole line again"
            yield b"\n{}"

    class Response:
        content = Content()

    lines = [line async for line in kube_module._lines(Response(), "WATCH /x", 60.0)]
    assert lines == [b"x" * (4 << 20), b"{}"]
