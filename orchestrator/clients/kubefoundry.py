"""A client for the real KubeFoundry backend's HTTP API.

It speaks the routes the backend really has (see the README's route map), not
those of the plan it started from: KAITO install and status live under
``/api/installation/providers/kaito``, a deployment is addressed as
``/api/deployments/NAME?namespace=NS``, and there is no inference proxy.

One ``httpx.AsyncClient`` is shared by all calls. Flakes (connection errors,
5xx, 429) are retried by a :class:`RetryPolicy`; every other status is an
answer and raises the matching :mod:`._errors` class at once. Every exchange is
kept in a bounded journal for the failure diagnostics; the bearer token is
never part of it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import httpx
from pydantic import BaseModel, ValidationError

from . import _models as m
from ._aiohttp_transport import AiohttpTransport
from ._errors import (
    ClientError,
    LimitExceeded,
    ProtocolError,
    RequestTimeout,
    ResponseFormatError,
    ServerError,
    TransportError,
    clip,
    excerpt,
    parse_retry_after,
    redact,
    status_error,
)
from ._http1 import AnswerTooLarge, InterimFlood
from ._retry import GATEWAY_ERRORS, RetryPolicy, bounded
from ._tls import context_for

M = TypeVar("M", bound=BaseModel)

#: Helm steps inside the install route may take minutes each, and the backend
#: holds the request open until they end; the phase deadline still bounds it.
INSTALL_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=10.0)
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=10.0)
#: The largest answer taken from the backend, decoded: its answers are JSON of a few
#: KiB; a bound on what an endless body, or a few bytes of gzip standing for gigabytes
#: (httpx decodes them), can make us hold.
MAX_ANSWER = 64 * 1024 * 1024

JOURNAL_BODY_LIMIT = 8192

#: 500s of the real backend that are refusals, not flakes (recorded: an unknown provider,
#: a body that is not JSON): the same request always gets them, so they are not retried.
#: Any other 5xx may pass (the first create after an install may meet KAITO's webhook
#: still starting) and is.
REFUSALS_500 = (
    re.compile(r"Provider '.*' not found\. Available providers: "),
    re.compile(r"JSON Parse error: "),
)


@dataclass
class Exchange:
    """One request and what came back, as the diagnostics show it."""

    at: str
    method: str
    path: str
    status: int | None
    elapsed_ms: float
    body: Any = None
    error: str | None = None


@dataclass
class Journal:
    """The last ``limit`` exchanges, oldest first."""

    limit: int = 500
    entries: deque[Exchange] = field(default_factory=deque)

    def add(self, exchange: Exchange) -> None:
        self.entries.append(exchange)
        while len(self.entries) > self.limit:
            self.entries.popleft()

    def to_list(self) -> list[dict[str, Any]]:
        return [e.__dict__.copy() for e in self.entries]


def _error_message(body: Any, fallback: str) -> str:
    """The server's own explanation, from whichever error shape it used."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(message := err.get("message"), str):
            return message
        if isinstance(err, dict) and isinstance(err.get("issues"), list):  # zod-validator
            issues = [i.get("message", "") for i in err["issues"] if isinstance(i, dict)]
            return "; ".join(x for x in issues if x) or fallback
        if isinstance(message := body.get("message"), str):
            return message
    if isinstance(body, str) and body.strip():
        return body.strip().splitlines()[0][:300]
    return fallback


def _trim(body: Any, secrets: tuple[str, ...] = ()) -> Any:
    """The body as the journal keeps it: bounded, and with any credential a peer echoed
    (our token, an ``Authorization`` or bearer value) masked."""
    text = body if isinstance(body, str) else json.dumps(body)
    masked = redact(text, secrets)
    if masked != text:
        body = text = masked
    if len(text) <= JOURNAL_BODY_LIMIT:
        return body
    return text[:JOURNAL_BODY_LIMIT] + f"... [{len(text) - JOURNAL_BODY_LIMIT} more characters]"


def parse(model: type[M], body: Any, where: str) -> M:
    """Validate ``body`` against ``model``, naming every field that is wrong.

    With :meth:`KubeFoundryClient._send_once`, the boundary of the backend's bytes:
    what leaves the client is a model, or a :class:`ResponseFormatError`.
    """
    try:
        return model.model_validate(body)
    except (ValidationError, RecursionError) as exc:
        errors = []
        for err in exc.errors() if isinstance(exc, ValidationError) else []:
            loc = ".".join(str(p) for p in err["loc"]) or "(body)"
            errors.append(f"{clip(loc, 80)}: {err['msg']}")
        raise ResponseFormatError(
            f"{where}: unexpected response shape",
            errors[:10] + ([f"... {len(errors) - 10} more"] if len(errors) > 10 else []),
            route=where,
            excerpt=excerpt(_trim_text(body)),
        ) from None


