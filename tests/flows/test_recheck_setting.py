"""The safety re-check (``recheck_interval``) reaches every wait of the flow that watches.

The flow is run through the engine against the small fakes with the configuration a user
would give (nothing, a file, the environment), and each of its waits records the
re-check it was handed before it runs as usual. That the re-check is what ends a wait
whose watches stall is held end to end by
``tests/hostile/test_hostile_peers.py::test_a_stalled_watch_is_ended_by_the_safety_recheck``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from flow_fakes import FakeBackend, FakeCluster, FakeModel, Workload

from orchestrator._app import flow_settings
from orchestrator.config import load_settings
from orchestrator.engine import Budget, Runner
from orchestrator.flows import FlowSettings, KubeFoundryFlow, _kubefoundry
from orchestrator.flows.kaito import WORKSPACES, KaitoProfile

pytestmark = pytest.mark.anyio


async def rechecks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    environ: dict[str, str] | None = None,
    toml: str = "",
) -> dict[str, float]:
    """Each wait of a whole KAITO flow (by the name of the question it asks) and the
    re-check it was given, for the settings ``environ`` and ``toml`` make."""
    if toml:
        (tmp_path / "config.toml").write_text(toml)
    settings = flow_settings(
        load_settings({}, environ=environ or {}, cwd=tmp_path), api_url="http://backend.test"
    )
    assert settings.wait_strategy == "watch"
    given: dict[str, float] = {}
    real = _kubefoundry.wait_for

    async def recording(check: Callable[[], Awaitable[Any]], **kw: Any) -> Any:
        given[getattr(check, "__name__", "?")] = kw["recheck"]
        # The fakes have no watch streams: the wait asks its question as it would at a
        # re-check, only at once.
        return await real(check, **{**kw, "watches": [], "recheck": 0.01, "hub": None})

    monkeypatch.setattr(_kubefoundry, "wait_for", recording)
    backend = FakeBackend(
        FakeCluster(),
        Workload(WORKSPACES, "Workspace", lambda name: {"kaito.sh/workspace": name}),
        installed=False,
    )
    api, inference = backend.client(), FakeModel().client()
    flow = KubeFoundryFlow(
        KaitoProfile(), settings, api=api, kube=backend.cluster, inference=inference
    )  # type: ignore[arg-type]
    try:
        record = await Runner(
            flow,
            budget=Budget(30, 10),
            reporters=[],
            artifacts_dir=tmp_path / "artifacts",
            cleanup_policy="always",
        ).run()
    finally:
        await api.aclose()
        await inference.aclose()
    assert record.exit_code == 0, [(p.name, p.reason) for p in record.phases]
    return given


async def test_the_safety_recheck_is_30_s_when_nothing_sets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Wait Ready at the default; Install and Delete at their 5 s cap.
    given = await rechecks(tmp_path, monkeypatch)
    assert given == {"installed": 5.0, "ready": 30.0, "gone": 5.0}
    assert FlowSettings(api_url="http://x").recheck == 30.0  # the library's default too


async def test_a_configured_recheck_reaches_every_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = await rechecks(tmp_path, monkeypatch, environ={"ORCHESTRATOR_RECHECK_INTERVAL": "3000"})
    assert short == {"installed": 3.0, "ready": 3.0, "gone": 3.0}
    long = await rechecks(tmp_path, monkeypatch, toml="recheck_interval = 90000\n")
    assert long == {"installed": 5.0, "ready": 90.0, "gone": 5.0}
