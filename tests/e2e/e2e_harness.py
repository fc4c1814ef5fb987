"""End-to-end fixtures: a sandbox on loopback, and the real command run against it.

Each test gets a fresh sandbox (KubeFoundry stand-in, KAITO controller, model
servers) on a fresh Kubernetes API: the sandbox's own, and, when
``TESTCLUSTER_HOME`` names the shared test cluster, a real API server too. The
orchestrator runs as a child process exactly as a user runs it, so exit codes,
signals and the files it writes are tested for real.

A run that outlives its test's deadline is stopped as CI would stop it, so that it says
why (:func:`drive`): SIGTERM first (the orchestrator diagnoses, cleans up and writes its
reports, exit 143), SIGKILL only if that does not end it in time; the test then fails
with the run's output so far, the sandbox's timeline and the tail of its log.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _zygote
import anyio
import anyio.abc
import pytest
import xmlschema
from _bounded import running_sandbox, sandbox_log
from _testcluster import fresh_cluster
from anyio.streams.text import TextReceiveStream

from orchestrator.clients import PODS, KubeClient, NotFound
from orchestrator.flows.kaito import WORKSPACES
from orchestrator.sandbox import Faults, Sandbox, SandboxOptions

ROOT = Path(__file__).resolve().parents[2]
XSD = ROOT / "tests" / "engine" / "junit.xsd"


@functools.cache
def _tls() -> ssl.SSLContext:
    """One verifying TLS context per worker for the leak check's backend client: a new
    httpx client would load the CA bundle again (about 30 ms of CPU) for every test."""
    return ssl.create_default_context()


@functools.cache
def junit_schema() -> xmlschema.XMLSchema:
    """The JUnit schema, built once per worker: building it costs more CPU than most
    checks it serves, and ``Result.cases`` runs on every status a test asks about."""
    return xmlschema.XMLSchema(str(XSD))


PHASES = ["Install KAITO", "Deploy llama3.2:1b", "Wait Ready", "Inference", "Delete"]


@pytest.fixture(params=["sandbox-kube", "testcluster"])
def kubeconfig(request: pytest.FixtureRequest) -> Iterator[Path | None]:
    """None: the sandbox starts its in-process Kubernetes API. A path: a fresh test cluster."""
    if request.param == "sandbox-kube":
        yield None
        return
    with fresh_cluster() as cluster:
        yield cluster.kubeconfig


def sandbox_kube_only(reason: str) -> pytest.MarkDecorator:
    """Run a test on the sandbox's own Kubernetes API only, its test-cluster row skipped.

    The skip is a mark on that row's parameter, so it is decided before any fixture runs:
    no test cluster (and no sandbox on it) is started only to be thrown away, as happened
    when the test itself skipped after its ``kubeconfig`` fixture had started one.
    """
    return pytest.mark.parametrize(
        "kubeconfig",
        ["sandbox-kube", pytest.param("testcluster", marks=pytest.mark.skip(reason=reason))],
        indirect=True,
    )


@pytest.fixture
def faults() -> Faults:
    """Override in a test module (or parametrize) to inject faults."""
    return Faults()


@pytest.fixture
async def sandbox(
    kubeconfig: Path | None, faults: Faults, stub_models: bool, tmp_path: Path
) -> AsyncIterator[Sandbox]:
    """A running sandbox; stub models unless the test is marked ``model`` (tests/README.md)."""
    crds = os.environ.get("KAITO_CRDS_DIR")
    options = SandboxOptions(
        workdir=tmp_path / "sandbox",
        kubeconfig=kubeconfig,
        # A copy: a parametrized Faults object is shared by every backend's run.
        faults=faults.model_copy(update={"stub_models": stub_models}),
        crd_dir=Path(crds) if crds and kubeconfig is not None else None,
    )
    async with running_sandbox(options) as sb:
        yield sb


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float
    artifacts: Path

    @property
    def junit(self) -> Path:
        return self.artifacts / "junit.xml"

    def cases(self) -> dict[str, dict[str, Any]]:
        """testcase name -> {status, message} from the JUnit file, validated against the schema."""
        junit_schema().validate(str(self.junit))
        import xml.etree.ElementTree as ET

        out: dict[str, dict[str, Any]] = {}
        for case in ET.parse(self.junit).getroot().iter("testcase"):
            status, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    status, message = tag, el.get("message", "")
            out[case.get("name", "")] = {"status": status, "message": message}
        return out

    def verdicts(self) -> str:
        """Every testcase's status and reason, and the run's output: what an assertion on a
        verdict shows when it fails, so that 'failure' != 'passed' comes with its why."""
        try:
            lines = [
                f"{name}: {case['status']}" + (f" ({case['message']})" if case["message"] else "")
                for name, case in self.cases().items()
            ]
        except Exception as exc:  # no or an invalid report: that is the news then
            lines = [f"no readable JUnit report: {exc!r}"]
        return "\n".join([*lines, "--- output ---", self.stdout[-4000:], self.stderr[-2000:]])

    def status_of(self, title: str) -> dict[str, Any]:
        for name, case in self.cases().items():
            if name.endswith(title):
                return case
        raise AssertionError(f"no testcase named like {title!r} in {list(self.cases())}")

    def run_json(self) -> dict[str, Any]:
        return json.loads((self.artifacts / "run.json").read_text())


def command(
    sb: Sandbox, artifacts: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The ``orchestrator run`` command line against ``sb``, and the environment to run it in.

    The caller's CI, KUBECONFIG and API_URL are dropped, so that only what the test says
    reaches the run; colours off and output unbuffered, so that markers arrive as printed.
    """
    full_env = {k: v for k, v in os.environ.items() if k not in ("CI", "KUBECONFIG", "API_URL")}
    full_env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    argv = [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        "--no-live",
        "--api-url",
        sb.api_url,
        "--kubeconfig",
        str(sb.kubeconfig),
        "--artifacts-dir",
        str(artifacts),
        "--cleanup",
        "always",
        *args,
    ]
    return argv, full_env


