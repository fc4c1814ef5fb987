"""The backend transport decodes gzip and deflate as the bytes come, a piece at a time.

httpx decodes each read of a body whole, and a few KiB of gzip stand for gigabytes: a
backend (or the model server behind the backend transport) sending a bomb grew the
memory about a thousandfold per read before the client's bound on the whole answer
could look at it. The transport now decodes in pieces of at most ``PIECE`` bytes, so
the bound is met within a piece of it, and refuses a stack of codings (gzip inside
gzip), which no answer needs.

The decoding's correctness is drawn by hypothesis (any body, any coding, any cut into
reads); the bomb is served by a plain asyncio server and its cost read by tracemalloc.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_answer_size import answer_once, framed
from test_lean_reads import HANG, TOKEN, health_refused, serve  # noqa: F401  (a fixture)

import orchestrator.clients.kubefoundry as kubefoundry_module
from orchestrator.clients import (
    InferenceClient,
    InferenceRoute,
    KubeFoundryClient,
    LimitExceeded,
    ProtocolError,
    RetryPolicy,
)
from orchestrator.clients._aiohttp_transport import _ZLIB_CODINGS, PIECE, _Decoding
from orchestrator.clients._http1 import MAX_HEAD, AnswerTooLarge

BOUND = 256 * 1024


def encode(body: bytes, coding: str, members: int) -> bytes:
    if coding == "gzip":
        cut = [
            body[i * len(body) // members : (i + 1) * len(body) // members] for i in range(members)
        ]
        return b"".join(gzip.compress(part) for part in cut)
    if coding == "deflate":
        return zlib.compress(body)
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # deflate without zlib's header
    return raw.compress(body) + raw.flush()


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=4096) | st.integers(0, 3 * PIECE).map(lambda n: b"\0" * n),
    coding=st.sampled_from(["gzip", "deflate", "raw-deflate"]),
    members=st.integers(1, 4),
    cuts=st.lists(st.integers(1, 4096), max_size=8),
)
def test_any_body_decodes_whole_in_pieces_of_at_most_a_piece(
    body: bytes, coding: str, members: int, cuts: list[int]
) -> None:
    coded = encode(body, coding, members)
    decoding = _Decoding(_ZLIB_CODINGS["gzip" if coding == "gzip" else "deflate"])
    pieces: list[bytes] = []
    at = 0
    for size in [*cuts, len(coded)]:  # the reads as the connection hands them on
        pieces += decoding.feed(coded[at : at + size])
        at += size
    pieces += decoding.end()
    assert b"".join(pieces) == body
    assert all(0 < len(piece) <= PIECE for piece in pieces)


@pytest.mark.parametrize("coding", ["deflate", "raw-deflate"])
def test_bytes_after_a_deflate_stream_are_ignored_up_to_a_bound(coding: str) -> None:
    """Ignored as httpx ignores them, but not without end: they decode to nothing, so no
    bound on the decoded answer would ever meet them."""
    body = b'{"status": "ok"}'
    decoding = _Decoding(_ZLIB_CODINGS["deflate"])
    pieces = list(decoding.feed(encode(body, coding, 1)))
    for _ in range(MAX_HEAD // 4096):
        pieces += decoding.feed(b"\0" * 4096)
    pieces += decoding.end()
    assert b"".join(pieces) == body
    with pytest.raises(AnswerTooLarge, match=f"over {MAX_HEAD} bytes after the end"):
        list(decoding.feed(b"\0"))


@pytest.mark.anyio
async def test_a_deflate_answer_followed_by_endless_bytes_ends_at_the_bound(serve: Any) -> None:
    """Before, each read of them was fed to zlib, which kept them all, and the request
    went on until its deadline: nothing they decode to could meet the answer's bound."""

    async def endless(conn: Any) -> None:
        if await conn.request() is None:
            return
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += b"Content-Encoding: deflate\r\nConnection: close\r\n\r\n"
        try:
            await conn.send(head + zlib.compress(b'{"status": "ok"}'))
            while True:
                await conn.send(b"\0" * 65536)
        except ConnectionError:
            pass

    peer = await serve(endless)
    api = KubeFoundryClient(
        f"http://127.0.0.1:{peer.port}", token=TOKEN, retry=RetryPolicy(max_elapsed=HANG)
    )
    try:
        with anyio.fail_after(HANG), pytest.raises(LimitExceeded) as err:
            with anyio.fail_after(HANG / 2):  # the request's own deadline is later
                await api.health()
    finally:
        await api.aclose()
    assert f"GET /api/health: over {MAX_HEAD} bytes after the end of a deflate stream" in str(
        err.value
    )
    assert len(peer.requests) == 1


