"""The zygote (tests/_zygote.py): a forked child starts as a fresh interpreter would.

Each test runs a small probe module both ways, as ``python -m zygote_probe`` from its
own directory: once as a fresh interpreter (``anyio.open_process``) and once forked from
this worker's zygote, and compares what each saw of itself. Waits are on the children's
own output and exits, each bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import _zygote
import anyio
import anyio.abc
import pytest
from anyio.streams.text import TextReceiveStream

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent

#: Prints what a process knows of how it started, then exits with its first argument,
#: or, given "wait", says "waiting" and waits for stdin (held open by the parent) to end.
PROBE = textwrap.dedent(
    """\
    import json, os, select, signal, sys, threading

    def stream(s):
        return [s.name, s.mode, s.encoding, s.errors, s.line_buffering, s.write_through,
                type(s.buffer).__name__, s.isatty(), getattr(s.buffer, "raw", s.buffer).name,
                s.fileno()]

    state = {
        "name": __name__,
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "cwd": os.getcwd(),
        "path": sys.path,
        "env": dict(os.environ),
        "signals": {
            int(s): repr(signal.getsignal(s))
            for s in signal.valid_signals()
            if s not in (signal.SIGKILL, signal.SIGSTOP)
        },
        "mask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())),
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "stdio": [stream(sys.stdin), stream(sys.stdout), stream(sys.stderr)],
        "std_same": [sys.stdin is sys.__stdin__, sys.stdout is sys.__stdout__],
        "fds": sorted(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "main": sorted(vars(sys.modules["__main__"])),
        "group": [os.getpgrp(), os.getsid(0)],
    }
    print(json.dumps(state))
    print("to stderr", file=sys.stderr)
    if sys.argv[1:] == ["wait"]:
        print("waiting", flush=True)
        # Not one blocking read: a signal caught between the interpreter's last look at
        # its pending signals and the read(2) call would wait for the read to return,
        # which it never does. Checked at the loop's jump back, it is acted on in 0.2 s.
        while not select.select([sys.stdin], [], [], 0.2)[0]:
            pass
        sys.stdin.read()
    sys.exit(int(sys.argv[1]))
    """
)


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "zygote_probe.py").write_text(PROBE)
    return tmp_path


def run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "KUBECONFIG", "API_URL")}
    return {**env, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **extra}


async def read_all(stream: anyio.abc.ByteReceiveStream | None) -> str:
    assert stream is not None
    return "".join([chunk async for chunk in TextReceiveStream(stream)])


async def outcome(proc: anyio.abc.Process) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``proc``, within a deadline that only a hang reaches."""
    with anyio.fail_after(60):
        async with proc:
            out, err = await read_all(proc.stdout), await read_all(proc.stderr)
            return await proc.wait(), out, err


def argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "zygote_probe", *args]


async def test_a_forked_child_starts_as_a_fresh_interpreter_would(probe: Path) -> None:
    env = run_env(ZYGOTE_PROBE="its own value")
    fresh = await outcome(await anyio.open_process(argv("7"), env=env, cwd=probe))
    proc = await _zygote.fork(argv("7"), env, probe)
    assert proc.fresh is None, proc.fresh  # it ran forked, not exec'd
    forked = await outcome(proc)
    assert forked[0] == fresh[0] == 7, forked
    assert forked[2] == fresh[2] == "to stderr\n"
    seen, expected = json.loads(forked[1]), json.loads(fresh[1])
    assert seen == expected
    assert seen["env"]["ZYGOTE_PROBE"] == "its own value"
    assert seen["cwd"] == str(probe) and seen["path"][0] == str(probe)
    assert seen["argv"] == [str(probe / "zygote_probe.py"), "7"]
    assert proc.cpu_seconds is not None and proc.cpu_seconds >= 0
    proc.terminate()  # ended and reaped: nothing happens, as with a fresh child


