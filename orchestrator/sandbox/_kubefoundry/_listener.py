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


class Listener:
    """Accept on ``host:port`` (0: a free port) and serve each connection with ``protocol``."""

    def __init__(
        self, protocol: Callable[[], asyncio.Protocol], host: str, port: int, backlog: int = 128
    ) -> None:
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        # create_server sets SO_REUSEADDR: a restart binds the same port again at once.
        self._sock = socket.create_server((host, port), backlog=backlog)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
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

    async def reset(self) -> None:
        """Stop listening and reset every connection, as a killed process's kernel does.

        Returns once every accepted connection is closed (in a turn or two of the loop):
        none is left to the garbage collector, and none is answered after the reset.
        """
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
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
        await asyncio.gather(*self._accepted.values(), return_exceptions=True)
        self._accepted.clear()
        self._transports.clear()
