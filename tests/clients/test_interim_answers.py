"""Interim (1xx) answers from a peer, on every path a request or a watch takes.

HTTP lets a server send any number of interim answers (``100 Continue``, ``103 Early
Hints``) before the final one. Each is a whole message (no byte bound meets it) and a
sign of life (no silence meets it): a peer that sends them without end held a read until
its deadline (then retried until the phase's), and a watch for ever. A few are taken, as
a real server sends; past :data:`MAX_INTERIM` the request ends at once with a
:class:`ProtocolError` naming the route (not retried: another try would meet them again),
and the connection is closed.

The peers are plain asyncio servers that write interim answers until the client goes;
each test waits on what happened (the error, the connection closed), never on time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lean_reads import (
    HANG,
    NO_RETRY,
    TOKEN,
    Conn,
    IdleJumpLoop,
    RawPeer,
    client,  # noqa: F401  (a fixture)
    health_refused,
    pod_answer,
    reading,  # noqa: F401  (a fixture)
    serve,  # noqa: F401  (a fixture)
)
from test_lean_watch import HEAD, chunked, event, take, watching  # noqa: F401

from orchestrator.clients import (
    KubeClient,
    ProtocolError,
)
from orchestrator.clients._http1 import MAX_INTERIM
from orchestrator.clients.kube import check_object

pytestmark = pytest.mark.anyio
PATH = "/api/v1/namespaces/ns/pods/p"

#: The interim answers a peer may send: bare, and with headers (which reset the lean
#: path's count of bytes no header has taken, so only a count of answers meets them).
INTERIM = {
    "100-continue": b"HTTP/1.1 100 Continue\r\n\r\n",
    "103-early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
}


def aiohttp_path(kube: KubeClient) -> None:
    """Send this client's reads and watches on aiohttp's path (as a proxy would)."""
    kube._open_reader()
    kube._lean = None
    kube._lean_watches = False


async def endless_interim(conn: Conn, interim: bytes) -> None:
    """Interim answers to the first request, until the client goes."""
    if await conn.request() is None:
        return
    try:
        while True:
            await conn.send(interim * 16)
    except ConnectionError:
        pass


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("interim", list(INTERIM.values()), ids=list(INTERIM))
async def test_endless_interim_answers_to_a_read_are_a_protocol_error_at_once(
    reading: Any, monkeypatch: pytest.MonkeyPatch, lean: bool, interim: bytes
) -> None:
    if not lean:
        monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)

    async def hostile(conn: Conn) -> None:
        await endless_interim(conn, interim)

    async with reading(hostile) as (peer, kube):
        # The whole hang as its deadline: only the count of interim answers can end it
        # before the test's bound. (Kubernetes reads retry broken bytes, READS: each
        # try ends as this one does, and the last try's error names the reason.)
        with anyio.fail_after(HANG), pytest.raises(ProtocolError) as err:
            await kube.read(PATH, check_object, NO_RETRY, timeout=HANG)
        assert f"GET {PATH}: over {MAX_INTERIM} interim (1xx) answers" in str(err.value)
        assert TOKEN not in str(err.value)
        await peer.until(lambda: peer.closed == 1)  # the connection was ended, not kept
        assert (kube._lean is not None) == lean


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
async def test_a_few_interim_answers_then_the_answer_is_the_answer(
    reading: Any, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    if not lean:
        monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)

    async def polite(conn: Conn) -> None:
        while request := await conn.request():
            await conn.send(
                b"".join(list(INTERIM.values()) * (MAX_INTERIM // 2)) + pod_answer(request)
            )

    async with reading(polite) as (peer, kube):
        with anyio.fail_after(HANG):
            for name in ("p", "q"):  # the connection is whole after them: kept, and reused
                got = await kube.read(f"/api/v1/namespaces/ns/pods/{name}", check_object, NO_RETRY)
                assert got["metadata"]["name"] == name
        assert peer.connections == 1


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("interim", list(INTERIM.values()), ids=list(INTERIM))
async def test_endless_interim_answers_to_a_watch_end_it_with_a_protocol_error(
    watching: Any, lean: bool, interim: bytes
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            w.write(interim * 16)
            await w.drain()

    kube = await watching(script)
    kube._lean_watches = lean
    got: list[Any] = []
    with pytest.raises(ProtocolError, match=rf"over {MAX_INTERIM} interim \(1xx\) answers"):
        await take(kube, got)
    assert got == []
    with anyio.fail_after(HANG):
        await kube.peer.closed.wait()


async def test_a_watch_after_a_few_interim_answers_streams_its_events(
    watching: Any,
) -> None:
    for lean in (True, False):

        async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(INTERIM["103-early-hints"] * MAX_INTERIM + HEAD)
            w.write(chunked(event("ADDED", "a") + b"\n") + b"0\r\n\r\n")
            await w.drain()

        kube = await watching(script)
        kube._lean_watches = lean
        got: list[Any] = []
        await take(kube, got)
        assert got == [("ADDED", "a")], lean


async def test_endless_interim_answers_from_the_backend_are_a_protocol_error_at_once(
    serve: Any,
) -> None:
    """The backend's client (httpx over aiohttp): not retried, named, the token unsaid."""

    async def hostile(conn: Conn) -> None:
        await endless_interim(conn, INTERIM["103-early-hints"])

    peer = await serve(hostile)
    refused = await health_refused(peer.port)
    assert f"GET /api/health: over {MAX_INTERIM} interim (1xx) answers" in str(refused)
    assert TOKEN not in str(refused)
    assert len(peer.requests) == 1
    await peer.until(lambda: peer.closed == 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codes=st.lists(st.integers(100, 199).filter(lambda c: c != 101), max_size=2 * MAX_INTERIM + 2),
    headers=st.lists(st.sampled_from([b"", b"Link: </a>; rel=preload\r\n", b"X-A: b\r\n"])),
    lean=st.booleans(),
)
def test_any_run_of_interim_answers_is_taken_or_refused_by_its_count(
    tmp_path_factory: pytest.TempPathFactory, codes: list[int], headers: list[bytes], lean: bool
) -> None:
    """Up to :data:`MAX_INTERIM` interim answers of any 1xx code (but 101, which is final)
    and any headers, then the answer: the object; more: a protocol error, on either path."""
    interim = b"".join(
        b"HTTP/1.1 %d X\r\n%s\r\n" % (code, headers[i % len(headers)] if headers else b"")
        for i, code in enumerate(codes)
    )

    async def main() -> None:
        async def hostile(conn: Conn) -> None:
            while request := await conn.request():
                await conn.send(interim + pod_answer(request))

        peer = RawPeer(hostile)
        server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
        peer.port = server.sockets[0].getsockname()[1]
        kube = await KubeClient.from_kubeconfig(peer.kubeconfig(tmp_path_factory.mktemp("k") / "c"))
        if not lean:
            aiohttp_path(kube)
        try:
            try:
                got = await kube.read(PATH, check_object, NO_RETRY, timeout=HANG)
            except ProtocolError as exc:
                assert len(codes) > MAX_INTERIM, exc
                assert f"GET {PATH}: over {MAX_INTERIM} interim" in str(exc)
            else:
                assert len(codes) <= MAX_INTERIM and got["metadata"]["name"] == "p"
        finally:
            await kube.aclose()
            server.close()
            await server.wait_closed()

    anyio.run(main, backend_options={"loop_factory": IdleJumpLoop})
