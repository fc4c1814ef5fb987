"""The redactor: what it masks, short secrets, and text that arrives in pieces.

The stream tests split a text at every place hypothesis can think of: a secret split
across two writes (of a child's log, of ``print``) must come out masked as a whole, and
what a :class:`StreamMasker` hands out must never hold a secret, whatever comes after.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import urllib.parse
import warnings
from pathlib import Path
from typing import IO, cast

import pytest
import xmlschema
from _cpu import cpu_seconds
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from orchestrator.engine import PhaseRecord, Redactor, RunRecord, StreamMasker, write_run_json
from orchestrator.engine import redactor as process_redactor
from orchestrator.engine._junit import write_junit
from orchestrator.engine._redact import MIN_SECRET_LENGTH, STREAM_FLUSH_HOLD, STREAM_HOLD_MAX

SECRET = "tok/5e1f0c7a+never=shown"
SHORT = "k3y"


def redactor() -> Redactor:
    r = Redactor()
    assert r.add(SECRET) is True
    assert r.add(SHORT) is False  # too short to be masked everywhere: the caller says so
    return r


def test_a_secret_is_masked_in_every_form_a_peer_may_quote_it() -> None:
    r = redactor()
    b64 = base64.b64encode(SECRET.encode()).decode()
    for quoted in (
        SECRET,
        urllib.parse.quote(SECRET, safe=""),
        urllib.parse.quote_plus(SECRET),
        json.dumps(SECRET)[1:-1].replace("/", "\\/"),
        b64,
        base64.b64encode(b"x" + SECRET.encode()).decode(),  # inside a longer value,
        base64.b64encode(b"xy" + SECRET.encode() + b"z").decode(),  # at each alignment
    ):
        masked = r(f"peer said <{quoted}>")
        assert SECRET not in masked and quoted not in masked, masked
        assert masked.startswith("peer said <") and "***" in masked
    # A Secret object's data, as the Kubernetes API shows it.
    secret_object = json.dumps({"data": {"HF_TOKEN": b64}})
    assert b64[:-4] not in r(secret_object)


def test_a_short_secret_is_masked_wherever_it_stands_as_a_word() -> None:
    r = redactor()
    for context in (
        f"401: invalid token {SHORT}.",
        f"Authorization: {SHORT}",
        f"X-Api-Key: {SHORT}",
        f"https://user:{SHORT}@host/x",
        f"https://host/x?key={SHORT}&a=1",
        json.dumps({"token": SHORT}),
        f'{{"message": "line\\n{SHORT}"}}',
        f"token%3D{SHORT}%26",
        f"\x1b[31m{SHORT}\x1b[0m",
        SHORT,
    ):
        assert SHORT not in r(context), (context, r(context))
    # Inside a longer word it is left: that does not show a reader the credential.
    assert r(f"{SHORT}stone and x{SHORT}") == f"{SHORT}stone and x{SHORT}"
    assert len(SHORT) < MIN_SECRET_LENGTH


def test_a_short_secrets_base64_is_masked_where_it_stands_as_a_token() -> None:
    r = redactor()
    whole = base64.b64encode(SHORT.encode()).decode()
    echoed = base64.b64encode(SHORT.encode() + b"\n").decode()  # echo k3y | base64
    for context in (
        json.dumps({"data": {"HF_TOKEN": whole}}),
        f"HF_TOKEN: {echoed}",
        f"secret data {whole}, then more",
        f"?data={urllib.parse.quote(echoed, safe='')}&x=1",
    ):
        masked = r(context)
        assert whole not in masked and echoed not in masked, masked
        assert "***" in masked and urllib.parse.quote(echoed, safe="") not in masked
    for one in ("5", "ab"):  # padded: "NQ==", "YWI="
        r.add(one)
        padded = base64.b64encode(one.encode()).decode()
        assert r(f"data: {padded}") == "data: ***"
    # Inside a longer base64 value it is left: those few characters are in any such text.
    longer = base64.b64encode(b"user:" + SHORT.encode() + b"!").decode()
    assert r(f"Basic {longer[:4]}{whole}") == f"Basic {longer[:4]}{whole}"
    text = "a certificate: MIIB" + whole + "Qx== and a word azN5x"
    assert r(text) == text


def test_a_short_secret_is_warned_about_once_whoever_registers_it() -> None:
    # The command registers HF_TOKEN before the run and warns on stderr; the flow that
    # registers it again (for a library user, the first to) says nothing more.
    r = Redactor()
    said: list[str] = []
    assert r.register(SHORT, "HF_TOKEN", said.append) is False
    assert r.register(f" {SHORT}\n", "HF_TOKEN", said.append) is False
    assert r.register(SECRET, "the token", said.append) is True
    assert r.register(None, "unset", said.append) is True
    assert len(said) == 1 and said[0].startswith("warning: HF_TOKEN is shorter than 6"), said
    assert SHORT not in said[0]
    assert r(f"token {SHORT}") == "token ***"


def test_credentials_in_urls_are_masked_without_registering_them() -> None:
    r = Redactor()
    assert r("clone https://bob:hunter22@git.example/x") == "clone https://bob:***@git.example/x"
    assert r("push https://ghp_abc123@github.com/o/r") == "push https://***@github.com/o/r"
    assert r("GET /v1?access_token=abc&page=2") == "GET /v1?access_token=***&page=2"
    assert r("s3?X-Amz-Signature=f00d&X-Amz-Date=1") == "s3?X-Amz-Signature=***&X-Amz-Date=1"
    assert r("see https://example.com/docs?page=2") == "see https://example.com/docs?page=2"


def test_json_reports_stay_json_with_a_numeric_short_secret() -> None:
    r = Redactor()
    r.add("5")
    data = {"replicas": 5, "reason": "token 5 refused", "tags": ["5", 5.5]}
    masked = r.redact_value(data)
    assert masked == {"replicas": 5, "reason": "token *** refused", "tags": ["***", 5.5]}
    json.loads(json.dumps(masked))


pieces = st.lists(st.integers(min_value=0, max_value=400), max_size=12)
filler = st.text(st.sampled_from("ab/+= \n\x1b[1mkey3tok%2F"), max_size=30)


@settings(max_examples=400, deadline=None)
@given(
    before=filler,
    after=filler,
    cuts=pieces,
    form=st.sampled_from(
        [
            SECRET,
            urllib.parse.quote(SECRET, safe=""),
            base64.b64encode(SECRET.encode()).decode(),
            "tok/5e1f\x1b[1m0c7a+never\n  =shown",
            f" {SHORT} ",
            f" {base64.b64encode(SHORT.encode()).decode()} ",
            f"Authorization: Bearer {SECRET[::-1]} ",
        ]
    ),
)
def test_a_secret_split_across_pieces_never_comes_out(
    before: str, after: str, cuts: list[int], form: str
) -> None:
    r = redactor()
    text = before + form + after
    masker = r.masker()
    out = []
    start = 0
    for cut in sorted(c % (len(text) + 1) for c in cuts):
        out.append(masker.feed(text[start:cut]))
        start = max(start, cut)
        # What was handed out so far never holds a secret, whatever comes next.
        assert SECRET not in "".join(out) and SECRET[::-1] not in "".join(out)
    out.append(masker.feed(text[start:]))
    out.append(masker.finish())
    whole = "".join(out)
    assert whole == r(text)
    assert SECRET not in whole and SECRET[::-1] not in whole
    assert f" {SHORT} " not in whole
    assert f" {base64.b64encode(SHORT.encode()).decode()} " not in whole


def test_an_escape_that_may_take_a_secrets_first_character_does_not_hide_it() -> None:
    # "\x1b[" right before the value reads as the code "\x1b[t" too: the rest of the
    # value, split by a style code and a line break, must still be masked, in one piece
    # or in two.
    r = redactor()
    text = "\x1b[tok/5e1f\x1b[1m0c7a+never\n  =shown"
    assert r(text) == "\x1b[***"
    masker = r.masker()
    assert masker.feed(text[:3]) + masker.feed(text[3:]) + masker.finish() == "\x1b[***"


def test_a_short_secret_after_an_escape_split_from_it_is_masked() -> None:
    # The masker holds "D" of "%3D" (a word may start a credential's name): what stands
    # before the short value must be held with it, or "Dk3y" reads as one word.
    r = redactor()
    for before in ("sent token%3D", "line\\n", "\x1b[1m"):
        masker = r.masker()
        out = masker.feed(before) + masker.feed(f"{SHORT}%26 sent") + masker.finish()
        assert out == r(f"{before}{SHORT}%26 sent") and SHORT not in out, out


def test_a_short_secret_is_judged_by_its_neighbours_across_pieces() -> None:
    # Masked in the whole text or not, the same in pieces: a word or number the next
    # piece goes on with, an escape cut in two.
    r = redactor()
    for first, second in (
        ("id 2", f"{SHORT} ok"),  # 2k3y: inside a word, shown as it is
        ("v 1.", f"{SHORT} ok"),
        (f"v {SHORT}", "x ok"),
        ("sent %1", f"1{SHORT} ok"),  # %11k3y: after an escape, masked
        ("sent \\", f"n{SHORT} ok"),
    ):
        masker = r.masker()
        out = masker.feed(first) + masker.feed(second) + masker.finish()
        assert out == r(first + second), (first, second, out)


#: What may stand right next to a short secret and decide whether it is masked: a letter
#: or digit it would run into, a number's separators, the ends of escapes (``%3D``, ``\\n``,
#: a style code), and what leaves it standing alone.
short_neighbours = st.lists(
    st.sampled_from(
        ["a", "Z", "2", "_", ".", ",", ":", " ", "%", "3D", "\\", "n", "\x1b[", "1m", "-"]
    ),
    max_size=8,
).map("".join)


def feed_in_pieces(masker: StreamMasker, text: str, cuts: list[int]) -> str:
    out, start = [], 0
    for cut in sorted(c % (len(text) + 1) for c in cuts):
        out.append(masker.feed(text[start:cut]))
        start = max(start, cut)
    return "".join([*out, masker.feed(text[start:]), masker.finish()])


@settings(max_examples=1000, deadline=None)
@given(
    before=short_neighbours,
    after=short_neighbours,
    cuts=pieces,
    form=st.sampled_from(
        [
            SHORT,
            base64.b64encode(SHORT.encode()).decode(),
            base64.b64encode(SHORT.encode() + b"\n").decode(),
        ]
    ),
)
def test_a_short_secret_is_judged_by_its_neighbours_wherever_the_pieces_end(
    before: str, after: str, cuts: list[int], form: str
) -> None:
    # Whether a short value is masked depends on the characters around it: in pieces,
    # exactly as in the whole text, wherever the cuts fall among those characters.
    r = redactor()
    text = before + form + after
    assert feed_in_pieces(r.masker(), text, cuts) == r(text)


def test_a_secret_at_the_end_of_a_run_longer_than_the_hold_is_masked_whole() -> None:
    # A credential-shaped run longer than the hold is handed out as it stands: a peer
    # that ends one with our token, split by a read, must not get the token's rest out.
    r = redactor()
    for run in (
        "Authorization: Bearer " + "A" * (STREAM_HOLD_MAX + 10),
        "-----BEGIN A PRIVATE KEY-----" + "A" * (STREAM_HOLD_MAX + 10),
    ):
        text = f"{run}{SECRET} done"
        for cut in range(len(run), len(run) + len(SECRET)):
            masker = r.masker()
            out = masker.feed(text[:cut]) + masker.feed(text[cut:]) + masker.finish()
            parts = {SECRET[i : i + 6] for i in range(len(SECRET) - 5)}
            assert not [p for p in parts if p in out], (cut, out[-40:])


def test_bytes_split_inside_a_character_or_a_secret() -> None:
    r = redactor()
    data = f"é {SECRET} ü".encode()
    masker = r.masker()
    out = b"".join(masker.feed_bytes(data[i : i + 1]) for i in range(len(data)))
    assert (out + masker.finish().encode()).decode() == "é *** ü"


def test_print_in_pieces_to_a_redacting_stream() -> None:
    r = redactor()
    target = io.StringIO()
    stream = r.stream(target)
    print("token:", SECRET[:8], end="", file=stream)  # print writes each piece apart
    print(SECRET[8:], "done", file=stream)
    stream.flush()
    assert target.getvalue() == "token: *** done\n"


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "utf-16-le"])
def test_bytes_written_to_a_redacting_streams_buffer_are_masked(encoding: str) -> None:
    # Code that writes bytes to sys.stdout.buffer (a library's, a user's) passed the
    # app's wrapped streams unmasked. Split at every byte, flushed after each: a secret
    # and a character split between writes come out whole, masked, in order with the
    # text written around them; bytes that do not decode come out as they went in.
    data = f"from bytes: {SECRET}, {SHORT} and caf\u00e9 \u20ac\n".encode(encoding)
    undecodable = b"\xff\xfe" if encoding == "utf-8" else b""
    for cut in range(len(data) + 1):
        raw = io.BytesIO()
        target = io.TextIOWrapper(raw, encoding=encoding, errors="strict")
        stream = redactor().stream(target, hold=3600)
        stream.write(f"text: {SHORT[:2]}")  # its rest comes as bytes
        stream.flush()
        stream.buffer.write(SHORT[2:].encode(encoding))
        stream.write(", ")
        for piece in (data[:cut], data[cut:]):
            assert stream.buffer.write(memoryview(piece)) == len(piece)
            stream.buffer.flush()
        stream.buffer.write(undecodable)
        stream.release()
        written = raw.getvalue()
        assert written.endswith(undecodable)
        assert written[: len(written) - len(undecodable)].decode(encoding) == (
            "text: ***, from bytes: ***, *** and caf\u00e9 \u20ac\n"
        ), cut


def test_a_redacting_stream_over_a_text_only_target_has_no_buffer() -> None:
    stream = redactor().stream(io.StringIO())
    assert not hasattr(stream, "buffer")


def test_a_secret_split_across_two_flushed_console_prints_is_masked_whole() -> None:
    # rich flushes after every print: the first part must not be let out by that flush.
    r = redactor()
    target = io.StringIO()
    stream = r.stream(target, hold=3600)  # no timer between the prints, however slow
    # A redacting stream is a text stream by what it does (write, flush, the target's
    # attributes), not by class: the cast says so to the type checker and changes nothing.
    console = Console(file=cast(IO[str], stream), force_terminal=False, width=200)
    console.print("token: " + SECRET[:8], end="")
    assert "token: ".startswith(target.getvalue())  # the value's start is held back
    console.print(SECRET[8:] + " refused")
    stream.release()
    assert target.getvalue() == "token: *** refused\n"


class Recorded(io.StringIO):
    """A target that says when ``awaited`` has been written to it."""

    def __init__(self, awaited: str) -> None:
        super().__init__()
        self.awaited = awaited
        self.seen = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.awaited in self.getvalue():
            self.seen.set()
        return written


def test_what_a_flush_holds_back_is_written_out_soon_without_another_write() -> None:
    # "authoriz" may start "authorization: <credential>": held at the flush, then written
    # out by the stream's timer, not held until some later write that may never come.
    target = Recorded("waiting for authoriz")
    stream = redactor().stream(target, hold=0.01)
    stream.write("waiting for authoriz")
    stream.flush()
    assert target.seen.wait(60), target.getvalue()
    assert target.getvalue() == "waiting for authoriz"
    assert STREAM_FLUSH_HOLD < 1


def test_a_flush_holds_back_what_may_start_a_credential() -> None:
    target = io.StringIO()
    stream = redactor().stream(target, hold=3600)
    stream.write("waiting for authoriz")
    stream.flush()
    assert "authoriz" not in target.getvalue()
    assert "waiting for ".startswith(target.getvalue())
    stream.write("ation: Basic dXNlcjpwYXNz\n")
    assert target.getvalue() == "waiting for authorization: Basic ***\n"


def test_what_a_stream_holds_is_written_out_at_release_and_at_exit(tmp_path: Path) -> None:
    target = io.StringIO()
    stream = redactor().stream(target, hold=3600)
    stream.write("waiting for authoriz")
    stream.flush()
    stream.release()
    assert target.getvalue() == "waiting for authoriz"
    # A program that wraps its stdout and exits right after a flush: the atexit hook
    # writes the held end out (the timer has had no time to).
    assert stdout_of_a_program_that("out.flush()") == "waiting for authoriz"


def stdout_of_a_program_that(*then: str) -> str:
    """What a program that wraps its stdout, writes a line ending in a word that may
    start a credential's name, does ``then`` and exits shows on its stdout."""
    script = "\n".join(
        [
            "import sys",
            "from orchestrator.engine import redactor",
            "out = redactor.stream(sys.stdout)",
            "out.write('waiting for authoriz')",
            *then,
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout


#: CPU seconds (see tests/_cpu.py, not wall-clock time, which a loaded machine misses)
#: one case of hostile input may spend: five to twenty times what each costs now (0.02
#: to 0.8 s), a fraction of what each cost when quadratic (12 s to minutes). The child
#: is stopped once all of them together have spent HOSTILE_RUN_BUDGET.
HOSTILE_CASE_BUDGET = 4.0
HOSTILE_RUN_BUDGET = 20

#: Ends the cases' loop body: what the case spent on the process's CPU clock, bounded.
_EACH_CASE_WITHIN_BUDGET = (
    "    spent = time.process_time() - began\n"
    f"    assert spent < {HOSTILE_CASE_BUDGET}, (case[:40], f'{{spent:.1f}} CPU s')\n"
)


def test_hostile_lines_cost_time_in_proportion_to_their_length() -> None:
    # A peer writes what its logs and bodies hold. Each of these lines took minutes to
    # hours (a pattern tried again from every character, or a step per character that
    # copied the whole line): each alone ran past 40 s before, where all four together
    # now take about a second.
    script = (
        "import time\n"
        "from orchestrator.engine import Redactor\n"
        "r = Redactor(['tok/5e1f0c7a+never=shown', 'k3y'])\n"
        "for case in (\n"
        "    'A_TOKEN' * 10_000 + '=\"',\n"  # a credential's name that never gets a value
        "    '\"name\": \"' + 'token' * 80_000 + '\"value\"',\n"  # an env entry's, unclosed
        "    '-----BEGIN A PRIVATE KEY-----' * 20_000,\n"  # first lines, no last one
        "    '%' * 3_000_000 + 'a',\n"  # escapes a short secret's hold walks back over
        "):\n"
        "    began = time.process_time()\n"
        "    r.redact(case)\n"
        "    masker = r.masker()\n"
        "    for at in range(0, len(case), 65_536):\n"
        "        masker.feed(case[at : at + 65_536])\n"
        "    masker.finish()\n"
        "    r.masker().feed(case)\n" + _EACH_CASE_WITHIN_BUDGET
    )
    cpu_seconds(script, budget=HOSTILE_RUN_BUDGET)


def test_a_hold_check_costs_time_in_proportion_to_the_hold() -> None:
    # Each piece is checked for an end that may start a credential, up to the hold's
    # 8 KB: a part searched from every position whose match scans a long run and fails
    # at its end (a URL's ":" repeated, a query's ";=", "bearer+", "password=", an env
    # entry's '"name":', "A_TOKEN=", "-----BEGIN") cost the hold's length squared, about
    # 0.1 s a piece here; 150 such pieces of each ran 12 s to past a minute, where each
    # now takes 0.1 to 0.3 s.
    script = (
        "import time\n"
        "from orchestrator.engine import Redactor\n"
        "r = Redactor(['tok/5e1f0c7a+never=shown', 'k3y'])\n"
        "for case in (\n"
        "    ':' * 8000 + ' x',\n"
        "    ';=' * 4000 + ' x',\n"
        "    'bearer+' * 1150 + ' x',\n"
        "    'password=' * 900 + ' x',\n"
        "    '\"name\":' * 1150 + '{x',\n"
        "    'A_TOKEN=' * 1000 + ' x',\n"
        "    '-----BEGIN' * 810 + 'bearer=',\n"
        "):\n"
        "    began = time.process_time()\n"
        "    masker = r.masker()\n"
        "    for _ in range(150):\n"
        "        masker.feed(case)\n"
        "    masker.finish()\n" + _EACH_CASE_WITHIN_BUDGET
    )
    cpu_seconds(script, budget=HOSTILE_RUN_BUDGET)


#: The hold's parts as single patterns searched from the hold's start: what each part's
#: earliest start is, by definition (quadratic on hostile text: for short texts only).
_HOLD_REFERENCE = [
    (
        (),
        r"(?i):/?/?[^\s/?#'\"<>]*+\Z|[?&;][A-Za-z0-9_-]*+(?:=[^&#\s\"'<>]*+)?\Z"
        r"|%[0-9A-Fa-f]?\Z|\\\Z|\x1b\[?[0-9;?]*+\Z"
        r"|-{1,5}[A-Z ]*\Z|-----BEGIN[A-Z -]*\Z|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*\Z",
    ),
    ((("bearer",),), r"(?i)bearer(?:\s+|%2?0?|\+)[A-Za-z0-9\-._~+/=%]*\Z"),
    (
        (("authorization", "client-", "-token", "passw"),),
        r"(?i)(?:(?:proxy-)?authorization|client-key-data|client-secret|refresh-token|"
        r"""id-token|password|passwd)["']?\s*(?:[:=]\s*["']?(?:[A-Za-z]++\s*+)?+"""
        r"""[^\s"',;}&]*+)?\Z""",
    ),
    (
        (('"',),),
        r'(?i)"(?:token|access_?token|api_?key|secret|client_?secret|password|passwd)"'
        r'\s*(?::\s*(?:"(?:[^"\\]|\\.)*\\?)?)?\Z|"name"\s*(?::[^{}]*)?\Z',
    ),
    (
        (("token", "secret", "passw", "api_key", "access_key"), ("=",)),
        r"""(?i)(?<![A-Z0-9_])(?=[A-Z0-9_]*?(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|"""
        r"""ACCESS_KEY))[A-Z0-9_]*+=["']?[^\s"']*\Z""",
    ),
]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [" ", "  ", "\t", "\n", "+", "%20", "%", "=", ":", "//", "/", '"', "'", ",", ";"]
            + ["&", "?", "#", "{", "}", "@", "\\", "\x1b[", "-", "_", "a", "x9", "Basic"]
            + ["bearer", "BEARER", "password", "passwd", "authorization", "proxy-"]
            + ["client-key-data", "id-token", '"name"', '"token"', "A_TOKEN", "hf_token"]
            + ["-----BEGIN", "\u017f", "\u212a", "\u0130", "\u00e9"]
        ),
        min_size=1,
        max_size=16,
    ),
    st.lists(
        st.sampled_from(
            ["a", " ", "password=", ":", "bearer+", '"name":', "A_TOKEN=", "-----BEGIN"]
        )
    ),
    st.sampled_from([0, 4, 20, STREAM_HOLD_MAX // 40]),
)
def test_the_hold_starts_where_its_parts_searched_from_every_position_say(
    parts: list[str], before: list[str], repeat: int
) -> None:
    # A hold longer than a line's has its parts searched only from where a match can
    # start (linear); the earliest start must be the one a search from every position
    # finds. Repeated up to past the hold's bound, so that runs that cross where the
    # hold starts are there too.
    import re

    from orchestrator.engine._redact import _open_word

    text = "".join(before) * repeat + "".join(parts) * (1 + repeat)
    floor = max(0, len(text) - STREAM_HOLD_MAX)
    starts = [len(text), _open_word(text, floor)]
    low = text.lower()
    for needs, pattern in _HOLD_REFERENCE:
        if all(any(word in low for word in words) for words in needs) and (
            m := re.compile(pattern).search(text, floor)
        ):
            starts.append(m.start())
    assert Redactor().open_tail(text) == min(starts)


def test_what_a_stream_holds_unflushed_is_written_out_at_exit() -> None:
    # A program that never flushes still gets all it wrote, as with a plain stream.
    assert stdout_of_a_program_that() == "waiting for authoriz"


class ClosedAfterward(io.StringIO):
    """A target whose writes fail once ``closing`` is set, as a closed file's do."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.tried = threading.Event()
        self.writer: threading.Thread | None = None

    def write(self, text: str) -> int:
        if self.closing:
            self.writer = threading.current_thread()
            self.tried.set()
            raise ValueError("I/O operation on closed file.")
        return super().write(text)


def test_a_target_closed_before_the_timer_writes_gives_no_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures: list[object] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    target = ClosedAfterward()
    stream = redactor().stream(target, hold=0.01)
    stream.write("waiting for authoriz")
    target.closing = True
    stream.flush()
    assert target.tried.wait(60)
    assert target.writer is not None and target.writer is not threading.current_thread()
    stream.release()  # returns once the releasing thread has let the stream go
    assert failures == []
    # The releasing thread lives on: the next hold is written out all the same.
    other = Recorded("still authoriz")
    stream = redactor().stream(other, hold=0.01)
    stream.write("still authoriz")
    stream.flush()
    assert other.seen.wait(60), other.getvalue()
    assert failures == []


def test_flushes_that_hold_something_start_no_thread_each(monkeypatch: pytest.MonkeyPatch) -> None:
    # A console flushes after every line, and most lines end in a word the stream holds:
    # a thread per flush was a thread start per line. One thread serves every stream.
    r = redactor()
    streams = [r.stream(Recorded("never"), hold=0.01) for _ in range(2)]
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    for i in range(100):
        for stream in streams:
            stream.write(f"line {i}, waiting for authoriz")
            stream.flush()
    last = Recorded("the end")
    stream = r.stream(last, hold=0.01)
    stream.write("the end")
    stream.flush()
    assert last.seen.wait(60), last.getvalue()  # still written out by its hold's end
    assert len(started) <= 1, started


class ChildsPipe(io.StringIO):
    """A target that, in a forked child only, writes to a pipe and says when ``awaited``
    has been written."""

    def __init__(self, fd: int, awaited: str) -> None:
        super().__init__()
        self.fd, self.awaited, self.parent = fd, awaited, os.getpid()
        self.pipe = os.fstat(fd).st_ino
        self.seen = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if os.getpid() != self.parent and self._still_ours():
            os.write(self.fd, text.encode())
            if self.awaited in self.getvalue():
                self.seen.set()
        return written

    def _still_ours(self) -> bool:
        """Whether ``fd`` is still this test's pipe. A later test's child inherits this
        stream too, with a release it may still owe; by then the test has closed ``fd``
        and the number may be another test's pipe, which must not get this text."""
        try:
            return os.fstat(self.fd).st_ino == self.pipe
        except OSError:
            return False


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
        return os.fork()


def _childs_output(read: int, write: int, pid: int) -> tuple[int, bytes]:
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        written = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), written


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_writes_out_what_its_streams_held() -> None:
    # A child forked after a flush has the parent's stream and what it held, but not the
    # releasing thread: it must still write the held end out within the hold, with no
    # write of its own to start a thread.
    read, write = os.pipe()
    target = ChildsPipe(write, "waiting for authoriz")
    stream = redactor().stream(target, hold=0.05)
    stream.write("waiting for authoriz")
    stream.flush()
    pid = _fork()
    if pid == 0:  # pragma: no cover  (the child)
        os._exit(0 if target.seen.wait(60) else 1)
    code, written = _childs_output(read, write, pid)
    assert code == 0
    assert written == b"waiting for authoriz"


