"""The chaos phase (a model pod lost after Wait Ready must come back and serve) and the leak check.

The chaos phase runs in-process through the engine, the way the command wires it, so it
is tested whether or not the command line exposes ``--chaos`` yet; the leak check runs
through the real command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import run_orchestrator
from faults_harness import NAME, assert_clean, run_log

from orchestrator.clients import (
    NAMESPACES,
    SERVICES,
    Conflict,
    InferenceClient,
    InferenceRoute,
    KubeClient,
    KubeFoundryClient,
)
from orchestrator.engine import Budget, JUnitReporter, Runner
from orchestrator.flows.kaito import KaitoFlow, KaitoSettings

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]
NS = "kaito-workspace"


async def run_flow(sb, tmp_path: Path, **settings) -> Runner:
    kube = await KubeClient.from_kubeconfig(str(sb.kubeconfig))
    api = KubeFoundryClient(sb.api_url)
    inference = InferenceClient(InferenceRoute("service-proxy"), kube=kube)
    flow = KaitoFlow(
        KaitoSettings(api_url=sb.api_url, **settings), api=api, kube=kube, inference=inference
    )
    runner = Runner(
        flow,
        budget=Budget(total=120, reserve=30),
        artifacts_dir=tmp_path / "artifacts",
        reporters=[JUnitReporter(tmp_path / "artifacts" / "junit.xml")],
        cleanup_policy="always",
    )
    try:
        await runner.run()
    finally:
        await api.aclose()
        await inference.aclose()
        await kube.aclose()
    return runner


async def test_chaos_phase_restarts_the_model_pod_and_inference_works_again(
    sandbox, tmp_path: Path
) -> None:
    runner = await run_flow(sandbox, tmp_path, chaos=True)
    record = runner.record
    statuses = {p.name: p.status for p in record.phases}
    assert list(statuses) == ["install", "deploy", "wait_ready", "chaos", "inference", "delete"]
    assert set(statuses.values()) == {"passed"}, [
        (p.name, p.status, p.reason) for p in record.phases
    ]
    assert record.exit_code == 0
    events = [e.event for e in sandbox.timeline if e.name == NAME]
    assert events.index("pod deleted") < events.index("recreated pod Running")
    assert "Chaos: restart model pod" in (tmp_path / "artifacts" / "junit.xml").read_text()
    await assert_clean(sandbox)


def test_chaos_is_off_by_default() -> None:
    flow = KaitoFlow(
        KaitoSettings(api_url="http://127.0.0.1:1"),
        api=None,
        kube=None,  # type: ignore[arg-type]
        inference=None,
    )  # type: ignore[arg-type]
    assert "chaos" not in [p.name for p in flow.phases()]


async def test_chaos_flag_through_the_command(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path, "--chaos")
    assert result.code == 0, result.stdout + result.stderr
    assert result.status_of("Chaos: restart model pod")["status"] == "passed", result.verdicts()
    await assert_clean(sandbox)


async def test_a_leaked_object_with_the_runs_labels_fails_the_run_and_cleanup_removes_it(
    sandbox, tmp_path: Path
) -> None:
    # A Service that carries this run's label but that nothing deletes: the Delete phase
    # must find it by label and fail saying so; Cleanup, the last line of defence,
    # deletes it by the run's labels, and its final listing proves nothing is left.
    kube = await KubeClient.from_kubeconfig(str(sandbox.kubeconfig))
    try:
        try:
            await kube.create(
                NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
            )
        except Conflict:
            pass
        leaked = f"{NAME}-leaked"
        await kube.create(
            SERVICES,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": leaked,
                    "namespace": NS,
                    "labels": {"kaito.sh/workspace": NAME},
                },
                "spec": {"ports": [{"port": 80}]},
            },
            NS,
        )
        # The Delete phase's timeout is what ends it (the Service never goes), but it must
        # leave a loaded machine the time to send the DELETE and see the Workspace go, or
        # its reason names the request and not the Service. Cleanup gives the backend a
        # third of its time, and Kubernetes the rest to delete the Service and see it gone.
        result = await run_orchestrator(
            sandbox, tmp_path, "--delete-timeout", "10000", "--cleanup-reserve", "20000"
        )
        assert result.code == 1, result.stdout + result.stderr
        delete = result.status_of("Delete")
        assert delete["status"] == "failure" and f"Service {NS}/{leaked}" in delete["message"], (
            result.verdicts()
        )
        assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
        assert f"deleted Service {NS}/{leaked}" in run_log(result)
        await assert_clean(sandbox)
    finally:
        await kube.aclose()
    await assert_clean(sandbox)
