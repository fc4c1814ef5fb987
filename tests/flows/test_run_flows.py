"""The public runner of many flows, and flows found by name."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio
import pytest
from flow_fakes import FakeBackend, FakeCluster, FakeModel
from test_kubefoundry_flow import kaito_workload

from orchestrator.engine import Phase, PhaseContext, PhaseRecord
from orchestrator.flows import (
    ArtifactsInUse,
    FlowContext,
    FlowNotFound,
    FlowRun,
    FlowSettings,
    KubeFoundryFlow,
    find_flow,
    installed_flows,
    run_flows,
)
from orchestrator.flows.kaito import KaitoProfile

pytestmark = pytest.mark.anyio


class TinyFlow:
    """A flow that is not a KubeFoundry one: the runner takes any engine flow."""

    def __init__(self, name: str, outcome: str = "pass", gate: anyio.Event | None = None) -> None:
        self.name = name
        self.outcome = outcome
        self.gate = gate
        self.started = anyio.Event()  # set when its phase begins

    def phases(self) -> list[Phase]:
        return [Phase("work", "Work", 5.0, self.work)]

    async def work(self, ctx: PhaseContext) -> None:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.outcome == "fail":
            raise RuntimeError("it broke")

    def properties(self) -> dict[str, str]:
        return {"kind": "tiny"}

    async def diagnose(self, ctx: PhaseContext, failed: PhaseRecord) -> None:
        pass

    async def cleanup(self, ctx: PhaseContext) -> None:
        pass

    def keep_hints(self) -> list[str]:
        return []


def suites(artifacts: Path) -> list[str]:
    root = ET.parse(artifacts / "junit.xml").getroot()
    return [s.attrib["name"] for s in root.iter("testsuite")]


async def test_flows_run_side_by_side_into_one_junit_and_the_worst_exit(tmp_path: Path) -> None:
    code = await run_flows(
        [TinyFlow("a"), TinyFlow("b", "fail")],
        budget=30,
        artifacts_dir=tmp_path,
        handle_signals=False,
    )
    assert code == 1
    assert sorted(suites(tmp_path)) == ["a", "b"]
    # Several flows: a folder each, so that one's run.json never replaces another's.
    assert json.loads((tmp_path / "a" / "run.json").read_text())["outcome"] == "passed"
    assert json.loads((tmp_path / "b" / "run.json").read_text())["outcome"] == "failed"


async def test_two_flows_of_one_name_keep_their_own_folders(tmp_path: Path) -> None:
    run = FlowRun([TinyFlow("same"), TinyFlow("same")], budget=30, artifacts_dir=tmp_path)
    assert await run.run() == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["same", "same-2"]


async def test_a_second_run_on_the_same_artifacts_dir_is_refused(tmp_path: Path) -> None:
    gate = anyio.Event()
    flow = TinyFlow("first", gate=gate)
    first = FlowRun([flow], budget=30, artifacts_dir=tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        with anyio.fail_after(60):  # a hang guard: the phase starts at once
            await flow.started.wait()
        # A phase runs only once the run holds the directory.
        assert (tmp_path / ".orchestrator.lock").exists()
        with pytest.raises(ArtifactsInUse, match="in use by another run"):
            await run_flows([TinyFlow("second")], budget=30, artifacts_dir=tmp_path)
        gate.set()
    assert suites(tmp_path) == ["first"]
    # Once the first has ended, the directory is free again.
    assert await run_flows([TinyFlow("third")], budget=30, artifacts_dir=tmp_path) == 0


async def test_a_factory_gets_the_runs_context_and_its_clients_are_closed(tmp_path: Path) -> None:
    backend = FakeBackend(FakeCluster(), kaito_workload())
    model = FakeModel()
    made: list[KubeFoundryFlow] = []

    def factory(ctx: FlowContext) -> list[KubeFoundryFlow]:
        flow = KubeFoundryFlow(
            KaitoProfile(),
            ctx.settings,
            api=backend.client(),
            kube=backend.cluster,  # type: ignore[arg-type]
            inference=model.client(),
            install_gate=ctx.install_gate,
        )
        made.append(flow)
        return [flow]

    context = FlowContext(
        settings=FlowSettings(api_url="http://backend.test", wait_strategy="poll")
    )
    code = await run_flows([factory], budget=30, artifacts_dir=tmp_path, context=context)
    assert code == 0, json.loads((tmp_path / "run.json").read_text())
    assert made and suites(tmp_path) == ["kaito"]
    await made[0].api.aclose()
    await made[0].inference.aclose()


def test_the_builtin_flow_is_found_by_name_with_a_description() -> None:
    entry = find_flow("kaito")
    assert entry.origin == "built-in"
    assert entry.description().startswith("KAITO through KubeFoundry")
    assert "kaito" in installed_flows()


def test_a_builtin_flow_found_by_name_is_the_one_installed_flows_lists() -> None:
    listed = installed_flows()
    for name in ("kaito", "kuberay", "dynamo"):
        assert find_flow(name) == listed[name]


def test_a_module_factory_path_is_found_too() -> None:
    entry = find_flow("orchestrator.flows.kaito:flows")
    assert entry.load() is find_flow("kaito").load()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "no flow named 'nope' (installed: "),
        ("no_such_module:flows", "cannot be loaded: ModuleNotFoundError"),
        ("orchestrator.flows.kaito:missing", "cannot be loaded: AttributeError"),
        ("orchestrator.flows.kaito:WORKSPACES", "is a Resource, not a factory"),
        ("bad path:x", "is not a module:factory path"),
    ],
)
def test_a_flow_that_cannot_be_found_or_loaded_says_why(name: str, message: str) -> None:
    with pytest.raises(FlowNotFound) as err:
        find_flow(name).load()
    assert message in str(err.value)


def test_context_options_reach_kubefoundry_flows(tmp_path: Path) -> None:
    ctx = FlowContext(
        kube=FakeCluster(),  # type: ignore[arg-type]
        settings=FlowSettings(api_url="http://backend.test"),
    ).with_options({"namespace": "elsewhere", "ready_timeout": 5.0})
    flows = ctx.kubefoundry_flows(KaitoProfile())
    assert [(f.deployment.namespace, f.deployment.model) for f in flows] == [
        ("elsewhere", "llama3.2:1b")
    ]
    assert flows[0].settings.ready_timeout == 5.0
    anyio.run(ctx.aclose)


class SignalledFlow(TinyFlow):
    """A flow whose phase sends its own process SIGINT, then SIGUSR1 as a marker.

    Both are delivered before ``kill`` returns, and the loop runs their callbacks in that
    order: once the marker's has run, so has whatever SIGINT was to do (stop the run).
    """

    def __init__(self) -> None:
        super().__init__("signalled")
        self.marker = anyio.Event()

    async def work(self, ctx: PhaseContext) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.marker.set)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGUSR1)
            with anyio.fail_after(30):  # a hang guard: it comes at once
                await self.marker.wait()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)


def caller_handler(signum: int, frame: object) -> None:
    """The calling program's own handler; the run must never call it."""
    raise AssertionError(f"the caller's handler ran for {signum}")


