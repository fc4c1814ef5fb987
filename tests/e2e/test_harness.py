"""The harness stops a run that outlives its deadline so that the run says why.

SIGTERM first (the orchestrator diagnoses, cleans up and reports, exit 143), SIGKILL only
if that does not end it within the grace; the failure shows the run's output, the
sandbox's timeline and the tail of its log. The deadline here is ``stop``, set when the
run's output shows a marker: the same path as a deadline, without waiting one out.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import anyio.abc
import pytest
from _bounded import sandbox_log
from e2e_harness import Ended, OnOutput, command, drive, hung

from orchestrator.sandbox import Faults, Sandbox

pytestmark = pytest.mark.anyio

NAME = "integration-test-llama"

#: A child that says it is ready, then hangs; on SIGTERM it reports and exits 143,
#: unless told to ignore SIGTERM.
CHILD = """
import os, signal, sys, time
def stop(*_):
    os.write(1, b"SIGTERM: cleaned up, report written\\n")
    os._exit(143)
signal.signal(signal.SIGTERM, signal.SIG_IGN if "ignore" in sys.argv else stop)
print("on stderr too", file=sys.stderr, flush=True)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def stop_on(marker: str, stop: anyio.Event) -> OnOutput:
    def on_output(output: str, proc: anyio.abc.Process) -> None:
        if marker in output:
            stop.set()

    return on_output


async def test_a_hung_child_gets_sigterm_and_its_last_words_are_kept(tmp_path: Path) -> None:
    stop = anyio.Event()
    ended = await drive(
        [sys.executable, "-c", CHILD], {}, tmp_path, 3600, stop_on("ready", stop), stop=stop
    )
    assert ended.code == 143
    assert ended.stopped is not None and ended.stopped.startswith("SIGTERM: exit 143 after")
    assert ended.stdout.splitlines() == ["ready", "SIGTERM: cleaned up, report written"]
    assert ended.stderr.strip() == "on stderr too"
    message = hung(ended, 3600)
    assert message.startswith("the run did not end within 3600 s; SIGTERM: exit 143")
    assert "SIGTERM: cleaned up, report written" in message and "on stderr too" in message


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    stop = anyio.Event()
    ended = await drive(
        [sys.executable, "-c", CHILD, "ignore"],
        {},
        tmp_path,
        3600,
        stop_on("ready", stop),
        grace=0.5,  # the child ignores SIGTERM: only the grace ends this wait
        stop=stop,
    )
    assert ended.code == -9
    assert ended.stopped is not None and ended.stopped.endswith(": SIGKILLed")
    assert ended.stdout.strip() == "ready"
    # The failure says why SIGTERM did nothing: here, the child ignored it.
    assert ended.state is not None, ended
    ignored = int(ended.state.split("SigIgn ")[1].split(";")[0], 16)
    assert ignored & 1 << (signal.SIGTERM - 1), ended.state
    assert f"what it was doing before the SIGKILL ---\n{ended.state}" in hung(ended, 3600)


@pytest.mark.cluster
@pytest.mark.parametrize("kubeconfig", [None], ids=["sandbox-kube"])
@pytest.mark.parametrize("faults", [Faults(never_ready=True)])
async def test_a_stuck_run_is_stopped_and_the_failure_shows_both_sides(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A run stuck in Wait Ready: SIGTERM makes it report (exit 143); the failure message
    holds its output and what the sandbox did and logged, kept in the test's tmp_path."""
    artifacts = tmp_path / "artifacts"
    argv, env = command(sandbox, artifacts)
    waiting, stop = anyio.Event(), anyio.Event()
    ended: Ended | None = None

    async def run() -> None:
        nonlocal ended
        on_output = stop_on("Wait Ready ... started", waiting)
        ended = await drive(argv, env, tmp_path, 3600, on_output, stop=stop)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await waiting.wait()  # the run waits for the Workspace...
        await sandbox.state.wait_recorded(NAME, "InferenceReady withheld (never_ready)")
        stop.set()  # ...which the sandbox withholds: stuck
    assert ended is not None
    assert ended.code == 143, ended.stdout + ended.stderr
    assert ended.stopped is not None and ended.stopped.startswith("SIGTERM: exit 143")
    assert (artifacts / "run.json").exists()  # it reported before it ended
    message = hung(ended, 3600, sandbox)
    assert "Wait Ready ... started" in message  # the run's side
    assert "InferenceReady withheld (never_ready)" in message  # the sandbox's timeline
    log = sandbox_log(sandbox.options)
    assert log.is_relative_to(tmp_path) and log.exists()
    assert f"--- sandbox log {log}" in message
    assert "pod present: reconciling workspaces" in log.read_text()  # info and up are kept
