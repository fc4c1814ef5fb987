"""Inference once: one streamed request gives the timing and the verdict together.

The model is an httpx mock transport that counts requests, so each test can hold the
client to exactly one completion per answer (plus the retries a loading model needs).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from orchestrator.clients import (
    HTTPStatusError,
    InferenceClient,
    InferenceRoute,
    InvalidCompletion,
    ServerError,
)

pytestmark = pytest.mark.anyio

MODEL = "llama-3.2-1b-instruct"


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return {**body, **extra}


def stream_of(*words: str, model: str = MODEL, usage: bool = True) -> bytes:
    chunks = [chunk({"role": "assistant", "content": None}, model=model)]
    chunks += [chunk({"content": w}, model=model) for w in words]
    chunks.append(chunk({}, "stop", model=model))
    if usage:
        n = len(words)
        chunks.append(
            chunk(None, usage={"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n})
        )
    return sse(*chunks)


class Model:
    """Answers each request with the next of ``answers``; remembers what it was asked."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def streamed(body: bytes) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)


async def complete(model: Model, **kwargs: Any) -> Any:
    client = InferenceClient(
        InferenceRoute("url", "http://model.test"),
        request_timeout=5,
        transport=httpx.MockTransport(model),
    )
    try:
        args: dict[str, Any] = {
            "namespace": "ns",
            "service": "svc",
            "port": 80,
            "model": MODEL,
            "prompt": "Say hello.",
            "max_tokens": 16,
            "loading_grace": 5,
            **kwargs,
        }
        return await client.complete(**args)
    finally:
        await client.aclose()


async def test_one_streamed_request_gives_timing_usage_and_the_answer() -> None:
    model = Model(streamed(stream_of("Hello", " there", ",", " friend")))
    result = await complete(model)
    assert len(model.requests) == 1
    asked = model.requests[0]
    assert asked["stream"] is True and asked["stream_options"] == {"include_usage": True}
    assert "temperature" not in asked
    assert result.content == "Hello there, friend"
    assert result.streamed and result.ttft_s is not None
    assert 0 <= result.ttft_s <= result.latency_s
    assert (result.prompt_tokens, result.completion_tokens) == (9, 4)
    assert result.content_chunks == 4 and result.attempts == 1


def test_tokens_per_second_counts_the_tokens_after_the_first_over_the_time_after_it() -> None:
    from orchestrator.clients import InferenceResult
    from orchestrator.clients._completion import ChatCompletionResponse

    response = ChatCompletionResponse.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 11, "total_tokens": 14},
        }
    )
    streamed_result = InferenceResult(response, 1.5, 1, "url", ttft_s=0.5, content_chunks=11)
    assert streamed_result.tokens_per_second == pytest.approx(10.0)
    whole = InferenceResult(response, 2.0, 1, "url")
    assert whole.tokens_per_second == pytest.approx(5.5)


async def test_a_server_that_answers_a_whole_completion_is_judged_the_same_untimed() -> None:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi."},
                "finish_reason": "stop",
            }
        ],
    }
    model = Model(httpx.Response(200, json=body))
    result = await complete(model)
    assert len(model.requests) == 1
    assert result.content == "Hi." and not result.streamed and result.ttft_s is None


async def test_a_loading_model_is_waited_out_then_answered_once() -> None:
    loading = httpx.Response(503, json={"error": {"message": "Loading model", "code": 503}})
    model = Model(loading, loading, streamed(stream_of("Hi")))
    waits: list[str] = []
    result = await complete(model, on_wait=waits.append)
    assert result.attempts == 3 and len(model.requests) == 3
    assert len(waits) == 2 and "Loading model" in waits[0]


async def test_a_model_still_loading_after_the_grace_fails_with_its_answer() -> None:
    model = Model(httpx.Response(503, json={"error": {"message": "Loading model"}}))
    with pytest.raises(ServerError, match="Loading model"):
        await complete(model, loading_grace=0)


@pytest.mark.parametrize(
    "body, checks, needle",
    [
        (
            stream_of("Say hello.", "<|im_end|>", "\n<|im_start|>", "assistant"),
            ["template-tokens"],
            "'<|im_end|>' (ChatML)",
        ),
        (stream_of("", " "), ["empty-content"], "must not be empty"),
        (stream_of("Hi", model="gpt-4o"), ["model-name"], "answered as 'gpt-4o'"),
        (
            sse(chunk({"content": "Hi"}), chunk({}, "length")),
            [],
            "",
        ),
    ],
)
async def test_each_broken_promise_in_a_stream_fails_naming_its_check(
    body: bytes, checks: list[str], needle: str
) -> None:
    model = Model(streamed(body))
    if not checks:
        await complete(model)  # "length" with no usage cannot be judged: it passes
        return
    with pytest.raises(InvalidCompletion) as caught:
        await complete(model)
    assert caught.value.checks == checks
    assert needle in str(caught.value)
    assert len(model.requests) == 1


async def test_the_deterministic_prompt_asks_temperature_zero_and_meets_the_pattern() -> None:
    model = Model(streamed(stream_of("The capital is", " Paris", ".")))
    result = await complete(model, temperature=0, expect_pattern=re.compile(r"Paris"))
    assert model.requests[0]["temperature"] == 0 and result.content.endswith("Paris.")
    miss = Model(streamed(stream_of("Lyon")))
    with pytest.raises(InvalidCompletion) as caught:
        await complete(miss, temperature=0, expect_pattern=re.compile(r"Paris"))
    assert caught.value.checks == ["expectation"] and "does not match /Paris/" in str(caught.value)


async def test_a_server_that_refuses_stream_options_is_asked_again_without_them() -> None:
    refused = httpx.Response(
        400, json={"error": {"message": "Unrecognized request argument supplied: stream_options"}}
    )
    model = Model(refused, streamed(stream_of("Hi", usage=False)))
    waits: list[str] = []
    result = await complete(model, on_wait=waits.append)
    assert [("stream_options" in r) for r in model.requests] == [True, False]
    assert result.content == "Hi" and result.completion_tokens is None
    assert waits and "stream_options" in waits[0]


async def test_any_other_400_is_the_answer() -> None:
    model = Model(httpx.Response(400, json={"error": {"message": "max_tokens too large"}}))
    with pytest.raises(HTTPStatusError, match="max_tokens too large"):
        await complete(model)
    assert len(model.requests) == 1
