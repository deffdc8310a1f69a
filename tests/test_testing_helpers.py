"""budgetkit.testing: FakeClock, capture_budget, fake_usage, record_spans."""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from otel_fixtures import Otel, otel

from budgetkit import (
    BudgetConfigError,
    BudgetExhausted,
    BudgetTypeError,
    CostUnknownWarning,
    SessionBudget,
    _config,
    _events,
    budget,
)
from budgetkit._extract import extract_usage
from budgetkit._pricing import price_usage
from budgetkit.testing import BudgetCapture, FakeClock, capture_budget, fake_usage, record_spans

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["otel"]  # the fixture, imported for its side effect on pytest


@budget.step
def tool() -> str:
    return "ok"


@budget.llm_call
def model(tokens_in: int = 1_000, tokens_out: int = 100) -> dict[str, Any]:
    return fake_usage("gpt-4o-mini", tokens_in, tokens_out)


def _core_emits_events() -> bool:
    with capture_budget() as captured, SessionBudget(handoff_dir=None):
        tool()
    return bool(captured.events)


needs_events = pytest.mark.skipif(
    not _core_emits_events(),
    reason="the core does not emit budgetkit._events yet (session/step/charge call sites)",
)


# ----------------------------------------------------------------------------- FakeClock
def test_fake_clock_installs_and_restores_the_clock() -> None:
    """Inside the block sessions read the fake clock; after it, the real one again."""
    assert _config.clock is time.monotonic
    with FakeClock(start=5.0) as clock:
        assert _config.clock is clock
        assert clock() == 5.0
        assert clock.advance(2.5) == 7.5
        assert clock.now == 7.5
    assert _config.clock is time.monotonic


def test_fake_clock_restores_on_error_and_nests() -> None:
    """Nested clocks restore in order, also when the block raises."""
    outer, inner = FakeClock(), FakeClock(100)

    def fail_inside() -> None:
        with outer, inner:
            assert _config.clock is inner
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert _config.clock is time.monotonic


def test_fake_clock_drives_max_seconds() -> None:
    """max_seconds trips from advance() alone, without sleeping."""
    with (
        FakeClock() as clock,
        SessionBudget(max_seconds=10, handoff_dir=None, raise_on_exhausted=False) as session,
    ):
        tool()
        clock.advance(10)  # equal to the limit: still within budget
        tool()
        clock.advance(0.5)
        tool()  # refused: BudgetExhausted, swallowed on exit
    assert session.result is not None
    assert session.result.stop_reason == "max_seconds"
    assert session.usage.steps == 2
    assert session.usage.elapsed_seconds == 10.5


def test_fake_clock_drives_async_sessions() -> None:
    """An async session started on the fake clock is judged by it too."""

    @budget.step
    async def slow() -> None:
        _config.clock.advance(30)  # type: ignore[attr-defined]

    async def main() -> SessionBudget:
        async with SessionBudget(max_seconds=60, handoff_dir=None, raise_on_exhausted=False) as s:
            while True:
                await slow()
        return s

    with FakeClock():
        session = asyncio.run(main())
    assert session.result is not None
    assert session.result.stop_reason == "max_seconds"
    assert session.usage.steps == 3  # at 0, 30 and 60 seconds


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
def test_fake_clock_rejects_bad_advances(bad: float) -> None:
    """A negative, NaN or infinite advance is a clear error; the clock does not move."""
    clock = FakeClock()
    with pytest.raises(BudgetConfigError, match="seconds"):
        clock.advance(bad)
    assert clock.now == 0.0


@pytest.mark.parametrize("bad", ["1", True, None])
def test_fake_clock_rejects_non_numbers(bad: object) -> None:
    """A string, bool or None is a type error naming the argument."""
    with pytest.raises(BudgetTypeError, match="seconds"):
        FakeClock().advance(bad)  # type: ignore[arg-type]
    with pytest.raises(BudgetTypeError, match="start"):
        FakeClock(bad)  # type: ignore[arg-type]


def test_fake_clock_uninstall_without_install() -> None:
    """uninstall() without install() is a programming error, not a silent no-op."""
    with pytest.raises(RuntimeError, match="install"):
        FakeClock().uninstall()


# ----------------------------------------------------------------------------- fake_usage
def test_fake_usage_is_read_and_priced_like_a_real_response() -> None:
    """The extractor reads the counts and genai-prices prices them."""
    response = fake_usage("gpt-4o-mini", 10_000, 1_000)
    usage = extract_usage(response)
    assert (usage.input_tokens, usage.output_tokens, usage.model) == (10_000, 1_000, "gpt-4o-mini")
    assert price_usage(usage) == Decimal("0.0021")
    with SessionBudget(handoff_dir=None) as session:
        model(10_000, 1_000)
    assert session.usage.cost_usd == Decimal("0.0021")
    assert session.usage.unpriced_calls == 0


