"""The in-process ledger: a session's counters as integers in this process, under one lock.

The default ledger of every :class:`~budgetkit.SessionBudget`. One process-wide lock guards
every in-process counter, so a nested admission (check every enclosing session, then count in
all of them) is one atomic step: :func:`admit_together`. The work under it is a few adds.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from .. import _config
from .._policy import (
    LOOP_DETECTED,
    WRAPUP_RESERVE,
    Counters,
    Rules,
    Tally,
    account_refusal,
    before_call,
    count,
    crossed,
    errors_crossed,
    in_wrapup_reserve,
    record,
    repeated,
    tally_count,
    tally_record,
    uncount,
)
from ._snapshot import LedgerSnapshot, snapshot_of

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from decimal import Decimal

    from .._limits import Limits
    from .._terms import AccountTerms, AccountUsage
    from .._usage import Counts
    from .._windows import Buckets

__all__ = ["DEFAULT", "LOCK", "AccountBook", "InProcessLedger", "InProcessLedgerSession"]

#: Guards every in-process counter. Taken with ``with``, never ``acquire()``: a call can hand
#: the GIL to another thread while this one holds the lock (a convoy of 8 threads ran 5x
#: slower); entering ``with`` cannot.
LOCK = threading.Lock()

if hasattr(os, "register_at_fork"):
    # A child forked while another thread held the lock would find it held forever.
    os.register_at_fork(
        before=LOCK.acquire, after_in_parent=LOCK.release, after_in_child=LOCK.release
    )


class InProcessLedger:
    """Sessions whose counters live in this process (the default ledger).

    .. versionadded:: 0.1.0
    """

    url = "in-process"

    def __init__(self) -> None:
        #: Account counters by ``AccountTerms.key`` (the account and its window).
        self.books: dict[str, AccountBook] = {}
        #: The last account seen for each key (what ``budgetkit accounts`` lists).
        self.known: dict[str, AccountTerms] = {}

    def __repr__(self) -> str:
        return "<InProcessLedger>"

    # ------------------------------------------------------------------ accounts
    def book(self, account: AccountTerms) -> AccountBook:
        """The counters of ``account`` in this ledger (made on first use)."""
        with LOCK:
            self.known[account.key] = account
            book = self.books.get(account.key)
            if book is None:
                book = self.books[account.key] = AccountBook()
            return book

    def account_usage(self, account: AccountTerms, buckets: Buckets) -> tuple[Tally, int]:
        """The usage of ``account``'s window ``buckets`` and what its open reservations hold."""
        book = self.book(account)
        with LOCK:
            window = Tally()
            window += book.window(buckets)
            return window, book.reserved

    def account_usages(self) -> list[AccountUsage]:
        """Every account this ledger has counted, in its current window."""
        return [account.usage_in(self) for account in list(self.known.values())]

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
    ) -> InProcessLedgerSession:
        """A new session with its limits; its clock starts now. ``account``: every call is
        also checked against and charged to that account, in the same operation."""
        rules = Rules.of(
            limits, step_room=step_room, usd_room=usd_room, reserve_for_wrapup=reserve_for_wrapup
        )
        session = InProcessLedgerSession(session_id, limits, rules)
        session.name = name
        session.reserve_for_wrapup = reserve_for_wrapup
        session.parent_session_id = parent_session_id
        session.extra = dict(extra or {})
        if account is not None:
            session.account = AccountLink(account, self.book(account))
            session.fast_step_cap = session.fast_llm_cap = -1
        return session

    def join(self, session_id: str) -> InProcessLedgerSession:
        """In-process sessions cannot be joined from elsewhere."""
        from ..exceptions import SessionNotFoundError

        raise SessionNotFoundError(
            f"session {session_id!r} lives in another process's memory: only a shared ledger "
            "(e.g. budgetkit.ledgers.redis.RedisLedger) can be joined"
        )


