"""budgetkit: hard, observable, resumable budgets for AI-agent code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import budget
from ._chain import PendingHandoff, pending_handoffs, run_chain, run_chain_async
from ._handoff import Handoff
from ._lineage import Lineage
from ._session import Remaining, SessionBudget, SessionResult, SessionUsage
from ._usage import Usage
from .exceptions import (
    BudgetConfigError,
    BudgetError,
    BudgetExhausted,
    BudgetTypeError,
    BudgetWarning,
    ChainCapError,
    ChainError,
    CostUnknownWarning,
    HandoffClaimedError,
    HandoffError,
    LedgerError,
    LedgerUnavailableError,
    LedgerUnavailableWarning,
    SessionNotFoundError,
    StepTimeoutError,
    UnmeasuredUsageWarning,
)

__all__ = [
    "BudgetConfigError",
    "BudgetError",
    "BudgetExhausted",
    "BudgetTypeError",
    "BudgetWarning",
    "ChainCapError",
    "ChainError",
    "CostUnknownWarning",
    "Handoff",
    "HandoffClaimedError",
    "HandoffError",
    "LedgerError",
    "LedgerUnavailableError",
    "LedgerUnavailableWarning",
    "Lineage",
    "PendingHandoff",
    "Remaining",
    "SessionBudget",
    "SessionNotFoundError",
    "SessionResult",
    "SessionUsage",
    "StepTimeoutError",
    "UnmeasuredUsageWarning",
    "Usage",
    "budget",
    "instrument",
    "pending_handoffs",
    "run_chain",
    "run_chain_async",
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
