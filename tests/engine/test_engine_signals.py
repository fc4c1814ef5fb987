"""The signals that stop a run: an ignored one stays ignored, and what was there comes back.

Signals are sent to this process with ``os.kill``: one sent by a thread to its own process
is delivered before ``kill`` returns, so a second one sent after it is handled after it,
and waiting for the second (an event, with a deadline) is waiting until the first has
been dealt with, whatever that was.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from orchestrator.engine import STOP_SIGNALS, SignalHandlers

pytestmark = pytest.mark.anyio

LOOPS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


@contextmanager
def dispositions(**wanted: Any) -> Iterator[None]:
    """Set the named signals' handlers for the test, and put this process's back after."""
    sigs = {getattr(signal, name): handler for name, handler in wanted.items()}
    before = {sig: signal.getsignal(sig) for sig in sigs}
    try:
        for sig, handler in sigs.items():
            signal.signal(sig, handler)
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def kill_self(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


def program_handler(signum: int, frame: object) -> None:
    """A handler of the program's own; never called (a test fails if it is)."""
    raise AssertionError(f"the program's own handler ran for {signum}")


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_an_ignored_signal_gets_no_handler_and_stays_ignored(anyio_backend: Any) -> None:
    """SIGINT ignored (a background job's), SIGTERM not: only SIGTERM is taken, a SIGINT
    sent meanwhile is dropped as before, and SIGINT is still ignored afterwards."""
    got: list[signal.Signals] = []
    term = anyio.Event()

    def callback(sig: signal.Signals) -> None:
        got.append(sig)
        if sig == signal.SIGTERM:
            term.set()

    with dispositions(SIGINT=signal.SIG_IGN, SIGTERM=program_handler):
        with SignalHandlers(callback) as handled:
            assert handled == (signal.SIGTERM,)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            kill_self(signal.SIGINT)
            kill_self(signal.SIGTERM)
            with anyio.fail_after(30):  # a hang guard: it comes at once
                await term.wait()
        assert got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is program_handler


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_every_signal_not_ignored_is_taken_then_given_back(anyio_backend: Any) -> None:
    """The program's own Python-level handlers are what it has after the run, not the
    interpreter's defaults that ``loop.remove_signal_handler`` would leave."""
    got: list[signal.Signals] = []
    both = anyio.Event()

    def callback(sig: signal.Signals) -> None:
        got.append(sig)
        if len(got) == 2:
            both.set()

    with dispositions(SIGINT=program_handler, SIGTERM=program_handler):
        with SignalHandlers(callback) as handled:
            assert handled == STOP_SIGNALS
            kill_self(signal.SIGINT)
            kill_self(signal.SIGTERM)
            with anyio.fail_after(30):
                await both.wait()
        assert got == [signal.SIGINT, signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is program_handler
        assert signal.getsignal(signal.SIGTERM) is program_handler


async def test_a_handler_the_program_put_on_the_same_loop_works_again_after() -> None:
    """asyncio's loop: the program's ``loop.add_signal_handler`` callback is added back."""
    loop = asyncio.get_running_loop()
    outer, taken = anyio.Event(), anyio.Event()
    ours: list[signal.Signals] = []

    def mine(sig: signal.Signals) -> None:
        ours.append(sig)
        taken.set()

    with dispositions(SIGTERM=signal.getsignal(signal.SIGTERM)):
        loop.add_signal_handler(signal.SIGTERM, outer.set)
        try:
            with SignalHandlers(mine, [signal.SIGTERM]):
                kill_self(signal.SIGTERM)
                with anyio.fail_after(30):
                    await taken.wait()
            assert not outer.is_set()
            kill_self(signal.SIGTERM)
            with anyio.fail_after(30):
                await outer.wait()
            assert ours == [signal.SIGTERM]
        finally:
            loop.remove_signal_handler(signal.SIGTERM)


async def test_restore_is_idempotent_and_install_once() -> None:
    with dispositions(SIGTERM=program_handler):
        handlers = SignalHandlers(lambda sig: None, [signal.SIGTERM])
        handlers.install()
        with pytest.raises(RuntimeError, match="installed already"):
            handlers.install()
        handlers.restore()
        handlers.restore()
        assert signal.getsignal(signal.SIGTERM) is program_handler


@pytest.mark.parametrize("previous", ["signal.signal", "loop.add_signal_handler"])
async def test_restoring_never_passes_through_the_default(
    monkeypatch: pytest.MonkeyPatch, previous: str
) -> None:
    """Restoring goes from the run's handler to the caller's in one step: a signal at any
    moment of it meets one of the two, never the interpreter's default in between
    (SIGTERM's ends the process there and then, SIGINT's raises KeyboardInterrupt in the
    middle of the restore and leaves the rest of it undone)."""
    loop = asyncio.get_running_loop()
    set_to: list[object] = []
    real = signal.signal

    def recording(sig: int, handler: Any) -> Any:
        if sig in STOP_SIGNALS:
            set_to.append(handler)
        return real(sig, handler)

    def loop_callback(sig: signal.Signals) -> None:
        raise AssertionError(f"the program's loop callback ran for {sig}")

    with dispositions(SIGINT=program_handler, SIGTERM=program_handler):
        if previous == "loop.add_signal_handler":
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, loop_callback, sig)
        try:
            handlers = SignalHandlers(lambda sig: None)
            handlers.install()
            monkeypatch.setattr(signal, "signal", recording)
            try:
                handlers.restore()
            finally:
                monkeypatch.undo()
            assert set_to, "nothing was put back"
            assert signal.SIG_DFL not in set_to and signal.default_int_handler not in set_to
            if previous == "signal.signal":
                assert all(signal.getsignal(sig) is program_handler for sig in STOP_SIGNALS)
            else:
                held = loop._signal_handlers  # type: ignore[attr-defined]
                assert all(held[sig]._callback is loop_callback for sig in STOP_SIGNALS)
        finally:
            if previous == "loop.add_signal_handler":
                for sig in STOP_SIGNALS:
                    loop.remove_signal_handler(sig)


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_signal_the_loop_has_not_handed_on_when_the_run_ends_reaches_the_caller(
    anyio_backend: Any,
) -> None:
    """A signal that arrives in the run's last instructions is with the loop until its
    next iteration; the run gives the signal back before that. It then reaches what the
    caller had (a CLI's exit 143, a program's own handler), once, instead of being lost."""
    got: list[int] = []
    ran: list[signal.Signals] = []

    def caller(signum: int, frame: object) -> None:
        got.append(signum)

    with dispositions(SIGTERM=caller):
        with SignalHandlers(ran.append, [signal.SIGTERM]):
            kill_self(signal.SIGTERM)  # delivered before kill returns; no loop iteration since
        assert got == [signal.SIGTERM]
        kill_self(signal.SIGTERM)  # after the run: the caller's, as before
        # A marker sent after both: once the loop has handed it on, it has handed on
        # whatever it was woken for before it (nothing, here: the run's handler is gone).
        loop = asyncio.get_running_loop()
        marker = anyio.Event()
        loop.add_signal_handler(signal.SIGUSR1, marker.set)
        try:
            kill_self(signal.SIGUSR1)
            with anyio.fail_after(30):
                await marker.wait()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        assert (got, ran) == ([signal.SIGTERM] * 2, [])
