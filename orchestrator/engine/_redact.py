"""One redactor in front of every sink: secrets never leave the process.

A secret reaches a report in ways no one plans for: a peer echoes the
``Authorization`` header in an error body, the body becomes a phase's reason, the
reason goes to the console, junit.xml, run.json, the GitHub summary. Masking at each
place that builds a message would miss the next such place. Instead every sink (the
console stream, every report and diagnostics file, the job summary and its
annotations, the backend's log, the environment's command log) passes its text through
:data:`redactor` before it leaves the process, and the run log masks each line as it is
added.

What is masked:

- every value registered with :meth:`Redactor.add` (the bearer token, the contents of
  a token file, a kubeconfig's token or password, a credential plugin's token, the
  Hugging Face token), wherever it appears: as is, also split by terminal styling,
  line wrapping or table borders; URL-encoded; JSON-escaped; and base64-encoded at any
  alignment (Kubernetes carries a Secret's data, and HTTP ``Basic`` its credentials,
  in base64, so a peer that quotes either quotes that form);
- the value of any ``Authorization`` header or ``Bearer`` credential, known or not;
- a kubeconfig's credential fields (``client-key-data``, ``client-secret``,
  ``refresh-token``, ``id-token``, ``password``) and any PEM private key;
- a JSON value whose key names a credential (``"token"``, ``"apiKey"``, ``"secret"``,
  ``"password"``: an ExecCredential, a peer's echo), a Kubernetes env entry or an
  environment assignment whose name does (``HF_TOKEN``, ``*_API_KEY``: a workload
  object the diagnostics collect, a pod that logs its environment);
- the password of a URL's userinfo (``https://user:***@host``), a whole userinfo
  without one (``https://***@host``: a token is often sent as the user), and
  the value of query parameters that carry credentials (``?token=***``,
  ``X-Amz-Signature=***``).

**Short secrets.** GitHub Actions' ``add-mask`` masks any registered value, however
short, everywhere: a one-character secret then turns every such character of a log
into ``***``. Others set a floor and leave shorter values unmasked. We take a middle
way, because leaking is worse than a garbled word, and a garbled report is still a
cost: a value of at least :data:`MIN_SECRET_LENGTH` characters is masked anywhere,
even inside a longer word or split by styling; a shorter one is masked wherever it
stands as a word of its own (not next to a letter, digit or ``_``, but after a
``%XX`` or ``\\n`` escape or a style code), which is every place a peer puts a
credential it echoes: an error body's words, a log line, a header value, a URL's
userinfo or query, a JSON string. Its base64 is masked the same way, as a whole
(``YWJj`` for ``abc``, padded where the encoding pads: a Secret's ``data`` quotes it
so), and so is the base64 of the value with a newline after it (``echo abc | base64``).
Not as a fragment inside a longer base64 value (``abc`` in a ``Basic`` credential
``user:abc``): the two or three characters that only the secret decides there are in
every other base64 text, and masking them would garble every Secret and certificate a
report quotes. A standalone token equal to the whole encoding is different: ordinary
text holds one only where something encoded exactly that value. It stays visible only
inside a longer word (secret ``abc`` in ``abcdef``), where it does not tell a reader
the credential. The caller is
told (:meth:`Redactor.add` returns False) so that it can warn the user that such a
value is weak and only partly masked. Nor is it masked where it is part of a number
(``5.25``, ``10:05``), and ``run.json`` and ``junit.xml`` mask each string they hold
(:meth:`Redactor.redact_value`, the JUnit writer's text helpers), not their text, so
that a short numeric secret never turns a count or a time into ``***`` and the file into
something no parser reads.

**Streams.** A sink written in pieces (a child's log as it arrives, a terminal stream)
masks through :class:`StreamMasker`: what could be the start of a secret (its first
characters at the end of a piece, an unfinished ``Bearer`` value) is held back until
the next piece or the end shows what it is, so that a secret split across two reads is
masked as a whole and nothing written to disk was ever unmasked. With a short secret
registered it also holds the word, number or escape a piece ends with, and what stands
before what it holds, so that a short value is judged by the same neighbours as in the
whole text. The process's own streams (:class:`RedactingStream`) hold it across flushes
too, for a bounded time (see there for what that guarantees and what it cannot).
"""

from __future__ import annotations

import atexit
import base64
import bisect
import codecs
import heapq
import itertools
import json
import os
import re
import string
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable
from typing import IO, Any, TextIO, cast

MASK = "***"
#: Values at least this long are masked anywhere; shorter ones only where they stand as a
#: word of their own (see the module's docstring): masking "abc" inside every word that
#: contains it would garble every report, and a credential that short is weak anyway.
MIN_SECRET_LENGTH = 6
#: The shortest base64 fragment of a secret that is masked: shorter ones would match
#: ordinary words.
MIN_BASE64_FRAGMENT = 8
#: How much of a stream's end :class:`StreamMasker` may hold back, at most, while it waits
#: to see whether a secret completes there.
STREAM_HOLD_MAX = 8192
#: Seconds a :class:`RedactingStream` keeps, after a flush, an end that may start a
#: secret, waiting for the write that shows what it is.
STREAM_FLUSH_HOLD = 0.2

