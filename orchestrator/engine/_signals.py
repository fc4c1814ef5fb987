"""The signals that stop a run (SIGINT, SIGTERM): taken for the run, given back after it.

Two rules that a command-line tool and a library both have to keep:

- A signal the process was started with ignored stays ignored. A non-interactive shell
  starts its background jobs (``cmd &`` in a script, a CI runner's step) with SIGINT
  ignored, because a Ctrl-C typed for the foreground job reaches every process of the
  group: a run put in the background must not be stopped by it. ``nohup`` does the same
  for SIGHUP, and a supervisor may do it for SIGTERM. So a signal found ignored gets no
  handler, and the kernel goes on dropping it. Python keeps an inherited ignore of
  SIGINT (it installs its KeyboardInterrupt handler only over the default), and so does
  ``asyncio.run``; ``loop.add_signal_handler`` does not look, which is why this module
  does.
- What the process had before the run is what it has after. ``loop.remove_signal_handler``
  puts back the interpreter's defaults, not what was there: a program that runs flows as
  a library would lose ``asyncio.run``'s Ctrl-C handler, or one of its own, for the rest
  of its life. So the handler found is put back: a Python-level one with ``signal.signal``,
  one that the same asyncio loop held by adding it again. (uvloop does not let its
  handlers be read: one that the program added to the same uvloop loop is the one thing
  that is not put back, and the signal is then dropped.) A signal that arrived while the
  run had it, but that the loop had not yet handed on when the run ended, is raised again
  once the caller's handler is back: it is the caller's, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

# The command line and the sandbox need these too, and may not import the engine.
from .._signals import STOP_SIGNALS, ignored, may_handle_signals

__all__ = ["STOP_SIGNALS", "SignalHandlers", "ignored", "may_handle_signals"]


class _Previous:
    """What ``sig`` did before the run took it, and how to put that back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
        self.sig = sig
        self.handler = signal.getsignal(sig)
        # asyncio's Unix loops keep their handlers in this mapping (since 3.4); another
        # loop (uvloop) keeps its own where they cannot be read.
        held = getattr(loop, "_signal_handlers", None)
        self.handle: asyncio.Handle | None = held.get(sig) if isinstance(held, dict) else None

    @property
    def to_loop(self) -> bool:
        """Whether it was a callback of the loop (one that is still live), put back there."""
        return self.handle is not None and not self.handle.cancelled()

    def restore(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put it back in one step from the run's handler, where the loop allows that.

        ``loop.remove_signal_handler`` first sets the interpreter's default, and a signal
        in between would meet it: SIGTERM's ends the process there and then, SIGINT's
        raises KeyboardInterrupt in the middle of the restore, leaving the rest undone.
        So on asyncio's loops the run's handler is replaced, never removed first: the
        program's loop callback by adding it again (which replaces), a Python-level
        handler by setting it, after which the loop forgets the run's as its
        ``remove_signal_handler`` would (and lets go of the wakeup fd when it holds no
        other). uvloop's handlers cannot be reached: there, the default comes in between.
        """
        handle = self.handle
        if handle is not None and self.to_loop:
            callback: Callable[..., object] = handle._callback  # type: ignore[attr-defined]
            args: Sequence[Any] = handle._args
            loop.add_signal_handler(self.sig, callback, *args)
            if callable(self.handler):  # the Python-level one it had (an outer run's count)
                signal.signal(self.sig, self.handler)
                signal.siginterrupt(self.sig, False)
            return
        held = getattr(loop, "_signal_handlers", None)
        if isinstance(held, dict) and self.handler is not None:
            signal.signal(self.sig, self.handler)
            held.pop(self.sig, None)
            if not held:
                with contextlib.suppress(ValueError, OSError):  # as asyncio's own
                    signal.set_wakeup_fd(-1)
            return
        loop.remove_signal_handler(self.sig)
        if self.handler is not None:  # None: set outside Python, cannot be put back
            signal.signal(self.sig, self.handler)


class SignalHandlers:
    """Call ``callback(sig)`` on the running loop for each of ``signals`` that the process
    does not ignore, from :meth:`install` (or entering the ``with`` block) until
    :meth:`restore` (or its end), which puts back what each signal did before.

    :attr:`handled` tells which signals were taken: an ignored one is not, and the run
    goes on as if it had never been sent. Use it on the loop's thread, in the main thread
    (only there does Python let a program handle signals: :func:`may_handle_signals`).
    """

    def __init__(
        self,
        callback: Callable[[signal.Signals], object],
        signals: Sequence[signal.Signals] = STOP_SIGNALS,
    ) -> None:
        self.callback = callback
        self.signals = tuple(signals)
        #: The signals taken (those not ignored), once installed.
        self.handled: tuple[signal.Signals, ...] = ()
        self._taken: list[_Previous] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Per signal, how many arrived (counted by the Python-level handler, at once) and
        #: how many the loop handed to ``callback`` (later, on one of its iterations).
        self._arrived: dict[int, int] = {}
        self._dispatched: dict[int, int] = {}
        self._restored = False

    def install(self) -> tuple[signal.Signals, ...]:
        """Take every signal not ignored; return those taken."""
        if self._loop is not None:
            raise RuntimeError("signal handlers installed already")
        loop = self._loop = asyncio.get_running_loop()
        try:
            for sig in self.signals:
                if ignored(sig):
                    continue
                previous = _Previous(loop, sig)
                loop.add_signal_handler(sig, self._dispatch, sig)
                self._taken.append(previous)
                # The loop's own Python-level handler does nothing: the interpreter wakes
                # the loop through its wakeup fd whatever that handler is. This one counts
                # what arrives, so that a signal the loop has not yet handed on when the
                # run ends is not lost (see restore).
                signal.signal(sig, self._arrive)
                signal.siginterrupt(sig, False)  # as the loop set it
        except BaseException:
            self.restore()
            raise
        self.handled = tuple(p.sig for p in self._taken)
        return self.handled

    def _arrive(self, signum: int, frame: object) -> None:
        self._arrived[signum] = self._arrived.get(signum, 0) + 1

    def _dispatch(self, sig: signal.Signals) -> None:
        if self._restored:  # handed back to what was there before (restore)
            return
        self._dispatched[sig] = self._dispatched.get(sig, 0) + 1
        self.callback(sig)

    def restore(self) -> None:
        """Give every signal taken back what it did before; idempotent.

        A signal that arrived while the run had it but that the loop had not yet handed
        to ``callback`` (the loop does that on a later iteration, and the run may end
        first: a SIGTERM in the last instructions of a run) is raised again once what was
        there before is back, so that it reaches that (``asyncio.run``'s Ctrl-C handler,
        the program's own, the default) instead of being dropped.
        """
        loop = self._loop
        undelivered: list[signal.Signals] = []
        while self._taken:
            previous = self._taken.pop()
            assert loop is not None
            # A callback of the same loop gets a pending signal from the loop itself.
            to_loop = previous.to_loop
            previous.restore(loop)
            sig = previous.sig
            if not to_loop and self._arrived.get(sig, 0) > self._dispatched.get(sig, 0):
                undelivered.append(sig)
        if self._loop is not None:
            self._restored = True
        for sig in undelivered:
            signal.raise_signal(sig)

    def __enter__(self) -> tuple[signal.Signals, ...]:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()
