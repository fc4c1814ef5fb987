"""Running short commands (``kind``, ``docker info``) with their output kept.

Everything a command prints goes into a log file in the artifacts directory, so
that a failed cluster creation can be diagnosed after the CI job is gone, and is
also returned so that the caller can quote the last lines in its error.

Each command runs in its own process group: ``kind`` starts ``docker`` and
friends, and a cancelled run must not leave them running, so cancellation kills
the whole group rather than only the direct child.

The log is masked as it is written (:class:`MaskedLog`), never afterwards: a run that is
killed (SIGKILL, the OOM killer, a crash) leaves on disk only what was masked already.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream

from ..engine import StreamMasker, redactor

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


class MaskedLog:
    """An append-only log file whose every byte passes the process's redactor on its way
    in, a secret split between two writes included (the redactor's ``StreamMasker``
    keeps back the end that may start one until the next write or :meth:`close`).

    Each ``stream`` (a child's stdout, its stderr) has a masker of its own: the two
    pipes' pieces interleave in the file, and a piece of one stream between the halves
    of a secret in the other must not let either half out unmasked.

    Each write goes to the file at once, unbuffered: what the kernel has, the disk gets,
    whatever happens to this process afterwards. Thread-safe.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._maskers: dict[str, StreamMasker] = {}
        self._lock = threading.Lock()

    def write(self, data: bytes, stream: str = "stdout") -> None:
        with self._lock:
            masker = self._maskers.get(stream)
            if masker is None:
                masker = self._maskers[stream] = redactor.masker()
            self._put(masker.feed_bytes(data))

    def note(self, text: str) -> None:
        """A line of our own (a command line, an exit code), after what came before."""
        with self._lock:
            self._put(self._held() + redactor.redact(text).encode("utf-8"))

    def close(self) -> None:
        with self._lock:
            self._put(self._held())
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _held(self) -> bytes:
        """What every stream's masker kept back, masked, and each masker emptied."""
        return b"".join(m.finish().encode("utf-8") for m in self._maskers.values())

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._fd is not None:
            view = view[os.write(self._fd, view) :]


def pump_into(fd: int, log: MaskedLog) -> threading.Thread:
    """A thread that copies the pipe ``fd`` into ``log`` until EOF, then closes both.

    A thread, not a task: the log keeps up with its writer while the event loop is busy
    or the run is being cancelled, and a writer that fills its pipe is never stalled.
    """

    def pump() -> None:
        try:
            while data := os.read(fd, 65536):
                log.write(data)
        except OSError:
            pass
        finally:
            os.close(fd)
            log.close()

    thread = threading.Thread(target=pump, name=f"log {log.path.name}", daemon=True)
    thread.start()
    return thread


async def run_logged(
    argv: Sequence[str],
    log_file: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_stdout: bool = True,
) -> CommandResult:
    """Run ``argv`` to completion, appending its command line and output to ``log_file``.

    ``log_stdout=False`` keeps stdout out of the log (``kind get kubeconfig`` prints the
    cluster's client key): only its size is noted. Never raises for a non-zero exit (the
    caller decides what a failure means); raises ``OSError`` when the executable cannot
    be started at all.
    """
    log = MaskedLog(log_file)
    try:
        log.note(f"$ {shlex.join(argv)}\n")
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
                tg.start_soon(_drain, process.stdout, out, log if log_stdout else None, "stdout")
                tg.start_soon(_drain, process.stderr, err, log, "stderr")
                await process.wait()
        except BaseException:
            # Cancelled (or broken) while the command runs: take its children with it.
            kill_group(process.pid)
            raise
        if not log_stdout:
            log.note(f"[{sum(map(len, out))} bytes of output not logged: they hold credentials]\n")
        log.note(f"[exit {process.returncode}]\n")
    finally:
        log.close()
    return CommandResult(
        tuple(argv),
        int(process.returncode or 0),
        b"".join(out).decode("utf-8", "replace"),
        b"".join(err).decode("utf-8", "replace"),
    )


async def _drain(
    stream: ByteReceiveStream, into: list[bytes], log: MaskedLog | None, name: str
) -> None:
    async for chunk in stream:
        into.append(chunk)
        if log is not None:
            log.write(chunk, name)
