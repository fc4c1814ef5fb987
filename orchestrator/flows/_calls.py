"""Calling the backend from a phase: one-line failure reasons, and calls side by side.

A phase that talks to KubeFoundry wants two things from every call: an answer
that ends the phase (a refused token, a body that is not what the API
promises) turned into a reason a person can act on, and independent questions
asked at once, so that a flow's round trips do not add up where it counts.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio

from ..clients import (
    ClientError,
    NotFound,
    ResponseFormatError,
    Unauthorized,
    failures_heard_by,
)
from ..engine import PhaseContext, PhaseFailed

T = TypeVar("T")


async def call_backend(call: Awaitable[T], *, not_found_fails: bool = False) -> T:
    """Await a backend call, turning answers that end the phase into one-line reasons.

    A 401/403 names the token settings to check, and a malformed body its own
    message, both as :class:`~orchestrator.engine.PhaseFailed`. A 404 is
    re-raised as :class:`~orchestrator.clients.NotFound` (often an answer: "it
    is gone") unless ``not_found_fails``, where it fails the phase with the route.
    """
    try:
        return await call
    except Unauthorized as exc:
        if exc.status == 403:
            # KubeFoundry refuses a missing or wrong token with 401 (KUBEFOUNDRY.md): a 403
            # is Kubernetes refusing what the backend asked of it, passed on, or a proxy.
            raise PhaseFailed(
                f"the backend answered 403 ({exc.message}): KubeFoundry refuses a token with "
                "401, so this is the cluster refusing the backend's request (check the RBAC "
                "of the identity it uses for Kubernetes) or a proxy in front of it"
            ) from None
        raise PhaseFailed(
            f"the backend refused the request ({exc.status} {exc.message}): "
            f"check the bearer token (KUBEFOUNDRY_TOKEN or token_file)"
        ) from None
    except ResponseFormatError as exc:
        raise PhaseFailed(str(exc)) from None
    except NotFound as exc:
        if not not_found_fails:
            raise
        raise PhaseFailed(f"{exc.method} {exc.path} answered 404: {exc.message}") from None


def peer_failures_named(
    run: Callable[[PhaseContext], Awaitable[None]],
) -> Callable[[PhaseContext], Awaitable[None]]:
    """A phase body whose client errors fail the phase with the error's own words.

    A :class:`~orchestrator.clients.ClientError` is something a peer did (an answer, a
    flake that outlasted its retries, bytes that break the protocol), and its message
    already names the route and what came back: that is the reason to report, not a
    traceback of our own code.
    """

    @functools.wraps(run)
    async def phase(ctx: PhaseContext) -> None:
        with failures_heard_by(_FailingRoutes(ctx)):
            try:
                await run(ctx)
            except ClientError as exc:
                raise _named(exc) from None
            except BaseExceptionGroup as group:
                only = group.exceptions[0] if len(group.exceptions) == 1 else None
                if isinstance(only, ClientError):
                    raise _named(only) from None
                raise

    return phase


class _FailingRoutes:
    """Tells the phase which request keeps failing, and with what (``PhaseContext.failing``).

    The clients report each flake a request meets and each success, with its route; a
    route that answers again is no longer failing, so another route's success (a
    Kubernetes read between two backend calls) leaves a failing route named.
    """

    def __init__(self, ctx: PhaseContext) -> None:
        self._ctx = ctx
        self._failing: dict[str, str] = {}

    def __call__(self, route: str, error: BaseException | None) -> None:
        if error is None and route not in self._failing:
            return  # the common case: a request that never failed
        self._failing.pop(route, None)
        if error is not None:
            self._failing[route] = kept_failing(route, error)
        self._ctx.failing(next(reversed(self._failing.values()), None))


def kept_failing(route: str, error: BaseException) -> str:
    """``GET /x kept failing: answered 503: ...``: the route once, then its last error."""
    text = str(error)
    if route and text.startswith(route):
        text = text[len(route) :].lstrip(" :")
    return f"{route or 'a request'} kept failing: {text or type(error).__name__}"


def _named(exc: ClientError) -> PhaseFailed:
    # A request that ran out of the phase's time is a timeout (RequestTimeout is a
    # TimeoutError; a flake retried until the deadline too): the engine then says how
    # to give the phase more time, and names what kept failing.
    timed_out = isinstance(exc, TimeoutError) or exc.retried_until_deadline
    return PhaseFailed(f"{type(exc).__name__}: {exc}", timed_out=timed_out)


class Outcome(Generic[T]):
    """What an awaitable gave: its value, or the exception it raised, kept until read."""

    def __init__(self) -> None:
        self._value: T
        self._error: Exception | None = None
        self._done = False

    async def capture(self, awaitable: Awaitable[T]) -> None:
        try:
            self._value = await awaitable
        except Exception as exc:
            self._error = exc
        self._done = True

    def result(self) -> T:
        """The value, or the awaitable's own exception raised here."""
        if self._error is not None:
            raise self._error
        if not self._done:
            raise RuntimeError("the awaitable has not finished")
        return self._value


async def side_by_side(*awaitables: Awaitable[Any]) -> list[Outcome[Any]]:
    """Await independent requests at once; each outcome raises its own error when read.

    One failing request neither cancels the others nor hides their answers: the
    caller reads each outcome and decides what a failure of that one means.
    """
    outcomes: list[Outcome[Any]] = [Outcome() for _ in awaitables]
    async with anyio.create_task_group() as tg:
        for outcome, awaitable in zip(outcomes, awaitables, strict=True):
            tg.start_soon(outcome.capture, awaitable)
    return outcomes
