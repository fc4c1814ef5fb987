"""setup_phases and teardown: the environment's steps timed into the run record by the engine."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from environment_fakes import Standins, free_port

from orchestrator.engine import Budget, Phase, PhaseContext, PhaseRecord, Runner, RunRecord
from orchestrator.environment import BackendProcess, KindCluster, setup_phases, teardown
from orchestrator.sandbox.kubeapi import KubeAPIServer

pytestmark = pytest.mark.anyio


class EnvFlow:
    """The environment phases, then one phase that uses what they made."""

    name = "environment"

    def __init__(self, phases: list[Phase], health_url: str = "") -> None:
        self._phases = phases
        self.health_url = health_url
        self.seen_health: int | None = None

    def phases(self) -> list[Phase]:
        return [*self._phases, Phase("use", "Use it", 10, self.use)]

    async def use(self, ctx: PhaseContext) -> None:
        async with httpx.AsyncClient(trust_env=False) as http:
            self.seen_health = (await http.get(self.health_url)).status_code

    def properties(self) -> dict[str, str]:
        return {}

    async def diagnose(self, ctx: PhaseContext, failed: PhaseRecord) -> None:
        return None

    async def cleanup(self, ctx: PhaseContext) -> None:
        return None

    def keep_hints(self) -> list[str]:
        return []


def environment(tmp_path: Path) -> tuple[KindCluster, BackendProcess]:
    artifacts = tmp_path / "artifacts"
    cluster = KindCluster("kf-test", workdir=artifacts)
    backend = BackendProcess(
        tmp_path,
        port=free_port(),
        kubeconfig=cluster.kubeconfig,
        log_path=artifacts / "backend.log",
        env={"STANDIN_MODE": "healthy"},
        grace=2,
    )
    return cluster, backend


async def run(flow: EnvFlow, tmp_path: Path) -> RunRecord:
    return await Runner(flow, budget=Budget(120, 20), artifacts_dir=tmp_path / "artifacts").run()


async def test_setup_phases_bring_the_environment_up_and_teardown_removes_it(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    cluster, backend = environment(tmp_path)
    phases = setup_phases(cluster, backend)
    assert [(p.name, p.title) for p in phases] == [
        ("create_cluster", "Create cluster"),
        ("wait_nodes", "Wait nodes Ready"),
        ("start_backend", "Start backend"),
    ]
    flow = EnvFlow(phases, backend.health_url)
    try:
        record = await run(flow, tmp_path)
    finally:
        steps = await teardown(cluster, backend)

    assert record.outcome == "passed", record.log_text()
    assert flow.seen_health == 200
    props = record.all_properties()
    assert props["cluster"] == "kf-test" and props["cluster_created"] == "true"
    assert props["nodes"] == "fake-node-0,fake-node-1"
    assert props["backend_url"] == backend.url
    assert all(p.duration is not None for p in record.phases)

    assert [(s.name, s.acted, s.error) for s in steps] == [
        ("stop_backend", True, None),
        ("delete_cluster", True, None),
    ]
    assert backend.returncode is not None
    assert standins.clusters() == []


async def test_a_failing_setup_phase_gives_the_one_line_reason(
    tmp_path: Path, standins: Standins
) -> None:
    standins.set("docker_down")
    cluster, backend = environment(tmp_path)
    record = await run(EnvFlow(setup_phases(cluster, backend)), tmp_path)
    first = record.phases[0]
    assert record.outcome == "failed" and first.status == "failed"
    assert first.reason is not None and first.reason.startswith("Docker is not running")
    assert [p.status for p in record.phases[1:]] == ["skipped"] * 3
    steps = await teardown(cluster, backend)
    assert [(s.name, s.acted, s.error) for s in steps] == [
        ("stop_backend", False, None),
        ("delete_cluster", False, None),
    ]


async def test_a_dead_backend_fails_its_phase_with_the_log_as_detail(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    cluster, backend = environment(tmp_path)
    backend.env["STANDIN_MODE"] = "die"
    try:
        record = await run(EnvFlow(setup_phases(None, backend)), tmp_path)
    finally:
        await teardown(None, backend)
    phase = record.phases[0]
    assert phase.name == "start_backend" and phase.status == "failed"
    assert phase.reason is not None and "exited with code 1" in phase.reason
    assert phase.detail is not None and "Did you run bun install?" in phase.detail


async def test_teardown_reports_a_failed_delete_and_still_stops_the_backend(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    cluster, backend = environment(tmp_path)
    await cluster.create()
    await backend.start()
    standins.set("fail_delete")
    steps = await teardown(cluster, backend)
    assert steps[0].name == "stop_backend" and steps[0].error is None
    assert backend.returncode is not None
    assert steps[1].name == "delete_cluster"
    assert steps[1].error is not None and "kind delete cluster --name kf-test" in steps[1].error


def test_no_environment_means_no_phases() -> None:
    assert setup_phases(None, None) == []


IMAGE = "ghcr.io/kaito-project/aikit/llama3.2:1b"


async def test_a_cached_image_is_loaded_into_the_nodes_before_the_flow(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    standins.set("docker_images", IMAGE)
    cluster, backend = environment(tmp_path)
    phases = setup_phases(cluster, backend, load_images=[IMAGE])
    assert [p.name for p in phases] == [
        "create_cluster",
        "wait_nodes",
        "load_images",
        "start_backend",
    ]
    try:
        record = await run(EnvFlow(phases, backend.health_url), tmp_path)
    finally:
        await teardown(cluster, backend)
    assert record.outcome == "passed", record.log_text()
    assert ["kind", "load", "docker-image", IMAGE, "--name", "kf-test"] in standins.calls("kind")
    assert record.all_properties()["loaded_images"] == IMAGE


async def test_an_image_missing_from_the_local_docker_fails_load_images_saying_what_to_do(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    cluster, backend = environment(tmp_path)
    record = await run(EnvFlow(setup_phases(cluster, None, load_images=[IMAGE])), tmp_path)
    await teardown(cluster, None)
    load = next(p for p in record.phases if p.name == "load_images")
    assert load.status == "failed" and load.reason is not None
    assert f"kind load docker-image {IMAGE} failed" in load.reason
    assert "not present locally" in load.reason and f"docker pull {IMAGE}" in load.reason
    assert standins.clusters() == []


def test_no_images_to_load_means_no_load_phase(tmp_path: Path) -> None:
    cluster, _ = environment(tmp_path)
    assert "load_images" not in [p.name for p in setup_phases(cluster, None, load_images=[])]
