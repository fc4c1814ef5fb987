"""The model's event stream, split into lines however a peer cuts it.

A line that arrives in many small reads costs what its bytes cost, not the square of
its pieces: the splitter added each read to the line so far by copying both, and split
the whole line again at each read, so a peer trickling one line of a MiB in single bytes
kept a core busy until the request's deadline. Whatever the cuts, the chunks are the
same, and a line over 1 MiB is refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.clients.inference import InvalidCompletion, _Seen, _sse_chunks

ROUTE = "POST /v1/chat/completions"
#: A bound on the test's wait: far above what it takes, only against a hang.
HANG = 30


def chunk(text: str) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def chunks_of(reads: list[bytes]) -> list[Any]:
    async def feed() -> AsyncIterator[bytes]:
        for piece in reads:
            yield piece

    return [c async for c in _sse_chunks(feed(), _Seen(), ROUTE)]


def test_a_line_in_single_bytes_is_copied_once_not_once_a_byte() -> None:
    # One line of 512 KiB, a byte a read: copied once a read, that is half a million
    # copies of up to half a MiB (about 128 GiB moved); copied once, half a MiB.
    line = b"data: " + json.dumps({"choices": [], "pad": "x" * (512 << 10)}).encode()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG

        async def feed() -> AsyncIterator[bytes]:
            for i in range(len(line)):
                yield line[i : i + 1]
                if i % 4096 == 0:
                    assert loop.time() < deadline, "each byte copied the whole line again"
            yield b"\n\ndata: [DONE]\n\n"

        return [c async for c in _sse_chunks(feed(), _Seen(), ROUTE)]

    got = asyncio.run(main())
    assert len(got) == 1 and got[0]["pad"] == "x" * (512 << 10)


@settings(max_examples=100, deadline=None)
@given(
    texts=st.lists(st.text(max_size=20), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12),
)
def test_the_chunks_are_the_same_however_the_stream_is_cut(
    texts: list[str], cuts: list[int]
) -> None:
    stream = b"".join(chunk(t) for t in texts) + b": a comment\n\ndata: [DONE]\n\n"
    points = sorted({c for c in cuts if c < len(stream)})
    reads = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    got = asyncio.run(chunks_of(reads))
    assert [c["choices"][0]["delta"]["content"] for c in got] == texts


def test_a_line_over_a_mib_is_refused() -> None:
    reads = [b"data: {"] + [b"x" * 4096] * 300
    with pytest.raises(InvalidCompletion, match="a stream line longer than 1 MiB"):
        asyncio.run(chunks_of(reads))
