"""The quality gate beyond the schema: each broken promise is caught and named by its check.

A schema-valid answer can still come from a broken deployment; each test here breaks one
promise in an otherwise good answer and expects exactly that check to fail, and the good
answer (whatever its words) to pass them all.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.clients._completion import (
    EMPTY,
    EXPECTATION,
    FINISH,
    MODEL,
    SCHEMA,
    TEMPLATE,
    TEMPLATE_TOKENS,
    USAGE,
    Expectations,
    assemble_stream,
    completion_violations,
    template_leaks,
)

MODEL_NAME = "llama-3.2-1b-instruct"
EXPECT = Expectations(model=MODEL_NAME, max_tokens=50)
GOOD: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": MODEL_NAME,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, friend."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}


def _checks(body: Any, expect: Expectations = EXPECT) -> list[str]:
    return [v.check for v in completion_violations(body, expect)]


def _with(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(GOOD)
    choice = body["choices"][0]
    for key, value in changes.items():
        if key == "content":
            choice["message"]["content"] = value
        elif key == "finish_reason":
            choice["finish_reason"] = value
        elif key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            body["usage"][key] = value
        else:
            body[key] = value
    return body


def test_a_good_answer_passes_every_check() -> None:
    assert completion_violations(GOOD, EXPECT) == []


@pytest.mark.parametrize("content", ["", "   ", "\n\t \n"])
def test_content_that_is_empty_after_trimming_fails_empty_content(content: str) -> None:
    assert _checks(_with(content=content)) == [EMPTY]


@pytest.mark.parametrize(
    "family, token", [(f, t) for f, tokens in TEMPLATE_TOKENS.items() for t in tokens]
)
def test_every_leaked_template_token_is_named_with_its_family(family: str, token: str) -> None:
    found = completion_violations(_with(content=f"Hello there.{token}\nuser\nmore"), EXPECT)
    assert [v.check for v in found] == [TEMPLATE]
    assert repr(token) in found[0].detail and family in found[0].detail


def test_the_chatml_echo_a_wrong_template_gives_is_caught() -> None:
    echo = "Say hello in exactly 3 words.<|im_end|>\n<|im_start|>assistant\nHello"
    [violation] = completion_violations(_with(content=echo), EXPECT)
    assert violation.check == TEMPLATE
    assert violation.where == "choices.0.message.content"
    assert "'<|im_end|>' (ChatML)" in violation.detail and "'<|im_start|>'" in violation.detail


@pytest.mark.parametrize(
    "text",
    [
        "Use <s>strike</s>-free text",  # "</s>" is Mistral's end of sequence: reported
    ],
)
def test_an_end_of_sequence_token_is_reported(text: str) -> None:
    assert template_leaks(text) == [("Mistral/Llama 2", "</s>")]


@pytest.mark.parametrize(
    "text", ["Hello <b>there</b>", "a <| b |> c", "[INSTRUCTIONS] below", "bos eos end of turn"]
)
def test_ordinary_markup_is_not_a_template_token(text: str) -> None:
    assert template_leaks(text) == []


@pytest.mark.parametrize(
    "changes, needle",
    [
        (
            {"finish_reason": "length", "completion_tokens": 5, "total_tokens": 17},
            "'length' after 5",
        ),
        ({"completion_tokens": 60, "total_tokens": 72}, "more than max_tokens 50"),
        ({"finish_reason": "banana"}, "unknown value 'banana'"),
        ({"finish_reason": None}, "must be set"),
    ],
)
def test_finish_reason_consistent_with_max_tokens_and_usage(
    changes: dict[str, Any], needle: str
) -> None:
    found = completion_violations(_with(**changes), EXPECT)
    assert [v.check for v in found] == [FINISH], found
    assert needle in found[0].detail


def test_length_at_exactly_max_tokens_is_consistent() -> None:
    body = _with(finish_reason="length", completion_tokens=50, total_tokens=62)
    assert completion_violations(body, EXPECT) == []


def test_finish_reason_is_not_judged_against_a_limit_nobody_gave() -> None:
    body = _with(finish_reason="length", completion_tokens=5, total_tokens=17)
    assert completion_violations(body, Expectations(model=MODEL_NAME)) == []


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"total_tokens": 99}, "99 is not prompt_tokens + completion_tokens (12 + 5)"),
        ({"prompt_tokens": 0, "total_tokens": 5}, "0 for a non-empty prompt"),
    ],
)
def test_usage_arithmetic(changes: dict[str, Any], needle: str) -> None:
    found = completion_violations(_with(**changes), EXPECT)
    assert [v.check for v in found] == [USAGE]
    assert needle in found[0].detail


def test_usage_is_checked_only_where_given() -> None:
    body = copy.deepcopy(GOOD)
    del body["usage"]
    assert completion_violations(body, EXPECT) == []


def test_an_answer_from_another_model_fails_model_name() -> None:
    [violation] = completion_violations(_with(model="qwen2-0.5b"), EXPECT)
    assert violation.check == MODEL
    assert "'qwen2-0.5b'" in violation.detail and repr(MODEL_NAME) in violation.detail


def test_the_expectation_is_off_unless_a_pattern_is_given() -> None:
    assert completion_violations(_with(content="Bonjour"), EXPECT) == []
    expect = Expectations(MODEL_NAME, 50, re.compile(r"(?i)\bparis\b"))
    assert completion_violations(_with(content="It is Paris."), expect) == []
    [violation] = completion_violations(_with(content="Bonjour"), expect)
    assert violation.check == EXPECTATION and "/(?i)\\bparis\\b/" in violation.detail


def test_every_broken_promise_is_reported_at_once() -> None:
    body = _with(
        content="<|eot_id|>",
        finish_reason="length",
        model="other",
        completion_tokens=3,
        total_tokens=1,
    )
    assert sorted(_checks(body)) == sorted([TEMPLATE, FINISH, USAGE, MODEL])


def test_violations_read_check_where_what() -> None:
    [violation] = completion_violations(_with(content=" "), EXPECT)
    assert str(violation) == (
        "empty-content: choices.0.message.content: must not be empty (after trimming whitespace)"
    )


# ---------------------------------------------------------------------------- streams


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL_NAME,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    chunk.update(extra)
    return chunk


STREAM = [
    _chunk({"role": "assistant", "content": None}),
    _chunk({"content": "Hello"}),
    _chunk({"content": " there"}),
    _chunk({}, "stop"),
    _chunk(usage={"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}),
]


def test_a_stream_is_assembled_into_the_completion_it_stands_for() -> None:
    assembled = assemble_stream(STREAM)
    assert assembled.violations == []
    body = assembled.body
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 2 and body["model"] == MODEL_NAME
    assert completion_violations(body, EXPECT) == []


def test_a_stream_with_broken_chunks_names_them() -> None:
    broken = [*STREAM[:2], {**_chunk({"content": "x"}), "object": "chat.completion"}, STREAM[3]]
    assembled = assemble_stream(broken)
    assert [(v.check, v.where) for v in assembled.violations] == [(SCHEMA, "chunk 2: object")]


def test_a_stream_whose_chunks_name_two_models_is_a_mix_up() -> None:
    mixed = [*STREAM[:2], {**_chunk({"content": "x"}), "model": "other"}, STREAM[3]]
    assert [v.check for v in assemble_stream(mixed).violations] == [MODEL]


def test_a_stream_without_content_is_empty() -> None:
    body = assemble_stream([STREAM[0], STREAM[3]]).body
    assert _checks(body) == [EMPTY]


def test_a_stream_without_a_finish_reason_fails_finish_reason() -> None:
    body = assemble_stream(STREAM[:3]).body
    assert _checks(body) == [FINISH]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(list(_chunk({}))), json_values), max_size=6))
def test_any_stream_of_objects_assembles_and_is_judged_without_raising(chunks: list[dict]) -> None:
    assembled = assemble_stream(chunks)
    completion_violations(assembled.body, EXPECT)
