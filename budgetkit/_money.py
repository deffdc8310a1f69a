"""USD as integers of 10^-18 USD ("units"): exact, and cheap to add on every call.

Every counter of spent or reserved USD (in process and in a shared ledger) holds units.
An amount with more than 18 decimal places is rounded up, so a charge is never lowered;
a limit is rounded down, so ``spent > limit`` reads the same in units as in USD.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

#: Decimal places of one unit.
SCALE: Final = 18
UNITS_PER_USD: Final = 10**SCALE


def _split(amount: Decimal) -> tuple[int, int]:
    """``(value, exponent)`` with ``amount == value * 10**exponent`` (sign kept)."""
    sign, digits, exponent = amount.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"USD amounts must be finite, got {amount}")
    value = int("".join(map(str, digits)) or "0")
    return (-value if sign else value), exponent


def to_units(amount: Decimal) -> int:
    """``amount`` USD in units, rounded up (towards +infinity) past 18 places."""
    value, exponent = _split(amount)
    shift = exponent + SCALE
    if shift >= 0:
        factor: int = 10**shift
        return value * factor
    divisor: int = 10**-shift
    return -(-value // divisor)  # ceiling division


def to_units_floor(amount: Decimal) -> int:
    """``amount`` USD in units, rounded down past 18 places (for limits)."""
    return -to_units(amount.copy_negate())  # floor(x) == -ceil(-x); copy_negate is exact


def from_units(units: int) -> Decimal:
    """The exact USD of ``units``, without trailing zeros (``Decimal("0.00036")``)."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_USD)
    digits = f"{frac:0{SCALE}d}".rstrip("0")
    return Decimal(f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}")


def to_float(units: int) -> float:
    """``units`` as a float of USD, for metrics and span attributes."""
    return units / UNITS_PER_USD
