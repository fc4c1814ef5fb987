"""A pull the registry refuses for a while (Docker Hub's rate limit in CI) is waited out.

The kubelet retries a failed pull with back-off, and a 429 ``toomanyrequests`` clears
on a later try: Wait Ready must go on, say in the run log which pod, image and answer
it is waiting out, and pass once the pod runs. The stand-in keeps refusing the pull
until the run has printed that note (so the note is certain to be seen, whatever the
machine's load), then lets the next try pull it. A definitive answer (the image not
found) still ends Wait Ready at once: tests/e2e/test_flow.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_harness import PHASES, run_orchestrator
from faults_harness import assert_clean, run_with_hooks

from orchestrator.sandbox import Faults

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

NOTE = "cannot pull image"


# The back-off is far away: the pod shows the registry's answer until the note is out.
@pytest.mark.parametrize(
    "faults", [Faults(image_pull_rate_limited=True, delays={"image_pull_backoff": 600})]
)
async def test_a_rate_limited_pull_is_waited_out_and_noted(sandbox, tmp_path: Path) -> None:
    def lift(_: object) -> None:
        sandbox.update_faults({"image_pull_rate_limited": False})

    result = await run_with_hooks(sandbox, tmp_path, hooks=[(NOTE, lift)])
    assert result.code == 0, result.stdout + result.stderr
    for title in [*PHASES, "Cleanup"]:
        assert result.status_of(title)["status"] == "passed", result.verdicts()
    notes = [line for line in result.stdout.splitlines() if NOTE in line]
    assert len(notes) == 1, notes  # once per answer, not once per event
    assert "(the kubelet retries)" in notes[0], notes
    assert "429 Too Many Requests" in notes[0] and "toomanyrequests" in notes[0], notes
    assert "llama3.2:1b" in notes[0], notes
    await assert_clean(sandbox)


@pytest.mark.parametrize("faults", [Faults(image_pull_rate_limited=True)])
async def test_a_pull_refused_until_the_deadline_names_the_answer(sandbox, tmp_path: Path) -> None:
    # Never lifted: Wait Ready runs out its (short) time, and its reason says which pull
    # it was waiting out and what the registry answered, not only "timed out".
    result = await run_orchestrator(sandbox, tmp_path, "--deployment-ready-timeout", "10000")
    assert result.code == 1, result.stdout + result.stderr
    failure = result.status_of("Wait Ready")
    assert failure["status"] == "failure", result.verdicts()
    message = failure["message"]
    assert "timed out" in message and "cannot pull image" in message, message
    assert "toomanyrequests" in message, message
    assert result.status_of("Cleanup")["status"] == "passed", result.verdicts()
    await assert_clean(sandbox)
