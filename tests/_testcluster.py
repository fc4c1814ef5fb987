"""Stopping test clusters without making each test wait for it.

The shared test cluster's ``stop`` script waits up to five seconds for its API
server and etcd to exit. No test needs that: a cluster is never reused. So
``stop_later`` starts the script in the background and the session waits for
all of them once, at its end (see the ``_stop_clusters`` fixture in conftest).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_pending: list[subprocess.Popen[bytes]] = []


def stop_later(home: str | Path, run_dir: str | Path) -> None:
    _pending.append(
        subprocess.Popen(
            [str(Path(home) / "stop"), str(run_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )


def wait_all(timeout: float = 60) -> None:
    while _pending:
        _pending.pop().wait(timeout=timeout)


def home() -> Path | None:
    """The shared test cluster's folder, from ``TESTCLUSTER_HOME`` (set by .ci/run)."""
    value = os.environ.get("TESTCLUSTER_HOME")
    return Path(value) if value and (Path(value) / "start").exists() else None


@contextmanager
def fresh_cluster(run_dir: Path) -> Iterator[Path]:
    """A fresh test cluster in ``run_dir`` (no whitespace in it); yields its kubeconfig.

    Skips the test with a clear reason on a machine without the test cluster.
    """
    where = home()
    if where is None:
        pytest.skip("TESTCLUSTER_HOME is not set to the shared test cluster (see .ci/run)")
    out = subprocess.run(
        [str(where / "start"), str(run_dir)], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        pytest.fail(f"the test cluster did not start: {out.stderr[-2000:]}")
    try:
        yield Path(out.stdout.strip().splitlines()[-1])
    finally:
        stop_later(where, run_dir)
