"""Nested sessions: charges count in every enclosing session; the tripping session raises."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from budgetkit import BudgetExhausted, SessionBudget, budget

if TYPE_CHECKING:
    from pathlib import Path

ran: list[int] = []


@budget.step
def tool(i: int = 0) -> int:
    ran.append(i)
    return i


@budget.step
async def atool(i: int = 0) -> int:
    ran.append(i)
    return i


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    ran.clear()


def test_current_is_innermost(handoff_dir: Path) -> None:
    """budget.current() returns the innermost session and is restored on exit."""
    with SessionBudget(handoff_dir=handoff_dir) as outer:
        assert budget.current() is outer
        with SessionBudget(handoff_dir=handoff_dir) as inner:
            assert budget.current() is inner
            assert inner.parent is outer
        assert budget.current() is outer
    assert budget.current() is None


def test_steps_and_charges_count_in_every_enclosing_session(handoff_dir: Path) -> None:
    """A step or charge inside an inner session counts against the inner and all outer ones."""
    with SessionBudget(handoff_dir=handoff_dir) as a:
        tool()
        with SessionBudget(handoff_dir=handoff_dir) as b:
            with SessionBudget(handoff_dir=handoff_dir) as c:
                tool()
                c.charge(usd=1, input_tokens=10)
            tool()
            b.charge(usd=2, output_tokens=5)
        a.charge(usd=4)
    assert (a.usage.steps, b.usage.steps, c.usage.steps) == (3, 2, 1)
    assert (a.usage.cost_usd, b.usage.cost_usd, c.usage.cost_usd) == (7, 3, 1)
    assert (a.usage.total_tokens, b.usage.total_tokens, c.usage.total_tokens) == (15, 15, 10)


def test_outer_step_limit_stops_inner_code(handoff_dir: Path) -> None:
    """When the outer session runs out of steps, a step inside the inner one raises the outer's."""
    outer = SessionBudget(max_steps=3, handoff_dir=handoff_dir)
    inner = SessionBudget(max_steps=100, handoff_dir=handoff_dir)

    def agent() -> None:
        with outer:
            tool(0)
            with inner:
                for i in range(1, 10):
                    tool(i)

    with pytest.raises(BudgetExhausted) as info:
        agent()
    assert ran == [0, 1, 2]
    exc = info.value
    assert exc.session_id == outer.session_id
    assert exc.reason == "max_steps"
    assert exc.handoff.session_id == outer.session_id
    assert exc.handoff_path == handoff_dir / f"{outer.session_id}.json"
    assert [p.name for p in handoff_dir.iterdir()] == [f"{outer.session_id}.json"]
    assert not inner.exhausted
    assert inner.result is not None
    assert inner.result.stop_reason == "max_steps"
    assert inner.result.stopped_by == outer.session_id
    assert inner.result.handoff_path is None


def test_outer_measured_limit_via_inner_charge(handoff_dir: Path) -> None:
    """A charge in an inner session can exhaust the outer; the next inner boundary raises it."""
    with (
        SessionBudget(max_usd=1, handoff_dir=handoff_dir) as outer,
        SessionBudget(max_usd=100, handoff_dir=handoff_dir) as inner,
    ):
        inner.charge(usd=1.5)
        with pytest.raises(BudgetExhausted) as info:
            tool(1)
    assert ran == []
    assert info.value.session_id == outer.session_id
    assert info.value.reason == "max_usd"
    assert outer.exhausted
    assert not inner.exhausted


def test_inner_limit_raises_inner_and_outer_continues(handoff_dir: Path) -> None:
    """An inner session's own limit raises from the inner one; the outer keeps working."""
    inner = SessionBudget(max_steps=2, handoff_dir=handoff_dir)

    def inner_agent() -> None:
        with inner:
            for i in range(5):
                tool(i)

    with SessionBudget(max_steps=10, handoff_dir=handoff_dir) as outer:
        with pytest.raises(BudgetExhausted) as info:  # propagates out of the inner block
            inner_agent()
        tool(99)
    assert ran == [0, 1, 99]
    assert info.value.session_id == inner.session_id
    assert info.value.handoff_path == handoff_dir / f"{inner.session_id}.json"
    assert not outer.exhausted
    assert outer.result is not None
    assert outer.result.stop_reason == "completed"
    assert [p.name for p in handoff_dir.iterdir()] == [f"{inner.session_id}.json"]


