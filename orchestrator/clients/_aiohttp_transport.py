"""An httpx transport that sends through aiohttp.

The backend client keeps httpx's interface: its request building, ``Timeout``
configuration, exception hierarchy and test transports. What it replaces is the
connection handling underneath. httpcore spends about 0.6 ms of CPU on each
request (it rescans its pool and queries each socket); aiohttp, which
kubernetes-asyncio already brings, about a quarter of that. A run with fifty
deployments sends some five hundred backend requests, so this is a visible
share of the run on a small CI machine.

Errors come out as the httpx exceptions the rest of the code already handles:
``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``ReadError``,
``RemoteProtocolError``. A gzip or deflate body is decoded here, as it arrives, in
pieces of at most :data:`PIECE` bytes (see :class:`_Decoding`), and handed to httpx
decoded: httpx decodes each read whole, and a few KiB of gzip can stand for
gigabytes, so one read of a bomb grew the memory a thousandfold before the
caller's bound on the whole answer could look at it. In pieces, that bound is met
within a piece of it. Other codings are passed through as httpx takes them. Proxies
configured in the environment are still honoured: httpx routes those requests
through its own proxy transports before this one is consulted.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
from yarl import URL

from ._http1 import MAX_DECODED_MEMBERS, MAX_HEAD, MAX_INTERIM, AnswerTooLarge, InterimFlood

#: The most bytes a body's decoding hands on at once: what one read of it can add to the
#: memory, whatever it decodes to.
PIECE = 64 * 1024
#: The content codings decoded here (httpx decodes these, and knows no others here).
_ZLIB_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}


class BoundedResponse(aiohttp.ClientResponse):
    """aiohttp's response, with the bounds its parser lacks, as the lean path has them.

    - At most :data:`MAX_INTERIM` interim (1xx) answers before the final one (aiohttp
      takes any number: a peer could hold the request with them for ever); past that,
      :class:`InterimFlood`, and aiohttp closes the connection. Counted as each message
      of the head is read, once per answer.
    - At most :data:`MAX_HEAD` bytes in a row that give the body nothing: aiohttp takes a
      chunk extension (``5;aaaa...``) of any length, holding nothing and handing nothing
      on, so a peer sending one without end kept a watch for ever, a core busy the while.
      Past the bound the body's reader gets :class:`AnswerTooLarge` and the connection
      is closed. Counted as the connection hands each read to aiohttp's parser (two
      counter reads a read, on this path only), until the body's end.
    - No byte after the answer's end: from then until the next request on the connection
      (sent by :class:`BoundedRequest`), bytes answer nothing (a body longer than its
      Content-Length, a second answer a peer slips in), and aiohttp would parse them and
      hand them to that next request as its answer. They close the connection instead,
      as on the lean path (:class:`_IdleGuard`).

    Sessions made with it as their ``response_class`` and :class:`BoundedRequest` as their
    ``request_class``: the backend transport's, the Kubernetes client's (its reads'
    session and its ApiClient's). With uvloop, which keeps a protocol's ``data_received``
    from the start, only the first bound applies.
    """

    _unbind: Any = None
    #: Set by :class:`BoundedRequest`, which lifts the guard before the next request.
    _guard_idle = False

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        if protocol is None:
            return await super().start(connection)
        read = protocol.read
        interim = 0

        async def counted() -> Any:
            nonlocal interim
            message, payload = await read()
            if 100 <= message.code < 200 and message.code != 101:
                interim += 1
                if interim > MAX_INTERIM:
                    raise InterimFlood()
            return message, payload

        protocol.read = counted  # this answer's head only: the connection's own after
        try:
            await super().start(connection)
        finally:
            del protocol.read
        self._bound_framing(protocol)
        return self

    def _bound_framing(self, protocol: Any) -> None:
        content = self.content
        if "data_received" in vars(protocol):
            return  # not ours to bind (nothing of ours is left bound: see BoundedRequest)
        if content.at_eof():  # a whole (or empty) body: nothing more comes for it
            self._idle(protocol)
            return
        received = protocol.data_received
        unhanded = 0

        def counted(data: bytes) -> None:
            nonlocal unhanded
            before = content.total_raw_bytes
            received(data)
            if content.total_raw_bytes != before:
                unhanded = 0
                return
            unhanded += len(data)
            if unhanded > MAX_HEAD and not content.at_eof():
                content.set_exception(
                    AnswerTooLarge(f"a chunk header or trailer over {MAX_HEAD} bytes")
                )
                self.close()

        def unbind() -> None:
            if vars(protocol).get("data_received") is counted:
                del protocol.data_received  # the connection's own again, for its next answer
                self._idle(protocol)

        protocol.data_received = counted
        self._unbind = unbind
        content.on_eof(unbind)

    def _idle(self, protocol: Any) -> None:
        if self._guard_idle:
            protocol.data_received = _IdleGuard(protocol)

    def release(self) -> Any:
        if self._unbind is not None:
            self._unbind()
        return super().release()

    def close(self) -> None:
        if self._unbind is not None:
            self._unbind()
        super().close()


class _IdleGuard:
    """A connection's ``data_received`` from the end of an answer to the next request:
    a byte then closes the connection, unparsed (see :class:`BoundedResponse`)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def __call__(self, data: bytes) -> None:
        if data:
            self._protocol.close()


class BoundedRequest(aiohttp.ClientRequest):
    """aiohttp's request, lifting :class:`_IdleGuard` from its connection before it is
    written (a byte of its answer must reach the parser), and asking its
    :class:`BoundedResponse` to guard the connection again once the answer is whole."""

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        protocol = conn.protocol
        if protocol is not None and isinstance(vars(protocol).get("data_received"), _IdleGuard):
            del protocol.data_received
        response = await super().send(conn)
        if isinstance(response, BoundedResponse):
            response._guard_idle = True
        return response


class _Decoding:
    """A gzip or deflate body decoded as its bytes come, handed on in pieces of at most
    :data:`PIECE` bytes: zlib is asked for no more at once (``max_length``), and what it
    has not taken yet waits in its ``unconsumed_tail``. gzip members follow each other
    (RFC 1952, as aiohttp and the lean path decode them), at most
    :data:`MAX_DECODED_MEMBERS` of them; deflate is zlib's format or, as httpx also
    accepts, a raw stream, told apart by its first two bytes."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._zlib = zlib.decompressobj(wbits) if wbits else None
        #: A deflate body's first bytes, until there are two: its format's header, or not.
        self._head = b""
        self._members = 1
        #: Bytes after a deflate stream's end so far (see :meth:`_after_deflate`).
        self._ignored = 0

    def _started(self, data: bytes) -> tuple[Any, bytes]:
        """The decoder, once a deflate body's first two bytes tell zlib's format (a header
        whose check holds) from a raw stream; until then, None and nothing to decode."""
        if self._zlib is not None:
            return self._zlib, data
        data = self._head + data
        if len(data) < 2:
            self._head = data
            return None, b""
        zlib_header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        return self._zlib, data

    def feed(self, data: bytes) -> Iterator[bytes]:
        decoder, data = self._started(data)
        while data:
            if decoder.eof:  # bytes after the end of a stream
                if not self._wbits:
                    self._after_deflate(len(data))
                    return
                self._members += 1
                if self._members > MAX_DECODED_MEMBERS:
                    raise AnswerTooLarge(f"a gzip body of over {MAX_DECODED_MEMBERS} members")
                self._zlib = decoder = zlib.decompressobj(self._wbits)
            out = decoder.decompress(data, PIECE)
            if out:
                yield out
            # Once at its end, a decoder takes no more: what follows is in ``unused_data``.
            data = decoder.unconsumed_tail or (decoder.unused_data if decoder.eof else b"")

    def _after_deflate(self, size: int) -> None:
        """Bytes after a deflate stream's end are ignored, as httpx ignores them, but not
        fed to zlib, which would keep them all (``unused_data`` grows by each read, copied
        whole each time), and only so many: they decode to nothing, so the caller's bound
        on the decoded answer never meets them, and a peer sending them without end would
        hold the request to its deadline, and the memory with it."""
        self._ignored += size
        if self._ignored > MAX_HEAD:
            raise AnswerTooLarge(f"over {MAX_HEAD} bytes after the end of a deflate stream")

    def end(self) -> Iterator[bytes]:
        """What is left once the body has ended (a stream cut short ends as it was, as
        httpx ends it)."""
        if self._zlib is None:
            return
        while out := self._zlib.decompress(self._zlib.unconsumed_tail, PIECE):
            yield out


class _Body(httpx.AsyncByteStream):
    """The response body, read as it arrives (decoded, with ``decoding``); errors mid-body
    become httpx errors."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        request: httpx.Request,
        decoding: _Decoding | None = None,
    ) -> None:
        self._response = response
        self._request = request
        self._decoding = decoding

    async def __aiter__(self) -> AsyncIterator[bytes]:
        decoding = self._decoding
        try:
            async for chunk in self._response.content.iter_any():
                if decoding is None:
                    yield chunk
                else:
                    for piece in decoding.feed(chunk):
                        yield piece
            if decoding is not None:
                for piece in decoding.end():
                    yield piece
        except _NETWORK_FAILURES as exc:
            raise _map(exc, self._request, connected=True) from exc
        except AnswerTooLarge as exc:  # a bound of BoundedResponse's: the peer's protocol
            raise httpx.RemoteProtocolError(str(exc), request=self._request) from exc
        except zlib.error as exc:
            raise httpx.DecodingError(f"{exc}", request=self._request) from exc

    async def aclose(self) -> None:
        self._response.release()


