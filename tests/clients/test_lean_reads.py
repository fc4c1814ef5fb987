"""A Kubernetes read on the lean HTTP/1.1 path (orchestrator/clients/_http1.py).

The reads leave aiohttp for a GET written on a kept-alive connection and an answer parsed
by llhttp. What they promise stays: a kept-alive connection is reused, and one the server
closed is replaced without an error; many reads at once each get their own answer; the
caller's deadline bounds the whole exchange, a trickled body included; a cancelled read
or a client closed leaves no connection open; whatever bytes a peer answers, the read
gives a checked object or a :class:`ClientError` naming the route, with no credential in
it. The TLS context is the kubeconfig's (CA, client certificate, server name); a set-up
the lean path cannot honour exactly (a proxy, a netrc entry, a cookie) keeps aiohttp's.

The peers here are plain asyncio servers, so that a test decides every byte and every
close; each waits on what happened (a request arrived, a connection closed), never on time.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.clients import (
    PODS,
    ClientError,
    HTTPStatusError,
    KubeClient,
    KubeFoundryClient,
    LimitExceeded,
    NotFound,
    ProtocolError,
    RequestTimeout,
    RetryPolicy,
    TransportError,
)
from orchestrator.clients.kube import check_list, check_object

pytestmark = pytest.mark.anyio
TOKEN = "lean-s3cr3t-token"
NO_RETRY = RetryPolicy(attempts=1)
#: A bound on each test's waits: far above what any of them takes, only against a hang.
HANG = 30


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"}}


def answer(status: int, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def pod_answer(request: bytes) -> bytes:
    """The pod the request's path names, as the API server answers it."""
    target = request.split(b" ")[1].decode()
    name = target.split("?")[0].rsplit("/", 1)[-1]
    return answer(200, json.dumps(pod(name)).encode(), "Content-Type: application/json")


#: What a connection's handler does: given the connection's number (from 0), it reads
#: requests (``Conn.request``) and writes answers; returning closes the connection.
Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Conn:
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: RawPeer

    async def request(self) -> bytes | None:
        """The next request's head (a GET has no body), or None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        self.peer.requests.append(head)
        await self.peer.moved()
        return head

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class RawPeer:
    """A TCP server whose connections a test scripts byte by byte (``handler``)."""

    handler: Handler
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    port: int = 0
    _moved: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def moved(self) -> None:
        async with self._moved:
            self._moved.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(HANG):
            async with self._moved:
                await self._moved.wait_for(predicate)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(self.connections, reader, writer, self)
        self.connections += 1
        try:
            await self.handler(conn)
        except ConnectionError:
            pass
        finally:
            writer.close()
            # The client's side is gone too once it reads nothing more from us.
            try:
                await reader.read()
            except ConnectionError:
                pass
            self.closed += 1
            await self.moved()

    def kubeconfig(self, path: Path, **user: Any) -> str:
        return write_kubeconfig(path, f"http://127.0.0.1:{self.port}", {"token": TOKEN, **user})


def write_kubeconfig(path: Path, server: str, user: dict[str, Any], **cluster: Any) -> str:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


async def health_refused(port: int) -> ProtocolError:
    """What a KubeFoundry client's health check meets from a peer on ``port`` that breaks
    the protocol: a :class:`ProtocolError`, within the hang bound (the caller asserts what
    it names, and how many requests the peer saw)."""
    api = KubeFoundryClient(
        f"http://127.0.0.1:{port}", token=TOKEN, retry=RetryPolicy(max_elapsed=HANG)
    )
    try:
        with anyio.fail_after(HANG), pytest.raises(ProtocolError) as err:
            await api.health()
    finally:
        await api.aclose()
    return err.value


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawPeer]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, host: str = "127.0.0.1") -> RawPeer:
        peer = RawPeer(handler)
        server = await asyncio.start_server(peer._serve, host, 0)
        peer.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return peer

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def client(tmp_path: Path) -> Callable[[RawPeer], Awaitable[KubeClient]]:
    async def make(peer: RawPeer) -> KubeClient:
        return await KubeClient.from_kubeconfig(peer.kubeconfig(tmp_path / "kubeconfig"))

    return make


@pytest.fixture
def reading(
    serve: Callable[[Handler], Awaitable[RawPeer]],
    client: Callable[[RawPeer], Awaitable[KubeClient]],
) -> Callable[[Handler], AbstractAsyncContextManager[tuple[RawPeer, KubeClient]]]:
    """A peer that ``handler`` scripts, and a client of it, closed at the block's end."""

    @asynccontextmanager
    async def start(handler: Handler) -> AsyncIterator[tuple[RawPeer, KubeClient]]:
        peer = await serve(handler)
        kube = await client(peer)
        try:
            yield peer, kube
        finally:
            await kube.aclose()

    return start


