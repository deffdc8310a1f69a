"""Accounts: a budget that outlives sessions, per user, tenant or API key, per time window.

An :class:`Account` is a description (id, limits, window); its counters live in a ledger,
charged by the ledger in the same operation as the session's own counters. The rules are the
policy table's :data:`~budgetkit._policy.ACCOUNT_CHECKS`; windows are ``_windows``; what a
ledger needs of an account is ``_terms``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

from ._policy import account_over
from ._terms import AccountTerms, AccountUsage, check_account_id, check_limits
from ._windows import Window
from .exceptions import AccountExhaustedError, BudgetTypeError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import timedelta, tzinfo
    from decimal import Decimal

    from .ledgers import Ledger

__all__ = ["Account", "AccountUsage"]


def check_account(value: object) -> Account:
    """``SessionBudget(account=)`` must be an :class:`Account`."""
    if not isinstance(value, Account):
        raise BudgetTypeError(f"account must be a budgetkit.Account or None, got {value!r}")
    return value


class Account:
    """A budget that outlives sessions: what one user (tenant, API key ...) may spend per window.

    Args:
        account_id: any non-empty str (at most 256 characters).
        max_usd: US dollars per window.
        max_steps: ``@budget.step`` calls per window.
        max_llm_calls: ``@budget.llm_call`` calls per window.
        max_tokens: total (input + output) tokens per window.
        window: ``"hour"``, ``"day"`` (the default), ``"month"`` or a ``timedelta``.
        tz: the timezone of calendar windows (a ``tzinfo`` or a zone name; UTC by default).
        rolling: a rolling window of that length instead of a calendar one.
        ledger: where the counters live: ``None`` for this process (or
            ``$BUDGETKIT_LEDGER_URL``'s ledger), else the ledger its sessions use.
        clock: Unix time in seconds (``time.time`` by default), for tests.

    ``SessionBudget(..., account=acct)`` charges the account in the same ledger operation as
    the session. A new session of an account over a limit is refused up front
    (:class:`~budgetkit.AccountExhaustedError`); a running one stops at its next boundary with
    reason ``account_max_usd`` (``account_max_steps`` ...). See docs/how-to/accounts.md.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        account_id: str,
        *,
        max_usd: float | Decimal | None = None,
        max_steps: int | None = None,
        max_llm_calls: int | None = None,
        max_tokens: int | None = None,
        window: Literal["hour", "day", "month"] | timedelta = "day",
        tz: tzinfo | str | None = None,
        rolling: bool = False,
        ledger: Ledger | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        from .ledgers import check_ledger

        if clock is not None and not callable(clock):
            raise BudgetTypeError(f"clock must be a callable or None, got {clock!r}")
        self.terms = AccountTerms(
            check_account_id(account_id),
            check_limits(
                max_usd=max_usd,
                max_steps=max_steps,
                max_llm_calls=max_llm_calls,
                max_tokens=max_tokens,
            ),
            Window.build(window, tz, rolling),
            clock or time.time,
        )
        self.ledger: Ledger | None = check_ledger(ledger)

    @property
    def account_id(self) -> str:
        """The account's id."""
        return self.terms.account_id

    @property
    def limits(self) -> dict[str, object]:
        """The set limits by keyword (``max_usd`` a ``Decimal``)."""
        return dict(self.terms.limits)

    @property
    def window(self) -> Window:
        """The account's window (``window.label`` describes it)."""
        return self.terms.window

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v}" for k, v in self.limits.items())
        return (
            f"<Account {self.account_id!r} per {self.window.label}{', ' if limits else ''}{limits}>"
        )

    # ------------------------------------------------------------------ reading
    def usage(self) -> AccountUsage:
        """The current window's usage, read from the account's ledger."""
        return self.terms.usage_in(self._ledger())

    def _ledger(self) -> Ledger:
        if self.ledger is not None:
            return self.ledger
        from .ledgers.inprocess import DEFAULT

        return DEFAULT

    def check_open(self, ledger: Ledger) -> None:
        """Refuse a new session when the current window has used up a limit.

        Raises:
            AccountExhaustedError: naming the account, the limit, the window and its reset.
        """
        buckets = self.terms.buckets()
        tally, reserved = ledger.account_usage(self.terms, buckets)
        reason = account_over(self.terms.rules, tally)
        if reason is None:
            return
        usage = self.terms.usage_of(buckets, tally, reserved)
        raise AccountExhaustedError(
            f"account {self.account_id!r} is over its {usage.window} window's "
            f"{reason.removeprefix('account_')} ({usage.describe(reason)}); no new session "
            f"until the window resets at {usage.resets_at.isoformat()}",
            account_id=self.account_id,
            reason=reason,
            window=usage.window,
            resets_at=usage.resets_at,
        )
