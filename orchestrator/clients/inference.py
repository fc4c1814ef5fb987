"""Talking to the served model: the OpenAI chat-completion call and its schema.

KubeFoundry has no inference proxy, so the model is reached one of three ways
(``InferenceRoute``): through the Kubernetes API server's service proxy (the
default: it needs nothing but the kubeconfig the run already has), through a
base URL the user gives (a port-forward or an ingress), or through the plan's
backend proxy path, for a backend that grows one.

A model's words are not stable, so the answer is judged by its shape only, and
every schema error is reported at once: a broken server usually breaks more
than one field, and a report that names them all saves a round trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import (
    ClientError,
    HTTPStatusError,
    RequestTimeout,
    ResponseFormatError,
    TransportError,
    clip,
    excerpt,
    status_error,
)
from ._retry import bounded
from ._tls import default_context
from .kube import KubeClient

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Shape):
    role: Literal["assistant"]
    content: str


class Choice(_Shape):
    index: int
    message: ChatMessage
    finish_reason: str | None


class Usage(_Shape):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class ChatCompletionResponse(_Shape):
    """The plan's ``ChatCompletionResponse``: what an OpenAI-compatible server must answer."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice] = Field(min_length=1)
    usage: Usage | None = None


def validate_completion(body: Any) -> tuple[ChatCompletionResponse | None, list[str]]:
    """Check ``body`` against the schema; return the parsed answer and *every* error found."""
    errors: list[str] = []
    parsed: ChatCompletionResponse | None = None
    if not isinstance(body, dict):
        return None, [f"(body): expected a JSON object, got {type(body).__name__}"]
    try:
        parsed = ChatCompletionResponse.model_validate(body)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(body)"
            errors.append(f"{loc}: {err['msg']}")
    # Semantic checks run on the raw body too, so they add to the structural errors
    # instead of hiding behind them.
    choices = body.get("choices")
    if isinstance(choices, list):
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            msg = choice.get("message")
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str) and not content.strip():
                errors.append(f"choices.{i}.message.content: must not be empty")
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason not in FINISH_REASONS:
                errors.append(
                    f"choices.{i}.finish_reason: unknown value {reason!r} "
                    f"(expected one of {', '.join(sorted(FINISH_REASONS))})"
                )
            elif reason is None and "finish_reason" in choice:
                errors.append(f"choices.{i}.finish_reason: must be set on a finished completion")
    usage = body.get("usage")
    if isinstance(usage, dict):
        p, c, t = (usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
        if all(isinstance(x, int) for x in (p, c, t)) and p + c != t:  # type: ignore[operator]
            errors.append(
                f"usage.total_tokens: {t} is not prompt_tokens + completion_tokens ({p} + {c})"
            )
        if isinstance(c, int) and c == 0 and isinstance(choices, list) and choices:
            errors.append("usage.completion_tokens: 0 for a non-empty answer")
    return (parsed if not errors else None), errors


class InvalidCompletion(ResponseFormatError):
    """The model answered, but not with a valid chat completion."""


@dataclass(frozen=True)
class InferenceRoute:
    """How to reach the model: ``service-proxy``, ``url`` (with ``base_url``) or ``backend-proxy``."""

    kind: Literal["service-proxy", "url", "backend-proxy"]
    base_url: str | None = None


@dataclass
class InferenceResult:
    response: ChatCompletionResponse
    latency_s: float
    attempts: int
    route: str

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
    ) -> None:
        self.route = route
        self._kube = kube
        self._backend_url = (backend_url or "").rstrip("/")
        headers = (
            {"Authorization": f"Bearer {token}"} if token and route.kind == "backend-proxy" else {}
        )
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout, connect=5.0),
            headers=headers,
            verify=default_context(),
        )
        self._timeout = request_timeout
        self.requests_sent = 0

    async def aclose(self) -> None:
        await self._http.aclose()

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
                "POST", url_or_path, body=body, timeout=self._timeout
            )
        else:
            status, raw = await _post_whole(self._http, url_or_path, body, self._timeout)
        text = raw.decode("utf-8", "replace")
        return status, _try_json(text)

    async def stream(
        self, *, namespace: str, service: str, port: int, model: str, prompt: str, max_tokens: int
    ) -> StreamTiming:
        """Send the same completion streamed, to measure time to first token.

        The whole stream is bounded by the request timeout (and the caller's deadline):
        a stream that never ends fails naming the route and what had arrived.
        """
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": True,
        }
        self.requests_sent += 1
        if self.route.kind == "service-proxy":
            assert self._kube is not None
            path = self._kube.service_proxy_path(namespace, service, port, "v1/chat/completions")
            route = f"POST {path}"
        else:
            path = self.describe(namespace, service, port)
            route = f"POST {path}"
        seen = _Seen()
        started = time.monotonic()
        with anyio.move_on_after(bounded(self._timeout)):
            try:
                if self.route.kind == "service-proxy":
                    assert self._kube is not None
                    return await _stream_via_kube(self._kube, path, body, self._timeout, seen)
                async with self._http.stream(
                    "POST", path, json=body, headers={"Accept": "text/event-stream"}
                ) as resp:
                    seen.status = resp.status_code
                    if resp.status_code != 200:
                        text = (await resp.aread()).decode("utf-8", "replace")
                        raise status_error(
                            resp.status_code,
                            clip(_message(_try_json(text), f"HTTP {resp.status_code}"), 300),
                            method="POST",
                            path=path,
                        )
                    return await _measure(_sse_chunks(resp.aiter_bytes(), seen, route), started)
            except ClientError:
                raise
            except httpx.TimeoutException:
                pass
            except Exception as exc:  # the boundary: nothing but a ClientError leaves a client
                raise TransportError(
                    f"{route}: {type(exc).__name__}: {clip(str(exc), 200)}",
                    method="POST",
                    url=path,
                ) from None
        raise _no_whole_answer(route, started, seen.status, seen.received, seen.chunks)

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
        if self.route.kind == "service-proxy":
            assert self._kube is not None
            target = self._kube.service_proxy_path(namespace, service, port, "v1/chat/completions")
        else:
            target = self.describe(namespace, service, port)
        give_up_at = time.monotonic() + loading_grace
        failure: TransportError | None
        attempts = 0
        delay = 0.25
        while True:
            attempts += 1
            started = time.monotonic()
            try:
                status, answer = await self._post_once(target, body)
            except TransportError as exc:
                status, answer, failure = None, None, exc
            else:
                failure = None
            latency = time.monotonic() - started
            if status == 200:
                parsed, errors = validate_completion(answer)
                if errors or parsed is None:
                    raise InvalidCompletion(
                        "the model's answer is not a valid chat completion", errors
                    )
                return InferenceResult(parsed, latency, attempts, self.route.kind)
            loading = failure is not None or status in LOADING_STATUSES
            if not loading or time.monotonic() + delay > give_up_at:
                if failure is not None:
                    raise failure
                message = _message(answer, f"HTTP {status}")
                raise status_error(
                    int(status or 0), message, method="POST", path=target, body=answer
                )
            if on_wait:
                why = str(failure) if failure else f"HTTP {status}: {_message(answer, '')}"
                on_wait(f"model not ready ({why}); retrying in {delay:.2f} s")
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass
class StreamTiming:
    """A streamed completion, measured: when the first token came, and how fast the rest did."""

    ttft_s: float
    total_s: float
    chunks: int
    content_chunks: int

    @property
    def tokens_per_second(self) -> float | None:
        """Content chunks per second after the first: llama.cpp and vLLM send one token per chunk."""
        rest = self.total_s - self.ttft_s
        return (self.content_chunks - 1) / rest if self.content_chunks > 1 and rest > 0 else None


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
    """The stream's chunks, from raw bytes, until ``[DONE]`` or the end of the body."""
    pending = b""
    async for piece in data:
        seen.received += piece
        pending += piece
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            seen.chunks += 1
            chunk = parse_sse_data(line[5:].strip(), route)
            if chunk is None:
                return
            yield chunk
        if len(pending) > 1024 * 1024:
            raise InvalidCompletion(
                f"{route}: a stream line longer than 1 MiB", [f"(line): {excerpt(pending[:200])}"]
            )
    line = pending.decode("utf-8", "replace").strip()
    if line.startswith("data:"):
        chunk = parse_sse_data(line[5:].strip(), route)
        if chunk is not None:
            yield chunk


