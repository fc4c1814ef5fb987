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
masked as a whole and nothing written to disk was ever unmasked.
"""

from __future__ import annotations

import base64
import codecs
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import IO, Any

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

#: What may separate the characters of a secret on a terminal: a style escape, a line
#: break with the next line's indentation, a table border.
_GAP = r"(?:\x1b\[[0-9;?]*[A-Za-z]|[ \t\r\n│┃║|])*"
#: One gap, or an escape a stream's piece ends in the middle of: what :meth:`open_tail`
#: leaves out when it compares the end of a piece with the start of a secret.
_GAP_OR_OPEN = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\[?[0-9;?]*\Z|[ \t\r\n│┃║|]")
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
    r'(?i)("name"\s*:\s*"[\w.-]*(?:token|secret|password|passwd|api_?key|access_?key|'
    r'credentials?)[\w.-]*"\s*,\s*"value"\s*:\s*")((?:[^"\\]|\\.)+)(?=")'
)
#: An environment assignment whose name says credential (``HF_TOKEN=...``): a pod that
#: logs its environment.
_ENV_ASSIGNMENT = re.compile(
    r"""([A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)[A-Z0-9_]*=["']?)"""
    r"""([^\s"']+)"""
)
_JSON_WORDS = ("token", "key", "secret", "passw")
#: A private key in PEM, whoever it belongs to.
_PRIVATE_KEY = re.compile(
    r"(-----BEGIN ([A-Z ]*)PRIVATE KEY-----)[\s\S]*?(-----END \2PRIVATE KEY-----)"
)
_CREDENTIALS = (
    _BEARER,
    _AUTHORIZATION,
    _USERINFO,
    _QUERY_CREDENTIAL,
    _KEYED_CREDENTIAL,
    _PRIVATE_KEY,
    _JSON_CREDENTIAL,
    _ENV_ENTRY,
    _ENV_ASSIGNMENT,
)
#: What a short secret must not touch to count as a word of its own: a letter, digit or
#: ``_``, unless that character ends an escape (``%2F``, ``\n``, a style code).
_SHORT_BEFORE = (
    r"(?<!\d[.,:])"  # nor the end of one ("1.5", "10:05")
    r"(?:(?<![A-Za-z0-9_])|(?<=%[0-9A-Fa-f]{2})|(?<=\\[nrtbfu\"\\/])"
    + "".join(f"|(?<=\\x1b\\[[0-9;]{{{n}}}m)" for n in range(0, 9))
    + ")"
)
_SHORT_AFTER = r"(?![A-Za-z0-9_]|[.,:]\d)"  # not the start of a number ("5.25", "5:30")
_SHORT_START = re.compile(_SHORT_BEFORE)
#: The end of a stream's piece that may be the start of a credential pattern's match.
_OPEN_CREDENTIAL = re.compile(
    r"(?i)(?:"
    r"[\"']?(?:[a-z][a-z0-9_-]*[\"']?)?\Z"  # a word that may start one of the names below
    r"|bearer(?:\s+|%2?0?|\+)[A-Za-z0-9\-._~+/=%]*\Z"
    r"|(?:(?:proxy-)?authorization|client-key-data|client-secret|refresh-token|id-token|"
    r"""password|passwd)["']?\s*(?:[:=]\s*["']?(?:[A-Za-z]+\s*)?[^\s"',;}&]*)?\Z"""
    r"|:/?/?[^\s/?#'\"<>]*\Z"
    r"|[?&;][A-Za-z0-9_-]*(?:=[^&#\s\"'<>]*)?\Z"
    r"|%[0-9A-Fa-f]?\Z|\\\Z"
    r"|-{1,5}[A-Z ]*\Z|-----BEGIN[A-Z -]*\Z|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*\Z"
    r'|"(?:token|access_?token|api_?key|secret|client_?secret|password|passwd)"'
    r'\s*(?::\s*(?:"(?:[^"\\]|\\.)*\\?)?)?\Z'
    r'|"name"\s*(?::[^{}]*)?\Z'
    r"""|[A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)[A-Z0-9_]*=["']?[^\s"']*\Z"""
    r")"
)


def _strip_gaps(text: str) -> tuple[str, list[int]]:
    """``text`` without its gaps, and where each character left came from."""
    kept: list[str] = []
    where: list[int] = []
    at = 0
    for m in _GAP_OR_OPEN.finditer(text):
        kept.append(text[at : m.start()])
        where.extend(range(at, m.start()))
        at = m.end()
    kept.append(text[at:])
    where.extend(range(at, len(text)))
    return "".join(kept), where


def _longest_start(text: str, form: str, ends: dict[str, list[int]]) -> int | None:
    """The length of the longest prefix of ``form`` that ``text`` ends with, if any.

    ``ends`` lists, for each character, the prefix lengths that end with it: a secret of
    a thousand characters is checked at the few places its last character allows, not
    at every length (and not with a pattern nested a thousand deep, which ``re`` cannot
    compile).
    """
    if not text:
        return None
    for k in ends.get(text[-1], ()):
        if k <= len(text) and text.endswith(form[:k]):
            return k
    return None


def _ends(form: str) -> dict[str, list[int]]:
    ends: dict[str, list[int]] = {}
    for k in range(len(form), 0, -1):  # longest first
        ends.setdefault(form[k - 1], []).append(k)
    return ends


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
        self._short_pattern: re.Pattern[str] | None = None
        #: For each form: the form without gaps and its prefix lengths by last character.
        self._open_long: list[tuple[str, dict[str, list[int]]]] = []
        self._open_short: list[tuple[str, dict[str, list[int]]]] = []
        #: The short values a caller of :meth:`register` was told about.
        self._warned: set[str] = set()
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
        self._short_pattern = (
            re.compile(f"{_SHORT_BEFORE}(?:{'|'.join(re.escape(f) for f in shorts)}){_SHORT_AFTER}")
            if shorts
            else None
        )
        self._open_long = [(form, _ends(form)) for form in stripped]
        self._open_short = [(form, _ends(form)) for form in shorts]

    @property
    def secrets(self) -> int:
        """How many values (with their encoded forms) are masked."""
        return len(self._long) + len(self._short)

    def clear(self) -> None:
        """Forget every registered value (for tests; the patterns stay)."""
        with self._lock:
            self._long.clear()
            self._short.clear()
            self._warned.clear()
            self._pattern = self._short_pattern = None
            self._open_long, self._open_short = [], []

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
        if self._short_pattern is not None:
            text = self._short_pattern.sub(MASK, text)
        # Each pattern only where its word is: most lines hold none, and the run log and
        # the console pass every line through here.
        low = text.lower()
        if "bearer" in low:
            text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
        if "authorization" in low:
            text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{MASK}", text)
        if "@" in text:
            text = _USERINFO.sub(_mask_userinfo, text)
        if "=" in text:
            text = _QUERY_CREDENTIAL.sub(lambda m: f"{m.group(1)}{MASK}", text)
        if any(word in low for word in _KEYED_WORDS):
            text = _KEYED_CREDENTIAL.sub(lambda m: f"{m.group(1)}{MASK}", text)
        if '"' in text and any(word in low for word in _JSON_WORDS):
            text = _JSON_CREDENTIAL.sub(lambda m: f"{m.group(1)}{MASK}", text)
            if '"value"' in low:
                text = _ENV_ENTRY.sub(lambda m: f"{m.group(1)}{MASK}", text)
        if "=" in text:
            text = _ENV_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{MASK}", text)
        if "PRIVATE KEY" in text:
            text = _PRIVATE_KEY.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
        return text

    def _registered(self, text: str) -> list[tuple[int, int]]:
        """Where registered values (long ones) are in ``text``, gaps inside them included."""
        pattern = self._pattern
        if pattern is None:
            return []
        # As written (an escape right before a value must not take its first character
        # for the escape's), and with the gaps left out (a value split by styling).
        spans = [m.span() for m in pattern.finditer(text)]
        if pattern.search(_GAP_OR_OPEN.sub("", text)) is not None:
            stripped, where = _strip_gaps(text)
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
        for pattern in (self._short_pattern, *_CREDENTIALS):
            if pattern is not None:
                found += [m.span() for m in pattern.finditer(text)]
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
        if (m := _OPEN_CREDENTIAL.search(text, floor)) is not None:
            starts.append(m.start())
        if self._open_long:
            stripped, where = _strip_gaps(text[floor:])
            for form, ends in self._open_long:
                k = _longest_start(stripped, form, ends)
                if k is not None:
                    starts.append(floor + where[len(stripped) - k])
                k = _longest_start(text, form, ends)  # as written (see _registered)
                if k is not None:
                    starts.append(len(text) - k)
        for form, ends in self._open_short:
            k = _longest_start(text, form, ends)
            if k is not None and _SHORT_START.match(text, len(text) - k):
                starts.append(len(text) - k)
        return min(starts)

    def masker(self) -> StreamMasker:
        """A masker for text that arrives in pieces (see :class:`StreamMasker`)."""
        return StreamMasker(self)

    def stream(self, target: IO[str]) -> RedactingStream:
        """A text stream that writes to ``target`` through this redactor."""
        return RedactingStream(target, self)


def _mask_userinfo(m: re.Match[str]) -> str:
    if m.group(3) is not None:
        return f"{m.group(1)}{m.group(2)}:{MASK}@"
    return f"{m.group(1)}{MASK}@"


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
        cut = self._redactor.open_tail(text)
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
            cut = len(text)  # a bounded hold: something that long is masked as it stands
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
    split between them is masked whole; :meth:`flush` writes out what was kept back.
    """

    def __init__(self, target: IO[str], redactor: Redactor) -> None:
        self._target = target
        self._masker = redactor.masker()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            masked = self._masker.feed(text)
            if masked:
                self._target.write(masked)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            rest = self._masker.finish()
            if rest:
                self._target.write(rest)
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


#: The process's redactor: every sink writes through it. Register a secret with
#: ``redactor.add(value)`` as soon as it is read, before anything can print it.
redactor = Redactor()


def redact(text: str) -> str:
    """``text`` with every secret the process knows masked (see :data:`redactor`)."""
    return redactor.redact(text)
