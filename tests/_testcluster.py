"""Fresh test clusters for tests, started ahead of need and stopped without waiting.

Every test that runs on the shared test cluster gets a fresh, empty cluster of its own
(``fresh_cluster``); none is ever reused. What this module saves is the waiting:

- **Started ahead.** While a test runs, the cluster of the *next* test of this worker
  starts in the background (pytest knows the next item: see ``pytest_runtest_call`` in
  tests/conftest.py), so that test's setup takes a running cluster instead of waiting
  for ``start`` (about a second on a quiet machine, more under the suite's load). Spares
  start only when the next test takes a cluster (its parameters name the ``testcluster``
  backend), and at most ``MAX_SPARES`` start or wait per worker, so the clusters running
  at once stay bounded: per worker, the one in use and two spares (plus those stopping).
- **Stopped at once.** A used cluster's API server and etcd are killed (``_kill``), and
  ``stop`` tidies up its RUN_DIR in the background; the session waits for all of those
  once, at its end.

``close`` (at session end, also after Ctrl-C or SIGTERM; see tests/conftest.py) stops
every cluster this process started that is still running, spares included, and waits
for every stop: a session leaves no API server or etcd behind. Should this process die
before it can (pytest-xdist kills a worker that does not exit soon after an interrupt),
the reaper process does it (``_REAPER``).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Spares (starting or ready) one worker keeps at most.
MAX_SPARES = 2
#: How long a ``start`` may take before the test fails (the script's own limit is 30 s).
START_TIMEOUT = 120.0
#: How long one ``stop`` may take at the end (the script kills stragglers after 5 s).
STOP_TIMEOUT = 60.0
#: The script gives up on readiness after 30 s by default; a spare starts while tests
#: run, and on a machine busy with other work that is not always enough.
START_READINESS = os.environ.get("TESTCLUSTER_TIMEOUT", "90")
#: Garbage collection of the cluster's API server and etcd (both Go programs), unless the
#: environment sets its own. A test cluster lives for one test and is killed with its data,
#: so it can trade memory for CPU. Measured back to back with ``start RUN_DIR CRD...``
#: (API server CPU-s, default GOGC=100 -> these): the real KubeRay CRDs 3.7-4.5 -> 3.0-3.2,
#: KubeRay, Dynamo and KAITO together 4.9-5.4 -> 3.8-3.9, the KAITO CRDs alone (most
#: cluster tests) 0.42-0.51 -> 0.36-0.38. GOGC=400 lets the heap grow to five times what
#: is live before collecting; GOMEMLIMIT caps that growth, so the largest install peaks at
#: about 650 MB (470-490 MB with the default) and a KAITO-only cluster at about 150 MB
#: (120 MB). At most three run at once per worker, only one of them busy.
GO_GC = {"GOGC": "400", "GOMEMLIMIT": "600MiB"}


def home() -> Path | None:
    """The shared test cluster's folder, from ``TESTCLUSTER_HOME`` (set by .ci/run)."""
    value = os.environ.get("TESTCLUSTER_HOME")
    return Path(value) if value and (Path(value) / "start").exists() else None


@dataclass
class Cluster:
    """A running test cluster: its RUN_DIR, kubeconfig and ``RUN_DIR/env`` variables."""

    run_dir: Path
    kubeconfig: Path
    env: dict[str, str]


