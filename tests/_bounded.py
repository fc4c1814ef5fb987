"""Fixture teardowns with a deadline of their own.

A fixture's teardown runs after the test, where pytest-timeout's alarm may already be
spent or may land inside a cleanup callback that swallows it; a hung teardown then
hangs the whole session with nothing on the screen. So every sandbox a fixture starts
is stopped inside a cancel scope with its own deadline: on expiry the stop is cancelled
(the sandbox kills its model children at once on cancellation) and the teardown fails
with a message that names what hung.

The sandbox runs in the test's process, so its log would otherwise go to pytest's log
capture at the root logger's level (warnings only) and be lost with the worker: every
sandbox started here writes its log, debug included, to ``sandbox.log`` in its workdir
(the test's ``tmp_path``), where a failing run's harness reads its tail.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio

from orchestrator.sandbox import Sandbox, SandboxOptions

START_SECONDS = 120.0
STOP_SECONDS = 60.0
#: The file in a sandbox's workdir that keeps its log.
SANDBOX_LOG = "sandbox.log"
_SANDBOX_LOGGER = "orchestrator.sandbox"


def sandbox_log(options: SandboxOptions) -> Path:
    """Where the sandbox started with ``options`` keeps its log."""
    return options.workdir / SANDBOX_LOG


@contextmanager
def keeping_log(path: Path) -> Iterator[Path]:
    """Write the sandbox's log records (debug and up) to ``path`` while in the block.

    The logger is process-wide: two sandboxes alive at once in one test write into each
    other's files too, which is more, not less, to read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logger = logging.getLogger(_SANDBOX_LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


@asynccontextmanager
async def running_sandbox(
    options: SandboxOptions, *, start: float = START_SECONDS, stop: float = STOP_SECONDS
) -> AsyncIterator[Sandbox]:
    """``async with running_sandbox(options) as sb``: start and stop, each with a deadline."""
    sandbox = Sandbox(options)
    with keeping_log(sandbox_log(options)):
        with anyio.fail_after(start):
            await sandbox.__aenter__()  # cleans up after itself when it fails
        try:
            yield sandbox
        finally:
            # Shielded: a test cancelled by its own deadline still stops what it started.
            with anyio.CancelScope(shield=True), anyio.move_on_after(stop) as scope:
                await sandbox.__aexit__(None, None, None)
            if scope.cancelled_caught:
                raise TimeoutError(
                    f"the sandbox did not stop within {stop:.0f} s (teardown cut short)"
                )
