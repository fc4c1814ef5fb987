"""The budget: phase deadlines, the reserve, and the floors for diagnose and cleanup."""

from __future__ import annotations

import math

import pytest
from engine_fakes import FakeClock

from orchestrator.engine import Budget


@pytest.mark.parametrize(
    ("total", "reserve", "fragment"),
    [
        (0, 0, "total must be > 0"),
        (-5, 0, "total must be > 0"),
        (10, -1, "reserve must be >= 0"),
        (10, 10, "less than the total"),
        (10, 11, "less than the total"),
        (math.nan, 0, "must be a number"),
        (True, 0, "must be a number"),
        ("10", 0, "must be a number"),
    ],
)
def test_invalid_arguments_are_refused_with_a_clear_message(
    total: object, reserve: object, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        Budget(total, reserve)  # type: ignore[arg-type]


def test_negative_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="cleanup_floor"):
        Budget(10, 1, cleanup_floor=-1)


def test_deadlines_need_a_started_budget_and_it_starts_once() -> None:
    budget = Budget(10, 1, FakeClock())
    with pytest.raises(RuntimeError, match="not started"):
        budget.deadline_for(5)
    budget.start()
    with pytest.raises(RuntimeError, match="already started"):
        budget.start()


def test_elapsed_and_remaining_follow_the_clock_and_never_go_negative() -> None:
    clock = FakeClock()
    budget = Budget(10, 2, clock)
    assert budget.elapsed == 0 and budget.remaining == 10
    budget.start()
    clock.advance(4)
    assert budget.elapsed == pytest.approx(4)
    assert budget.remaining == pytest.approx(6)
    clock.advance(100)
    assert budget.remaining == 0


def test_a_phase_gets_its_own_timeout_when_the_budget_allows() -> None:
    clock = FakeClock()
    budget = Budget(100, 10, clock)
    budget.start()
    deadline, allowed = budget.deadline_for(30)
    assert allowed == 30
    assert deadline == pytest.approx(clock.now + 30)


def test_the_budget_caps_a_phase_so_the_reserve_is_kept() -> None:
    clock = FakeClock()
    budget = Budget(100, 10, clock)
    budget.start()
    clock.advance(70)
    deadline, allowed = budget.deadline_for(300)
    assert allowed == pytest.approx(20)  # 30 left, 10 of them reserved
    assert deadline == pytest.approx(budget.hard_end - 10)


def test_an_exhausted_budget_allows_zero_never_negative() -> None:
    clock = FakeClock()
    budget = Budget(100, 10, clock)
    budget.start()
    clock.advance(95)
    assert budget.deadline_for(30)[1] == 0
    clock.advance(50)
    assert budget.deadline_for(30)[1] == 0


def test_diagnose_gets_at_most_half_the_reserve_and_the_cap() -> None:
    clock = FakeClock()
    budget = Budget(1000, 40, clock, diagnose_cap=30, cleanup_floor=10)
    budget.start()
    assert budget.diagnose_deadline()[1] == pytest.approx(20)  # half of 40
    big = Budget(1000, 200, clock, diagnose_cap=30)
    big.start()
    assert big.diagnose_deadline()[1] == pytest.approx(30)  # the cap


def test_diagnose_leaves_the_cleanup_floor_but_keeps_its_own_floor() -> None:
    clock = FakeClock()
    budget = Budget(100, 40, clock, diagnose_floor=5, cleanup_floor=10)
    budget.start()
    clock.advance(75)  # 25 s left: diagnose may use 15 of them
    assert budget.diagnose_deadline()[1] == pytest.approx(15)
    clock.advance(500)  # far past the end
    deadline, allowed = budget.diagnose_deadline()
    assert allowed == pytest.approx(5)
    assert deadline == pytest.approx(clock.now + 5)


def test_cleanup_gets_the_rest_of_the_budget() -> None:
    clock = FakeClock()
    budget = Budget(100, 10, clock, cleanup_floor=10)
    budget.start()
    clock.advance(40)
    deadline, allowed = budget.cleanup_deadline()
    assert allowed == pytest.approx(60)
    assert deadline == pytest.approx(budget.hard_end)


def test_cleanup_gets_its_floor_even_when_the_run_overshot() -> None:
    clock = FakeClock()
    budget = Budget(100, 10, clock, cleanup_floor=12)
    budget.start()
    clock.advance(250)
    deadline, allowed = budget.cleanup_deadline()
    assert allowed == pytest.approx(12)
    assert deadline == pytest.approx(clock.now + 12)
    assert budget.reserve_deadline() == (deadline, allowed)


def test_cleanup_cap_bounds_cleanup_after_an_early_failure() -> None:
    clock = FakeClock()
    budget = Budget(600, 60, clock, cleanup_floor=10, cleanup_cap=120)
    budget.start()
    clock.advance(5)
    assert budget.cleanup_deadline()[1] == pytest.approx(120)
    clock.advance(530)  # 65 s left: the cap no longer binds
    assert budget.cleanup_deadline()[1] == pytest.approx(65)
    clock.advance(100)  # overshot: the floor still holds
    assert budget.cleanup_deadline()[1] == pytest.approx(10)
    with pytest.raises(ValueError, match="cleanup_cap must be > 0"):
        Budget(600, 60, clock, cleanup_cap=0)
