"""The settings of a session other than its limits: checked once, with a clear error each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _config
from ._agent_view import check_callback, check_fraction, check_fractions
from ._limits import LIMIT_NAMES
from ._lineage import CHAIN_CAPS
from .exceptions import BudgetConfigError, BudgetTypeError

#: ``SessionBudget(handoff_dir=...)`` not given: ``$BUDGETKIT_HANDOFF_DIR`` or ``./handoffs``.
DEFAULT_DIR: Any = object()

#: The local settings (not limits) a session takes.
SETTINGS = (
    "name",
    "handoff_dir",
    "raise_on_exhausted",
    "prices",
    "on_unknown_cost",
    "thresholds",
    "on_threshold",
    "on_phase_change",
    "phases",
    "reserve_for_wrapup",
    "session_log",
    "on_ledger_error",
    "threads",
    "on_exhausted",
    "on_exhausted_timeout",
)

#: Every keyword of ``SessionBudget()`` (and so of ``resume()``).
KEYWORDS = frozenset({*LIMIT_NAMES, *CHAIN_CAPS, *SETTINGS, "session_id", "ledger", "account"})


def check_settings(**values: Any) -> dict[str, Any]:
    """The local settings, validated and normalised; raises naming the bad one."""
    name = values["name"]
    if name is not None and not isinstance(name, str):
        raise BudgetTypeError(f"name must be a str or None, got {name!r}")
    if name is not None:
        from ._files import document_problem

        problem = document_problem(name)  # the handoff records it; its loader would refuse it
        if problem is not None:
            raise BudgetConfigError(f"name is {problem}")
    raise_on_exhausted = values["raise_on_exhausted"]
    if not isinstance(raise_on_exhausted, bool):
        raise BudgetTypeError(f"raise_on_exhausted must be a bool, got {raise_on_exhausted!r}")
    on_unknown_cost = values["on_unknown_cost"]
    if on_unknown_cost not in ("warn", "error", None):
        raise BudgetConfigError(
            f"on_unknown_cost must be 'warn', 'error' or None, got {on_unknown_cost!r}"
        )
    threads = values["threads"]
    if threads not in ("explicit", "inherit"):
        raise BudgetConfigError(f"threads must be 'explicit' or 'inherit', got {threads!r}")
    phases = values["phases"]
    bounds = check_fractions(phases, "phases", upper_inclusive=True)
    if len(bounds) != 2:
        raise BudgetConfigError(f"phases must be two fractions (converge, deliver), got {phases!r}")
    reserve = values["reserve_for_wrapup"]
    session_log = values["session_log"]
    if session_log is not None and not isinstance(session_log, str | os.PathLike):
        raise BudgetTypeError(f"session_log must be a path or None, got {session_log!r}")
    on_ledger_error = values["on_ledger_error"]
    if on_ledger_error not in ("closed", "open"):
        raise BudgetConfigError(
            f"on_ledger_error must be 'closed' or 'open', got {on_ledger_error!r}"
        )
    on_exhausted = values.get("on_exhausted")
    if on_exhausted is not None and not callable(on_exhausted):
        raise BudgetTypeError(f"on_exhausted must be a callable or None, got {on_exhausted!r}")
    from ._limits import seconds

    return {
        "on_exhausted": on_exhausted,
        "on_exhausted_timeout": seconds(
            values.get("on_exhausted_timeout", 30.0), "on_exhausted_timeout"
        ),
        "name": name,
        "handoff_dir": _handoff_dir(values["handoff_dir"]),
        "raise_on_exhausted": raise_on_exhausted,
        "prices": _prices(values["prices"]),
        "on_unknown_cost": on_unknown_cost,
        "thresholds": check_fractions(values["thresholds"], "thresholds"),
        "on_threshold": check_callback(values["on_threshold"], "on_threshold"),
        "on_phase_change": check_callback(values["on_phase_change"], "on_phase_change"),
        "phases": (bounds[0], bounds[1]),
        "reserve_for_wrapup": None
        if reserve is None
        else check_fraction(reserve, "reserve_for_wrapup"),
        "session_log": session_log,
        "on_ledger_error": on_ledger_error,
        "threads": threads,
    }


def _handoff_dir(value: object) -> Path | None:
    if value is DEFAULT_DIR:
        return _config.default_handoff_dir()
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        if str(value) == "":
            raise BudgetConfigError("handoff_dir must be a directory path or None, got ''")
        return Path(value)
    raise BudgetTypeError(f"handoff_dir must be a path or None, got {value!r}")


def _prices(prices: object) -> dict[str, Any]:
    if prices is None:
        return {}
    from ._pricing import validate_prices

    return validate_prices(prices)
