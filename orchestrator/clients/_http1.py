"""A lean HTTP/1.1 GET on kept-alive connections: the Kubernetes client's reads.

A waiter's confirming read is on the path from a change to the end of its wait, and
after the API server's own round trip most of a read's time was aiohttp's request
machinery (URL and header objects, timers, cookie filtering, a stream reader): about
0.2 ms of a 0.6 ms read, measured side by side on the test cluster. Here a GET is a few
lines of bytes written on an asyncio protocol, and the answer is parsed by llhttp
(``httptools``, the parser Node.js uses; a pure-Python parser, ``h11``, measured a
third of the gain). The Kubernetes client uses it only where it can send exactly what
aiohttp would (see ``KubeClient._lean_pool``); everything else stays on aiohttp.

What a caller can rely on:

- The deadline bounds the whole exchange, from connecting to the last byte of the body:
  a server that trickles its answer ends like one that never answers. Within it, an
  answer is refused at once past :data:`MAX_INTERIM` interim (1xx) answers, a head or a
  chunk header over :data:`MAX_HEAD` bytes, or a body over :data:`MAX_BODY` decoded.
- An exchange cut by :meth:`Http1Pool.aclose` fails with :class:`ClosedHere`: this
  side's doing, never told as the server's.
- A connection is reused only after an exchange that ended cleanly (a whole answer, the
  server keeping the connection alive, nothing more on the wire); any other ends it. A
  connection the server closed while it was idle is dropped, and a GET sent on a reused
  connection that closes before a single byte of answer is sent again on a new one: a
  GET is idempotent, and a server may close an idle connection at any moment.
- Every failure is an :class:`Incomplete` that says what arrived (the status, the body
  so far, the first bytes on the wire) and why it stopped; the caller names the route.
- :meth:`Http1Pool.aclose` closes every connection, those in use included.
- An answer handed over is the caller's: a connection back in the pool keeps none of it.

What a connection costs while it is kept: about 23 KiB over plain HTTP, about 320 KiB
over TLS (asyncio's TLS layer holds a 256 KiB read buffer per connection, as it does for
aiohttp's). The pool is apart from aiohttp's, so with ``limit`` reads at once beside as
many other requests there can be twice as many connections to the server as aiohttp's
limit alone allowed.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

import httptools

#: How long an idle connection is kept for reuse: aiohttp's own keep-alive.
KEEP_IDLE = 15.0
#: The longest wait for a new connection (TCP and TLS), as the aiohttp reads had.
CONNECT_TIMEOUT = 10.0
#: The largest answer head (status line and headers) taken; aiohttp's parser takes
#: 8 KiB a line. A bound on what a peer that never ends its headers makes us hold.
MAX_HEAD = 64 * 1024
#: The largest body taken, decoded: far above any list a read asks for (etcd refuses
#: objects over 1.5 MiB), and a bound on what a peer can make us hold.
MAX_BODY = 512 * 1024 * 1024
#: The most gzip members a body may have (aiohttp's bound): each is a decoder to set up.
MAX_DECODED_MEMBERS = 1024
#: The most interim answers (1xx: 100 Continue, 103 Early Hints) taken before the final
#: one. A server sends one or two; HTTP sets no bound, so a peer could send them without
#: end, each a whole message (no byte bound meets it) and each a sign of life (no silence
#: meets it), holding a request until its deadline and a watch for ever.
MAX_INTERIM = 8
#: How many bytes of the wire an :class:`Incomplete` keeps, for the error to quote.
SAMPLE = 256
#: What the reads accept: as aiohttp's default, without what the decoder below lacks.
ACCEPT_ENCODING = "gzip"
#: How long :meth:`Http1Pool.aclose` lets TLS connections say goodbye before aborting.
CLOSE_GRACE = 1.0

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[\x00\r\n]")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f-\U0010ffff]")
#: A target yarl (aiohttp's URLs) sends as it is: unreserved characters, ``/?=&``.
_PLAIN_TARGET = re.compile(r"[A-Za-z0-9\-._~/?=&]*")


class NotSendable(Exception):
    """This request is not one the lean path sends exactly as aiohttp would (a header
    value with a line break, a target that needs encoding): the caller uses aiohttp."""


class Incomplete(Exception):
    """No whole answer. ``cause`` is what stopped it (a :class:`TimeoutError` when the
    deadline passed); ``status`` the answer's status if its head arrived, ``body`` the
    body that arrived, ``sample`` the first bytes of the answer on the wire."""

    def __init__(
        self, cause: BaseException, status: int | None, body: bytes, sample: bytes
    ) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.status = status
        self.body = body
        self.sample = sample

    @property
    def timed_out(self) -> bool:
        return isinstance(self.cause, TimeoutError)


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: its status, its headers (names in lower case; a repeated header's
    values joined by ``, ``, ``set-cookie`` excepted: see ``cookies``), its decoded body."""

    status: int
    headers: dict[str, str]
    body: bytes
    cookies: tuple[str, ...] = ()


