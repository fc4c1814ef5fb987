"""Atomic file writes: a reader (CI, a person tailing the directory) must never see a
half-written report, and a crash mid-write must leave the previous version intact.
Every report passes the process's redactor on its way to the disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._redact import redact


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(redact(text))
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
