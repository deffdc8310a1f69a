"""budgetkit: hard, observable, resumable budgets for AI-agent code."""

from __future__ import annotations

from . import budget
from ._handoff import Handoff
from ._instrument import instrument, uninstrument
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
    "UnmeasuredUsageWarning",
    "Usage",
    "budget",
    "instrument",
    "uninstrument",
]

__version__ = "0.1.0"
