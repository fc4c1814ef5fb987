"""A chat completion judged: the OpenAI schema first, then the quality gate beyond it.

A schema-valid answer can still be a broken deployment: a chat template that does not
fit the model (the answer echoes the prompt and spells out ``<|im_end|>``), an empty
answer, a server that ignores ``max_tokens``, token counts that do not add up, or the
wrong model behind the name. Each is a named check, so a failure says *which* promise
the model broke, and every violation is reported at once: a broken server usually
breaks more than one, and a report that names them all saves a round trip.

The words themselves are never judged (a model's text is not stable), except by an
optional expectation the user sets: a regular expression that a deterministic answer
(temperature 0) must match.

A streamed answer is assembled into the completion it stands for, after its chunks
are checked for the chunk schema, and then judged by the same checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})

#: The checks, by the name a failure carries.
SCHEMA = "schema"
EMPTY = "empty-content"
TEMPLATE = "template-tokens"
FINISH = "finish-reason"
USAGE = "usage"
MODEL = "model-name"
EXPECTATION = "expectation"

#: Chat-template and special tokens that belong in a prompt or a vocabulary, never in an
#: answer: one showing up means the server's template does not fit the model (or it
#: renders special tokens as text). By family, so the report says which template leaked.
TEMPLATE_TOKENS: Mapping[str, tuple[str, ...]] = {
    "ChatML": ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
    "Llama 3": (
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end_of_text|>",
    ),
    "Gemma": ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>"),
    "Mistral/Llama 2": ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "</s>"),
    "Phi": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
}


@dataclass(frozen=True)
class Violation:
    """One broken promise: which check, where in the answer, and what is wrong."""

    check: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.where}: {self.detail}"


@dataclass(frozen=True)
class Expectations:
    """What this answer must also satisfy beyond the schema, from what the request asked."""

    #: The model name the catalog gave (and the request sent); None: not checked.
    model: str | None = None
    max_tokens: int | None = None
    #: A regular expression the answer's text must match (for a deterministic prompt).
    pattern: re.Pattern[str] | None = None


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


class ChunkDelta(_Shape):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Shape):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None


class ChatCompletionChunk(_Shape):
    """One ``data:`` event of a streamed completion (``choices`` is empty in the usage chunk)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# ---------------------------------------------------------------------------- the checks


def completion_violations(body: Any, expect: Expectations | None = None) -> list[Violation]:
    """Every violation in a (non-streamed) completion body: schema and quality both.

    The quality checks read the raw body, so they add to the structural errors instead
    of hiding behind them.
    """
    expect = expect or Expectations()
    if not isinstance(body, dict):
        return [Violation(SCHEMA, "(body)", f"expected a JSON object, got {type(body).__name__}")]
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    found = schema_violations(ChatCompletionResponse, body)
    for i, choice in enumerate(_list(body.get("choices"))):
        if isinstance(choice, dict):
            found += choice_violations(f"choices.{i}", choice, usage, expect)
    found += usage_violations(usage, body.get("choices"))
    found += model_violations(body.get("model"), expect.model)
    return found


