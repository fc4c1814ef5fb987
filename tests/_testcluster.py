"""Stopping test clusters without making each test wait for it.

The shared test cluster's ``stop`` script waits up to five seconds for its API
server and etcd to exit. No test needs that: a cluster is never reused. So
``stop_later`` starts the script in the background and the session waits for
all of them once, at its end (see the ``_stop_clusters`` fixture in conftest).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

_pending: list[subprocess.Popen[bytes]] = []


def stop_later(home: str | Path, run_dir: str | Path) -> None:
    _pending.append(subprocess.Popen([str(Path(home) / "stop"), str(run_dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def wait_all(timeout: float = 60) -> None:
    while _pending:
        _pending.pop().wait(timeout=timeout)
