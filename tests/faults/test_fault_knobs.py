"""The knobs' JSON interface: what ``POST /_sandbox/faults`` and ``/_sandbox/restart`` accept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import httpx
import pytest
from _bounded import running_sandbox

from orchestrator.sandbox import Faults, SandboxOptions
from orchestrator.sandbox._kubefoundry import app as kubefoundry_app

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


async def test_restart_route_answers_then_comes_back_on_the_same_port(
    tmp_path: Path, stub_models: bool
) -> None:
    options = SandboxOptions(workdir=tmp_path, faults=Faults(stub_models=stub_models))
    async with running_sandbox(options) as sb, httpx.AsyncClient() as http:
        r = await http.post(f"{sb.api_url}/_sandbox/restart", json={"down_seconds": 0.2})
        assert r.json() == {"restarting": True, "down_seconds": 0.2}
        with anyio.fail_after(60):  # the restart is the event to wait for; only a hang hits this
            await asyncio.gather(*list(kubefoundry_app._background))
        assert (await http.get(f"{sb.api_url}/api/health")).status_code == 200


async def test_kube_knobs_are_refused_on_a_real_cluster(tmp_path: Path) -> None:
    # Without starting anything: the state alone decides.
    from orchestrator.sandbox.faults import SandboxState

    state = SandboxState(Faults(), kube_faults=False)
    with pytest.raises(ValueError, match="watch_cut_after"):
        state.update({"watch_cut_after": 1})
    state.update({"bad_body": {"route": "deployment_status", "kind": "wrong_shape", "count": 1}})
    assert state.take_bad_body("create") is None
    assert state.take_bad_body("deployment_status") == "wrong_shape"
    assert state.faults.bad_body is None  # its one answer was used


def test_a_hang_after_n_answers_answers_those_first() -> None:
    from orchestrator.sandbox.faults import SandboxState

    state = SandboxState(Faults())
    state.update({"hang_route": "deployment_status", "hang_after": 1})
    assert not state.take_hang("create")  # another route: never held
    assert not state.take_hang("deployment_status")  # its one answer
    assert state.take_hang("deployment_status")
    assert state.take_hang("deployment_status")  # and from then on, every time