#: After its deadline, how long a run gets to end on SIGTERM (diagnose, cleanup, reports)
#: before it is killed. Its cleanup has a floor of 10 s and diagnose of 5 s; a loaded
#: machine needs more.
TERM_GRACE = 45.0
#: After the run ended, how long its output may take to reach EOF (a grandchild that
#: inherited the pipes could hold them open).
DRAIN_SECONDS = 10.0

#: Called with the output so far after each chunk of stdout, and the process (for signals).
OnOutput = Callable[[str, anyio.abc.Process], Awaitable[None] | None]


@dataclass
class Ended:
    """How a driven process ended: its code and output, and whether its deadline did it."""

    code: int
    stdout: str
    stderr: str
    seconds: float
    #: None: it ended by itself. Else what stopping it took ("SIGTERM: exit 143 after 4.2 s").
    stopped: str | None = None
    #: When SIGTERM did not end it: what it was doing just before the SIGKILL (its state,
    #: the signals it blocked, ignored and caught, where it slept), so that the failure
    #: says why the signal did nothing.
    state: str | None = None


async def drive(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    on_output: OnOutput | None = None,
    grace: float = TERM_GRACE,
    stop: anyio.Event | None = None,
    fresh: bool = False,
    signals: Mapping[int, _zygote.Disposition] = _zygote.RUN_SIGNALS,
) -> Ended:
    """Run ``argv``, reading its output as it comes, until it ends or ``timeout`` passes.

    A ``python -m orchestrator run`` child is forked from this worker's pre-imported
    zygote (tests/_zygote.py, tests/README.md), which skips its imports and nothing else;
    any other command, one with ``fresh`` (the command line is the test's subject), or
    every one under ``--fresh-interpreters``, starts a fresh interpreter.

    At the deadline the process gets SIGTERM and ``grace`` seconds to end, which the
    orchestrator spends on diagnostics, cleanup and its reports; only then SIGKILL. A
    deadline that cancelled the wait would kill it at once and keep nothing of what it
    knew about why it hung. ``stop``, once set, does what the deadline does (for tests of
    this function: a deadline they could only wait out). ``signals``: the dispositions
    the process starts with (SIGINT at its default unless a test asks otherwise).
    """
    started = time.monotonic()
    out: list[str] = []
    err: list[str] = []
    stopped: str | None = None
    state: str | None = None
    async with await _zygote.open_process(argv, env, cwd, fresh=fresh, signals=signals) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = proc.stdout, proc.stderr
        read = anyio.Event(), anyio.Event()

        async def read_stdout() -> None:
            async for chunk in TextReceiveStream(stdout):
                out.append(chunk)
                if on_output is not None:
                    done = on_output("".join(out), proc)
                    if done is not None:
                        await done
            read[0].set()

        async def read_stderr() -> None:
            async for chunk in TextReceiveStream(stderr):
                err.append(chunk)
            read[1].set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_stdout)
                tg.start_soon(read_stderr)
                with anyio.move_on_after(timeout) as waiting:
                    if stop is not None:
                        tg.start_soon(_cancel_when_set, stop, waiting)
                    await proc.wait()
                if proc.returncode is None:
                    proc.terminate()
                    term = time.monotonic()
                    with anyio.move_on_after(grace):
                        await proc.wait()
                    if proc.returncode is None:
                        state = process_state(proc.pid)
                        proc.kill()
                        stopped = f"SIGTERM did not end it within {grace:.0f} s: SIGKILLed"
                    else:
                        took = time.monotonic() - term
                        stopped = f"SIGTERM: exit {proc.returncode} after {took:.1f} s"
                code = await proc.wait()
                with anyio.move_on_after(DRAIN_SECONDS):
                    for event in read:
                        await event.wait()
                tg.cancel_scope.cancel()
        except BaseException:
            if proc.returncode is None:  # a hook failed: the process must not outlive it
                proc.kill()
            raise
    return Ended(code, "".join(out), "".join(err), time.monotonic() - started, stopped, state)