async def keep_answering(conn: Conn) -> None:
    while request := await conn.request():
        await conn.send(pod_answer(request))


async def test_reads_reuse_one_kept_alive_connection(reading: Any) -> None:
    async with reading(keep_answering) as (peer, kube):
        for i in range(5):
            assert await kube.get(PODS, f"p{i}", "ns", not_older_than="7") == pod(f"p{i}")
        assert kube._lean is not None and kube._lean.opened == 1
        assert peer.connections == 1 and len(peer.requests) == 5
        first = peer.requests[0].decode()
        assert first.startswith("GET /api/v1/namespaces/ns/pods/p0?resourceVersion=7 HTTP/1.1\r\n")
        assert f"authorization: Bearer {TOKEN}" in [
            h[:15].lower() + h[15:] for h in first.split("\r\n")
        ]
        assert f"\r\nHost: 127.0.0.1:{peer.port}\r\n" in first
        assert f"\r\nUser-Agent: {kube._api.user_agent}\r\n" in first
    await peer.until(lambda: peer.closed == 1)


async def test_a_kept_alive_connection_the_server_closed_is_replaced_without_an_error(
    reading: Any,
) -> None:
    # Each connection answers one request and closes at the next without a byte: the
    # moment a server drops an idle connection just as the client sends on it.
    async def one_answer(conn: Conn) -> None:
        request = await conn.request()
        assert request is not None
        await conn.send(pod_answer(request))
        await conn.request()

    async with reading(one_answer) as (peer, kube):
        for i in range(3):
            assert await kube.get(PODS, f"p{i}", "ns", retry=NO_RETRY) == pod(f"p{i}")
        assert kube.requests_sent == 3  # one read each: the resend is the connection's
        assert peer.connections == 3 and len(peer.requests) == 5


async def test_a_connection_closed_after_its_answer_is_not_reused(reading: Any) -> None:
    async def close_after_answer(conn: Conn) -> None:
        request = await conn.request()
        assert request is not None
        await conn.send(pod_answer(request)[:-1] + b"}")  # whole, then the close

    async with reading(close_after_answer) as (peer, kube):
        for i in range(3):
            assert await kube.get(PODS, f"p{i}", "ns", retry=NO_RETRY) == pod(f"p{i}")
        assert peer.connections == 3


async def test_bytes_after_an_answer_are_never_the_next_reads_answer(reading: Any) -> None:
    # A second answer nobody asked for, in the same write as the first (one segment on
    # loopback): the connection's state is unknown, so the next read goes on a new one.
    async def one_too_many(conn: Conn) -> None:
        request = await conn.request()
        assert request is not None
        extra = answer(200, json.dumps(pod("intruder")).encode())
        await conn.send(pod_answer(request) + extra)
        await keep_answering(conn)

    async with reading(one_too_many) as (peer, kube):
        for name in ("p", "q", "r"):
            assert await kube.get(PODS, name, "ns", retry=NO_RETRY) == pod(name)
        assert peer.connections == 3 and len(peer.requests) == 3


async def test_a_new_connection_closed_without_an_answer_is_a_named_transport_error(
    reading: Any,
) -> None:
    async def hang_up(conn: Conn) -> None:
        await conn.request()

    async with reading(hang_up) as (peer, kube):
        with pytest.raises(TransportError) as err:
            await kube.get(PODS, "p", "ns", retry=NO_RETRY)
        assert "GET /api/v1/namespaces/ns/pods/p" in str(err.value)
        assert "closed before the whole answer" in str(err.value)
        assert peer.connections == 1  # a new connection is not sent on twice


def answering_once_all_came(many: int) -> Handler:
    """A handler that holds every answer until ``many`` requests came: reads at once."""
    all_in = asyncio.Event()

    async def answer_when_all_came(conn: Conn) -> None:
        while request := await conn.request():
            if len(conn.peer.requests) >= many:
                all_in.set()
            await all_in.wait()
            await conn.send(pod_answer(request))

    return answer_when_all_came


async def read_at_once(kube: KubeClient, many: int) -> dict[int, dict[str, Any]]:
    """Pods ``p0`` to ``p<many - 1>``, each read in a task of its own, all at once."""
    got: dict[int, dict[str, Any]] = {}

    async def read(i: int) -> None:
        got[i] = await kube.get(PODS, f"p{i}", "ns", retry=NO_RETRY)

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            for i in range(many):
                tg.start_soon(read, i)
    return got


