"""Cleanup is the last line of defence: whatever the backend's delete does (fail, hang,
answer 200 and delete nothing), the Delete phase fails with that finding and Cleanup
removes what the run made directly through Kubernetes, then lists to prove nothing is
left. With ``CI`` set a run never leaves anything behind.

Held on the sandbox's own API and, when ``TESTCLUSTER_HOME`` is set, a real API server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faults_harness import assert_clean, run_log, run_with_hooks

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

#: Short phases and a small cleanup reserve: the backend's share of cleanup (a third of
#: it) is then a few seconds, and a run that must wait it out still takes seconds. Yet
#: neither is the subject, and both hold requests a loaded machine is slow to send: a
#: Delete of 6 s could end before its DELETE went out (its reason then names no finding),
#: and Cleanup's floor of 10 s left Kubernetes under 7 s to delete and see it gone.
FAST = ["--delete-timeout", "10000", "--cleanup-reserve", "20000"]


@pytest.mark.parametrize(
    "knobs, finding",
    [
        ({"delete_noop": True}, "DELETE answered 200"),
        ({"hang_route": "delete"}, "DELETE /api/deployments"),
        ({"backend_errors": 0, "bad_body": {"route": "delete", "kind": "invalid_json"}}, "DELETE"),
    ],
    ids=["answers-200-deletes-nothing", "hangs", "answers-garbage"],
)
async def test_a_delete_the_backend_does_not_do_fails_the_phase_and_cleanup_still_cleans(
    sandbox, tmp_path: Path, knobs: dict[str, object], finding: str
) -> None:
    # Broken from the start: only the Delete phase and Cleanup use the delete route, and a
    # hook flipping it when Delete starts would race the run's DELETE (and lose it when
    # the run asked first, so that the backend deleted the deployment after all).
    sandbox.update_faults({"stub_models": True, **knobs})
    result = await run_with_hooks(sandbox, tmp_path, *FAST, hooks=[], env={"CI": "true"})
    out = result.stdout + result.stderr
    assert result.code == 1, out
    assert "Traceback" not in out
    delete = result.status_of("Delete")
    assert delete["status"] in ("failure", "error") and finding in delete["message"], delete
    assert result.status_of("Cleanup")["status"] == "passed", out
    assert "directly through Kubernetes" in run_log(result)
    sandbox.update_faults({"hang_route": None, "delete_noop": False, "bad_body": None})
    await assert_clean(sandbox)


@pytest.mark.parametrize(
    "knobs",
    [
        {"delete_noop": True},
        {"hang_route": "delete"},
        {"bad_body": {"route": "delete", "kind": "invalid_json"}},
    ],
    ids=["answers-200-deletes-nothing", "hangs", "answers-garbage"],
)
async def test_cleanup_after_a_failure_does_not_wait_on_a_backend_that_deletes_nothing(
    sandbox, tmp_path: Path, knobs: dict[str, object]
) -> None:
    """Wait Ready fails (the model never becomes ready); the backend then gets its share
    of cleanup, and Kubernetes does the rest."""
    sandbox.update_faults({"stub_models": True, "never_ready": True, **knobs})
    result = await run_with_hooks(
        sandbox,
        tmp_path,
        *FAST,
        "--deployment-ready-timeout",
        "3000",
        hooks=[],
        env={"CI": "true"},
    )
    out = result.stdout + result.stderr
    assert result.code == 1, out
    assert result.status_of("Wait Ready")["status"] == "failure"
    assert result.status_of("Cleanup")["status"] == "passed", out
    log = run_log(result)
    assert (
        "the backend's delete did not remove the Workspace" in log
        or "the backend's delete failed" in log
    ), log
    assert "directly through Kubernetes" in log
    props = {p["name"]: p["value"] for p in _properties(result)}
    assert props.get("cleanup_deleted_by") == "kubernetes", props
    sandbox.update_faults(
        {"hang_route": None, "delete_noop": False, "never_ready": False, "bad_body": None}
    )
    await assert_clean(sandbox)


def _properties(result) -> list[dict[str, str]]:
    import xml.etree.ElementTree as ET

    root = ET.parse(result.junit).getroot()
    return [dict(p.attrib) for p in root.iter("property")]
