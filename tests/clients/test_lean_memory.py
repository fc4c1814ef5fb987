"""What the lean read path (orchestrator/clients/_http1.py) holds between reads.

A kept-alive connection waits idle in its pool until the next read takes it. Each one
that held on to its last answer (the body, up to hundreds of KiB for a list, and its
headers) would hold it for as long as the connection is idle: with a hundred runs at
once, a hundred connections and tens of MiB, measured in ``run --parallel 100``. An
answer belongs to its caller, so once it is handed over the connection keeps none of it.

What is held is measured with tracemalloc: the allocations made in ``_http1`` that are
still alive once the caller has dropped the answer, while its connection stays pooled.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from orchestrator.clients import _http1
from orchestrator.clients._http1 import Http1Pool

pytestmark = pytest.mark.anyio
#: A list answer's size: far above anything a pooled connection needs to keep.
BODY = b'{"items":[' + b'{"a":1},' * 200_000 + b'{"a":1}]}'
#: What a pooled idle connection may hold of its own (protocol, parser, a few fields).
OWN = 64 * 1024


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A server that answers every GET with :data:`BODY` and keeps the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n"
                writer.write(head.encode() + BODY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def held_by_lean_path() -> int:
    gc.collect()  # the answers the test dropped, whatever cycles its tasks left
    mine = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, _http1.__file__)])
    return sum(stat.size for stat in mine.statistics("filename"))


async def test_an_idle_kept_alive_connection_holds_nothing_of_the_last_answer(port: int) -> None:
    pool = Http1Pool("127.0.0.1", port, authority=f"127.0.0.1:{port}", tls=None)
    head = pool.head("/api/v1/pods", [])
    tracemalloc.start()
    try:
        answer = await pool.get(head, timeout=30)
        assert answer.body == BODY
        del answer
        held = held_by_lean_path()
    finally:
        tracemalloc.stop()
    try:
        assert held < OWN, f"an idle connection holds {held} bytes after its answer"
        # Still kept alive: the next read goes on the same connection.
        assert (await pool.get(head, timeout=30)).body == BODY
        assert pool.opened == 1
    finally:
        await pool.aclose()


async def test_many_idle_connections_hold_nothing_of_their_answers(port: int) -> None:
    pool = Http1Pool("127.0.0.1", port, authority=f"127.0.0.1:{port}", tls=None)
    head = pool.head("/api/v1/pods", [])
    many = 8

    async def read() -> None:
        assert (await pool.get(head, timeout=30)).body == BODY

    tracemalloc.start()
    try:
        await asyncio.gather(*(read() for _ in range(many)))
        held = held_by_lean_path()
    finally:
        tracemalloc.stop()
    try:
        assert pool.opened == many
        assert held < many * OWN, f"{many} idle connections hold {held} bytes"
    finally:
        await pool.aclose()
