"""Fresh test clusters for tests, started ahead of need and stopped without waiting.

Every test that runs on the shared test cluster gets a fresh, empty cluster of its own
(``fresh_cluster``); none is ever reused. What this module saves is the waiting:

- **Started ahead.** While a test runs, the cluster of the *next* test of this worker
  starts in the background (pytest knows the next item: see ``pytest_runtest_call`` in
  tests/conftest.py), so that test's setup takes a running cluster instead of waiting
  for one to start (about a second on a quiet machine, more under the suite's load).
  Spares start only when the next test takes a cluster (its parameters name the
  ``testcluster`` backend), and at most ``MAX_SPARES`` start or wait per worker, so the
  clusters running at once stay bounded: per worker, the one in use and two spares (a
  discarded one is killed and waited for before its test's teardown ends).
- **Started without the script.** etcd and the API server are launched as the test
  cluster's ``start`` launches them, minus what costs CPU and serves no test (``_Start``).
- **Stopped at once.** A used cluster's API server and etcd are killed (``_kill``) and
  waited for, and its RUN_DIR is tidied as ``stop`` tidies it (``_tidy``), without the
  script.

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
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Spares (starting or ready) one worker keeps at most.
MAX_SPARES = 2
#: How long taking a cluster may wait for it at most (``START_READINESS`` comes first).
START_TIMEOUT = 120.0
#: How long one ``stop`` may take at the end (the script kills stragglers after 5 s).
STOP_TIMEOUT = 60.0
#: Seconds from a cluster's launch to its readiness before it counts as failed (``start``
#: gives up after 30 s by default; a spare starts while tests run, and on a machine busy
#: with other work that is not always enough). ``TESTCLUSTER_TIMEOUT`` as for ``start``.
START_READINESS = os.environ.get("TESTCLUSTER_TIMEOUT", "90")
#: The Go runtime of the cluster's API server and etcd (both Go programs), unless the
#: environment sets its own. A test cluster lives for one test and is killed with its data,
#: so it can trade memory for CPU.
#:
#: - ``GOGC=off`` with ``GOMEMLIMIT=600MiB``: no garbage collection until the heap reaches
#:   600 MiB, then as much as keeps it there. Most clusters (the KAITO CRDs and a flow's
#:   objects) never get there and never collect; the provider CRD installs, the only ones
#:   that do, peak where they did with ``GOGC=400`` under the same limit (about 650 MB
#:   resident; a KAITO cluster about 185 MB instead of 160).
#: - ``GOMAXPROCS=1``: one thread runs Go code at a time. On two cores shared by eight
#:   workers no cluster gets a second core anyway; with one, the runtime stops spinning
#:   threads up to look for work and stops running garbage collection on a second thread.
#:
#: Measured side by side, one cluster per variant in turn (start, idle, install, work):
#: see tests/README.md ("Less garbage collection").
GO_RUNTIME = {"GOGC": "off", "GOMEMLIMIT": "600MiB", "GOMAXPROCS": "1"}


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


#: What ``start`` gives each cluster unless the environment says otherwise (its README): two
#: fake Ready nodes with 8 GPUs each, and no extra node labels.
NODES = ("TESTCLUSTER_FAKE_NODES", "2"), ("TESTCLUSTER_NODE_GPUS", "8")
#: How many times a start picks new ports when etcd finds one taken meanwhile (as ``start``).
PORT_ATTEMPTS = 5


class _Start:
    """One cluster starting in the background: the test cluster's etcd and API server,
    launched the way its ``start RUN_DIR`` launches them, without the script.

    ``start`` costs what a test's cluster does not need: it polls for readiness in bash
    every 50 ms (two processes forked each time: 0.1 CPU-s or more per start, and more the
    longer a loaded machine makes it wait), and it removes RUN_DIR/certs, so that every
    API server generated a fresh self-signed serving certificate (RSA keys: 0.06 CPU-s of
    its 0.25). Here the processes start directly, readiness is looked at only when a test
    takes the cluster (a spare is ready long before, most often), and the API servers of
    one process share the certificate the first of them generated (``certs``). Each
    cluster is still its own etcd and API server, with an empty etcd and its own token;
    RUN_DIR holds the same files as after ``start`` (pid files, kubeconfig, env, logs), so
    ``stop`` and the reaper treat it as one of its own.
    """

    def __init__(self, where: Path, run_dir: Path, certs: Path | None) -> None:
        self.where = where
        self.run_dir = run_dir
        self.certs = certs or run_dir / "certs"
        self.token = secrets.token_hex(16)
        self.deadline = time.monotonic() + float(START_READINESS)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.attempts = 0
        self.error: str | None = None
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._launch()
        except OSError as exc:
            self.error = f"could not start the test cluster: {exc}"

    def _launch(self) -> None:
        self.attempts += 1
        run, bin_dir = self.run_dir, self.where / "bin"
        for name in ("kubeconfig", "env", "etcd.pid", "apiserver.pid"):
            (run / name).unlink(missing_ok=True)
        shutil.rmtree(run / "etcd-data", ignore_errors=True)
        client, peer = _free_ports(2)
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd, apiserver = launch_argv(bin_dir, run, self.certs, self.token, client, peer)
        for name, argv in (("etcd", etcd), ("apiserver", apiserver)):
            with open(run / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**GO_RUNTIME, **os.environ},
                    start_new_session=True,  # as under ``start``: a Ctrl-C leaves it to the teardown
                )
            self.procs.append(proc)
            (run / f"{name}.pid").write_text(f"{proc.pid}\n")

    def result(self, timeout: float) -> Cluster:
        """The cluster once its API server is ready (it writes the kubeconfig then)."""
        deadline = min(self.deadline, time.monotonic() + timeout)
        kubeconfig = self.run_dir / "kubeconfig"
        while self.error is None:
            text = kubeconfig.read_text() if kubeconfig.exists() else ""
            server = re.search(r"^ *server: *(\S+)", text, re.MULTILINE)
            if server and self.token in text:
                env = {
                    "KUBECONFIG": str(kubeconfig),
                    "TESTCLUSTER_SERVER": server[1],
                    "TESTCLUSTER_TOKEN": self.token,
                    "TESTCLUSTER_ETCD": self.etcd_url,
                }
                lines = "".join(f"{key}={value}\n" for key, value in env.items())
                (self.run_dir / "env").write_text(lines)
                return Cluster(self.run_dir, kubeconfig, env)
            etcd, apiserver = self.procs[-2:]
            if etcd.poll() is not None:
                log = _tail(self.run_dir / "etcd.log")
                if "address already in use" in log and self.attempts < PORT_ATTEMPTS:
                    self.reap()
                    self._launch()  # a port was taken meanwhile: others, as ``start`` does
                    continue
                self.error = f"etcd exited; last lines of its log:\n{log}"
            elif apiserver.poll() is not None:
                log = _tail(self.run_dir / "apiserver.log")
                errors = [line for line in log.splitlines() if line.startswith("error:")]
                self.error = "miniapiserver exited: " + ("\n".join(errors) or log)
            elif time.monotonic() > deadline:
                self.error = f"not ready after {START_READINESS} s; see {self.run_dir}/*.log"
            else:
                time.sleep(0.02)
        self.reap()
        raise RuntimeError(self.error)

    def reap(self) -> None:
        """Kill and wait for this start's processes (an unreaped one lingers as a zombie,
        which ``stop`` would take for a live process and wait on for seconds)."""
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def launch_argv(
    bin_dir: Path, run: Path, certs: Path | None, token: str, client: int, peer: int
) -> tuple[list[str], list[str]]:
    """etcd's and the API server's command lines for a cluster in ``run``, as ``start``
    writes them (``tests/test_testcluster_launch.py`` holds the two to the same flags, so
    a ``start`` that changes them fails that test by name, not every cluster test)."""
    etcd_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    etcd = [
        str(bin_dir / "etcd"), "--name", "default", "--data-dir", str(run / "etcd-data"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"default={peer_url}", "--unsafe-no-fsync",
        "--log-level", "warn",
    ]  # fmt: skip
    nodes, gpus = (os.environ.get(name, default) for name, default in NODES)
    labels = os.environ.get("TESTCLUSTER_NODE_LABELS")
    apiserver = [
        str(bin_dir / "miniapiserver"), "--etcd-servers", etcd_url,
        "--secure-port", "0", "--cert-dir", str(certs), "--token", token,
        "--write-kubeconfig", str(run / "kubeconfig"), "--etcd-wait", f"{START_READINESS}s",
        "--fake-nodes", nodes, "--fake-node-gpus", gpus,
        *(["--fake-node-labels", labels] if labels else []),
    ]  # fmt: skip
    return etcd, apiserver


def _free_ports(count: int) -> list[int]:
    """Free loopback ports, the way ``start`` picks etcd's (bound, then let go: another
    process may take one before etcd does; ``result`` retries then)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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
        self._running: dict[Path, _Start] = {}  # started (or starting) and not yet stopped
        self._certs: Path | None = None  # the first API server's; see ``_start``
        self._certs_from: Path | None = None  # the cluster generating them
        self._certs_whole = False  # that cluster has been ready: its certificate is written
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
        """Start a cluster. The first one generates a serving certificate in the shared
        folder; once it has written its kubeconfig (it is serving with that certificate),
        later ones use the same instead of generating their own, and until then their own."""
        self._count += 1
        run_dir = self._base() / f"tc{self._count}"
        self._tell_reaper(where, f"+ {run_dir}")
        certs = None
        if self._certs_from is None:
            self._certs, self._certs_from = self._base() / f"certs-{run_dir.name}", run_dir
            certs = self._certs
        elif self._certs_whole or (self._certs_from / "kubeconfig").exists():
            self._certs_whole = True
            certs = self._certs
        start = self._running[run_dir] = _Start(where, run_dir, certs)
        return start

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
            if start.run_dir == self._certs_from and not self._certs_whole:
                self._certs_from = None  # the next start generates them again
            pytest.fail(f"the test cluster did not start: {exc}")
        self._certs_whole |= start.run_dir == self._certs_from
        if os.environ.get(ACCOUNT):
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").rpartition(" ")[0]
            self._users[start.run_dir] = {"test": test, **_cpu(start.run_dir, "_at_take")}
        return cluster

    def stop_later(self, where: Path, run_dir: Path) -> None:
        account(run_dir, self._users.pop(run_dir, None))
        start = self._running.pop(run_dir, None)
        self._tell_reaper(where, f"- {run_dir}")
        _kill(run_dir)
        if start is not None:
            start.reap()  # both of its processes are gone now, and waited for
            _tidy(run_dir)
            return
        # Not one this pool launched (or stopped twice): the script sorts it out.
        # Stops that have ended are waited for here, not only at the end of the session:
        # until then each lingered as a zombie (a hundred at a time, in a full run).
        self._stops = [stop for stop in self._stops if stop.poll() is None]
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
        self._spares = []
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
    """CPU seconds (user + system) the cluster's API server and etcd have used so far, the
    seconds since each started, and the most memory each has held (MB resident), from
    ``/proc``."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    for name in ("apiserver", "etcd"):
        try:
            pid = int((run_dir / f"{name}.pid").read_text())
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, ValueError):
            continue  # it never started, or died
        out[f"{name}_cpu{suffix}"] = (int(stat[11]) + int(stat[12])) / tick
        out[f"{name}_seconds{suffix}"] = round(uptime - int(stat[19]) / tick, 2)
        peak = re.search(r"^VmHWM:\s*(\d+) kB", status, re.MULTILINE)
        if peak:
            out[f"{name}_peak_mb{suffix}"] = round(int(peak[1]) / 1024)
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
    part spent after the test took the cluster), its peak memory, and the requests served."""
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
    peaks = sorted(
        record["apiserver_peak_mb"] for record in records if "apiserver_peak_mb" in record
    )
    out = [
        f"{len(records)} clusters: API servers {total:.1f} CPU-s, etcd {etcd:.1f} CPU-s",
        *(
            [f"API server peak resident MB: median {peaks[len(peaks) // 2]}, max {peaks[-1]}"]
            if peaks
            else []
        ),
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
    """SIGKILL a discarded cluster's API server and etcd; what is left is only to tidy up.

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
            continue  # not started, already gone, or not ours any more


def _tidy(run_dir: Path) -> None:
    """Remove what ``stop`` removes once nothing runs in RUN_DIR: the pid files, the
    kubeconfig, the env file and etcd's data (its write-ahead log alone takes 64 MB of
    disk); the logs stay.

    Only for a cluster whose processes this process has killed and waited for. ``stop``
    would find them gone and do the same, from a bash script that forks half a dozen
    commands: about 0.011 CPU-s a cluster, where this takes well under a millisecond.
    """
    for name in ("etcd.pid", "apiserver.pid", "kubeconfig", "env"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "etcd-data", ignore_errors=True)


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