class _Start:
    """One ``start RUN_DIR`` running in the background."""

    def __init__(self, where: Path, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.proc = subprocess.Popen(
            [str(where / "start"), str(run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**GO_GC, **os.environ, "TESTCLUSTER_TIMEOUT": START_READINESS},
        )

    def result(self, timeout: float) -> Cluster:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError(f"start did not finish within {timeout:.0f} s") from None
        if self.proc.returncode != 0:
            raise RuntimeError(err[-2000:])
        kubeconfig = Path(out.strip().splitlines()[-1])
        env_file = self.run_dir / "env"
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        return Cluster(self.run_dir, kubeconfig, env)


#: The reaper: a process of its own that outlives this one. It reads ``+ RUN_DIR`` (a cluster
#: starts) and ``- RUN_DIR`` (its stop has begun) from its stdin; at end of file, which comes
#: when this process closes the pipe or dies in any way (SIGKILL too, as pytest-xdist does to a
#: worker that does not exit within seconds of an interrupted session), it stops every cluster
#: still listed and waits for those stops. Signals to the process group do not stop it first.
_REAPER = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
live = []
for line in sys.stdin:
    verb, _, run_dir = line.rstrip("\\n").partition(" ")
    if verb == "+":
        live.append(run_dir)
    elif run_dir in live:
        live.remove(run_dir)
stops = [subprocess.Popen([sys.argv[1], d], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) for d in live]
for stop in stops:
    stop.wait()
"""


class Pool:
    """This process's test clusters: spares started ahead, and every one it must stop."""

    def __init__(self) -> None:
        self.base: Path | None = None
        self._spares: list[_Start] = []
        self._running: set[Path] = set()  # started (or starting) and not yet stopped
        self._stops: list[subprocess.Popen[bytes]] = []
        self._count = 0
        self._users: dict[Path, dict[str, Any]] = {}  # a taken cluster's test, for ``account``
        self._reaper: subprocess.Popen[str] | None = None

    def _tell_reaper(self, where: Path, line: str) -> None:
        if self._reaper is None:
            self._reaper = subprocess.Popen(
                [sys.executable, "-c", _REAPER, str(where / "stop")],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        assert self._reaper.stdin is not None
        self._reaper.stdin.write(line + "\n")
        self._reaper.stdin.flush()

    def _base(self) -> Path:
        if self.base is None or any(ch.isspace() for ch in str(self.base)):
            # RUN_DIR may not contain whitespace; pytest's tmp dir may.
            self.base = Path(tempfile.mkdtemp(prefix="testclusters-"))
        return self.base

    def _start(self, where: Path) -> _Start:
        self._count += 1
        run_dir = self._base() / f"tc{self._count}"
        self._running.add(run_dir)
        self._tell_reaper(where, f"+ {run_dir}")
        return _Start(where, run_dir)

    def prepare(self, wanted: int = MAX_SPARES) -> None:
        """Start spares in the background until ``wanted`` (at most ``MAX_SPARES``) are
        starting or waiting.

        Two, not one: a short test (a conformance check takes a fraction of a second)
        ends before the next cluster is up, and the second spare has had two tests' time.
        But only as many as the tests still queued on this worker will take (``wanted``,
        see ``pytest_runtest_call`` in tests/conftest.py): a spare that no test takes costs
        a whole start for nothing, and every worker's share used to end with one or two.
        """
        where = home()
        while where is not None and len(self._spares) < min(wanted, MAX_SPARES):
            self._spares.append(self._start(where))

    def take(self, where: Path) -> Cluster:
        """A fresh running cluster: a spare if one is there, else one started now."""
        start = self._spares.pop(0) if self._spares else self._start(where)
        try:
            cluster = start.result(START_TIMEOUT)
        except RuntimeError as exc:
            self.stop_later(where, start.run_dir)
            pytest.fail(f"the test cluster did not start: {exc}")
        if os.environ.get(ACCOUNT):
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").rpartition(" ")[0]
            self._users[start.run_dir] = {"test": test, **_cpu(start.run_dir, "_at_take")}
        return cluster

    def stop_later(self, where: Path, run_dir: Path) -> None:
        account(run_dir, self._users.pop(run_dir, None))
        self._running.discard(run_dir)
        self._tell_reaper(where, f"- {run_dir}")
        _kill(run_dir)
        self._stops.append(
            subprocess.Popen(
                [str(where / "stop"), str(run_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def close(self) -> None:
        """Stop every cluster still running (spares too) and wait for every stop."""
        where = home()
        spares, self._spares = self._spares, []
        for start in spares:
            try:
                start.proc.communicate(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                start.proc.kill()
                start.proc.communicate()
        if where is not None:
            for run_dir in sorted(self._running):
                self.stop_later(where, run_dir)
        stops, self._stops = self._stops, []
        for stop in stops:
            try:
                stop.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                stop.kill()
                stop.wait()
        reaper, self._reaper = self._reaper, None
        if reaper is not None:  # nothing is left on its list: it exits at once
            assert reaper.stdin is not None
            reaper.stdin.close()
            reaper.wait(timeout=STOP_TIMEOUT)


#: ``TESTCLUSTER_ACCOUNT=FILE`` appends one JSON line per test cluster to FILE as it is
#: discarded: the test that took it (null for a spare that no test took), the CPU seconds its
#: API server and etcd used (from ``/proc``, just before they are killed), how long it ran,
#: and the requests it served (``apiserver_request_total`` from its ``/metrics``, by verb,
#: resource and code). ``python tests/_testcluster.py FILE`` sums it up by test file. For
#: finding what costs the API servers CPU; it adds a request and a file write per cluster.
ACCOUNT = "TESTCLUSTER_ACCOUNT"


def account(run_dir: Path, taken: dict[str, Any] | None) -> None:
    """Write ``run_dir``'s line to the ``TESTCLUSTER_ACCOUNT`` file, if that is set.

    ``taken`` is what ``Pool.take`` noted when a test took the cluster (the test, and the
    CPU its start and wait had used by then); None for a spare that no test took.
    """
    path = os.environ.get(ACCOUNT)
    if not path:
        return
    record: dict[str, Any] = {"test": None, **(taken or {}), **_cpu(run_dir, "")}
    record["worker"] = os.environ.get("PYTEST_XDIST_WORKER")
    try:
        record["requests"] = _requests(run_dir)
    except (OSError, ValueError, KeyError) as exc:
        record["requests_error"] = repr(exc)
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")


def _cpu(run_dir: Path, suffix: str) -> dict[str, float]:
    """CPU seconds (user + system) the cluster's API server and etcd have used so far, and
    the seconds since each started, from ``/proc``."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    for name in ("apiserver", "etcd"):
        try:
            pid = int((run_dir / f"{name}.pid").read_text())
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue  # it never started, or died
        out[f"{name}_cpu{suffix}"] = (int(stat[11]) + int(stat[12])) / tick
        out[f"{name}_seconds{suffix}"] = round(uptime - int(stat[19]) / tick, 2)
    return out


def _requests(run_dir: Path) -> dict[str, float]:
    """``apiserver_request_total`` of the cluster in ``run_dir``: ``"VERB group/resource[/sub]
    code"`` -> count (the metrics request itself is not counted)."""
    env = dict(line.split("=", 1) for line in (run_dir / "env").read_text().splitlines())
    ca = re.search(r"certificate-authority-data: *(\S+)", (run_dir / "kubeconfig").read_text())
    assert ca is not None, "no CA in the kubeconfig"
    tls = ssl.create_default_context(cadata=base64.b64decode(ca[1]).decode())
    request = urllib.request.Request(
        env["TESTCLUSTER_SERVER"] + "/metrics",
        headers={"Authorization": f"Bearer {env['TESTCLUSTER_TOKEN']}"},
    )
    with urllib.request.urlopen(request, context=tls, timeout=30) as answer:
        text = answer.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels, _, value = line[len("apiserver_request_total{") :].rpartition("} ")
            d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            what = "/".join(
                x for x in (d.get("group"), d.get("resource"), d.get("subresource")) if x
            )
            key = f"{d.get('verb')} {what} {d.get('code')}"
            out[key] = out.get(key, 0) + float(value)
    return out


def summary(lines: list[str]) -> str:
    """What ``account`` wrote, summed up: API server CPU-s by test file (all of it, and the
    part spent after the test took the cluster), and the requests served."""
    records = [json.loads(line) for line in lines if line.strip()]
    by_file: dict[str, list[tuple[float, float]]] = {}
    requests: dict[str, float] = {}
    for record in records:
        test = record["test"]
        kind = "(spare, never taken)" if test is None else test.split("::")[0]
        cpu = record.get("apiserver_cpu", 0.0)
        by_file.setdefault(kind, []).append((cpu, cpu - record.get("apiserver_cpu_at_take", cpu)))
        for key, count in record.get("requests", {}).items():
            requests[key] = requests.get(key, 0) + count
    total = sum(cpu for rows in by_file.values() for cpu, _ in rows)
    etcd = sum(record.get("etcd_cpu", 0.0) for record in records)
    out = [
        f"{len(records)} clusters: API servers {total:.1f} CPU-s, etcd {etcd:.1f} CPU-s",
        "API server CPU-s: all, clusters x mean, mean after the test took it; test file",
    ]
    for kind, rows in sorted(by_file.items(), key=lambda kv: -sum(cpu for cpu, _ in kv[1])):
        whole, used = sum(cpu for cpu, _ in rows), sum(after for _, after in rows)
        n = len(rows)
        out.append(f"{whole:7.1f} {n:4d} x {whole / n:5.2f} {used / n:5.2f}  {kind}")
    out.append("requests served (all clusters), the most frequent:")
    top = sorted(requests.items(), key=lambda kv: -kv[1])[:40]
    out += [f"{count:8.0f}  {key}" for key, count in top]
    return "\n".join(out)


def _kill(run_dir: Path) -> None:
    """SIGKILL a discarded cluster's API server and etcd; ``stop`` then only tidies up.

    ``stop`` asks both to shut down gracefully and waits (about 4.7 s, nearly all of it
    idle) before it removes the pid files and etcd's data. A test cluster is thrown away
    with its data, so nothing needs that shutdown, and the last stops of a session no
    longer hold its end for those seconds. Like ``stop``, this kills a pid only while its
    command line still names this RUN_DIR.
    """
    where = f"{run_dir.resolve()}/".encode()
    for name in ("apiserver", "etcd"):
        try:
            pid = int((run_dir / f"{name}.pid").read_text())
            if where in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            continue  # not started, already gone, or not ours any more: stop sorts it out


pool = Pool()
atexit.register(pool.close)  # the session's own teardown comes first; this is the net under it


def needs_cluster(item: Any) -> bool:
    """Whether a collected test takes a fresh test cluster: a parameter names it, and it is
    not marked to be skipped (a skipped row starts no fixture)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or item.get_closest_marker("skip") is not None:
        return False
    return any(value == "testcluster" for value in callspec.params.values())


def stop_later(where: str | Path, run_dir: str | Path) -> None:
    pool.stop_later(Path(where), Path(run_dir))


@contextmanager
def fresh_cluster() -> Iterator[Cluster]:
    """A fresh, empty test cluster of this test's own; stopped (in the background) after it.

    Skips the test with a clear reason on a machine without the test cluster.
    """
    where = home()
    if where is None:
        pytest.skip("TESTCLUSTER_HOME is not set to the shared test cluster (see .ci/run)")
    cluster = pool.take(where)
    try:
        yield cluster
    finally:
        stop_later(where, cluster.run_dir)


def provider_crds() -> dict[str, Path]:
    """The real KubeRay and Dynamo CRDs, when the environment names them (``.ci/run`` does)."""
    out = {}
    for provider, var in (("kuberay", "KUBERAY_CRDS_DIR"), ("dynamo", "DYNAMO_CRDS_DIR")):
        value = os.environ.get(var)
        if value and Path(value).is_dir():
            out[provider] = Path(value)
    return out


if __name__ == "__main__":  # python tests/_testcluster.py FILE: sum up a TESTCLUSTER_ACCOUNT file
    print(summary(Path(sys.argv[1]).read_text().splitlines()))