async def test_two_tasks_may_wait_for_one_forked_child(probe: Path) -> None:
    proc = await _zygote.fork(argv("wait"), run_env(), probe)
    codes: list[int] = []

    async def wait() -> None:
        codes.append(await proc.wait())

    async with proc:
        await started(proc)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                proc.kill()
    assert codes == [-signal.SIGKILL, -signal.SIGKILL]


async def test_each_forked_child_has_its_own_environment_and_directory(tmp_path: Path) -> None:
    results = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "zygote_probe.py").write_text(PROBE)
        env = run_env(ZYGOTE_PROBE=name)
        results.append(await outcome(await _zygote.fork(argv("0"), env, tmp_path / name)))
    one, two = (json.loads(out) for _, out, _ in results)
    assert (one["env"]["ZYGOTE_PROBE"], two["env"]["ZYGOTE_PROBE"]) == ("one", "two")
    assert (one["cwd"], two["cwd"]) == (str(tmp_path / "one"), str(tmp_path / "two"))


async def started(proc: anyio.abc.Process) -> str:
    """The probe's output up to "waiting": it has set nothing up that a signal would meet."""
    assert proc.stdout is not None
    seen = ""
    with anyio.fail_after(60):
        async for chunk in TextReceiveStream(proc.stdout):
            seen += chunk
            if "waiting\n" in seen:
                return seen
    raise AssertionError(f"the probe ended before it waited: {seen}")


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name
)
async def test_a_signal_ends_a_forked_child_as_it_ends_a_fresh_one(
    probe: Path, sig: signal.Signals
) -> None:
    """SIGINT is Python's KeyboardInterrupt in both, which exits through SIGINT again.

    Both start as from a terminal's foreground, with SIGINT at its default, whatever this
    session was started with: a session started with SIGINT ignored (a background job of
    a shell without job control) hands the ignore down to every child, fresh or forked
    from a zygote it started, and SIGINT would then end neither (as it should not: see
    the test below)."""
    codes = []
    # The worker's zygote started as this session did: if that was with SIGINT ignored,
    # the forked child comes from a zygote of the test's own.
    ignores_sigint = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    zygote = None
    with children_start_with_sigint(signal.SIG_DFL):
        fresh = await anyio.open_process(argv("wait"), env=run_env(), cwd=probe)
        if sig == signal.SIGINT and ignores_sigint:
            zygote = _zygote.Server(run_env(), preload=())
    try:
        forked = await _zygote.fork(argv("wait"), run_env(), probe, via=zygote)
        for kind, proc in (("fresh", fresh), ("forked", forked)):
            async with proc:
                await started(proc)
                proc.send_signal(sig)
                with anyio.move_on_after(60) as waited:
                    codes.append(await proc.wait())
                assert not waited.cancelled_caught, (
                    f"the {kind} probe runs 60 s after {sig.name}: {kernel_view(proc.pid)}"
                )
    finally:
        if fresh.returncode is None:
            fresh.kill()
            await fresh.wait()
        if zygote is not None:
            zygote.stop()
    assert codes == [-sig, -sig]


@contextlib.contextmanager
def children_start_with_sigint(disposition: signal.Handlers) -> Iterator[None]:
    """Children started inside (fresh, or a zygote) find SIGINT at ``disposition``,
    whatever this process was started with: ``exec`` keeps an ignore and resets a
    handler to the default. For SIG_DFL this process meanwhile handles SIGINT as pytest
    run from a terminal does (Python's own handler), never with the default."""
    before = signal.getsignal(signal.SIGINT)
    now = signal.default_int_handler if disposition is signal.SIG_DFL else disposition
    if before is None:  # set outside Python: cannot be put back
        raise RuntimeError("SIGINT's disposition was set outside Python")
    signal.signal(signal.SIGINT, now)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


