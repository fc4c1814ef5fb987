"""Talking to the served model: the OpenAI chat-completion call and its schema.

KubeFoundry has no inference proxy, so the model is reached one of three ways
(``InferenceRoute``): through the Kubernetes API server's service proxy (the
default: it needs nothing but the kubeconfig the run already has), through a
base URL the user gives (a port-forward or an ingress), or through the plan's
backend proxy path, for a backend that grows one. Through the service proxy the
request's body goes chunked: with a Content-Length, the API server's proxy can cut
an answer that begins quickly (see :meth:`KubeClient.open`).

A model's words are not stable, so the answer is judged by its shape only, and
every schema error is reported at once: a broken server usually breaks more
than one field, and a report that names them all saves a round trip.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx

from ._aiohttp_transport import AiohttpTransport
from ._completion import (
    ChatCompletionResponse,
    Expectations,
    Violation,
    assemble_stream,
    completion_violations,
)
from ._errors import (
    ClientError,
    HTTPStatusError,
    LimitExceeded,
    ProtocolError,
    RequestTimeout,
    ResponseFormatError,
    TransportError,
    clip,
    excerpt,
    no_whole_answer,
    status_error,
)
from ._http1 import AnswerTooLarge, InterimFlood
from ._retry import bounded
from ._tls import context_or_bare
from .kube import KubeClient


def validate_completion(
    body: Any,
    *,
    model: str | None = None,
    max_tokens: int | None = None,
    pattern: re.Pattern[str] | None = None,
) -> tuple[ChatCompletionResponse | None, list[str]]:
    """Check a non-streamed answer: the parsed completion, or None and *every* violation.

    The schema, then the quality gate (``_completion``): non-empty content, no leaked
    template tokens, a finish reason consistent with ``max_tokens`` and the usage, usage
    that adds up, and, when given, the model name and the expected pattern.
    """
    found = completion_violations(body, Expectations(model, max_tokens, pattern))
    if found:
        return None, [str(v) for v in found]
    return ChatCompletionResponse.model_validate(body), []


class InvalidCompletion(ResponseFormatError):
    """The model answered, but not with a valid chat completion.

    ``violations`` are the named checks it failed (``errors`` has them as text).
    """

    def __init__(
        self,
        message: str,
        errors: list[str] | None = None,
        *,
        violations: Sequence[Violation] = (),
        route: str = "",
        excerpt: str = "",
    ) -> None:
        self.violations = list(violations)
        text = list(errors or []) + [str(v) for v in self.violations]
        super().__init__(message, text, route=route, excerpt=excerpt)

    @property
    def checks(self) -> list[str]:
        """The names of the failed checks, each once, in the order first met."""
        return list(dict.fromkeys(v.check for v in self.violations))


@dataclass(frozen=True)
class InferenceRoute:
    """How to reach the model: ``service-proxy``, ``url`` (with ``base_url``) or ``backend-proxy``."""

    kind: Literal["service-proxy", "url", "backend-proxy"]
    base_url: str | None = None


@dataclass
class InferenceResult:
    """A judged completion and its timing.

    ``latency_s`` runs from the request to the answer's last byte; ``ttft_s`` to the
    first content of a streamed answer (None when the server did not stream).
    """

    response: ChatCompletionResponse
    latency_s: float
    attempts: int
    route: str
    ttft_s: float | None = None
    content_chunks: int = 0

    @property
    def streamed(self) -> bool:
        return self.ttft_s is not None

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed: tokens after the first over the time after it when streamed
        (time to first token is the prompt's cost, not generation's), else over the latency.
        Tokens are the usage's count, or one per content chunk when the server gives none."""
        tokens = self.completion_tokens
        if self.ttft_s is None:
            return tokens / self.latency_s if tokens and self.latency_s > 0 else None
        count = tokens if tokens is not None else self.content_chunks
        rest = self.latency_s - self.ttft_s
        return (count - 1) / rest if count > 1 and rest > 0 else None

    @property
    def content(self) -> str:
        return self.response.choices[0].message.content

    @property
    def prompt_tokens(self) -> int | None:
        return self.response.usage.prompt_tokens if self.response.usage else None

    @property
    def completion_tokens(self) -> int | None:
        return self.response.usage.completion_tokens if self.response.usage else None


