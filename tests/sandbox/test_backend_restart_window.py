"""A backend stand-in restart ends every connection at once, as a real restart does.

A real backend restart kills the process: the kernel resets what it had accepted and
what waited in its listen backlog, so a client sees a connection error at once and
retries. A stand-in restart that leaves a connection open and unanswered makes its client
wait out its read timeout (30 s) instead. Each test here puts a connection in one place a
restart can find it (the listen backlog, accepted in the very loop turn the restart
begins, idle between requests, in the middle of a request) and looks, without waiting,
at what the client has once the restart has returned.

A real backend also keeps its address across a restart (a Service, a port-forward): the
stand-in holds its port for the whole downtime, bound but not listening, so connections
are refused at once, as a dead process's port refuses them, and no other socket on the
machine (an outgoing connection's ephemeral port, another server's free port) can take
the port before the backend comes back on it.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

import pytest

from orchestrator.sandbox._kubefoundry import KubeFoundryServer
from orchestrator.sandbox._kubefoundry.app import RESTART_NAME
from orchestrator.sandbox.faults import Faults, SandboxState

pytestmark = pytest.mark.anyio

HEALTH = b"GET /api/health HTTP/1.1\r\nHost: backend\r\n\r\n"
#: Bounds only a hang reaches (a restart with ``down_for=0`` takes milliseconds).
DEADLINE = 10.0


class HoldingState(SandboxState):
    """Says when a route held by ``hang_route`` has begun to wait."""

    def __init__(self, faults: Faults) -> None:
        super().__init__(faults)
        self.holding = asyncio.Event()

    async def until(self, predicate: Callable[[Faults], bool]) -> None:
        self.holding.set()
        await super().until(predicate)


@asynccontextmanager
async def backend(state: SandboxState | None = None) -> AsyncIterator[KubeFoundryServer]:
    """The KubeFoundry stand-in alone: the routes used here never reach Kubernetes."""
    server = KubeFoundryServer(cast(Any, None), state or SandboxState(Faults()))
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), DEADLINE)


@contextmanager
def no_collection() -> Iterator[None]:
    """Keep the cyclic garbage collector out of the window: a connection that only a
    collection would close (at some unknown later time) must count as left open."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fate(client: socket.socket) -> str:
    """What the client's connection shows now, without waiting for anything."""
    client.setblocking(False)
    try:
        data = client.recv(65536)
    except BlockingIOError:
        return "open and unanswered"
    except ConnectionResetError:
        return "reset"
    return "closed" if data == b"" else "answered"


def connect(server: KubeFoundryServer) -> socket.socket:
    client = socket.create_connection((server.host, server.port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


async def test_a_request_queued_in_the_listen_backlog_is_reset() -> None:
    async with backend() as server:
        client = connect(server)  # the kernel accepts it; the loop has not looked yet
        client.sendall(HEALTH)
        with no_collection():
            await asyncio.wait_for(server.restart(), DEADLINE)
            assert fate(client) == "reset"
        client.close()


async def test_a_request_accepted_in_the_turn_the_restart_begins_is_reset() -> None:
    """The loop accepts the connection in the same turn in which the restart is woken, so
    the restart begins before the connection is handed to the server's protocol.

    The order is the kernel's: epoll reports ready descriptors in the order they became
    ready, and a loop runs the callbacks of one poll in that order, each scheduling its
    continuation for the next turn in the same order. A byte on a socket pair, sent first,
    wakes the restart; the connection, made second, is accepted after it.
    """
    loop = asyncio.get_running_loop()
    async with backend() as server:
        wake_read, wake_write = socket.socketpair()
        restarted: asyncio.Future[None] = loop.create_future()

        def begin_restart() -> None:
            loop.remove_reader(wake_read.fileno())
            restart = asyncio.ensure_future(server.restart())
            restart.add_done_callback(
                lambda t: (
                    restarted.set_exception(e)
                    if (e := t.exception())
                    else restarted.set_result(None)
                )
            )

        loop.add_reader(wake_read.fileno(), begin_restart)
        try:
            with no_collection():
                wake_write.send(b"!")
                client = connect(server)
                client.sendall(HEALTH)
                await asyncio.wait_for(restarted, DEADLINE)
                assert fate(client) == "reset"
            client.close()
        finally:
            loop.remove_reader(wake_read.fileno())
            wake_read.close()
            wake_write.close()


async def test_an_idle_keep_alive_connection_is_reset() -> None:
    async with backend() as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(HEALTH)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), DEADLINE)
        sock = writer.get_extra_info("socket")
        await asyncio.wait_for(server.restart(), DEADLINE)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), DEADLINE)
        assert sock is not None
        writer.close()


