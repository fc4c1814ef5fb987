"""The clients' exception hierarchy.

Shaped like httpx's: one base class to catch everything a client can raise, then
transport problems (nothing usable came back) apart from answers (the server
said something we did not want). The split matters to the flow: a transport
problem or a 5xx may be retried, a 4xx is an answer and never is.

    ClientError
    ├── TransportError          connection refused/reset, timeouts
    │   └── RequestTimeout      no whole answer in time (what arrived, for how long)
    ├── HTTPStatusError         any non-2xx answer we did not expect
    │   ├── Unauthorized        401/403
    │   ├── NotFound            404
    │   ├── Conflict            409
    │   ├── TooManyRequests     429
    │   └── ServerError         5xx
    └── ProtocolError           the peer's bytes do not follow the protocol (route, excerpt)
        ├── ResponseFormatError invalid JSON, or JSON of the wrong shape
        └── LimitExceeded       past a bound: interim answers, a head, framing, a body's size

Every byte a peer sends is untrusted. Each client parses what it receives at one
place, into typed values or one of these errors, and nothing else leaves a
client: a caller that catches :class:`ClientError` has caught everything a peer
can cause. Excerpts of what a peer sent are short and have ``Authorization`` and
bearer values masked, since a peer may echo our own credentials back.
"""

from __future__ import annotations

import re

#: How much of a peer's bytes an error quotes: enough to recognise the answer.
EXCERPT_LIMIT = 160

_SECRET_PATTERNS = (
    # "Authorization: Bearer x", "authorization": "Basic x", authorization=x
    re.compile(
        r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)((?:bearer|basic|token)\s+)?[^\s\"',;}&]+"
    ),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with ``Authorization`` and bearer values, and the given secrets, masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SECRET_PATTERNS[0].sub(lambda m: m.group(1) + (m.group(2) or "") + "***", text)
    return _SECRET_PATTERNS[1].sub(lambda m: m.group(1) + "***", text)


def clip(data: bytes | str, limit: int = EXCERPT_LIMIT, secrets: tuple[str, ...] = ()) -> str:
    """A peer's text, redacted, then cut to ``limit`` characters.

    Masked before it is cut, so that a cut can never leave half a token visible.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = redact(text, secrets)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return text


def excerpt(data: bytes | str, limit: int = EXCERPT_LIMIT, secrets: tuple[str, ...] = ()) -> str:
    """A short, one-line, redacted quote of what a peer sent, as ``repr`` shows it."""
    return repr(clip(data, limit, secrets))


class ClientError(Exception):
    """Anything a client of this package raises."""

    #: Set by the retry policy when it stopped retrying this flake because the caller's
    #: deadline was near, not for a number of tries: the request kept failing until the
    #: phase ran out of time, which a report names as a timeout.
    retried_until_deadline: bool = False
    #: Set by the retry policy when this is the answer to a retry: the request was sent
    #: more than once, and an earlier try may have reached the peer before its connection
    #: failed, so an answer such as "already exists" or "not found" may be that try's doing.
    after_retry: bool = False


class TransportError(ClientError):
    """No usable answer: the connection failed, was reset, or timed out."""

    #: This client's own close (``aclose``) cut the request short: no flake, so no retry
    #: policy tries it again (another try would only meet the closed client).
    closed_here: bool = False

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class RequestTimeout(TransportError, TimeoutError):
    """No whole answer in time: the connection, the headers or the body took too long.

    Also a :class:`TimeoutError`, which it is: code that knows nothing of this client (the
    engine) can tell that a phase ran out of time waiting for an answer.

    ``received`` counts the bytes of the body that did arrive and ``elapsed`` how long
    the request had run, so that "a body trickling in" and "no answer at all" read
    differently in a report.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        elapsed: float | None = None,
        received: int | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url)
        self.elapsed = elapsed
        self.received = received


