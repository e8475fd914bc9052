"""Budget schedules: parsing, validation and lookup over time (looping or not)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from pls_perception.operating_points.budget_schedule import (BudgetSchedule, BudgetStep,
                                                             format_schedule, parse_schedule)


def test_parse_schedule() -> None:
    assert parse_schedule('0:40, 10:15,20:60.5') == (
        BudgetStep(0.0, 40.0), BudgetStep(10.0, 15.0), BudgetStep(20.0, 60.5))


@pytest.mark.parametrize('text', ['', ' ', '0', '0:40:1', 'a:40', '0:x', '5:40', '0:40,0:30',
                                  '0:40,10:20,5:30', '0:0', '0:-3', '0:nan', '0:inf', '-1:40',
                                  'nan:40'])
def test_parse_schedule_rejects(text: str) -> None:
    with pytest.raises(ValueError, match='budget schedule'):
        parse_schedule(text)


def test_budget_at_without_loop() -> None:
    s = BudgetSchedule('0:40,10:15,20:60')
    assert [s.budget_at(t) for t in (0.0, 9.99, 10.0, 19.0, 20.0, 1000.0)] == [
        40.0, 40.0, 15.0, 15.0, 60.0, 60.0]
    with pytest.raises(ValueError, match='elapsed'):
        s.budget_at(-1.0)


def test_budget_at_loops_with_default_period() -> None:
    s = BudgetSchedule('0:40,10:15,20:60', loop=True)
    assert s.period_s == 30.0
    assert [s.budget_at(t) for t in (25.0, 30.0, 41.0, 55.0)] == [60.0, 40.0, 15.0, 60.0]


def test_budget_at_loops_with_explicit_period() -> None:
    s = BudgetSchedule('0:40,10:15', loop=True, period_s=12.0)
    assert [s.budget_at(t) for t in (11.0, 12.5, 22.5)] == [15.0, 40.0, 15.0]
    with pytest.raises(ValueError, match='period'):
        BudgetSchedule('0:40,10:15', loop=True, period_s=10.0)


def test_single_step_is_constant_even_when_looping() -> None:
    s = BudgetSchedule('0:25', loop=True)
    assert math.isinf(s.period_s) and s.duration_s == 0.0
    assert s.budget_at(1e6) == 25.0


@given(st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 10_000)), min_size=1,
                max_size=8))
def test_format_parse_roundtrip(items: list[tuple[int, int]]) -> None:
    starts = [0]
    for gap, _ in items[1:]:
        starts.append(starts[-1] + gap)
    steps = tuple(BudgetStep(float(t), b / 10) for t, (_, b) in zip(starts, items))
    assert parse_schedule(format_schedule(steps)) == steps
    s = BudgetSchedule(steps)
    for step in steps:
        assert s.budget_at(step.start_s) == step.budget_ms
