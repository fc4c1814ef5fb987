"""Shared machinery in tasks of its own, so that its failure never cancels a runner.

Several runners share machinery: a watch hub whose streams feed every flow's waits, a
gate that installs a provider once. Such a thing usually owns a task group, and a task
group cancels the scope around it when one of its tasks fails. Entered around the
runners' task group, a single broken stream would then cancel every runner: each run
would end "interrupted" although no signal came, and a cancelled cleanup deletes
nothing.

:class:`SharedServices` enters each piece in a host task of its own and waits there
until the services close. A failure, on entering or later, is caught in that host task
and handed to the listeners as a one-line reason (the runners' :meth:`Runner.fail`): it
becomes a named failure of the flows that depend on it, and their cleanup still runs in
their own scopes.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

T = TypeVar("T")


class SharedServices:
    """Hosts async context managers (a watch hub, ...) that several runners depend on.

    ::

        async with SharedServices() as shared:
            hub = await shared.start("the watch hub", WatchHub(kube))
            shared.on_failure(lambda reason: [r.fail(reason) for r in runners])
            async with anyio.create_task_group() as tg:
                for runner in runners:
                    tg.start_soon(runner.run)
    """

    def __init__(self) -> None:
        self._tg: TaskGroup | None = None
        self._closing = anyio.Event()
        self._listeners: list[Callable[[str], object]] = []
        #: Every failure so far, as reported to the listeners.
        self.failures: list[str] = []
        #: The traceback of each failure, for a log or a diagnostics file.
        self.tracebacks: list[str] = []

    async def __aenter__(self) -> SharedServices:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._tg is not None
        self._closing.set()
        try:
            return await self._tg.__aexit__(*exc)
        except BaseExceptionGroup as group:
            # The body's own exception, as the caller raised it, not wrapped in a group.
            if len(group.exceptions) == 1 and group.exceptions[0] is exc[1]:
                raise group.exceptions[0] from None
            raise

    def on_failure(self, listener: Callable[[str], object]) -> None:
        """Call ``listener(reason)`` for each failure; those already seen at once."""
        self._listeners.append(listener)
        for reason in self.failures:
            self._call(listener, reason)

    async def start(self, name: str, service: AbstractAsyncContextManager[T]) -> T:
        """Enter ``service`` in a host task of its own and return what it yields.

        A failure while entering is raised here, to the caller (nothing depends on the
        service yet); a failure after that goes to the listeners.
        """
        if self._tg is None:
            raise RuntimeError("SharedServices used outside 'async with'")
        value: T = await self._tg.start(self._host, name, service)
        return value

    async def _host(
        self,
        name: str,
        service: AbstractAsyncContextManager[T],
        *,
        task_status: TaskStatus[T],
    ) -> None:
        started = False
        try:
            async with service as value:
                task_status.started(value)
                started = True
                await self._closing.wait()
        except Exception as exc:
            if not started:
                raise
            self._failed(name, exc)

    def _failed(self, name: str, exc: BaseException) -> None:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        text = str(exc).strip().split("\n", 1)[0]
        reason = f"{name} failed: {type(exc).__name__}" + (f": {text}" if text else "")
        self.failures.append(reason)
        self.tracebacks.append("".join(traceback.format_exception(exc)))
        for listener in list(self._listeners):
            self._call(listener, reason)

    @staticmethod
    def _call(listener: Callable[[str], object], reason: str) -> None:
        try:
            listener(reason)
        except Exception:  # a listener's trouble must not hide the failure from the others
            traceback.print_exc()