#: What may separate the characters of a secret on a terminal: a style escape, a line
#: break with the next line's indentation, a table border.
_GAP = r"(?:\x1b\[[0-9;?]*[A-Za-z]|[ \t\r\n│┃║|])*"
#: One gap, or an escape a stream's piece ends in the middle of: what :meth:`open_tail`
#: leaves out when it compares the end of a piece with the start of a secret.
_GAP_OR_OPEN = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\[?[0-9;?]*\Z|[ \t\r\n│┃║|]")
#: The same with only style codes (``\x1b[1m``) for escapes: for a text that has other
#: ones, which one of them takes a secret's first character for its own end depends
#: on what sent it (``\x1b[`` right before ``tok...`` reads as the code ``\x1b[t``), so
#: a secret is looked for both ways.
_STYLE_GAP_OR_OPEN = re.compile(r"\x1b\[[0-9;]*m|\x1b\[?[0-9;?]*\Z|[ \t\r\n│┃║|]")
#: ``Bearer xyz``, ``bearer%20xyz``: the credential after the scheme word (not the
#: words of a sentence such as "check the bearer token").
_BEARER = re.compile(
    r"(?i)(bearer)(\s+|%20|\+)"
    r"(?!(?:tokens?|auth|authentication|credentials?|scheme|header)\b)([A-Za-z0-9\-._~+/=%]+)"
)
#: ``Authorization: Basic xyz``, ``"authorization": "xyz"``, ``authorization=xyz``.
_AUTHORIZATION = re.compile(
    r"""(?i)((?:proxy-)?authorization["']?\s*[:=]\s*["']?(?:(?!bearer\b)[A-Za-z]+\s+)?)"""
    r"""(?!bearer\b)([^\s"',;}&]+)"""
)
#: ``scheme://user:password@host``: the password; ``scheme://token@host``: all of it (a
#: token is often sent as the user; a plain user name masked too costs little).
_USERINFO = re.compile(r"(://)([^\s/?#@:'\"<>]*)(:[^\s/?#@'\"<>]*)?@")
#: Query parameters that carry a credential (OAuth, API keys, signed URLs).
_QUERY_CREDENTIAL = re.compile(
    r"(?i)([?&;](?:access_token|id_token|refresh_token|token|api[_-]?key|apikey|key|"
    r"password|passwd|pwd|secret|client_secret|sig|signature|x-amz-signature|"
    r"x-amz-credential|x-amz-security-token|x-goog-signature|auth)=)([^&#\s\"'<>]+)"
)
#: A kubeconfig's (or an OIDC provider's) credential fields, in YAML or JSON.
_KEYED_CREDENTIAL = re.compile(
    r"(?i)((?:client-key-data|client-secret|refresh-token|id-token|password|passwd)"
    r"""["']?\s*[:=]\s*["']?)([^\s"',;}&]+)"""
)
_KEYED_WORDS = ("key-data", "secret", "token", "passw")
#: A credential by its JSON key (``{"apiKey": "..."}``, an ExecCredential's ``token``).
_JSON_CREDENTIAL = re.compile(
    r'(?i)("(?:token|access_?token|api_?key|secret|client_?secret|password|passwd)"\s*:\s*")'
    r'((?:[^"\\]|\\.)+)(?=")'
)
#: A Kubernetes env entry whose name says credential (``{"name": "HF_TOKEN", "value":
#: "..."}``): a workload object the diagnostics collect may hold one.
_ENV_ENTRY = re.compile(
    r'(?i)("name"\s*:\s*"(?=[\w.-]*?(?:token|secret|password|passwd|api_?key|access_?key|'
    r'credentials?))[\w.-]*+"\s*,\s*"value"\s*:\s*")((?:[^"\\]|\\.)+)(?=")'
)  # the name as _ENV_ASSIGNMENT's: a look-ahead for the word, then the name once
#: An environment assignment whose name says credential (``HF_TOKEN=...``): a pod that
#: logs its environment. The name is matched from its first character only, and once:
#: written as "any name characters, the word, any name characters" it was tried at every
#: character of a name and at every place the word is in it, which made a 16 KB line of
#: ``A_TOKEN`` repeated (a peer's log) cost minutes.
_ENV_NAME = r"(?<![A-Z0-9_])(?=[A-Z0-9_]*?(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY))"
_ENV_ASSIGNMENT = re.compile(rf"""({_ENV_NAME}[A-Z0-9_]*+=["']?)([^\s"']+)""")
_JSON_WORDS = ("token", "key", "secret", "passw")
#: A private key in PEM, whoever it belongs to: from its first line to the last line of
#: the same kind (see :func:`_private_keys`).
#: Found overlapping (a look-ahead): a line may start in the dashes that end another.
_PEM_BEGIN = re.compile(r"(?=-----BEGIN ([A-Z ]*)PRIVATE KEY-----)")
_PEM_END = re.compile(r"(?=-----END ([A-Z ]*)PRIVATE KEY-----)")
#: What a short secret must not touch to count as a word of its own: a letter, digit or
#: ``_``, unless that character ends an escape (``%2F``, ``\n``, a style code).
_SHORT_BEFORE = (
    r"(?<!\d[.,:])"  # nor the end of one ("1.5", "10:05")
    r"(?:(?<![A-Za-z0-9_])|(?<=%[0-9A-Fa-f]{2})|(?<=\\[nrtbfu\"\\/])"
    + "".join(f"|(?<=\\x1b\\[[0-9;]{{{n}}}m)" for n in range(0, 9))
    + ")"
)
#: The most characters that :data:`_SHORT_BEFORE` looks at before a short secret (a style
#: code ``\x1b[`` with eight digits and ``m``).
_SHORT_CONTEXT = 11
#: What a short secret's neighbours are made of when they keep it from standing alone.
_SHORT_JOINED = string.ascii_letters + string.digits + "_.,:"
#: The start of an escape that a cut at the end would split.
_SPLIT_ESCAPE = re.compile(r"(?:%[0-9A-Fa-f]{0,2}|\\|\x1b\[?[0-9;]*)\Z")
_SHORT_AFTER = r"(?![A-Za-z0-9_]|[.,:]\d)"  # not the start of a number ("5.25", "5:30")
_SHORT_START = re.compile(_SHORT_BEFORE)
#: The end of a stream's piece that may be the start of a credential pattern's match, in
#: parts: :meth:`Redactor.open_tail` takes the earliest start any part finds, and runs
#: the parts that need a word only where the text holds it (most lines hold none of
#: them: one pattern of all the parts, tried at every position, cost most of a masked
#: line). Where a part may only start at the start of a run of characters (a word, an
#: environment variable's name), a look-behind says so: the earliest start is always
#: there, and the other positions are not tried at all (each would scan the rest of its
#: run again, which made a long word cost its length squared).
#: What a word is made of (case-insensitively, as ``re`` reads ``(?i)[a-z0-9_-]``: with
#: the four letters outside ASCII that fold to one inside it).
_WORD_LETTERS = string.ascii_letters + "\u0130\u0131\u017f\u212a"
_WORD_CHARS = _WORD_LETTERS + string.digits + "_-"
_LETTER = re.compile(f"[{_WORD_LETTERS}]")
_OPEN_MARKS = re.compile(
    r"(?i)%[0-9A-Fa-f]?\Z|\\\Z"
    r"|\x1b\[?[0-9;?]*+\Z"  # an unfinished style code: its end decides what it takes
    r"|-{1,5}[A-Z ]*\Z|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*\Z"
)
#: The parts that end in a run of characters that may be long (a URL, a query's value, a
#: credential's value, a JSON value), each with the run's characters (``X*``): they are
#: not searched from every position of the hold (each position whose match scans to the
#: end of the run and fails there would scan it again: ``:`` repeated, ``;=`` repeated,
#: ``password=`` or ``-----BEGIN`` repeated, up to a tenth of a second a piece), only
#: from where a match can start given where the run that ends the text starts (see
#: _run_start).
_OPEN_PEM = re.compile(r"(?i)-----BEGIN[A-Z -]*\Z")
_PEM_RUN = re.compile(r"(?i)[A-Z -]*")
_OPEN_URL = re.compile(r"(?i):/?/?[^\s/?#'\"<>]*+\Z")
_URL_RUN = re.compile(r"(?i)[^\s/?#'\"<>]*")
_OPEN_QUERY = re.compile(r"(?i)[?&;][A-Za-z0-9_-]*+(?:=[^&#\s\"'<>]*+)?\Z")
_QUERY_RUN = re.compile(r"(?i)[^&#\s\"'<>]*")
_OPEN_BEARER = re.compile(r"(?i)bearer(?:\s+|%2?0?|\+)[A-Za-z0-9\-._~+/=%]*\Z")
_BEARER_RUN = re.compile(r"(?i)[A-Za-z0-9\-._~+/=%]*")
_OPEN_CREDENTIAL = re.compile(
    r"(?i)(?:(?:proxy-)?authorization|client-key-data|client-secret|refresh-token|"
    r"""id-token|password|passwd)["']?\s*(?:[:=]\s*["']?(?:[A-Za-z]++\s*+)?+"""
    r"""[^\s"',;}&]*+)?\Z"""  # possessive: a scheme word and its value, one way
)
_CREDENTIAL_RUN = re.compile(r"""(?i)[^\s"',;}&]*""")
#: The lengths of the names _OPEN_CREDENTIAL starts with.
_CREDENTIAL_NAMES = (6, 8, 13, 15, 19)
_OPEN_JSON_KEY = re.compile(
    r'(?i)"(?:token|access_?token|api_?key|secret|client_?secret|password|passwd)"'
    r'\s*(?::\s*(?:"(?:[^"\\]|\\.)*\\?)?)?\Z'
)
_OPEN_ENV_ENTRY = re.compile(r'(?i)"name"\s*(?::[^{}]*)?\Z')
_ENV_ENTRY_RUN = re.compile(r"(?i)[^{}]*")
_OPEN_ENV = re.compile(rf"""(?i){_ENV_NAME}[A-Z0-9_]*+=["']?[^\s"']*\Z""")
_ENV_VALUE_RUN = re.compile(r"""(?i)[^\s"']*""")
_ENV_NAME_RUN = re.compile(r"(?i)[A-Z0-9_]*")
_SPACE_RUN = re.compile(r"\s*")
_LETTER_RUN = re.compile(r"(?i)[A-Za-z]*")
_SPACE_OR_QUOTE_RUN = re.compile(r"""[\s"']*""")


def _run_start(text: str, rev: str, run: re.Pattern[str], end: int) -> int:
    """Where the run of ``run``'s characters that ends at ``end`` starts, not before the
    hold's floor: ``rev`` is the hold reversed, so the run is matched from its end, once
    (``X*`` up to the end, searched forwards, scans a long run from each of its positions).
    """
    m = run.match(rev, len(text) - end)
    return end if m is None else len(text) - m.end()  # never None: X* matches nothing


def _first(m: re.Match[str] | None) -> int | None:
    return None if m is None else m.start()


def _open_pem(text: str, floor: int, rev: str) -> int | None:
    # All of a match is in the run ("-----BEGIN" repeated is one run).
    b = _run_start(text, rev, _PEM_RUN, len(text))
    return _first(_OPEN_PEM.search(text, max(floor, b)))


def _open_url(text: str, floor: int, rev: str) -> int | None:
    # A match is ":", up to two "/" (outside the run), then the run to the end.
    b = _run_start(text, rev, _URL_RUN, len(text))
    return _first(_OPEN_URL.search(text, max(floor, b - 3)))


def _open_query(text: str, floor: int, rev: str) -> int | None:
    # All of a match but its first character ("&" is not a value's) is in the run.
    b = _run_start(text, rev, _QUERY_RUN, len(text))
    return _first(_OPEN_QUERY.search(text, max(floor, b - 1)))


def _open_bearer(text: str, floor: int, rev: str) -> int | None:
    # Inside the run (the scheme word, "%20" or "+", the value: all its characters), or
    # the scheme word right before the spaces that end just before the run.
    b = _run_start(text, rev, _BEARER_RUN, len(text))
    found = [m.start()] if (m := _OPEN_BEARER.search(text, max(floor, b))) else []
    spaces = _run_start(text, rev, _SPACE_RUN, b)
    if spaces < b and spaces - 6 >= floor and _OPEN_BEARER.match(text, spaces - 6):
        found.append(spaces - 6)
    return min(found, default=None)


def _open_credential(text: str, floor: int, rev: str) -> int | None:
    # Inside the run; or a name in one of the three runs before it: a match crosses at
    # most three stretches of spaces and quotes (after the name, after ":", after the
    # scheme word), and leaves a run before it only where the run ends with the name,
    # the name and ":", or the name, ":" and the scheme word.
    end = len(text)
    b = _run_start(text, rev, _CREDENTIAL_RUN, end)
    found = [m.start()] if (m := _OPEN_CREDENTIAL.search(text, max(floor, b))) else []
    start = b
    for _ in range(3):
        gap = _run_start(text, rev, _SPACE_OR_QUOTE_RUN, start)
        if gap == start or gap <= floor:
            break
        start = _run_start(text, rev, _CREDENTIAL_RUN, gap)
        ends = [gap]
        if text[gap - 1] in ":=":
            ends.append(gap - 1)
        letters = _run_start(text, rev, _LETTER_RUN, gap)
        if start < letters < gap and text[letters - 1] in ":=":
            ends.append(letters - 1)
        found += [
            at
            for name_end in ends
            for length in _CREDENTIAL_NAMES
            if (at := name_end - length) >= max(floor, start) and _OPEN_CREDENTIAL.match(text, at)
        ]
    return min(found, default=None)


def _open_json_key(text: str, floor: int, rev: str) -> int | None:
    return _first(_OPEN_JSON_KEY.search(text, floor))  # a value ends at a quote: linear


def _open_env_entry(text: str, floor: int, rev: str) -> int | None:
    # All of a match is in the run.
    b = _run_start(text, rev, _ENV_ENTRY_RUN, len(text))
    return _first(_OPEN_ENV_ENTRY.search(text, max(floor, b)))


def _open_env(text: str, floor: int, rev: str) -> int | None:
    # All of a match is in the run, or its quote ends the run before it: then the name
    # is the one that ends right before the "=" before that quote.
    b = _run_start(text, rev, _ENV_VALUE_RUN, len(text))
    found = [m.start()] if (m := _OPEN_ENV.search(text, max(floor, b))) else []
    if b - 2 >= floor and text[b - 1] in "\"'" and text[b - 2] == "=":
        name = _run_start(text, rev, _ENV_NAME_RUN, b - 2)
        if name < b - 2 and _OPEN_ENV.match(text, name):
            found.append(name)
    return min(found, default=None)


#: Up to this many characters of hold, the parts are searched from every position, all
#: the marks as one pattern: on a log's or a console's line (most are under a hundred
#: characters) that costs less than finding where each part may start, and its worst
#: case, the hold's length squared, is bounded by this length squared.
_SEARCHED_WHOLE = 256
_OPEN_MARKS_WHOLE = re.compile(
    "(?i)"
    + "|".join(
        p.pattern.removeprefix("(?i)") for p in (_OPEN_URL, _OPEN_QUERY, _OPEN_MARKS, _OPEN_PEM)
    )
)
_OPEN_NAMED_WHOLE: tuple[tuple[tuple[tuple[str, ...], ...], re.Pattern[str]], ...] = (
    ((("bearer",),), _OPEN_BEARER),
    ((("authorization", "client-", "-token", "passw"),), _OPEN_CREDENTIAL),
    (
        (('"',),),
        re.compile(
            "(?i)"
            + "|".join(p.pattern.removeprefix("(?i)") for p in (_OPEN_JSON_KEY, _OPEN_ENV_ENTRY))
        ),
    ),
    ((("token", "secret", "passw", "api_key", "access_key"), ("=",)), _OPEN_ENV),
)
#: Each part that needs words, with what it needs (lower case): one word of each group.
_OPEN_NAMED: tuple[
    tuple[tuple[tuple[str, ...], ...], Callable[[str, int, str], int | None]], ...
] = (
    ((("-----",),), _open_pem),
    (((":",),), _open_url),
    ((("?", "&", ";"),), _open_query),
    ((("bearer",),), _open_bearer),
    ((("authorization", "client-", "-token", "passw"),), _open_credential),
    ((('"',),), _open_json_key),
    ((('"',),), _open_env_entry),
    ((("token", "secret", "passw", "api_key", "access_key"), ("=",)), _open_env),
)


def _open_word(text: str, floor: int) -> int:
    """Where the word that ``text`` ends with starts (its first letter, or the quote
    before it), or the quote it ends with; ``len(text)`` when it ends with neither.

    Any word may start a name a credential follows (``authorization``, ``HF_TOKEN``):
    it is held back until what follows shows what it is. Found from the end, with
    ``rstrip``: a pattern searched from the start tries every position of every word.
    """
    end = len(text)
    quoted = end > floor and text[end - 1] in "\"'"
    if quoted:
        end -= 1
    run = max(floor, len(text[:end].rstrip(_WORD_CHARS)))
    if (m := _LETTER.search(text, run, end)) is not None:
        start = m.start()
        return start - 1 if start == run > floor and text[run - 1] in "\"'" else start
    return end if quoted else len(text)


def _joined_start(text: str, end: int, floor: int) -> int:
    """Where the run of :data:`_SHORT_JOINED` characters that ends at ``end`` starts, not
    before ``floor``: found a few characters at a time, so that walking back over many
    short runs costs what it walks, not the text's length at each step."""
    start = end
    while start > floor:
        lo = max(floor, start - 64)
        kept = text[lo:start].rstrip(_SHORT_JOINED)
        if kept:
            return lo + len(kept)
        start = lo
    return start


def _strip_gaps(text: str, gaps: re.Pattern[str] = _GAP_OR_OPEN) -> tuple[str, list[int]]:
    """``text`` without its gaps, and where each character left came from."""
    kept: list[str] = []
    where: list[int] = []
    at = 0
    for m in gaps.finditer(text):
        kept.append(text[at : m.start()])
        where.extend(range(at, m.start()))
        at = m.end()
    kept.append(text[at:])
    where.extend(range(at, len(text)))
    return "".join(kept), where


def _gaps_of(text: str) -> tuple[re.Pattern[str], ...]:
    """The ways to leave the gaps out of ``text``: one, unless it holds an escape."""
    return (_GAP_OR_OPEN, _STYLE_GAP_OR_OPEN) if "\x1b" in text else (_GAP_OR_OPEN,)


def _prefix_ends(forms: Iterable[str]) -> dict[str, list[tuple[int, str]]]:
    """For each character, ``(k, form)`` for each prefix ``form[:k]`` that ends with it,
    longest first: a text can end with the start of a form only where its last
    character allows, so a secret of a thousand characters is checked at the few lengths
    that character gives, not at every length (and not with a pattern nested a thousand
    deep, which ``re`` cannot compile), and a dozen forms cost one look-up, not a dozen."""
    ends: dict[str, list[tuple[int, str]]] = {}
    for form in forms:
        for k in range(len(form), 0, -1):
            ends.setdefault(form[k - 1], []).append((k, form))
    for prefixes in ends.values():
        prefixes.sort(key=lambda entry: entry[0], reverse=True)
    return ends


def _longest_prefix(text: str, ends: dict[str, list[tuple[int, str]]]) -> int:
    """The length of the longest prefix (of any form in ``ends``) that ``text`` ends with,
    0 if none."""
    if text:
        for k, form in ends.get(text[-1], ()):
            if k <= len(text) and form.startswith(text[-k:]):
                return k
    return 0


def _base64_fragments(value: str) -> set[str]:
    """The base64 characters that only ``value`` decides, at each of the three offsets
    it may start at inside a longer encoded text (the way a Secret's data or a Basic
    credential carries it)."""
    data = value.encode("utf-8")
    fragments = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        start = -(-offset * 8 // 6)  # the first character no earlier byte shares
        end = (offset + len(data)) * 8 // 6  # the last one no later byte shares
        fragment = encoded[start:end]
        if len(fragment) >= MIN_BASE64_FRAGMENT:
            fragments.add(fragment)
    return fragments


def _short_base64(value: str) -> set[str]:
    """A short value's base64 as a whole (padded, as a Secret's data carries it; also of
    the value with the newline ``echo | base64`` adds): masked where it stands as a word
    of its own, never as a fragment (see the module's docstring)."""
    data = value.encode("utf-8")
    return {base64.b64encode(data).decode("ascii"), base64.b64encode(data + b"\n").decode("ascii")}


def _forms(value: str) -> set[str]:
    """The ways a peer may quote ``value``: as is, URL-encoded, JSON-escaped."""
    escaped = json.dumps(value)[1:-1]
    return {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        escaped,
        escaped.replace("/", "\\/"),
        json.dumps(value, ensure_ascii=False)[1:-1],
    }


class Redactor:
    """Masks configured secret values and any credential-shaped value in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._long: set[str] = set()
        self._short: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        #: The short forms where they stand as words, and the same forms anywhere: a
        #: quick test first, for the first pattern's look-behinds are tried at every
        #: position of every text. One attribute: a reader never sees one without the other.
        self._short_patterns: tuple[re.Pattern[str], re.Pattern[str]] | None = None
        #: The prefixes of the long forms (without gaps) and of the short ones, by their
        #: last character (see _prefix_ends).
        self._open_long: dict[str, list[tuple[int, str]]] = {}
        self._open_short: dict[str, list[tuple[int, str]]] = {}
        #: The short values a caller of :meth:`register` was told about.
        self._warned: set[str] = set()
        #: Changed after every change of what is masked (see :attr:`generation`).
        self._generation = 0
        _REDACTORS.add(self)  # a forked child renews its lock (see _after_fork_in_child)
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> bool:
        """Mask ``secret`` from now on, in each form a peer may quote it.

        Returns False for a value shorter than :data:`MIN_SECRET_LENGTH`: it is masked
        only where it stands as a word of its own, and the caller should say so.
        """
        if secret is None:
            return True
        value = secret.strip()
        if not value:
            return True
        short = len(value) < MIN_SECRET_LENGTH
        with self._lock:
            if short:
                quoted = {value, *_short_base64(value)}
                forms = {f for v in quoted for f in _forms(v) if f}
                if forms <= self._short:
                    return False
                self._short |= forms
            else:
                forms = _forms(value) | _base64_fragments(value)
                if forms <= self._long:
                    return True
                self._long |= forms
            self._compile()
            self._generation += 1  # after the patterns: a reader of it masks with them
        return not short

    def register(self, secret: str | None, name: str, warn: Callable[[str], None]) -> bool:
        """:meth:`add`, and a warning through ``warn`` when the value is too short to be
        masked everywhere: once for each value, whoever registers it first (the command
        warns before the run starts; a library user's flow that registers the same value
        later says nothing more, one that registers it first says it in its own log).

        The warning names the value by ``name`` ("HF_TOKEN"), never by itself.
        """
        if self.add(secret) or secret is None:
            return True
        value = secret.strip()
        with self._lock:
            if value in self._warned:
                return False
            self._warned.add(value)
        warn(
            f"warning: {name} is shorter than {MIN_SECRET_LENGTH} characters: reports mask it "
            "only where it stands as a word of its own, not inside longer words, and a "
            "credential that short is easy to guess; use a longer one"
        )
        return False

    def _compile(self) -> None:
        # Longest first, so that a secret containing another is masked whole. Registered
        # values are looked for in the text with its gaps left out (a pattern with a gap
        # between each character costs seconds to compile for a thousand-character
        # token); their spans are then masked in the text as it is.
        stripped = sorted(
            {f for f in (_strip_gaps(form)[0] for form in self._long) if f},
            key=len,
            reverse=True,
        )
        shorts = sorted(self._short, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(form) for form in stripped)) if stripped else None
        )
        self._short_patterns = (
            (
                re.compile(f"{_SHORT_BEFORE}(?:{'|'.join(map(re.escape, shorts))}){_SHORT_AFTER}"),
                re.compile("|".join(map(re.escape, shorts))),
            )
            if shorts
            else None
        )
        self._open_long = _prefix_ends(stripped)
        self._open_short = _prefix_ends(shorts)

    @property
    def has_short(self) -> bool:
        """Whether a value shorter than :data:`MIN_SECRET_LENGTH` is registered."""
        return self._short_patterns is not None

    @property
    def secrets(self) -> int:
        """How many values (with their encoded forms) are masked."""
        return len(self._long) + len(self._short)

    @property
    def generation(self) -> int:
        """Changes whenever what is masked does (a value added, :meth:`clear`): text
        masked while it had one value is masked the same while it keeps it. Not
        :attr:`secrets`: after :meth:`clear` and a value of the same shape the count is
        the same and the values are not, and the count grows before the patterns do."""
        return self._generation

    def clear(self) -> None:
        """Forget every registered value (for tests; the patterns stay)."""
        with self._lock:
            self._long.clear()
            self._short.clear()
            self._warned.clear()
            self._pattern = self._short_patterns = None
            self._open_long, self._open_short = {}, {}
            self._generation += 1

    def __call__(self, text: str) -> str:
        return self.redact(text)

    def redact(self, text: str) -> str:
        if not text:
            return text
        spans = self._registered(text)
        if spans:
            parts = []
            at = 0
            for start, end in spans:
                parts += [text[at:start], MASK]
                at = end
            text = "".join([*parts, text[at:]])
        short = self._short_patterns
        if short is not None and short[1].search(text) is not None:
            text = short[0].sub(MASK, text)
        # Each pattern only where its word is: most lines hold none, and the run log and
        # the console pass every line through here.
        low = text.lower()
        for applies, pattern, mask in _CREDENTIALS:
            if applies(text, low):
                text = pattern.sub(mask, text)
        if "PRIVATE KEY" in text:
            text = _mask_private_keys(text)
        return text

    def _registered(self, text: str) -> list[tuple[int, int]]:
        """Where registered values (long ones) are in ``text``, gaps inside them included."""
        pattern = self._pattern
        if pattern is None:
            return []
        # As written (an escape right before a value must not take its first character
        # for the escape's), and with the gaps left out (a value split by styling).
        spans = [m.span() for m in pattern.finditer(text)]
        for gaps in _gaps_of(text):
            if pattern.search(gaps.sub("", text)) is not None:
                stripped, where = _strip_gaps(text, gaps)
                spans += [
                    (where[m.start()], where[m.end() - 1] + 1) for m in pattern.finditer(stripped)
                ]
        merged: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Every stretch of ``text`` that :meth:`redact` masks, or whose match holds what it
        masks, in order of start."""
        found = self._registered(text)
        short = self._short_patterns
        if short is not None and short[1].search(text) is not None:
            found += [m.span() for m in short[0].finditer(text)]
        for pattern in _credentials_in(text):
            found += [m.span() for m in pattern.finditer(text)]
        if "PRIVATE KEY" in text:
            found += [(start, end) for start, _, _, end in _private_keys(text)]
        return sorted(found)

    def redact_bytes(self, data: bytes) -> bytes:
        return self.redact(data.decode("utf-8", "replace")).encode("utf-8")

    def redact_value(self, value: Any) -> Any:
        """``value`` (JSON-shaped: dicts, lists, strings, numbers) with every string in it
        masked: a report stays valid JSON whatever a secret looks like."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact(str(k)): self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(v) for v in value]
        return value

    def open_tail(self, text: str) -> int:
        """Where the part of ``text`` that may be an unfinished secret starts (``len(text)``
        when none may): the first characters of a registered value, a ``Bearer`` or
        ``Authorization`` whose value may go on, a URL or query not yet ended."""
        if not text:
            return 0
        floor = max(0, len(text) - STREAM_HOLD_MAX)
        starts = [len(text)]
        starts.append(_open_word(text, floor))
        low = text.lower()
        if len(text) - floor <= _SEARCHED_WHOLE:
            if (m := _OPEN_MARKS_WHOLE.search(text, floor)) is not None:
                starts.append(m.start())
            for needs, pattern in _OPEN_NAMED_WHOLE:
                if all(any(word in low for word in words) for words in needs) and (
                    m := pattern.search(text, floor)
                ):
                    starts.append(m.start())
        else:
            if (m := _OPEN_MARKS.search(text, floor)) is not None:
                starts.append(m.start())
            rev = text[floor:][::-1]
            for needs, find in _OPEN_NAMED:
                if all(any(word in low for word in words) for words in needs) and (
                    (start := find(text, floor, rev)) is not None
                ):
                    starts.append(start)
        if self._open_long:
            # With its gaps left out (a value split by styling or wrapping), and as
            # written (see _registered). The map back to the text is made only when a
            # prefix is there: most pieces end with none.
            tail = text[floor:]
            for gaps in _gaps_of(tail):
                k = _longest_prefix(gaps.sub("", tail), self._open_long)
                if k:
                    stripped, where = _strip_gaps(tail, gaps)
                    starts.append(floor + where[len(stripped) - k])
            k = _longest_prefix(text, self._open_long)
            if k:
                starts.append(len(text) - k)
        if self._open_short and text[-1] in self._open_short:
            # Each form's longest prefix there, if it starts a word of its own.
            seen: set[str] = set()
            for k, form in self._open_short[text[-1]]:
                if form not in seen and k <= len(text) and form.startswith(text[-k:]):
                    seen.add(form)
                    if _SHORT_START.match(text, len(text) - k):
                        starts.append(len(text) - k)
        return min(starts)

    def short_form_before(self, text: str, at: int) -> int | None:
        """Where a short value's form that ends at ``at`` starts, if one does: whether it
        is masked there depends on the character after it."""
        if at > 0:
            for k, form in self._open_short.get(text[at - 1], ()):
                if k == len(form) and text.startswith(form, at - k):
                    return at - k
        return None

    def masker(self) -> StreamMasker:
        """A masker for text that arrives in pieces (see :class:`StreamMasker`)."""
        return StreamMasker(self)

    def stream(self, target: IO[str], *, hold: float = STREAM_FLUSH_HOLD) -> RedactingStream:
        """A text stream that writes to ``target`` through this redactor (``hold``: see
        :class:`RedactingStream`)."""
        return RedactingStream(target, self, hold=hold)


def _credentials_in(text: str) -> list[re.Pattern[str]]:
    """The credential patterns that may match ``text``: those whose words it holds."""
    low = text.lower()
    return [pattern for applies, pattern, _ in _CREDENTIALS if applies(text, low)]


def _private_keys(text: str) -> list[tuple[int, int, int, int]]:
    """Each private key in ``text``: where its first line starts and ends, where its last
    line starts and ends. From a first line to the next last line of the same kind, the
    leftmost first, as the pattern ``BEGIN(.*?)END`` would find them.

    Found with one pass for each kind of line: that pattern looks, from every first line,
    for its last line, and tries the rest of the text for each first line that has none
    (a peer's line of repeated first lines cost minutes).
    """
    ends: dict[str, list[tuple[int, int]]] = {}
    for m in _PEM_END.finditer(text):
        end = m.start() + len(f"-----END {m.group(1)}PRIVATE KEY-----")
        ends.setdefault(m.group(1), []).append((m.start(), end))
    keys: list[tuple[int, int, int, int]] = []
    at = 0
    for begin in _PEM_BEGIN.finditer(text):
        body = begin.start() + len(f"-----BEGIN {begin.group(1)}PRIVATE KEY-----")
        closing = ends.get(begin.group(1), [])
        i = bisect.bisect_left(closing, (body, 0))
        if begin.start() >= at and i < len(closing):
            keys.append((begin.start(), body, *closing[i]))
            at = closing[i][1]
    return keys


def _mask_private_keys(text: str) -> str:
    parts, at = [], 0
    for _, body, end_line, end in _private_keys(text):
        parts += [text[at:body], MASK, text[end_line:end]]
        at = end
    return "".join([*parts, text[at:]])


def _mask_userinfo(m: re.Match[str]) -> str:
    if m.group(3) is not None:
        return f"{m.group(1)}{m.group(2)}:{MASK}@"
    return f"{m.group(1)}{MASK}@"


def _keep_name(m: re.Match[str]) -> str:
    return f"{m.group(1)}{MASK}"


#: Each credential pattern, in the order :meth:`Redactor.redact` applies them, with what
#: a text must hold for it to match (given the text and the text in lower case) and how
#: a match is masked. One table for masking and for :meth:`Redactor.spans`: a stream
#: keeps a match that a piece's end cuts whole only if both know the pattern.
_CREDENTIALS: tuple[
    tuple[Callable[[str, str], bool], re.Pattern[str], Callable[[re.Match[str]], str]], ...
] = (
    (lambda _, low: "bearer" in low, _BEARER, lambda m: f"{m.group(1)}{m.group(2)}{MASK}"),
    (lambda _, low: "authorization" in low, _AUTHORIZATION, _keep_name),
    (lambda text, _: "@" in text, _USERINFO, _mask_userinfo),
    (lambda text, _: "=" in text, _QUERY_CREDENTIAL, _keep_name),
    (lambda _, low: any(word in low for word in _KEYED_WORDS), _KEYED_CREDENTIAL, _keep_name),
    (
        lambda text, low: '"' in text and any(word in low for word in _JSON_WORDS),
        _JSON_CREDENTIAL,
        _keep_name,
    ),
    (lambda _, low: '"value"' in low, _ENV_ENTRY, _keep_name),
    (lambda text, _: "=" in text, _ENV_ASSIGNMENT, _keep_name),
)


class StreamMasker:
    """Masks text that arrives in pieces, so that what it returns can be written at once.

    :meth:`feed` returns the masked text that is safe to write now and keeps back the
    end that may be the start of a secret; :meth:`finish` returns what was kept back,
    masked. A secret split across two pieces is masked whole; nothing it returns holds
    a registered value or a credential pattern's value, even if the process is killed
    before :meth:`finish` (what was kept back is then lost, never leaked).
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def pending(self) -> int:
        """How many characters are kept back."""
        return len(self._pending)

    def feed(self, text: str) -> str:
        text = self._pending + text
        cut = tail = self._redactor.open_tail(text)
        if self._redactor.has_short:
            # Whether a short secret is masked depends on what stands around it: before
            # it ("%3D", a style code, "1." of a number) and after it (a letter, ".5").
            # What is held keeps that much in front of it, and no piece handed out ends
            # in a word or number that the next piece may go on with: each short value is
            # judged as it stands in the whole text.
            # Not walked back past the hold's bound: a longer hold is handed out as it
            # stands below, so going further would change nothing and, on a line of
            # escapes ("%%%%..."), cost a step per character.
            floor = max(0, len(text) - STREAM_HOLD_MAX - 1)
            cut = min(cut, _joined_start(text, len(text), floor))
            if floor < cut < len(text):
                cut = max(floor, cut - _SHORT_CONTEXT)
                while cut > floor:  # nor in an escape ("%1|1k3y" must stay "%11k3y")
                    cut = _joined_start(text, cut, floor)
                    split = _SPLIT_ESCAPE.search(text, max(0, cut - _SHORT_CONTEXT), cut)
                    if split is not None and split.start() != cut:
                        cut = split.start()
                    elif (form := self._redactor.short_form_before(text, cut)) is not None:
                        cut = form  # nor right after one ("azN5Cg==|a": the "a" decides)
                    else:
                        break
        # A whole match that starts before the cut and ends after it goes with the rest.
        if cut < len(text):
            spans = self._redactor.spans(text)
            moved = True
            while moved:  # matches of different patterns may overlap
                moved = False
                for start, end in spans:
                    if start < cut < end:
                        cut, moved = start, True
        if len(text) - cut > STREAM_HOLD_MAX:
            # A bounded hold: something that long is masked as it stands, up to the end
            # that may start a secret (never further than the bound back), still held:
            # a registered value that a long credential-shaped run ends with, split by
            # the read, must not have its first part masked with the run and its rest
            # handed out on its own.
            cut = tail if len(text) - tail <= STREAM_HOLD_MAX else len(text)
        self._pending = text[cut:]
        return self._redactor.redact(text[:cut])

    def feed_bytes(self, data: bytes) -> bytes:
        """:meth:`feed` for bytes (UTF-8; a character split between pieces is kept whole)."""
        return self.feed(self._decoder.decode(data)).encode("utf-8")

    def finish(self) -> str:
        text = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return self._redactor.redact(text)


class RedactingStream:
    """A text stream (for ``rich.Console(file=...)``, ``print(file=...)``) that masks
    secrets in everything written through it. Anything else is the target's.

    Writes pass a :class:`StreamMasker`: ``print(a, b)`` writes in pieces, and a secret
    split between them is masked whole. So do separately flushed writes: ``rich`` flushes
    after every ``print``, and a secret printed in two (``print(a, end="")``, then
    ``print(b)``) must come out masked too. :meth:`flush` therefore flushes what is safe
    to show and keeps back the end that may start a secret (the masker's hold: the first
    characters of a registered value, an unfinished ``Bearer`` value or word, never
    more than :data:`STREAM_HOLD_MAX` characters) until one of:

    - the next write, which shows what it is (masked whole if it completes a secret);
    - ``hold`` seconds (:data:`STREAM_FLUSH_HOLD` unless given) after that flush with no
      write in between (one thread, shared by every stream, writes it out, so a prompt
      or a live view's last word is never held for long);
    - :meth:`release`, or the interpreter's exit (an ``atexit`` hook).

    What is guaranteed: a secret split across writes, flushed or not, is masked whole
    when its rest is written within ``hold`` seconds of the flush that followed its
    start (a console writes the parts of one message microseconds apart).
    What is not: a secret whose rest comes later than that; holding a possible start for
    as long as it takes would hold every word a line ends with, indefinitely. A process
    killed while something is held loses it, never shows it.

    **Bytes.** A library user's code, or a library it calls, may write bytes to
    ``sys.stdout.buffer``: :attr:`buffer` is the target's binary layer behind the same
    masker, in the same order as the text writes. Bytes are decoded with the target's
    encoding as they come (a character split between two writes is kept whole); bytes
    that do not decode are kept as they are (``surrogateescape``) and come out as they
    went in, as they would through the plain buffer. Below that nothing is masked: a
    write to the file descriptor (``os.write(1, ...)``, ``buffer.raw``, a child process
    that inherits it) never passes through Python's streams. Masking it would mean
    replacing the process's descriptor with a pipe and a copying thread, which a library
    must not do to the program that imports it; the command's own children write into
    pipes that it masks.
    """

    def __init__(
        self, target: IO[str], redactor: Redactor, *, hold: float = STREAM_FLUSH_HOLD
    ) -> None:
        self._target = target
        self._masker = redactor.masker()
        self._hold = hold
        self._lock = threading.Lock()
        #: The release that :data:`_releaser` will make for the last flush, if it is still
        #: to come: a write (or a release) since that flush leaves it nothing of its own.
        self._armed: int | None = None
        #: The decoder of what is written to :attr:`buffer`, once something is.
        self._decoder: codecs.IncrementalDecoder | None = None
        self._buffer: _RedactingBuffer | None = None
        _STREAMS.add(self)  # what it holds at the interpreter's exit is written out then

    def write(self, text: str) -> int:
        with self._lock:
            self._armed = None
            self._emit(self._masker.feed(text))
        return len(text)

    @property
    def buffer(self) -> _RedactingBuffer:
        """The target's ``buffer``, masked as the text is (see the class's docstring)."""
        if self._buffer is None:
            self._buffer = _RedactingBuffer(self, cast(TextIO, self._target).buffer)
        return self._buffer

    def _write_bytes(self, data: bytes) -> None:
        with self._lock:
            self._armed = None
            if self._decoder is None:
                encoding = getattr(self._target, "encoding", None) or "utf-8"
                self._decoder = codecs.getincrementaldecoder(encoding)("surrogateescape")
            self._emit(self._masker.feed(self._decoder.decode(data)))

    def _emit(self, masked: str) -> None:
        if not masked:
            return
        try:
            self._target.write(masked)
        except UnicodeEncodeError:
            if self._decoder is None or not _has_surrogates(masked):
                raise
            # Bytes that did not decode (kept as lone surrogates): written out as they
            # came in, behind what the text layer holds.
            encoding = getattr(self._target, "encoding", None) or "utf-8"
            self._target.flush()
            cast(TextIO, self._target).buffer.write(masked.encode(encoding, "surrogateescape"))

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush all but what may start a secret (see the class's docstring)."""
        with self._lock:
            # Armed already (no write since the last flush): that release comes sooner.
            if self._masker.pending and self._armed is None:
                self._armed = _releaser.arm(self, self._hold)
        self._target.flush()

    def release(self) -> None:
        """Write out what is kept back, masked, and flush: the stream's end."""
        with self._lock:
            self._armed = None
            self._write_held()
        self._target.flush()

    def _release_held(self, armed: int) -> None:
        if not self._lock.acquire(blocking=False):
            # Taken: by a write (or a release), which leaves this release nothing to do,
            # and may hold it for as long as its target blocks (a full pipe); or by a
            # flush, for a moment. Waiting for it would hold up every other stream's
            # release: the release is tried again later, if it still has something to do.
            if armed == self._armed:
                _releaser.again(self, armed, self._hold)
            return
        try:
            if armed != self._armed:  # a write came since: a later flush decides
                return
            self._armed = None
            self._write_held()
            self._target.flush()
        except (OSError, ValueError):
            # The target was closed under us: there is nothing left to write to, and a
            # traceback from the releasing thread would be one more write to a console.
            pass
        finally:
            self._lock.release()

    def _write_held(self) -> None:
        if self._decoder is not None:  # a character's first bytes, never completed
            self._emit(self._masker.feed(self._decoder.decode(b"", final=True)))
            self._decoder.reset()
        self._emit(self._masker.finish())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


class _RedactingBuffer:
    """A :class:`RedactingStream`'s binary layer: bytes written pass its masker."""

    def __init__(self, stream: RedactingStream, target: IO[bytes]) -> None:
        self._stream = stream
        self._target = target

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._stream._write_bytes(bytes(data))
        return memoryview(data).nbytes

    def writelines(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _Releaser:
    """One thread that writes out what streams held at a flush, when their hold is up.

    A timer thread for each flush that held something cost a thread start (and, under
    load, a thread alive) per console line that ended in a word. One long-lived thread
    serves every stream: it sleeps until the earliest release that is due, and a
    release that a write made pointless is skipped when its time comes. It is started
    on the first flush that holds something (again in a forked child, which has none).
    A daemon: the ``atexit`` hook writes out what is held at exit.
    """

    def __init__(self) -> None:
        self._ready = threading.Condition(threading.Lock())
        #: (when, which release, the stream): the earliest first.
        self._due: list[tuple[float, int, weakref.ref[RedactingStream]]] = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, stream: RedactingStream, hold: float) -> int:
        """Have ``stream`` release what it holds in ``hold`` seconds; which release it is."""
        armed = next(self._count)
        self.again(stream, armed, hold)
        return armed

    def again(self, stream: RedactingStream, armed: int, hold: float) -> None:
        """Have ``stream`` make its release ``armed`` in ``hold`` seconds."""
        with self._ready:
            heapq.heappush(self._due, (time.monotonic() + hold, armed, weakref.ref(stream)))
            if self._due[0][1] == armed:  # sooner than what the thread sleeps for
                self._ready.notify()
            self._start()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="redacting-stream-release", daemon=True
            )
            self._thread.start()

    def _after_fork(self, streams: Iterable[RedactingStream]) -> None:
        # A forked child has the parent's streams and what they hold, not its thread; the
        # lock may have been held by a thread of the parent's. That thread may also have
        # taken a release off the list and not made it yet (it waited for the stream):
        # the stream still expects it, and it is due.
        self._ready = threading.Condition(threading.Lock())
        self._thread = None
        listed = {armed for _, armed, _ in self._due}
        now = time.monotonic()
        for stream in streams:
            if stream._armed is not None and stream._armed not in listed:
                heapq.heappush(self._due, (now, stream._armed, weakref.ref(stream)))
        if self._due:
            self._start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._due or (wait := self._due[0][0] - time.monotonic()) > 0:
                    self._ready.wait(wait if self._due else None)
                _, armed, ref = heapq.heappop(self._due)
            stream = ref()
            if stream is not None:
                stream._release_held(armed)


_releaser = _Releaser()

#: Every stream: what one keeps back at the interpreter's exit, flushed or not, is written
#: out then, as a plain text stream's buffer would be.
_STREAMS: weakref.WeakSet[RedactingStream] = weakref.WeakSet()
#: Every redactor, for the same reason.
_REDACTORS: weakref.WeakSet[Redactor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent's inside Redactor.add when the fork copied its lock had put
    # the value in the redactor's sets and not yet built the patterns that mask it: the
    # child would show the value and wait for ever at its own first add.
    for each in list(_REDACTORS):
        if each._lock.locked():
            each._lock = threading.Lock()
            each._compile()
            each._generation += 1
    # A thread of the parent's (a writer, the releasing thread) may have held a stream's
    # lock when the fork copied it: the child has no such thread, and the copy would
    # stay held for ever, the child's first write to the stream waiting on it. What the
    # stream holds is consistent whatever that thread was doing (the masker's hold is
    # replaced in one assignment); its write was the parent's, the parent makes it.
    streams = list(_STREAMS)
    for stream in streams:
        stream._lock = threading.Lock()
    _releaser._after_fork(streams)


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _release_all() -> None:
    for stream in list(_STREAMS):
        try:
            stream.release()
        except (OSError, ValueError):  # a target closed before us: nothing to write to
            pass


#: The process's redactor: every sink writes through it. Register a secret with
#: ``redactor.add(value)`` (or :meth:`Redactor.register`, which warns about a short one)
#: as soon as it is read, before anything can print it.
redactor = Redactor()


def redact(text: str) -> str:
    """``text`` with every secret the process knows masked (see :data:`redactor`)."""
    return redactor.redact(text)