async def test_many_reads_at_once_each_get_their_own_answer_on_their_own_connection(
    reading: Any,
) -> None:
    many = 12
    async with reading(answering_once_all_came(many)) as (peer, kube):
        for _ in range(2):  # the second time on the connections the first left open
            assert await read_at_once(kube, many) == {i: pod(f"p{i}") for i in range(many)}
        assert kube._lean is not None and kube._lean.opened == many == peer.connections
        assert len(peer.requests) == 2 * many
    await peer.until(lambda: peer.closed == many)


async def test_reads_at_once_open_no_more_lean_connections_than_the_limit(reading: Any) -> None:
    many, limit = 6, 2
    async with reading(answering_once_all_came(many)) as (peer, kube):
        kube._open_reader()
        assert kube._lean is not None
        kube._lean._limit = limit
        assert await read_at_once(kube, many) == {i: pod(f"p{i}") for i in range(many)}
        # Those over the limit went on aiohttp's path, within its own connector's limit.
        assert kube._lean.opened == limit


async def test_a_trickled_body_ends_at_the_reads_deadline_saying_what_arrived(reading: Any) -> None:
    async def trickle(conn: Conn) -> None:
        if await conn.request() is None:
            return
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{")
        while True:  # a byte now and then, for ever: never silent, never done
            await asyncio.sleep(0.01)
            await conn.send(b" ")

    async with reading(trickle) as (peer, kube):
        with anyio.fail_after(HANG), pytest.raises(RequestTimeout) as err:
            await kube.read("/api/v1/namespaces/ns/pods/p", check_object, NO_RETRY, timeout=0.3)
        assert err.value.received is not None and err.value.received > 1
        assert "GET /api/v1/namespaces/ns/pods/p: no whole answer within" in str(err.value)
        assert "answered 200" in str(err.value)
        await peer.until(lambda: peer.closed == 1)  # the connection was ended, not kept


async def test_a_header_that_never_ends_is_refused_at_the_head_bound_not_held_to_the_deadline(
    reading: Any,
) -> None:
    # llhttp hands a header over only once it ends, and until then httptools keeps
    # adding its pieces together: the bound must hold while the bytes come.
    from orchestrator.clients._http1 import MAX_HEAD

    async def endless_header(conn: Conn) -> None:
        if await conn.request() is None:
            return
        await conn.send(b"HTTP/1.1 200 OK\r\nX-Long: ")
        for _ in range(4 * MAX_HEAD // 4096):
            await conn.send(b"v" * 4096)
        await conn.reader.read()  # then nothing more, until the client goes

    async with reading(endless_header) as (peer, kube):
        with anyio.fail_after(HANG), pytest.raises(LimitExceeded) as err:
            await kube.read("/api/v1/namespaces/ns/pods/p", check_object, NO_RETRY, timeout=HANG)
        assert "GET /api/v1/namespaces/ns/pods/p" in str(err.value)
        assert f"an answer head over {MAX_HEAD} bytes" in str(err.value)
        await peer.until(lambda: peer.closed == 1)


async def test_a_cancelled_read_ends_its_connection_and_the_next_read_opens_another(
    reading: Any,
) -> None:
    async def first_never_answers(conn: Conn) -> None:
        if conn.index == 0:
            await conn.request()
            await conn.reader.read()  # until the client goes
            return
        await keep_answering(conn)

    async with reading(first_never_answers) as (peer, kube):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kube.get, PODS, "p", "ns")
            await peer.until(lambda: len(peer.requests) == 1)
            tg.cancel_scope.cancel()
        await peer.until(lambda: peer.closed == 1)
        assert await kube.get(PODS, "q", "ns") == pod("q")
        assert peer.connections == 2


async def test_aclose_closes_every_connection_the_one_in_use_too(serve: Any, client: Any) -> None:
    async def first_never_answers(conn: Conn) -> None:
        if conn.index == 0:
            await conn.request()
            await conn.reader.read()
            return
        await keep_answering(conn)

    peer = await serve(first_never_answers)
    kube = await client(peer)
    failed: list[BaseException] = []

    async def stuck_read() -> None:
        try:
            await kube.get(PODS, "stuck", "ns", retry=NO_RETRY)
        except ClientError as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stuck_read)  # a connection in use
        await peer.until(lambda: len(peer.requests) == 1)
        assert await kube.get(PODS, "p", "ns") == pod("p")  # and an idle one
        await kube.aclose()
    await peer.until(lambda: peer.closed == 2)
    assert len(failed) == 1 and isinstance(failed[0], TransportError)
    assert "GET /api/v1/namespaces/ns/pods/stuck" in str(failed[0])


