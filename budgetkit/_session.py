"""SessionBudget: the public lifecycle of a budget (enter, exit, nesting, public state).

The counting lives elsewhere: the rules in ``_policy``, the counters in a ledger
(``ledgers``), the step boundary in ``_boundary``, exhaustion and handoffs in
``_exhaustion``, resume preparation next to the chain files (``_chainfiles``), joining and
baggage in ``_joining``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, Never, Self

from . import _config, _otel
from ._agent_view import (
    DEFAULT_PHASE_BOUNDS,
    phase_of,
    status_line,
)
from ._boundary import Boundary, Reservation, active, reservation
from ._constructors import Constructors
from ._events import emit
from ._events import listeners as _listeners
from ._files import check_session_id, check_writable_directory
from ._limits import Limits, non_negative_int, to_usd
from ._lineage import ChainCaps, Lineage, Place
from ._money import to_units
from ._policy import fractions, remaining
from ._settings import DEFAULT_DIR, check_settings
from ._usage import Usage, usage_counts
from ._values import HandoffNotes, Remaining, SessionResult, SessionUsage
from .exceptions import BudgetError, BudgetTypeError
from .ledgers import check_account_ledger, check_ledger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from decimal import Decimal
    from pathlib import Path
    from types import TracebackType

    from ._account import Account
    from ._extend import ExtendRequest, Grant
    from ._handoff import Handoff
    from .ledgers import Ledger

__all__ = ["SessionBudget", "current"]


def current() -> SessionBudget | None:
    """The innermost active :class:`SessionBudget` of this context, or ``None``."""
    b = active.get()
    return None if b is None else b.budget


class SessionBudget(Constructors):
    """Hard limits on the agent code run inside it, as ``with`` or ``async with``.

    Every ``@budget.step`` / ``@budget.llm_call`` entered inside the block is a *step boundary*:
    the call is checked against every limit before its body runs. Count limits
    (``max_steps``, ``max_llm_calls``) admit exactly N calls. Measured limits (tokens, USD,
    seconds, consecutive errors) are judged from what has been recorded: the call that
    crosses one completes normally, and the next boundary writes the handoff and raises
    :class:`~budgetkit.BudgetExhausted`. Exhaustion is latched.

    Args:
        max_steps: ``@budget.step`` calls admitted.
        max_llm_calls: ``@budget.llm_call`` calls admitted.
        max_tokens: total (input + output) tokens.
        max_input_tokens: input tokens (cache reads and writes included).
        max_output_tokens: output tokens (reasoning included).
        max_usd: US dollars (``int``, ``float`` or ``Decimal``).
        max_seconds: wall-clock seconds since entry (or a ``timedelta``).
        max_consecutive_errors: decorated calls in a row that raise.
        on_exhausted: called with an :class:`~budgetkit.ExtendRequest` when a call is
            refused for one of the session's own limits, before the handoff is written; a
            returned :class:`~budgetkit.Grant` raises the limits and the session continues in
            place (see docs/how-to/extend.md). Raising, returning ``None`` or not answering
            within ``on_exhausted_timeout`` seconds means no grant.
        max_repeats: the same step called with equal arguments this many times in a row
            stops the session (reason ``loop_detected``; the call that makes the run this
            long runs, the next boundary is refused). See ``@budget.step(key=...)``.
        session_id: id and handoff file name; a fresh uuid by default.
        name: the agent's name (used in span names).
        handoff_dir: where ``<session_id>.json`` is written on exhaustion; default
            ``$BUDGETKIT_HANDOFF_DIR`` or ``./handoffs``; ``None`` writes no file.
        raise_on_exhausted: ``False`` makes the block swallow its own ``BudgetExhausted``
            on exit (also an exception group of nothing else, as ``asyncio.TaskGroup``
            raises); ``session.result.stop_reason`` then tells why it stopped.
        prices: your own prices, ``{"model": (usd_per_million_input, usd_per_million_output)}``,
            which win over the bundled price table.
        on_unknown_cost: when a USD limit applies (``max_usd``, or the chain's
            ``max_total_usd``), what a call whose cost is unknown does: ``"error"`` (the
            default there: the call returns, and the session stops at the next boundary with
            reason ``cost_unknown``) or ``"warn"`` (the explicit opt-out: a
            :class:`~budgetkit.CostUnknownWarning` once per model, and the session goes on).
            Without a USD limit an unpriced call is only counted in ``unpriced_calls``.
        max_total_usd: US dollars for the whole chain of sessions (this one, the ones it
            resumed, and the ones resumed from it); kept across resumes.
        max_total_steps: ``@budget.step`` calls for the whole chain; kept across resumes.
        max_sessions: sessions in the chain, the first included; resuming past it is refused
            with :class:`~budgetkit.ChainCapError`. Kept across resumes.
        account: a :class:`~budgetkit.Account` (what one user may spend per window): every
            call is also checked against and charged to it, in the same ledger operation.
            Entering is refused (:class:`~budgetkit.AccountExhaustedError`) when its window
            has used up a limit; a running session stops at its next boundary with reason
            ``account_max_usd`` (``account_max_steps`` ...). The session uses the account's
            ledger (pass no other). See docs/how-to/accounts.md.
        ledger: where the counters live. ``None`` (the default): in this process, unless
            ``$BUDGETKIT_LEDGER_URL`` names a Redis server. A
            :class:`~budgetkit.ledgers.redis.RedisLedger` shares the session with every
            process that joins it (:meth:`join`).
        on_ledger_error: when the ledger is unreachable or times out: ``"closed"`` (raise
            :class:`~budgetkit.LedgerUnavailableError` at the boundary; the call does not run)
            or ``"open"`` (the call runs with a :class:`~budgetkit.LedgerUnavailableWarning`;
            its charge is sent to the ledger at the next boundary that reaches it).
        threads: ``"explicit"`` (the default): a plain ``threading.Thread`` does not copy the
            context, so its decorated calls find no session (they run uncharged, with an
            :class:`~budgetkit.UnbudgetedCallWarning`); run its target through
            ``contextvars.copy_context().run``. ``"inherit"``: threads started and
            ``concurrent.futures`` work submitted inside the block run in a copy of the
            block's context, so they charge this session.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        max_steps: int | None = None,
        max_llm_calls: int | None = None,
        max_tokens: int | None = None,
        max_input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        max_usd: float | Decimal | None = None,
        max_seconds: float | None = None,
        max_consecutive_errors: int | None = None,
        max_repeats: int | None = None,
        session_id: str | None = None,
        name: str | None = None,
        handoff_dir: str | os.PathLike[str] | None = DEFAULT_DIR,
        raise_on_exhausted: bool = True,
        prices: Mapping[str, tuple[float | Decimal, float | Decimal]] | None = None,
        on_unknown_cost: Literal["warn", "error"] | None = None,
        thresholds: Sequence[float] = (),
        on_threshold: Callable[[SessionBudget, str], object] | None = None,
        on_phase_change: Callable[[SessionBudget, str], object] | None = None,
        phases: tuple[float, float] = DEFAULT_PHASE_BOUNDS,
        reserve_for_wrapup: float | None = None,
        session_log: str | os.PathLike[str] | None = None,
        max_total_usd: float | Decimal | None = None,
        max_total_steps: int | None = None,
        max_sessions: int | None = None,
        account: Account | None = None,
        ledger: Ledger | None = None,
        on_ledger_error: Literal["closed", "open"] = "closed",
        threads: Literal["explicit", "inherit"] = "explicit",
        on_exhausted: Callable[[ExtendRequest], Grant | None] | None = None,
        on_exhausted_timeout: float = 30.0,
        **unknown: Never,
    ) -> None:
        if unknown:
            raise BudgetTypeError(
                "SessionBudget() got unknown keyword argument(s): "
                + ", ".join(f"{key}={unknown[key]!r}" for key in sorted(unknown))
            )
        self.limits = Limits.build(
            max_steps=max_steps,
            max_llm_calls=max_llm_calls,
            max_tokens=max_tokens,
            max_input_tokens=max_input_tokens,
            max_output_tokens=max_output_tokens,
            max_usd=max_usd,
            max_seconds=max_seconds,
            max_consecutive_errors=max_consecutive_errors,
            max_repeats=max_repeats,
        )
        self.session_id = (
            os.urandom(16).hex() if session_id is None else check_session_id(session_id)
        )
        checked = check_settings(
            name=name,
            handoff_dir=handoff_dir,
            raise_on_exhausted=raise_on_exhausted,
            prices=prices,
            on_unknown_cost=on_unknown_cost,
            thresholds=thresholds,
            on_threshold=on_threshold,
            on_phase_change=on_phase_change,
            phases=phases,
            reserve_for_wrapup=reserve_for_wrapup,
            session_log=session_log,
            on_ledger_error=on_ledger_error,
            threads=threads,
            on_exhausted=on_exhausted,
            on_exhausted_timeout=on_exhausted_timeout,
        )
        self.name: str | None = checked["name"]
        self.handoff_dir: Path | None = checked["handoff_dir"]
        self.raise_on_exhausted: bool = checked["raise_on_exhausted"]
        self.prices: dict[str, tuple[Decimal, Decimal]] = checked["prices"]
        self.on_unknown_cost: Literal["warn", "error"] | None = checked["on_unknown_cost"]
        self.thresholds: tuple[float, ...] = checked["thresholds"]
        self.on_threshold: Callable[[SessionBudget, str], object] | None = checked["on_threshold"]
        self.on_phase_change: Callable[[SessionBudget, str], object] | None = checked[
            "on_phase_change"
        ]
        self.phases: tuple[float, float] = checked["phases"]
        self.reserve_for_wrapup: float | None = checked["reserve_for_wrapup"]
        self.session_log: str | os.PathLike[str] | None = checked["session_log"]
        self.on_ledger_error: Literal["closed", "open"] = checked["on_ledger_error"]
        self.threads: Literal["explicit", "inherit"] = checked["threads"]
        self.on_exhausted: Callable[[ExtendRequest], Grant | None] | None = checked["on_exhausted"]
        self.on_exhausted_timeout: float = checked["on_exhausted_timeout"]
        #: The grants ``on_exhausted`` gave this session, oldest first (also in its handoff).
        self.grants: list[dict[str, Any]] = []
        #: The handoff this session resumed from (set by :meth:`resume`).
        self.resumed_from: Handoff | None = None
        self.parent_session_id: str | None = None
        # Where this session sits in its chain (internal; read the public properties).
        self.place = Place(
            caps=ChainCaps.build(
                max_total_usd=max_total_usd,
                max_total_steps=max_total_steps,
                max_sessions=max_sessions,
            ),
            session_ids=(self.session_id,),
        )
        self.ledger: Ledger | None = check_ledger(ledger)
        #: The account every call is also charged to (``None``: none).
        self.account: Account | None = None
        if account is not None:
            from ._account import check_account

            self.account = check_account(account)
            self.ledger = check_account_ledger(account, self.ledger, ledger is not None)
        # What the handoff says if the session stops (internal; see update_handoff).
        self.handoff_notes = HandoffNotes()
        # The run-time side: ledger handle, chain, step boundary (internal).
        self.boundary = Boundary(self, self.ledger)
        self._entered = False
        self._token: Any = None
        self._result: SessionResult | None = None

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Self:
        if self._entered:
            raise BudgetError(
                f"session {self.session_id!r} was already entered; a SessionBudget runs once "
                "(create a new one, or use SessionBudget.resume())"
            )
        if self.lease is not None:  # resumed from a file: the claim must still be ours
            self.lease.check()
        if self.handoff_dir is not None:  # found out now, not when the session stops
            check_writable_directory(self.handoff_dir, "handoff_dir")
        parent = active.get()
        b = self.boundary
        b.open(parent, _config.clock())
        self._entered = True
        b.telemetry = _otel.start_session(b)
        self._token = active.set(b)
        if _listeners:
            emit("session_start", self)
        if self.lease is not None:  # renewed in the background until the block exits
            self.lease.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        b = self.boundary
        try:
            active.reset(self._token)
        except ValueError:  # exited in another context than it was entered in
            active.set(b.parent)
        b.close()
        from ._exhaustion import only_exhaustions_of, result_of, write_done

        self._result = result_of(b, exc)
        if (
            self._result.stop_reason == "completed"
            and self.parent_session_id is not None
            and self.handoff_dir is not None
        ):
            write_done(b, self._result)
        if self.lease is not None:  # close the claim, or record the failed attempt
            self.lease.end(self._result, exc)
        _otel.end_session(b, b.telemetry, self._result, exc)
        if _listeners:
            emit("session_end", self, result=self._result)
        if self.session_log is not None or _config.session_log_env():
            from ._session_log import log_session

            log_session(self, self.session_log)
        own = only_exhaustions_of(exc, self.session_id)
        return own and not self.raise_on_exhausted

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ public state
    @property
    def usage(self) -> SessionUsage:
        """A frozen snapshot of what this session has used so far.

        With a ledger, read from the ledger (all workers together); unreachable, it raises
        :class:`~budgetkit.LedgerUnavailableError` (``on_ledger_error="open"``: the last
        usage read).
        """
        return self.boundary.usage(strict=self.on_ledger_error == "closed")

    @property
    def remaining(self) -> Remaining:
        """What is left of each limited dimension (``None`` where unlimited)."""
        step_room, usd_room = self.place.room()
        used = self.boundary.usage()
        return remaining(self.limits, used, step_room=step_room, usd_room=usd_room)

    @property
    def result(self) -> SessionResult | None:
        """How the session ended; ``None`` until the ``with`` block has exited."""
        return self._result

    @property
    def chain_usage(self) -> SessionUsage:
        """What the whole chain has used: the sessions this one resumed, plus this one."""
        return self.place.prior + self.boundary.usage()

    @property
    def lineage(self) -> Lineage:
        """This session's chain, as its handoff records it (cumulative usage up to now)."""
        return self.place.lineage(self.boundary.usage())

    @property
    def chain_caps(self) -> ChainCaps:
        """Chain-wide caps (``max_total_usd``, ``max_total_steps``, ``max_sessions``)."""
        return self.place.caps

    @property
    def root_session_id(self) -> str:
        """The chain's first session (this one, unless resumed)."""
        return self.place.root_session_id

    @property
    def attempt(self) -> int:
        """This session's place in its chain: 1 for the first session."""
        return self.place.attempt

    @property
    def exhausted(self) -> bool:
        """Whether the session is latched as exhausted (with a ledger: by any worker)."""
        return self.boundary.snapshot().reason is not None

    @property
    def parent(self) -> SessionBudget | None:
        """The enclosing session (nesting), if any."""
        parent = self.boundary.parent
        return None if parent is None else parent.budget

    @property
    def phase(self) -> str:
        """``"explore"``, ``"converge"`` or ``"deliver"``, from the most-used limit.

        Bounds are ``phases`` (default 60% and 90%).
        """
        return phase_of(fractions(self.limits, self.boundary.usage()), self.phases)

    def status_line(self) -> str:
        """One short line for the agent's prompt, e.g.
        ``Budget: 23 of 50 steps left, $0.42 of $1.00 left, 4 min left. Phase: converge.``
        Only limited dimensions appear.
        """
        return status_line(self, self.usage)

    def update_handoff(
        self,
        *,
        pending_tasks: list[Any] | None = None,
        context_summary: str | None = None,
        resume_instructions: str | None = None,
    ) -> None:
        """Record what the handoff should say if the session stops; ``None`` keeps a value.

        Values must be JSON-serialisable; they are checked now, so a later write cannot fail
        on them.
        """
        self.handoff_notes.update(
            pending_tasks=pending_tasks,
            context_summary=context_summary,
            resume_instructions=resume_instructions,
        )

    def charge(
        self,
        *,
        usd: float | Decimal | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Charge costs the decorators do not see, to this session and every enclosing one.

        Like any recorded usage, a charge that crosses a limit does not raise here; the next
        step boundary does.
        """
        cost = None if usd is None else to_usd(usd, "usd", allow_zero=True)
        usage = Usage(
            input_tokens=non_negative_int(input_tokens, "input_tokens"),
            output_tokens=non_negative_int(output_tokens, "output_tokens"),
        )
        self._check_entered("charge()")
        self.boundary.record(usage_counts(usage), 0 if cost is None else to_units(cost))
        if _listeners:
            emit("charge", self, usage=usage, cost_usd=cost)

    @contextmanager
    def reserve(self, *, usd: float | Decimal) -> Iterator[None]:
        """Hold ``usd`` of the budget for the calls made inside the block.

        The reservation is admitted atomically: if it does not fit what is left of
        ``max_usd`` (spent plus other reservations), the session is exhausted with reason
        ``max_usd`` before any call is made. LLM costs charged inside the block are taken
        out of the reservation; what is left is released on exit, also on errors.
        """
        amount = to_units(to_usd(usd, "usd"))
        self._check_entered("reserve()")
        self.boundary.admit(None, "reserve", amount)
        holder = Reservation(amount)
        token = reservation.set(holder)
        try:
            yield
        finally:
            reservation.reset(token)
            self.boundary.release(holder.take_all())

    def _check_entered(self, what: str) -> None:
        if not self._entered:
            raise BudgetError(
                f"{what} counts against session {self.session_id!r}, which is not entered: "
                "call it inside the session's 'with' block"
            )

    def check_plan(self, n_steps: int) -> None:
        """Give up before any step runs when a plan of ``n_steps`` cannot fit.

        Raises:
            BudgetExhausted: reason ``plan_exceeds_budget``, message
                ``GIVE_UP: plan requires N steps, budget is M.`` (not latched: the agent
                may plan again with fewer steps).
        """
        n = non_negative_int(n_steps, "n_steps")
        left = self.remaining.steps
        if left is not None and n > left:
            from ._exhaustion import refusal
            from ._giveup import give_up_message

            message = give_up_message(n, left)
            raise refusal(self.boundary, "plan_exceeds_budget", message=message)

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v}" for k, v in self.limits.limited().items())
        return f"<SessionBudget {self.session_id} {limits or 'unlimited'}>"
