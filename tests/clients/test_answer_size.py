"""An answer's size is bounded on every path that reads one whole, decoded.

The lean reads had a bound (``MAX_BODY``, gzip included); aiohttp's path (a proxy, a
cookie), ``KubeClient.exchange`` (the service proxy), the backend's client and the
model's client read on until the request's deadline: a peer sending an endless body at
loopback speed, or a few KiB of gzip that decode to gigabytes, could fill the memory
first. Now each stops at its bound with an error that names it; under the bound,
answers are taken whole, whatever their framing or encoding.

The peers are plain asyncio servers; the bounds are made small for the tests.
"""

from __future__ import annotations

import gzip
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

import orchestrator.clients.inference as inference_module
import orchestrator.clients.kubefoundry as kubefoundry_module
from orchestrator.clients import (
    InferenceClient,
    InferenceRoute,
    KubeClient,
    LimitExceeded,
)
from orchestrator.clients import kube as kube_module
from orchestrator.clients.inference import InvalidCompletion
from orchestrator.clients.kube import check_object

pytestmark = pytest.mark.anyio
PATH = "/api/v1/namespaces/ns/pods/p"
BOUND = 256 * 1024
#: Zeros that gzip to about 8 KiB and decode to 32 times the bound.
BOMB = gzip.compress(b"0" * (32 * BOUND))


def pod_of_size(size: int) -> bytes:
    """A pod's JSON, padded with spaces to ``size`` bytes."""
    raw = json.dumps({"metadata": {"name": "p", "namespace": "ns"}}).encode()
    return raw + b" " * (size - len(raw))


def framed(body: bytes, framing: str, *headers: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", *headers]
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def answer_once(conn: Conn, data: bytes) -> None:
    if await conn.request() is not None:
        try:
            await conn.send(data)
            await conn.reader.read()  # held until the client ends it (close-delimited: ends)
        except ConnectionError:
            pass


def aiohttps_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)
    monkeypatch.setattr(kube_module, "MAX_BODY", BOUND)


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("size", [BOUND, BOUND + 1], ids=["at-the-bound", "one-past"])
async def test_a_read_on_aiohttps_path_takes_up_to_the_bound_and_no_more(
    reading: Any, monkeypatch: pytest.MonkeyPatch, gzipped: bool, framing: str, size: int
) -> None:
    aiohttps_path(monkeypatch)
    body = pod_of_size(size)
    data = (
        framed(gzip.compress(body), framing, b"Content-Encoding: gzip")
        if gzipped
        else framed(body, framing)
    )

    async def once(conn: Conn) -> None:
        if framing == "close":
            if await conn.request() is not None:
                await conn.send(data)  # then closed: the body's end
        else:
            await answer_once(conn, data)

    async with reading(once) as (peer, kube):
        with anyio.fail_after(HANG):
            if size <= BOUND:
                got = await kube.read(PATH, check_object, NO_RETRY)
                assert got["metadata"]["name"] == "p"
            else:
                with pytest.raises(LimitExceeded, match=f"an answer body over {BOUND} bytes"):
                    await kube.read(PATH, check_object, NO_RETRY)
        assert kube._lean is None


@pytest.mark.parametrize("route", ["read", "exchange"])
async def test_a_gzip_bomb_on_aiohttps_path_is_refused_at_the_bound(
    reading: Any, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    aiohttps_path(monkeypatch)

    async def bomb(conn: Conn) -> None:
        await answer_once(conn, framed(BOMB, "length", b"Content-Encoding: gzip"))

    async with reading(bomb) as (peer, kube):
        with anyio.fail_after(HANG), pytest.raises(LimitExceeded) as err:
            if route == "read":
                await kube.read(PATH, check_object, NO_RETRY)
            else:
                await kube.request("GET", PATH)
        assert f"an answer body over {BOUND} bytes" in str(err.value)
        assert f"GET {PATH}" in str(err.value) and TOKEN not in str(err.value)


@pytest.mark.parametrize("kind", ["endless", "gzip-bomb"])
async def test_a_backend_body_past_the_bound_is_refused(
    serve: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(kubefoundry_module, "MAX_ANSWER", BOUND)

    async def endless(conn: Conn) -> None:
        if await conn.request() is None:
            return
        try:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[")
            while True:
                await conn.send(b"0," * 32768)
        except ConnectionError:
            pass

    async def bomb(conn: Conn) -> None:
        await answer_once(conn, framed(BOMB, "chunked", b"Content-Encoding: gzip"))

    peer = await serve(endless if kind == "endless" else bomb)
    refused = await health_refused(peer.port)
    assert f"GET /api/health: an answer body over {BOUND} bytes" in str(refused)
    assert len(peer.requests) == 1  # not retried: another try would meet it again
    await peer.until(lambda: peer.closed == 1)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_gzip_bomb_from_the_model_is_refused_at_the_bound(
    serve: Any, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    monkeypatch.setattr(inference_module, "MAX_ANSWER", BOUND)
    content_type = b"text/event-stream" if streamed else b"application/json"
    bomb = gzip.compress(b": keep-alive\n" * (4 * BOUND // 13)) if streamed else BOMB
    data = framed(bomb, "length", b"Content-Encoding: gzip").replace(
        b"application/json", content_type
    )

    async def once(conn: Conn) -> None:
        await answer_once(conn, data)

    peer = await serve(once)
    model = InferenceClient(InferenceRoute("url", f"http://127.0.0.1:{peer.port}"))
    try:
        with anyio.fail_after(HANG), pytest.raises(InvalidCompletion) as err:
            call = model.complete if streamed else model.chat
            await call(namespace="ns", service="s", port=80, model="m", prompt="hi", max_tokens=4)
    finally:
        await model.aclose()
    assert f"more than {BOUND} bytes" in str(err.value)