async def _measure(chunks: AsyncIterator[dict[str, Any]], started: float) -> StreamTiming:
    first: float | None = None
    count = content = 0
    async for chunk in chunks:
        count += 1
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content += 1
                if first is None:
                    first = time.monotonic() - started
    total = time.monotonic() - started
    if first is None:
        raise InvalidCompletion(
            "the model's stream carried no content", [f"{count} chunks, no content delta"]
        )
    return StreamTiming(first, total, count, content)


async def _stream_via_kube(
    kube: KubeClient, path: str, body: dict[str, Any], timeout: float, seen: _Seen
) -> StreamTiming:
    started = time.monotonic()
    response = await kube.open(
        "POST", path, body=body, timeout=timeout, accept="text/event-stream, application/json"
    )
    try:
        seen.status = response.status
        if response.status != 200:
            text = (await response.read()).decode("utf-8", "replace")
            raise status_error(
                response.status,
                clip(_message(_try_json(text), f"HTTP {response.status}"), 300),
                method="POST",
                path=path,
            )
        return await _measure(
            _sse_chunks(response.content.iter_any(), seen, f"POST {path}"), started
        )
    finally:
        response.release()


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
            return status, bytes(received)
        except httpx.TimeoutException:
            pass
        except Exception as exc:  # the boundary: nothing but a ClientError leaves a client
            raise TransportError(
                f"POST {url}: {type(exc).__name__}: {clip(str(exc), 200)}", method="POST", url=url
            ) from None
    raise _no_whole_answer(f"POST {url}", started, status, received)


def _no_whole_answer(
    route: str, started: float, status: int | None, received: bytearray, chunks: int | None = None
) -> RequestTimeout:
    elapsed = time.monotonic() - started
    what = (
        "no answer"
        if status is None
        else f"answered {status}, {len(received)} bytes of the body arrived"
        + (f" in {chunks} chunks" if chunks is not None else "")
        + (f" ({excerpt(bytes(received[-400:]))})" if received else "")
    )
    method, _, url = route.partition(" ")
    return RequestTimeout(
        f"{route}: no whole answer within {elapsed:.1f} s: {what}",
        method=method,
        url=url,
        elapsed=elapsed,
        received=len(received),
    )


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
    "validate_completion",
    "parse_sse_data",
    "StreamTiming",
    "ClientError",
    "HTTPStatusError",
]
