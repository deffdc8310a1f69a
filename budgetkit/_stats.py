"""Calibration: what finished sessions used, and what limits to set.

:func:`compute_stats` summarises session-log records (see ``budgetkit._session_log``) per
dimension: p50, p95 and max, how often that dimension's limit stopped a session, and a
recommended limit.

Percentiles use the **nearest-rank** method: the p-th percentile of ``n`` sorted values is
the value at 1-based rank ``ceil(p / 100 * n)``. It is always an observed value (no
interpolation), so it is exact for ints and ``Decimal`` costs alike: for the values
1..1000, p50 is 500 and p95 is 950.

The recommended limit is the p95 plus 20% headroom, rounded *up*: ``ceil(p95 * 1.2)`` for
steps, LLM calls, tokens and seconds (whole seconds), and ``p95 * 1.2`` rounded up to the
cent for USD. The arithmetic is decimal, so a p95 of 10 recommends 12 (not 13 through float
error). A dimension whose p95 is 0 gets no recommendation. Sessions stopped by a limit
used *at least* that much, so when many were stopped the recommendation is a lower bound.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from typing import Any, TypeVar

from ._session_log import record_problem, usage_decimal
from .exceptions import BudgetConfigError, BudgetTypeError

__all__ = [
    "DIMENSIONS",
    "HEADROOM",
    "DimensionStats",
    "Stats",
    "compute_stats",
    "percentile",
    "recommend",
]

#: ``(usage field, limit that caps it)`` for each dimension, in display order.
DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("steps", "max_steps"),
    ("llm_calls", "max_llm_calls"),
    ("total_tokens", "max_tokens"),
    ("cost_usd", "max_usd"),
    ("elapsed_seconds", "max_seconds"),
)

#: The recommended limit is the p95 times this, rounded up.
HEADROOM = Decimal("1.2")

_CENT = Decimal("0.01")

Number = int | float | Decimal
_T = TypeVar("_T", int, float, Decimal)


def percentile(sorted_values: Sequence[_T], q: float) -> _T:
    """Nearest-rank percentile: the value at 1-based rank ``ceil(q / 100 * n)``.

    Args:
        sorted_values: the values, sorted ascending; at least one.
        q: the percentile, ``0 < q <= 100``.

    Raises:
        BudgetConfigError: no values, or ``q`` out of range.
    """
    if not sorted_values:
        raise BudgetConfigError("percentile() of no values")
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q <= 100:
        raise BudgetConfigError(f"percentile must be in (0, 100], got {q!r}")
    rank = math.ceil(Fraction(q) * len(sorted_values) / 100)
    return sorted_values[max(rank, 1) - 1]


def recommend(dimension: str, p95: Number) -> int | Decimal | None:
    """The recommended limit for a dimension from its p95 (see the module docstring).

    Args:
        dimension: a usage field of :data:`DIMENSIONS`.
        p95: the dimension's 95th percentile.

    Returns:
        An int (counts, whole seconds), a ``Decimal`` in cents (USD), or ``None`` when
        ``p95`` is 0.
    """
    if dimension not in dict(DIMENSIONS):
        raise BudgetConfigError(f"unknown dimension {dimension!r}")
    amount = Decimal(str(p95)) if isinstance(p95, float) else Decimal(p95)
    if amount <= 0:
        return None
    scaled = amount * HEADROOM
    if dimension == "cost_usd":
        return scaled.quantize(_CENT, rounding=ROUND_CEILING)
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class DimensionStats:
    """One dimension's distribution over the sessions.

    .. versionadded:: 0.1.0
    """

    name: str
    """The usage field: ``steps``, ``llm_calls``, ``total_tokens``, ``cost_usd`` ..."""
    limit_name: str
    """The limit that caps it (``max_steps`` ...)."""
    count: int
    """Sessions measured."""
    p50: Number | None
    p95: Number | None
    max: Number | None
    recommended: int | Decimal | None
    """p95 plus 20% headroom, rounded up; ``None`` without data or when p95 is 0."""
    limits: tuple[Number, ...] = ()
    """The distinct limits configured on the sessions, ascending (unlimited ones left out)."""
    stopped: int = 0
    """Sessions whose ``stop_reason`` is this dimension's limit."""
    values: tuple[Number, ...] = field(default=(), repr=False)
    """Every session's value, ascending (for plots)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (USD as exact strings; ``values`` left out)."""
        return {
            "name": self.name,
            "limit_name": self.limit_name,
            "count": self.count,
            "p50": _json(self.p50),
            "p95": _json(self.p95),
            "max": _json(self.max),
            "recommended": _json(self.recommended),
            "limits": [_json(v) for v in self.limits],
            "stopped": self.stopped,
        }


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of a set of session records.

    .. versionadded:: 0.1.0
    """

    sessions: int
    """Records summarised."""
    dimensions: tuple[DimensionStats, ...]
    """One entry per dimension of :data:`DIMENSIONS`, in that order."""
    stop_reasons: dict[str, int]
    """How many sessions ended for each reason (``completed``, ``max_steps`` ...), most first."""
    unpriced_sessions: int = 0
    """Sessions with LLM calls of unknown cost: their ``cost_usd`` is a lower bound."""

    def dimension(self, name: str) -> DimensionStats:
        """The stats of one dimension by usage field name."""
        for dim in self.dimensions:
            if dim.name == name:
                return dim
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {
            "sessions": self.sessions,
            "percentile_method": "nearest-rank",
            "recommendation_rule": "ceil(p95 * 1.2); USD rounded up to the cent",
            "dimensions": {d.name: d.to_dict() for d in self.dimensions},
            "stop_reasons": dict(self.stop_reasons),
            "unpriced_sessions": self.unpriced_sessions,
        }


def compute_stats(records: Iterable[Mapping[str, Any]]) -> Stats:
    """Summarise session records (as written by ``session_record``).

    Args:
        records: session-log records, e.g. ``(r for _, r in read_records(path))``.

    Returns:
        The :class:`Stats`; with no records every dimension has ``count`` 0 and ``None``
        percentiles.

    Raises:
        BudgetTypeError: a record is not a mapping.
        BudgetConfigError: a record lacks a valid ``usage`` or ``stop_reason`` (the message
            gives its 0-based index and the problem).
    """
    columns: dict[str, list[Any]] = {name: [] for name, _ in DIMENSIONS}
    limit_sets: dict[str, set[Any]] = {name: set() for name, _ in DIMENSIONS}
    reasons: Counter[str] = Counter()
    unpriced = 0
    sessions = 0
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise BudgetTypeError(f"record {index} is not a mapping: {record!r}")
        problem = record_problem(record)
        if problem is not None:
            raise BudgetConfigError(f"record {index}: {problem}")
        sessions += 1
        usage = record["usage"]
        reasons[record["stop_reason"]] += 1
        if _positive_int(usage.get("unpriced_calls")):
            unpriced += 1
        limits = record.get("limits") or {}
        for name, limit_name in DIMENSIONS:
            value = usage[name]
            columns[name].append(usage_decimal(value) if name == "cost_usd" else value)
            limit = _limit_value(name, limits.get(limit_name))
            if limit is not None:
                limit_sets[name].add(limit)

    dimensions = []
    for name, limit_name in DIMENSIONS:
        values = sorted(columns[name])
        if values:
            p50, p95, top = percentile(values, 50), percentile(values, 95), values[-1]
            recommended = recommend(name, p95)
        else:
            p50 = p95 = top = recommended = None
        dimensions.append(
            DimensionStats(
                name=name,
                limit_name=limit_name,
                count=len(values),
                p50=p50,
                p95=p95,
                max=top,
                recommended=recommended,
                limits=tuple(sorted(limit_sets[name])),
                stopped=reasons.get(limit_name, 0),
                values=tuple(values),
            )
        )
    ordered = dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0])))
    return Stats(
        sessions=sessions,
        dimensions=tuple(dimensions),
        stop_reasons=ordered,
        unpriced_sessions=unpriced,
    )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _limit_value(dimension: str, value: object) -> Number | None:
    """A configured limit from a record's ``limits`` (``None``, or invalid, is left out)."""
    if dimension == "cost_usd":
        amount = usage_decimal(value)
        return amount if amount else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value


def _json(value: Number | None) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return round(value, 6)
    return value
