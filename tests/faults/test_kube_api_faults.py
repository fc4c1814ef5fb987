"""The cluster misbehaving the way real API servers do: the watch loop must not miss a transition.

"No transition missed" is checked twice: by the run's own log (a wait that only the safety
re-check answered says so) and by time: the flow re-asks on its own only every
``recheck_interval`` (30 s by default in Wait Ready, at most 5 s in Install), so a phase
that ends well before that was woken by a watch event, not by the safety re-check.

Sandbox-only: the test cluster's API server cannot be told to cut streams, answer 410
for a fresh resourceVersion or hold a CRD's watch cache cold on demand (it compacts every
5 minutes and warms new CRDs at once), so these rows run on the sandbox's own API.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import PHASES, run_orchestrator, sandbox_kube_only
from faults_harness import assert_clean, run_log

from orchestrator.sandbox import Faults

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.cluster,
    # Decided before the sandbox is built: it refuses these knobs on a real cluster.
    sandbox_kube_only(
        "sandbox-only: a real API server cannot cut watches, answer 410 or 429 on demand"
    ),
]


#: Wait Ready's safety re-check comes every 30 s; with a 20 s phase timeout the phase can
#: only pass if a watch event woke it. A bound far above the ~1 s the phase takes, so
#: a loaded machine does not miss it, yet one that tells an event from the re-check.
EVENTS_ONLY = ("--deployment-ready-timeout", "20000")


def assert_passed_promptly(result) -> None:
    assert result.code == 0, result.verdicts()
    for title in PHASES + ["Cleanup"]:
        assert result.status_of(title)["status"] == "passed", result.verdicts()
    # And said so: a wait that only the safety re-check answered logs it.
    assert not_at_the_recheck(result), run_log(result)


def not_at_the_recheck(result) -> bool:
    """No wait of the run was answered only by the safety re-check (each such wait logs it)."""
    return "safety re-check, not after a watch event" not in run_log(result)


@pytest.mark.parametrize("faults", [Faults(watch_cut_after=0.5)])
async def test_watch_streams_cut_every_half_second(sandbox, tmp_path: Path) -> None:
    result = await run_orchestrator(sandbox, tmp_path, *EVENTS_ONLY)
    assert_passed_promptly(result)
    await assert_clean(sandbox)


@pytest.mark.parametrize(
    "faults",
    [Faults(watch_gone=2, watch_gone_selector="path=/api/v1/namespaces/kaito-workspace/pods")],
)
async def test_410_gone_on_the_pod_watch_relists(sandbox, tmp_path: Path) -> None:
    # The flows share one unfiltered pod watch per namespace (selectors are applied on the
    # client), so the 410s are aimed at that watch, not at the sandbox's own controller's.
    result = await run_orchestrator(sandbox, tmp_path, *EVENTS_ONLY)
    assert_passed_promptly(result)
    # Both 410s were served, and only this run's shared pod watch matches the target.
    assert sandbox.faults.watch_gone == 0
    # A 410 that lands while the install phase's wait is already over is relisted with
    # nobody left to log it, so the log shows at least one, not always both.
    assert run_log(result).count("watch pods: too old resource version") >= 1, run_log(result)
    await assert_clean(sandbox)


@pytest.mark.parametrize("faults", [Faults(too_many_requests_after_crd=3)])
async def test_429_right_after_the_crd_appears(sandbox, tmp_path: Path) -> None:
    # Retry-After is honoured, and the wait still ends on an event, not on the re-check.
    result = await run_orchestrator(sandbox, tmp_path, *EVENTS_ONLY)
    assert result.code == 0, result.verdicts()
    assert "watch workspaces: 429" in run_log(result), run_log(result)
    assert not_at_the_recheck(result), run_log(result)
    await assert_clean(sandbox)
