"""Limits of a session: validation and the names used everywhere."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, InvalidOperation
from typing import Any, Final

from .exceptions import BudgetConfigError, BudgetTypeError

#: Count limits admit exactly N calls; the rest are measured and tripped when strictly exceeded.
COUNT_LIMITS = ("max_steps", "max_llm_calls")

#: The largest USD amount budgetkit takes: a limit, a charge, an estimate, a reservation, or an
#: amount read from a handoff. Larger ones raise ``BudgetConfigError`` (``HandoffError`` in a file).
MAX_USD: Final = Decimal("1E+15")
#: Decimal places kept of a USD amount given to budgetkit. Finer digits are rounded away when the
#: amount enters (up for charges, estimates and reservations; down for limits), which changes no
#: count: one unit of money is 10^-18 USD. It bounds the work on a crafted tiny exponent.
USD_PLACES: Final = 30
_PLACE: Final = Decimal(1).scaleb(-USD_PLACES)
#: Room for every digit of an amount within the bounds (15 + 30 places, and some).
_ROUNDING: Final = Context(prec=USD_PLACES + 30)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The limits of one session; ``None`` means unlimited."""

    max_steps: int | None = None
    max_llm_calls: int | None = None
    max_tokens: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_usd: Decimal | None = None
    max_seconds: float | None = None
    max_consecutive_errors: int | None = None
    max_repeats: int | None = None

    @classmethod
    def build(cls, **values: Any) -> Limits:
        """Validate raw keyword values and return ``Limits``; a clear error names the bad one."""
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                checked[name] = None
            elif name == "max_usd":
                checked[name] = to_usd(value, name, limit=True)
            elif name == "max_seconds":
                checked[name] = seconds(value, name)
            else:
                checked[name] = positive_int(value, name)
        return cls(**checked)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (USD as a string, to stay exact)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Decimal) else value
        return out

    def limited(self) -> dict[str, Any]:
        """Only the limits that are set."""
        pairs = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {k: v for k, v in pairs if v is not None}


LIMIT_NAMES = tuple(f.name for f in fields(Limits))


def positive_int(value: object, name: str) -> int:
    """Validate a count limit: a positive int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BudgetTypeError(f"{name} must be a positive int or None, got {value!r}")
    if value <= 0:
        raise BudgetConfigError(f"{name} must be a positive int or None, got {value!r}")
    return value


def seconds(value: object, name: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BudgetTypeError(f"{name} must be a positive number of seconds or None, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        raise BudgetConfigError(
            f"{name} must be a positive, finite number of seconds or None, got {value!r}"
        )
    return seconds


def to_usd(value: object, name: str, *, allow_zero: bool = False, limit: bool = False) -> Decimal:
    """Turn an int, float or Decimal into an exact, finite, positive Decimal.

    At most :data:`MAX_USD`; digits past :data:`USD_PLACES` decimal places are rounded up, or
    down for a ``limit`` (which must stay positive: at least 10^-30 USD).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        if isinstance(value, str):  # strings are for configuration files and env variables
            raise BudgetTypeError(
                f"{name} must be a number of US dollars, got the string {value!r}: in Python, "
                f"Decimal({value!r}) is the exact form (decimal strings are read from "
                "budgetkit.toml and BUDGETKIT_* environment variables)"
            )
        raise BudgetTypeError(f"{name} must be a number of US dollars, got {value!r}")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:  # pragma: no cover - str() of a number always parses
        raise BudgetConfigError(f"{name} must be a number of US dollars, got {value!r}") from None
    if not amount.is_finite() or amount < 0 or (amount == 0 and not allow_zero):
        qualifier = "non-negative" if allow_zero else "positive"
        raise BudgetConfigError(f"{name} must be a {qualifier}, finite number, got {value!r}")
    if amount > MAX_USD:
        raise BudgetConfigError(
            f"{name} must be at most 1E+15 US dollars (budgetkit's bound on any amount), "
            f"got {value!r}"
        )
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -USD_PLACES:
        amount = _round_places(amount, ROUND_FLOOR if limit else ROUND_CEILING)
        if amount == 0 and not allow_zero:
            raise BudgetConfigError(
                f"{name} must be a positive, finite number of at least 1E-30 US dollars, "
                f"got {value!r}"
            )
    return amount


def _round_places(amount: Decimal, rounding: str) -> Decimal:
    """``amount`` rounded to :data:`USD_PLACES` places, without trailing zeros; cheap for any
    exponent (no digit is expanded)."""
    rounded = amount.quantize(_PLACE, rounding=rounding, context=_ROUNDING)
    rounded = rounded.normalize(_ROUNDING)
    exponent = rounded.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:  # 1E+3: back to 1000
        rounded = rounded.quantize(Decimal(1), context=_ROUNDING)
    return rounded


def non_negative_int(value: object, name: str) -> int:
    """Validate a token count given by the user."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BudgetTypeError(f"{name} must be a non-negative int, got {value!r}")
    if value < 0:
        raise BudgetConfigError(f"{name} must be a non-negative int, got {value!r}")
    return value
