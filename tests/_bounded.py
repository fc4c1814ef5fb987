"""Fixture teardowns with a deadline of their own.

A fixture's teardown runs after the test, where pytest-timeout's alarm may already be
spent or may land inside a cleanup callback that swallows it; a hung teardown then
hangs the whole session with nothing on the screen. So every sandbox a fixture starts
is stopped inside a cancel scope with its own deadline: on expiry the stop is cancelled
(the sandbox kills its model children at once on cancellation) and the teardown fails
with a message that names what hung.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from orchestrator.sandbox import Sandbox, SandboxOptions

START_SECONDS = 120.0
STOP_SECONDS = 60.0


@asynccontextmanager
async def running_sandbox(
    options: SandboxOptions, *, start: float = START_SECONDS, stop: float = STOP_SECONDS
) -> AsyncIterator[Sandbox]:
    """``async with running_sandbox(options) as sb``: start and stop, each with a deadline."""
    sandbox = Sandbox(options)
    with anyio.fail_after(start):
        await sandbox.__aenter__()  # cleans up after itself when it fails
    try:
        yield sandbox
    finally:
        # Shielded: a test cancelled by its own deadline still stops what it started.
        with anyio.CancelScope(shield=True), anyio.move_on_after(stop) as scope:
            await sandbox.__aexit__(None, None, None)
        if scope.cancelled_caught:
            raise TimeoutError(f"the sandbox did not stop within {stop:.0f} s (teardown cut short)")