def _trim_text(body: Any) -> str:
    try:
        return json.dumps(body)[:1000]
    except (TypeError, ValueError, RecursionError):
        return repr(body)[:1000]


class KubeFoundryClient:
    """The KubeFoundry API, one method per route the flow uses."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "orchestrator"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        tls = context_for(base_url)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport or AiohttpTransport(ssl_context=tls),
            verify=True if tls is None else tls,  # True: httpx builds none of its own here
        )
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        #: Values never quoted in an error: a peer may echo our own token back.
        self._secrets = (token,) if token else ()
        self.retry = retry or RetryPolicy()
        self.journal = Journal()
        self._on_retry = on_retry
        self.requests_sent = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> KubeFoundryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ---------------------------------------------------------

    async def _send_once(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None,
        json_body: Any,
        timeout: httpx.Timeout | None,
    ) -> tuple[int, Any, httpx.Headers]:
        """One exchange, bounded as a whole: ``(status, decoded body, headers)``.

        The one place the backend's bytes come in. The read timeout of ``timeout`` is
        the deadline for the *whole* answer, body included, so a body that trickles in
        is ended like one that never comes; the error names the route, how many bytes
        had arrived (and a redacted excerpt) and after how long. A body that is not
        JSON comes back as :class:`_NotJSON`, for the caller to judge by status.
        """
        started = time.monotonic()
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        shown = path + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
        route = f"{method} {shown}"
        self.requests_sent += 1
        limits = timeout or self._timeout
        total = bounded(limits.read or DEFAULT_TIMEOUT.read or 30.0)
        received = bytearray()
        status: int | None = None
        headers = httpx.Headers()
        failure: ClientError | None = None
        whole = False
        with anyio.move_on_after(total):
            try:
                async with self._http.stream(
                    method, path, params=params, json=json_body, timeout=limits
                ) as response:
                    status, headers = response.status_code, response.headers
                    async for chunk in response.aiter_bytes():
                        received += chunk
                        if len(received) > MAX_ANSWER:
                            raise AnswerTooLarge(f"an answer body over {MAX_ANSWER} bytes")
                    whole = True
            except httpx.TimeoutException as exc:
                failure = self._timed_out(route, started, status, received, type(exc).__name__)
            except Exception as exc:
                cause = exc if isinstance(exc, AnswerTooLarge) else exc.__cause__
                if isinstance(cause, InterimFlood | AnswerTooLarge):
                    # Endless interim answers or framing, a body past any answer's size:
                    # the peer's protocol, which another try would meet again (a flake is
                    # retried; this is not).
                    failure = LimitExceeded(f"{route}: {cause}", route=route)
                elif isinstance(exc, httpx.DecodingError):
                    # A body its Content-Encoding does not decode: broken bytes, which
                    # the backend's answer is taken as at once, not a flake.
                    failure = ProtocolError(
                        f"{route}: the body does not decode as its Content-Encoding says "
                        f"({clip(str(exc), 200, self._secrets)})",
                        route=route,
                    )
                else:
                    failure = TransportError(
                        f"{route}: {type(exc).__name__}: "
                        f"{clip(str(exc), 200, self._secrets)}".rstrip(": ")
                        + (f" after {len(received)} bytes of the answer" if status else ""),
                        method=method,
                        url=shown,
                    )
        if failure is None and not whole:
            failure = self._timed_out(route, started, status, received, "")
        if failure is not None:
            self.journal.add(Exchange(at, method, shown, status, _ms(started), error=str(failure)))
            raise failure
        assert status is not None
        body = self._decode(bytes(received))
        self.journal.add(
            Exchange(at, method, shown, status, _ms(started), _trim(body, self._secrets))
        )
        return status, body, headers

    def _decode(self, raw: bytes) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return _NotJSON(raw.decode("utf-8", "replace"), f"{type(exc).__name__}: {exc}")

    def _timed_out(
        self, route: str, started: float, status: int | None, received: bytearray, why: str
    ) -> RequestTimeout:
        elapsed = time.monotonic() - started
        what = (
            "no answer"
            if status is None
            else f"answered {status}, {len(received)} bytes of the body arrived"
            + (f" ({excerpt(bytes(received), secrets=self._secrets)})" if received else "")
        )
        method, _, shown = route.partition(" ")
        return RequestTimeout(
            f"{route}: no whole answer within {elapsed:.1f} s: {what}"
            + (f" ({why})" if why else ""),
            method=method,
            url=shown,
            elapsed=elapsed,
            received=len(received),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        expect: tuple[int, ...] = (200,),
        timeout: httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
    ) -> tuple[int, Any]:
        """Send a request, retrying flakes; return ``(status, body)`` for an expected status.

        Any other status raises the matching :class:`HTTPStatusError` subclass
        carrying the server's own message (and ``Retry-After``, which the retry
        policy honours).
        """

        async def once() -> tuple[int, Any]:
            status, body, headers = await self._send_once(
                method, path, params=params, json_body=json_body, timeout=timeout
            )
            if status in expect:
                if isinstance(body, _NotJSON):
                    # An answer, not a flake: a backend that sends broken JSON once will again.
                    raise ResponseFormatError(
                        f"{method} {path}: the {status} answer is not valid JSON ({body.error})",
                        [f"(body): {excerpt(body, 120, self._secrets)}"],
                        route=f"{method} {path}",
                    )
                return status, body
            error = status_error(
                status,
                clip(_error_message(body, f"HTTP {status}"), 300, self._secrets),
                method=method,
                path=path,
                body=body,
                retry_after=parse_retry_after(headers.get("Retry-After"))
                if status in (429, 503)
                else None,
            )
            if isinstance(error, ServerError) and status == 500:
                error.refusal = any(r.match(error.message) for r in REFUSALS_500)
            raise error

        def on_retry(exc: BaseException, wait: float) -> None:
            if self._on_retry:
                # The client's own errors already start with the route: say it once.
                text, route = str(exc), f"{method} {path}"
                what = text if text.startswith(route) else f"{route}: {text}"
                self._on_retry(f"{what}; retrying in {wait:.1f} s")

        return await (retry or self.retry).call(once, on_retry, route=f"{method} {path}")

    async def _get(self, model: type[M], path: str, **kwargs: Any) -> M:
        _, body = await self.request("GET", path, **kwargs)
        return parse(model, body, f"GET {path}")

    # -- routes -----------------------------------------------------------

    async def health(self) -> m.Health:
        return await self._get(m.Health, "/api/health")

    async def cluster_status(self) -> m.ClusterStatus:
        return await self._get(m.ClusterStatus, "/api/cluster/status")

    async def provider_status(self, provider: str) -> m.ProviderStatus:
        return await self._get(
            m.ProviderStatus, f"/api/installation/providers/{_seg(provider)}/status"
        )

    async def install_provider(self, provider: str, *, force: bool = False) -> m.InstallResult:
        path = f"/api/installation/providers/{_seg(provider)}/install"
        # The route answers 500 when a helm step failed: an answer, not a flake.
        retry = dataclasses.replace(self.retry, server_statuses=GATEWAY_ERRORS)
        _, body = await self.request(
            "POST",
            path,
            params={"force": "true"} if force else None,
            timeout=INSTALL_TIMEOUT,
            retry=retry,
        )
        return parse(m.InstallResult, body, f"POST {path}")

    async def catalog_model(self, model_id: str) -> m.CatalogModel:
        # The backend matches the id with its colon unencoded (``llama3.2:1b``).
        return await self._get(m.CatalogModel, f"/api/aikit/models/{quote(model_id, safe=':')}")

    async def create_deployment(self, body: dict[str, Any]) -> m.Created:
        _, answer = await self.request("POST", "/api/deployments", json_body=body, expect=(201,))
        return parse(m.Created, answer, "POST /api/deployments")

    async def get_deployment(self, name: str, namespace: str) -> m.DeploymentStatus:
        """The deployment's status. Raises :class:`NotFound` when the backend says 404.

        The backend turns *every* fetch error into 404, so a caller that takes
        404 to mean "gone" should also check :meth:`cluster_status`.
        """
        return await self._get(
            m.DeploymentStatus, f"/api/deployments/{_seg(name)}", params={"namespace": namespace}
        )

    async def delete_deployment(self, name: str, namespace: str) -> m.Deleted:
        path = f"/api/deployments/{_seg(name)}"
        _, body = await self.request("DELETE", path, params={"namespace": namespace})
        return parse(m.Deleted, body, f"DELETE {path}")

    async def deployment_pods(self, name: str, namespace: str) -> m.DeploymentPods:
        return await self._get(
            m.DeploymentPods, f"/api/deployments/{_seg(name)}/pods", params={"namespace": namespace}
        )

    async def post_json(
        self,
        path: str,
        body: Any,
        *,
        timeout: httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
    ) -> tuple[int, Any]:
        """A raw POST on the backend, for routes a newer backend may grow (an inference proxy)."""
        return await self.request(
            "POST", path, json_body=body, timeout=timeout, retry=retry, expect=(200,)
        )


class _NotJSON(str):
    """A body that did not parse as JSON: its text, and why it did not parse."""

    error: str

    def __new__(cls, text: str, error: str) -> _NotJSON:
        obj = super().__new__(cls, text)
        obj.error = error
        return obj


def _seg(value: str) -> str:
    """One URL path segment: names are validated before any request, but never trust them."""
    return quote(value, safe="")


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


__all__ = ["KubeFoundryClient", "Journal", "Exchange", "parse", "ClientError"]
