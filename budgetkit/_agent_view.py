"""The agent's view of its budget: phase, status line, and the checks of its settings."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from ._session import SessionBudget
    from ._values import SessionUsage

PHASES = ("explore", "converge", "deliver")
DEFAULT_PHASE_BOUNDS = (0.6, 0.9)


def phase_of(used_fractions: dict[str, float], bounds: tuple[float, float]) -> str:
    """From the most-used limit: ``explore`` below the first bound, ``converge`` below the
    second, else ``deliver``."""
    most_used = max(used_fractions.values(), default=0.0)
    if most_used < bounds[0]:
        return PHASES[0]
    if most_used < bounds[1]:
        return PHASES[1]
    return PHASES[2]


def status_line(session: SessionBudget, used: SessionUsage) -> str:
    """``Budget: 23 of 50 steps left, $0.42 of $1.00 left, 4 min left. Phase: converge.``

    One snapshot (``used``) for every figure on the line.
    """
    from ._policy import DIMENSIONS, fractions, remaining

    lim = session.limits
    step_room, usd_room = session.place.room()
    left = remaining(lim, used, step_room=step_room, usd_room=usd_room)
    parts: list[str] = []
    for d in DIMENSIONS:
        limit = getattr(lim, d.limit)
        value = None if d.usage is None else getattr(left, d.usage)
        if limit is None or value is None:
            continue
        if d.label is not None:
            parts.append(f"{value} of {limit} {d.label} left")
        elif d.limit == "max_usd":
            parts.append(f"{_usd(value)} of {_usd(limit)} left")
        elif d.limit == "max_seconds":
            parts.append(f"{_duration(value)} left")
    budget = ", ".join(parts) if parts else "unlimited"
    phase = phase_of(fractions(lim, used), session.phases)
    return f"Budget: {budget}. Phase: {phase}."


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