async def test_an_error_answer_on_the_lean_path_is_the_servers_own(reading: Any) -> None:
    status = {"kind": "Status", "message": 'pods "p" not found'}

    async def not_found(conn: Conn) -> None:
        while await conn.request():
            body = gzip.compress(json.dumps(status).encode())
            await conn.send(answer(404, body, "Content-Encoding: gzip", "Retry-After: 3"))

    async with reading(not_found) as (peer, kube):
        with pytest.raises(NotFound) as gone:
            await kube.get(PODS, "p", "ns")
        assert gone.value.message == 'pods "p" not found' and gone.value.retry_after == 3
        assert kube._lean is not None and kube._lean.opened == 1


async def test_a_gzip_body_of_several_members_is_decoded_whole(reading: Any) -> None:
    # RFC 1952 allows members one after another; aiohttp decodes them all.
    body = json.dumps(pod("p")).encode()

    async def two_members(conn: Conn) -> None:
        while await conn.request():
            coded = gzip.compress(body[:10]) + gzip.compress(body[10:])
            await conn.send(answer(200, coded, "Content-Encoding: gzip"))

    async with reading(two_members) as (peer, kube):
        assert await kube.get(PODS, "p", "ns", retry=NO_RETRY) == pod("p")
        assert kube._lean is not None and kube._lean.opened == 1


@pytest.mark.parametrize("members", [1, 2, 3])
async def test_a_gzip_body_that_decodes_past_the_bound_is_refused(
    reading: Any, monkeypatch: pytest.MonkeyPatch, members: int
) -> None:
    from orchestrator.clients import _http1

    monkeypatch.setattr(_http1, "MAX_BODY", 1000)
    coded = b"".join(gzip.compress(b" " * (2000 // members)) for _ in range(members))

    async def bomb(conn: Conn) -> None:
        while await conn.request():
            await conn.send(answer(200, coded, "Content-Encoding: gzip"))

    async with reading(bomb) as (peer, kube):
        with pytest.raises(LimitExceeded) as err:
            await kube.get(PODS, "p", "ns", retry=NO_RETRY)
        assert "a decoded body over 1000 bytes" in str(err.value)


async def test_a_chunked_or_close_delimited_body_is_read_whole(reading: Any) -> None:
    body = json.dumps(pod("p")).encode()

    async def framed(conn: Conn) -> None:
        if await conn.request() is None:
            return
        if conn.index == 0:
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:5], body[5:]))
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await conn.send(chunks + b"0\r\n\r\n")
            await keep_answering(conn)
        else:  # no length, no chunks: the body ends where the connection does
            await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)

    async with reading(framed) as (peer, kube):
        assert await kube.get(PODS, "p", "ns") == pod("p")
        assert await kube.get(PODS, "p", "ns") == pod("p")  # the same connection
        assert peer.connections == 1


async def test_a_chunked_bodys_trailers_are_not_taken_for_its_headers(reading: Any) -> None:
    # aiohttp drops trailers; here they would decide how the body is decoded.
    body = json.dumps(pod("p")).encode()

    async def with_trailers(conn: Conn) -> None:
        while await conn.request():
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await conn.send(b"%x\r\n%s\r\n0\r\n" % (len(body), body))
            await conn.send(b"Content-Encoding: gzip\r\nSet-Cookie: a=b\r\n\r\n")

    async with reading(with_trailers) as (peer, kube):
        assert await kube.get(PODS, "p", "ns", retry=NO_RETRY) == pod("p")
        assert await kube.get(PODS, "p", "ns", retry=NO_RETRY) == pod("p")
        assert peer.connections == 1 and b"Cookie" not in peer.requests[1]


def test_reads_on_uvloop_reuse_their_connection_and_close_it(tmp_path: Path) -> None:
    # ORCHESTRATOR_EVENT_LOOP=uvloop runs the reads on uvloop's own transports.
    async def main() -> None:
        peer = RawPeer(keep_answering)
        server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
        peer.port = server.sockets[0].getsockname()[1]
        kube = await KubeClient.from_kubeconfig(peer.kubeconfig(tmp_path / "k"))
        try:
            for name in ("p", "q"):
                assert await kube.get(PODS, name, "ns") == pod(name)
            assert kube._lean is not None and kube._lean.opened == 1
        finally:
            await kube.aclose()
        await peer.until(lambda: peer.closed == 1)
        server.close()
        await server.wait_closed()

    anyio.run(main, backend_options={"use_uvloop": True})


# -- whatever bytes a peer answers ----------------------------------------------------

