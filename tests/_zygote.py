"""A pre-imported fork server ("zygote") for the suite's ``python -m orchestrator run`` children.

Each run child spent about 0.35 of its 0.5 CPU-seconds importing (kubernetes-asyncio's
client and its ~770 model modules, aiohttp, pydantic, rich, httpx, the package itself)
before it did any of the flow's work, and the suite starts a couple of hundred of them.
The zygote is one process per xdist worker that does those imports once, then forks a
child per run; the child skips the imports and otherwise starts as a user's process does.

The server side (this file run as a script, :func:`serve`) is single-threaded and runs no
event loop, so a fork copies nothing that a fresh interpreter would not have: no thread,
no loop, no open connection. It takes requests on a Unix socket (argv, env, cwd, and the
child's stdin/stdout/stderr as file descriptors), forks, and reports on the request's
connection the child's pid (with a pidfd, so that signals reach that process and never a
reused pid) and later its exit status, as :class:`subprocess.Popen` shows it (a signal
death is minus the signal). The child (:func:`_become`) takes the fds as 0, 1 and 2,
changes directory, replaces the environment and argv, puts back the signal dispositions,
signal mask and standard streams the interpreter started with, and runs the module as
``__main__`` through runpy, as ``python -m`` does; it leaves through the interpreter's
normal exit (atexit handlers, flushing), not ``os._exit``.

A child whose fresh interpreter would not have started as the zygote did is not forked
into a copy of it: when its executable, its options or an environment variable that the
interpreter reads at start-up (``PYTHON*``, the locale's, ``HOME``, ``TZ``) or that the
zygote's imports read (recorded while they run: kubernetes-asyncio reads ``KUBECONFIG``
at import, for one) differs from the zygote's, the forked child ``exec``s the fresh
interpreter instead. So the preload list (:data:`PRELOAD`) only decides how much is
saved: a module the zygote did not import is imported by the child.

Nothing is left behind: the worker holds the write end of a pipe whose read end is the
zygote's; when the worker exits or dies, the zygote sees EOF, kills its live children
and exits. A request's connection is its child's lifeline too: closed early, the child
is killed.

The client side (:func:`open_process`) gives the harness an :class:`anyio.abc.Process`,
so that ``drive`` reads, signals, waits and kills a forked child as it does a fresh one.
``pytest --fresh-interpreters`` (or ``FRESH_INTERPRETERS=1``) turns the zygote off.
"""

from __future__ import annotations

import gc
import importlib
import io
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

# The launcher that starts a child at chosen dispositions: the soak (benchmarks/soak.py)
# starts its runs through the same one.
from orchestrator._signals import Disposition, with_signals

#: What a run imports, by the modules that pull the rest in (taken from a real run's
#: ``sys.modules``). More or fewer only change what is saved, never what a run does.
PRELOAD = (
    "orchestrator.cli",
    "orchestrator._app",
    "orchestrator.config",
    "orchestrator.flows.kaito",
    "orchestrator.flows.kuberay",
    "orchestrator.flows.dynamo",
    "kubernetes_asyncio.client",
    "kubernetes_asyncio.config",
    # Imported on first use (the event loop's start, the first HTTP client, a thread).
    "anyio._backends._asyncio",
    "anyio.streams.stapled",
    "anyio.streams.tls",
    "anyio.to_thread",
    "concurrent.futures.thread",
    "httpcore",
    "certifi",
    "rich._emoji_codes",
    # The event loop the run chooses, where it is installed (imported before the loop).
    "uvloop",
)

#: Variables a fresh interpreter reads as it starts (besides those named ``PYTHON*`` and
#: ``LC_*``): a child whose value differs from the zygote's starts fresh.
STARTUP_VARIABLES = frozenset({"LANG", "LANGUAGE", "HOME", "TZ"})

_MAX_MESSAGE = 1 << 20


