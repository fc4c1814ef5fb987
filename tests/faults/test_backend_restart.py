"""A real backend restart (kill, start) takes about seven seconds: one in any phase is survived.

The restart starts when the run prints that a phase has started; the backend is down
(connections refused) for seven seconds, then answers again on the same URL. Every
backend call in that window is retried until its phase's deadline, not for a few
attempts, so the run passes and leaves nothing behind. Stub models: the model is not
the subject here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import PHASES
from faults_harness import assert_clean, run_with_hooks, started

from orchestrator.sandbox import Faults

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

RESTART_SECONDS = 7.0


@pytest.fixture
def faults() -> Faults:
    return Faults(stub_models=True)


@pytest.mark.parametrize("phase", [*PHASES, "Cleanup"])
async def test_a_seven_second_backend_restart_in_any_phase_is_survived(
    sandbox, tmp_path: Path, phase: str
) -> None:
    result = await run_with_hooks(
        sandbox,
        tmp_path,
        hooks=[(started(phase), lambda _proc: sandbox.restart_backend(down_for=RESTART_SECONDS))],
    )
    assert result.code == 0, result.stdout + result.stderr
    for title in [*PHASES, "Cleanup"]:
        assert result.status_of(title)["status"] == "passed", title
    if phase in ("Wait Ready", "Delete"):  # phases that call the backend from their start
        assert "retrying:" in result.stdout, result.stdout
        assert result.seconds >= RESTART_SECONDS  # the restart really fell inside the run
    await assert_clean(sandbox)
