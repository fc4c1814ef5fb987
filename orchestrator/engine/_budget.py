"""The run's time budget.

A single end-to-end run must finish in bounded time, and a run that blows its budget
must still clean up and report. So the main path only ever gets ``remaining - reserve``
and the reserve is kept for diagnose and cleanup, with floors so that even a run that
overshot (a phase ignoring cancellation) still gets a real chance to delete what it made.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

DIAGNOSE_CAP = 30.0
DIAGNOSE_FLOOR = 5.0
CLEANUP_FLOOR = 10.0


class Budget:
    """Total seconds for a run, of which ``reserve`` is kept for diagnose and cleanup."""

    def __init__(
        self,
        total: float,
        reserve: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        diagnose_cap: float = DIAGNOSE_CAP,
        diagnose_floor: float = DIAGNOSE_FLOOR,
        cleanup_floor: float = CLEANUP_FLOOR,
        cleanup_cap: float | None = None,
    ) -> None:
        _check_number("total", total)
        _check_number("reserve", reserve)
        if total <= 0:
            raise ValueError(f"budget total must be > 0 seconds, got {total}")
        if reserve < 0:
            raise ValueError(f"budget reserve must be >= 0 seconds, got {reserve}")
        if reserve >= total:
            raise ValueError(
                f"budget reserve ({reserve} s) must be less than the total ({total} s), "
                "or no phase would get any time"
            )
        for name, value in (
            ("diagnose_cap", diagnose_cap),
            ("diagnose_floor", diagnose_floor),
            ("cleanup_floor", cleanup_floor),
        ):
            _check_number(name, value)
            if value < 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        self.total = float(total)
        self.reserve = float(reserve)
        self.clock = clock
        self.diagnose_cap = float(diagnose_cap)
        self.diagnose_floor = float(diagnose_floor)
        self.cleanup_floor = float(cleanup_floor)
        if cleanup_cap is not None:
            _check_number("cleanup_cap", cleanup_cap)
            if cleanup_cap <= 0:
                raise ValueError(f"cleanup_cap must be > 0 seconds, got {cleanup_cap}")
        self.cleanup_cap = None if cleanup_cap is None else float(cleanup_cap)
        self._started: float | None = None

    def start(self) -> None:
        """Start counting; a budget measures one run, so it starts only once."""
        if self._started is not None:
            raise RuntimeError("budget already started")
        self._started = self.clock()

    @property
    def started(self) -> bool:
        return self._started is not None

    @property
    def elapsed(self) -> float:
        if self._started is None:
            return 0.0
        return max(0.0, self.clock() - self._started)

    @property
    def remaining(self) -> float:
        """Seconds left of the whole budget, reserve included (never negative)."""
        return max(0.0, self.total - self.elapsed)

    @property
    def hard_end(self) -> float:
        """The absolute end of the budget on ``clock``."""
        return self._require_started() + self.total

    def deadline_for(self, timeout: float) -> tuple[float, float]:
        """``(absolute_deadline, allowed_seconds)`` for a main-path phase.

        ``allowed = min(timeout, remaining - reserve)``, never negative: zero means the
        budget ran out and the phase must fail without running.
        """
        self._require_started()
        allowed = max(0.0, min(float(timeout), self.remaining - self.reserve))
        return self.clock() + allowed, allowed

    def reserve_deadline(self) -> tuple[float, float]:
        """The window for diagnose and cleanup together: up to the hard end of the
        budget, but never less than the cleanup floor."""
        now = self.clock()
        allowed = max(self.hard_end - now, self.cleanup_floor)
        return now + allowed, allowed

    def diagnose_deadline(self) -> tuple[float, float]:
        """Diagnose gets ``min(cap, reserve / 2)`` and leaves the cleanup floor alone,
        but always at least its own floor: evidence is worth a few seconds."""
        now = self.clock()
        left = self.hard_end - now - self.cleanup_floor
        allowed = max(self.diagnose_floor, min(self.diagnose_cap, self.reserve / 2, left))
        return now + allowed, allowed

    def cleanup_deadline(self) -> tuple[float, float]:
        """Cleanup gets the rest of the budget, at most ``cleanup_cap``, and at least its floor.

        The cap matters when an early phase fails with most of the budget left: a
        cleanup stuck on a finalizer should fail in a time like the Delete phase's, not
        hold a CI job for the rest of a ten-minute budget.
        """
        now = self.clock()
        left = self.hard_end - now
        if self.cleanup_cap is not None:
            left = min(left, self.cleanup_cap)
        allowed = max(left, self.cleanup_floor)
        return now + allowed, allowed

    def _require_started(self) -> float:
        if self._started is None:
            raise RuntimeError("budget not started: call start() first")
        return self._started


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"budget {name} must be a number of seconds, got {value!r}")
