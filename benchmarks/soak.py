"""Soak: many randomized hostile runs, and everything the promise forbids, counted.

    python benchmarks/soak.py                  # 200 runs, 2 at a time, about 15 minutes
    python benchmarks/soak.py --runs 20 --seed 7

Each run is the real command (``python -m orchestrator run``, ``CI`` set) against the
sandbox with stub models, through the hostile proxies of the test suite in front of
the Kubernetes API (which also carries the model's traffic) and of the backend. A run
draws, from its seed: a few proxy mutations (garbage watch lines, ERROR events,
stalled watches, wrong shapes, truncated or trickled bodies, resets, 5xx and 429,
echoed Authorization headers), a few sandbox fault knobs (a delete that hangs or
answers 200 and deletes nothing, a stuck finalizer, an image that cannot be pulled,
a model that answers garbage, flaky backend answers, cut watches) and sometimes a
signal at the start of a random phase.

After each run it checks what must hold whatever a peer did, and counts each breach:

- crash: a traceback in the output, or the run did not end within its deadline;
- wrong exit code: not 0/1 (130/143 after a signal), or 0 where a drawn fault must
  fail the run;
- leaked object: anything with the run's name or labels left in the cluster (asked
  of the real API, not through the proxy), or the backend still knowing it;
- leaked secret: the backend token or the kubeconfig's credential anywhere in the
  console output or the artifacts.

It prints a table, saves every breach (with the run's seed, draw, exit code and the
output's tail) and writes ``benchmarks/soak-results.json``. Target: all four 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.text import TextReceiveStream

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for helper in ("", "e2e", "faults", "hostile"):
    sys.path.insert(0, str(ROOT / "tests" / helper))

from hostile_harness import BACKEND_TOKEN, Hostile, secrets_shown  # noqa: E402
from proxy import _BY_TARGET, BACKEND_TARGETS, KUBE_TARGETS, Mutation  # noqa: E402

from orchestrator._signals import STOP_SIGNALS, with_signals  # noqa: E402
from orchestrator.clients import PODS, SERVICES, KubeClient, NotFound, Resource  # noqa: E402
from orchestrator.sandbox import Faults, Sandbox, SandboxOptions  # noqa: E402

RESULTS = ROOT / "benchmarks" / "soak-results.json"
WORKSPACES = Resource("kaito.sh", "v1beta1", "workspaces")
NAMESPACE = "kaito-workspace"
PHASES = ["Install KAITO", "Deploy", "Wait Ready", "Inference", "Delete", "Cleanup"]
#: Short phases, so that a run a fault holds to its deadline still takes seconds.
TIMEOUTS = [
    "--test-timeout",
    "120000",
    "--kaito-install-timeout",
    "20000",
    "--deploy-timeout",
    "10000",
    "--deployment-ready-timeout",
    "15000",
    "--inference-timeout",
    "10000",
    "--delete-timeout",
    "10000",
    "--cleanup-reserve",
    "40000",
]
RUN_DEADLINE = 150.0

#: Sandbox knobs, and whether each must fail the run (True) or may be survived.
KNOBS: list[tuple[dict[str, Any], bool]] = [
    ({"hang_route": "delete"}, True),
    ({"delete_noop": True}, True),
    ({"stuck_delete": True}, True),
    ({"image_pull_error": True}, True),
    ({"crash_loop": True}, True),
    ({"never_ready": True}, True),
    ({"inference": "malformed"}, True),
    ({"inference": "wrong_object"}, True),
    ({"echo_authorization": True}, False),
    ({"backend_errors": 2, "backend_error_status": 503}, False),
    ({"backend_errors": 1, "backend_error_status": 502}, False),
    ({"backend_resets": 2}, False),
    ({"watch_cut_after": 1.5}, False),
    ({"watch_gone": 2}, False),
    ({"hang_route": "deployment_status"}, True),
    ({"bad_body": {"route": "deployment_status", "kind": "wrong_shape", "count": 1}}, False),
    ({"bad_body": {"route": "create", "kind": "invalid_json", "count": 1}}, True),
]


@dataclass
class Draw:
    """What one run was given: its seed, proxy mutations, sandbox knobs, a signal."""

    seed: int
    kube: list[dict[str, Any]] = field(default_factory=list)
    backend: list[dict[str, Any]] = field(default_factory=list)
    knobs: dict[str, Any] = field(default_factory=dict)
    must_fail: bool = False
    signal: str | None = None
    signal_at: str | None = None


@dataclass
class Outcome:
    seed: int
    name: str
    draw: dict[str, Any]
    code: int | None
    seconds: float
    crash: list[str] = field(default_factory=list)
    wrong_exit: list[str] = field(default_factory=list)
    leaked_objects: list[str] = field(default_factory=list)
    leaked_secrets: list[str] = field(default_factory=list)
    tail: str = ""

    @property
    def breaches(self) -> int:
        return sum(
            map(len, (self.crash, self.wrong_exit, self.leaked_objects, self.leaked_secrets))
        )


def draw(seed: int) -> Draw:
    rng = random.Random(seed)
    d = Draw(seed)
    for targets, into in ((KUBE_TARGETS, d.kube), (BACKEND_TARGETS, d.backend)):
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            target = rng.choice(sorted(targets))
            name = rng.choice(_BY_TARGET[target])
            params: dict[str, Any] = {}
            if name == "status":
                params["status"] = rng.choice([429, 500, 502, 503, 504])
                params["retry_after"] = rng.choice([None, 0, 1])
            if name == "trickle":
                params["interval"] = rng.choice([0.005, 0.02])
            into.append(
                {"name": name, "times": rng.randint(1, 4), "params": params, **targets[target]}
            )
    for knob, fails in rng.sample(KNOBS, rng.choice([0, 1, 1, 2])):
        if any(k in d.knobs for k in knob):
            continue
        d.knobs.update(knob)
        d.must_fail = d.must_fail or fails
    if rng.random() < 0.15:
        d.signal = rng.choice(["SIGINT", "SIGTERM"])
        d.signal_at = rng.choice(PHASES[:-1])
    return d


def signalable(argv: list[str]) -> list[str]:
    """``argv``, started so that the signal the soak sends reaches the run.

    A run keeps a SIGINT or SIGTERM it was started with ignored (a background job's
    Ctrl-C is not its own), and a soak started in the background would hand that ignore
    to every run: each signalled run would then count as a wrong exit code. Only then is
    the command started through a launcher that gives the run the defaults.
    """
    return with_signals(argv, {sig: "default" for sig in STOP_SIGNALS})


async def leaks(sb: Sandbox, name: str) -> list[str]:
    """What of the run's deployment is left, asked of the real peers."""
    left: list[str] = []
    kube = await KubeClient.from_kubeconfig(str(sb.kubeconfig))
    try:
        try:
            await kube.get(WORKSPACES, name, NAMESPACE)
            left.append(f"Workspace {name}")
        except NotFound:
            pass
        selectors = {
            WORKSPACES: f"app.kubernetes.io/instance={name}",
            PODS: f"kaito.sh/workspace={name}",
            SERVICES: f"kaito.sh/workspace={name}",
        }
        for resource, selector in selectors.items():
            listed = await kube.list(resource, NAMESPACE, label_selector=selector)
            for obj in listed.get("items") or []:
                left.append(f"{resource.plural}/{obj['metadata']['name']}")
    finally:
        await kube.aclose()
    import httpx

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {BACKEND_TOKEN}"}) as http:
        r = await http.get(f"{sb.api_url}/api/deployments/{name}", params={"namespace": NAMESPACE})
        if r.status_code != 404:
            left.append(f"the backend answers {r.status_code} for {name}")
    return sorted(set(left))


