"""After a streamed answer's ``[DONE]``: the body is read to its end, within bounds.

The answer is whole at ``[DONE]``, but the body ends a little later (the last chunk of a
chunked body). A client that lets the connection go before then cuts it mid-answer: the
server's last write fails, a proxy on the way aborts, and the connection is not kept.
Each test holds both routes to it: ``url`` (httpx) and ``service-proxy`` (the Kubernetes
client's aiohttp response), with a body whose pieces the test hands out one read at a time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

import orchestrator.clients.inference as inference_module
from orchestrator.clients import InferenceClient, InferenceResult, InferenceRoute

pytestmark = pytest.mark.anyio

MODEL = "llama-3.2-1b-instruct"
ROUTES = ["url", "service-proxy"]


def answer() -> bytes:
    """A whole streamed answer, ``[DONE]`` included."""
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        },
    ]
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


class Body(httpx.AsyncByteStream):
    """The answer in one read, then what ``after`` yields, then the end of the body.

    Remembers whether the end had been read when the response was let go, and how many
    bytes after ``[DONE]`` were asked for.
    """

    def __init__(self, after: Callable[[], AsyncIterator[bytes]] | None = None) -> None:
        self.after = after
        self.ended = False
        self.ended_when_let_go: bool | None = None
        self.read_after_done = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield answer()
        if self.after is not None:
            async for piece in self.after():
                self.read_after_done += len(piece)
                yield piece
        self.ended = True

    async def aclose(self) -> None:
        self.let_go()

    def let_go(self) -> None:
        if self.ended_when_let_go is None:
            self.ended_when_let_go = self.ended


class _Content:
    def __init__(self, body: Body) -> None:
        self._body = body

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._body.__aiter__()


class _Response:
    """What ``KubeClient.open`` returns, as far as the inference client uses it."""

    status = 200
    headers = {"Content-Type": "text/event-stream"}

    def __init__(self, body: Body) -> None:
        self.content = _Content(body)
        self._body = body

    def release(self) -> None:
        self._body.let_go()


class _Kube:
    server = "https://kube.test"

    def __init__(self, body: Body) -> None:
        self.body = body
        self.sent: list[dict[str, Any]] = []

    def service_proxy_path(self, namespace: str, service: str, port: int, path: str) -> str:
        return f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{path}"

    async def open(self, method: str, path: str, **kwargs: Any) -> _Response:
        self.sent.append(kwargs)
        return _Response(self.body)

    async def exchange(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        """A whole (not streamed) completion, for :meth:`InferenceClient.chat`."""
        self.sent.append(kwargs)
        message = {"role": "assistant", "content": "Hi"}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        completion = {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
        return 200, {}, json.dumps(completion).encode()


async def complete(route: str, body: Body) -> tuple[InferenceResult, list[dict[str, Any]]]:
    """One streamed completion over ``route``, whose answer is ``body``; and what the
    Kubernetes client was asked to send (service-proxy only)."""
    kube = _Kube(body)
    if route == "service-proxy":
        client = InferenceClient(InferenceRoute("service-proxy"), kube=kube)  # type: ignore[arg-type]
    else:

        def model(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=body)

        client = InferenceClient(
            InferenceRoute("url", "http://model.test"), transport=httpx.MockTransport(model)
        )
    try:
        with anyio.fail_after(30):  # only a hang reaches this
            result = await client.complete(
                namespace="ns", service="svc", port=80, model=MODEL, prompt="hi", max_tokens=8
            )
    finally:
        await client.aclose()
    return result, kube.sent


@pytest.mark.parametrize("route", ROUTES)
async def test_after_done_the_body_is_read_to_its_end_before_it_is_let_go(route: str) -> None:
    body = Body()
    result, sent = await complete(route, body)
    assert result.content == "Hi" and result.attempts == 1
    assert body.ended_when_let_go is True


async def test_through_the_service_proxy_the_body_is_sent_chunked() -> None:
    # A Content-Length body lets the API server's proxy cut an answer that begins
    # quickly; the reason is in KubeClient.open, the proof against the real proxy in
    # test_inference_through_proxy.py. Streamed or not.
    _, sent = await complete("service-proxy", Body())
    kube = _Kube(Body())
    client = InferenceClient(InferenceRoute("service-proxy"), kube=kube)  # type: ignore[arg-type]
    try:
        result = await client.chat(
            namespace="ns", service="svc", port=80, model=MODEL, prompt="hi", max_tokens=8
        )
    finally:
        await client.aclose()
    assert result.content == "Hi"
    assert [kwargs.get("chunked") for kwargs in sent + kube.sent] == [True, True]


@pytest.mark.parametrize("route", ROUTES)
async def test_a_peer_that_sends_on_after_done_is_cut_off_with_the_answer_kept(
    route: str,
) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"data: more\n\n" * 100

    body = Body(endless)
    result, _ = await complete(route, body)
    assert result.content == "Hi"
    assert body.ended_when_let_go is False
    assert 0 < body.read_after_done <= inference_module.DRAIN_BYTES + 1200


@pytest.mark.parametrize("route", ROUTES)
async def test_a_body_that_never_ends_after_done_is_let_go_with_the_answer_kept(
    route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def silence() -> AsyncIterator[bytes]:
        await anyio.Event().wait()  # never set: the peer neither sends nor ends
        yield b""

    monkeypatch.setattr(inference_module, "DRAIN_SECONDS", 0.05)
    body = Body(silence)
    result, _ = await complete(route, body)
    assert result.content == "Hi"
    assert body.ended_when_let_go is False