def schema_violations(model: type[BaseModel], body: Any, where: str = "") -> list[Violation]:
    """The pydantic schema errors of ``body``, one violation each."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        return [
            Violation(
                SCHEMA, where + (".".join(str(p) for p in err["loc"]) or "(body)"), err["msg"]
            )
            for err in exc.errors()
        ]
    return []


def choice_violations(
    where: str, choice: dict[str, Any], usage: dict[str, Any] | None, expect: Expectations
) -> list[Violation]:
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    found = content_violations(f"{where}.message.content", content, expect.pattern)
    found += finish_violations(f"{where}.finish_reason", choice, usage, expect.max_tokens)
    return found


def content_violations(
    where: str, content: Any, pattern: re.Pattern[str] | None = None
) -> list[Violation]:
    """Non-empty after trimming, no leaked template tokens, and the expectation if any."""
    if not isinstance(content, str):
        return []  # the schema check names it
    if not content.strip():
        return [Violation(EMPTY, where, "must not be empty (after trimming whitespace)")]
    found = []
    leaked = template_leaks(content)
    if leaked:
        tokens = ", ".join(f"{token!r} ({family})" for family, token in leaked)
        found.append(
            Violation(
                TEMPLATE,
                where,
                f"leaked chat-template tokens {tokens}: the server's chat template does not "
                "fit the model",
            )
        )
    if pattern is not None and not pattern.search(content):
        found.append(
            Violation(EXPECTATION, where, f"{_clip(content)!r} does not match /{pattern.pattern}/")
        )
    return found


def template_leaks(text: str) -> list[tuple[str, str]]:
    """The template tokens in ``text``, as ``(family, token)``, in family order."""
    return [
        (family, token)
        for family, tokens in TEMPLATE_TOKENS.items()
        for token in tokens
        if token in text
    ]


def finish_violations(
    where: str, choice: dict[str, Any], usage: dict[str, Any] | None, max_tokens: int | None
) -> list[Violation]:
    """A known ``finish_reason``, set, and consistent with ``max_tokens`` and the usage."""
    reason = choice.get("finish_reason")
    if reason is None:
        return (
            [Violation(FINISH, where, "must be set on a finished completion")]
            if "finish_reason" in choice
            else []
        )
    if not isinstance(reason, str):
        return []  # the schema check names it
    if reason not in FINISH_REASONS:
        known = ", ".join(sorted(FINISH_REASONS))
        return [Violation(FINISH, where, f"unknown value {reason!r} (expected one of {known})")]
    return _length_consistency(where, reason, _int(usage, "completion_tokens"), max_tokens)


def _length_consistency(
    where: str, reason: str, completion: int | None, max_tokens: int | None
) -> list[Violation]:
    if completion is None or max_tokens is None:
        return []
    if completion > max_tokens:
        return [
            Violation(
                FINISH,
                where,
                f"{completion} completion tokens, more than max_tokens {max_tokens}: "
                "the server ignored the limit",
            )
        ]
    if reason == "length" and completion < max_tokens:
        return [
            Violation(
                FINISH,
                where,
                f"'length' after {completion} completion tokens, but max_tokens is {max_tokens}",
            )
        ]
    return []


def usage_violations(usage: dict[str, Any] | None, choices: Any) -> list[Violation]:
    """The arithmetic of ``usage``, where the server gives it."""
    if usage is None:
        return []
    prompt, completion, total = (
        _int(usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    )
    found = []
    if prompt is not None and completion is not None and total is not None:
        if prompt + completion != total:
            found.append(
                Violation(
                    USAGE,
                    "usage.total_tokens",
                    f"{total} is not prompt_tokens + completion_tokens ({prompt} + {completion})",
                )
            )
    if prompt == 0:
        found.append(Violation(USAGE, "usage.prompt_tokens", "0 for a non-empty prompt"))
    if completion == 0 and _list(choices):
        found.append(Violation(USAGE, "usage.completion_tokens", "0 for a non-empty answer"))
    return found


def model_violations(answered: Any, expected: str | None) -> list[Violation]:
    """The answer names the model the catalog gave (a mix-up serves another model)."""
    if expected is None or not isinstance(answered, str) or answered == expected:
        return []
    return [
        Violation(
            MODEL,
            "model",
            f"answered as {answered!r}, but the catalog names the model {expected!r}",
        )
    ]


# ---------------------------------------------------------------------------- streams


@dataclass
class Assembled:
    """A streamed completion put back together, with what was wrong in its chunks."""

    body: dict[str, Any]
    violations: list[Violation]


def assemble_stream(chunks: Sequence[dict[str, Any]]) -> Assembled:
    """The completion a stream of chunks stands for (first choice), and its chunk errors.

    Each chunk is checked against the chunk schema (the first few errors are kept: a
    server that breaks one chunk breaks them all the same way); ``id``, ``created`` and
    ``model`` come from the first chunk that has them, the content is the deltas joined,
    the finish reason the last one given, the usage the last one given.
    """
    body: dict[str, Any] = {"object": "chat.completion", "choices": [_assembled_choice(chunks)]}
    for key in ("id", "created", "model"):
        value = next((c[key] for c in chunks if key in c), None)
        if value is not None:
            body[key] = value
    usage = next((c["usage"] for c in reversed(chunks) if isinstance(c.get("usage"), dict)), None)
    if usage is not None:
        body["usage"] = usage
    return Assembled(body, _chunk_violations(chunks) + _model_consistency(chunks))


def _chunk_violations(chunks: Sequence[dict[str, Any]], keep: int = 5) -> list[Violation]:
    found: list[Violation] = []
    for n, chunk in enumerate(chunks):
        found += schema_violations(ChatCompletionChunk, chunk, f"chunk {n}: ")
        if len(found) >= keep:
            break
    return found


def _assembled_choice(chunks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    parts: list[str] = []
    role: Any = None
    finish: Any = None
    for delta, reason in _first_choice_deltas(chunks):
        role = role if role is not None else delta.get("role")
        if isinstance(delta.get("content"), str):
            parts.append(delta["content"])
        finish = reason if reason is not None else finish
    message = {"role": role or "assistant", "content": "".join(parts)}
    return {"index": 0, "message": message, "finish_reason": finish}


def _first_choice_deltas(chunks: Iterable[dict[str, Any]]) -> Iterable[tuple[dict[str, Any], Any]]:
    for chunk in chunks:
        for choice in _list(chunk.get("choices")):
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                delta = choice.get("delta")
                yield (delta if isinstance(delta, dict) else {}), choice.get("finish_reason")


def _model_consistency(chunks: Sequence[dict[str, Any]]) -> list[Violation]:
    names = list(dict.fromkeys(c["model"] for c in chunks if isinstance(c.get("model"), str)))
    if len(names) <= 1:
        return []
    return [Violation(MODEL, "model", f"the stream's chunks name {len(names)} models: {names}")]


# ---------------------------------------------------------------------------- helpers


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(mapping: dict[str, Any] | None, key: str) -> int | None:
    value = (mapping or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