# --------------------------------------------------------------------------------------
# The server: this file run as a script.
# --------------------------------------------------------------------------------------


class _Start:
    """What the interpreter started with, recorded before the zygote changes anything."""

    def __init__(self) -> None:
        self.executable = sys.executable
        #: The environment the zygote was started with, and what the interpreter added to
        #: its own at start-up (``LC_CTYPE`` when it coerces the C locale, PEP 538): a
        #: fresh child, started with the same locale variables, adds the same.
        self.env = _exec_environment()
        self.added = {k: v for k, v in os.environ.items() if k not in self.env}
        self.signals: dict[int, Any] = {}
        for sig in signal.valid_signals():
            if sig in (signal.SIGKILL, signal.SIGSTOP):
                continue
            handler = signal.getsignal(sig)
            if handler is not None:  # None: set outside Python, cannot be put back
                self.signals[sig] = handler
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        #: Environment variables the zygote's imports read; True: they read all of it.
        self.read: set[str] = set()
        self.read_all = False

    def preload(self, modules: Sequence[str]) -> None:
        """Import ``modules``, recording which environment variables the imports read.

        A module that does not import is left out: a child that needs it imports it, and
        meets the same error a fresh interpreter would.

        ``os.environ`` reads go through ``_Environ.__getitem__`` (``get``, ``in`` and
        ``os.getenv`` too) and a copy iterates it; both are watched only while importing.
        """
        environ = type(os.environ)
        getitem, iterate = environ.__getitem__, environ.__iter__
        start = self

        def watched_getitem(self: Any, key: str) -> Any:
            start.read.add(key)
            return getitem(self, key)

        def watched_iter(self: Any) -> Any:
            start.read_all = True
            return iterate(self)

        environ.__getitem__ = watched_getitem  # type: ignore[method-assign]
        environ.__iter__ = watched_iter  # type: ignore[method-assign]
        try:
            for name in modules:
                try:
                    importlib.import_module(name)
                except Exception:  # not installed, or broken: the child meets it itself
                    continue
        finally:
            environ.__getitem__ = getitem  # type: ignore[method-assign]
            environ.__iter__ = iterate  # type: ignore[method-assign]

    def differs(self, argv: Sequence[str], env: Mapping[str, str]) -> str | None:
        """Why a fresh interpreter for ``argv``/``env`` would not start as the zygote did."""
        if len(argv) < 3 or argv[0] != self.executable or argv[1] != "-m":
            return "not `python -m MODULE` with the zygote's interpreter"
        if self.read_all:
            keys = set(env) | set(self.env)
        else:
            keys = self.read | STARTUP_VARIABLES
            keys |= {k for k in (*env, *self.env) if k.startswith(("PYTHON", "LC_"))}
        changed = sorted(k for k in keys if env.get(k) != self.env.get(k))
        return f"environment differs in {', '.join(changed)}" if changed else None


