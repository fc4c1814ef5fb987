"""Atomic file writes: a reader (CI, a person tailing the directory) must never see a
half-written report, and a crash mid-write must leave the previous version intact.
Every report passes the process's redactor on its way to the disk.

The rename alone is atomic for every reader and survives the process dying at any point;
``fsync`` adds survival of the machine going down, which only the last version of a
report needs. Progress written while a run goes on (the JUnit file after each phase
event) skips it: a dozen syncs per run bought nothing a reader could see."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from .._fileio import write_all
from ._redact import redact

#: How many taken temporary names a write tries past (each a leftover of a killed
#: process that had this one's pid) before it gives up.
_TRIES = 100
#: The temporary files' numbers: unique in this process (``next`` on a count holds the
#: GIL), so threads writing one report at once never share one.
_numbers = itertools.count()
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_BINARY", 0)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, durable: bool = True, masked: bool = False
) -> Path:
    """Write ``text`` (redacted) to ``path`` through a temporary file and a rename;
    ``durable``: sync it to the disk before the rename (for a report's final version);
    ``masked``: the caller masked it already, value by value (JSON: a short secret masked
    in the text would turn a number into ``***``).

    The JUnit file is rewritten at every phase event, so this is lean: the temporary
    name is the pid and a counter (``O_EXCL`` still refuses a name that exists, a
    symlink too), the directory is made only when it is missing, the bytes go out in
    one ``write``."""
    target = Path(path)
    data = (text if masked else redact(text)).encode("utf-8")
    fd, tmp = _create(target)
    try:
        try:
            # mkstemp-like creation is owner-only under a strict umask; reports are
            # meant to be read by others.
            os.fchmod(fd, 0o644)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def _create(target: Path) -> tuple[int, str]:
    """A new temporary file beside ``target``, open for writing, and its name."""
    prefix = os.path.join(os.fspath(target.parent), f".{target.name}.{os.getpid()}.")
    for _ in range(_TRIES):
        tmp = f"{prefix}{next(_numbers)}.tmp"
        try:
            return os.open(tmp, _FLAGS, 0o600), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            return os.open(tmp, _FLAGS, 0o600), tmp
    raise FileExistsError(f"no free temporary name for {target} (tried {_TRIES})")