@pytest.mark.parametrize("sigint", ["ignored", "handled"])
async def test_a_run_leaves_an_ignored_sigint_alone_and_gives_back_the_callers_handlers(
    tmp_path: Path, sigint: str
) -> None:
    """Started with SIGINT ignored (a background job), the run is not stopped by one and
    passes; otherwise SIGINT stops it (130). Either way the caller's dispositions are
    what it has when ``run_flows`` returns."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    mine = signal.SIG_IGN if sigint == "ignored" else caller_handler
    signal.signal(signal.SIGINT, mine)
    signal.signal(signal.SIGTERM, caller_handler)
    try:
        code = await run_flows([SignalledFlow()], budget=30, artifacts_dir=tmp_path)
        after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert after == (mine, caller_handler)
    run = json.loads((tmp_path / "run.json").read_text())
    if sigint == "ignored":
        assert (code, run["outcome"], run["interrupted_by"]) == (0, "passed", None)
    else:
        assert (code, run["outcome"], run["interrupted_by"]) == (130, "interrupted", "SIGINT")


def test_a_run_in_a_worker_thread_leaves_signals_to_the_program(tmp_path: Path) -> None:
    """Only the main thread may take a signal. A library user who calls ``run_flows`` from
    another thread, without knowing of ``handle_signals``, gets a run that leaves signals
    alone, not an error; asking for them there (``True``) is still refused."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    results: dict[str, object] = {}

    def in_a_thread() -> None:
        for ask in (None, True):
            options = {} if ask is None else {"handle_signals": ask}
            try:
                results[str(ask)] = asyncio.run(
                    run_flows(
                        [TinyFlow("threaded")],
                        budget=30,
                        artifacts_dir=tmp_path / str(ask),
                        **options,
                    )
                )
            except Exception as exc:
                results[str(ask)] = exc

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join(60)  # a hang guard: the runs take a moment
    assert not worker.is_alive()
    assert results["None"] == 0
    assert isinstance(results["True"], RuntimeError), results["True"]
    assert "main thread" in str(results["True"])
    assert {sig: signal.getsignal(sig) for sig in before} == before