def _exec_environment() -> dict[str, str]:
    """The environment this process was started with (``/proc/self/environ`` keeps it)."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return dict(os.environ)
    pairs = (os.fsdecode(item).partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


class _Child:
    """One forked run: its connection (its lifeline) and its pidfd (its exit)."""

    def __init__(self, pid: int, pidfd: int, conn: socket.socket | None) -> None:
        self.pid, self.pidfd, self.conn = pid, pidfd, conn


def serve(
    listener: socket.socket, control: int, preload: Sequence[str] = PRELOAD
) -> dict[str, Any] | None:
    """Serve fork requests until the worker goes; return a request only in a forked child.

    ``listener`` is bound and listening already (the worker made it, so that its first
    request queues while the imports run); ``control`` is the read end of the worker's pipe.
    """
    start = _Start()
    # Ctrl-C in a terminal reaches the whole process group: it is the runs' and the
    # session's to handle, and the zygote's life ends with its worker's (EOF on control).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # woken through the wakeup fd, see below

    del sys.path[0]  # this file's directory: the imports must resolve as a run's would
    start.preload(preload)
    # The imports' objects live as long as the process: out of the collector's sight,
    # collections neither walk them nor write to their pages (which forks share).
    gc.freeze()
    assert threading.active_count() == 1, "the zygote must not fork with threads running"

    os.set_inheritable(control, False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(control, selectors.EVENT_READ, "control")
    sel.register(wake_r, selectors.EVENT_READ, "signal")
    children: dict[int, _Child] = {}
    try:
        while True:
            for key, _ in sel.select():
                what = key.data
                if what == "accept":
                    request = _accept(listener, start, sel, children)
                    if request is not None:  # in the forked child
                        for child in children.values():
                            if child.conn is not None:
                                child.conn.close()
                            os.close(child.pidfd)
                        sel.close()
                        listener.close()
                        os.close(control)
                        signal.set_wakeup_fd(-1)
                        wake_r.close()
                        wake_w.close()
                        request["start"] = start
                        return request
                elif what == "control":
                    if not os.read(control, 4096):  # the worker is gone
                        return None
                elif what == "signal":
                    got = wake_r.recv(64)
                    if {signal.SIGTERM, signal.SIGHUP} & set(got):
                        return None
                elif what.pid not in children:  # reaped earlier in this batch of events
                    continue
                elif key.fileobj == what.pidfd:
                    _reap(what, sel, children)
                elif what.conn is not None:  # its connection: EOF means no one waits
                    sel.unregister(what.conn)
                    what.conn.close()
                    what.conn = None
                    os.kill(what.pid, signal.SIGKILL)
    finally:
        if os.getpid() == _ZYGOTE_PID:  # not in a forked child on its way out
            for child in list(children.values()):
                try:
                    signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _reap(child, None, children)


_ZYGOTE_PID = os.getpid()


def _accept(
    listener: socket.socket,
    start: _Start,
    sel: selectors.BaseSelector,
    children: dict[int, _Child],
) -> dict[str, Any] | None:
    conn, _ = listener.accept()
    try:
        data, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 3, socket.MSG_CMSG_CLOEXEC)
    except OSError:
        conn.close()
        return None
    if not data or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    request = json.loads(data)
    request["fds"] = fds
    request["fresh"] = start.differs(request["argv"], request["env"])
    # Every signal is held from the fork until the child has put back the dispositions a
    # fresh interpreter has (:func:`_become`), then delivered to those: one that came
    # earlier would meet the zygote's (and wake the zygote through the shared wakeup fd).
    held = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    pid = os.fork()
    if pid == 0:
        conn.close()
        return request
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    child = _Child(pid, pidfd, conn)
    children[pid] = child
    reply = json.dumps({"pid": pid, "fresh": request["fresh"]}).encode()
    try:
        socket.send_fds(conn, [reply], [pidfd])
    except OSError:  # the requester is gone already
        conn.close()
        child.conn = None
        os.kill(pid, signal.SIGKILL)
    sel.register(pidfd, selectors.EVENT_READ, child)
    if child.conn is not None:
        sel.register(conn, selectors.EVENT_READ, child)
    return None


def _reap(child: _Child, sel: selectors.BaseSelector | None, children: dict[int, _Child]) -> None:
    """Wait for ``child`` (it has exited, or was killed) and report its exit on its connection."""
    _, status, usage = os.wait4(child.pid, 0)
    if sel is not None:
        sel.unregister(child.pidfd)
    os.close(child.pidfd)
    del children[child.pid]
    if child.conn is None:
        return
    if sel is not None:
        sel.unregister(child.conn)
    reply = {
        "exit": os.waitstatus_to_exitcode(status),
        "cpu": usage.ru_utime + usage.ru_stime,
    }
    try:
        child.conn.send(json.dumps(reply).encode())
    except OSError:
        pass
    child.conn.close()


def _become(request: dict[str, Any]) -> None:
    """In the forked child: become the process ``python -m MODULE ARGS`` would have made."""
    start: _Start = request["start"]
    stdin, stdout, stderr = request["fds"]
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in {stdin, stdout, stderr} - {0, 1, 2}:
        os.close(fd)
    os.chdir(request["cwd"])
    # Dispositions, then the mask, as the interpreter started with them (the zygote's own
    # SIGINT/SIGTERM/SIGHUP settings are the zygote's, not a run's); a signal held since
    # the fork is delivered when the mask is put back.
    for sig, handler in start.signals.items():
        signal.signal(sig, handler)
    # Those the request asks for, as a fresh interpreter started with them has them (an
    # ``exec`` below keeps an ignore and turns a handler back into the default).
    for number, how in request.get("signals", {}).items():
        sig = signal.Signals(int(number))
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, signal.SIG_IGN if how == "ignore" else default)
    signal.pthread_sigmask(signal.SIG_SETMASK, start.mask)
    argv, env = request["argv"], request["env"]
    if request["fresh"] is not None:
        os.execve(argv[0], argv, env)
    os.environ.clear()
    os.environ.update({**env, **start.added})
    module = argv[2]
    sys.orig_argv = list(argv)
    sys.argv = ["-m", *argv[3:]]
    sys.path[0:0] = [os.getcwd()]  # what ``-m`` puts first
    main = types.ModuleType("__main__")
    main.__dict__.update({"__builtins__": __builtins__, "__annotations__": {}})
    main.__loader__ = importlib.machinery.BuiltinImporter  # type: ignore[assignment]
    sys.modules["__main__"] = main
    _fresh_stdio()
    import runpy

    # What ``python -m`` calls; private, but the one function that does exactly that.
    runpy._run_module_as_main(module, alter_argv=True)  # type: ignore[attr-defined]


def _fresh_stdio() -> None:
    """sys.stdin/stdout/stderr as the interpreter makes them for fds 0-2 (``create_stdio``).

    The zygote's own objects were made for its own fds (``/dev/null``: seekable, and never
    a terminal); encodings, errors and buffering come from the same variables, which a
    forked child shares with the zygote, so they are taken from those objects.
    """
    buffered = not sys.__stdout__.write_through  # type: ignore[union-attr]
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, f"__{name}__")
        write = fd != 0
        unbuffered = write and not buffered
        buf: Any = open(
            fd, "wb" if write else "rb", buffering=0 if unbuffered else -1, closefd=False
        )
        raw = buf if unbuffered else buf.raw
        raw.name = f"<{name}>"
        text = io.TextIOWrapper(
            buf,
            encoding=old.encoding,
            errors=old.errors,
            newline="\n",
            line_buffering=buffered and (raw.isatty() or fd == 2),
            write_through=not buffered,
        )
        text.mode = "w" if write else "r"  # type: ignore[misc]
        setattr(sys, name, text)
        setattr(sys, f"__{name}__", text)


# --------------------------------------------------------------------------------------
# The client: the worker's side.
# --------------------------------------------------------------------------------------

#: ``FRESH_INTERPRETERS=1`` in the environment: every child is a fresh interpreter.
FRESH_ENV = "FRESH_INTERPRETERS"
#: Whether the harness forks its run children from the zygote; tests/conftest.py sets it
#: from ``--fresh-interpreters`` and :data:`FRESH_ENV`.
enabled = os.environ.get(FRESH_ENV, "") in ("", "0")


def wanted(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a ``python -m orchestrator run`` child that is forked."""
    return enabled and list(argv[:4]) == [sys.executable, "-m", "orchestrator", "run"]


