"""Ledgers: where a session's counters live when more than one process shares them.

A :class:`~budgetkit.SessionBudget` keeps its counters in the process by default (the fast
path: a few integer adds under one lock). A *ledger* keeps them on a server instead, so worker
processes and machines can join one session and share one budget. budgetkit ships one,
:class:`budgetkit.ledgers.redis.RedisLedger` (Redis or Valkey, ``pip install 'budgetkit[redis]'``).

A ledger hands out :class:`LedgerSession` handles (``create`` for a new session, ``join`` for an
existing one). Every operation of a handle is one atomic operation on the server.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._limits import Limits
    from .._usage import Usage

__all__ = ["LEDGER_URL_ENV", "Ledger", "LedgerSession", "LedgerSnapshot", "ledger_from_env"]

#: ``SessionBudget(ledger=None)`` uses a :class:`~budgetkit.ledgers.redis.RedisLedger` on this
#: URL when the variable is set and not empty.
LEDGER_URL_ENV = "BUDGETKIT_LEDGER_URL"


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """One consistent read of a shared session's counters and state."""

    steps: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    """Sum of the known costs."""
    reserved_usd: Decimal = Decimal(0)
    """USD held by live reservations (expired ones are already released)."""
    unpriced_calls: int = 0
    unmeasured_calls: int = 0
    errors_in_a_row: int = 0
    reason: str | None = None
    """Latched: the session is exhausted for this reason."""
    tripped: str | None = None
    """A measured limit was crossed; the next boundary latches it."""
    refused: str | None = None
    """The name of the call that was refused when the session latched."""
    elapsed_seconds: float = 0.0
    """Seconds since the session was created, by the server's clock."""
    handoff_writer: str | None = None
    """The handle that won :meth:`LedgerSession.claim_handoff_writer`, if any."""


class LedgerSession(Protocol):
    """One process's handle on a shared session (see :class:`Ledger`)."""

    session_id: str
    limits: Limits
    name: str | None
    reserve_for_wrapup: float | None
    parent_session_id: str | None
    extra: dict[str, Any]
    url: str
    """Where the ledger lives (password removed), for error messages."""
    errors_seen: bool
    """The last admission saw a run of consecutive errors (a success should reset it)."""

    def new_op_id(self) -> str:
        """A fresh operation id; an operation retried with the same id is applied once."""
        ...

    def admit(
        self,
        kind: str | None,
        reserve_usd: Decimal | None = None,
        *,
        name: str = "",
        wrapup: bool = False,
        op_id: str | None = None,
    ) -> str | None:
        """Check and count one call; ``None`` when admitted, else the refusal reason."""
        ...

    def record(
        self,
        usage: Usage | None,
        cost: Decimal | None,
        *,
        priced: bool,
        release: Decimal | None = None,
        op_id: str | None = None,
    ) -> str | None:
        """Add usage and cost, release reservation; return the tripped reason, if any."""
        ...

    def release(self, amount: Decimal, *, op_id: str | None = None) -> None:
        """Give back ``amount`` of this handle's reservations."""
        ...

    def fail(self, *, op_id: str | None = None) -> str | None:
        """Count a failed call; return the tripped reason, if any."""
        ...

    def succeed(self) -> None:
        """Reset the run of consecutive errors."""
        ...

    def trip(self, reason: str) -> None:
        """Mark a limit as crossed (first wins); the next boundary latches it."""
        ...

    def latch(self, reason: str, name: str = "") -> str:
        """Latch the session as exhausted (first wins); return the latched reason."""
        ...

    def claim_handoff_writer(self) -> bool:
        """Whether this handle is the one that writes the handoff (exactly one wins)."""
        ...

    def snapshot(self) -> LedgerSnapshot:
        """The session's counters and state now."""
        ...


class Ledger(Protocol):
    """Where shared sessions live."""

    url: str

    def create(
        self,
        session_id: str,
        limits: Limits,
        *,
        name: str | None = None,
        reserve_for_wrapup: float | None = None,
        parent_session_id: str | None = None,
        step_room: int | None = None,
        usd_room: Decimal | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> LedgerSession:
        """Store a new session with its limits; an existing id is an error."""
        ...

    def join(self, session_id: str) -> LedgerSession:
        """A handle on an existing session; unknown or expired raises ``SessionNotFoundError``."""
        ...


def ledger_from_env(**kwargs: Any) -> Ledger | None:
    """A :class:`~budgetkit.ledgers.redis.RedisLedger` on ``$BUDGETKIT_LEDGER_URL``, if set."""
    url = os.environ.get(LEDGER_URL_ENV)
    if not url:
        return None
    from .redis import RedisLedger

    return RedisLedger(url, **kwargs)
