"""The run's state machine.

The machine holds no timing and runs no phase: the runner runs each coroutine under its
deadline outside the machine and then fires a fast trigger with the outcome. That keeps
the machine a pure, checkable description of the allowed paths (an invalid trigger
raises ``MachineError``) while avoiding two traits of ``transitions``' AsyncMachine: it
swallows ``CancelledError`` inside a trigger, and it cancels a running callback when
another task triggers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transitions.extensions.asyncio import AsyncMachine

if TYPE_CHECKING:
    from ._phase import Flow

PENDING = "pending"
DIAGNOSE = "diagnose"
CLEANUP = "cleanup"
PASSED = "passed"
FAILED = "failed"
INTERRUPTED = "interrupted"
FINAL_STATES = (PASSED, FAILED, INTERRUPTED)


class RunModel:
    """The machine's model: the current state plus the facts ``finish`` decides on."""

    state: str

    def __init__(self) -> None:
        self.failed = False
        self.interrupted = False

    def was_interrupted(self, event: Any) -> bool:
        return self.interrupted

    def has_failed(self, event: Any) -> bool:
        return self.failed


class RunMachine:
    """A machine for one run of a flow whose main path is ``phase_names``."""

    def __init__(self, phase_names: Sequence[str]) -> None:
        names = list(phase_names)
        if not names:
            raise ValueError("a flow needs at least one phase")
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        self.phase_names = names
        self.model = RunModel()
        states = [PENDING, *names, DIAGNOSE, CLEANUP, *FINAL_STATES]
        self._machine = AsyncMachine(
            model=self.model,
            states=states,
            initial=PENDING,
            auto_transitions=False,
            queued=True,
            send_event=True,
        )
        add = self._machine.add_transition
        add("start", PENDING, names[0])
        for current, following in zip(names, [*names[1:], CLEANUP], strict=True):
            add("advance", current, following)
        add("fail", [*names], DIAGNOSE)
        # An interrupted run skips diagnose: the operator asked to stop, not to debug.
        add("interrupt", [PENDING, *names, DIAGNOSE], CLEANUP)
        add("diagnosed", DIAGNOSE, CLEANUP)
        add("finish", CLEANUP, INTERRUPTED, conditions="was_interrupted")
        add("finish", CLEANUP, FAILED, conditions="has_failed")
        add("finish", CLEANUP, PASSED)

    @property
    def state(self) -> str:
        return self.model.state

    async def fire(self, trigger: str) -> str:
        """Fire ``trigger`` and return the new state.

        Raises ``transitions.MachineError`` for a trigger the current state does not
        accept, and RuntimeError if the machine declined it: either is an engine bug,
        and must never pass silently.
        """
        accepted = await self.model.trigger(trigger)  # type: ignore[attr-defined]
        if accepted is not True:
            raise RuntimeError(f"state machine declined {trigger!r} in state {self.state!r}")
        return self.state

    def transitions(self) -> list[tuple[str, str, str, list[str]]]:
        """``(source, trigger, dest, conditions)`` for every transition, in definition order."""
        rows: list[tuple[str, str, str, list[str]]] = []
        for event_name, event in self._machine.events.items():
            for source, items in event.transitions.items():
                for item in items:
                    conditions = [
                        str(c.func) if c.target else f"not {c.func}" for c in item.conditions
                    ]
                    # Every transition here names its destination (no internal ones).
                    rows.append((source, event_name, str(item.dest), conditions))
        return rows


def machine_mermaid(flow: Flow) -> str:
    """A Mermaid ``stateDiagram-v2`` of the machine that would run ``flow``.

    Generated from the machine's own transition table so the picture cannot drift from
    the behaviour; phases are labelled with their titles.
    """
    phases = flow.phases()
    machine = RunMachine([phase.name for phase in phases])
    ids: dict[str, str] = {name: name for name in (PENDING, DIAGNOSE, CLEANUP, *FINAL_STATES)}
    labels: dict[str, str] = {}
    for index, phase in enumerate(phases, start=1):
        ids[phase.name] = f"p{index}_{re.sub(r'[^A-Za-z0-9_]', '_', phase.name)}"
        labels[phase.name] = phase.title
    lines = ["stateDiagram-v2"]
    for phase in phases:
        title = labels[phase.name].replace('"', "'")
        lines.append(f'    state "{title}" as {ids[phase.name]}')
    lines.append(f"    [*] --> {PENDING}")
    for source, trigger, dest, conditions in machine.transitions():
        label = trigger + (f" [{', '.join(conditions)}]" if conditions else "")
        lines.append(f"    {ids[source]} --> {ids[dest]}: {label}")
    for final in FINAL_STATES:
        lines.append(f"    {final} --> [*]")
    return "\n".join(lines) + "\n"
