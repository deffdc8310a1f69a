"""The agent's view of its budget: fractions used, phase, status line, soft thresholds."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from ._session import SessionBudget, SessionUsage

PHASES = ("explore", "converge", "deliver")
DEFAULT_PHASE_BOUNDS = (0.6, 0.9)

#: dimension -> (limit attribute, usage attribute)
DIMENSIONS = {
    "steps": ("max_steps", "steps"),
    "llm_calls": ("max_llm_calls", "llm_calls"),
    "tokens": ("max_tokens", "total_tokens"),
    "input_tokens": ("max_input_tokens", "input_tokens"),
    "output_tokens": ("max_output_tokens", "output_tokens"),
    "usd": ("max_usd", "cost_usd"),
    "seconds": ("max_seconds", "elapsed_seconds"),
}


def fractions(session: SessionBudget, used: SessionUsage) -> dict[str, float]:
    """Fraction of each *limited* dimension used so far (may exceed 1)."""
    out: dict[str, float] = {}
    for dim, (limit_name, used_name) in DIMENSIONS.items():
        limit = getattr(session.limits, limit_name)
        if limit is not None:
            out[dim] = float(getattr(used, used_name)) / float(limit)
    return out


def phase_of(used_fractions: dict[str, float], bounds: tuple[float, float]) -> str:
    """From the most-used limit: ``explore`` below the first bound, ``converge`` below the
    second, else ``deliver``."""
    most_used = max(used_fractions.values(), default=0.0)
    if most_used < bounds[0]:
        return PHASES[0]
    if most_used < bounds[1]:
        return PHASES[1]
    return PHASES[2]


def status_line(session: SessionBudget) -> str:
    """``Budget: 23 of 50 steps left, $0.42 of $1.00 left, 4 min left. Phase: converge.``"""
    used = session.usage  # one snapshot for every figure on the line
    lim = session.limits
    left = session._remaining_from(used)
    parts: list[str] = []
    counts = (
        ("steps", lim.max_steps, left.steps),
        ("LLM calls", lim.max_llm_calls, left.llm_calls),
        ("tokens", lim.max_tokens, left.total_tokens),
        ("input tokens", lim.max_input_tokens, left.input_tokens),
        ("output tokens", lim.max_output_tokens, left.output_tokens),
    )
    for label, limit, remaining in counts:
        if limit is not None and remaining is not None:
            parts.append(f"{remaining} of {limit} {label} left")
    if lim.max_usd is not None and left.cost_usd is not None:
        parts.append(f"{_usd(left.cost_usd)} of {_usd(lim.max_usd)} left")
    if lim.max_seconds is not None and left.elapsed_seconds is not None:
        parts.append(f"{_duration(left.elapsed_seconds)} left")
    budget = ", ".join(parts) if parts else "unlimited"
    return f"Budget: {budget}. Phase: {session._phase_for(used)}."


def _usd(value: Decimal) -> str:
    cents = value.quantize(Decimal("0.01"))
    return f"${cents}" if cents or not value else f"${value.normalize():f}"


def _duration(seconds: float) -> str:
    if seconds >= 60:
        return f"{math.floor(seconds / 60)} min"
    return f"{math.floor(seconds)} s"


def check_fractions(
    value: object, name: str, *, upper_inclusive: bool = False
) -> tuple[float, ...]:
    """Validate a sequence of fractions in (0, 1)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise BudgetTypeError(f"{name} must be a sequence of fractions in (0, 1), got {value!r}")
    out: list[float] = []
    for item in value:
        out.append(check_fraction(item, name, upper_inclusive=upper_inclusive))
    return tuple(sorted(out))


def check_fraction(value: object, name: str, *, upper_inclusive: bool = False) -> float:
    """Validate one fraction in (0, 1) (or (0, 1] when ``upper_inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise BudgetTypeError(f"{name} must be a fraction between 0 and 1, got {value!r}")
    f = float(value)
    too_big = f > 1 if upper_inclusive else f >= 1
    if not math.isfinite(f) or f <= 0 or too_big:
        bound = "(0, 1]" if upper_inclusive else "(0, 1)"
        raise BudgetConfigError(f"{name} must be a fraction in {bound}, got {value!r}")
    return f


def check_callback(value: object, name: str) -> Callable[..., Any] | None:
    """``None`` or a callable."""
    if value is not None and not callable(value):
        raise BudgetTypeError(f"{name} must be callable or None, got {value!r}")
    return value