async def one_run(h: Hostile, d: Draw, workdir: Path) -> Outcome:
    name = f"soak-{d.seed}"
    h.clear()
    h.sandbox.update_faults({**Faults(stub_models=True).model_dump(), **d.knobs})
    h.kube.add(*(Mutation(**m) for m in d.kube))
    h.backend.add(*(Mutation(**m) for m in d.backend))
    artifacts = workdir / name
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "API_URL")}
    env.update(
        {"NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "CI": "true", "KUBEFOUNDRY_TOKEN": BACKEND_TOKEN}
    )
    argv = [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        "--no-live",
        "--api-url",
        h.backend.url,
        "--kubeconfig",
        str(h.kubeconfig),
        "--artifacts-dir",
        str(artifacts),
        "--deployment-name",
        name,
        *TIMEOUTS,
    ]
    out: list[str] = []
    err: list[str] = []
    code: int | None = None
    started = time.monotonic()
    outcome = Outcome(d.seed, name, asdict(d), None, 0.0)
    with anyio.move_on_after(RUN_DEADLINE) as deadline:
        async with await anyio.open_process(signalable(argv), env=env, cwd=workdir) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            marker = f"{d.signal_at} ... started" if d.signal_at else None
            if d.signal_at == "Deploy":
                marker = "Deploy llama3.2:1b ... started"

            async def drain_err() -> None:
                async for chunk in TextReceiveStream(proc.stderr):  # type: ignore[arg-type]
                    err.append(chunk)

            async with anyio.create_task_group() as tg:
                tg.start_soon(drain_err)
                async for chunk in TextReceiveStream(proc.stdout):
                    out.append(chunk)
                    if marker and d.signal and marker in "".join(out[-3:]):
                        proc.send_signal(signal.Signals[d.signal])
                        marker = None
                code = await proc.wait()
    if deadline.cancel_called:
        outcome.crash.append(f"no end within {RUN_DEADLINE:g} s")
    outcome.code = code
    outcome.seconds = round(time.monotonic() - started, 2)
    text = "".join(out) + "".join(err)
    outcome.tail = text[-4000:]
    if "Traceback" in text:
        outcome.crash.append("traceback:\n" + text[text.index("Traceback") :][:6000])
    signalled = d.signal is not None and marker is None
    if code is not None:
        if signalled:
            expected = {128 + int(signal.Signals[d.signal or "SIGINT"])}
            # A signal that came as the run was ending may find it done.
            expected |= {0, 1}
        else:
            expected = {1} if d.must_fail else {0, 1}
        if code not in expected:
            outcome.wrong_exit.append(f"exit {code}, expected one of {sorted(expected)}")
    from e2e_harness import Result

    result = Result(code or -1, "".join(out), "".join(err), outcome.seconds, artifacts)
    outcome.leaked_secrets = secrets_shown(result, h.secrets)
    h.clear()
    h.sandbox.update_faults(Faults(stub_models=True).model_dump())
    outcome.leaked_objects = await leaks(h.sandbox, name)
    if outcome.leaked_objects:
        # Leave the cluster clean for the next runs, whatever this one left.
        await _sweep(h.sandbox, name)
    return outcome


async def _sweep(sb: Sandbox, name: str) -> None:
    kube = await KubeClient.from_kubeconfig(str(sb.kubeconfig))
    try:
        try:
            await kube.delete(WORKSPACES, name, NAMESPACE)
        except NotFound:
            pass
    finally:
        await kube.aclose()


async def worker(
    index: int, seeds: list[int], results: list[Outcome], workdir: Path, verbose: bool
) -> None:
    async with AsyncExitStack() as stack:
        sb = await stack.enter_async_context(
            Sandbox(
                SandboxOptions(
                    workdir=workdir / f"sandbox-{index}",
                    faults=Faults(stub_models=True),
                    auth_token=BACKEND_TOKEN,
                )
            )
        )
        h = await Hostile.start(sb, stack, workdir / f"hostile-{index}")
        for seed in seeds:
            outcome = await one_run(h, draw(seed), workdir)
            results.append(outcome)
            mark = "ok" if not outcome.breaches else "BREACH"
            print(
                f"[{len(results):3d}] seed {seed:5d} exit {outcome.code} "
                f"{outcome.seconds:5.1f} s {mark}"
                + (f" knobs={outcome.draw['knobs']}" if verbose or outcome.breaches else ""),
                flush=True,
            )


async def main_async(args: argparse.Namespace) -> int:
    seeds = [args.seed + i for i in range(args.runs)]
    results: list[Outcome] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        async with anyio.create_task_group() as tg:
            for index in range(args.jobs):
                tg.start_soon(
                    worker, index, seeds[index :: args.jobs], results, workdir, args.verbose
                )
    totals = {
        "crashes": sum(len(r.crash) for r in results),
        "wrong_exit_codes": sum(len(r.wrong_exit) for r in results),
        "leaked_objects": sum(len(r.leaked_objects) for r in results),
        "leaked_secrets": sum(len(r.leaked_secrets) for r in results),
    }
    codes: dict[str, int] = {}
    for r in results:
        codes[str(r.code)] = codes.get(str(r.code), 0) + 1
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "runs": len(results),
        "seed": args.seed,
        "jobs": args.jobs,
        "wall_seconds": round(time.monotonic() - started, 1),
        "totals": totals,
        "exit_codes": dict(sorted(codes.items())),
        "with_signal": sum(1 for r in results if r.draw["signal"]),
        "with_proxy_mutations": sum(1 for r in results if r.draw["kube"] or r.draw["backend"]),
        "with_sandbox_faults": sum(1 for r in results if r.draw["knobs"]),
        "breaches": [asdict(r) for r in results if r.breaches],
    }
    print()
    print(f"{len(results)} hostile runs in {report['wall_seconds']} s, exit codes {codes}")
    for key, value in totals.items():
        print(f"  {key:18s} {value}")
    for r in results:
        for kind in ("crash", "wrong_exit", "leaked_objects", "leaked_secrets"):
            for item in getattr(r, kind):
                print(f"  seed {r.seed}: {kind}: {item.splitlines()[0]}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"written to {args.output}")
    return 0 if not any(totals.values()) else 1


def main() -> int:
    import logging

    # The proxies' own servers log every reset they make on purpose: not the run's news.
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (a sandbox each)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--verbose", action="store_true")
    return anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
