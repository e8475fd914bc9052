"""Latency-budget schedules: a piecewise-constant budget over time, parsed from a short string.

The budget_schedule node and the demo drive ``/latency_budget`` from the same schedule so the
adaptation is visible and reproducible; this module keeps that logic ROS-free and testable.

Syntax: ``'0:40,10:15,20:60'`` means 40 ms from t = 0 s, 15 ms from t = 10 s, 60 ms from t = 20 s.
Start times are seconds (non-negative, strictly increasing, the first one 0); budgets are positive
milliseconds. With ``loop`` the schedule repeats with period ``period_s``; when that is not given
the last step lasts as long as the step before it (a single step is simply constant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetStep:
    """From ``start_s`` on (until the next step), the budget is ``budget_ms``."""

    start_s: float
    budget_ms: float


def parse_schedule(text: str) -> tuple[BudgetStep, ...]:
    """Parse ``'t0:b0,t1:b1,...'`` (seconds:milliseconds) into validated steps."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f'budget schedule must be a non-empty "seconds:ms,..." string, got {text!r}')
    steps = []
    for item in text.split(','):
        parts = item.strip().split(':')
        if len(parts) != 2:
            raise ValueError(f'budget schedule item must be "seconds:ms", got {item!r}')
        try:
            start_s, budget_ms = float(parts[0]), float(parts[1])
        except ValueError as e:
            raise ValueError(f'budget schedule item must hold two numbers, got {item!r}') from e
        if not math.isfinite(start_s) or start_s < 0.0:
            raise ValueError(f'budget schedule start time must be finite and >= 0, got {item!r}')
        if not math.isfinite(budget_ms) or budget_ms <= 0.0:
            raise ValueError(f'budget schedule budget must be finite and > 0 ms, got {item!r}')
        if steps and start_s <= steps[-1].start_s:
            raise ValueError(f'budget schedule start times must increase, got {text!r}')
        steps.append(BudgetStep(start_s, budget_ms))
    if steps[0].start_s != 0.0:
        raise ValueError(f'budget schedule must start at t = 0, got {text!r}')
    return tuple(steps)


def format_schedule(steps: tuple[BudgetStep, ...]) -> str:
    """The inverse of :func:`parse_schedule` (compact numbers)."""
    return ','.join(f'{s.start_s:g}:{s.budget_ms:g}' for s in steps)


class BudgetSchedule:
    """Budget as a function of elapsed time, optionally looping."""

    def __init__(self, steps: tuple[BudgetStep, ...] | str, loop: bool = False,
                 period_s: float | None = None) -> None:
        self.steps = parse_schedule(steps) if isinstance(steps, str) else tuple(steps)
        if not self.steps:
            raise ValueError(f'budget schedule needs at least one step, got {steps!r}')
        self.loop = bool(loop)
        if period_s is None or period_s == 0.0:
            if len(self.steps) == 1:
                period_s = math.inf
            else:
                last_gap_s = self.steps[-1].start_s - self.steps[-2].start_s
                period_s = self.steps[-1].start_s + last_gap_s
        elif not period_s > self.steps[-1].start_s:
            raise ValueError(f'loop period must exceed the last step start '
                             f'{self.steps[-1].start_s} s, got {period_s!r}')
        self.period_s = float(period_s)

    def budget_at(self, elapsed_s: float) -> float:
        """The budget (ms) in force ``elapsed_s`` seconds after the start."""
        if elapsed_s < 0.0:
            raise ValueError(f'elapsed time must be >= 0 s, got {elapsed_s!r}')
        if self.loop and math.isfinite(self.period_s):
            elapsed_s = math.fmod(elapsed_s, self.period_s)
        budget_ms = self.steps[0].budget_ms
        for step in self.steps:
            if step.start_s > elapsed_s:
                break
            budget_ms = step.budget_ms
        return budget_ms

    @property
    def duration_s(self) -> float:
        """Time until the schedule's last change has been in force for one step (one period)."""
        return self.period_s if math.isfinite(self.period_s) else 0.0

    def __repr__(self) -> str:
        return (f'BudgetSchedule({format_schedule(self.steps)!r}, loop={self.loop}, '
                f'period_s={self.period_s:g})')
