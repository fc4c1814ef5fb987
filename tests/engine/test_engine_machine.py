"""The state machine: the allowed paths, and nothing else."""

from __future__ import annotations

import pytest
from engine_fakes import FakeFlow
from transitions import MachineError

from orchestrator.engine import Phase, RunMachine, machine_mermaid


async def _noop(ctx: object) -> None:
    return None


@pytest.mark.anyio
async def test_happy_path_walks_every_phase_then_cleanup_then_passed() -> None:
    machine = RunMachine(["install", "deploy", "infer"])
    assert machine.state == "pending"
    seen = [await machine.fire("start")]
    seen += [await machine.fire("advance") for _ in range(3)]
    seen.append(await machine.fire("finish"))
    assert seen == ["install", "deploy", "infer", "cleanup", "passed"]


@pytest.mark.anyio
async def test_failure_goes_through_diagnose_and_cleanup_to_failed() -> None:
    machine = RunMachine(["install", "deploy"])
    await machine.fire("start")
    await machine.fire("advance")
    machine.model.failed = True
    assert await machine.fire("fail") == "diagnose"
    assert await machine.fire("diagnosed") == "cleanup"
    assert await machine.fire("finish") == "failed"


@pytest.mark.anyio
@pytest.mark.parametrize("steps", [[], ["start"], ["start", "advance"]])
async def test_interrupt_skips_diagnose_and_ends_interrupted(steps: list[str]) -> None:
    machine = RunMachine(["install", "deploy"])
    for step in steps:
        await machine.fire(step)
    machine.model.interrupted = True
    machine.model.failed = True  # an interrupt outranks a failure
    assert await machine.fire("interrupt") == "cleanup"
    assert await machine.fire("finish") == "interrupted"


@pytest.mark.anyio
async def test_interrupt_during_diagnose_goes_to_cleanup() -> None:
    machine = RunMachine(["install"])
    await machine.fire("start")
    await machine.fire("fail")
    assert await machine.fire("interrupt") == "cleanup"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("steps", "invalid"),
    [
        ([], "advance"),
        ([], "finish"),
        ([], "fail"),
        ([], "diagnosed"),
        (["start"], "start"),
        (["start"], "finish"),
        (["start"], "diagnosed"),
        (["start", "advance"], "fail"),  # cleanup cannot fail into diagnose
        (["start", "advance"], "interrupt"),  # nor be interrupted by the machine
        (["start", "advance", "finish"], "start"),
        (["start", "advance", "finish"], "advance"),
    ],
)
async def test_the_machine_refuses_invalid_triggers(steps: list[str], invalid: str) -> None:
    machine = RunMachine(["install"])
    for step in steps:
        await machine.fire(step)
    before = machine.state
    with pytest.raises(MachineError):
        await machine.fire(invalid)
    assert machine.state == before


@pytest.mark.anyio
async def test_a_declined_trigger_is_an_error_not_a_silent_false() -> None:
    machine = RunMachine(["install"])

    async def declined(name: str) -> bool:
        return False

    machine.model.trigger = declined  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="declined 'start'"):
        await machine.fire("start")


def test_phase_names_must_be_unique_present_and_not_reserved() -> None:
    with pytest.raises(ValueError, match="unique"):
        RunMachine(["a", "a"])
    with pytest.raises(ValueError, match="at least one phase"):
        RunMachine([])
    with pytest.raises(ValueError, match="reserved"):
        Phase("cleanup", "Cleanup", 5, _noop)
    with pytest.raises(ValueError, match="timeout"):
        Phase("a", "A", 0, _noop)
    with pytest.raises(ValueError, match="non-empty name"):
        Phase(" ", "A", 1, _noop)


def test_mermaid_diagram_shows_every_transition() -> None:
    flow = FakeFlow(("install", "pass"), ("wait-ready", "pass"))
    text = machine_mermaid(flow)
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "stateDiagram-v2"
    for expected in [
        'state "Install" as p1_install',
        'state "Wait Ready" as p2_wait_ready',
        "[*] --> pending",
        "pending --> p1_install: start",
        "p1_install --> p2_wait_ready: advance",
        "p2_wait_ready --> cleanup: advance",
        "p1_install --> diagnose: fail",
        "p2_wait_ready --> cleanup: interrupt",
        "diagnose --> cleanup: diagnosed",
        "cleanup --> interrupted: finish [was_interrupted]",
        "cleanup --> failed: finish [has_failed]",
        "cleanup --> passed: finish",
        "passed --> [*]",
    ]:
        assert expected in lines
