"""A watch stream that never ends is ended at its lifetime, on either path.

The server ends a watch at the ``timeoutSeconds`` it was asked for. A peer that trickles
a byte now and then (of a line that never ends, a chunk extension, a trailer, a header)
is never silent and, below every byte bound, never refused: it held a watch for as long
as it liked, on aiohttp's path a chunk extension at full speed too (aiohttp takes chunk
extensions without a bound). Now a stream that goes on past the server's timeout and
``WATCH_MARGIN`` more ends with a :class:`TransportError` that says so.

The peer trickles on a timer, and the loop (``JumpUnlessThreads``) jumps its clock over idle
waits: the minutes a peer could hold a watch pass at once, and no test waits on time.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import anyio
import pytest
from test_lean_watch import HEAD, chunked, event
from test_lean_watch_bounds import Clock, Recording

from orchestrator.clients import PODS, KubeClient, TransportError
from orchestrator.clients import kube as kube_module
from orchestrator.clients._watch1 import MAX_QUEUED, Outlived, WatchConnection

SERVER_TIMEOUT = 1


class JumpUnlessThreads(asyncio.SelectorEventLoop):
    """A loop whose clock jumps over an idle wait for a timer (as ``IdleJumpLoop`` in
    test_lean_reads.py), but not while a worker thread is busy for it: aiohttp asks one,
    on each request of the ApiClient's session, for the environment's proxy and netrc,
    and a clock that jumped meanwhile would end the request before its thread answered."""

    def __init__(self) -> None:
        super().__init__()
        self._skipped = 0.0
        self._threads = 0
        select = self._selector.select

        def select_or_jump(timeout: float | None = None) -> list[Any]:
            ready = select(0)
            if ready or timeout == 0:
                return ready
            if timeout is None or self._threads:
                return select(timeout)
            self._skipped += timeout
            return []

        self._selector.select = select_or_jump  # type: ignore[method-assign]

    def time(self) -> float:
        return super().time() + self._skipped

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future[Any]:
        self._threads += 1
        future = super().run_in_executor(executor, func, *args)

        def done(_: Any) -> None:
            self._threads -= 1

        future.add_done_callback(done)
        return future


#: Where the peer begins trickling, and what it then sends each second, for ever.
TRICKLES = {
    "a-header": (b"HTTP/1.1 200 OK\r\nX-Slow: ", b"1"),
    "a-line": (HEAD + chunked(event("ADDED", "a") + b"\n", b"{"), chunked(b"1")),
    "a-chunk-extension": (HEAD + chunked(event("ADDED", "a") + b"\n") + b"5;ext=", b"1"),
    "a-trailer": (HEAD + chunked(event("ADDED", "a") + b"\n") + b"0\r\nX-Trailer: ", b"1"),
}


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize("trickled", list(TRICKLES.values()), ids=list(TRICKLES))
def test_a_stream_trickled_for_ever_ends_at_its_lifetime(
    tmp_path: Any, lean: bool, trickled: tuple[bytes, bytes]
) -> None:
    start, tick = trickled
    lifetime = SERVER_TIMEOUT + kube_module.WATCH_MARGIN

    async def main() -> tuple[list[str], BaseException | None, float]:
        async def trickle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await r.readuntil(b"\r\n\r\n")
                w.write(start)
                while True:  # a byte now and then: never silent, never done
                    await asyncio.sleep(0.05)
                    w.write(tick)
                    await w.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "lifetime-t0ken"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        (tmp_path / "kubeconfig").write_text(json.dumps(config))
        kube = await KubeClient.from_kubeconfig(str(tmp_path / "kubeconfig"))
        kube._lean_watches = lean
        loop = asyncio.get_running_loop()
        began = loop.time()
        got: list[str] = []
        failure: BaseException | None = None
        try:
            # Only against a hang, in the loop's time: a day of trickling.
            with anyio.fail_after(86400):
                async for ev in kube.watch_stream(
                    PODS, "ns", resource_version="1", server_timeout=SERVER_TIMEOUT
                ):
                    got.append(ev.name)
        except TransportError as exc:
            failure = exc
        finally:
            await kube.aclose()
            server.close()
            await server.wait_closed()
        return got, failure, loop.time() - began

    got, failure, took = anyio.run(main, backend_options={"loop_factory": JumpUnlessThreads})
    assert got == ([] if b"X-Slow" in start else ["a"])
    assert failure is not None, "the stream ended as if the server had ended it"
    if b"X-Slow" in start and not lean:
        # aiohttp's total covers the head too: no answer in time, as any request says it.
        assert "no answer in time" in str(failure)
    else:
        assert f"went on for over {lifetime:g} s" in str(failure), failure
    assert took >= lifetime  # the loop's clock: the lifetime was waited out, no sooner


def test_the_lifetime_waits_while_the_consumer_is_behind() -> None:
    """While the connection stops reading for a consumer behind, the server's end may be
    waiting unread: the lifetime is not held against the stream until it reads again."""

    async def main() -> None:
        clock = Clock(asyncio.get_running_loop())
        conn: WatchConnection[bytes] = WatchConnection(cast(Any, clock), bytes, 30.0, 1 << 20, 20.0)
        transport = Recording()
        conn.connection_made(transport)
        conn.send(b"GET / HTTP/1.1\r\n\r\n")
        conn.data_received(HEAD)
        line = json.dumps({"type": "ADDED"}).encode() + b"\n"
        conn.data_received(chunked(line * (MAX_QUEUED + 1)))
        assert transport.paused
        clock.advance(25.0)
        assert conn.failure is None and not transport.closing
        conn.items.clear()  # the consumer caught up
        conn.wait()
        clock.advance(30.0)
        assert isinstance(conn.failure, Outlived) and transport.closing

    asyncio.run(main())
