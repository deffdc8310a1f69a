"""The step boundary: an entered session's ledger handle, its chain, admission and recording.

A :class:`Boundary` is the run-time side of a :class:`~budgetkit.SessionBudget`; the context
variable :data:`active` holds the innermost one of a context, so ``asyncio`` children and
copied-context threads charge the same counters. It holds exactly one ledger session
(``handle``) and knows its chain of enclosing sessions:

- the in-process handles of the chain are checked and counted together under one lock
  (``ledgers.inprocess.admit_together``); a shared ledger, at most one per chain, admits
  after them, and a refusal there takes the in-process counts back;
- charges to a shared ledger carry an operation id; one that cannot be sent waits in the
  outbox and is resent, with the same id, at the next boundary.

The rules themselves live in ``_policy``; building and raising the exhaustion in
``_exhaustion``.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NoReturn

from . import _config
from ._agent_view import phase_of
from ._events import emit
from ._events import listeners as _listeners
from ._policy import WRAPUP_RESERVE, Counters, Rules, fractions, live_value
from ._threads import OPEN, install_inheritance
from ._values import LLM, STEP, SessionUsage
from ._warnings import warn
from .exceptions import (
    BudgetConfigError,
    BudgetError,
    CostUnknownWarning,
    LedgerError,
    LedgerUnavailableError,
    LedgerUnavailableWarning,
)
from .ledgers.inprocess import (
    DEFAULT,
    LOCK,
    InProcessLedgerSession,
    admit_together,
    fail_together,
    record_together,
    release_together,
    succeed_together,
    uncount_together,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from decimal import Decimal

    from ._exhaustion import Exhaustion
    from ._policy import Dimension
    from ._session import SessionBudget
    from ._usage import Counts
    from .ledgers import Ledger, LedgerSession, LedgerSnapshot

__all__ = ["Boundary", "active"]

#: The innermost entered session of this context. It holds a *mutable* object, so ``asyncio``
#: children and copied-context threads charge the same counters.
active: ContextVar[Boundary | None] = ContextVar("budgetkit_session", default=None)

_IN_PROCESS = DEFAULT


class Boundary:
    """The run-time side of one session: ledger handle, chain, boundary, notifications."""

    __slots__ = (
        "budget",
        "chain",
        "declined",
        "errors_pending",
        "exhaust_lock",
        "exhaustion",
        "fast",
        "fast_chain",
        "fired",
        "handle",
        "last_usage",
        "lease",
        "ledger",
        "local",
        "local_owners",
        "outbox",
        "parent",
        "phase",
        "remote",
        "repeats",
        "start",
        "telemetry",
        "unknown_models",
        "warned",
        "warned_unmeasured",
        "watch",
    )

    def __init__(self, budget: SessionBudget, ledger: Ledger | None) -> None:
        self.budget = budget
        #: Where the counters live: the shared ledger given, else this process.
        self.ledger: Ledger = _IN_PROCESS if ledger is None else ledger
        self.handle: LedgerSession | None = None
        self.parent: Boundary | None = None
        self.chain: tuple[Boundary, ...] = (self,)
        self.local: tuple[InProcessLedgerSession, ...] = ()
        self.local_owners: tuple[Boundary, ...] = ()
        self.remote: Boundary | None = None
        self.fast: InProcessLedgerSession | None = None
        self.fast_chain: tuple[tuple[InProcessLedgerSession, bool], ...] | None = None
        #: A shared ledger session's local lease (``RedisLedger(allotment=...)``), when
        #: this is the chain's only session: admits from it skip the round trip.
        self.lease: Any = None
        self.watch = bool((budget.thresholds and budget.on_threshold) or budget.on_phase_change)
        self.fired: set[tuple[str, float]] = set()
        self.phase = "explore"
        self.errors_pending = False  # some session of the chain counts errors in a row
        #: ``on_exhausted`` declined: the session stops, the policy is not asked again.
        self.declined = False
        #: Some session of the chain has ``max_repeats``: steps are admitted with a digest.
        self.repeats = False
        self.outbox: list[tuple[Callable[[], object], int]] = []  # (operation, its cost)
        self.last_usage: SessionUsage | None = None
        self.telemetry: Any = None
        self.start: float | None = None
        self.exhaust_lock = threading.Lock()
        self.exhaustion: Exhaustion | None = None
        self.warned: set[str] = set()
        self.warned_unmeasured: set[str] = set()
        #: Models whose calls could not be priced, in order (named by the exhaustion).
        self.unknown_models: dict[str, None] = {}

    # ------------------------------------------------------------------ lifecycle
    def open(self, parent: Boundary | None, start: float) -> None:
        """Create the session in its ledger (unless joined) and take its place in the chain."""
        budget = self.budget
        shared = self.ledger is not _IN_PROCESS
        if shared and parent is not None and parent.remote is not None:
            other = parent.remote.budget
            raise BudgetConfigError(
                f"session {budget.session_id!r} has a ledger but is nested in session "
                f"{other.session_id!r}, which has one too: a chain of nested sessions may "
                "hold one ledger session (enter this one outside the other)"
            )
        if self.handle is None:
            self.handle = self._create(shared)
        OPEN.opened()
        if budget.threads == "inherit":
            install_inheritance(active)
        self.parent = parent
        self.start = start
        self.chain = (self,) if parent is None else (*parent.chain, self)
        self.repeats = any(b.budget.limits.max_repeats is not None for b in self.chain)
        locals_ = [b for b in self.chain if isinstance(b.handle, InProcessLedgerSession)]
        self.local = tuple(b.handle for b in locals_)  # type: ignore[misc]
        self.local_owners = tuple(locals_)
        remote = [b for b in self.chain if not isinstance(b.handle, InProcessLedgerSession)]
        self.remote = remote[0] if remote else None
        own = self.handle if isinstance(self.handle, InProcessLedgerSession) else None
        self.fast = own if parent is None else None
        if parent is None and not self.repeats:
            self.lease = getattr(self.handle, "allot", None)
        if parent is not None and self.remote is None:
            self.fast_chain = tuple((b.handle, b.watch) for b in locals_)  # type: ignore[misc]

    def _create(self, shared: bool) -> LedgerSession:
        budget = self.budget
        step_room, usd_room = budget.place.room()
        kwargs: dict[str, Any] = {
            "name": budget.name,
            "reserve_for_wrapup": budget.reserve_for_wrapup,
            "parent_session_id": budget.parent_session_id,
            "step_room": step_room,
            "usd_room": usd_room,
        }
        account = budget.account
        if account is not None:
            kwargs["account"] = account.terms
        if not shared:
            if account is not None:
                account.check_open(self.ledger)
            return self.ledger.create(budget.session_id, budget.limits, **kwargs)
        kwargs["extra"] = {"lineage": budget.place.lineage(SessionUsage()).to_dict()}
        try:
            if account is not None:
                account.check_open(self.ledger)
            return self.ledger.create(budget.session_id, budget.limits, **kwargs)
        except LedgerUnavailableError as exc:
            if budget.on_ledger_error == "closed":
                raise
            unchecked = (
                ""
                if account is None
                else f", without account {account.account_id!r} (not checked, not charged)"
            )
            warn(
                f"budgetkit: {exc}; on_ledger_error='open' runs session "
                f"{budget.session_id!r} in this process only{unchecked}",
                LedgerUnavailableWarning,
            )
            self.ledger = _IN_PROCESS
            kwargs.pop("account", None)  # the account lives in the unreachable ledger
            return self.ledger.create(budget.session_id, budget.limits, **kwargs)

    def close(self) -> None:
        """The block exited: deliver what the ledger has not confirmed (warn loudly about
        what cannot be), then stop the ledger session's clock."""
        OPEN.closed()
        if self.outbox:
            self.deliver_at_exit()
        if self.handle is not None:
            self.handle.close()

    def deliver_at_exit(self) -> None:
        """Resend the outbox once more; what still fails is named in a warning, never
        dropped silently."""
        try:
            self.flush(raising=True)
        except LedgerError as exc:
            from ._money import from_units

            with LOCK:
                left, usd = len(self.outbox), sum(cost for _, cost in self.outbox)
            warn(
                f"budgetkit: session {self.budget.session_id!r} exits with {left} charge(s) "
                f"not delivered to the ledger at {self.ledger.url} ({exc}); the ledger's "
                f"usage is missing them (${from_units(usd)} of known cost), and the "
                "reservations they held expire as spend after its reservation_ttl",
                LedgerUnavailableWarning,
            )

    # ------------------------------------------------------------------ the boundary
    def admit_step(self, name: str) -> None:
        """The fast path of ``admit(STEP, name)``: count the step when nothing can refuse it.

        Anything that might refuse (a latch, a tripped limit, a time limit, the step cap)
        goes to :meth:`admit`, which alone decides; this only skips its work when it would
        admit anyway.
        """
        own = self.fast
        if own is not None:  # the common case: no nesting, counters in this process
            with LOCK:
                admitted = own.steps < own.fast_step_cap
                if admitted:
                    own.steps += 1
            if admitted:
                if _listeners:
                    emit("step", self.budget, name=name)
                if self.watch:
                    self.notify()
                return
        elif self.fast_chain is not None:
            admitted = False
            with LOCK:
                for handle, watch in self.fast_chain:
                    if handle.steps >= handle.fast_step_cap or watch:
                        break
                else:
                    for handle, _ in self.fast_chain:
                        handle.steps += 1
                    admitted = True
            if admitted:
                if _listeners:
                    emit("step", self.budget, name=name)
                return
        lease = self.lease
        if lease is not None and not lease.errors and not self.outbox and lease.take(STEP):
            if _listeners:
                emit("step", self.budget, name=name)
            if self.watch:
                self.notify()
            return
        self.admit(STEP, name)

    def admit_llm(self, name: str) -> None:
        """The fast path of ``admit(LLM, name)`` (no reservation), as :meth:`admit_step`."""
        own = self.fast
        if own is not None:
            with LOCK:
                admitted = own.llm_calls < own.fast_llm_cap
                if admitted:
                    own.llm_calls += 1
            if admitted:
                if self.watch:
                    self.notify()
                return
        lease = self.lease
        if lease is not None and not lease.errors and not self.outbox and lease.take(LLM):
            if self.watch:
                self.notify()
            return
        self.admit(LLM, name)

    def admit(
        self,
        kind: str | None,
        name: str,
        reserve: int | None = None,
        *,
        wrapup: bool = False,
        tool_cap: int | None = None,
        digest: str | None = None,
        retry: bool = False,
    ) -> None:
        """Check every session of the chain, then count the call in all of them.

        Raises ``BudgetExhausted``: latched (handoff written) for a limit, or not latched
        (reason ``wrapup_reserve``) for an ordinary call that would eat the wrap-up reserve.
        ``tool_cap``: the step's per-tool cap (``@budget.step(max_calls=...)``); ``digest``:
        the step's call digest (``max_repeats``). A refusal for a limit that
        ``on_exhausted`` extends is admitted again, once (``retry``).
        """
        if self.handle is None:
            raise BudgetError(
                f"session {self.budget.session_id!r} is not entered: enter it with 'with' "
                "before its calls are counted"
            )
        remote = self.remote
        if remote is not None:
            remote.flush()
        tool = None if tool_cap is None else (name, tool_cap)
        call = None if digest is None else (name, digest)
        refused = admit_together(self.local, kind, name, reserve, wrapup, tool, call)
        if refused is not None:
            index, reason = refused
            owner = self.local_owners[index]
            if not retry and owner.extended(reason):  # on_exhausted granted more: again
                self.admit(
                    kind, name, reserve, wrapup=wrapup, tool_cap=tool_cap, digest=digest, retry=True
                )
                return
            owner.stop(reason)
        if remote is not None and not self._admit_remote(
            remote, kind, name, reserve, wrapup, tool, digest, retry
        ):
            self.admit(
                kind, name, reserve, wrapup=wrapup, tool_cap=tool_cap, digest=digest, retry=True
            )
            return
        if _listeners and kind == STEP:
            emit("step", self.budget, name=name)
        for b in self.chain:
            if b.watch:
                b.notify()

    def _admit_remote(
        self,
        remote: Boundary,
        kind: str | None,
        name: str,
        reserve: int | None,
        wrapup: bool,
        tool: tuple[str, int] | None = None,
        digest: str | None = None,
        retry: bool = False,
    ) -> bool:
        """Admit the call in the shared ledger; ``False`` when it was refused and then
        extended by ``on_exhausted`` (admit it again)."""
        handle = remote.handle
        assert handle is not None
        extra: dict[str, Any] = {}  # only what is used: other ledgers may not take them
        if tool is not None:
            extra["tool_cap"] = tool[1]
        if digest is not None:
            extra["digest"] = digest
        try:
            reason = handle.admit(kind, reserve, name=name, wrapup=wrapup, **extra)
        except LedgerUnavailableError as exc:
            if remote.budget.on_ledger_error == "closed":
                uncount_together(self.local, kind, reserve, tool)
            remote.unavailable(exc)
            reason = None
        except BaseException:
            uncount_together(self.local, kind, reserve, tool)
            raise
        if reason is not None:
            uncount_together(self.local, kind, reserve, tool)
            if not retry and remote.extended(reason):
                return False
            remote.stop(reason)
        if handle.errors_seen:  # a success of this call should reset the run of errors
            remote.errors_pending = self.errors_pending = True
        return True

    def extended(self, reason: str) -> bool:
        """Whether ``on_exhausted`` granted more budget for ``reason`` (limits raised)."""
        if self.budget.on_exhausted is None or reason == WRAPUP_RESERVE:
            return False
        from ._extend import try_extend

        return try_extend(self, reason)

    def stop(self, reason: str) -> NoReturn:
        """Raise the refusal of a call: the wrap-up reserve's (not latched), or exhaustion."""
        from . import _exhaustion  # the rare path: loaded when a session first stops

        if reason == WRAPUP_RESERVE:
            raise _exhaustion.refusal(self, WRAPUP_RESERVE)
        _exhaustion.exhaust(self, reason)

    # ------------------------------------------------------------------ recording
    def call_succeeded(self) -> None:
        """A success resets the run of consecutive errors (cheap when there is none)."""
        if not self.errors_pending:
            return
        succeed_together(self.local)
        self.errors_pending = False
        remote = self.remote
        if remote is not None and remote.handle is not None:
            remote.send(remote.handle.succeed)

    def call_failed(self, exc: BaseException) -> None:
        """A decorated call raised: count it in every run of consecutive errors."""
        if not isinstance(exc, Exception) or isinstance(exc, BudgetError):
            return
        fail_together(self.local)
        for b in self.chain:
            b.errors_pending = True
        remote = self.remote
        if remote is not None and remote.handle is not None:
            handle = remote.handle
            op_id = handle.new_op_id()
            remote.send(lambda: handle.fail(op_id=op_id))

    def record(self, counts: Counts | None, cost: int | None, release: int = 0) -> None:
        """Add one call's counts (``None``: unmeasured) and cost (units; ``None``: unpriced)
        to every session of the chain, give back ``release`` of its reservation, and trip
        the measured limits it crosses."""
        if cost and (holder := reservation.get()) is not None:
            with LOCK:
                release += holder.take(cost)
        own = self.fast
        if own is not None:
            with LOCK:
                own.add(counts, cost, release)
            if self.watch:
                self.notify()
            return
        record_together(self.local, counts, cost, release)
        remote = self.remote
        if remote is not None and remote.handle is not None:
            handle = remote.handle
            op_id = handle.new_op_id()
            remote.send(
                lambda: handle.record(counts, cost, release=release, op_id=op_id), cost or 0
            )
        for b in self.chain:
            if b.watch:
                b.notify()

    def release(self, amount: int) -> None:
        """Give ``amount`` units of reserved USD back to the chain."""
        if not amount:
            return
        release_together(self.local, amount)
        remote = self.remote
        if remote is not None and remote.handle is not None:
            handle = remote.handle
            op_id = handle.new_op_id()
            remote.send(lambda: handle.release(amount, op_id=op_id))

    def cost_unknown(self, model: str | None) -> None:
        """A call's cost could not be priced (or measured): under a USD limit, stop at the
        next boundary (``on_unknown_cost="error"``, the default there) or warn once per model
        (``"warn"``). Without one, the call is only counted as unpriced."""
        key = model or "<unknown model>"
        for b in reversed(self.chain):
            budget = b.budget
            if budget.limits.max_usd is None and budget.chain_caps.max_total_usd is None:
                continue
            with LOCK:
                b.unknown_models[key] = None  # ordered, for the exhaustion's message
            if (budget.on_unknown_cost or "error") == "error":
                handle = b.handle
                if handle is not None:
                    b.send(lambda h=handle: h.trip("cost_unknown"))  # type: ignore[misc]
                continue
            if key in b.warned:
                continue
            b.warned.add(key)
            from ._exhaustion import usd_limits

            warn(
                f"budgetkit: the cost of a call to model {key!r} is unknown, so session "
                f"{budget.session_id!r} cannot count it against {usd_limits(budget)}; "
                "on_unknown_cost='warn' lets it go on. Pass prices={model: "
                "(usd_per_million_input, usd_per_million_output)} to price it.",
                CostUnknownWarning,
            )

    def all_prices(self) -> dict[str, tuple[Decimal, Decimal]]:
        """User prices of the whole chain; the innermost session's win."""
        if len(self.chain) == 1:
            return self.budget.prices
        merged: dict[str, tuple[Decimal, Decimal]] = {}
        for b in self.chain:
            merged.update(b.budget.prices)
        return merged

    # ------------------------------------------------------------------ a shared ledger
    def send(self, operation: Callable[[], object], cost: int = 0) -> None:
        """Run one idempotent ledger operation now, or keep it for the next boundary (which
        raises or warns) or the exit; a call that already ran never fails on its charge."""
        if not self.outbox:
            try:
                operation()
                return
            except LedgerError:
                pass
        with LOCK:
            self.outbox.append((operation, cost))

    def flush(self, *, raising: bool = False) -> None:
        """Resend what the ledger has not confirmed; an outage raises or warns (policy, or
        raises when ``raising``), any other ledger error (an expired session) raises."""
        if not self.outbox:
            return
        error: LedgerUnavailableError | None = None
        while self.outbox:
            try:
                self.outbox[0][0]()
            except LedgerUnavailableError as exc:
                error = exc
                break
            with LOCK:
                self.outbox.pop(0)
        if error is not None:
            if raising:
                raise error
            self.unavailable(error)

    def unavailable(self, exc: LedgerUnavailableError) -> None:
        """Fail closed (raise) or open (warn and go on), as the session says."""
        budget = self.budget
        if budget.on_ledger_error == "closed":
            raise exc
        warn(
            f"budgetkit: {exc}; on_ledger_error='open' lets the call run unchecked "
            f"(session {budget.session_id!r}); unsent charges are sent when it is back",
            LedgerUnavailableWarning,
        )

    # ------------------------------------------------------------------ reading
    def ledger_snapshot(self, *, strict: bool = False) -> LedgerSnapshot | None:
        """The ledger's snapshot; ``None`` before entry or, not ``strict``, on an outage."""
        if self.handle is None:
            return None
        try:
            return self.handle.snapshot()
        except LedgerError:  # unreachable, or the session expired
            if strict:
                raise
            return None

    def snapshot(self, *, strict: bool = False) -> LedgerSnapshot:
        """:meth:`ledger_snapshot`, or zeros (the last usage read, on an outage)."""
        from .ledgers import LedgerSnapshot

        snap = self.ledger_snapshot(strict=strict)
        return LedgerSnapshot() if snap is None else snap

    def usage(self, *, strict: bool = False) -> SessionUsage:
        """What the session has used (with a shared ledger: all workers together)."""
        snap = self.ledger_snapshot(strict=strict)
        if snap is None:
            return SessionUsage() if self.last_usage is None else self.last_usage
        usage = snap.usage()
        self.last_usage = usage
        return usage

    def live(self, d: Dimension) -> int | float:
        """The current value of dimension ``d`` without a round trip (for span attributes)."""
        elapsed = 0.0 if self.start is None else max(_config.clock() - self.start, 0.0)
        return live_value(d, self.counters(), elapsed)

    def counters(self) -> Counters:
        """The counters as this process sees them, without a round trip (for span attributes)."""
        handle = self.handle
        return _ZERO if handle is None else handle.counters()

    def rules(self) -> Rules:
        """The session's rules as they stand (for views; ledgers hold their own copy)."""
        step_room, usd_room = self.budget.place.room()
        budget = self.budget
        return Rules.of(
            budget.limits,
            step_room=step_room,
            usd_room=usd_room,
            reserve_for_wrapup=budget.reserve_for_wrapup,
        )

    # ------------------------------------------------------------------ the agent's view
    def notify(self) -> None:
        """Fire threshold and phase callbacks once for each crossing (outside the lock)."""
        budget = self.budget
        fracs = fractions(budget.limits, self.usage())
        fire: list[tuple[str, float]] = []
        if budget.on_threshold is not None:
            with LOCK:
                for dim, f in fracs.items():
                    for t in budget.thresholds:
                        if f >= t and (dim, t) not in self.fired:
                            self.fired.add((dim, t))
                            fire.append((dim, t))
        for dim, _t in fire:
            budget.on_threshold(budget, dim)  # type: ignore[misc]
        if budget.on_phase_change is not None:
            phase = phase_of(fracs, budget.phases)
            with LOCK:
                changed, self.phase = phase != self.phase, phase
            if changed:
                budget.on_phase_change(budget, phase)


class Reservation:
    """The part of a ``session.reserve()`` block (units) not yet consumed by charges."""

    __slots__ = ("left",)

    def __init__(self, amount: int) -> None:
        self.left = amount

    def take(self, cost: int) -> int:
        """Consume up to ``cost`` (under LOCK); what was taken."""
        taken = min(cost, self.left)
        self.left -= taken
        return taken

    def take_all(self) -> int:
        """Consume what is left."""
        with LOCK:
            left, self.left = self.left, 0
        return left


#: The innermost open ``session.reserve()`` block of this context.
reservation: ContextVar[Reservation | None] = ContextVar("budgetkit_reservation", default=None)

_ZERO = Counters()
