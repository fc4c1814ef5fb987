"""A real backend restart (kill, start) takes about seven seconds: one in any phase is survived.

The restart starts when the run prints that a phase has started; the backend is down
(connections refused) for seven seconds, then answers again on the same URL. Every
backend call in that window is retried until its phase's deadline, not for a few
attempts, so the run passes and leaves nothing behind. Stub models: the model is not
the subject here.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
import pytest
from e2e_harness import PHASES
from faults_harness import assert_clean, run_with_hooks, started

from orchestrator.sandbox import Delays, Faults
from orchestrator.sandbox._kubefoundry.app import RESTART_NAME

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

RESTART_SECONDS = 7.0


@pytest.fixture
def faults() -> Faults:
    return Faults(stub_models=True)


#: Phases that call the backend from their start and end in well under a second: each is
#: held open on the stand-ins' side until the backend is down, so that a hook that comes
#: late (a loaded machine's test process is slow to read the run's output) still finds the
#: phase running. The first holds the model short of ready, the second the Workspace's
#: finalizer: neither ends without the backend, which then answers the phase's question.
HOLD = {
    "Wait Ready": (
        {"delays": {"inference_ready": 3600}},
        {"delays": {"inference_ready": Delays().inference_ready}},
    ),
    "Delete": ({"stuck_delete": True}, {"stuck_delete": False}),
}


@pytest.mark.parametrize("phase", [*PHASES, "Cleanup"])
async def test_a_seven_second_backend_restart_in_any_phase_is_survived(
    sandbox, tmp_path: Path, phase: str
) -> None:
    hold, release = HOLD.get(phase, ({}, {}))
    sandbox.update_faults(hold)

    async def restart(_proc: object) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(sandbox.restart_backend, down_for=RESTART_SECONDS))
            if release:
                with anyio.fail_after(60):  # only a restart that never starts reaches this
                    await sandbox.state.wait_recorded(RESTART_NAME, "down")
                sandbox.update_faults(release)

    result = await run_with_hooks(sandbox, tmp_path, hooks=[(started(phase), restart)])
    assert result.code == 0, result.stdout + result.stderr
    for title in [*PHASES, "Cleanup"]:
        assert result.status_of(title)["status"] == "passed", title
    if phase in HOLD:  # phases that call the backend from their start
        assert "retrying:" in result.stdout, result.stdout
        assert result.seconds >= RESTART_SECONDS  # the restart really fell inside the run
    await assert_clean(sandbox)