def test_fake_usage_cache_and_reasoning_details() -> None:
    """Cache reads and reasoning tokens land in the provider's details blocks."""
    response = fake_usage("o4-mini", 5_000, 2_000, cache_read_tokens=4_000, reasoning_tokens=1_500)
    assert response["usage"]["prompt_tokens_details"] == {"cached_tokens": 4_000}
    assert response["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1_500}
    usage = extract_usage(response)
    assert usage.cache_read_tokens == 4_000
    assert usage.reasoning_tokens == 1_500
    assert usage.input_tokens == 5_000
    assert usage.output_tokens == 2_000


def test_fake_usage_unknown_model_is_unpriced() -> None:
    """A model the table does not know stays unpriced, as with a real response."""

    @budget.llm_call
    def homemade() -> dict[str, Any]:
        return fake_usage("homemade-7b", 100, 10)

    session = SessionBudget(max_usd=1, on_unknown_cost="warn", handoff_dir=None)

    def run() -> None:
        with session:
            homemade()

    with pytest.warns(CostUnknownWarning, match="unknown"):
        run()
    assert session.usage.unpriced_calls == 1
    assert session.usage.cost_usd == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("", 1, 1), {}, BudgetTypeError, "model"),
        (("m", -1, 1), {}, BudgetConfigError, "input_tokens"),
        (("m", 1, 1.5), {}, BudgetTypeError, "output_tokens"),
        (("m", True, 1), {}, BudgetTypeError, "input_tokens"),
        (("m", 10, 1), {"cache_read_tokens": 11}, BudgetConfigError, "cache_read_tokens"),
        (("m", 10, 1), {"reasoning_tokens": 2}, BudgetConfigError, "reasoning_tokens"),
    ],
)
def test_fake_usage_bad_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad counts are rejected with a message naming the argument."""
    with pytest.raises(error, match=match):
        fake_usage(*args, **kwargs)


# ----------------------------------------------------------------------------- capture_budget
def test_capture_budget_records_events_while_active() -> None:
    """Events emitted inside the block are recorded and sorted by kind; none after it."""
    a, b = object(), object()
    with capture_budget() as captured:
        _events.emit("session_start", a)
        _events.emit("step", a, name="search")
        _events.emit("llm_call", a, name="ask", usage=None, cost_usd=Decimal(1))
        _events.emit("charge", b, usage=None, cost_usd=Decimal(2))
        _events.emit("exhausted", a, reason="max_steps", handoff_path=None)
        _events.emit("session_end", a, result=None)
    _events.emit("step", a, name="after")
    assert isinstance(captured, BudgetCapture)
    assert captured.kinds() == [
        "session_start",
        "step",
        "llm_call",
        "charge",
        "exhausted",
        "session_end",
    ]
    assert captured.sessions == [a, b]
    assert [e.data["name"] for e in captured.steps] == ["search"]
    assert [e.data["cost_usd"] for e in captured.charges] == [Decimal(1), Decimal(2)]
    assert [e.data["reason"] for e in captured.exhaustions] == ["max_steps"]
    assert _events.listeners == []


def test_capture_budget_unsubscribes_on_error_and_nests() -> None:
    """Nested captures both record; each unsubscribes on exit, also when the block raises."""
    inner = BudgetCapture()

    def fail_inside() -> None:
        nonlocal inner
        with capture_budget() as outer:
            with capture_budget() as inner:
                _events.emit("step", None, name="x")
            raise KeyError(outer)

    with pytest.raises(KeyError) as failed:
        fail_inside()
    (outer,) = failed.value.args
    assert len(outer.events) == 1
    assert len(inner.events) == 1
    assert _events.listeners == []


@needs_events
def test_capture_budget_sees_a_real_session() -> None:
    """A real session reports its start, steps, charges, exhaustion and end."""
    with (
        capture_budget() as captured,
        SessionBudget(max_steps=2, handoff_dir=None, raise_on_exhausted=False) as session,
    ):
        while True:
            tool()
            model()
    assert captured.sessions == [session]
    assert captured.kinds()[0] == "session_start"
    assert "session_end" in captured.kinds()
    assert [e.data["name"] for e in captured.steps] == ["tool", "tool"]
    assert [e.kind for e in captured.charges][:2] == ["llm_call", "llm_call"]
    assert captured.charges[0].data["cost_usd"] == Decimal("0.00021")
    assert [e.data["reason"] for e in captured.exhaustions] == ["max_steps"]


@needs_events
def test_capture_budget_exhaustion_carries_the_handoff_path(tmp_path: Path) -> None:
    """The exhausted event names the handoff file that was written."""

    def run() -> None:
        with SessionBudget(max_llm_calls=1, handoff_dir=tmp_path):
            model()
            model()

    with capture_budget() as captured, pytest.raises(BudgetExhausted) as stopped:
        run()
    (event,) = captured.exhaustions
    assert event.data["handoff_path"] == stopped.value.handoff_path


# ----------------------------------------------------------------------------- record_spans
def test_record_spans_collects_only_its_own_block(otel: Otel) -> None:
    """Spans that end inside the block are recorded, in a tree; those after it are not."""
    with record_spans() as spans, SessionBudget(name="agent", handoff_dir=None):
        tool()
        model()
    with SessionBudget(handoff_dir=None):
        tool()
    assert spans.names() == ["execute_tool tool", "chat gpt-4o-mini", "invoke_agent agent"]
    assert spans.tree() == "invoke_agent agent\n  execute_tool tool\n  chat gpt-4o-mini"
    root = spans.span("invoke_agent agent")
    assert [s.name for s in spans.children(root)] == ["execute_tool tool", "chat gpt-4o-mini"]
    spans.clear()
    assert spans.spans == []


def test_record_spans_reuses_one_processor(otel: Otel) -> None:
    """Many recorders share one processor on the provider; each sees what ended in its block."""
    with record_spans() as first:
        with record_spans() as second, SessionBudget(handoff_dir=None):
            tool()
        with SessionBudget(handoff_dir=None):
            tool()
    assert len(first.spans) == 4
    assert len(second.spans) == 2
    with pytest.raises(AssertionError, match="2 spans named"):
        first.span("execute_tool tool")


def test_capture_budget_sees_steps_of_nested_sessions() -> None:
    """A step inside a nested session is reported once, like one in a single session."""
    from budgetkit import SessionBudget, budget
    from budgetkit.testing import capture_budget

    @budget.step
    def tool() -> None:
        return None

    with capture_budget() as captured:
        with SessionBudget(handoff_dir=None), SessionBudget(handoff_dir=None):
            tool()
        assert len(captured.steps) == 1
