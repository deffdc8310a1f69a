"""Ledgers: where a session's counters live, and how admission is made atomic.

A :class:`~budgetkit.SessionBudget` holds exactly one ledger session. By default it is an
:class:`InProcessLedger`'s (the fast path: a few integer adds under one lock). A server ledger
keeps the counters there instead, so worker processes and machines can join one session and
share one budget: :class:`budgetkit.ledgers.redis.RedisLedger` (Redis or Valkey,
``pip install 'budgetkit[redis]'``). Both apply the same rules (``budgetkit._policy``).

A ledger hands out :class:`LedgerSession` handles (``create`` for a new session, ``join`` for an
existing one). Every operation of a handle is one atomic operation on the server.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._limits import Limits
    from .._policy import Counters
    from .._usage import Counts

__all__ = [
    "LEDGER_URL_ENV",
    "InProcessLedger",
    "Ledger",
    "LedgerSession",
    "LedgerSnapshot",
    "ledger_from_env",
]

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
    """One process's handle on a session in a ledger (see :class:`Ledger`).

    USD travels in integer units of 10^-18 USD (``budgetkit._money``), token counts as
    ``(input, output, cache read, cache write, reasoning)``. Every operation is atomic in the
    ledger and applies the rules of ``budgetkit._policy``.
    """

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
        reserve: int | None = None,
        *,
        name: str = "",
        wrapup: bool = False,
        op_id: str | None = None,
    ) -> str | None:
        """Check and count one call (``"step"``, ``"llm"``, or ``None`` for a reservation
        alone), holding ``reserve`` units; ``None`` when admitted, else the refusal reason."""
        ...

    def record(
        self,
        counts: Counts | None,
        cost: int | None,
        *,
        release: int = 0,
        op_id: str | None = None,
    ) -> str | None:
        """Add one call's counts (``None``: unmeasured) and cost in units (``None``: unpriced),
        give back ``release`` units of reservation; return the tripped reason, if any."""
        ...

    def release(self, amount: int, *, op_id: str | None = None) -> None:
        """Give back ``amount`` units of this handle's reservations."""
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

    def counters(self) -> Counters:
        """The counters as this handle last saw them, without a round trip (live in process,
        the last snapshot for a server): for span attributes, never for decisions."""
        ...

    def close(self) -> None:
        """This process is done with the session (its block exited): stop its clock."""
        ...


class Ledger(Protocol):
    """Where sessions live."""

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


def snapshot_of(c: Counters, *, elapsed: float, writer: str | None = None) -> LedgerSnapshot:
    """A :class:`LedgerSnapshot` of ``c``."""
    from .._money import from_units

    return LedgerSnapshot(
        steps=c.steps,
        llm_calls=c.llm_calls,
        input_tokens=c.input_tokens,
        output_tokens=c.output_tokens,
        cache_read_tokens=c.cache_read_tokens,
        cache_write_tokens=c.cache_write_tokens,
        reasoning_tokens=c.reasoning_tokens,
        cost_usd=from_units(c.cost),
        reserved_usd=from_units(c.reserved),
        unpriced_calls=c.unpriced_calls,
        unmeasured_calls=c.unmeasured_calls,
        errors_in_a_row=c.errors_in_a_row,
        reason=c.reason,
        tripped=c.tripped,
        refused=c.refused,
        elapsed_seconds=elapsed,
        handoff_writer=writer,
    )


def check_ledger(ledger: object) -> Ledger | None:
    """The ledger a session uses: the one given, else ``$BUDGETKIT_LEDGER_URL``'s, else none
    (in this process)."""
    if ledger is None:
        return env_ledger()
    if not (hasattr(ledger, "create") and hasattr(ledger, "join")):
        from ..exceptions import BudgetTypeError

        raise BudgetTypeError(
            f"ledger must be a budgetkit ledger (e.g. budgetkit.ledgers.redis.RedisLedger) "
            f"or None, got {ledger!r}"
        )
    return ledger  # type: ignore[return-value]


_ENV_LEDGERS: dict[str, Ledger] = {}
_ENV_LOCK = threading.Lock()


def env_ledger() -> Ledger | None:
    """One ledger per process for ``$BUDGETKIT_LEDGER_URL`` (so one connection pool)."""
    url = os.environ.get(LEDGER_URL_ENV)
    if not url:
        return None
    with _ENV_LOCK:
        ledger = _ENV_LEDGERS.get(url)
        if ledger is None:
            ledger = _ENV_LEDGERS[url] = ledger_from_env()  # type: ignore[assignment]
    return ledger


def ledger_from_env(**kwargs: Any) -> Ledger | None:
    """A :class:`~budgetkit.ledgers.redis.RedisLedger` on ``$BUDGETKIT_LEDGER_URL``, if set."""
    url = os.environ.get(LEDGER_URL_ENV)
    if not url:
        return None
    from .redis import RedisLedger

    return RedisLedger(url, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "InProcessLedger":
        from .inprocess import InProcessLedger

        return InProcessLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