class InProcessLedgerSession(Counters):
    """One session's counters in this process: the fast path reads them directly.

    ``fast_step_cap`` / ``fast_llm_cap``: a step (LLM call) may be counted without the
    general rules while its count is below the cap; -1 once anything could refuse it (a
    limit tripped or latched) or the rules are not plain count limits.
    """

    __slots__ = (
        "account",
        "end",
        "errors_seen",
        "extra",
        "fast_llm_cap",
        "fast_step_cap",
        "limits",
        "name",
        "parent_session_id",
        "reserve_for_wrapup",
        "rules",
        "session_id",
        "start",
    )

    url = "in-process"

    def __init__(self, session_id: str, limits: Limits, rules: Rules) -> None:
        super().__init__()
        self.session_id = session_id
        self.limits = limits
        self.rules = rules
        self.name: str | None = None
        self.reserve_for_wrapup: float | None = None
        self.parent_session_id: str | None = None
        self.extra: dict[str, Any] = {}
        self.errors_seen = False
        self.fast_step_cap = rules.cap("step")
        self.fast_llm_cap = rules.cap("llm")
        self.start = _config.clock()
        self.end: float | None = None
        #: The account every call is also charged to (``None``: none).
        self.account: AccountLink | None = None

    def __repr__(self) -> str:
        return f"<InProcessLedgerSession {self.session_id}>"

    # ------------------------------------------------------------------ state (under LOCK)
    def elapsed(self) -> float:
        """Seconds since the session started (frozen when closed)."""
        end = self.end if self.end is not None else _config.clock()
        return max(end - self.start, 0.0)

    def trip_once(self, reason: str) -> None:
        """Mark ``reason`` as crossed unless a limit already is (under LOCK)."""
        if self.tripped is None:
            self.tripped = reason
            self.fast_step_cap = self.fast_llm_cap = -1

    def latch_once(self, reason: str, name: str) -> str:
        """Latch for ``reason`` unless latched already (under LOCK); the latched reason."""
        if self.reason is None:
            self.reason, self.refused = reason, name
            self.fast_step_cap = self.fast_llm_cap = -1
        return self.reason

    def check(
        self,
        kind: str | None,
        name: str,
        reserve: int | None,
        wrapup: bool,
        tool: tuple[str, int] | None = None,
    ) -> str | None:
        """The policy's answer for one call (under LOCK): ``None``, a latched reason, or
        :data:`~budgetkit._policy.WRAPUP_RESERVE`."""
        rules = self.rules
        timed = rules.seconds is not None or rules.keep is not None
        elapsed = self.elapsed() if timed else 0.0
        reason = before_call(rules, self, kind, reserve, elapsed, tool)
        if reason is None and self.account is not None:
            reason = self.account.refusal(kind, reserve)
        if reason is not None:
            return self.latch_once(reason, name)
        if not wrapup and rules.keep is not None and in_wrapup_reserve(rules, self, kind, elapsed):
            return WRAPUP_RESERVE
        return None

    def add(
        self, counts: Counts | None, cost: int | None, release: int, account: bool = True
    ) -> str | None:
        """Record one call and trip a measured limit it crosses (under LOCK); also in the
        account unless ``account`` is false (the caller charges it once for a chain)."""
        if account and self.account is not None:
            self.account.record(counts, cost, min(release, self.reserved))
        record(self, counts, cost, release)
        if self.tripped is None and self.rules.measured:
            reason = crossed(self.rules, self)
            if reason is not None:
                self.trip_once(reason)
        return self.tripped

    def add_error(self) -> str | None:
        """Count a failed call in the run of errors; trip ``max_consecutive_errors`` (LOCK)."""
        self.errors_in_a_row += 1
        if errors_crossed(self.rules, self.errors_in_a_row):
            self.trip_once("max_consecutive_errors")
        return self.tripped

    # ------------------------------------------------------------------ the protocol
    def new_op_id(self) -> str:
        """Operations in one process are applied exactly once: ids are not needed."""
        return ""

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
        """Check every limit and count the call, atomically; ``None`` when admitted.
        ``tool_cap``: a step of tool ``name`` is also capped at that many calls; ``digest``:
        the step's call digest, for ``max_repeats``."""
        tool = None if tool_cap is None else (name, tool_cap)
        call = None if digest is None else (name, digest)
        refused = admit_together((self,), kind, name, reserve, wrapup, tool, call)
        return None if refused is None else refused[1]

    def record(
        self,
        counts: Counts | None,
        cost: int | None,
        *,
        release: int = 0,
        op_id: str | None = None,
    ) -> str | None:
        """Add one call and give back ``release`` of its reservation; the tripped reason."""
        with LOCK:
            return self.add(counts, cost, release)

    def release(self, amount: int, *, op_id: str | None = None) -> None:
        """Give back ``amount`` units of reservation."""
        with LOCK:
            if self.account is not None:
                self.account.release(min(amount, self.reserved))
            self.reserved -= min(amount, self.reserved)

    def fail(self, *, op_id: str | None = None) -> str | None:
        """Count a failed call; the tripped reason."""
        with LOCK:
            return self.add_error()

    def succeed(self) -> None:
        """Reset the run of consecutive errors."""
        with LOCK:
            self.errors_in_a_row = 0

    def trip(self, reason: str) -> None:
        """Mark a limit as crossed (first wins)."""
        with LOCK:
            self.trip_once(reason)

    def latch(self, reason: str, name: str = "") -> str:
        """Latch the session as exhausted (first wins); the latched reason."""
        with LOCK:
            return self.latch_once(reason, name)

    def extend(
        self, limits: Limits, *, step_room: int | None = None, usd_room: Decimal | None = None
    ) -> str | None:
        """New (larger) limits and the latch lifted; the measured limit still crossed."""
        rules = Rules.of(
            limits,
            step_room=step_room,
            usd_room=usd_room,
            reserve_for_wrapup=self.reserve_for_wrapup,
        )
        with LOCK:
            self.limits, self.rules = limits, rules
            self.reason = self.tripped = self.refused = None
            if self.account is None:
                self.fast_step_cap = rules.cap("step")
                self.fast_llm_cap = rules.cap("llm")
            if rules.measured:
                reason = crossed(rules, self)
                if reason is not None:
                    self.trip_once(reason)
            return self.tripped

    def claim_handoff_writer(self) -> bool:
        """The one process holding the session writes its handoff."""
        return True

    def snapshot(self) -> LedgerSnapshot:
        """The counters and state now, read under the lock."""
        with LOCK:
            return snapshot_of(self, elapsed=self.elapsed(), writer=f"pid-{os.getpid()}")

    def counters(self) -> Counters:
        """The live counters (no copy)."""
        return self

    def close(self) -> None:
        """Stop the session's clock."""
        if self.end is None:
            self.end = _config.clock()