STATUS_LINES = st.sampled_from(
    [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.0 200 OK", b"HTTP/1.1 503 x",
     b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 101 Switching", b"HTTP/1.1 2000 OK", b"HTTP/2 200",
     b"ICY 200 OK", b"HTTP/1.1 200", b""]
)  # fmt: skip
HEADERS = st.sampled_from(
    [b"Content-Length: 2", b"Content-Length: 99999", b"Content-Length: -1",
     b"Content-Length: 2\r\nContent-Length: 3", b"Transfer-Encoding: chunked",
     b"Transfer-Encoding: gzip", b"Content-Encoding: gzip", b"Content-Encoding: br",
     b"Connection: close", b"Connection: upgrade\r\nUpgrade: h2c", b"Retry-After: x",
     b"Set-Cookie: a=b", b"X-Bad Header: 1", b"X: " + b"v" * 70000, b"\x00: \x01",
     f"Authorization: Bearer {TOKEN}".encode()]
)  # fmt: skip
BODIES = (
    st.binary(max_size=200)
    | st.just(json.dumps(pod("p")).encode())
    | st.just(gzip.compress(json.dumps(pod("p")).encode()))
    | st.just(b"2\r\n{}\r\n0\r\n\r\n")
    | st.just(b"ffffffffffffffffff\r\nx")
    | st.just(f'{{"message": "Authorization: Bearer {TOKEN}"}}'.encode())
)
ANSWERS = st.builds(
    lambda status, headers, body: status + b"".join(b"\r\n" + h for h in headers) + b"\r\n\r\n" + body,
    STATUS_LINES,
    st.lists(HEADERS, max_size=4),
    BODIES,
) | st.binary(max_size=300)  # fmt: skip


class IdleJumpLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its next timer whenever nothing is ready.

    For a peer and a client that share this one loop over loopback: whatever one of them
    writes is ready for the other by the loop's next look, so a look that finds nothing
    ready means that nothing happens before the next timer, and waiting for that timer
    in real time would only be idle. An answer that never ends then meets the read's
    deadline at once, and a whole answer is read before its deadline however loaded the
    machine is (in real time, a busy machine could cut it short). A wait with no timer
    (the peer's reading till the client's close) still blocks on the sockets.
    """

    def __init__(self) -> None:
        super().__init__()
        self._skipped = 0.0
        select = self._selector.select

        def select_or_jump(timeout: float | None = None) -> list[Any]:
            ready = select(0)
            if ready or timeout == 0:
                return ready
            if timeout is None:
                return select(None)
            self._skipped += timeout
            return []

        self._selector.select = select_or_jump  # type: ignore[method-assign]

    def time(self) -> float:
        return super().time() + self._skipped


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=ANSWERS, then=st.none() | ANSWERS, close=st.booleans())
def test_any_bytes_a_peer_answers_are_an_object_or_a_named_client_error(
    tmp_path_factory: pytest.TempPathFactory, first: bytes, then: bytes | None, close: bool
) -> None:
    async def main() -> None:
        async def hostile(conn: Conn) -> None:
            while await conn.request():
                await conn.send(first if then is None or len(peer.requests) == 1 else then)
                if close:
                    return
            # Otherwise the connection stays open: an answer that never ends meets the
            # read's deadline (on the loop's clock, which skips the idle wait for it).

        peer = RawPeer(hostile)
        server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
        peer.port = server.sockets[0].getsockname()[1]
        kube = await KubeClient.from_kubeconfig(peer.kubeconfig(tmp_path_factory.mktemp("k") / "c"))
        try:
            for _ in range(2):  # a second read on what the first one left
                try:
                    got = await kube.read(
                        "/api/v1/namespaces/ns/pods/p", check_object, NO_RETRY, timeout=0.2
                    )
                except ClientError as exc:
                    assert TOKEN not in str(exc)
                    assert "GET /api/v1/namespaces/ns/pods/p" in str(exc)
                else:
                    assert check_object(got, "x") is got
        finally:
            await kube.aclose()
            server.close()
            await server.wait_closed()

    anyio.run(main, backend_options={"loop_factory": IdleJumpLoop})


#: Where the hostile proxy's mutations aim here: the reads of pods (``get`` and ``list``).
POD_READS = {"list": {"watch": False, "method": "GET", "path": r"/pods"}}


@pytest.fixture(params=["testcluster"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh test cluster of the test's own. Its parameter names the backend, so that the
    worker's pool starts one ahead while the test before runs (tests/README.md), as for
    the flow tests' ``testcluster`` rows, instead of this test waiting for its start."""
    from _testcluster import fresh_cluster

    with fresh_cluster() as fresh:
        yield fresh


