"""Ctrl-C and SIGTERM in every phase: cleanup and a report, then exit 130 or 143.

Each phase is held open by a fault that makes it wait (a backend route that never
answers, a model still loading, a finalizer kept), and the signal is sent when the run
prints that the phase started. The Wait Ready case lives with the end-to-end tests.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio.abc
import pytest
from e2e_harness import PHASES, sandbox_kube_only
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


def signal_masks(pid: int) -> dict[str, int]:
    """The kernel's view of ``pid``: the signals it ignores and those it has handlers for."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
    return {name: int(fields[name], 16) for name in ("SigIgn", "SigCgt")}


@sandbox_kube_only("what a process does with a signal does not depend on the cluster")
async def test_signals_ignored_from_the_start_leave_the_run_alone(sandbox, tmp_path: Path) -> None:
    """Started as a script's background job is (SIGINT ignored; SIGTERM too, as some
    supervisors do), the run puts no handler on either: SIGINT and SIGTERM sent in the
    middle of Deploy are dropped by the kernel, and the run goes on and passes.

    A fresh interpreter, started through a launcher that sets the ignores and ``exec``s
    it, as a shell does."""
    sent: list[dict[str, int]] = []

    def send(proc: anyio.abc.Process) -> None:
        sent.append(signal_masks(proc.pid))
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)

    result = await run_with_hooks(
        sandbox,
        tmp_path,
        hooks=[(started("Deploy llama3.2:1b"), send)],
        signals={signal.SIGINT: "ignore", signal.SIGTERM: "ignore"},
        fresh=True,
    )
    both = 1 << (signal.SIGINT - 1) | 1 << (signal.SIGTERM - 1)
    assert sent and sent[0]["SigIgn"] & both == both, sent
    assert sent[0]["SigCgt"] & both == 0, sent
    output = result.stdout + result.stderr
    assert result.code == 0, output
    assert "interrupted" not in output and "received" not in output, output
    assert result.run_json()["interrupted_by"] is None
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    await assert_clean(sandbox)