def process_state(pid: int) -> str:
    """What ``pid`` is doing, from /proc: its state, the signals it blocks, ignores and
    catches (hex masks, bit N-1 for signal N), its threads, and the kernel function it
    sleeps in."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)
        with open(f"/proc/{pid}/wchan") as wchan:
            waits_in = wchan.read().strip() or "-"
    except OSError as exc:
        return f"(no /proc entry: {exc.strerror})"
    kept = ("State", "Threads", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    return "; ".join([*(f"{k} {fields.get(k, '?').strip()}" for k in kept), f"wchan {waits_in}"])


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def tail(text: str, lines: int) -> str:
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(nothing)"


def sandbox_report(sb: Sandbox, lines: int = 60) -> str:
    """What the sandbox did and said: its timeline's and its log's last lines."""
    timeline = "\n".join(
        f"{e.elapsed:9.3f} {e.namespace}/{e.name}: {e.event}" for e in sb.timeline[-lines:]
    )
    path = sandbox_log(sb.options)
    log = path.read_text(errors="replace") if path.exists() else f"(no {path.name})"
    return (
        f"--- sandbox timeline (last {lines}) ---\n{timeline or '(empty)'}\n"
        f"--- sandbox log {path} (last {lines} lines) ---\n{tail(log, lines)}"
    )


def hung(ended: Ended, timeout: float, sb: Sandbox | None = None) -> str:
    """The failure message of a run its deadline stopped: what it printed, what the sandbox did."""
    parts = [
        f"the run did not end within {timeout:.0f} s; {ended.stopped}",
        *([f"--- what it was doing before the SIGKILL ---\n{ended.state}"] if ended.state else []),
        f"--- its stdout (last 150 lines) ---\n{tail(ended.stdout, 150)}",
        f"--- its stderr (last 40 lines) ---\n{tail(ended.stderr, 40)}",
    ]
    if sb is not None:
        parts.append(sandbox_report(sb))
    return "\n".join(parts)


async def run_orchestrator(
    sb: Sandbox,
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    fresh: bool = False,
) -> Result:
    """Run ``python -m orchestrator run`` against ``sb`` and wait for it, with a deadline.

    A run still going at the deadline is stopped (:func:`drive`) and fails the test with
    its output and the sandbox's side of the story. ``fresh``: in a fresh interpreter,
    not forked from the zygote (:func:`drive`).
    """
    artifacts = tmp_path / "artifacts"
    argv, full_env = command(sb, artifacts, *args, env=env)
    ended = await drive(argv, full_env, tmp_path, timeout, fresh=fresh)
    if ended.stopped is not None:
        pytest.fail(hung(ended, timeout, sb), pytrace=False)
    return Result(ended.code, ended.stdout, ended.stderr, ended.seconds, artifacts)


async def leftovers(
    sb: Sandbox,
    name: str = "integration-test-llama",
    namespace: str = "kaito-workspace",
    *,
    kube: KubeClient | None = None,
) -> list[str]:
    """What of the deployment is still in the cluster, checked through the API and Kubernetes.

    ``kube``: a client the caller already holds (a new one costs a TLS context's CPU)."""
    left: list[str] = []
    own = kube is None
    client = await KubeClient.from_kubeconfig(str(sb.kubeconfig)) if kube is None else kube
    try:
        try:
            await client.get(WORKSPACES, name, namespace)
            left.append(f"workspace {name}")
        except NotFound:
            pass
        pods = await client.list(PODS, namespace, label_selector=f"kaito.sh/workspace={name}")
        left += [p["metadata"]["name"] for p in pods.get("items") or []]
    finally:
        if own:
            await client.aclose()
    import httpx

    async with httpx.AsyncClient(verify=_tls()) as http:
        r = await http.get(f"{sb.api_url}/api/deployments/{name}", params={"namespace": namespace})
        if r.status_code != 404:
            left.append(f"backend still answers {r.status_code} for {name}")
    return left