async def test_a_child_started_with_sigint_ignored_keeps_it_ignored(probe: Path) -> None:
    """A session started with SIGINT ignored (a background job of a shell without job
    control) must not end on its terminal's Ctrl-C: a fresh interpreter keeps the
    inherited ignore, and so does a child forked from a zygote started with it (what
    the zygote does with SIGINT itself is not the child's)."""
    with children_start_with_sigint(signal.SIG_IGN):
        fresh = await anyio.open_process(argv("0"), env=run_env(), cwd=probe)
        zygote = _zygote.Server(run_env(), preload=())
    try:
        seen = []
        for proc in (fresh, await _zygote.fork(argv("0"), run_env(), probe, via=zygote)):
            code, out, _ = await outcome(proc)
            assert code == 0
            seen.append(json.loads(out)["signals"][str(int(signal.SIGINT))])
    finally:
        zygote.stop()
    assert seen == [repr(signal.SIG_IGN)] * 2


def kernel_view(pid: int) -> str:
    """What the kernel says of a process that a signal did not end: its state, its pending,
    blocked, ignored and caught signals, and where it sleeps."""
    proc = Path(f"/proc/{pid}")
    try:
        status = [
            line
            for line in (proc / "status").read_text().splitlines()
            if line.startswith(("State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))
        ]
        return "; ".join([*status, "wchan: " + (proc / "wchan").read_text()])
    except OSError as exc:
        return f"not readable ({exc})"


async def test_a_signal_at_once_after_the_fork_meets_a_fresh_child_s_dispositions(
    probe: Path,
) -> None:
    """Sent as soon as the pid is known, SIGTERM may come before the child has put back
    a fresh interpreter's dispositions: it is held until then, so it ends the child as
    SIG_DFL does, and never reaches the zygote (which serves the next request)."""
    for _ in range(3):
        proc = await _zygote.fork(argv("wait"), run_env(), probe)
        proc.terminate()
        code, _, _ = await outcome(proc)
        assert code == -signal.SIGTERM
    assert (await outcome(await _zygote.fork(argv("0"), run_env(), probe)))[0] == 0


async def test_a_child_whose_interpreter_would_start_otherwise_is_exec_d_fresh(
    probe: Path, tmp_path: Path
) -> None:
    """A PYTHONPATH unlike the zygote's changes what the interpreter imports: exec'd."""
    extra = tmp_path / "elsewhere"
    env = run_env(PYTHONPATH=str(extra))
    proc = await _zygote.fork(argv("3"), env, probe)
    assert proc.fresh is not None and "PYTHONPATH" in proc.fresh
    code, out, _ = await outcome(proc)
    assert code == 3
    assert str(extra) in json.loads(out)["path"]


#: A stand-in for an xdist worker: starts a zygote of its own (that imports nothing ahead,
#: to be cheap), forks a waiting probe from it, prints both pids and blocks until killed.
WORKER = textwrap.dedent(
    """\
    import sys
    sys.path.insert(0, {tests!r})
    import anyio, _zygote

    async def main():
        zygote = _zygote.Server({env!r}, preload=())
        proc = await _zygote.fork({argv!r}, {env!r}, {cwd!r}, via=zygote)
        assert proc.stdout is not None
        seen = b""
        while b"waiting" not in seen:
            seen += await proc.stdout.receive()
        print(zygote.proc.pid, proc.pid, flush=True)
        await anyio.sleep_forever()

    anyio.run(main)
    """
)


async def gone(pid: int) -> None:
    """Wait (on a pidfd, an event) until ``pid`` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


async def pids(worker: anyio.abc.Process) -> tuple[int, int]:
    """The worker stand-in's zygote's pid and its forked child's, once both are up."""
    assert worker.stdout is not None
    line = ""
    with anyio.fail_after(60):
        async for chunk in TextReceiveStream(worker.stdout):
            line += chunk
            if line.endswith("\n"):
                break
    zygote_pid, child_pid = (int(word) for word in line.split())
    return zygote_pid, child_pid


async def test_a_killed_worker_leaves_no_zygote_and_no_child_behind(probe: Path) -> None:
    code = WORKER.format(tests=str(HERE), argv=argv("wait"), env=run_env(), cwd=str(probe))
    async with await anyio.open_process([sys.executable, "-c", code], env=run_env()) as worker:
        try:
            zygote_pid, child_pid = await pids(worker)
            assert not exited(zygote_pid) and not exited(child_pid)
        finally:
            worker.kill()  # the subject; and should the above fail, no stand-in is left
        with anyio.fail_after(60):
            await worker.wait()
            await gone(child_pid)
            await gone(zygote_pid)


async def test_stopping_the_zygote_ends_its_live_children(probe: Path) -> None:
    """What the session's end does with this worker's zygote, on one of its own."""
    server = _zygote.Server(run_env(), preload=())  # what it imports is not the subject
    try:
        proc = await _zygote.fork(argv("wait"), run_env(), probe, via=server)
        async with proc:
            await started(proc)
            await anyio.to_thread.run_sync(server.stop)
            with anyio.fail_after(60):
                assert await proc.wait() == -signal.SIGKILL
        assert server.proc.returncode == 0
    finally:
        server.stop()


def test_a_module_that_does_not_import_is_left_to_the_child() -> None:
    start = _zygote._Start()
    start.preload(["orchestrator_no_such_module", "json"])
    assert "orchestrator_no_such_module" not in sys.modules


def test_the_option_and_the_variable_turn_the_zygote_off(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "orchestrator", "run", "--no-live"]
    assert _zygote.wanted(run) is _zygote.enabled
    for env in ({_zygote.FRESH_ENV: "1"}, {}):
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import _zygote; "
            f"print(_zygote.wanted({run!r}), _zygote.wanted({argv('0')!r}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(HERE)],
            env=_without_fresh(os.environ) | env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert out.split() == (["False", "False"] if env else ["True", "False"])


def _without_fresh(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != _zygote.FRESH_ENV}


async def test_run_children_start_with_sigint_and_sigterm_at_their_defaults(
    tmp_path: Path,
) -> None:
    """A session started with SIGINT or SIGTERM ignored (a background job; a supervisor)
    would hand the ignore down, and the orchestrator keeps an ignore it starts with: the
    harness's Ctrl-C, and the SIGTERM that stops a run at its deadline, would then do
    nothing to a run. Unless a test asks otherwise, a child starts with both at their
    defaults (through the launcher, only when this process ignores one)."""
    both = (signal.SIGINT, signal.SIGTERM)
    show = "print(open('/proc/self/status').read().split('SigIgn:')[1].split()[0])"
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in both}
    try:
        proc = await _zygote.open_process([sys.executable, "-c", show], run_env(), tmp_path)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    async with proc:
        out = await read_all(proc.stdout)
        assert await proc.wait() == 0
    assert [sig.name for sig in both if int(out, 16) & 1 << (sig - 1)] == []


def test_the_launcher_hands_down_only_the_dispositions_asked_for(tmp_path: Path) -> None:
    """The launcher is an interpreter, which ignores SIGPIPE and SIGXFSZ for itself; the
    command it ``exec``s (found on PATH, as ``subprocess`` finds one) has what a child
    started directly has (``subprocess`` resets those two), but for the one asked for."""
    show = ["grep", "SigIgn", "/proc/self/status"]

    def ignored(argv: list[str]) -> int:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=tmp_path)
        return int(out.stdout.split()[1], 16)

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # so that the launcher is used
    try:
        argv = _zygote.with_signals(show, {signal.SIGINT: "default"})
        assert argv != show
        direct, launched = ignored(show), ignored(argv)
    finally:
        signal.signal(signal.SIGINT, before)
    assert f"{launched:x}" == f"{direct & ~(1 << (signal.SIGINT - 1)):x}"
