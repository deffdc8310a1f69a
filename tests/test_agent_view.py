"""Issue 5: the agent's view of its budget, soft landings and operator policies."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from budgetkit import (
    BudgetConfigError,
    BudgetExhausted,
    BudgetTypeError,
    SessionBudget,
    StepTimeoutError,
    budget,
)
from budgetkit._giveup import parse_give_up

if TYPE_CHECKING:
    from pathlib import Path


@budget.step
def tool(x: int = 0) -> int:
    return x


@budget.step(wrapup=True)
def summarise() -> str:
    return "summary"


def test_status_line_lists_only_limited_dimensions(clock: Any) -> None:
    """The status line counts down steps, dollars and minutes, and names the phase."""
    with SessionBudget(max_steps=50, max_usd=1, max_seconds=300, handoff_dir=None) as s:
        for _ in range(27):
            tool()
        s.charge(usd=Decimal("0.58"))
        clock.advance(61)
        assert s.status_line() == (
            "Budget: 23 of 50 steps left, $0.42 of $1.00 left, 3 min left. Phase: explore."
        )
    with SessionBudget(max_llm_calls=4, handoff_dir=None) as s:
        assert s.status_line() == "Budget: 4 of 4 LLM calls left. Phase: explore."


def test_phase_follows_the_most_used_limit() -> None:
    """Below 60% explore, below 90% converge, from 90% deliver (bounds configurable)."""
    with SessionBudget(max_steps=10, max_usd=100, handoff_dir=None) as s:
        assert s.phase == "explore"
        for _ in range(6):
            tool()
        assert s.phase == "converge"
        for _ in range(3):
            tool()
        assert s.phase == "deliver"
    with SessionBudget(max_steps=10, phases=(0.2, 0.5), handoff_dir=None) as s:
        for _ in range(2):
            tool()
        assert s.phase == "converge"


def test_thresholds_and_phase_changes_call_back_once_each() -> None:
    """Each threshold crossing calls back once per dimension; phase changes likewise."""
    crossed: list[tuple[str, int]] = []
    phases: list[str] = []
    with SessionBudget(
        max_steps=10,
        thresholds=(0.5, 0.8),
        on_threshold=lambda s, dim: crossed.append((dim, s.usage.steps)),
        on_phase_change=lambda s, phase: phases.append(phase),
        handoff_dir=None,
    ):
        for _ in range(10):
            tool()
    assert crossed == [("steps", 5), ("steps", 8)]
    assert phases == ["converge", "deliver"]


def test_agent_loop_finishes_its_wrapup_inside_the_reserve(tmp_path: Path) -> None:
    """An agent reading status_line() is refused a plain step in the reserve, yet wraps up."""
    prompts: list[str] = []
    refused: BudgetExhausted | None = None
    with SessionBudget(max_steps=10, reserve_for_wrapup=0.2, handoff_dir=tmp_path) as s:
        while True:
            prompts.append(f"You are a researcher. {s.status_line()}")
            try:
                tool()
            except BudgetExhausted as exc:
                refused = exc
                break
        assert summarise() == "summary"
        assert summarise() == "summary"
        assert not s.exhausted  # the reserve's refusal does not latch
        with pytest.raises(BudgetExhausted) as after:
            summarise()
    assert refused is not None
    assert refused.reason == "wrapup_reserve"
    assert refused.handoff_path is None
    assert s.usage.steps == 10
    assert prompts[0].startswith("You are a researcher. Budget: 10 of 10 steps left")
    assert "Phase: converge" in prompts[-1]
    assert after.value.reason == "max_steps"
    assert after.value.handoff_path is not None
    assert after.value.handoff_path.exists()


def test_check_plan_gives_up_before_any_step() -> None:
    """A plan longer than the steps left raises the exact GIVE_UP message, parseable back."""
    with SessionBudget(max_steps=5, handoff_dir=None) as s:
        s.check_plan(5)
        with pytest.raises(BudgetExhausted) as info:
            s.check_plan(8)
        assert s.usage.steps == 0
        assert not s.exhausted
    assert info.value.reason == "plan_exceeds_budget"
    assert str(info.value) == "GIVE_UP: plan requires 8 steps, budget is 5."
    parsed = parse_give_up(f"```\n{info.value}\n```")
    assert parsed is not None
    assert (parsed.required_steps, parsed.budget_steps) == (8, 5)


def test_sync_step_timeout_is_judged_on_return() -> None:
    """A sync step that overran its timeout raises StepTimeoutError when it returns."""

    @budget.step(timeout=0.01)
    def slow() -> str:
        time.sleep(0.05)
        return "late"

    with SessionBudget(handoff_dir=None), pytest.raises(StepTimeoutError):
        slow()


@pytest.mark.asyncio
async def test_async_step_timeout_cancels_at_the_deadline() -> None:
    """An async step is cancelled at its deadline."""
    finished: list[bool] = []

    @budget.step(timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)
        finished.append(True)

    started = time.monotonic()
    async with SessionBudget(handoff_dir=None):
        with pytest.raises(StepTimeoutError):
            await slow()
    assert time.monotonic() - started < 2
    assert finished == []


def test_max_output_chars_truncates_with_a_marker() -> None:
    """A verbose tool's string result is cut with a visible marker, the marker within the limit."""

    @budget.step(max_output_chars=200)
    def verbose() -> str:
        return "x" * 1000

    with SessionBudget(handoff_dir=None):
        out = verbose()
    marker = "\n[... 849 more characters truncated by budgetkit]"
    assert out == "x" * 151 + marker
    assert len(out) == 200