@pytest.mark.anyio
async def test_a_gzip_bomb_from_the_backend_costs_a_piece_not_its_decoded_size(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubefoundry_module, "MAX_ANSWER", BOUND)
    # About 128 KiB that decode to 128 MiB, sent at once: one or two reads.
    bomb = gzip.compress(b"0" * (128 * 1024 * 1024), compresslevel=9)

    async def once(conn: Any) -> None:
        await answer_once(conn, framed(bomb, "length", b"Content-Encoding: gzip"))

    peer = await serve(once)
    api = KubeFoundryClient(
        f"http://127.0.0.1:{peer.port}", token=TOKEN, retry=RetryPolicy(max_elapsed=HANG)
    )
    tracemalloc.start()
    try:
        with anyio.fail_after(HANG), pytest.raises(ProtocolError) as err:
            await api.health()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await api.aclose()
    assert f"GET /api/health: an answer body over {BOUND} bytes" in str(err.value)
    assert len(peer.requests) == 1
    # The bound, a piece and the bomb itself, with room: not the read's 100-odd MiB.
    assert peak < 16 * 1024 * 1024, peak


@pytest.mark.anyio
@pytest.mark.parametrize("codings", [b"gzip, gzip", b"br, gzip", b"deflate, identity, gzip"])
async def test_a_stack_of_codings_from_the_backend_is_refused(serve: Any, codings: bytes) -> None:
    body = gzip.compress(gzip.compress(b'{"status": "ok"}'))

    async def once(conn: Any) -> None:
        await answer_once(conn, framed(body, "length", b"Content-Encoding: " + codings))

    peer = await serve(once)
    refused = await health_refused(peer.port)
    assert "GET /api/health" in str(refused) and "content codings" in str(refused)
    assert len(peer.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
async def test_a_body_that_does_not_decode_is_the_backends_answer_not_a_flake(
    serve: Any, coding: bytes
) -> None:
    """Broken bytes, which the backend client reports at once: before, the decoding's
    error was a transport failure, retried until the deadline."""

    async def broken(conn: Any) -> None:
        while await conn.request() is not None:
            await conn.send(framed(b"\xff" * 64, "length", b"Content-Encoding: " + coding))

    peer = await serve(broken)
    api = KubeFoundryClient(
        f"http://127.0.0.1:{peer.port}", token=TOKEN, retry=RetryPolicy(max_elapsed=HANG)
    )
    try:
        with anyio.fail_after(HANG), pytest.raises(ProtocolError) as err:
            with anyio.fail_after(HANG / 2):
                await api.health()
    finally:
        await api.aclose()
    assert "GET /api/health: the body does not decode" in str(err.value)
    assert TOKEN not in str(err.value)
    assert len(peer.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
async def test_a_body_that_does_not_decode_from_the_model_is_not_a_model_still_loading(
    serve: Any, coding: bytes, streamed: bool
) -> None:
    """The model's url route goes through the same transport: undecodable bytes are the
    model's answer, a ProtocolError after one request. Before, they were a transport
    failure, which the loading model's grace took for a model not yet up and sent again
    and again, each try ending at once on the same bytes."""

    async def broken(conn: Any) -> None:
        while await conn.request() is not None:
            await conn.send(framed(b"\xff" * 64, "length", b"Content-Encoding: " + coding))

    peer = await serve(broken)
    model = InferenceClient(InferenceRoute("url", f"http://127.0.0.1:{peer.port}"))
    waits: list[str] = []
    try:
        with anyio.fail_after(HANG), pytest.raises(ProtocolError) as err:
            call = model.complete if streamed else model.chat
            await call(
                namespace="ns",
                service="s",
                port=80,
                model="m",
                prompt="hi",
                max_tokens=4,
                on_wait=waits.append,
                loading_grace=5.0,  # before: retried for all of it, then a TransportError
            )
    finally:
        await model.aclose()
    route = f"POST http://127.0.0.1:{peer.port}/v1/chat/completions"
    assert str(err.value).startswith(f"{route}: the body does not decode"), err.value
    assert len(peer.requests) == 1 and waits == []
