"""The clients' exception hierarchy.

Shaped like httpx's: one base class to catch everything a client can raise, then
transport problems (nothing usable came back) apart from answers (the server
said something we did not want). The split matters to the flow: a transport
problem or a 5xx may be retried, a 4xx is an answer and never is.

    ClientError
    ├── TransportError          connection refused/reset, timeouts
    │   └── RequestTimeout
    ├── HTTPStatusError         any non-2xx answer we did not expect
    │   ├── Unauthorized        401/403
    │   ├── NotFound            404
    │   ├── Conflict            409
    │   ├── TooManyRequests     429
    │   └── ServerError         5xx
    └── ResponseFormatError     invalid JSON, or JSON of the wrong shape
"""

from __future__ import annotations


class ClientError(Exception):
    """Anything a client of this package raises."""


class TransportError(ClientError):
    """No usable answer: the connection failed, was reset, or timed out."""

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class RequestTimeout(TransportError):
    """The request took longer than its client timeout."""


class HTTPStatusError(ClientError):
    """The server answered with a status we did not expect.

    ``message`` is the server's own one-line explanation when its error body has
    one (KubeFoundry's ``{"error": {"message": ...}}``, a Kubernetes ``Status``),
    so reports can quote the server instead of a bare number.
    """

    def __init__(
        self, status: int, message: str, *, method: str = "", path: str = "", body: object = None
    ) -> None:
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

    def __init__(self, *args: object, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(HTTPStatusError):
    """5xx."""


class ResponseFormatError(ClientError):
    """The body was not JSON, or not of the shape the caller needs.

    ``errors`` lists every problem found (``field: what is wrong``), not just the first.
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = list(errors or [])
        detail = "; ".join(self.errors)
        super().__init__(f"{message}: {detail}" if detail else message)


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


def is_retryable(exc: BaseException) -> bool:
    """A flake worth retrying: the transport failed, the server erred, or asked us to wait.

    A 4xx other than 429 is an answer, not a flake: retrying it would only hide a bug.
    """
    return isinstance(exc, (TransportError, ServerError, TooManyRequests))
