"""Whatever a peer answers a read, on either path: an object or a named client error.

The property of tests/clients/test_lean_reads.py (any bytes a peer answers), drawn on
aiohttp's path too, and with the framings that never end drawn beside them: interim
answers, a chunk extension, a body or its chunks, each sent again and again until the
client goes, and an answer followed by one slipped in. Every read ends with the object
or a :class:`ClientError` that names the route and shows no token, and a second read on
what the first left gets its own answer or such an error: never the slipped-in one.

Peer and client share one loop whose clock jumps over idle waits (but not while a
worker thread is busy: test_watch_lifetime.py), so a deadline passes at once; a framing without end must meet a bound before its
deadline (60 s, which the clock cannot jump to while the peer writes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lean_reads import ANSWERS, NO_RETRY, TOKEN, Conn, RawPeer, pod_answer
from test_watch_lifetime import JumpUnlessThreads

from orchestrator.clients import ClientError, RequestTimeout
from orchestrator.clients import _http1 as http1_module
from orchestrator.clients import kube as kube_module
from orchestrator.clients.kube import check_object

PATH = "/api/v1/namespaces/ns/pods/p"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
#: ``(first, then)``: the peer sends ``first``, then ``then`` until the client goes.
ENDLESS = st.sampled_from(
    [
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 8),
        (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 8),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;ext=", b"a" * 4096),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n", b"1\r\n \r\n" * 512),
        (HEAD + b"Connection: close\r\n\r\n{", b" " * 4096),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: ", b"v" * 4096),
    ]
)


@pytest.mark.timeout(240)  # only against a hang: a peer the clock cannot jump over
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=ANSWERS | ENDLESS,
    slipped=st.booleans(),
    lean=st.booleans(),
)
def test_any_framing_a_peer_answers_is_an_object_or_a_named_client_error(
    tmp_path_factory: pytest.TempPathFactory,
    first: bytes | tuple[bytes, bytes],
    slipped: bool,
    lean: bool,
) -> None:
    async def main() -> None:
        async def hostile(conn: Conn) -> None:
            request = await conn.request()
            if request is None:
                return
            if isinstance(first, tuple):
                await conn.send(first[0])
                while True:
                    await conn.send(first[1])
            await conn.send(first)
            if slipped:  # an answer no request asked for
                await conn.send(pod_answer(b"GET /x/slipped HTTP/1.1"))
            while request := await conn.request():
                await conn.send(pod_answer(request))

        peer = RawPeer(hostile)
        server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
        peer.port = server.sockets[0].getsockname()[1]
        kube = await kube_module.KubeClient.from_kubeconfig(
            peer.kubeconfig(Path(tmp_path_factory.mktemp("k")) / "c")
        )
        if not lean:
            kube._open_reader()
            kube._lean = None
        try:
            for name in ("p", "q"):
                path = f"/api/v1/namespaces/ns/pods/{name}"
                # Framing without end is refused by a bound of bytes or answers, well
                # before a deadline (which, with the peer writing all the while, the
                # clock cannot jump to): only the static answers meet one.
                endless = isinstance(first, tuple) and name == "p"
                try:
                    got = await kube.read(
                        path, check_object, NO_RETRY, timeout=60 if endless else 0.5
                    )
                except ClientError as exc:
                    assert TOKEN not in str(exc)
                    assert f"GET {path}" in str(exc)
                    assert not (endless and isinstance(exc, RequestTimeout)), exc
                else:
                    assert check_object(got, "x") is got
                    if name == "q":  # the second read's own answer, never the slipped one
                        assert got["metadata"]["name"] == "q", got
        finally:
            await kube.aclose()
            server.close()
            await server.wait_closed()

    with pytest.MonkeyPatch.context() as patch:
        # Both paths' body bounds, small: an endless body must meet its bound within a
        # few hundred KiB, not race the deadline to 512 MiB at whatever pace the peer's
        # framing and the machine's load allow.
        patch.setattr(kube_module, "MAX_BODY", 256 * 1024)
        patch.setattr(http1_module, "MAX_BODY", 256 * 1024)
        anyio.run(main, backend_options={"loop_factory": JumpUnlessThreads})