# ---------------------------------------------------------------------- a chain of sessions
def admit_together(
    members: Sequence[InProcessLedgerSession],
    kind: str | None,
    name: str,
    reserve: int | None,
    wrapup: bool,
    tool: tuple[str, int] | None = None,
    call: tuple[str, str] | None = None,
) -> tuple[int, str] | None:
    """Check ``members`` (outermost first), then count the call in all of them, atomically.

    Returns ``None`` when counted, else ``(index, reason)`` of the first member that refuses:
    a latched reason, or :data:`~budgetkit._policy.WRAPUP_RESERVE` (not latched).
    """
    with LOCK:
        for index, member in enumerate(members):
            reason = member.check(kind, name, reserve, wrapup, tool)
            if reason is not None:
                return index, reason
        for member in members:
            count(member, kind, reserve, tool, call)
            if call is not None and repeated(member.rules, member):
                member.trip_once(LOOP_DETECTED)
        for link, _ in accounts_of(members):
            link.count(kind, reserve)
    return None


def uncount_together(
    members: Sequence[InProcessLedgerSession],
    kind: str | None,
    reserve: int | None,
    tool: tuple[str, int] | None = None,
) -> None:
    """Take back what :func:`admit_together` counted (a shared ledger refused the call)."""
    with LOCK:
        for member in members:
            uncount(member, kind, reserve, tool)
        for link, _ in accounts_of(members):
            link.uncount(kind, reserve)


def record_together(
    members: Sequence[InProcessLedgerSession], counts: Counts | None, cost: int | None, release: int
) -> None:
    """Record one call in every member and release its reservation, atomically (each
    account of the chain charged once)."""
    with LOCK:
        for link, owner in accounts_of(members):
            link.record(counts, cost, min(release, owner.reserved))
        for member in members:
            member.add(counts, cost, release, account=False)


