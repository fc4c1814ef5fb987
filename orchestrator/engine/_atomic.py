"""Atomic file writes: a reader (CI, a person tailing the directory) must never see a
half-written report, and a crash mid-write must leave the previous version intact.
Every report passes the process's redactor on its way to the disk.

The rename alone is atomic for every reader and survives the process dying at any point;
``fsync`` adds survival of the machine going down, which only the last version of a
report needs. Progress written while a run goes on (the JUnit file after each phase
event) skips it: a dozen syncs per run bought nothing a reader could see."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._redact import redact


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, durable: bool = True, masked: bool = False
) -> Path:
    """Write ``text`` (redacted) to ``path`` through a temporary file and a rename;
    ``durable``: sync it to the disk before the rename (for a report's final version);
    ``masked``: the caller masked it already, value by value (JSON: a short secret masked
    in the text would turn a number into ``***``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text if masked else redact(text))
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        # mkstemp creates the file owner-only; reports are meant to be read by others.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target
