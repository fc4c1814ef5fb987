"""The backend stand-in's listening socket, which knows every connection it accepted.

A real backend restart kills the process, and its kernel ends every connection the
process had: a client sees a connection error at once and retries. Stopping an aiohttp
site does not quite do that. asyncio accepts a connection in one loop turn and hands it
to the server's protocol in a task that runs in the next; a site stopped in between
closes the asyncio server first, the hand-over then fails on the closed server (silently,
outside debug mode), and the accepted socket is left in a reference cycle with its
half-made transport, open, until the garbage collector happens to run. Its client's
request stayed unanswered for the whole of its 30 s read timeout.

So the stand-in accepts by itself: every connection is recorded the moment it is
accepted, before any protocol sees it, and :meth:`Listener.reset` ends them all with
a reset (``SO_LINGER`` zero, then a close by whoever owns the socket), accepted,
half-handed-over or serving alike. Closing the listening socket resets what waits in
its backlog, as the kernel does for a dying process.

A real backend also keeps its address across a restart (a Service, a port-forward),
and the stand-in's port came from the kernel's ephemeral range, which every outgoing
connection on the machine draws from too: a port let go for the seven seconds of a
restart was, now and then, taken by another socket, and the restart failed with
"address already in use". So a reset can hold the port (``hold_port``): in the very
call that closes the listening socket, a new socket is bound to the same address, and
it does not listen. The kernel answers a connection attempt to it with a reset, as it
does for a dead process's port; no outgoing connection and no bind to a free port
(``port=0``) picks a port that a socket is bound to; and the next :class:`Listener`
listens on that socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

#: ``SO_LINGER`` on, for zero seconds: a close sends a reset instead of a goodbye.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
#: Errors of one ``accept`` that leave the listening socket usable (the peer gave up).
_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
_ACCEPT_RETRY_SECONDS = 1.0


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port), not listening.

    ``SO_REUSEADDR``, as servers set it: the connections of the socket before it (in
    ``TIME_WAIT``, or still being reset) do not keep it from binding their port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """Accept on ``sock`` (bound by :func:`bind`) and serve each connection with ``protocol``.

    The listener owns the socket from here on, and closes it if it cannot listen.
    """

    def __init__(
        self, protocol: Callable[[], asyncio.Protocol], sock: socket.socket, backlog: int = 128
    ) -> None:
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        try:
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._closed = False
        #: Every accepted socket not yet closed, with the task that hands it over and,
        #: once handed over, its transport.
        self._accepted: dict[socket.socket, asyncio.Task[None]] = {}
        self._transports: dict[socket.socket, asyncio.Transport] = {}
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        """Accept what is queued; record each connection before anything else happens."""
        self._forget_closed()
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue
                # Out of descriptors, say: the socket stays readable, so listening on
                # would spin. Pause, as asyncio's own servers do, and try again later.
                log.warning("backend stand-in: accept failed, retrying in 1 s: %s", exc)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(_ACCEPT_RETRY_SECONDS, self._resume)
                return
            conn.setblocking(False)
            self._accepted[conn] = self._loop.create_task(self._hand_over(conn))

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _hand_over(self, conn: socket.socket) -> None:
        if self._closed:  # reset before its turn came: nobody will serve it
            conn.close()
            return
        try:
            transport, _ = await self._loop.connect_accepted_socket(self._protocol, conn)
        except BaseException:
            conn.close()
            raise
        if self._closed:  # reset while it was being handed over
            transport.abort()
            conn.close()
            return
        self._transports[conn] = transport

    def _forget_closed(self) -> None:
        for conn in [c for c in self._accepted if c.fileno() == -1]:
            del self._accepted[conn]
            self._transports.pop(conn, None)

    async def reset(self, *, hold_port: bool = False) -> socket.socket | None:
        """Stop listening and reset every connection, as a killed process's kernel does.

        Returns once every accepted connection is closed (in a turn or two of the loop):
        none is left to the garbage collector, and none is answered after the reset.
        With ``hold_port``, returns a socket bound to the port, not listening, for the
        next listener (the caller owns it); otherwise None.
        """
        if self._closed:
            return None
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        host, port = self._sock.getsockname()[:2]
        self._sock.close()
        # Bound again before anything else can run: the port is free only between
        # these two system calls.
        held = bind(host, port) if hold_port else None
        for conn in self._accepted:
            if conn.fileno() == -1:
                continue
            with contextlib.suppress(OSError):  # then a plain close: still not left open
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            transport = self._transports.get(conn)
            if transport is not None:
                # The transport lets go of the socket at once (it closes it itself only
                # in the next turn); the close, with lingering off, is the reset.
                transport.abort()
                conn.close()
        # Connections still being handed over see the flag and close themselves: their
        # transports may not have let go of the socket yet.
        try:
            await asyncio.gather(*self._accepted.values(), return_exceptions=True)
        except BaseException:
            if held is not None:
                held.close()
            raise
        self._accepted.clear()
        self._transports.clear()
        return held