async def test_a_request_in_progress_is_reset_not_waited_for() -> None:
    """A request held by the backend (``hang_route``) dies with it: the restart does not
    wait for it, and the client gets no answer but a reset."""
    state = HoldingState(Faults(hang_route="provider_status"))
    async with backend(state) as server:
        client = connect(server)
        client.sendall(
            b"GET /api/installation/providers/kaito/status HTTP/1.1\r\nHost: backend\r\n\r\n"
        )
        await asyncio.wait_for(state.holding.wait(), DEADLINE)
        await asyncio.wait_for(server.restart(), DEADLINE)
        assert fate(client) == "reset"
        client.close()


class HeldDownServer(KubeFoundryServer):
    """A stand-in whose restart stays down until the test lets it come back."""

    def __init__(self, state: SandboxState) -> None:
        super().__init__(cast(Any, None), state)
        self.down = asyncio.Event()
        self.come_back = asyncio.Event()

    async def _stay_down(self, seconds: float) -> None:
        self.down.set()
        await self.come_back.wait()


async def answers_health(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(HEALTH)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    finally:
        writer.close()


async def test_a_port_bound_but_not_listening_refuses_a_connection_at_once() -> None:
    """What the stand-in's downtime rests on: the kernel answers a connection attempt to
    a bound socket that does not listen with a reset, as it does for a port nobody holds
    (a hang would end in a timeout here, not in a refusal)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()


async def test_the_port_is_held_while_the_backend_is_down_and_answers_after() -> None:
    state = SandboxState(Faults())
    server = HeldDownServer(state)
    await server.start()
    host, port, url = server.host, server.port, server.url
    restart = asyncio.ensure_future(server.restart(down_for=7.0))
    try:
        await asyncio.wait_for(server.down.wait(), DEADLINE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            with pytest.raises(OSError) as taken:
                other.bind((host, port))
            assert taken.value.errno == errno.EADDRINUSE
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=DEADLINE).close()
        server.come_back.set()
        await asyncio.wait_for(restart, DEADLINE)
        assert (server.port, server.url) == (port, url)
        head = await answers_health(host, port)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert [e.event for e in state.timeline if e.name == RESTART_NAME] == ["down", "up"]
    finally:
        server.come_back.set()
        restart.cancel()
        await asyncio.wait_for(server.stop(), DEADLINE)


async def test_a_backend_stopped_while_down_lets_its_port_go_and_stays_down() -> None:
    state = SandboxState(Faults())
    server = HeldDownServer(state)
    await server.start()
    host, port = server.host, server.port
    restart = asyncio.ensure_future(server.restart(down_for=7.0))
    try:
        await asyncio.wait_for(server.down.wait(), DEADLINE)
        await asyncio.wait_for(server.stop(), DEADLINE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            other.bind((host, port))  # let go: free for anyone
            server.come_back.set()
            await asyncio.wait_for(restart, DEADLINE)  # and it did not try to come back
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, port), timeout=DEADLINE).close()
        assert [e.event for e in state.timeline if e.name == RESTART_NAME] == ["down"]
    finally:
        server.come_back.set()
        restart.cancel()
        await asyncio.wait_for(server.stop(), DEADLINE)


async def test_a_restart_asked_for_while_down_comes_back_on_the_same_port() -> None:
    state = SandboxState(Faults())
    server = HeldDownServer(state)
    await server.start()
    host, port = server.host, server.port
    first = asyncio.ensure_future(server.restart(down_for=7.0))
    second: asyncio.Future[None] | None = None
    try:
        await asyncio.wait_for(server.down.wait(), DEADLINE)
        server.down.clear()
        second = asyncio.ensure_future(server.restart(down_for=7.0))
        await asyncio.wait_for(server.down.wait(), DEADLINE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            with pytest.raises(OSError) as taken:
                other.bind((host, port))
            assert taken.value.errno == errno.EADDRINUSE
        server.come_back.set()
        await asyncio.wait_for(asyncio.gather(first, second), DEADLINE)
        assert server.port == port
        head = await answers_health(host, port)
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        server.come_back.set()
        for task in (first, second):
            if task is not None:
                task.cancel()
        await asyncio.wait_for(server.stop(), DEADLINE)
