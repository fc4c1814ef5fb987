"""Ctrl-C and SIGTERM in every phase: cleanup and a report, then exit 130 or 143.

Each phase is held open by a fault that makes it wait (a backend route that never
answers, a model still loading, a finalizer kept), and the signal is sent when the run
prints that the phase started. The Wait Ready case lives with the end-to-end tests.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from e2e_harness import PHASES
from faults_harness import assert_clean, run_with_hooks, started

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

#: phase title -> the faults that hold it open until the signal comes.
HOLD = {
    "Install KAITO": {"hang_route": "provider_status"},
    "Deploy llama3.2:1b": {"hang_route": "catalog_model"},
    "Inference": {"model_loading_seconds": 600},
    "Delete": {"stuck_delete": True},
}


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
@pytest.mark.parametrize("title", list(HOLD))
async def test_signal_in_phase_cleans_up_and_reports(
    sandbox, tmp_path: Path, title: str, sig: signal.Signals, code: int
) -> None:
    # Each hold bites only in its phase (no earlier phase uses that route or waits on that).
    sandbox.update_faults(HOLD[title])
    hooks = [
        (started(title), lambda proc: proc.send_signal(sig)),
        # Cleanup must be able to finish: lift the hold once the run is interrupted.
        (
            started("Cleanup"),
            lambda _proc: (
                sandbox.update_faults(
                    {"hang_route": None, "model_loading_seconds": 0, "stuck_delete": False}
                )
                and None
            ),
        ),
    ]
    result = await run_with_hooks(sandbox, tmp_path, hooks=hooks)
    assert result.code == code, result.stdout + result.stderr
    assert result.status_of(title)["status"] == "error", result.verdicts()
    assert "interrupted by " + sig.name in result.status_of(title)["message"]
    for later in PHASES[PHASES.index(title) + 1 :]:
        assert result.status_of(later)["status"] == "skipped", result.verdicts()
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    assert result.run_json()["interrupted_by"] == sig.name
    await assert_clean(sandbox)
