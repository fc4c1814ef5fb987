"""``decode_json`` decides as ``json.loads`` does, though orjson decodes first.

The watch events and confirming reads go through it, and every byte of them is a peer's:
whatever the bytes, the answer is json's (the same value, of the same types, keys in the
same order) or a :class:`ResponseFormatError`, wherever json refuses.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.clients import ResponseFormatError
from orchestrator.clients.kube import decode_json


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``1 == 1.0``, ``0.0 == -0.0``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def as_json_decides(raw: bytes) -> None:
    try:
        expected = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        with pytest.raises(ResponseFormatError):
            decode_json(raw, "GET /x")
        return
    assert same(decode_json(raw, "GET /x"), expected), raw


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1, "b": 2, "a": 3}',  # a repeated key: the last value, in the first place
        b"18446744073709551616",  # past 64 bits: orjson would give a float
        b'{"n": -9223372036854775809, "m": 18446744073709551615}',
        b'["12345678901234567890"]',  # 19 digits in a string: json decides, the same
        b"1e400",
        b"[NaN, Infinity, -Infinity]",
        b'"\\ud800"',  # a lone surrogate, escaped
        b'"\xed\xa0\x80"',  # a lone surrogate, encoded: json lets it through
        b'"\xff"',
        b"\xef\xbb\xbf{}",  # a UTF-8 BOM: json takes it
        b"[" * 1100 + b"]" * 1100,  # past orjson's nesting limit
        b"[" * 100_000 + b"]" * 100_000,  # past the interpreter's
        b"-0",
        b"-0.0",
        b' \t\r\n{"a": [1.5, true, null]}\r\n',
        b"\x0c{}",
        b"{} x",
        b"",
        b" \n",
    ],
)
def test_known_differences_are_decided_as_json_decides(raw: bytes) -> None:
    as_json_decides(raw)


_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(),
)
_values = st.recursive(
    _atoms,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    value=_values,
    ascii_only=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=3)), max_size=3),
)
def test_any_json_and_any_bytes_near_it_are_decided_as_json_decides(
    value: Any, ascii_only: bool, edits: list[tuple[int, bytes]]
) -> None:
    raw = bytearray(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))
    as_json_decides(bytes(raw))
    for at, inserted in edits:
        at %= len(raw) + 1
        raw[at : at + 1] = inserted
    as_json_decides(bytes(raw))


_pieces = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b":", b",", b"0", b"1", b"-", b".", b"e", b"+", b" "]
    + [b"\\", b"u", b"d800", b"\xed\xa0\x80", b"\xff", b"true", b"NaN", b"\x00", b"9" * 19]
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(pieces=st.lists(_pieces, max_size=30))
def test_any_sequence_of_json_tokens_is_decided_as_json_decides(pieces: list[bytes]) -> None:
    as_json_decides(b"".join(pieces))
