"""A watch line's bound holds exactly, however a peer cuts the stream into reads.

Both line splitters (aiohttp's path: ``kube._lines``; the lean watch:
``WatchConnection.on_body``) take every line up to the bound, refuse the first line over
it (the lines before it first, as a line-by-line reader meets them), and never hold more
than the bound of a line begun: the check comes before a read is added, not after, so a
peer cannot make the client hold the bound plus one more read (up to megabytes), nor get
a line over the bound accepted by ending it in the read that crossed it.

Hypothesis draws the lines (lengths around the bound) and the cuts; the splitters are
driven directly, with no time involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lean_watch import chunked

from orchestrator.clients import ProtocolError
from orchestrator.clients import kube as kube_module
from orchestrator.clients._watch1 import LineTooLong

BOUND = 64
ROUTE = "WATCH /api/v1/pods"


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bool, list[bytes]]:
    """Lines (lengths around the bound), whether the last one ends with a newline, and
    the stream cut into reads anywhere (a read may hold several lines, or be longer
    than the bound)."""
    lengths = draw(
        st.lists(
            st.sampled_from([0, 1, BOUND - 1, BOUND, BOUND + 1, 2 * BOUND])
            | st.integers(0, 3 * BOUND),
            min_size=1,
            max_size=6,
        )
    )
    lines = [bytes([ord("a") + i % 26]) * n for i, n in enumerate(lengths)]
    ended = draw(st.booleans())
    data = b"\n".join(lines) + (b"\n" if ended else b"")
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=8))))
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return lines, ended, [r for r in reads if r]


def expected(lines: list[bytes]) -> tuple[list[bytes], bool]:
    """The lines a reader takes (empty ones skipped) and whether it then refuses one."""
    taken: list[bytes] = []
    for line in lines:
        if len(line) > BOUND:
            return taken, True
        if line.strip():
            taken.append(line)
    return taken, False


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(streams())
def test_aiohttps_path_takes_each_line_up_to_the_bound_and_holds_no_more(
    stream: tuple[list[bytes], bool, list[bytes]],
) -> None:
    lines, _, reads = stream
    held: list[int] = []

    class Content:
        async def iter_any(self) -> AsyncIterator[bytes]:
            for piece in reads:
                yield piece
                # The splitter is suspended here, between two reads: what it holds.
                held.append(len(splitter.ag_frame.f_locals["pending"]))

    class Response:
        content = Content()

    splitter = kube_module._lines(Response(), ROUTE, 60.0)

    async def main() -> tuple[list[bytes], ProtocolError | None]:
        got: list[bytes] = []
        try:
            async for line in splitter:
                got.append(line)
        except ProtocolError as exc:
            return got, exc
        return got, None

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kube_module, "MAX_LINE", BOUND)
        got, refused = asyncio.run(main())
    taken, too_long = expected(lines)
    assert got == taken
    assert (refused is not None) == too_long
    if refused is not None:
        assert f"a watch line longer than {BOUND} bytes" in str(refused)
    assert all(n <= BOUND for n in held), held


@FAST
@given(streams())
def test_the_lean_watch_takes_each_line_up_to_the_bound_and_holds_no_more(
    stream: tuple[list[bytes], bool, list[bytes]],
) -> None:
    from test_lean_watch_bounds import connect

    lines, _, reads = stream

    async def main() -> tuple[list[bytes], BaseException | None, list[int]]:
        conn, _ = connect(asyncio.get_running_loop(), max_line=BOUND)
        held: list[int] = []
        for piece in reads:
            conn.data_received(chunked(piece))
            held.append(len(conn._pending))
            if conn.failure is not None:
                break
        else:
            conn.data_received(b"0\r\n\r\n")  # the answer's end: a last line without "\n"
        conn.close()
        return list(conn.items), conn.failure, held

    got, failure, held = asyncio.run(main())
    taken, too_long = expected(lines)
    assert got == taken
    assert isinstance(failure, LineTooLong) == too_long, failure
    assert failure is None or isinstance(failure, LineTooLong)
    assert all(n <= BOUND for n in held), held


def test_a_line_that_ends_in_the_read_that_crossed_the_bound_is_refused() -> None:
    """The case a check after each read missed: the line begun is under the bound, and
    the read that takes it over also ends it."""
    from test_lean_watch_bounds import connect

    async def main() -> Any:
        conn, _ = connect(asyncio.get_running_loop(), max_line=BOUND)
        conn.data_received(chunked(b"x" * (BOUND - 1)))
        conn.data_received(chunked(b"yy\n{}\n"))
        return conn

    conn = asyncio.run(main())
    assert isinstance(conn.failure, LineTooLong) and not conn.items