def release_together(members: Sequence[InProcessLedgerSession], amount: int) -> None:
    """Give ``amount`` units of reservation back to every member."""
    with LOCK:
        for link, owner in accounts_of(members):
            link.release(min(amount, owner.reserved))
        for member in members:
            member.reserved -= min(amount, member.reserved)


def fail_together(members: Sequence[InProcessLedgerSession]) -> None:
    """Count a failed call in every member's run of errors."""
    with LOCK:
        for member in members:
            member.add_error()


def succeed_together(members: Sequence[InProcessLedgerSession]) -> None:
    """A call succeeded: every member's run of errors starts again at zero."""
    with LOCK:
        for member in members:
            member.errors_in_a_row = 0


# ---------------------------------------------------------------------- accounts
class AccountBook:
    """An account's counters in one ledger: a :class:`Tally` per bucket of its window, and
    the USD its sessions' open reservations hold (not per window: money in flight)."""

    __slots__ = ("buckets", "reserved")

    def __init__(self) -> None:
        self.buckets: dict[int, Tally] = {}
        self.reserved = 0

    def window(self, b: Buckets) -> Tally:
        """The usage of window ``b`` (under LOCK). A read forgets nothing: ``b`` is named
        by the reader's clock, which may run ahead of the charging sessions' clocks."""
        if len(b.counted) == 1:
            return self.buckets.get(b.counted[0]) or Tally()
        total = Tally()
        for i in b.counted:
            t = self.buckets.get(i)
            if t is not None:
                total += t
        return total

    def current(self, b: Buckets) -> Tally:
        """The bucket a charge made now goes to (under LOCK); opening a new one forgets
        the buckets older than its window."""
        t = self.buckets.get(b.current)
        if t is None:
            first = b.counted[0]
            self.buckets = {i: t for i, t in self.buckets.items() if i >= first}
            t = self.buckets[b.current] = Tally()
        return t


class AccountLink:
    """A session's account: its limits (the policy's ``account_*`` reasons) and its book.
    Every method runs under LOCK."""

    __slots__ = ("account", "book", "rules")

    def __init__(self, account: AccountTerms, book: AccountBook) -> None:
        self.account = account
        self.book = book
        self.rules = account.rules

    def refusal(self, kind: str | None, reserve: int | None) -> str | None:
        """Why the account refuses the call now, or ``None``."""
        book = self.book
        window = book.window(self.account.buckets())
        return account_refusal(self.rules, window, book.reserved, kind, reserve)

    def count(self, kind: str | None, reserve: int | None) -> None:
        """Count one admitted call in the current bucket; hold its reservation."""
        tally_count(self.book.current(self.account.buckets()), kind)
        if reserve:
            self.book.reserved += reserve

    def uncount(self, kind: str | None, reserve: int | None) -> None:
        """Take back :meth:`count` (another ledger of the chain refused the call)."""
        t = self.book.current(self.account.buckets())
        if kind == "step":
            t.steps -= 1
        elif kind == "llm":
            t.llm_calls -= 1
        if reserve:
            self.book.reserved -= min(reserve, self.book.reserved)

    def record(self, counts: Counts | None, cost: int | None, release: int) -> None:
        """Charge one call to the current bucket; give back ``release`` of its reservation."""
        tally_record(self.book.current(self.account.buckets()), counts, cost)
        self.release(release)

    def release(self, amount: int) -> None:
        """Give back ``amount`` of the account's reservations."""
        if amount:
            self.book.reserved -= min(amount, self.book.reserved)


def accounts_of(
    members: Sequence[InProcessLedgerSession],
) -> list[tuple[AccountLink, InProcessLedgerSession]]:
    """The accounts of a chain's sessions, each once, with the session that brought it: a
    release gives the account back no more than that session holds (under LOCK)."""
    links: list[tuple[AccountLink, InProcessLedgerSession]] = []
    for member in members:
        link = member.account
        if link is not None and all(link.book is not other.book for other, _ in links):
            links.append((link, member))
    return links


#: The ledger of every session without a shared one (and of in-process accounts).
DEFAULT = InProcessLedger()
