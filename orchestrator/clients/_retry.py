"""One retry policy for every client: exponential backoff with equal jitter.

tenacity does the bookkeeping (attempts, waits, the final re-raise) so that the
policy is a value we can pass around and test, not a loop copied into each call.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from ._errors import ServerError, TooManyRequests, is_retryable

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before a flake becomes a failure.

    ``attempts`` counts the first try. ``max_elapsed`` bounds the whole retry
    loop so that a backend that keeps answering 503 cannot eat a phase's budget
    by itself; the phase deadline bounds it further from outside.
    """

    attempts: int = 6
    initial: float = 0.2
    maximum: float = 5.0
    max_elapsed: float = 60.0
    #: The 5xx statuses worth another try. A route whose 500 is a real answer (the
    #: install route says "a helm step failed" that way) narrows this to gateway errors.
    server_statuses: frozenset[int] = frozenset(range(500, 600))

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, ServerError):
            return exc.status in self.server_statuses
        return is_retryable(exc)

    def _wait(self, state: RetryCallState) -> float:
        # Equal jitter: half the exponential step is certain, half is random. Full jitter
        # can draw near-zero waits several times in a row and spend every attempt inside
        # one short outage (a backend restarting for a second); this way the attempts are
        # guaranteed to span at least half of the schedule.
        step = min(self.maximum, self.initial * 2.0 ** max(0, state.attempt_number - 1))
        jittered = step / 2 + random.uniform(0, step / 2)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TooManyRequests) and exc.retry_after:
            return max(jittered, min(exc.retry_after, self.maximum))
        return jittered

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds, fails for good, or the policy gives up.

        The last exception is re-raised unchanged, so callers see the server's
        own answer rather than a wrapper.
        """

        def before_sleep(state: RetryCallState) -> None:
            if on_retry and state.outcome is not None:
                exc = state.outcome.exception()
                if exc is not None:
                    on_retry(exc, state.next_action.sleep if state.next_action else 0.0)

        retrying = AsyncRetrying(
            retry=retry_if_exception(self.retryable),
            wait=self._wait,
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_elapsed),
            reraise=True,
            before_sleep=before_sleep,
            sleep=_sleep,
        )
        return await retrying(fn)


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


NO_RETRY = RetryPolicy(attempts=1)
GATEWAY_ERRORS = frozenset({502, 503, 504})
