"""budgetkit: hard, observable, resumable budgets for AI-agent code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import budget
from ._handoff import Handoff
from ._session import Remaining, SessionBudget, SessionResult, SessionUsage
from ._usage import Usage
from .exceptions import (
    BudgetConfigError,
    BudgetError,
    BudgetExhausted,
    BudgetTypeError,
    BudgetWarning,
    CostUnknownWarning,
    HandoffError,
    StepTimeoutError,
    UnmeasuredUsageWarning,
)

__all__ = [
    "BudgetConfigError",
    "BudgetError",
    "BudgetExhausted",
    "BudgetTypeError",
    "BudgetWarning",
    "CostUnknownWarning",
    "Handoff",
    "HandoffError",
    "Remaining",
    "SessionBudget",
    "SessionResult",
    "SessionUsage",
    "StepTimeoutError",
    "UnmeasuredUsageWarning",
    "Usage",
    "budget",
    "instrument",
    "uninstrument",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ._instrument import instrument, uninstrument


def __getattr__(name: str) -> Any:
    # instrument/uninstrument load wrapt's import hooks only when asked for.
    if name in ("instrument", "uninstrument"):
        from . import _instrument

        return getattr(_instrument, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