class _Stale(Exception):
    """A reused connection closed before any byte of the answer: send it again."""


class ConnectionClosed(ConnectionError):
    """The connection closed before the whole answer arrived."""


class ClosedHere(ConnectionError):
    """The connection was closed by this client (:meth:`Http1Pool.aclose`, a watch's
    ``close``), not by the server: what arrived until then is not an answer's end, and
    the error must not read as the server's doing."""

    def __init__(self) -> None:
        super().__init__("the connection was closed by this client, not by the server")


class AnswerTooLarge(Exception):
    """The answer's head or body is over this module's bounds."""


class InterimFlood(Exception):
    """More than :data:`MAX_INTERIM` interim (1xx) answers before the final one: a peer
    that would hold the request for ever. Said the same on every path (the lean ones,
    aiohttp's), and a protocol error to the callers, not a flake to retry."""

    def __init__(self) -> None:
        super().__init__(f"over {MAX_INTERIM} interim (1xx) answers before the answer")


def ends_at_close(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer's body is delimited by the connection's close: neither a length
    nor chunked coding (llhttp has framed the others, or refused them)."""
    for name, value in headers:
        if name == b"content-length":
            return False
        if name == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"):
            return False
    return True


class _Connection(asyncio.Protocol):
    """One connection; one exchange at a time, each fed to llhttp as its bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        #: Done once the connection is gone (closed by either side, or broken).
        self.lost: asyncio.Future[None] = loop.create_future()
        self.idle_since = 0.0
        self.exchanges = 0
        #: This side closed the connection (see :class:`ClosedHere`).
        self.closed_here = False
        #: Interim answers to exchange number ``_interim_of`` (kept apart from _start,
        #: which every read runs: only an interim answer touches them).
        self._interim = self._interim_of = 0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[None] | None = None
        self._start(None)

    def _start(self, answer: asyncio.Future[None] | None) -> None:
        self._answer = answer
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.sample = b""
        self._head_bytes = 0
        #: Bytes fed since llhttp last handed over a header, the head's end or a piece of
        #: body: a line still arriving, which httptools keeps adding together until it
        #: ends. Bounded as it grows, not once it ends, which a peer may never let happen.
        self._unhanded = 0
        self.complete = False
        #: The exchange ended cleanly and the server keeps the connection: reusable.
        self.reusable = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's, or uvloop's, which are not its subclasses).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None or answer.done():
            # Bytes no request asked for (a late answer to an exchange given up on, a
            # server's goodbye): the connection's state is unknown, so it ends here.
            self.reusable = False
            self.close()
            return
        if len(self.sample) < SAMPLE:
            self.sample += data[: SAMPLE - len(self.sample)]
        self._unhanded += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # A 101: llhttp stops at its head. It is the answer to this read (a status no
            # read asked for), said as aiohttp's path says it; the connection is done.
            if self.status != 101:
                self._fail(exc)
                return
            self.reusable = False
            self._finish()
            return
        except Exception as exc:  # llhttp's verdict, or a bound of ours from a callback
            self._fail(getattr(exc, "__context__", None) or exc)
            return
        if self._unhanded > MAX_HEAD:
            self._fail(AnswerTooLarge(f"an answer head over {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        answer = self._answer
        if answer is None or answer.done():
            return
        if self.closed_here:
            answer.set_exception(ClosedHere())
        elif self.exchanges > 1 and not self.sample:
            answer.set_exception(_Stale())
        elif exc is None and self.status is not None and ends_at_close(self.headers):
            self._finish()  # the body is what came before the close (RFC 9112, 6.3)
        else:
            answer.set_exception(
                exc or ConnectionClosed("the connection closed before the whole answer arrived")
            )

    # -- llhttp's callbacks ---------------------------------------------------------
    # Once the answer is whole, whatever follows on the wire is no answer to anything:
    # it is left alone, and the connection is not reused.

    def on_message_begin(self) -> None:
        if self.complete:
            self.reusable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        self._unhanded = 0
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD:
            raise AnswerTooLarge(f"an answer head over {MAX_HEAD} bytes")
        if self.status is None:  # not a chunked body's trailers: aiohttp drops those too
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if not self.complete:
            self._unhanded = 0
            self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        if len(self.body) + len(body) > MAX_BODY:
            raise AnswerTooLarge(f"an answer body over {MAX_BODY} bytes")
        self._unhanded = 0
        self.body += body

    def on_message_complete(self) -> None:
        if self.complete:
            self.reusable = False
            return
        if 100 <= (self.status or 0) < 200 and self.status != 101:
            # An interim answer (103 Early Hints): the real one follows. (A 101 is final:
            # llhttp stops at it, as an upgrade, and data_received ends the answer there.)
            if self._interim_of != self.exchanges:
                self._interim, self._interim_of = 0, self.exchanges
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise InterimFlood()
            self.status = None
            self.headers = []
            self._head_bytes = 0
            return
        # Asked here: llhttp knows it only until the next message begins.
        self.reusable = self._parser.should_keep_alive()
        self._finish()

    # -- the exchange --------------------------------------------------------------

    def _finish(self) -> None:
        self.complete = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)

    def take(self) -> tuple[int, list[tuple[bytes, bytes]], bytes, bytes]:
        """The whole answer (status, headers, body, first bytes on the wire), which the
        connection keeps none of from now on."""
        assert self.status is not None
        taken = self.status, self.headers, bytes(self.body), self.sample
        self.headers, self.body, self.sample = [], bytearray(), b""
        return taken

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        self.close()

    def _expire(self) -> None:
        self._fail(TimeoutError("the deadline passed"))

    async def exchange(self, head: bytes, deadline: float) -> None:
        """Send ``head`` and wait for the whole answer, until ``deadline`` (loop time)."""
        assert self.transport is not None
        self.exchanges += 1
        answer = self._loop.create_future()
        self._start(answer)
        if self.lost.done() or self.transport.is_closing():
            raise _Stale() if self.exchanges > 1 else ConnectionClosed("the connection is closed")
        timer = self._loop.call_at(deadline, self._expire)
        try:
            self.transport.write(head)
            await answer
        finally:
            timer.cancel()

    def close(self) -> None:
        self.closed_here = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Http1Pool:
    """Kept-alive connections to one server, for GETs; safe for many tasks at once (each
    exchange has a connection to itself; at most ``limit`` connections in use)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        authority: str,
        tls: ssl.SSLContext | None,
        server_hostname: str | None = None,
        limit: int = 100,
    ) -> None:
        self._host = host
        self._port = port
        self._authority = authority
        self._tls = tls
        self._server_hostname = server_hostname if tls is not None else None
        self._limit = limit
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        #: Connections being made: in use as soon as they are made, so counted already.
        self._connecting = 0
        self._closed = False
        #: How many connections were opened, for the tests of reuse.
        self.opened = 0

    def can_take(self) -> bool:
        """Whether a GET can go now: not closed, and a connection free or allowed. A
        :meth:`get` called right after (no await between) holds its place in the limit
        from its first step, so many callers at once cannot all pass it."""
        return not self._closed and len(self._busy) + self._connecting < self._limit

    def head(self, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
        """The request's bytes; :class:`NotSendable` when they would not be exactly what
        was asked for: :meth:`request_line` and :meth:`fields` together."""
        return self.request_line(target) + self.fields(headers)

    def request_line(self, target: str) -> bytes:
        """The request line for ``target``; :class:`NotSendable` when it needs encoding.

        ``target`` goes on the wire as aiohttp would send it: yarl's requoting (escapes
        of unreserved characters decoded, of others kept, what needs one escaped, dot
        segments resolved). A server can tell ``%28`` from ``(``, and ``..`` names
        another resource, so a read must not depend on the path it went. The usual
        target (a name, ``resourceVersion=N``) is already in that form: it skips yarl.
        """
        if not target.startswith("/"):
            raise NotSendable("the target is not a path")
        if not _PLAIN_TARGET.fullmatch(target) or "/." in target or target.endswith("?"):
            from yarl import URL

            target = URL(f"http://host{target}").raw_path_qs
            if _UNSAFE_TARGET.search(target):
                raise NotSendable("the target needs encoding")
        return f"GET {target} HTTP/1.1\r\n".encode()

    def fields(self, headers: Iterable[tuple[str, str]]) -> bytes:
        """The head's header fields and its end (``Host`` first, ``Accept-Encoding``
        last); :class:`NotSendable` when a name or value cannot be sent as it is. They
        depend on the headers alone, not on the target: a caller that sends the same
        headers again may keep them (see ``KubeClient._lean_head``)."""
        lines = [f"Host: {self._authority}"]
        for name, value in headers:
            if not _TOKEN.fullmatch(name) or _UNSAFE_VALUE.search(value):
                raise NotSendable(f"header {name[:40]!r} cannot be sent as it is")
            lines.append(f"{name}: {value}")
        lines.append(f"Accept-Encoding: {ACCEPT_ENCODING}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    async def get(self, head: bytes, timeout: float) -> Answer:
        """Send ``head`` (from :meth:`head`) and return the whole answer within ``timeout``
        seconds, or raise :class:`Incomplete`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            conn = self._idle_connection(loop)
            if conn is None:
                self._connecting += 1
                try:
                    conn = await self._connect(loop, deadline)
                finally:
                    self._connecting -= 1
            self._busy.add(conn)
            try:
                await conn.exchange(head, deadline)
            except _Stale:
                continue  # a reused connection the server had closed: the next, or a new one
            except Exception as exc:
                raise Incomplete(exc, conn.status, bytes(conn.body), conn.sample) from None
            else:
                # Handed over before the connection is pooled: an idle connection holding
                # its last answer (a list can be hundreds of KiB) would hold it until its
                # next exchange, tens of MiB across a hundred runs' connections.
                taken = conn.take()
            finally:
                self._release(conn, loop)
            return _answer(*taken)

    def _idle_connection(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be closed
            if not conn.lost.done() and loop.time() - conn.idle_since < KEEP_IDLE:
                return conn
            conn.close()
        return None

    async def connect(self, factory: Callable[[], _C], deadline: float) -> _C:
        """A new connection to the server (its address, TLS context and server name) with
        the protocol ``factory`` makes, by ``deadline`` (loop time) and within
        :data:`CONNECT_TIMEOUT`: the pool's own, and a lean watch's. Raises what connecting
        raised (refused, unreachable, a TLS handshake that failed), :class:`TimeoutError`,
        or :class:`ConnectionError` if the pool is closed, or closed while it connected."""
        if self._closed:
            raise ConnectionError("the client is closed")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(min(deadline, loop.time() + CONNECT_TIMEOUT)):
            transport, conn = await loop.create_connection(
                factory,
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._server_hostname,
            )
        if self._closed:  # closed while this connection was made: aclose missed it
            transport.close()
            raise ConnectionError("the client is closed")
        return conn

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        try:
            conn = await self.connect(lambda: _Connection(loop), deadline)
        except Exception as exc:
            raise Incomplete(exc, None, b"", b"") from None
        self.opened += 1
        return conn

    def _release(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._busy.discard(conn)
        if conn.complete and conn.reusable and not conn.lost.done() and not self._closed:
            conn.idle_since = now = loop.time()
            conn._answer = None
            self._idle.append(conn)
            # Connections idle past the keep-alive, oldest first, are closed on the way.
            while self._idle and now - self._idle[0].idle_since >= KEEP_IDLE:
                self._idle.pop(0).close()
        else:
            conn.close()

    async def aclose(self) -> None:
        """Close every connection (those in use too: their exchanges fail) and wait until
        they are gone; a TLS goodbye gets :data:`CLOSE_GRACE` seconds, then it is cut."""
        self._closed = True
        conns = [*self._idle, *self._busy]
        self._idle.clear()
        await close_all(conns)


class Closable(Protocol):
    """A connection :func:`close_all` can end: the pool's, or a lean watch's."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def lost(self) -> asyncio.Future[None]: ...

    def close(self) -> None: ...


_C = TypeVar("_C", bound=asyncio.BaseProtocol)


async def close_all(conns: Iterable[Closable]) -> None:
    """Close ``conns`` and wait until they are gone: a TLS goodbye gets
    :data:`CLOSE_GRACE` seconds, then the connection is cut (its ``connection_lost``
    comes on the loop's next step, waited for as long again at most)."""
    conns = list(conns)
    for conn in conns:
        conn.close()
    pending = [conn.lost for conn in conns if not conn.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_GRACE)
    for conn in conns:
        if not conn.lost.done() and conn.transport is not None:
            conn.transport.abort()
    pending = [conn.lost for conn in conns if not conn.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_GRACE)


def _answer(
    status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes, sample: bytes
) -> Answer:
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in raw_headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == "set-cookie":
            cookies.append(value)
        elif name in headers:
            headers[name] += ", " + value
        else:
            headers[name] = value
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip") and body:
        body = _gunzip(body, status, sample)
    return Answer(status, headers, body, tuple(cookies))


def _gunzip(body: bytes, status: int, sample: bytes) -> bytes:
    """The decoded body: every gzip member, one after another (RFC 1952, as aiohttp
    decodes them), at most :data:`MAX_DECODED_MEMBERS` of them and :data:`MAX_BODY` bytes
    in all, since a few bytes of gzip can stand for gigabytes."""
    out = bytearray()
    rest = body
    for _ in range(MAX_DECODED_MEMBERS):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        room = MAX_BODY - len(out)  # never 0: to zlib, that means no bound at all
        try:
            out += decoder.decompress(rest, room) if room > 0 else b""
        except zlib.error as exc:
            raise Incomplete(exc, status, body, sample) from None
        if room <= 0 or decoder.unconsumed_tail or (len(out) == MAX_BODY and not decoder.eof):
            raise Incomplete(
                AnswerTooLarge(f"a decoded body over {MAX_BODY} bytes"),
                status,
                body,
                sample,
            )
        if not decoder.eof:
            raise Incomplete(ValueError("the gzip stream ends early"), status, body, sample)
        rest = decoder.unused_data
        if not rest:
            return bytes(out)
    raise Incomplete(
        AnswerTooLarge(f"a gzip body of over {MAX_DECODED_MEMBERS} members"),
        status,
        body,
        sample,
    )
