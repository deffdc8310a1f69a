"""Bad input raises a BudgetError that is a ValueError/TypeError naming the argument and value."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from budgetkit import (
    BudgetConfigError,
    BudgetError,
    BudgetTypeError,
    HandoffError,
    SessionBudget,
)

if TYPE_CHECKING:
    from pathlib import Path

INT_LIMITS = ["max_steps", "max_llm_calls", "max_tokens", "max_consecutive_errors"]

BAD_INT = [
    (0, BudgetConfigError),
    (-1, BudgetConfigError),
    (-(10**20), BudgetConfigError),
    (math.nan, BudgetTypeError),
    (math.inf, BudgetTypeError),
    (2.5, BudgetTypeError),
    (True, BudgetTypeError),
    (False, BudgetTypeError),
    ("10", BudgetTypeError),
    ([3], BudgetTypeError),
]
BAD_USD = [
    (0, BudgetConfigError),
    (-1, BudgetConfigError),
    (-0.01, BudgetConfigError),
    (Decimal("-0"), BudgetConfigError),
    (math.nan, BudgetConfigError),
    (math.inf, BudgetConfigError),
    (-math.inf, BudgetConfigError),
    (Decimal("NaN"), BudgetConfigError),
    (Decimal("sNaN"), BudgetConfigError),
    (Decimal("Infinity"), BudgetConfigError),
    (True, BudgetTypeError),
    ("1.00", BudgetTypeError),
    ([1], BudgetTypeError),
]
BAD_SECONDS = [
    (0, BudgetConfigError),
    (-5, BudgetConfigError),
    (math.nan, BudgetConfigError),
    (math.inf, BudgetConfigError),
    (True, BudgetTypeError),
    ("30", BudgetTypeError),
    (10**400, BudgetConfigError),
]

CASES = (
    [(name, v, e) for name in INT_LIMITS for v, e in BAD_INT]
    + [("max_usd", v, e) for v, e in BAD_USD]
    + [("max_seconds", v, e) for v, e in BAD_SECONDS]
)


def _assert_good_error(err: BaseException, name: str, value: Any) -> None:
    assert isinstance(err, BudgetError)
    assert isinstance(err, ValueError | TypeError)
    assert name in str(err)
    assert repr(value) in str(err)


@pytest.mark.parametrize(("name", "value", "error"), CASES)
def test_bad_limit_rejected(name: str, value: Any, error: type, tmp_path: Path) -> None:
    """Zero, negative, NaN, infinite, bool or string limits raise a clear error naming them."""
    with pytest.raises(error) as info:
        SessionBudget(**{name: value}, handoff_dir=tmp_path / "h")
    _assert_good_error(info.value, name, value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize(("name", "value", "error"), CASES)
def test_bad_limit_rejected_by_resume(name: str, value: Any, error: type, tmp_path: Path) -> None:
    """resume() validates overrides like the constructor."""
    handoff = _handoff(tmp_path)
    with pytest.raises(error) as info:
        SessionBudget.resume(handoff, **{name: value})
    _assert_good_error(info.value, name, value)


def _handoff(tmp_path: Path) -> Any:
    from budgetkit import BudgetExhausted, budget

    @budget.step
    def tool() -> None:
        pass

    with SessionBudget(max_steps=1, handoff_dir=tmp_path / "h"):
        tool()
        with pytest.raises(BudgetExhausted) as info:
            tool()
    return info.value.handoff


def test_none_is_unlimited() -> None:
    """None for every limit means unlimited and is accepted."""
    s = SessionBudget(
        max_steps=None,
        max_llm_calls=None,
        max_tokens=None,
        max_usd=None,
        max_seconds=None,
        max_consecutive_errors=None,
        handoff_dir=None,
    )
    assert s.limits.limited() == {}


def test_unknown_constructor_keyword() -> None:
    """An unknown keyword to SessionBudget raises BudgetTypeError naming it and its value."""
    with pytest.raises(BudgetTypeError) as info:
        SessionBudget(max_step=5)  # type: ignore[call-arg]
    assert isinstance(info.value, TypeError)
    assert "max_step" in str(info.value)
    assert "5" in str(info.value)


def test_unknown_resume_keyword(tmp_path: Path) -> None:
    """An unknown keyword to resume() raises BudgetTypeError naming it and its value."""
    with pytest.raises(BudgetTypeError) as info:
        SessionBudget.resume(_handoff(tmp_path), budget_usd=3)
    assert "budget_usd=3" in str(info.value)


@pytest.mark.parametrize(
    "session_id",
    [
        "../escape",
        "..",
        "a/b",
        "/abs",
        "a\\b",
        "a..b",
        ".hidden",
        "",
        " spaced",
        "nul\x00byte",
        "line\n",
        "x" * 129,
        "é",
    ],
)
def test_session_id_escaping_handoff_dir_rejected(session_id: str, tmp_path: Path) -> None:
    """A session_id with separators, '..' or odd characters raises BudgetConfigError naming it."""
    with pytest.raises(BudgetConfigError) as info:
        SessionBudget(session_id=session_id, handoff_dir=tmp_path / "h")
    _assert_good_error(info.value, "session_id", session_id)
    assert list(tmp_path.iterdir()) == []


def test_session_id_escaping_rejected_by_resume(tmp_path: Path) -> None:
    """resume(session_id=...) applies the same session_id check."""
    with pytest.raises(BudgetConfigError, match="session_id"):
        SessionBudget.resume(_handoff(tmp_path), session_id="../../x")


@pytest.mark.parametrize("session_id", [5, b"abc", ["a"]])
def test_session_id_wrong_type(session_id: Any) -> None:
    """A non-str session_id raises BudgetTypeError."""
    with pytest.raises(BudgetTypeError) as info:
        SessionBudget(session_id=session_id)
    _assert_good_error(info.value, "session_id", session_id)


@pytest.mark.parametrize("session_id", ["a", "run-1", "A_b.c-9", "x" * 128])
def test_session_id_accepted(session_id: str) -> None:
    """Ordinary session ids are accepted."""
    assert SessionBudget(session_id=session_id, handoff_dir=None).session_id == session_id


@pytest.mark.parametrize(
    ("kwargs", "name", "error"),
    [
        ({"handoff_dir": 5}, "handoff_dir", BudgetTypeError),
        ({"handoff_dir": ""}, "handoff_dir", BudgetConfigError),
        ({"raise_on_exhausted": "no"}, "raise_on_exhausted", BudgetTypeError),
        ({"raise_on_exhausted": 0}, "raise_on_exhausted", BudgetTypeError),
        ({"name": 5}, "name", BudgetTypeError),
    ],
)
def test_other_constructor_arguments(kwargs: dict[str, Any], name: str, error: type) -> None:
    """handoff_dir, raise_on_exhausted and name are type-checked with a clear message."""
    with pytest.raises(error) as info:
        SessionBudget(**kwargs)
    _assert_good_error(info.value, name, kwargs[name])


@pytest.mark.parametrize(
    ("kwargs", "name", "error"),
    [
        ({"usd": -1}, "usd", BudgetConfigError),
        ({"usd": math.nan}, "usd", BudgetConfigError),
        ({"usd": math.inf}, "usd", BudgetConfigError),
        ({"usd": "0.5"}, "usd", BudgetTypeError),
        ({"usd": True}, "usd", BudgetTypeError),
        ({"input_tokens": -1}, "input_tokens", BudgetConfigError),
        ({"input_tokens": 1.5}, "input_tokens", BudgetTypeError),
        ({"output_tokens": "3"}, "output_tokens", BudgetTypeError),
        ({"output_tokens": False}, "output_tokens", BudgetTypeError),
    ],
)
def test_bad_charge_rejected_and_not_recorded(
    kwargs: dict[str, Any], name: str, error: type
) -> None:
    """charge() rejects bad amounts naming them, and records nothing."""
    with SessionBudget(handoff_dir=None) as s:
        with pytest.raises(error) as info:
            s.charge(**kwargs)
        _assert_good_error(info.value, name, kwargs[name])
        assert s.usage.cost_usd == 0
        assert s.usage.total_tokens == 0


def test_charge_zero_is_allowed() -> None:
    """charge(usd=0) is allowed and records nothing."""
    with SessionBudget(max_usd=1, handoff_dir=None) as s:
        s.charge(usd=0)
    assert s.usage.cost_usd == 0


def test_resume_bad_handoff_paths_are_value_errors(tmp_path: Path) -> None:
    """Missing, truncated and foreign handoff files raise HandoffError, a ValueError."""
    assert issubclass(HandoffError, ValueError)
    assert issubclass(HandoffError, BudgetError)
    (tmp_path / "trunc.json").write_text('{"kind": "budgetkit.handoff", "sch')
    (tmp_path / "foreign.json").write_text('{"model": "gpt-4o", "messages": []}')
    for name in ("missing.json", "trunc.json", "foreign.json"):
        with pytest.raises(HandoffError, match=name):
            SessionBudget.resume(tmp_path / name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pending_tasks": ["\ud800"]}, "pending_tasks is not valid Unicode"),
        ({"context_summary": "x\udc00"}, "context_summary is not valid Unicode"),
        ({"resume_instructions": "\ud800"}, "resume_instructions is not valid Unicode"),
    ],
)
def test_update_handoff_refuses_what_the_loader_would_refuse(
    kwargs: dict[str, Any], match: str
) -> None:
    """A session never writes a handoff its loader refuses: lone surrogates are refused when
    they are given."""
    with SessionBudget(handoff_dir=None) as s, pytest.raises(BudgetConfigError, match=match):
        s.update_handoff(**kwargs)


def test_update_handoff_refuses_deep_nesting() -> None:
    """Nesting deeper than the loader's bound (100 levels) is refused when given."""
    nested: list[Any] = []
    inner = nested
    for _ in range(150):
        inner.append([])
        inner = inner[0]
    with SessionBudget(handoff_dir=None) as s, pytest.raises(BudgetConfigError, match="nested"):
        s.update_handoff(pending_tasks=nested)


def test_a_name_with_a_lone_surrogate_is_refused() -> None:
    """The session's name is written into its handoff: a lone surrogate is refused up front."""
    with pytest.raises(BudgetConfigError, match="name is not valid Unicode"):
        SessionBudget(name="agent \ud800", handoff_dir=None)