@pytest.mark.cluster
def test_reads_through_the_hostile_proxy_end_as_an_object_or_a_named_client_error(
    cluster: Any,
) -> None:
    from proxy import HostileProxy, mutations

    from orchestrator.clients import NAMESPACES

    async def seed() -> None:
        async with await KubeClient.from_kubeconfig(str(cluster.kubeconfig)) as kube:
            await kube.create(NAMESPACES, {"metadata": {"name": "hostile"}})
            spec = {"containers": [{"name": "c", "image": "i"}]}
            await kube.create(PODS, {"metadata": {"name": "p"}, "spec": spec}, "hostile")

    anyio.run(seed)

    async def through(plan: list[Any], workdir: Path) -> None:
        async with HostileProxy.for_kubeconfig(cluster.kubeconfig, plan) as proxy:
            config = proxy.write_kubeconfig(workdir / "kubeconfig")
            kube = await KubeClient.from_kubeconfig(str(config))
            try:
                for path, check in 2 * [
                    (PODS.path("hostile", "p"), check_object),
                    (PODS.path("hostile"), check_list),
                ]:
                    try:
                        got = await kube.read(path, check, NO_RETRY, timeout=3)
                    except ClientError as exc:
                        assert f"GET {path}" in str(exc)
                        if not any(m.name == "echo_secret" for m in plan):
                            # (a body that quotes the token bare is masked by the run)
                            assert str(proxy.token) not in str(exc)
                    else:
                        assert check(got, "x") is got
                assert proxy.applied  # the reads met the plan
                proxy.clear()
                # Whatever the connections went through, the next read is whole.
                assert (await kube.get(PODS, "p", "hostile"))["metadata"]["name"] == "p"
                assert kube._lean is not None and kube._lean.opened >= 1
            finally:
                await kube.aclose()

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(plan=st.lists(mutations(POD_READS), min_size=1, max_size=3))
    def each(plan: list[Any]) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            anyio.run(through, plan, Path(workdir))

    each()


# -- TLS: the kubeconfig's CA, client certificate and server name ---------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path

    def data(self, path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and ``kube.test``, a client certificate,
    and a CA that signed neither (openssl, EC keys: fast)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-subj", f"/CN={ca}", "-days", "2", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:kube.test\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who, subject in (("server", "/CN=server"), ("client", "/CN=admin/O=system:masters")):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", subject, cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext",
                 "-out", f"{who}.crt", cwd=d)  # fmt: skip
    return Pki(
        d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
        d / "other.crt",
    )  # fmt: skip


@dataclass
class TlsPeer:
    url: str
    seen: list[tuple[str, str | None, Any]] = field(default_factory=list)


