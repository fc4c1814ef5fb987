"""The KubeFoundry backend as a child process of the run.

Starting the backend ourselves means the run knows exactly which backend it is
testing (the checked-out source, this cluster's kubeconfig) and that nothing is
left listening on the port afterwards. Three things matter:

- **Health, not sleep.** The backend is ready when ``GET /api/health`` answers
  200; connection refusals while it boots are retried with a short backoff.
- **Fail early.** A backend that crashes at start (a missing ``bun install``, a
  port in use) must be reported at once with the end of its log, not after the
  health wait's deadline: the wait races against the process's exit.
- **Leave nothing behind.** ``bun run dev`` starts children of its own, so the
  backend runs in its own process group and is stopped as a group: SIGTERM,
  then SIGKILL once the grace period is over.
- **No secret on disk, ever.** The backend logs what it receives (a request's
  Authorization header, a token in a URL). Its output goes through a pipe to a thread
  that masks each piece before it writes it (:class:`~._process.MaskedLog`): a run
  killed at any instant leaves a ``backend.log`` that was never unmasked. Masking the
  file after the fact left the secret there whenever the run did not get that far.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import anyio
import httpx
from anyio.abc import Process

from ..engine import redact
from ._errors import EnvironmentSetupError
from ._process import MaskedLog, kill_group, pump_into

HEALTH_PATH = "/api/health"
#: Lines of the backend's log an error quotes.
LOG_TAIL_LINES = 10
#: Backoff between health checks while the backend boots: quick at first, then calmer.
BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 1.0
#: One health request may take this long before it counts as "not answering yet".
REQUEST_TIMEOUT = 5.0
#: How long the end of the backend's output may take to reach its log once it exited.
LOG_DRAIN_TIMEOUT = 5.0

BUN_INSTALL_HINT = "install Bun: https://bun.sh"


class BackendProcess:
    """One backend process: ``start()``, ``wait_healthy(deadline)``, ``stop()``.

    Also an async context manager that starts on entry and always stops on exit.
    """

    def __init__(
        self,
        directory: Path,
        command: Sequence[str] = ("bun", "run", "dev"),
        *,
        port: int = 3001,
        kubeconfig: Path | None = None,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        grace: float = 10.0,
        host: str = "127.0.0.1",
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        if not command:
            raise ValueError("the backend needs a command")
        if grace < 0:
            raise ValueError("grace must be >= 0 seconds")
        self.directory = Path(directory)
        self.command = list(command)
        self.port = port
        self.kubeconfig = kubeconfig
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.grace = grace
        self.host = host
        self.clock = clock
        self._log = log
        self._process: Process | None = None
        self._pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + HEALTH_PATH

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self._process.returncode if self._process is not None else None

    # -- start -----------------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        """The process environment: ours, then ``env``, then PORT and KUBECONFIG.

        PORT and KUBECONFIG come last so that the backend serves where the health
        check looks and manages the cluster this run is about.
        """
        merged = {**os.environ, **self.env, "PORT": str(self.port)}
        if self.kubeconfig is not None:
            merged["KUBECONFIG"] = str(self.kubeconfig)
        return merged

    async def start(self) -> None:
        """Start the command in ``directory`` with its output going to ``log_path``."""
        if self._process is not None:
            raise RuntimeError("the backend was already started")
        if not self.directory.is_dir():
            raise EnvironmentSetupError(f"backend directory {self.directory} does not exist")
        env = self.child_env()
        executable = shutil.which(self.command[0], path=env.get("PATH"))
        if executable is None:
            hint = f"; {BUN_INSTALL_HINT}" if Path(self.command[0]).name == "bun" else ""
            raise EnvironmentSetupError(f"{self.command[0]} not found on PATH{hint}")
        # The child writes into a pipe; a thread of ours masks each piece on its way into
        # the file, and keeps the log growing while this process is busy or cancelled.
        log = MaskedLog(self.log_path)
        read_end, write_end = os.pipe()
        try:
            self._process = await anyio.open_process(
                [executable, *self.command[1:]],
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_end)
            log.close()
            raise EnvironmentSetupError(
                f"cannot start the backend ({' '.join(self.command)}): {exc}"
            ) from None
        finally:
            os.close(write_end)
        self._pump = pump_into(read_end, log)
        self._log(
            f"backend started: {' '.join(self.command)} in {self.directory} "
            f"(pid {self._process.pid}, port {self.port}, log {self.log_path.name})"
        )

    # -- wait ------------------------------------------------------------------------

    async def wait_healthy(self, deadline: float) -> None:
        """Return once GET /api/health answers 200; fail at once if the process exits.

        ``deadline`` is absolute on this object's clock (``time.monotonic`` unless given).
        """
        process = self._require_started()
        last = "no answer yet"
        healthy = False
        exited = False

        async def probe(cancel: anyio.CancelScope) -> None:
            nonlocal last, healthy
            delay = BACKOFF_INITIAL
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, trust_env=False) as http:
                while True:
                    try:
                        response = await http.get(self.health_url)
                    except httpx.HTTPError as exc:
                        last = _describe(exc)
                    else:
                        if response.status_code == 200:
                            healthy = True
                            cancel.cancel()
                            return
                        last = f"HTTP {response.status_code}"
                    await anyio.sleep(delay)
                    delay = min(BACKOFF_MAX, delay * 2)

        async def exit_watch(cancel: anyio.CancelScope) -> None:
            nonlocal exited
            await process.wait()
            exited = True
            cancel.cancel()

        with anyio.move_on_after(max(0.0, deadline - self.clock())):
            async with anyio.create_task_group() as tg:
                tg.start_soon(probe, tg.cancel_scope)
                tg.start_soon(exit_watch, tg.cancel_scope)
        if healthy:
            self._log(f"backend healthy at {self.health_url}")
            return
        if exited:
            await self._drain_log()
        tail = self.log_tail()
        if exited:
            raise EnvironmentSetupError(
                f"the backend exited with code {process.returncode} before {HEALTH_PATH} answered; "
                f"last log lines: {_one_line(tail)}",
                detail=tail,
            )
        raise EnvironmentSetupError(
            f"the backend did not answer GET {self.health_url} with 200 before the deadline "
            f"(last: {last}); last log lines: {_one_line(tail) or '(empty)'}",
            detail=tail,
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` non-empty lines of the backend's log."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64 * 1024))
                text = redact(handle.read().decode("utf-8", "replace"))
        except OSError:
            return ""
        kept = [line.rstrip() for line in text.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    # -- stop ------------------------------------------------------------------------

    async def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit code.

        Shielded from cancellation: it runs while an interrupted run unwinds, and a
        backend left running would hold the port for the next run.
        """
        process = self._process
        if process is None:
            return None
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                kill_group(process.pid, signal.SIGTERM)
                with anyio.move_on_after(self.grace):
                    await process.wait()
                if process.returncode is None:
                    self._log(f"backend ignored SIGTERM for {self.grace:g} s; sending SIGKILL")
                    kill_group(process.pid, signal.SIGKILL)
                    await process.wait()
                self._log(f"backend stopped (exit {process.returncode})")
            # Children that outlived their parent would keep the port busy.
            kill_group(process.pid, signal.SIGKILL)
            await process.aclose()
            await self._drain_log()
        return process.returncode

    async def __aenter__(self) -> BackendProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- plumbing --------------------------------------------------------------------

    def _require_started(self) -> Process:
        if self._process is None:
            raise RuntimeError("start() the backend first")
        return self._process

    async def _drain_log(self) -> None:
        """Wait (bounded) for the pump to write the end of the output. A descendant that
        left the process group may hold the pipe open: the pump then goes on masking in
        the background, a daemon thread, until that one exits or the run does."""
        pump = self._pump
        if pump is not None and pump.is_alive():
            await anyio.to_thread.run_sync(pump.join, LOG_DRAIN_TIMEOUT, abandon_on_cancel=True)


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in {REQUEST_TIMEOUT:g} s"
    return f"{type(exc).__name__}: {exc}"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())
