"""The backend client's transport, on real sockets: what httpx's own transport would do.

Each test runs a small HTTP server on loopback and checks one behaviour end to end:
requests arrive whole, answers come back whole (compressed ones decoded by httpx),
and every kind of network failure surfaces as the httpx exception the client maps.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web

from orchestrator.clients._aiohttp_transport import AiohttpTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def client(base_url: str, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, transport=AiohttpTransport(), **kwargs)  # type: ignore[arg-type]


async def test_a_request_arrives_whole_and_the_answer_comes_back_whole(serve) -> None:
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.Response:
        seen.update(
            method=request.method,
            path=request.path_qs,
            body=await request.json(),
            auth=request.headers.get("Authorization"),
            type=request.headers.get("Content-Type"),
        )
        return web.json_response({"ok": True}, status=201, headers={"X-Answer": "42"})

    url = await serve(handler)
    async with client(url, headers={"Authorization": "Bearer t"}) as http:
        response = await http.post(
            "/api/deployments", params={"namespace": "a b"}, json={"name": "d"}
        )
    assert (response.status_code, response.json(), response.headers["x-answer"]) == (
        201,
        {"ok": True},
        "42",
    )
    assert seen == {
        "method": "POST",
        "path": "/api/deployments?namespace=a+b",
        "body": {"name": "d"},
        "auth": "Bearer t",
        "type": "application/json",
    }


async def test_a_compressed_answer_is_decoded_by_httpx(serve) -> None:
    payload = json.dumps({"items": list(range(1000))}).encode()

    async def handler(request: web.Request) -> web.Response:
        assert "gzip" in request.headers.get("Accept-Encoding", "")
        return web.Response(
            body=gzip.compress(payload),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    url = await serve(handler)
    async with client(url) as http:
        response = await http.get("/")
    assert response.json() == {"items": list(range(1000))}


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")


async def test_no_answer_in_time_is_a_read_timeout(serve) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    url = await serve(handler)
    try:
        async with client(url, timeout=httpx.Timeout(5.0, read=0.2)) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/")
    finally:
        release.set()


async def test_a_connection_closed_before_the_answer_is_a_protocol_error(serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError

    url = await serve(handler)
    async with client(url) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.get("/")


async def test_a_body_cut_short_is_an_error_not_a_short_answer(serve) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()
        return response

    url = await serve(handler)
    async with client(url) as http:
        with pytest.raises(httpx.TransportError):
            await http.get("/")


async def test_a_streamed_answer_arrives_as_it_is_written(serve) -> None:
    second = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await second.wait()
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    url = await serve(handler)
    lines = []
    async with client(url) as http, http.stream("GET", "/") as response:
        async for line in response.aiter_lines():
            lines.append(line)
            if line == "data: one":
                second.set()  # the first event came through before the second was written
    assert [line for line in lines if line] == ["data: one", "data: two"]
