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
    check_callback,
    check_fraction,
    check_fractions,
    phase_of,
    status_line,
)
from ._boundary import Boundary, Reservation, active, reservation
from ._events import emit
from ._events import listeners as _listeners
from ._exhaustion import exhaustion_of, only_exhaustions_of, refusal, write_done
from ._files import check_session_id
from ._limits import LIMIT_NAMES, Limits, non_negative_int, to_usd
from ._lineage import CHAIN_CAPS, ChainCaps, Lineage, Place
from ._money import to_units
from ._policy import fractions, remaining
from ._usage import Usage, usage_counts
from ._values import HandoffNotes, Remaining, SessionResult, SessionUsage
from .exceptions import BudgetConfigError, BudgetError, BudgetTypeError
from .ledgers import check_ledger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
    from decimal import Decimal
    from pathlib import Path
    from types import TracebackType

    from ._handoff import Handoff
    from .ledgers import Ledger

__all__ = ["SessionBudget", "current"]

_DEFAULT_DIR: Any = object()


def current() -> SessionBudget | None:
    """The innermost active :class:`SessionBudget` of this context, or ``None``."""
    b = active.get()
    return None if b is None else b.budget


_KEYWORDS = frozenset(
    {
        *LIMIT_NAMES,
        *CHAIN_CAPS,
        "session_id",
        "name",
        "handoff_dir",
        "raise_on_exhausted",
        "prices",
        "on_unknown_cost",
        "thresholds",
        "on_threshold",
        "on_phase_change",
        "phases",
        "reserve_for_wrapup",
        "session_log",
        "ledger",
        "on_ledger_error",
    }
)


