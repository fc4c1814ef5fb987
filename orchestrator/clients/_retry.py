"""One retry policy for every client: retry flakes until the caller's deadline.

A flake (a refused or reset connection, a 502/503/504, a 429) says nothing about
the request; the only question is how long to keep trying. Counting attempts
answers it badly: a backend restart takes about seven seconds whatever the
backoff, so a fixed count gives up either too early (inside the restart) or, in
a phase with little time left, too late. So a call retries until the deadline
it runs under (the phase's, which anyio knows as the effective deadline of the
current cancel scope) minus a margin: the last failure is then the call's own,
named error, not a bare cancellation. Outside any deadline ``max_elapsed``
bounds it.

tenacity does the bookkeeping (waits, the final re-raise) so that the policy is
a value we can pass around and test, not a loop copied into each call.

A phase that runs out of time while a request keeps failing must say both: that it
ran out, and what the route kept answering. Its deadline can end it first (a wait
between tries, a request cut short by the deadline itself), and then nothing but
the timeout would be left to report. So every try's flake, and every success, is
told to whoever listens in the calling task (:func:`failures_heard_by`): the flows
pass it on to the phase, whose timeout reason then names the route's last error.
A context variable carries the listener, so a client never holds a phase, and the
flows of one run, each in its own task, hear only their own requests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ._errors import (
    ClientError,
    HTTPStatusError,
    LimitExceeded,
    ProtocolError,
    ServerError,
    is_retryable,
)

T = TypeVar("T")

#: ``(route, error)`` for a try that failed with a flake, ``(route, None)`` for a
#: request to ``route`` that succeeded.
FailureListener = Callable[[str, BaseException | None], None]
_listener: ContextVar[FailureListener | None] = ContextVar("failure_listener", default=None)


@contextmanager
def failures_heard_by(listener: FailureListener) -> Iterator[None]:
    """Within the block (and the tasks it starts), tell ``listener`` of every flake a
    request meets and of every request that succeeds, each with its route."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def heard(route: str, error: BaseException | None) -> None:
    """Tell the listener, if any, how a request to ``route`` went (None: it succeeded)."""
    listener = _listener.get()
    if listener is not None:
        listener(route, error)


def margin_before(deadline: float, now: float) -> float:
    """How long before ``deadline`` a call stops retrying: a tenth of what is left, at
    most one second, so that its own error (naming the route) is what ends the phase."""
    return min(1.0, max(0.0, deadline - now) / 10)


def bounded(seconds: float) -> float:
    """``seconds``, cut so that it ends a margin before the caller's deadline, if it has one.

    A request's own timeout then fires before the phase's cancellation, and the failure
    says which route was waited on and what had arrived.
    """
    deadline = anyio.current_effective_deadline()
    if math.isinf(deadline):
        return seconds
    now = anyio.current_time()
    return max(0.01, min(seconds, deadline - now - margin_before(deadline, now)))


