"""The GIVE_UP line: parsing a model's answer and building the exact message."""

from __future__ import annotations

import dataclasses

import pytest

from budgetkit import BudgetConfigError, BudgetTypeError
from budgetkit._giveup import GiveUp, give_up_message, parse_give_up


def test_plain_line() -> None:
    got = parse_give_up("GIVE_UP: plan requires 12 steps, budget is 10.")
    assert got == GiveUp(
        required_steps=12,
        budget_steps=10,
        line="GIVE_UP: plan requires 12 steps, budget is 10.",
    )


def test_line_among_other_text() -> None:
    text = "I looked at the task.\nGIVE_UP: plan requires 40 steps, budget is 25.\nSorry."
    got = parse_give_up(text)
    assert got is not None
    assert (got.required_steps, got.budget_steps) == (40, 25)


def test_inside_a_code_fence() -> None:
    text = "Here is my answer:\n```\nGIVE_UP: plan requires 7 steps, budget is 5.\n```\n"
    got = parse_give_up(text)
    assert got is not None
    assert (got.required_steps, got.budget_steps) == (7, 5)
    assert got.line == "GIVE_UP: plan requires 7 steps, budget is 5."


def test_inside_a_fence_with_language_and_indentation() -> None:
    text = "  ```text\n    GIVE_UP: plan requires 3 steps, budget is 2.   \n  ```"
    got = parse_give_up(text)
    assert got is not None
    assert got.line == "GIVE_UP: plan requires 3 steps, budget is 2."


def test_one_line_fence_and_inline_backticks() -> None:
    assert parse_give_up("```GIVE_UP: plan requires 9 steps, budget is 4.```") is not None
    assert parse_give_up("`GIVE_UP: plan requires 9 steps, budget is 4.`") is not None


def test_tolerated_whitespace_singular_and_no_period() -> None:
    for text in (
        "\t GIVE_UP:plan requires  12   steps ,  budget is 10 .  ",
        "GIVE_UP: plan requires 1 step, budget is 0",
        "GIVE_UP: plan requires 12 steps, budget is 10.\r\nnext line",
    ):
        assert parse_give_up(text) is not None, text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "All done, here is the answer.",
        "give_up: plan requires 12 steps, budget is 10.",
        "Give_Up: plan requires 12 steps, budget is 10.",
        "I could say GIVE_UP: plan requires 12 steps, budget is 10.",
        "GIVE_UP: plan requires twelve steps, budget is 10.",
        "GIVE_UP: plan requires 12 steps, budget is 10. But let me try anyway.",
        "GIVE_UP: plan requires -3 steps, budget is 10.",
        "GIVE_UP: plan requires ١٢ steps, budget is 10.",
        "GIVE_UP:",
    ],
)
def test_not_a_give_up(text: str) -> None:
    assert parse_give_up(text) is None


def test_first_line_wins() -> None:
    text = (
        "GIVE_UP: plan requires 11 steps, budget is 10.\n"
        "GIVE_UP: plan requires 99 steps, budget is 10."
    )
    got = parse_give_up(text)
    assert got is not None
    assert got.required_steps == 11


def test_required_not_above_budget_is_still_reported() -> None:
    got = parse_give_up("GIVE_UP: plan requires 3 steps, budget is 10.")
    assert got is not None
    assert (got.required_steps, got.budget_steps) == (3, 10)


def test_give_up_is_frozen() -> None:
    got = parse_give_up("GIVE_UP: plan requires 2 steps, budget is 1.")
    assert got is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.required_steps = 1  # type: ignore[misc]


def test_message_is_exact() -> None:
    assert give_up_message(12, 10) == "GIVE_UP: plan requires 12 steps, budget is 10."
    assert give_up_message(0, 0) == "GIVE_UP: plan requires 0 steps, budget is 0."


def test_message_round_trips() -> None:
    message = give_up_message(250, 50)
    got = parse_give_up(f"thinking...\n{message}\n")
    assert got == GiveUp(required_steps=250, budget_steps=50, line=message)


@pytest.mark.parametrize("bad", ["12", 1.5, True, None])
def test_message_rejects_non_ints(bad: object) -> None:
    with pytest.raises(BudgetTypeError, match="required_steps"):
        give_up_message(bad, 10)  # type: ignore[arg-type]
    with pytest.raises(BudgetTypeError, match="budget_steps"):
        give_up_message(10, bad)  # type: ignore[arg-type]


def test_message_rejects_negative() -> None:
    with pytest.raises(BudgetConfigError, match="budget_steps"):
        give_up_message(3, -1)


def test_parse_rejects_non_str() -> None:
    with pytest.raises(BudgetTypeError):
        parse_give_up(b"GIVE_UP: plan requires 2 steps, budget is 1.")  # type: ignore[arg-type]


def test_public_from_the_package() -> None:
    """parse_give_up and GiveUp are part of budgetkit's public API (issue #19)."""
    import budgetkit

    assert "parse_give_up" in budgetkit.__all__
    assert "GiveUp" in budgetkit.__all__
    found = budgetkit.parse_give_up("thinking...\nGIVE_UP: plan requires 12 steps, budget is 10.")
    assert isinstance(found, budgetkit.GiveUp)
    assert (found.required_steps, found.budget_steps) == (12, 10)