class SessionBudget:
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
        session_id: id and handoff file name; a fresh uuid by default.
        name: the agent's name (used in span names).
        handoff_dir: where ``<session_id>.json`` is written on exhaustion; default
            ``$BUDGETKIT_HANDOFF_DIR`` or ``./handoffs``; ``None`` writes no file.
        raise_on_exhausted: ``False`` makes the block swallow its own ``BudgetExhausted``
            on exit (also an exception group of nothing else, as ``asyncio.TaskGroup``
            raises); ``session.result.stop_reason`` then tells why it stopped.
        prices: your own prices, ``{"model": (usd_per_million_input, usd_per_million_output)}``,
            which win over the bundled price table.
        on_unknown_cost: with ``max_usd`` set, what an unpriceable call does: ``"warn"``
            (a :class:`~budgetkit.CostUnknownWarning` once per model) or ``"error"`` (the
            session stops at the next boundary with reason ``cost_unknown``).
        max_total_usd: US dollars for the whole chain of sessions (this one, the ones it
            resumed, and the ones resumed from it); kept across resumes.
        max_total_steps: ``@budget.step`` calls for the whole chain; kept across resumes.
        max_sessions: sessions in the chain, the first included; resuming past it is refused
            with :class:`~budgetkit.ChainCapError`. Kept across resumes.
        ledger: where the counters live. ``None`` (the default): in this process, unless
            ``$BUDGETKIT_LEDGER_URL`` names a Redis server. A
            :class:`~budgetkit.ledgers.redis.RedisLedger` shares the session with every
            process that joins it (:meth:`join`).
        on_ledger_error: when the ledger is unreachable or times out: ``"closed"`` (raise
            :class:`~budgetkit.LedgerUnavailableError` at the boundary; the call does not run)
            or ``"open"`` (the call runs with a :class:`~budgetkit.LedgerUnavailableWarning`;
            its charge is sent to the ledger at the next boundary that reaches it).

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
        session_id: str | None = None,
        name: str | None = None,
        handoff_dir: str | os.PathLike[str] | None = _DEFAULT_DIR,
        raise_on_exhausted: bool = True,
        prices: Mapping[str, tuple[float | Decimal, float | Decimal]] | None = None,
        on_unknown_cost: Literal["warn", "error"] = "warn",
        thresholds: Sequence[float] = (),
        on_threshold: Callable[[SessionBudget, str], object] | None = None,
        on_phase_change: Callable[[SessionBudget, str], object] | None = None,
        phases: tuple[float, float] = DEFAULT_PHASE_BOUNDS,
        reserve_for_wrapup: float | None = None,
        session_log: str | os.PathLike[str] | None = None,
        max_total_usd: float | Decimal | None = None,
        max_total_steps: int | None = None,
        max_sessions: int | None = None,
        ledger: Ledger | None = None,
        on_ledger_error: Literal["closed", "open"] = "closed",
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
        )
        self.session_id = (
            os.urandom(16).hex() if session_id is None else check_session_id(session_id)
        )
        if name is not None and not isinstance(name, str):
            raise BudgetTypeError(f"name must be a str or None, got {name!r}")
        self.name = name
        self.handoff_dir = _handoff_dir(handoff_dir)
        if not isinstance(raise_on_exhausted, bool):
            raise BudgetTypeError(f"raise_on_exhausted must be a bool, got {raise_on_exhausted!r}")
        self.raise_on_exhausted = raise_on_exhausted
        if on_unknown_cost not in ("warn", "error"):
            raise BudgetConfigError(
                f"on_unknown_cost must be 'warn' or 'error', got {on_unknown_cost!r}"
            )
        self.on_unknown_cost = on_unknown_cost
        self.prices = _validated_prices(prices)
        self.thresholds = check_fractions(thresholds, "thresholds")
        self.on_threshold = check_callback(on_threshold, "on_threshold")
        self.on_phase_change = check_callback(on_phase_change, "on_phase_change")
        bounds = check_fractions(phases, "phases", upper_inclusive=True)
        if len(bounds) != 2:
            raise BudgetConfigError(
                f"phases must be two fractions (converge, deliver), got {phases!r}"
            )
        self.phases: tuple[float, float] = (bounds[0], bounds[1])
        self.reserve_for_wrapup = (
            None
            if reserve_for_wrapup is None
            else check_fraction(reserve_for_wrapup, "reserve_for_wrapup")
        )
        if session_log is not None and not isinstance(session_log, str | os.PathLike):
            raise BudgetTypeError(f"session_log must be a path or None, got {session_log!r}")
        self.session_log = session_log
        if on_ledger_error not in ("closed", "open"):
            raise BudgetConfigError(
                f"on_ledger_error must be 'closed' or 'open', got {on_ledger_error!r}"
            )
        self.on_ledger_error = on_ledger_error
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
        parent = active.get()
        b = self.boundary
        b.open(parent, _config.clock())
        self._entered = True
        b.telemetry = _otel.start_session(b)
        self._token = active.set(b)
        if _listeners:
            emit("session_start", self)
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
        snap = b.snapshot()  # first: with a ledger, it reads a latch set by another worker
        usage = b.usage()
        exhausted = exhaustion_of(exc)
        own = exhausted is not None and only_exhaustions_of(exc, self.session_id)
        if snap.reason is not None:
            stop_reason, stopped_by = snap.reason, self.session_id
        elif exhausted is not None:
            stop_reason, stopped_by = exhausted.reason, exhausted.session_id
        elif exc is not None:
            stop_reason, stopped_by = "error", None
        else:
            stop_reason, stopped_by = "completed", None
        exhaustion = b.exhaustion
        self._result = SessionResult(
            session_id=self.session_id,
            stop_reason=stop_reason,
            usage=usage,
            handoff_path=exhaustion.path if exhaustion else None,
            stopped_by=stopped_by,
        )
        if (
            stop_reason == "completed"
            and self.parent_session_id is not None
            and self.handoff_dir is not None
        ):
            write_done(b, self._result)
        _otel.end_session(b, b.telemetry, self._result, exc)
        if _listeners:
            emit("session_end", self, result=self._result)
        if self.session_log is not None or _config.session_log_env():
            from ._session_log import log_session

            log_session(self, self.session_log)
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
            from ._giveup import give_up_message

            message = give_up_message(n, left)
            raise refusal(self.boundary, "plan_exceeds_budget", message=message)

    # ------------------------------------------------------------------ many processes
    @classmethod
    def join(
        cls,
        session_id_or_headers: str | Mapping[str, str] | None = None,
        /,
        *,
        ledger: Ledger | None = None,
        **overrides: Any,
    ) -> Self:
        """Enter, from another process or machine, a session that lives in a ledger.

        Returns a new, not yet entered ``SessionBudget`` for session ``session_id_or_headers``:
        an id, a mapping of headers whose W3C ``baggage`` carries ``budgetkit.session.id``
        (see :meth:`inject`), or ``None`` for the current OpenTelemetry baggage. Its limits,
        name and chain come from the ledger; keywords may set only what is local to this
        process (``handoff_dir``, ``raise_on_exhausted``, ``prices``, ``on_unknown_cost``,
        ``thresholds``, ``on_threshold``, ``on_phase_change``, ``phases``, ``session_log``,
        ``on_ledger_error``).

        Args:
            ledger: the ledger holding the session; default ``$BUDGETKIT_LEDGER_URL``'s.

        Raises:
            SessionNotFoundError: the session is unknown to the ledger, or expired.
            LedgerUnavailableError: the ledger is unreachable or timed out.
            BudgetConfigError: no ledger, no session id in the headers, or a limit keyword.

        .. versionadded:: 0.1.0
        """
        from ._joining import open_joined

        found, handle, kwargs, place = open_joined(session_id_or_headers, ledger, overrides)
        session = cls(**kwargs, ledger=found)
        session.parent_session_id = handle.parent_session_id
        if place is not None:
            session.place = place
        session.boundary.handle = handle
        return session

    def inject(self, headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
        """Write this session's id into ``headers`` as the W3C ``baggage`` entry
        ``budgetkit.session.id`` (other baggage entries are kept); return ``headers``.

        A worker that receives them enters the session with :meth:`join`.

        .. versionadded:: 0.1.0
        """
        from ._joining import inject

        return inject(self.session_id, headers)

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(
        cls,
        handoff: Handoff | str | os.PathLike[str],
        /,
        *,
        chain: str | None = None,
        **overrides: Any,
    ) -> Self:
        """A new session that continues ``handoff`` with a fresh budget.

        The old limits and chain caps apply unless overridden by keyword (the same keywords
        as the constructor). ``parent_session_id`` is set, ``resumed_from`` holds the handoff,
        and the session joins the handoff's chain (``root_session_id``, ``attempt``,
        ``chain_usage``). When a path is given, the new session writes its handoff next to it
        unless ``handoff_dir`` is overridden, and the handoff is *claimed* atomically (a
        ``<name>.claim`` file beside it) once every check has passed, so it is resumed at
        most once.

        Args:
            chain: the root session id of the chain you mean to continue; a handoff of
                another chain raises :class:`~budgetkit.ChainError`.

        Raises:
            HandoffError: the handoff file is missing, corrupt or not a handoff.
            ChainError: the handoff is of another chain than ``chain``, its parent's handoff
                beside it belongs to another chain, or the new session id is already in it.
            ChainCapError: the chain is at or over a chain cap (the caps given included).
            HandoffClaimedError: the handoff file was already claimed by another resume.
            BudgetTypeError: an unknown keyword.
        """
        unknown = sorted(set(overrides) - _KEYWORDS)
        if unknown:
            raise BudgetTypeError(
                "SessionBudget.resume() got unknown keyword argument(s): "
                + ", ".join(f"{key}={overrides[key]!r}" for key in unknown)
            )
        from ._chainfiles import claim, prepare_resume

        plan = prepare_resume(handoff, chain=chain)
        session = cls(**{**plan.kwargs, **overrides})
        session.place = session.place.continued(plan.lineage, session.session_id)
        plan.check_own_file(session.handoff_dir, session.session_id)
        if plan.path is not None:
            claim(plan.path, plan.handoff.session_id, session.session_id)
        session.parent_session_id = plan.handoff.session_id
        session.resumed_from = plan.handoff
        return session

    @classmethod
    def from_config(
        cls, tier: str, *, path: str | os.PathLike[str] | None = None, **overrides: Any
    ) -> Self:
        """A session with the limits of a configured tier.

        Tiers come from ``[tool.budgetkit.tiers.<name>]`` in ``pyproject.toml`` or
        ``[tiers.<name>]`` in ``budgetkit.toml``, over the built-in presets ``qa``,
        ``research``, ``analysis`` and ``long``; ``BUDGETKIT_MAX_*`` variables override;
        keywords override everything.
        """
        from ._tiers import load_tier

        return cls(**{**load_tier(tier, path=path), **overrides})

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v}" for k, v in self.limits.limited().items())
        return f"<SessionBudget {self.session_id} {limits or 'unlimited'}>"


def _handoff_dir(value: object) -> Path | None:
    if value is _DEFAULT_DIR:
        return _config.default_handoff_dir()
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        if str(value) == "":
            raise BudgetConfigError("handoff_dir must be a directory path or None, got ''")
        from pathlib import Path

        return Path(value)
    raise BudgetTypeError(f"handoff_dir must be a path or None, got {value!r}")


def _validated_prices(prices: object) -> dict[str, tuple[Decimal, Decimal]]:
    if prices is None:
        return {}
    from ._pricing import validate_prices

    return validate_prices(prices)