#: While a model loads, servers answer 503 and the service proxy answers 503
#: ("no endpoints", "error trying to reach service"): both mean "not yet".
LOADING_STATUSES = frozenset({502, 503, 504})


class InferenceClient:
    """Send one chat completion to a deployed model and judge the answer."""

    def __init__(
        self,
        route: InferenceRoute,
        *,
        kube: KubeClient | None = None,
        backend_url: str | None = None,
        token: str | None = None,
        request_timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` carries the ``url`` and ``backend-proxy`` routes' requests (an
        ``httpx.MockTransport`` in tests, as for :class:`KubeFoundryClient`); the
        ``service-proxy`` route goes through ``kube``. By default it is the backend
        client's :class:`AiohttpTransport`, for its bounds: httpx's own transport takes
        interim (1xx) answers without end, which held a request to its deadline, and the
        loading model's grace after it, one try after another."""
        self.route = route
        self._kube = kube
        self._backend_url = (backend_url or "").rstrip("/")
        headers = (
            {"Authorization": f"Bearer {token}"} if token and route.kind == "backend-proxy" else {}
        )
        self._headers = headers
        self._transport = transport
        #: Made at the first request that needs it: the default route (``service-proxy``)
        #: goes through ``kube`` and never does, and httpx builds its TLS context when
        #: the client is made. A plain-HTTP peer (a port-forward, the API server's service
        #: proxy on ``http://``) gets a bare context, not the CA bundle (``_tls``).
        self._httpx: httpx.AsyncClient | None = None
        self._timeout = request_timeout
        self.requests_sent = 0

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._httpx is None:
            peer = self.route.base_url if self.route.kind == "url" else self._backend_url
            tls = context_or_bare(peer or "")
            self._httpx = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout, connect=5.0),
                headers=self._headers,
                verify=tls,
                # A connection per request: a completion is one request or a few, and the
                # real model server closes a connection after a streamed answer although
                # it said it would keep it, which the next request would race.
                transport=self._transport or AiohttpTransport(ssl_context=tls, keep_alive=False),
            )
        return self._httpx

    async def aclose(self) -> None:
        if self._httpx is not None:
            await self._httpx.aclose()

    def describe(self, namespace: str, service: str, port: int) -> str:
        if self.route.kind == "service-proxy":
            assert self._kube is not None
            return self._kube.server + self._kube.service_proxy_path(
                namespace, service, port, "v1/chat/completions"
            )
        if self.route.kind == "url":
            return f"{(self.route.base_url or '').rstrip('/')}/v1/chat/completions"
        return (
            f"{self._backend_url}/api/deployments/{namespace}/{service}/proxy/v1/chat/completions"
        )

    async def _post_once(self, url_or_path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """One completion request, its whole answer read within the request timeout.

        The one place the model's answer comes in: ``(status, decoded JSON)``, or the
        text when it is not JSON; every failure is a :class:`ClientError`.
        """
        self.requests_sent += 1
        if self.route.kind == "service-proxy":
            assert self._kube is not None
            status, _, raw = await self._kube.exchange(
                "POST", url_or_path, body=body, timeout=self._timeout, chunked=True
            )
        else:
            status, raw = await _post_whole(self._http, url_or_path, body, self._timeout)
        text = raw.decode("utf-8", "replace")
        return status, _try_json(text)

    async def chat(
        self,
        *,
        namespace: str,
        service: str,
        port: int,
        model: str,
        prompt: str,
        max_tokens: int,
        loading_grace: float = 30.0,
        on_wait: Any = None,
    ) -> InferenceResult:
        """Send the completion; wait out a loading model for up to ``loading_grace`` seconds.

        Raises :class:`InvalidCompletion` listing every schema error, or the
        HTTP error the model (or the proxy in front of it) answered with.
        """
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
        target = self._target(namespace, service, port)

        async def once() -> tuple[int, _Answer]:
            started = time.monotonic()
            status, answer = await self._post_once(target, body)
            return status, _Answer(status, body=answer, total_s=time.monotonic() - started)

        answer, attempts = await _until_served(once, target, loading_grace, on_wait)
        expect = Expectations(model=model, max_tokens=max_tokens)
        return self._judge(answer, attempts, expect, f"POST {target}")

    async def complete(
        self,
        *,
        namespace: str,
        service: str,
        port: int,
        model: str,
        prompt: str,
        max_tokens: int,
        loading_grace: float = 30.0,
        on_wait: Callable[[str], None] | None = None,
        temperature: float | None = None,
        expect_pattern: re.Pattern[str] | None = None,
    ) -> InferenceResult:
        """ONE streamed completion: time to first token, latency, speed and every check.

        The answer is asked for as a stream (with the usage in its last chunk), so the
        same request that is judged is the one that is timed; a server that answers
        with a whole JSON completion instead is judged the same way, untimed to its
        first token. A loading model is waited out for up to ``loading_grace`` seconds
        (503 and friends, before the stream begins). Raises :class:`InvalidCompletion`
        naming every failed check, or the HTTP error the model (or its proxy) answered.
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if temperature is not None:
            body["temperature"] = temperature
        target = self._target(namespace, service, port)

        async def once() -> tuple[int, _Answer]:
            answer = await self._send_streamed(target, body)
            if answer.status == 400 and _refuses_stream_options(body, answer.body):
                # A server from before stream_options: ask again without it (the usage
                # is then judged only if it sends one anyway).
                if on_wait:
                    on_wait(f"the model refused stream_options ({_message(answer.body, '')})")
                del body["stream_options"]
                answer = await self._send_streamed(target, body)
            return answer.status, answer

        answer, attempts = await _until_served(once, target, loading_grace, on_wait)
        expect = Expectations(model=model, max_tokens=max_tokens, pattern=expect_pattern)
        return self._judge(answer, attempts, expect, f"POST {target}")

    def _target(self, namespace: str, service: str, port: int) -> str:
        """A path under the API server for the service proxy, else the whole URL."""
        if self.route.kind == "service-proxy":
            assert self._kube is not None
            return self._kube.service_proxy_path(namespace, service, port, "v1/chat/completions")
        return self.describe(namespace, service, port)

    def _judge(
        self, answer: _Answer, attempts: int, expect: Expectations, route: str
    ) -> InferenceResult:
        found: list[Violation] = []
        body = answer.body
        if answer.chunks is not None:
            assembled = assemble_stream(answer.chunks)
            body, found = assembled.body, assembled.violations
        found += completion_violations(body, expect)
        if found:
            what = "streamed answer" if answer.chunks is not None else "answer"
            raise InvalidCompletion(
                f"the model's {what} failed {len({v.check for v in found})} check(s)",
                violations=found,
                route=route,
            )
        return InferenceResult(
            ChatCompletionResponse.model_validate(body),
            answer.total_s,
            attempts,
            self.route.kind,
            ttft_s=answer.ttft_s,
            content_chunks=answer.content_chunks,
        )

    async def _send_streamed(self, target: str, body: dict[str, Any]) -> _Answer:
        """Send one request that asks for a stream; read what comes, within the timeout.

        Only a 200 ``text/event-stream`` is read as a stream; anything else (an error, or
        a server that answers a whole completion) is read whole. A stream's answer is
        whole at ``[DONE]``; what follows, up to the body's end, is then read too
        (:func:`_read_to_end`), so that the connection is let go whole, not cut.
        """
        self.requests_sent += 1
        route = f"POST {target}"
        seen = _Seen()
        started = time.monotonic()
        async with AsyncExitStack() as held:
            answer: _Answer | None = None
            rest: AsyncIterator[bytes] | None = None
            with anyio.move_on_after(bounded(self._timeout)):
                try:
                    status, content_type, rest = await self._open_stream(held, target, body)
                    answer = await _read_answer(status, content_type, rest, seen, route, started)
                except ClientError:
                    raise
                except httpx.TimeoutException:
                    pass
                except Exception as exc:  # the boundary: nothing but a ClientError leaves
                    raise _failed(route, target, exc) from None
            if answer is None:
                raise _no_whole_answer(route, started, seen.status, seen.received, seen.chunks)
            if answer.chunks is not None and rest is not None:
                await _read_to_end(rest)
            return answer

    async def _open_stream(
        self, held: AsyncExitStack, target: str, body: dict[str, Any]
    ) -> tuple[int, str, AsyncIterator[bytes]]:
        """Send the request: the answer's status, content type and body, released with
        ``held``."""
        accept = "text/event-stream, application/json"
        if self.route.kind == "service-proxy":
            assert self._kube is not None
            response = await self._kube.open(
                "POST", target, body=body, timeout=self._timeout, accept=accept, chunked=True
            )
            held.callback(response.release)
            content = response.content.iter_any()
            return response.status, response.headers.get("Content-Type", ""), content
        resp = await held.enter_async_context(
            self._http.stream("POST", target, json=body, headers={"Accept": accept})
        )
        return resp.status_code, resp.headers.get("Content-Type", ""), resp.aiter_bytes()


#: After ``[DONE]``, how long and how many more bytes are read, at most, to reach the end
#: of the body. A server ends it at once (the last chunk of a chunked body). A connection
#: read to its end is kept for the next request; one let go before it is closed under
#: the server's last write, which fails, and a proxy on the way aborts the request and
#: drops its own connection to the server. A peer that sends on, or never ends its body,
#: is cut off at these bounds.
DRAIN_SECONDS = 2.0
DRAIN_BYTES = 64 * 1024


async def _read_to_end(rest: AsyncIterator[bytes]) -> None:
    """Read what follows a stream's ``[DONE]`` to the body's end, within
    :data:`DRAIN_SECONDS` (a margin before the caller's deadline) and :data:`DRAIN_BYTES`.

    The answer is whole already: whatever the peer does now (sends on, stalls, breaks the
    connection) only decides whether the connection is kept or closed.
    """
    left = DRAIN_BYTES
    with anyio.move_on_after(bounded(DRAIN_SECONDS)):
        try:
            async for piece in rest:
                left -= len(piece)
                if left < 0:
                    return
        except Exception:  # a connection broken after the answer: closed, nothing to report
            return


#: More chunks than any sane answer to a bounded ``max_tokens`` has: a peer that streams
#: without end is stopped here rather than by memory.
MAX_CHUNKS = 20_000
#: The largest answer taken from the model, decoded (a whole completion, or a stream
#: with all it carries besides its chunks): far above a completion of any length this
#: tool asks for, and a bound on what an endless body, or a few bytes of gzip standing
#: for gigabytes (the transport decodes them a piece at a time), can make us hold.
MAX_ANSWER = 64 * 1024 * 1024


def _too_large(route: str) -> InvalidCompletion:
    return InvalidCompletion(
        f"{route}: the answer did not end", [f"more than {MAX_ANSWER} bytes"], route=route
    )


@dataclass
class _Answer:
    """What one request brought: the status and a whole body, or a stream's chunks."""

    status: int
    body: Any = None
    chunks: list[dict[str, Any]] | None = None
    ttft_s: float | None = None
    total_s: float = 0.0
    content_chunks: int = 0


async def _read_answer(
    status: int,
    content_type: str,
    data: AsyncIterator[bytes],
    seen: _Seen,
    route: str,
    started: float,
) -> _Answer:
    seen.status = status
    if status == 200 and content_type.startswith("text/event-stream"):
        return await _collect(_sse_chunks(data, seen, route), started, route)
    async for piece in data:
        seen.received += piece
        if len(seen.received) > MAX_ANSWER:
            raise _too_large(route)
    body = _try_json(bytes(seen.received).decode("utf-8", "replace"))
    return _Answer(status, body=body, total_s=time.monotonic() - started)


async def _collect(chunks: AsyncIterator[dict[str, Any]], started: float, route: str) -> _Answer:
    """Keep a stream's chunks, noting when the first content arrived."""
    answer = _Answer(200, chunks=[])
    assert answer.chunks is not None
    async for chunk in chunks:
        answer.chunks.append(chunk)
        if len(answer.chunks) > MAX_CHUNKS:
            raise InvalidCompletion(
                f"{route}: the stream did not end", [f"more than {MAX_CHUNKS} chunks"], route=route
            )
        if _has_content(chunk):
            answer.content_chunks += 1
            if answer.ttft_s is None:
                answer.ttft_s = time.monotonic() - started
    answer.total_s = time.monotonic() - started
    return answer


def _refuses_stream_options(body: dict[str, Any], answer: Any) -> bool:
    return "stream_options" in body and "stream_options" in _message(answer, "")


def _has_content(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices")
    return isinstance(choices, list) and any(
        isinstance(c, dict) and isinstance(c.get("delta"), dict) and bool(c["delta"].get("content"))
        for c in choices
    )


async def _until_served(
    send: Callable[[], Awaitable[tuple[int, _Answer]]],
    target: str,
    loading_grace: float,
    on_wait: Callable[[str], None] | None,
) -> tuple[_Answer, int]:
    """Send until the model answers 200, waiting out a loading model (or an unreachable
    one) for up to ``loading_grace`` seconds; the answer and how many attempts it took."""
    give_up_at = time.monotonic() + loading_grace
    attempts = 0
    delay = 0.25
    while True:
        attempts += 1
        failure: TransportError | None = None
        try:
            status, answer = await send()
        except TransportError as exc:
            status, answer, failure = 0, None, exc
        if answer is not None and status == 200:
            return answer, attempts
        loading = failure is not None or status in LOADING_STATUSES
        if not loading or time.monotonic() + delay > give_up_at:
            if failure is not None:
                raise failure
            body = answer.body if answer is not None else None
            raise status_error(
                status, _message(body, f"HTTP {status}"), method="POST", path=target, body=body
            )
        if on_wait:
            why = (
                str(failure)
                if failure
                else f"HTTP {status}: {_message(answer and answer.body, '')}"
            )
            on_wait(f"model not ready ({why}); retrying in {delay:.2f} s")
        await anyio.sleep(delay)
        delay = min(delay * 2, 2.0)


@dataclass
class _Seen:
    """What a stream has brought so far: for the error that says how far it got."""

    status: int | None = None
    received: bytearray = field(default_factory=bytearray)
    chunks: int = 0


def parse_sse_data(data: str, route: str = "the model's stream") -> dict[str, Any] | None:
    """One ``data:`` payload of a streamed completion: the chunk, or None for ``[DONE]``.

    The one place the stream's bytes are judged: a payload that is not a JSON object, or
    whose ``choices`` are not a list of objects with an object ``delta`` and a string (or
    null) ``content``, raises :class:`InvalidCompletion`.
    """
    if data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidCompletion(
            f"{route}: the stream is not valid server-sent JSON",
            [f"(chunk): {excerpt(data, 200)}"],
            route=route,
        ) from None
    problem = _chunk_problem(chunk)
    if problem is not None:
        raise InvalidCompletion(
            f"{route}: a stream chunk of the wrong shape",
            [problem],
            route=route,
            excerpt=excerpt(data, 200),
        )
    return chunk  # type: ignore[no-any-return]


def _chunk_problem(chunk: Any) -> str | None:
    if not isinstance(chunk, dict):
        return f"(chunk): expected an object, got {type(chunk).__name__}"
    choices = chunk.get("choices")
    if choices is None:
        return None  # a usage-only chunk, or a keep-alive
    if not isinstance(choices, list):
        return f"choices: expected a list, got {type(choices).__name__}"
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            return f"choices.{i}: expected an object, got {type(choice).__name__}"
        delta = choice.get("delta")
        if delta is None:
            continue
        if not isinstance(delta, dict):
            return f"choices.{i}.delta: expected an object, got {type(delta).__name__}"
        if not isinstance(delta.get("content"), str | None):
            return f"choices.{i}.delta.content: expected a string"
    return None


async def _sse_chunks(
    data: AsyncIterator[bytes], seen: _Seen, route: str
) -> AsyncIterator[dict[str, Any]]:
    """The stream's chunks, from raw bytes, until ``[DONE]`` or the end of the body.

    The line begun grows in place and only a read with a newline is split: a peer that
    trickles a line in single bytes must not make each read copy, and split again, the
    whole line so far (quadratic in its pieces: minutes of a core on a line of a MiB).
    """
    pending = bytearray()
    async for piece in data:
        seen.received += piece
        if len(seen.received) > MAX_ANSWER:
            raise _too_large(route)
        if b"\n" not in piece:
            pending += piece
            if len(pending) > MAX_SSE_LINE:
                raise _sse_line_too_long(route, pending)
            continue
        if pending:
            pending += piece
            piece = bytes(pending)
        *lines, rest = piece.split(b"\n")
        pending = bytearray(rest)
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            seen.chunks += 1
            chunk = parse_sse_data(line[5:].strip(), route)
            if chunk is None:
                return
            yield chunk
        if len(pending) > MAX_SSE_LINE:
            raise _sse_line_too_long(route, pending)
    line = pending.decode("utf-8", "replace").strip()
    if line.startswith("data:"):
        chunk = parse_sse_data(line[5:].strip(), route)
        if chunk is not None:
            yield chunk


#: The longest line of an event stream taken.
MAX_SSE_LINE = 1024 * 1024


def _sse_line_too_long(route: str, pending: bytearray) -> InvalidCompletion:
    return InvalidCompletion(
        f"{route}: a stream line longer than 1 MiB", [f"(line): {excerpt(bytes(pending[:200]))}"]
    )


def _try_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


async def _post_whole(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], timeout: float
) -> tuple[int, bytes]:
    """POST and read the whole answer within ``timeout`` (and the caller's deadline)."""
    total = bounded(timeout)
    started = time.monotonic()
    received = bytearray()
    status: int | None = None
    with anyio.move_on_after(total):
        try:
            async with http.stream("POST", url, json=body) as resp:
                status = resp.status_code
                async for chunk in resp.aiter_bytes():
                    received += chunk
                    if len(received) > MAX_ANSWER:
                        raise _too_large(f"POST {url}")
            return status, bytes(received)
        except ClientError:
            raise
        except httpx.TimeoutException:
            pass
        except Exception as exc:  # the boundary: nothing but a ClientError leaves a client
            raise _failed(f"POST {url}", url, exc) from None
    raise _no_whole_answer(f"POST {url}", started, status, received)


def _failed(route: str, url: str, exc: Exception) -> ClientError:
    """The error of a request whose transport failed: a peer past one of the transport's
    bounds (endless interim answers or framing, a stack of codings) is its protocol, a
    :class:`LimitExceeded` that no loading model's grace waits out, since another try
    would meet it again. A body its Content-Encoding does not decode is broken bytes, a
    :class:`ProtocolError`, which that grace does not wait out either (a loading model
    answers 503, or not at all; not the same undecodable bytes, one try after another);
    anything else a :class:`TransportError`."""
    cause = exc.__cause__
    if isinstance(cause, InterimFlood | AnswerTooLarge):
        return LimitExceeded(f"{route}: {cause}", route=route)
    if isinstance(exc, httpx.DecodingError):
        return ProtocolError(
            f"{route}: the body does not decode as its Content-Encoding says "
            f"({clip(str(exc), 200)})",
            route=route,
        )
    return TransportError(
        f"{route}: {type(exc).__name__}: {clip(str(exc), 200)}", method="POST", url=url
    )


def _no_whole_answer(
    route: str, started: float, status: int | None, received: bytearray, chunks: int | None = None
) -> RequestTimeout:
    method, _, url = route.partition(" ")
    elapsed = time.monotonic() - started
    return no_whole_answer(method, url, elapsed, status, received, chunks=chunks, quote_last=400)


def _message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(message := err.get("message"), str):
            return message
        if isinstance(err, str):
            return err
        if isinstance(message := body.get("message"), str):
            return message
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return fallback


__all__ = [
    "InferenceClient",
    "InferenceRoute",
    "InferenceResult",
    "InvalidCompletion",
    "ChatCompletionResponse",
    "Expectations",
    "Violation",
    "validate_completion",
    "parse_sse_data",
    "ClientError",
    "HTTPStatusError",
]