def no_whole_answer(
    method: str,
    url: str,
    elapsed: float,
    status: int | None,
    received: bytes | bytearray,
    *,
    chunks: int | None = None,
    quote_last: int | None = None,
) -> RequestTimeout:
    """The :class:`RequestTimeout` of a request whose deadline passed before its whole
    answer came, saying what had arrived: no answer, or the status, the bytes of the body
    (in how many stream chunks, when counted) and a redacted quote of them (of the last
    ``quote_last`` bytes only, when given)."""
    quoted = bytes(received if quote_last is None else received[-quote_last:])
    what = (
        "no answer"
        if status is None
        else f"answered {status}, {len(received)} bytes of the body arrived"
        + (f" in {chunks} chunks" if chunks is not None else "")
        + (f" ({excerpt(quoted)})" if received else "")
    )
    return RequestTimeout(
        f"{method} {url}: no whole answer within {elapsed:.1f} s: {what}",
        method=method,
        url=url,
        elapsed=elapsed,
        received=len(received),
    )


class HTTPStatusError(ClientError):
    """The server answered with a status we did not expect.

    ``message`` is the server's own one-line explanation when its error body has
    one (KubeFoundry's ``{"error": {"message": ...}}``, a Kubernetes ``Status``),
    so reports can quote the server instead of a bare number.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        method: str = "",
        path: str = "",
        body: object = None,
        retry_after: float | None = None,
    ) -> None:
        #: The pause the server asked for (``Retry-After``), in seconds, if it asked.
        self.retry_after = retry_after
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        self.body = body
        super().__init__(f"{method} {path} answered {status}: {message}".strip())


class Unauthorized(HTTPStatusError):
    """401 or 403: no token, a wrong token, or not allowed."""


class NotFound(HTTPStatusError):
    """404."""


class Conflict(HTTPStatusError):
    """409: the object exists already (or a Helm release is stuck)."""


class TooManyRequests(HTTPStatusError):
    """429: the server asks us to come back later (``retry_after`` seconds)."""


class ServerError(HTTPStatusError):
    """5xx.

    ``refusal`` marks a 5xx that the server gives the same request every time (the real
    KubeFoundry answers an unknown provider and a body that is not JSON with 500): an
    answer like a 4xx, which no retry policy retries.
    """

    refusal: bool = False


class ProtocolError(ClientError):
    """What the peer sent does not follow the protocol: the route, and a redacted excerpt.

    An answer, not a flake: a peer that sends broken bytes once will usually again, so
    a client does not retry it (a watch stream relists, which is the same thing).
    """

    def __init__(self, message: str, *, route: str = "", excerpt: str = "") -> None:
        self.route = route
        self.excerpt = excerpt
        super().__init__(message)


class LimitExceeded(ProtocolError):
    """The peer went past one of this client's bounds: more interim (1xx) answers, a longer
    head, chunk header or trailer, a bigger (or decoded bigger) body than any real server
    sends.

    Unlike the broken bytes a retrying policy is for (a body cut short, a middlebox
    mangling one answer), a peer that does this usually does it to every try, and each try
    ends in milliseconds: retried until the deadline, it would be hammered for minutes
    before the same error. So a policy that retries broken bytes retries this only a few
    times (``RetryPolicy.tries_past_bound``).
    """


class ResponseFormatError(ProtocolError):
    """The body was not JSON, or not of the shape the caller needs.

    ``errors`` lists every problem found (``field: what is wrong``), not just the first.
    """

    def __init__(
        self, message: str, errors: list[str] | None = None, *, route: str = "", excerpt: str = ""
    ) -> None:
        self.errors = list(errors or [])
        detail = "; ".join(self.errors)
        text = f"{message}: {detail}" if detail else message
        if excerpt:
            text += f" (received {excerpt})"
        super().__init__(text, route=route, excerpt=excerpt)


def status_error(status: int, message: str, **kwargs: object) -> HTTPStatusError:
    """Build the most specific HTTPStatusError subclass for ``status``."""
    cls: type[HTTPStatusError]
    if status in (401, 403):
        cls = Unauthorized
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status == 429:
        cls = TooManyRequests
    elif status >= 500:
        cls = ServerError
    else:
        cls = HTTPStatusError
    return cls(status, message, **kwargs)  # type: ignore[arg-type]


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date; None if neither."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        from datetime import UTC, datetime

        if when.tzinfo is None:
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def is_retryable(exc: BaseException) -> bool:
    """A flake worth retrying: the transport failed, the server erred, or asked us to wait.

    A 4xx other than 429 is an answer, not a flake: retrying it would only hide a bug.
    """
    if isinstance(exc, TransportError):
        return not exc.closed_here
    return isinstance(exc, (ServerError, TooManyRequests))
