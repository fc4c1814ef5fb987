"""A CPU-time budget for a piece of work, in place of a wall-clock deadline.

A test that catches a slow algorithm (quadratic on hostile input) needs a bound, and a
wall-clock one is missed on a shared, loaded machine: at a load of 20 on two cores a
second of work takes ten. What the work costs in CPU (user + system) hardly moves with
load, so the bound is a CPU budget: the child runs under ``RLIMIT_CPU`` (the kernel
stops it once it has spent the budget, however long that takes on the wall), and what it
spent is read from ``wait4``'s resource usage. The wall-clock deadline is a hang guard
only, far out of a loaded machine's reach.

CPU time is not entirely load-free (a shared core's caches, the clock's frequency), so a
budget should sit many times above what the work costs and well below what the code it
guards against costs.
"""

from __future__ import annotations

import os
import select
import signal
import sys

#: Only a child that stopped making progress reaches this (it spends no CPU).
HANG_SECONDS = 900.0


def cpu_seconds(script: str, budget: int, hang: float = HANG_SECONDS) -> float:
    """Run ``script`` in a fresh interpreter; the CPU seconds (user + system) it spent.

    Fails (AssertionError) if it spent ``budget`` seconds or more, was stopped by the
    budget, exited otherwise than with 0, or ran ``hang`` seconds of wall time.
    """
    limit = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_CPU, ({budget}, {budget}))\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    )
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", limit + script], os.environ)
    try:
        pidfd = os.pidfd_open(pid)
        try:
            hung = not select.select([pidfd], [], [], hang)[0]
        finally:
            os.close(pidfd)
    except BaseException:
        hung = True  # interrupted: the child goes too
        raise
    finally:
        if hung:
            os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
    spent = usage.ru_utime + usage.ru_stime
    code = os.waitstatus_to_exitcode(status)
    assert not hung, f"still running after {hang} s of wall time ({spent:.1f} CPU s)"
    assert code not in (-signal.SIGXCPU, -signal.SIGKILL), (
        f"stopped at its CPU budget of {budget} s (spent {spent:.1f} s)"
    )
    assert code == 0, f"exited with {code} after {spent:.1f} CPU s"
    assert spent < budget, f"spent {spent:.1f} CPU s, over its budget of {budget} s"
    return spent