#: What a request can fail with on the way: mapped to httpx's exceptions by _map.
_NETWORK_FAILURES = (aiohttp.ClientError, OSError, TimeoutError)


def _map(exc: BaseException, request: httpx.Request, *, connected: bool) -> httpx.TransportError:
    """The httpx exception that stands for an aiohttp (or socket) failure."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # sock_read: connected, no answer in time
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, TimeoutError):
        return (httpx.ReadTimeout if connected else httpx.ConnectTimeout)(text, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(text, request=request)
    if isinstance(
        exc,
        (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError),
    ):
        return httpx.RemoteProtocolError(text, request=request)
    if isinstance(exc, OSError):  # aiohttp.ClientOSError included: a reset, a broken pipe
        return httpx.ReadError(text, request=request)
    return httpx.NetworkError(text, request=request)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests with one aiohttp session (created on first use, in the running loop)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        keep_alive: bool = True,
    ) -> None:
        """``keep_alive`` False: a connection per request, closed after its answer, for a
        client of few requests whose peer may close a connection it said it would keep
        (llama.cpp's server does after a streamed answer): the next request would race
        that close on the reused connection and fail to be written."""
        self._ssl = ssl_context
        self._limit = max_connections
        self._keep_alive = keep_alive
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._limit,
                    ssl=self._ssl if self._ssl else True,
                    force_close=not self._keep_alive,
                ),
                auto_decompress=False,  # httpx decodes, as it would with its own transport
                trust_env=False,  # proxies from the environment are routed by httpx
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
                response_class=BoundedResponse,
                request_class=BoundedRequest,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limits: dict[str, Any] = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.get("connect"), sock_read=limits.get("read")
        )
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        body = await request.aread()
        try:
            response = await self._open().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except _NETWORK_FAILURES as exc:
            raise _map(exc, request, connected=False) from exc
        except InterimFlood as exc:
            # An httpx error as the transport's others are; the cause tells the client it
            # is the peer's protocol, not a flake.
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        answer_headers = list(response.raw_headers)
        decoding = None
        codings = [
            c
            for v in response.headers.getall("Content-Encoding", ())
            for c in (p.strip().lower() for p in v.split(","))
            if c and c != "identity"
        ]
        if any(c in _ZLIB_CODINGS for c in codings):
            if len(codings) > 1:
                # gzip inside gzip is a bomb of a bomb, and httpx would decode the codings it
                # knows of a stack, whole: no server sends one, nobody asked for it.
                response.close()
                refused = AnswerTooLarge(
                    f"a body in {len(codings)} content codings ({', '.join(codings)}), "
                    "whose decoded size is not bounded here"
                )
                raise httpx.RemoteProtocolError(str(refused), request=request) from refused
            decoding = _Decoding(_ZLIB_CODINGS[codings[0]])
            # Decoded here: httpx must not decode it again, nor hold it to the coded length.
            answer_headers = [
                (n, v)
                for n, v in answer_headers
                if n.lower() not in (b"content-encoding", b"content-length")
            ]
        return httpx.Response(
            response.status,
            headers=answer_headers,
            stream=_Body(response, request, decoding),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
