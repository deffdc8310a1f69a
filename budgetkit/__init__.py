"""budgetkit: hard, observable, resumable budgets for AI-agent code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import budget
from ._lineage import Lineage
from ._session import SessionBudget
from ._usage import Usage
from ._values import Remaining, SessionResult, SessionUsage
from ._version import VERSION
from .exceptions import (
    AccountExhaustedError,
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
    JoinRefusedError,
    LedgerError,
    LedgerUnavailableError,
    LedgerUnavailableWarning,
    SessionNotFoundError,
    StepTimeoutError,
    UnbudgetedCallWarning,
    UnmeasuredUsageWarning,
)

__all__ = [
    "Account",
    "AccountExhaustedError",
    "AccountUsage",
    "BudgetConfigError",
    "BudgetError",
    "BudgetExhausted",
    "BudgetTypeError",
    "BudgetWarning",
    "ChainCapError",
    "ChainError",
    "CostUnknownWarning",
    "ExtendRequest",
    "GiveUp",
    "Grant",
    "Handoff",
    "HandoffClaimedError",
    "HandoffError",
    "JoinRefusedError",
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
    "UnbudgetedCallWarning",
    "UnmeasuredUsageWarning",
    "Usage",
    "budget",
    "instrument",
    "parse_give_up",
    "pending_handoffs",
    "run_chain",
    "run_chain_async",
    "uninstrument",
]

__version__ = VERSION

if TYPE_CHECKING:
    from ._account import Account, AccountUsage
    from ._chain import PendingHandoff, pending_handoffs, run_chain, run_chain_async
    from ._extend import ExtendRequest, Grant
    from ._giveup import GiveUp, parse_give_up
    from ._handoff import Handoff
    from ._instrument import instrument, uninstrument

#: Loaded when first asked for, to keep ``import budgetkit`` light: chains (file claims)
#: and instrument/uninstrument (wrapt's import hooks), extend-in-place grants, accounts,
#: handoff files and give-up notes.
_LAZY = {
    "Account": "_account",
    "AccountUsage": "_account",
    "GiveUp": "_giveup",
    "parse_give_up": "_giveup",
    "Handoff": "_handoff",
    "PendingHandoff": "_chain",
    "pending_handoffs": "_chain",
    "run_chain": "_chain",
    "run_chain_async": "_chain",
    "instrument": "_instrument",
    "uninstrument": "_instrument",
    "ExtendRequest": "_extend",
    "Grant": "_extend",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