class Server:
    """One worker's zygote: started on first use, stopped by :meth:`stop` or the worker's exit.

    The worker binds the socket and keeps only the write end of the control pipe: the
    first request queues while the zygote imports, and the pipe's EOF (the worker gone,
    however it went) is what ends the zygote.
    """

    def __init__(self, env: Mapping[str, str], preload: Sequence[str] = PRELOAD) -> None:
        self.dir = tempfile.mkdtemp(prefix="orchestrator-zygote-")
        self.path = os.path.join(self.dir, "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control_r, self.control = os.pipe()
        try:
            listener.bind(self.path)
            listener.listen(64)
            with open(os.path.join(self.dir, "log"), "wb") as log:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        str(listener.fileno()),
                        str(control_r),
                        *preload,
                    ],
                    pass_fds=(listener.fileno(), control_r),
                    env=dict(env),
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
        finally:
            # The zygote's copy is the only one: should it die, a request is refused
            # instead of queueing where no one will ever accept it.
            listener.close()
            os.close(control_r)

    def connect(self) -> socket.socket:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the zygote ended ({self.proc.returncode}):\n{self.log()}")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(self.path)
        except OSError:
            conn.close()
            raise
        return conn

    def log(self) -> str:
        try:
            return Path(self.dir, "log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10) -> None:
        """Close the control pipe (the zygote kills its live children and exits); wait."""
        if self.control >= 0:
            os.close(self.control)
            self.control = -1
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_server: Server | None = None


def server() -> Server:
    """This worker's zygote, started with the environment the harnesses give a run:
    the worker's, without ``CI``, ``KUBECONFIG`` and ``API_URL``, unbuffered, no colours."""
    global _server
    if _server is None:
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "KUBECONFIG", "API_URL")}
        env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
        _server = Server(env)
    return _server


