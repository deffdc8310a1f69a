"""Ledgers: where a session's counters live, and how admission is made atomic.

A :class:`~budgetkit.SessionBudget` holds exactly one ledger session. By default it is an
:class:`InProcessLedger`'s (the fast path: a few integer adds under one lock). A server ledger
keeps the counters there instead, so worker processes and machines can join one session and
share one budget: :class:`budgetkit.ledgers.redis.RedisLedger` (Redis or Valkey,
the ``[redis]`` extra), or :class:`budgetkit.ledgers.embedded.EmbeddedLedger`, served
by one process to the processes on the same machine that can open its Unix socket (what
``budgetkit run`` uses for its child processes). All apply the same rules
(``budgetkit._policy``).

A ledger hands out :class:`LedgerSession` handles (``create`` for a new session, ``join`` for an
existing one). Every operation of a handle is one atomic operation on the server.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Protocol

from ._snapshot import LedgerSnapshot

if TYPE_CHECKING:
    from collections.abc import Mapping
    from decimal import Decimal

    from .._account import Account
    from .._limits import Limits
    from .._policy import Counters, Tally
    from .._terms import AccountTerms, AccountUsage
    from .._usage import Counts
    from .._windows import Buckets

__all__ = [
    "LEDGER_URL_ENV",
    "InProcessLedger",
    "Ledger",
    "LedgerSession",
    "LedgerSnapshot",
    "ledger_for_url",
    "ledger_from_env",
]

#: ``SessionBudget(ledger=None)`` uses the ledger at this URL when the variable is set and not
#: empty: a Redis URL, or an embedded ledger's ``budgetkit+unix://`` (:func:`ledger_for_url`).
LEDGER_URL_ENV = "BUDGETKIT_LEDGER_URL"


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
        tool_cap: int | None = None,
        digest: str | None = None,
    ) -> str | None:
        """Check and count one call (``"step"``, ``"llm"``, or ``None`` for a reservation
        alone), holding ``reserve`` units; ``None`` when admitted, else the refusal reason.

        ``tool_cap``: a step of tool ``name`` may run at most that many times in the session
        (refused with ``max_tool_calls`` after the step limits, before the reservation); the
        ledger counts the tool's calls by name (:attr:`LedgerSnapshot.tool_calls`).

        ``digest``: a step's call digest (``budgetkit._digest``). An admitted step with the
        same digest as the previous one lengthens the run of repeats, any other step starts
        it again; a run reaching ``max_repeats`` trips ``loop_detected``."""
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

    def extend(
        self, limits: Limits, *, step_room: int | None = None, usd_room: Decimal | None = None
    ) -> str | None:
        """Replace the session's limits by ``limits`` (a grant: larger or equal ones) and lift
        the latch, atomically; a measured limit still crossed trips again (returned)."""
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
        account: AccountTerms | None = None,
    ) -> LedgerSession:
        """Store a new session with its limits; an existing id is an error. ``account``:
        every call of the session is also checked against and charged to that account's
        current window, in the same atomic operation (``budgetkit._policy.ACCOUNT_CHECKS``)."""
        ...

    def account_usage(self, account: AccountTerms, buckets: Buckets) -> tuple[Tally, int]:
        """The usage of ``account`` in the window ``buckets`` and the USD units its
        sessions' open reservations hold."""
        ...

    def account_usages(self) -> list[AccountUsage]:
        """Every account in the ledger, in its current window (``budgetkit accounts``)."""
        ...

    def join(self, session_id: str) -> LedgerSession:
        """A handle on an existing session; unknown or expired raises ``SessionNotFoundError``."""
        ...


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


def check_account_ledger(account: Account, ledger: Ledger | None, given: bool) -> Ledger | None:
    """The ledger of a session of ``account``: the account's. A session ledger ``given``
    explicitly must be that one (the charge to both is one operation)."""
    if not given or ledger is account.ledger:
        return account.ledger
    from ..exceptions import BudgetConfigError

    where = "this process" if account.ledger is None else account.ledger.url
    raise BudgetConfigError(
        f"account {account.account_id!r} lives in {where}, but the session was given "
        f"ledger {getattr(ledger, 'url', ledger)!r}: a session and its account share one "
        "ledger (pass ledger=None, or the account's)"
    )


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
    """The ledger ``$BUDGETKIT_LEDGER_URL`` names, if set (see :func:`ledger_for_url`)."""
    url = os.environ.get(LEDGER_URL_ENV)
    if not url:
        return None
    return ledger_for_url(url, **kwargs)


def ledger_for_url(url: str, **kwargs: Any) -> Ledger:
    """The ledger at ``url``, by its scheme: ``budgetkit+unix://`` an
    :class:`~budgetkit.ledgers.embedded.EmbeddedLedger`; ``redis://``, ``rediss://`` and
    ``unix://`` (Redis on a Unix socket) a :class:`~budgetkit.ledgers.redis.RedisLedger`.
    Keywords go to the ledger's constructor."""
    if url.partition(":")[0].lower() == "budgetkit+unix":
        from .embedded import EmbeddedLedger

        return EmbeddedLedger(url, **kwargs)
    from .redis import RedisLedger

    return RedisLedger(url, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "InProcessLedger":
        from .inprocess import InProcessLedger

        return InProcessLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
