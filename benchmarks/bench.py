"""Benchmarks: watches vs polling, requests while waiting, overhead, start-up, N flows.

    python benchmarks/bench.py            # everything, about three minutes
    python benchmarks/bench.py --quick    # shorter waits, for a smoke run

Prints a table and writes ``benchmarks/results.json``. Every ratio is measured
in this one run, on the same sandbox, so machine noise hits both sides of each
comparison alike. Numbers from a loaded laptop or CI runner will differ; the
ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.clients import CRDS, KubeClient, KubeFoundryClient, Resource, WatchHub  # noqa: E402
from orchestrator.flows._waiting import WatchSpec, wait_for  # noqa: E402
from orchestrator.flows.kaito import KaitoSettings  # noqa: E402
from orchestrator.sandbox import Sandbox, SandboxOptions  # noqa: E402

WORKSPACES = Resource("kaito.sh", "v1beta1", "workspaces")
PODS = Resource("", "v1", "pods")
NS = "bench"
PLAN_POLL_INTERVAL = 5.0  # the plan's waitForDeploymentReady polls every 5 s
RECHECK = KaitoSettings(
    api_url="http://unused"
).recheck  # the flow's safety re-check while watching


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def _crd(kube: KubeClient) -> None:
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "workspaces.kaito.sh"},
        "spec": {
            "group": "kaito.sh",
            "scope": "Namespaced",
            "names": {"plural": "workspaces", "singular": "workspace", "kind": "Workspace"},
            "versions": [
                {
                    "name": "v1beta1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    try:
        await kube.create(CRDS, body)
    except Exception:  # already there
        pass
    with anyio.fail_after(30):
        while True:  # the CRD's resources are served a moment after it is created
            try:
                await kube.list(WORKSPACES, NS)
                return
            except Exception:
                await anyio.sleep(0.05)


def _workspace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": "kubefoundry",
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": "kubefoundry",
                "kubefoundry.io/provider": "kaito",
            },
        },
        "resource": {"count": 1},
        "inference": {"template": {"spec": {"containers": [{"name": "model", "image": "img"}]}}},
    }


def _ready_status() -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "status": {
            "conditions": [
                {
                    "type": t,
                    "status": "True",
                    "reason": "Bench",
                    "message": "",
                    "lastTransitionTime": now,
                }
                for t in ("ResourceReady", "InferenceReady", "WorkspaceSucceeded")
            ]
        }
    }


async def reaction(sb: Sandbox, strategy: str, n: int) -> dict[str, Any]:
    """Flip n Workspaces to ready one after another; time each flip -> waiter returns."""
    kube = await KubeClient.from_kubeconfig(str(sb.kubeconfig))
    api = KubeFoundryClient(sb.api_url)
    await _crd(kube)
    latencies: list[float] = []
    try:
        async with WatchHub(kube) as hub:
            for i in range(n):
                name = f"{strategy}-{i}"
                await kube.create(WORKSPACES, _workspace(name), NS)

                async def running(name: str = name) -> bool | None:
                    st = await api.get_deployment(name, NS)
                    return True if st.phase == "Running" else None

                done = anyio.Event()
                returned: list[float] = []

                async def waiter() -> None:
                    if strategy == "watch":
                        await wait_for(
                            running,
                            kube=kube,
                            hub=hub,
                            recheck=RECHECK,
                            watches=[
                                WatchSpec(WORKSPACES, NS, field_selector=f"metadata.name={name}")
                            ],
                        )
                    else:
                        await wait_for(running, kube=kube, watches=[], recheck=PLAN_POLL_INTERVAL)
                    returned.append(time.monotonic())
                    done.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    # The flip lands at a spread of moments after the waiter started: across
                    # the whole poll period for polling (its latency depends on that phase),
                    # and within a short settle time for watches (theirs does not).
                    span = PLAN_POLL_INTERVAL if strategy == "poll" else 0.3
                    await anyio.sleep(0.05 + (i * 0.618 * span) % span)
                    await kube.patch(WORKSPACES, name, _ready_status(), NS, subresource="status")
                    flipped = time.monotonic()
                    with anyio.fail_after(30):
                        await done.wait()
                latencies.append((returned[0] - flipped) * 1000)
    finally:
        await api.aclose()
        await kube.aclose()
    return {
        "strategy": strategy,
        "n": n,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "mean_ms": statistics.mean(latencies),
    }


async def requests_while_waiting(sb: Sandbox, strategy: str, seconds: float) -> dict[str, Any]:
    """Requests sent while a deployment stays Pending for ``seconds``."""
    kube = await KubeClient.from_kubeconfig(str(sb.kubeconfig))
    api = KubeFoundryClient(sb.api_url)
    await _crd(kube)
    name = f"idle-{strategy}"
    try:
        await kube.create(WORKSPACES, _workspace(name), NS)
    except Exception:
        pass

    async def never() -> bool | None:
        await api.get_deployment(name, NS)
        return None

    # Count only what the wait itself sends, not the set-up above.
    api.requests_sent = kube.requests_sent = kube.watches_opened = 0

    try:
        async with WatchHub(kube) as hub:
            with anyio.move_on_after(seconds):
                if strategy == "watch":
                    await wait_for(
                        never,
                        kube=kube,
                        hub=hub,
                        recheck=RECHECK,
                        watches=[
                            WatchSpec(WORKSPACES, NS, field_selector=f"metadata.name={name}"),
                            WatchSpec(PODS, NS, label_selector=f"kaito.sh/workspace={name}"),
                        ],
                    )
                else:
                    await wait_for(never, kube=kube, watches=[], recheck=PLAN_POLL_INTERVAL)
    finally:
        await api.aclose()
        await kube.aclose()
    per_min = 60.0 / seconds
    return {
        "strategy": strategy,
        "seconds": seconds,
        "backend_requests_per_min": api.requests_sent * per_min,
        "kube_requests_per_min": kube.requests_sent * per_min,
        "watch_connections": kube.watches_opened,
    }


def startup(runs: int = 7) -> dict[str, Any]:
    def median_of(args: list[str]) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, *args], check=True, capture_output=True, cwd=ROOT)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    bare = median_of(["-c", "pass"])
    return {
        "interpreter_s": bare,
        "help_s": median_of(["-m", "orchestrator", "--help"]),
        "version_s": median_of(["-m", "orchestrator", "--version"]),
    }


class SandboxProcess:
    """The sandbox in a process of its own, so the orchestrator's scaling is measured on its
    own core rather than sharing one event loop with the stand-ins it talks to."""

    def __init__(self, workdir: Path, *faults: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "orchestrator",
            "sandbox",
            "--port",
            "0",
            "--workdir",
            str(workdir),
        ]
        for fault in faults:
            args += ["--fault", fault]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=workdir
        )
        self.api_url = self.kubeconfig = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # it prints both once it serves
            if line.startswith("API_URL="):
                self.api_url = line.split("=", 1)[1].strip()
            elif line.startswith("KUBECONFIG="):
                self.kubeconfig = line.split("=", 1)[1].strip()
            if self.api_url and self.kubeconfig:
                break
        if not (self.api_url and self.kubeconfig):
            raise RuntimeError(f"the sandbox did not start (exit code {self.proc.wait()})")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run_flows(n: int, workdir: Path, sb: SandboxProcess) -> dict[str, Any]:
    """The real command with --parallel n against a sandbox: wall time and peak memory."""
    artifacts = workdir / f"flows-{n}"
    args = [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        "--no-live",
        "--api-url",
        sb.api_url,
        "--kubeconfig",
        sb.kubeconfig,
        "--artifacts-dir",
        str(artifacts),
        "--parallel",
        str(n),
        "--cleanup",
        "always",
    ]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sandbox_before = _cpu_seconds(sb.proc.pid)
    t = time.perf_counter()
    out = subprocess.run(
        args, capture_output=True, text=True, cwd=workdir, env={**os.environ, "NO_COLOR": "1"}
    )
    wall = time.perf_counter() - t
    sandbox_after = _cpu_seconds(sb.proc.pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kib = children.ru_maxrss
    orchestrator_cpu = (
        children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    )
    sandbox_cpu = (
        sandbox_after - sandbox_before
        if sandbox_before is not None and sandbox_after is not None
        else None
    )
    records = [json.loads(p.read_text()) for p in artifacts.rglob("run.json")]
    opened = [
        line for line in out.stdout.splitlines() if line.startswith("watch connections opened:")
    ]
    watches = int(opened[-1].split(":")[1].split()[0]) if opened else None
    return {
        "n": n,
        "exit_code": out.returncode,
        "wall_s": wall,
        "peak_rss_mib": peak_kib / 1024,
        "orchestrator_cpu_s": orchestrator_cpu,
        "sandbox_cpu_s": sandbox_cpu,
        "watch_connections": watches,
        "passed": sum(1 for r in records if r.get("outcome") == "passed"),
        "tail": out.stdout.strip().splitlines()[-1:] if out.returncode else [],
    }


def _cpu_seconds(pid: int) -> float | None:
    """A running process's CPU time so far (Linux /proc), or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def overhead(workdir: Path) -> dict[str, Any]:
    """One flow against a sandbox whose delays are zero.

    The orchestrator's overhead is the run's wall time (its first phase's start to its
    cleanup's end) minus the sandbox's time, i.e. the CPU the sandbox process spent
    meanwhile answering the run. What the process spends around the run (interpreter,
    imports, exit) is reported beside it, from the run's own timestamps.
    """
    sb = SandboxProcess(
        workdir / "zero",
        "stub_models=true",
        "delays.resource=0",
        "delays.pod_start=0",
        "delays.inference_ready=0",
    )
    try:
        cpu_before = _cpu_seconds(sb.proc.pid)
        t = time.time()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "run",
                "--no-live",
                "--api-url",
                sb.api_url,
                "--kubeconfig",
                sb.kubeconfig,
                "--artifacts-dir",
                str(workdir / "zero-art"),
            ],
            capture_output=True,
            text=True,
            cwd=workdir,
        )
        wall = time.time() - t
        cpu_after = _cpu_seconds(sb.proc.pid)
    finally:
        sb.close()
    record = json.loads((workdir / "zero-art" / "run.json").read_text())
    run_wall = float(record.get("time_spent") or 0.0)
    sandbox = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return {
        "exit_code": out.returncode,
        "process_wall_s": wall,
        "run_wall_s": run_wall,
        "sandbox_cpu_s": sandbox,
        "overhead_s": run_wall - (sandbox or 0.0),
        "before_run_s": _epoch(record["started_at"]) - t,
        "after_run_s": t + wall - _epoch(record["ended_at"]),
    }


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with Sandbox(SandboxOptions(workdir=workdir / "sandbox")) as sb:
        n = 10 if args.quick else 50
        watch = await reaction(sb, "watch", n)
        poll = await reaction(sb, "poll", max(10, n // 5))
        results["reaction"] = {
            "watch": watch,
            "poll": poll,
            "poll_over_watch_p50": poll["p50_ms"] / max(watch["p50_ms"], 1e-3),
            "poll_over_watch_p99": poll["p99_ms"] / max(watch["p99_ms"], 1e-3),
        }
        seconds = 15.0 if args.quick else 60.0
        w, p = await asyncio.gather(
            requests_while_waiting(sb, "watch", seconds),
            requests_while_waiting(sb, "poll", seconds),
        )
        results["requests_while_waiting"] = {"watch": w, "poll": p}
    results["startup"] = startup()
    results["overhead"] = overhead(workdir)
    flows = {}
    faults = ["stub_models=true"] if args.stub_models else []
    sb = SandboxProcess(workdir, *faults)
    try:
        for n in [1, 10] if args.quick else [1, 10, 50]:
            flows[n] = run_flows(n, workdir, sb)
    finally:
        sb.close()
    base = flows[1]["wall_s"]
    for r in flows.values():
        r["ratio_to_one"] = r["wall_s"] / base
    results["flows"] = flows
    return results


def table(results: dict[str, Any]) -> str:
    r = results["reaction"]
    q = results["requests_while_waiting"]
    s = results["startup"]
    o = results["overhead"]
    lines = [
        f"reaction (flip -> transition)   watch p50 {r['watch']['p50_ms']:7.1f} ms  p99 {r['watch']['p99_ms']:7.1f} ms"
        f"  (n={r['watch']['n']})",
        f"                                poll  p50 {r['poll']['p50_ms']:7.1f} ms  p99 {r['poll']['p99_ms']:7.1f} ms"
        f"  (n={r['poll']['n']}, every {PLAN_POLL_INTERVAL:g} s)",
        f"                                poll/watch: p50 x{r['poll_over_watch_p50']:.0f}, p99 x{r['poll_over_watch_p99']:.0f}",
        f"requests per minute of waiting  watch: backend {q['watch']['backend_requests_per_min']:.1f}, "
        f"kubernetes {q['watch']['kube_requests_per_min']:.1f} ({q['watch']['watch_connections']} watch connections)",
        f"                                poll:  backend {q['poll']['backend_requests_per_min']:.1f}, "
        f"kubernetes {q['poll']['kube_requests_per_min']:.1f}",
        f"start-up                        python {s['interpreter_s'] * 1000:.0f} ms, --help {s['help_s'] * 1000:.0f} ms, "
        f"--version {s['version_s'] * 1000:.0f} ms",
        f"overhead (zero sandbox delays)  run {o['run_wall_s'] * 1000:.0f} ms wall - sandbox "
        + (f"{o['sandbox_cpu_s'] * 1000:.0f} ms" if o["sandbox_cpu_s"] is not None else "(unknown)")
        + f" = {o['overhead_s'] * 1000:.0f} ms (target < 200 ms)",
        f"                                around the run: start-up {o['before_run_s'] * 1000:.0f} ms "
        f"(interpreter {s['interpreter_s'] * 1000:.0f} ms, then imports), exit {o['after_run_s'] * 1000:.0f} ms",
    ]
    for n, f in results["flows"].items():
        lines.append(
            f"{'flows at once' if n == 1 else '':32}N={n:<3} wall {f['wall_s']:6.1f} s  x{f['ratio_to_one']:.2f} of N=1  "
            f"peak {f['peak_rss_mib']:.0f} MiB  watches {f.get('watch_connections') or '-'}  "
            f"passed {f['passed']}/{n}  exit {f['exit_code']}"
        )
        sandbox = f"{f['sandbox_cpu_s']:.2f} s" if f.get("sandbox_cpu_s") is not None else "unknown"
        lines.append(
            f"{'':32}      CPU: orchestrator {f['orchestrator_cpu_s']:.2f} s, sandbox {sandbox}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer transitions and shorter waits")
    parser.add_argument(
        "--real-models",
        dest="stub_models",
        action="store_false",
        help="N flows with real llama.cpp servers (heavy: one per deployment)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        results = asyncio.run(measure(args, Path(tmp)))
    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print(table(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