def stop() -> None:
    """Stop this worker's zygote, if it started one (at the session's end)."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None


class _PipeEnd:
    """One end of a child's pipe: non-blocking, closed once, its waiters told first."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    async def aclose(self) -> None:
        if self._fd >= 0:
            anyio.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1


class _PipeReader(_PipeEnd, anyio.abc.ByteReceiveStream):
    """The read end of a child's stdout or stderr pipe."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data


class _PipeWriter(_PipeEnd, anyio.abc.ByteSendStream):
    """The write end of a child's stdin pipe (held open, as a fresh child's is)."""

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._fd)


class ForkedProcess(anyio.abc.Process):
    """A child forked by the zygote, driven as :func:`anyio.open_process`'s are.

    Signals go through the pidfd the zygote sent, so they reach that process or, once
    it is reaped, none: a signal to an ended child does nothing, as with a fresh one
    whose output is still being read (a hook may act on its last lines). The exit status arrives on the request's connection;
    :attr:`returncode` looks for it without waiting, as asyncio's child watcher
    sets a fresh child's in the background.
    """

    def __init__(
        self,
        server: Server,
        conn: socket.socket,
        pid: int,
        pidfd: int,
        fresh: str | None,
        fds: list[int],
    ) -> None:
        self._server = server
        self._conn, self._pid, self._pidfd = conn, pid, pidfd
        #: Why this child ``exec``ed a fresh interpreter instead of running forked; None: forked.
        self.fresh = fresh
        #: utime + stime of the child, from the zygote's ``wait4`` (None until it ended).
        self.cpu_seconds: float | None = None
        self._stdin = _PipeWriter(fds[0])
        self._stdout = _PipeReader(fds[1])
        self._stderr = _PipeReader(fds[2])
        self._returncode: int | None = None
        self._waiting = anyio.Lock()

    def _read_status(self) -> bool:
        """Take the exit report if it is there; False if not yet."""
        try:
            data = self._conn.recv(_MAX_MESSAGE)
        except BlockingIOError:
            return False
        if not data:
            raise RuntimeError(
                f"the zygote ended before child {self._pid} did:\n{self._server.log()}"
            )
        report = json.loads(data)
        self._returncode, self.cpu_seconds = report["exit"], report["cpu"]
        self._conn.close()
        os.close(self._pidfd)
        return True

    async def wait(self) -> int:
        async with self._waiting:  # one task at a time may wait on the connection
            while self._returncode is None and not self._read_status():
                await anyio.wait_readable(self._conn)
        return self._returncode

    def send_signal(self, signal_: int) -> None:
        if self.returncode is not None:  # as Popen's: an ended child is not signalled
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signal_)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        if self._returncode is None:
            self._read_status()
        return self._returncode

    @property
    def stdin(self) -> anyio.abc.ByteSendStream:
        return self._stdin

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream:
        return self._stderr

    async def aclose(self) -> None:
        """As anyio's: close the pipes, wait; if the wait is interrupted, kill, then wait."""
        with anyio.CancelScope(shield=True):
            for stream in (self._stdin, self._stdout, self._stderr):
                await stream.aclose()
        try:
            await self.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if self._returncode is None:
                    self.kill()
                    await self.wait()
            raise