@dataclass(frozen=True)
class RetryPolicy:
    """How long to try before a flake becomes a failure.

    Until the caller's deadline minus :func:`margin_before`, or ``max_elapsed`` seconds
    without one. ``attempts`` (None: no limit) exists for callers that must not repeat
    themselves, such as a request that is not idempotent.
    """

    initial: float = 0.2
    #: The longest wait between two tries: short enough that a backend back from a
    #: restart is noticed within a couple of seconds.
    maximum: float = 2.0
    max_elapsed: float = 120.0
    #: The longest ``Retry-After`` honoured: a server asking for minutes is not waited for.
    retry_after_cap: float = 10.0
    attempts: int | None = None
    #: The 5xx statuses worth another try. A route whose 500 is a real answer (the
    #: install route says "a helm step failed" that way) narrows this to gateway errors.
    server_statuses: frozenset[int] = frozenset(range(500, 600))
    #: Whether broken bytes (a body cut short, not JSON, of the wrong shape) are worth
    #: another try. Not for the backend, whose broken answer is a finding to report at
    #: once; yes for idempotent Kubernetes reads, where a middlebox mangling one answer
    #: must not fail the leak check of a run whose every phase passed.
    protocol_errors: bool = False
    #: With ``protocol_errors``, how many tries of one call may end past one of the
    #: clients' bounds (:class:`LimitExceeded`: endless interim answers or framing, a head
    #: or body over its size) before the call gives up with that error. A middlebox may do
    #: it to a few answers (the hostile proxy's runs pass through three), but a peer that
    #: does it to every try ends each in milliseconds: retried until the deadline, it was
    #: hammered for minutes before the same error. Four tries cost about a second of waits.
    tries_past_bound: int = 4

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, ServerError):
            return exc.status in self.server_statuses and not exc.refusal
        if isinstance(exc, ProtocolError):
            return self.protocol_errors
        return is_retryable(exc)

    def delay(self, attempt: int, exc: BaseException | None) -> float:
        """The wait after failed try number ``attempt``: exponential with equal jitter, or
        the server's ``Retry-After`` (capped) when it asked for longer."""
        # Equal jitter: half the exponential step is certain, half is random. Full jitter
        # can draw near-zero waits several times in a row and spend a burst of tries
        # inside one short outage.
        step = min(self.maximum, self.initial * 2.0 ** max(0, attempt - 1))
        jittered = step / 2 + random.uniform(0, step / 2)
        asked = _asked_pause(exc)
        if asked:
            return max(jittered, min(asked, self.retry_after_cap))
        return jittered

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException, float], None] | None = None,
        *,
        failed: BaseException | None = None,
        route: str = "",
    ) -> T:
        """Run ``fn`` until it succeeds, fails for good, or its time is up.

        The last exception is re-raised unchanged, so callers see the server's
        own answer rather than a wrapper; when the caller's deadline is what ended the
        retries, a :class:`ClientError` says so (``retried_until_deadline``), as it says
        when it is the answer to a retry (``after_retry``). ``failed``
        is the failure of a first try the caller made on its own (a lean attempt outside
        this machinery): it counts as try number one, so the wait before the next try,
        the ``Retry-After`` honoured, ``attempts`` and the deadline are what they would
        have been had ``fn`` failed so. Each try's flake and the success are told to the
        listener of :func:`failures_heard_by` under ``route``, except a timeout at the
        very end, which the deadline cut short: the route's own last answer is the news.
        """
        tried = fn if failed is None else _replaying(failed, fn)
        now = anyio.current_time()
        deadline = anyio.current_effective_deadline()
        give_up_at = now + self.max_elapsed
        deadline_binds = False
        if not math.isinf(deadline):
            by_deadline = deadline - margin_before(deadline, now)
            deadline_binds = by_deadline < give_up_at
            give_up_at = min(give_up_at, by_deadline)
        out_of_time = False
        tries = 0
        past_bound = 0

        async def attempt() -> T:
            nonlocal tries, past_bound
            tries += 1
            try:
                value = await tried()
            except Exception as exc:
                if isinstance(exc, LimitExceeded):
                    past_bound += 1
                # A timeout as the time is up (within the last step ``stop`` would not
                # wait out either) is the deadline's doing, not the route's.
                cut_short = isinstance(exc, TimeoutError) and _left(give_up_at) <= 0.05
                if self.retryable(exc) and not cut_short:
                    heard(route, exc)
                raise
            heard(route, None)
            return value

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return min(self.delay(state.attempt_number, exc), _left(give_up_at))

        def stop(state: RetryCallState) -> bool:
            if self.attempts is not None and state.attempt_number >= self.attempts:
                return True
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, LimitExceeded) and past_bound >= self.tries_past_bound:
                return True
            wanted = self.delay(state.attempt_number, exc)
            # Not worth another try if even the wait would not end before the time is up,
            # or if the server asked for a pause longer than what is left.
            asked = _asked_pause(exc)
            asked_too_long = asked is not None and min(asked, self.retry_after_cap) > _left(
                give_up_at
            )
            if asked_too_long or _left(give_up_at) <= min(wanted, 0.05):
                nonlocal out_of_time
                out_of_time = deadline_binds
                return True
            return False

        def before_sleep(state: RetryCallState) -> None:
            if on_retry and state.outcome is not None:
                exc = state.outcome.exception()
                if exc is not None:
                    on_retry(exc, state.next_action.sleep if state.next_action else 0.0)

        retrying = AsyncRetrying(
            retry=retry_if_exception(self.retryable),
            wait=wait,
            stop=stop,
            reraise=True,
            before_sleep=before_sleep,
            sleep=anyio.sleep,
        )
        try:
            return await retrying(attempt)
        except ClientError as exc:
            if out_of_time:
                exc.retried_until_deadline = True
            if tries > 1:
                exc.after_retry = True
            raise


def _replaying(failed: BaseException, fn: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    """``fn``, whose first call raises ``failed`` (a try already made) instead of running."""
    pending = [failed]

    async def attempt() -> T:
        if pending:
            raise pending.pop()
        return await fn()

    return attempt


def _asked_pause(exc: BaseException | None) -> float | None:
    """The pause the server asked for (``Retry-After`` on a 429 or a 503), if any."""
    return exc.retry_after if isinstance(exc, HTTPStatusError) else None


def _left(give_up_at: float) -> float:
    return max(0.0, give_up_at - anyio.current_time())


NO_RETRY = RetryPolicy(attempts=1)
#: Idempotent reads (GET, LIST) of the Kubernetes API: the same policy, named for readers.
READS = RetryPolicy(protocol_errors=True)
GATEWAY_ERRORS = frozenset({502, 503, 504})