def test_outer_latch_applies_to_later_inner_sessions(handoff_dir: Path) -> None:
    """Once the outer session is exhausted, a new inner session refuses its first step."""
    with SessionBudget(max_steps=1, handoff_dir=handoff_dir) as outer:
        tool(0)
        with pytest.raises(BudgetExhausted):
            tool(1)
        with pytest.raises(BudgetExhausted) as info, SessionBudget(handoff_dir=handoff_dir):
            tool(2)
    assert ran == [0]
    assert info.value.session_id == outer.session_id


def test_inner_raise_on_exhausted_false_does_not_swallow_outer(handoff_dir: Path) -> None:
    """An inner raise_on_exhausted=False session does not swallow the outer's exhaustion."""
    outer = SessionBudget(max_steps=1, handoff_dir=handoff_dir)
    inner = SessionBudget(raise_on_exhausted=False, handoff_dir=handoff_dir)

    def agent() -> None:
        with outer, inner:
            tool(0)
            tool(1)

    with pytest.raises(BudgetExhausted) as info:
        agent()
    assert info.value.session_id == outer.session_id
    assert inner.result is not None
    assert inner.result.stop_reason == "max_steps"
    assert outer.result is not None
    assert outer.result.stop_reason == "max_steps"


def test_inner_raise_on_exhausted_false_swallows_own_only(handoff_dir: Path) -> None:
    """An inner raise_on_exhausted=False session swallows its own exhaustion; the outer goes on."""
    with SessionBudget(max_steps=5, handoff_dir=handoff_dir) as outer:
        with SessionBudget(max_steps=1, raise_on_exhausted=False, handoff_dir=handoff_dir) as inner:
            tool(0)
            tool(1)
        tool(2)
    assert ran == [0, 2]
    assert inner.result is not None
    assert inner.result.stop_reason == "max_steps"
    assert outer.usage.steps == 2


def test_nested_consecutive_errors_count_in_outer(handoff_dir: Path) -> None:
    """Errors inside an inner session count toward the outer's max_consecutive_errors."""

    @budget.step
    def fail() -> None:
        raise RuntimeError("x")

    with (
        SessionBudget(max_consecutive_errors=2, handoff_dir=handoff_dir) as outer,
        SessionBudget(handoff_dir=handoff_dir),
    ):
        for _ in range(2):
            with pytest.raises(RuntimeError):
                fail()
        with pytest.raises(BudgetExhausted) as info:
            tool()
    assert info.value.session_id == outer.session_id
    assert info.value.reason == "max_consecutive_errors"
    assert ran == []


@pytest.mark.asyncio
async def test_async_nesting_with_tasks(handoff_dir: Path) -> None:
    """Tasks inside an inner async session charge the outer; the outer's limit stops them."""
    async with SessionBudget(max_steps=30, handoff_dir=handoff_dir) as outer:
        with pytest.raises(BudgetExhausted) as info:
            async with SessionBudget(handoff_dir=handoff_dir) as inner:
                await asyncio.gather(*(asyncio.create_task(atool(i)) for i in range(100)))
        assert outer.exhausted
    assert len(ran) == 30
    assert inner.usage.steps == outer.usage.steps == 30
    assert info.value.session_id == outer.session_id


def test_handoff_of_outer_has_outer_usage(handoff_dir: Path) -> None:
    """The handoff written for an exhausted outer session reports the outer's usage and limits."""
    with SessionBudget(max_steps=4, handoff_dir=handoff_dir):
        tool()
        with SessionBudget(max_steps=50, handoff_dir=handoff_dir):
            for _ in range(3):
                tool()
            with pytest.raises(BudgetExhausted) as info:
                tool()

    h = info.value.handoff
    assert h.stopped_at_step == 4
    assert h.limits["max_steps"] == 4
    assert h.usage["steps"] == 4