@pytest.mark.parametrize("limit", [1, 2, 5, 10, 20, 47, 48, 49, 50, 100, 1000])
@pytest.mark.parametrize("size", [1, 21, 101, 10_000, 2_000_000])
def test_max_output_chars_is_a_hard_cap_marker_included(limit: int, size: int) -> None:
    """max_output_chars=20 returns at most 20 characters, truncation marker included (#19)."""

    @budget.step(max_output_chars=limit)
    def verbose() -> str:
        return "y" * size

    with SessionBudget(handoff_dir=None):
        out = verbose()
    assert len(out) <= limit
    if size <= limit:
        assert out == "y" * size
    else:
        assert out != "y" * limit  # the cut is visible
        kept = len(out) - len(out.lstrip("y"))
        assert out[:kept] == "y" * kept
        if limit >= 20:
            assert str(size - kept) in out  # says how much was cut


def test_max_output_chars_20_keeps_text_and_a_short_marker() -> None:
    """At 20 characters the result keeps some text and a short marker naming the cut."""

    @budget.step(max_output_chars=20)
    def verbose() -> str:
        return "z" * 100

    with SessionBudget(handoff_dir=None):
        out = verbose()
    assert len(out) <= 20
    assert out.startswith("zzzz")


def test_from_config_reads_a_tier_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_config takes a file tier, presets, and BUDGETKIT_* overrides."""
    (tmp_path / "budgetkit.toml").write_text("[tiers.pro]\nmax_steps = 40\nmax_usd = 3.5\n")
    monkeypatch.delenv("BUDGETKIT_MAX_STEPS", raising=False)
    s = SessionBudget.from_config("pro", path=tmp_path, handoff_dir=None)
    assert (s.limits.max_steps, s.limits.max_usd) == (40, Decimal("3.5"))
    monkeypatch.setenv("BUDGETKIT_MAX_STEPS", "7")
    assert SessionBudget.from_config("qa", handoff_dir=None).limits.max_steps == 7
    with pytest.raises(BudgetConfigError, match="nope"):
        SessionBudget.from_config("nope", path=tmp_path)


def test_session_log_gets_one_line_per_session(tmp_path: Path) -> None:
    """Every session appends one JSON line to session_log."""
    log = tmp_path / "sessions.jsonl"
    for _ in range(3):
        with SessionBudget(max_steps=2, session_log=log, handoff_dir=None):
            tool()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["usage"]["steps"] for line in lines] == [1, 1, 1]
    assert {line["stop_reason"] for line in lines} == {"completed"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"thresholds": (0.0,)}, BudgetConfigError),
        ({"thresholds": (1.0,)}, BudgetConfigError),
        ({"thresholds": (1.5,)}, BudgetConfigError),
        ({"thresholds": "0.5"}, BudgetTypeError),
        ({"reserve_for_wrapup": 1.0}, BudgetConfigError),
        ({"reserve_for_wrapup": -0.1}, BudgetConfigError),
        ({"on_threshold": "print"}, BudgetTypeError),
    ],
)
def test_bad_soft_landing_options_are_rejected(kwargs: dict[str, Any], error: type) -> None:
    """Thresholds outside (0, 1), a reserve >= 1 and non-callable callbacks are errors."""
    with pytest.raises(error):
        SessionBudget(**kwargs)