class BlockedInParent(ChildsPipe):
    """A :class:`ChildsPipe` whose writes, in the parent only, wait until ``go`` is set
    (after setting ``entered``): a write that is still going on when the parent forks."""

    def __init__(self, fd: int, awaited: str) -> None:
        super().__init__(fd, awaited)
        self.entered, self.go = threading.Event(), threading.Event()

    def write(self, text: str) -> int:
        if os.getpid() == self.parent:
            self.entered.set()
            self.go.wait(60)
        return super().write(text)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_during_another_threads_write_can_write() -> None:
    # The parent's writer holds the stream's lock when the fork copies it; the child has
    # no such thread, so a lock copied held would never be released there.
    read, write = os.pipe()
    target = BlockedInParent(write, "the child's line\n")
    stream = redactor().stream(target, hold=0.05)
    writer = threading.Thread(target=stream.write, args=("the parent's line\n",))
    writer.start()
    try:
        assert target.entered.wait(60)
        pid = _fork()
        if pid == 0:  # pragma: no cover  (the child)

            def write_and_release() -> None:
                stream.write("the child's line\n")
                stream.release()

            threading.Thread(target=write_and_release, daemon=True).start()
            os._exit(0 if target.seen.wait(60) else 1)
    finally:
        target.go.set()
        writer.join()
    code, written = _childs_output(read, write, pid)
    assert code == 0
    assert written == b"the child's line\n"


