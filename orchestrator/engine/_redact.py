"""One redactor in front of every sink: secrets never leave the process.

A secret reaches a report in ways no one plans for: a peer echoes the
``Authorization`` header in an error body, the body becomes a phase's reason, the
reason goes to the console, junit.xml, run.json, the GitHub summary. Masking at each
place that builds a message would miss the next such place. Instead every sink (the
console stream, every report and diagnostics file, the job summary and its
annotations, the backend's log) passes its text through :data:`redactor` just before
it leaves the process, and the run log masks each line as it is added.

It masks every value registered with :meth:`Redactor.add` (the bearer token, the
contents of a token file, a kubeconfig's token) wherever it appears, also split by
terminal styling, line wrapping or table borders, and URL-encoded; and the value of
any ``Authorization`` header or ``Bearer`` credential, known or not.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterable
from typing import IO, Any

MASK = "***"
#: Shorter values are not masked: masking "abc" everywhere would garble every report,
#: and a credential that short is not a secret worth the name.
MIN_SECRET_LENGTH = 6

#: What may separate the characters of a secret on a terminal: a style escape, a line
#: break with the next line's indentation, a table border.
_GAP = r"(?:\x1b\[[0-9;?]*[A-Za-z]|[ \t\r\n│┃║|])*"
#: ``Bearer xyz``, ``bearer%20xyz``: the credential after the scheme word (not the
#: words of a sentence such as "check the bearer token").
_BEARER = re.compile(
    r"(?i)\b(bearer)(\s+|%20|\+)"
    r"(?!(?:tokens?|auth|authentication|credentials?|scheme|header)\b)([A-Za-z0-9\-._~+/=%]+)"
)
#: ``Authorization: Basic xyz``, ``"authorization": "xyz"``, ``authorization=xyz``.
_AUTHORIZATION = re.compile(
    r"""(?i)\b((?:proxy-)?authorization["']?\s*[:=]\s*["']?(?:(?!bearer\b)[A-Za-z]+\s+)?)"""
    r"""(?!bearer\b)([^\s"',;}&]+)"""
)


class Redactor:
    """Masks configured secret values and any Authorization/bearer value in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Mask ``secret`` from now on (and its URL-encoded form); a short one is ignored."""
        if secret is None:
            return
        value = secret.strip()
        if len(value) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
            if forms <= self._secrets:
                return
            self._secrets |= forms
            # Longest first, so that a secret containing another is masked whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile(
                "|".join(_GAP.join(re.escape(ch) for ch in form) for form in ordered)
            )

    @property
    def secrets(self) -> int:
        """How many values (with their encoded forms) are masked."""
        return len(self._secrets)

    def clear(self) -> None:
        """Forget every registered value (for tests; the patterns stay)."""
        with self._lock:
            self._secrets.clear()
            self._pattern = None

    def __call__(self, text: str) -> str:
        return self.redact(text)

    def redact(self, text: str) -> str:
        if not text:
            return text
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
        text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{MASK}", text)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        return self.redact(data.decode("utf-8", "replace")).encode("utf-8")

    def stream(self, target: IO[str]) -> RedactingStream:
        """A text stream that writes to ``target`` through this redactor."""
        return RedactingStream(target, self)


class RedactingStream:
    """A text stream (for ``rich.Console(file=...)``, ``print(file=...)``) that masks
    secrets in everything written through it. Anything else is the target's."""

    def __init__(self, target: IO[str], redactor: Redactor) -> None:
        self._target = target
        self._redactor = redactor

    def write(self, text: str) -> int:
        self._target.write(self._redactor.redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


#: The process's redactor: every sink writes through it. Register a secret with
#: ``redactor.add(value)`` as soon as it is read, before anything can print it.
redactor = Redactor()


def redact(text: str) -> str:
    """``text`` with every secret the process knows masked (see :data:`redactor`)."""
    return redactor.redact(text)