@pytest.fixture
async def tls_peer(pki: Pki) -> AsyncIterator[TlsPeer]:
    """An HTTPS server that requires a client certificate signed by the CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    peer = TlsPeer("")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        peer.seen.append((request.path, request.headers.get("Authorization"), cert))
        return web.json_response(pod(request.path.rsplit("/", 1)[-1]))

    runner = web.ServerRunner(web.Server(handle), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    peer.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield peer
    finally:
        await runner.cleanup()


def tls_user(pki: Pki) -> dict[str, str]:
    return {
        "client-certificate-data": pki.data(pki.client_cert),
        "client-key-data": pki.data(pki.client_key),
        "token": TOKEN,
    }


@pytest.mark.parametrize("server_name", [None, "kube.test"])
async def test_a_read_over_tls_presents_the_kubeconfigs_client_certificate(
    tls_peer: TlsPeer, pki: Pki, tmp_path: Path, server_name: str | None
) -> None:
    cluster: dict[str, Any] = {"certificate-authority-data": pki.data(pki.ca)}
    if server_name:
        cluster["tls-server-name"] = server_name
    config = write_kubeconfig(tmp_path / "k", tls_peer.url, tls_user(pki), **cluster)
    kube = await KubeClient.from_kubeconfig(config)
    try:
        for name in ("p", "q"):
            assert await kube.get(PODS, name, "ns") == pod(name)
        assert kube._lean is not None and kube._lean.opened == 1
    finally:
        await kube.aclose()
    assert [s[:2] for s in tls_peer.seen] == [
        ("/api/v1/namespaces/ns/pods/p", f"Bearer {TOKEN}"),
        ("/api/v1/namespaces/ns/pods/q", f"Bearer {TOKEN}"),
    ]
    assert ((("commonName", "admin"),),) == tls_peer.seen[0][2]["subject"][:1]


@pytest.mark.parametrize(
    "problem", ["no client certificate", "an untrusted server", "a wrong server name"]
)
async def test_a_tls_set_up_that_fails_is_a_named_transport_error(
    tls_peer: TlsPeer, pki: Pki, tmp_path: Path, problem: str
) -> None:
    user = tls_user(pki)
    cluster: dict[str, Any] = {"certificate-authority-data": pki.data(pki.ca)}
    if problem == "no client certificate":
        user = {"token": TOKEN}
    elif problem == "an untrusted server":
        cluster["certificate-authority-data"] = pki.data(pki.other_ca)
    else:
        cluster["tls-server-name"] = "elsewhere.test"
    kube = await KubeClient.from_kubeconfig(
        write_kubeconfig(tmp_path / "k", tls_peer.url, user, **cluster)
    )
    try:
        with pytest.raises(TransportError) as err:
            await kube.get(PODS, "p", "ns", retry=NO_RETRY)
        assert "GET /api/v1/namespaces/ns/pods/p" in str(err.value)
        assert TOKEN not in str(err.value)
        assert kube._lean is not None  # the lean path's own failure, named like aiohttp's
    finally:
        await kube.aclose()


# -- what keeps reads on aiohttp's path -----------------------------------------------


async def test_a_proxy_or_a_netrc_entry_keeps_reads_on_aiohttp(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = await serve(keep_answering)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login me password pw\n")
    netrc.chmod(0o600)
    setups: list[tuple[str, dict[str, str], dict[str, Any]]] = [
        ("a proxy in the environment", {"HTTP_PROXY": "http://127.0.0.1:1"}, {}),
        ("a netrc entry", {"NETRC": str(netrc)}, {}),
        ("a proxy in the kubeconfig", {}, {"proxy-url": "http://127.0.0.1:1"}),
    ]
    for what, env, cluster in setups:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            config = write_kubeconfig(
                tmp_path / "k", f"http://127.0.0.1:{peer.port}", {"token": TOKEN}, **cluster
            )
            kube = await KubeClient.from_kubeconfig(config)
            try:
                kube._open_reader()
                assert kube._lean is None, what
            finally:
                await kube.aclose()
    kube = await KubeClient.from_kubeconfig(peer.kubeconfig(tmp_path / "plain"))
    try:
        kube._open_reader()
        assert kube._lean is not None  # and without any of them, the lean path
    finally:
        await kube.aclose()


async def on_both_paths(kube: KubeClient, path: str, query: dict[str, Any]) -> None:
    """One read on the lean path, then the same one on aiohttp's."""
    await kube.read(path, check_object, NO_RETRY, query=query)
    lean, kube._lean = kube._lean, None
    try:
        await kube.read(path, check_object, NO_RETRY, query=query)
    finally:
        kube._lean = lean


def sent_head(request: bytes) -> list[str]:
    """A request's lines as a server sees them, less the encodings each path accepts."""
    lines = request.decode("latin-1").split("\r\n")
    return [line for line in lines if not line.lower().startswith("accept-encoding:")]


@pytest.mark.parametrize(
    ("named", "bound", "host"),
    [("LocalHost", "127.0.0.1", "localhost"), ("[::1]", "::1", "[::1]")],
    ids=["name-in-capitals", "ipv6-literal"],
)
async def test_the_lean_path_sends_the_host_and_target_aiohttp_sent(
    serve: Any, tmp_path: Path, named: str, bound: str, host: str
) -> None:
    served: list[int] = []  # the connection of each request

    async def any_path(conn: Conn) -> None:
        while await conn.request():
            served.append(conn.index)
            await conn.send(answer(200, json.dumps(pod("p")).encode()))

    peer = await serve(any_path, bound)
    # aiohttp sends the host as yarl writes it: lower case, an IPv6 address in brackets.
    server = f"http://{named}:{peer.port}"
    kube = await KubeClient.from_kubeconfig(write_kubeconfig(tmp_path / "k", server, {}))
    reads = [
        ("/api/v1/namespaces/ns/pods", {"labelSelector": "app in (a,b),tier!=x"}),
        ("/api/v1/namespaces/ns/pods", {"fieldSelector": "metadata.name=p~1", "limit": 5}),
        ("/api/v1/namespaces/ns/pods/%7Ep", {"x": "a b+c/%~*'!$@:;?\"{|}"}),
        ('/api/v1/namespaces/ns/pods/a"b{c}|d', {"resourceVersion": "7"}),
        ("/api/v1/namespaces/ns/pods/./x/../p", {}),
        ("/api/v1/namespaces/ns/pods/é", {"labelSelector": "é=ü"}),
    ]
    try:
        for path, query in reads:
            await on_both_paths(kube, path, query)
            lean, aio = peer.requests[-2:]
            assert sent_head(lean) == sent_head(aio), (path, query)
        # Each first read went on the lean path's one connection, each second on aiohttp's.
        assert kube._lean is not None and kube._lean.opened == 1
        assert served[0::2] == [0] * len(reads) and 0 not in served[1::2]
        assert peer.requests[0].startswith(b"GET /api/v1/namespaces/ns/pods?")
        assert f"\r\nHost: {host}:{peer.port}\r\n".encode() in peer.requests[0]
    finally:
        await kube.aclose()