class WaitedLock:
    """A lock held by the test's thread (re-entered by it): another thread that tries it
    sets ``waited``, then, if it does not block, waits for ``go`` before it is told that
    the lock is taken."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.waited, self.go = threading.Event(), threading.Event()

    def acquire(self, blocking: bool = True) -> bool:
        if self.lock.acquire(blocking=False):
            return True
        self.waited.set()
        if not blocking:
            self.go.wait(60)
            return False
        return self.lock.acquire()

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_while_a_release_is_on_its_way_writes_it_out() -> None:
    # The parent's releasing thread has taken the release off its list and tries the
    # stream's lock: the child has the stream, what it held and that release, but not
    # the thread that was to make it. With no write of its own, it must still write the
    # end out.
    read, write = os.pipe()
    target = ChildsPipe(write, "waiting for authoriz")
    stream = redactor().stream(target, hold=0.05)
    stream.write("waiting for authoriz")
    lock = WaitedLock()
    stream._lock = lock  # type: ignore[assignment]
    try:
        with lock:
            stream.flush()  # due in 0.05 s: the thread then tries the lock
            assert lock.waited.wait(60)
            pid = _fork()
            if pid == 0:  # pragma: no cover  (the child)
                os._exit(0 if target.seen.wait(60) else 1)
    finally:
        lock.go.set()
    code, written = _childs_output(read, write, pid)
    assert code == 0
    assert written == b"waiting for authoriz"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_while_a_secret_is_being_registered_masks_it() -> None:
    # Another thread of the parent's is inside add(): the value is in the redactor's
    # sets, its patterns are not built yet, its lock is held. The child has no such
    # thread: it must mask the value all the same, and register others.
    r = redactor()
    parent, entered, go = os.getpid(), threading.Event(), threading.Event()
    real = r._compile

    def slow_compile() -> None:
        if os.getpid() == parent:
            entered.set()
            go.wait(60)
        real()

    r._compile = slow_compile  # type: ignore[method-assign]
    late = "late/0c7a5e1f+never=shown"
    adder = threading.Thread(target=r.add, args=(late,))
    adder.start()
    read, write = os.pipe()
    try:
        assert entered.wait(60)
        pid = _fork()
        if pid == 0:  # pragma: no cover  (the child)
            done = threading.Event()

            def child() -> None:
                r.add("child/5e1f0c7a+never=shown")
                os.write(write, r.redact(f"{late} child/5e1f0c7a+never=shown").encode())
                done.set()

            threading.Thread(target=child, daemon=True).start()
            os._exit(0 if done.wait(60) else 1)
    finally:
        go.set()
        adder.join()
    code, written = _childs_output(read, write, pid)
    assert code == 0
    assert written == b"*** ***"


class Awaited(io.StringIO):
    """A target that says when ``awaited`` has been written, and whose writes wait for
    ``go`` while ``block`` is set (after setting ``entered``)."""

    def __init__(self, awaited: str) -> None:
        super().__init__()
        self.awaited, self.block = awaited, False
        self.seen, self.entered, self.go = threading.Event(), threading.Event(), threading.Event()

    def write(self, text: str) -> int:
        if self.block:
            self.entered.set()
            self.go.wait(60)
        written = super().write(text)
        if self.awaited in self.getvalue():
            self.seen.set()
        return written


def test_a_stream_whose_target_blocks_holds_up_no_other_streams_release() -> None:
    # A writer waits on its target (a full pipe) with its stream's lock held; a release
    # of that stream comes due (the write made it pointless). The releasing thread serves
    # every stream: waiting for that lock, it would hold the other streams' ends too.
    from orchestrator.engine._redact import _releaser

    r = redactor()
    blocked_target, other_target = Awaited(""), Awaited("waiting for authoriz")
    blocked = r.stream(blocked_target, hold=0.05)
    other = r.stream(other_target, hold=0.05)
    blocked_target.block = True
    writer = threading.Thread(target=blocked.write, args=("a line\n",))
    writer.start()
    try:
        assert blocked_target.entered.wait(60)
        _releaser.arm(blocked, 0)  # a release armed before the write, due now
        other.write("waiting for authoriz")
        other.flush()
        assert other_target.seen.wait(60)
    finally:
        blocked_target.go.set()
        writer.join()
    assert other_target.getvalue() == "waiting for authoriz"
    assert blocked_target.getvalue() == "a line\n"


def test_concurrent_writers_and_flushes_lose_reorder_and_repeat_nothing() -> None:
    # Each write ends with a word, which the stream holds back until the next write or
    # its timer: writers, flushes and timers race; every write must come out once,
    # whole, each writer's in its order.
    r = redactor()
    target = io.StringIO()
    stream = r.stream(target, hold=0.0005)
    writers, writes = 4, 300
    start = threading.Barrier(writers + 1)

    def write(i: int) -> None:
        start.wait()
        for j in range(writes):
            stream.write(f"<{i}.{j}>word")
            if j % 3 == i % 3:
                stream.flush()

    def flush() -> None:
        start.wait()
        for _ in range(writes):
            stream.flush()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    threads.append(threading.Thread(target=flush))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()
    stream.release()
    tokens = target.getvalue().split("<")
    assert tokens[0] == ""
    seen: dict[int, list[int]] = {i: [] for i in range(writers)}
    for token in tokens[1:]:
        number, _, rest = token.partition(">")
        assert rest == "word", token
        i, j = map(int, number.split("."))
        seen[i].append(j)
    assert all(seen[i] == list(range(writes)) for i in range(writers)), seen


def test_a_service_account_token_of_a_thousand_characters() -> None:
    # A kubeconfig's token is a JWT of about a thousand characters: registering it must
    # not build a pattern nested as deep as it is long (re cannot compile that).
    token = "eyJhbGciOiJSUzI1NiJ9." + "".join(f"{i:04x}" for i in range(250)) + ".sig-_x"
    r = Redactor([token])
    wrapped = "\n  ".join(token[i : i + 80] for i in range(0, len(token), 80))
    assert r(f"token: {wrapped} end") == "token: *** end"
    masker = r.masker()
    out = masker.feed("a " + token[:500]) + masker.feed(token[500:] + " b") + masker.finish()
    assert out == "a *** b"


def test_kubeconfig_credentials_and_private_keys_are_masked_unregistered() -> None:
    r = Redactor()
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBk\nAwEHoUQDQg==\n-----END EC PRIVATE KEY-----"
    assert r(f"key:\n{pem}\nok") == (
        "key:\n-----BEGIN EC PRIVATE KEY-----***-----END EC PRIVATE KEY-----\nok"
    )
    assert r("    client-key-data: LS0tLS1CRUdJTg==") == "    client-key-data: ***"
    assert r('{"client-secret": "s3cr3t", "id-token": "eyJ.x.y"}') == (
        '{"client-secret": "***", "id-token": "***"}'
    )
    masker = r.masker()
    out = "".join(masker.feed(pem[i : i + 7]) for i in range(0, len(pem), 7)) + masker.finish()
    assert "MHcCAQEEIBk" not in out and "AwEHoUQDQg" not in out


UNREGISTERED = "Q7vX2pL9w"
CREDENTIAL_SHAPES = [
    f'{{"kind": "ExecCredential", "status": {{"token": "{UNREGISTERED}"}}}}',
    f'{{"apiKey": "{UNREGISTERED}", "page": 2}}',
    f'"env": [{{"name": "HF_TOKEN", "value": "{UNREGISTERED}"}}, {{"name": "A", "value": "1"}}]',
    f'"env": [{{"name": "REGISTRY_CREDENTIALS", "value": "{UNREGISTERED}"}}]',
    f"HF_TOKEN={UNREGISTERED} python serve.py",
    f"Authorization: Basic {UNREGISTERED}",
    f"GET https://ci:{UNREGISTERED}@registry.example/v2?page=1",
    f"GET /v1/models?api_key={UNREGISTERED}&page=1",
    f"client-secret: {UNREGISTERED}",
]


def test_credentials_by_the_name_they_carry_are_masked_unregistered() -> None:
    r = Redactor()
    for text in CREDENTIAL_SHAPES:
        assert UNREGISTERED not in r(text), r(text)
    kept = '{"name": "MODEL", "value": "llama3.2:1b"} REPLICAS=2 "tokens": 5'
    assert r(kept) == kept


@settings(max_examples=300, deadline=None)
@given(text=st.sampled_from(CREDENTIAL_SHAPES), cuts=pieces, before=filler)
def test_an_unregistered_credential_split_across_pieces_never_comes_out(
    text: str, cuts: list[int], before: str
) -> None:
    text = before + text
    whole = feed_in_pieces(Redactor().masker(), text, cuts)
    # Not even a part of it: a cut inside the value must not let its first half out.
    parts = {UNREGISTERED[i : i + 3] for i in range(len(UNREGISTERED) - 2)}
    assert not [p for p in parts if p in whole], whole


def test_reports_stay_valid_with_a_short_numeric_secret_registered(tmp_path: Path) -> None:
    # A four-digit PIN as a token: every report must still parse, counts and times
    # intact, and the PIN must still be masked where a peer put it.

    pin = "2026"  # also the year in every timestamp: those are the run's own, and stay
    process_redactor.add(pin)
    try:
        phase = PhaseRecord(name="deploy", title="Deploy", status="failed", duration=2026.5)
        phase.reason = f"HTTP 401: token {pin} refused"
        record = RunRecord(suite="kaito", phases=[phase], outcome="failed", time_spent=2026.0)
        record.append_log(f"sent token {pin} at 10:{pin[:2]}")
        junit = write_junit([record], tmp_path / "junit.xml")
        run = write_run_json(record, tmp_path / "run.json")
    finally:
        process_redactor.clear()
    schema = xmlschema.XMLSchema(Path(__file__).parent / "junit.xsd")
    schema.validate(str(junit))
    xml = junit.read_text()
    assert 'time="2026.500"' in xml and "token *** refused" in xml and f"token {pin}" not in xml
    data = json.loads(run.read_text())
    assert data["phases"][0]["reason"] == "HTTP 401: token *** refused"
    assert f"token {pin}" not in run.read_text()
