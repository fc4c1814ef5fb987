"""Running short commands (``kind``, ``docker info``) with their output kept.

Everything a command prints goes into a log file in the artifacts directory, so
that a failed cluster creation can be diagnosed after the CI job is gone, and is
also returned so that the caller can quote the last lines in its error.

Each command runs in its own process group: ``kind`` starts ``docker`` and
friends, and a cancelled run must not leave them running, so cancellation kills
the whole group rather than only the direct child.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
from anyio.abc import ByteReceiveStream

#: How many lines of a command's output an error message quotes.
TAIL_LINES = 5


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last non-empty lines of stderr (else stdout), joined on one line."""
        text = self.stderr.strip() or self.stdout.strip()
        kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(kept)


def kill_group(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal the process group led by ``pid``; a group that is already gone is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def run_logged(
    argv: Sequence[str],
    log_file: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> CommandResult:
    """Run ``argv`` to completion, appending its command line and output to ``log_file``.

    Never raises for a non-zero exit (the caller decides what a failure means); raises
    ``OSError`` when the executable cannot be started at all.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        process = await anyio.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            async with process, anyio.create_task_group() as tg:
                assert process.stdout is not None and process.stderr is not None
                tg.start_soon(_drain, process.stdout, out, log)
                tg.start_soon(_drain, process.stderr, err, log)
                await process.wait()
        except BaseException:
            # Cancelled (or broken) while the command runs: take its children with it.
            kill_group(process.pid)
            raise
        log.write(f"[exit {process.returncode}]\n".encode())
    return CommandResult(
        tuple(argv),
        int(process.returncode or 0),
        b"".join(out).decode("utf-8", "replace"),
        b"".join(err).decode("utf-8", "replace"),
    )


async def _drain(stream: ByteReceiveStream, into: list[bytes], log: IO[bytes]) -> None:
    async for chunk in stream:
        into.append(chunk)
        log.write(chunk)
        log.flush()