@settings(max_examples=300, deadline=None)
@given(target=st.from_regex(r"/[A-Za-z0-9\-._~/?=&%()!,:@+ é]*", fullmatch=True))
def test_every_target_goes_on_the_wire_as_yarl_sends_it(target: str) -> None:
    # The lean path skips yarl for the usual targets: only where yarl changes nothing.
    from yarl import URL

    from orchestrator.clients._http1 import Http1Pool

    sent = Http1Pool("h", 80, authority="h", tls=None).head(target, []).split(b" ")[1]
    assert sent.decode() == URL(f"http://host{target}").raw_path_qs


async def test_a_cookie_the_server_sets_is_sent_back(serve: Any, tmp_path: Path) -> None:
    async def set_cookie(conn: Conn) -> None:
        while await conn.request():
            body = json.dumps(pod("p")).encode()
            await conn.send(answer(200, body, "Set-Cookie: session=abc; Path=/"))

    peer = await serve(set_cookie)
    # A host name: a cookie jar keeps no cookie of an IP address.
    server = f"http://localhost:{peer.port}"
    kube = await KubeClient.from_kubeconfig(write_kubeconfig(tmp_path / "k", server, {}))
    try:
        await kube.get(PODS, "p", "ns")
        await kube.get(PODS, "p", "ns")
        assert b"\r\nCookie: session=abc\r\n" not in peer.requests[0]
        assert b"\r\nCookie: session=abc\r\n" in peer.requests[1]
    finally:
        await kube.aclose()


async def test_a_header_that_cannot_be_sent_as_it_is_never_reaches_the_wire(
    serve: Any, tmp_path: Path
) -> None:
    peer = await serve(keep_answering)
    kube = await KubeClient.from_kubeconfig(peer.kubeconfig(tmp_path / "k"))
    kube._api.configuration.api_key["BearerToken"] = "Bearer x\r\nX-Injected: 1"
    try:
        with pytest.raises(ClientError) as err:
            await kube.get(PODS, "p", "ns", retry=NO_RETRY)
        assert "GET /api/v1/namespaces/ns/pods/p" in str(err.value)
        assert not any(b"X-Injected" in r for r in peer.requests)
    finally:
        await kube.aclose()


# -- the real API server --------------------------------------------------------------


@pytest.mark.cluster
async def test_reads_from_the_test_cluster_go_on_one_kept_alive_tls_connection(
    cluster: Any,
) -> None:
    from orchestrator.clients import NAMESPACES

    kube = await KubeClient.from_kubeconfig(str(cluster.kubeconfig))
    try:
        assert kube.server.startswith("https://")
        await kube.create(NAMESPACES, {"metadata": {"name": "lean"}})
        spec = {"containers": [{"name": "c", "image": "i"}]}
        await kube.create(PODS, {"metadata": {"name": "p"}, "spec": spec}, "lean")
        versions = []
        for i in range(3):
            patch = {"metadata": {"annotations": {"step": str(i)}}}
            written = await kube.patch(PODS, "p", patch, "lean")
            versions.append(written["metadata"]["resourceVersion"])
            read = await kube.get(PODS, "p", "lean", not_older_than=versions[-1])
            assert read["metadata"]["annotations"]["step"] == str(i)
        with pytest.raises(NotFound):
            await kube.get(PODS, "nobody", "lean")
        listed = await kube.list(PODS, "lean", not_older_than=versions[-1])
        assert [p["metadata"]["name"] for p in listed["items"]] == ["p"]
        assert kube._lean is not None and kube._lean.opened == 1
    finally:
        await kube.aclose()


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
async def test_a_switching_answer_is_the_servers_status_on_either_path(
    reading: Any, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    """A 101 to a read is the server's status, named as such, on either path: not a broken
    connection retried until the deadline (llhttp stops at a 101's head, as an upgrade)."""

    async def switching(conn: Conn) -> None:
        if await conn.request():
            await conn.send(
                b"HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
            )

    if not lean:
        monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)
    async with reading(switching) as (peer, kube):
        with pytest.raises(HTTPStatusError, match="answered 101") as caught:
            await kube.get(PODS, "p", "ns")
        assert caught.value.status == 101
        assert (kube._lean is not None) == lean
        assert len(peer.requests) == 1
