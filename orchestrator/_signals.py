"""What every layer knows of the stop signals, in one leaf module that imports nothing else.

The engine takes SIGINT and SIGTERM for a run (:mod:`orchestrator.engine._signals`), the
command line turns an early SIGTERM into an exception before the engine is imported, the
sandbox's model server stops on them, and the test suite and the soak start children at
the dispositions they choose. Each needs the same few facts, and none of them may import
the others (pyproject.toml's import contracts), so the facts live here: the standard
library only, cheap enough for ``--help``.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

#: The signals that stop a run or a server: Ctrl-C and a polite ``kill`` (a CI job's
#: timeout; what the sandbox sends its model servers).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

#: How a child finds a signal when it starts: at the default, or ignored.
Disposition = Literal["default", "ignore"]


def ignored(sig: signal.Signals) -> bool:
    """Whether the process ignores ``sig`` (as it was started, or as a program set it)."""
    return signal.getsignal(sig) is signal.SIG_IGN


def may_handle_signals() -> bool:
    """Whether the calling thread may take signals: Python lets only the main thread of
    the main interpreter set a handler (``signal.signal`` and an asyncio loop's
    ``add_signal_handler`` raise anywhere else)."""
    import threading  # here: ``--help`` imports this module and needs no threads

    if threading.current_thread() is not threading.main_thread():
        return False
    # A sub-interpreter has a main thread of its own: Python's private module for them
    # tells which interpreter this is (``_xxsubinterpreters`` up to 3.12, ``_interpreters``
    # after). Where neither loads, the thread's answer stands.
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            module: Any = importlib.import_module(name)
        except ImportError:
            continue
        return bool(module.get_current() == module.get_main())
    return True


#: Sets the dispositions its arguments name ("2=ignore 15=default ... --"), then ``exec``s
#: the rest (found on PATH, as ``subprocess`` finds it): dispositions that ``exec`` keeps
#: (an ignore) or resets (a handler) alike. SIGPIPE and SIGXFSZ, which the launcher's own
#: interpreter ignores, go back to their defaults first, as ``subprocess`` sets them for a
#: child it starts directly: the command must not inherit the launcher's ignores.
_LAUNCHER = (
    "import os, signal, sys\n"
    "for sig in (signal.SIGPIPE, signal.SIGXFSZ):\n"
    "    signal.signal(sig, signal.SIG_DFL)\n"
    "end = sys.argv.index('--')\n"
    "for item in sys.argv[1:end]:\n"
    "    number, how = item.split('=')\n"
    "    signal.signal(int(number), signal.SIG_IGN if how == 'ignore' else signal.SIG_DFL)\n"
    "os.execvp(sys.argv[end + 1], sys.argv[end + 1:])\n"
)


def with_signals(argv: Sequence[str], signals: Mapping[int, Disposition]) -> list[str]:
    """``argv``, started so that it finds each of ``signals`` at the disposition given.

    A disposition this process would hand down anyway needs nothing (``exec`` keeps an
    ignore and resets a handler to the default); any other goes through a small launcher
    that sets it, then ``exec``s ``argv`` (one short interpreter start, only then).
    """
    change = {
        int(sig): how
        for sig, how in signals.items()
        if (how == "ignore") != (signal.getsignal(sig) is signal.SIG_IGN)
    }
    if not change:
        return list(argv)
    settings = [f"{sig}={how}" for sig, how in change.items()]
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, *settings, "--", *argv]