#: What run children start with unless a test asks otherwise: SIGINT and SIGTERM at their
#: defaults, as from a terminal's foreground, whatever this session was started with. A
#: session started in the background of a shell without job control ignores SIGINT (one
#: started by a supervisor may ignore SIGTERM) and would hand that down, and the
#: orchestrator keeps an inherited ignore: its Ctrl-C tests would then test nothing, and
#: the SIGTERM that stops a run at its deadline (``drive``) would not stop it.
RUN_SIGNALS: Mapping[int, Disposition] = {signal.SIGINT: "default", signal.SIGTERM: "default"}


async def fork(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | Path,
    via: Server | None = None,
    signals: Mapping[int, Disposition] | None = None,
) -> ForkedProcess:
    """Start ``argv`` (``python -m MODULE ...``) as a child of ``via`` (this worker's zygote).

    The child starts with the signal dispositions the zygote's interpreter started with,
    but for ``signals`` (signal number -> "default" or "ignore"): those start as a fresh
    interpreter started with that disposition would (for "default": Python's handler
    where it has one, SIGINT's KeyboardInterrupt).
    """
    via = via or server()
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    mine, theirs = [stdin_w, stdout_r, stderr_r], [stdin_r, stdout_w, stderr_w]
    dispositions = {str(int(sig)): how for sig, how in (signals or {}).items()}
    request = json.dumps(
        {"argv": list(argv), "env": dict(env), "cwd": str(cwd), "signals": dispositions}
    ).encode()
    try:
        conn = via.connect()
        try:
            socket.send_fds(conn, [request], theirs)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        for fd in mine:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    conn.setblocking(False)
    try:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 1, socket.MSG_CMSG_CLOEXEC)
                break
            except BlockingIOError:
                await anyio.wait_readable(conn)
        if not data or len(fds) != 1:
            raise RuntimeError(f"the zygote did not start {argv[:4]}:\n{via.log()}")
    except BaseException:
        conn.close()  # the zygote kills a child whose connection closed
        for fd in mine:
            os.close(fd)
        raise
    reply = json.loads(data)
    return ForkedProcess(via, conn, reply["pid"], fds[0], reply["fresh"], mine)


async def open_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | Path,
    *,
    fresh: bool = False,
    signals: Mapping[int, Disposition] = RUN_SIGNALS,
) -> anyio.abc.Process:
    """A run child forked from the zygote when :func:`wanted`, else (or with ``fresh``,
    for a test whose subject is the command line itself) a fresh interpreter; either way
    it starts with ``signals`` at the dispositions given (:data:`RUN_SIGNALS`)."""
    if not fresh and wanted(argv):
        return await fork(argv, env, cwd, signals=signals)
    return await anyio.open_process(with_signals(argv, signals), env=dict(env), cwd=cwd)


if __name__ == "__main__":
    _request = serve(socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2]), sys.argv[3:])
    if _request is None:
        # The zygote's children are reaped and it has nothing to flush: skipping the
        # finalisation of its ~1500 modules keeps the worker's teardown short.
        os._exit(0)
    _become(_request)
