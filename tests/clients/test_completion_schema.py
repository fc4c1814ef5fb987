"""The chat-completion schema: every error is listed, and a valid answer passes whatever its words.

Each error names its check first (``schema``, ``empty-content``, ``finish-reason``,
``usage``...), so a failure says which promise the answer broke.
"""

import copy

import pytest

from orchestrator.clients import validate_completion

VALID = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "llama-3.2-1b-instruct",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, friend."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}


def test_valid_answer_passes() -> None:
    parsed, errors = validate_completion(VALID)
    assert errors == []
    assert parsed is not None and parsed.choices[0].message.content == "Hello there, friend."


def test_usage_is_optional_and_extra_fields_are_kept() -> None:
    body = copy.deepcopy(VALID)
    del body["usage"]
    body["timings"] = {"predicted_ms": 3.0}
    parsed, errors = validate_completion(body)
    assert errors == [] and parsed is not None and parsed.usage is None


def test_every_error_is_reported_not_just_the_first() -> None:
    body = {
        "id": "x",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "user", "content": "   "}, "finish_reason": "banana"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 9},
    }
    parsed, errors = validate_completion(body)
    assert parsed is None
    text = "\n".join(errors)
    assert "object:" in text
    assert "choices.0.message.role" in text
    assert "choices.0.message.content: must not be empty" in text
    assert "choices.0.finish_reason: unknown value 'banana'" in text
    assert "usage.total_tokens: 9 is not prompt_tokens + completion_tokens (3 + 2)" in text
    assert len(errors) >= 5


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda b: b.update(choices=[]), "choices: List should have at least 1 item"),
        (lambda b: b.pop("choices"), "choices: Field required"),
        (lambda b: b["choices"][0]["message"].update(content=None), "choices.0.message.content"),
        (lambda b: b["choices"][0].update(finish_reason=None), "finish_reason: must be set"),
        (lambda b: b["usage"].update(completion_tokens=-1), "usage.completion_tokens"),
    ],
)
def test_single_defects(mutate, needle: str) -> None:
    body = copy.deepcopy(VALID)
    mutate(body)
    parsed, errors = validate_completion(body)
    assert parsed is None
    assert any(needle in e for e in errors), errors


@pytest.mark.parametrize("body", ["not json at all", [], None, 42])
def test_not_an_object(body) -> None:
    parsed, errors = validate_completion(body)
    assert (
        parsed is None and errors and errors[0].startswith("schema: (body): expected a JSON object")
    )
