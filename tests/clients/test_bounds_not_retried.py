"""A read whose peer breaks a bound is retried a few times only; a cut answer until it passes.

Kubernetes reads retry broken bytes (``READS``: a middlebox mangling one list answer
must not fail the leak check of a run that passed). A peer past one of the clients'
bounds (endless interim answers, a chunk header or trailer without end, a head or body
over its size) is no such flake: it answers every try the same, each try ends in
milliseconds, and retrying it until the phase's deadline hammered it for minutes before
the same error. Such a read now ends after ``tries_past_bound`` requests (a few, as a
middlebox may break a few answers so) with a :class:`LimitExceeded` naming the route and
the bound; a connection cut mid-body, an answer mangled once, are still retried.

The peers are plain asyncio servers that answer every request alike; the reads run
under a deadline far away, so only the number of requests tells a retry loop apart.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import pytest
from test_lean_reads import (  # noqa: F401  (fixtures)
    HANG,
    TOKEN,
    Conn,
    client,
    pod_answer,
    reading,
    serve,
)

from orchestrator.clients import KubeClient, LimitExceeded
from orchestrator.clients import _http1 as http1_module
from orchestrator.clients import kube as kube_module
from orchestrator.clients._retry import READS
from orchestrator.clients.kube import check_object

pytestmark = pytest.mark.anyio
PATH = "/api/v1/namespaces/ns/pods/p"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
BOUND = 64 * 1024

#: ``(first, then)``: the peer answers each request with ``first``, then ``then`` until
#: the client goes.
BEYOND = {
    "interim-flood": (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 8),
    "chunk-extension": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;ext=", b"a" * 4096),
    "trailer": (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: ", b"v" * 4096),
    "endless-body": (HEAD + b"Connection: close\r\n\r\n{", b" " * 4096),
}


def small_body_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body bound the endless body meets in a few reads, on both paths."""
    monkeypatch.setattr(kube_module, "MAX_BODY", BOUND)
    monkeypatch.setattr(http1_module, "MAX_BODY", BOUND)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("beyond", list(BEYOND), ids=list(BEYOND))
async def test_a_read_past_a_bound_is_refused_after_a_few_requests(
    reading: Any, monkeypatch: pytest.MonkeyPatch, lean: bool, beyond: str
) -> None:
    first, then = BEYOND[beyond]
    small_body_bound(monkeypatch)
    if not lean:
        monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)

    async def every_time(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(first)
            while True:
                await conn.send(then)

    async with reading(every_time) as (peer, kube):
        # The default policy (READS), under a deadline far away: before the fix, the read
        # was tried again and again until it, and the test's bound cut it.
        with anyio.fail_after(HANG), pytest.raises(LimitExceeded) as err:
            with anyio.fail_after(HANG / 2):
                await kube.read(PATH, check_object)
        assert len(peer.requests) == READS.tries_past_bound
        assert re.match(rf"GET {PATH}: .*over \d+ (bytes|interim)", str(err.value))
        assert err.value.after_retry and TOKEN not in str(err.value)
        assert (kube._lean is not None) == lean


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("broken", ["cut-mid-body", "not-json", "interim-flood"])
async def test_an_answer_broken_once_is_still_retried(
    reading: Any, monkeypatch: pytest.MonkeyPatch, lean: bool, broken: str
) -> None:
    """The flakes READS retries broken bytes for: the next try gets the object. Interim
    answers without end to all tries but the last one allowed: a middlebox's doing."""
    times = READS.tries_past_bound - 1 if broken == "interim-flood" else 1
    if not lean:
        monkeypatch.setattr(KubeClient, "_lean_pool", lambda *_args: None)

    async def once_broken(conn: Conn) -> None:
        while request := await conn.request():
            if len(conn.peer.requests) > times:
                await conn.send(pod_answer(request))
            elif broken == "interim-flood":
                then = BEYOND[broken][1]
                while True:
                    await conn.send(then)
            elif broken == "cut-mid-body":
                await conn.send(HEAD + b"Content-Length: 100\r\n\r\n{")
                return  # closed: the body is cut
            else:
                await conn.send(HEAD + b"Content-Length: 5\r\n\r\n<html")

    async with reading(once_broken) as (peer, kube):
        with anyio.fail_after(HANG):
            got = await kube.read(PATH, check_object)
        assert got["metadata"]["name"] == "p"
        assert len(peer.requests) == times + 1
