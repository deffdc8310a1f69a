"""SessionBudget: the counters, the step boundary, latching, nesting, handoff and resume."""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, localcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Never, NoReturn, Self

from . import _config, _otel
from ._agent_view import (
    DEFAULT_PHASE_BOUNDS,
    check_callback,
    check_fraction,
    check_fractions,
    fractions,
    phase_of,
    status_line,
)
from ._events import emit
from ._events import listeners as _listeners
from ._handoff import Handoff, check_session_id, utc_now, write_atomic
from ._limits import LIMIT_NAMES, Limits, non_negative_int, to_usd
from ._lineage import CHAIN_CAPS, ChainCaps, Lineage, add_usage, cap_reached
from ._money import UNITS_PER_USD, from_units, to_units, to_units_floor
from ._usage import Counts, Usage, usage_counts
from .exceptions import (
    BudgetConfigError,
    BudgetError,
    BudgetExhausted,
    BudgetTypeError,
    BudgetWarning,
    ChainCapError,
    ChainError,
    CostUnknownWarning,
    HandoffError,
    LedgerUnavailableError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
    from types import TracebackType

    from .ledgers import Ledger, LedgerSession

__all__ = ["CallSpec", "Remaining", "SessionBudget", "SessionResult", "SessionUsage", "current"]

STEP = "step"
LLM = "llm"

#: The innermost active session of this context. It holds a *mutable* session object, so
#: ``asyncio`` children and copied-context threads charge the same counters.
_current: ContextVar[SessionBudget | None] = ContextVar("budgetkit_session", default=None)

#: Guards every in-process counter. One lock makes a nested admission (check every enclosing
#: session, then count in all of them) a single atomic step; the work under it is a few adds.
_LOCK = threading.Lock()

_DEFAULT_DIR: Any = object()

#: The ledger's Decimal arithmetic is exact, whatever precision the caller's context has.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def current() -> SessionBudget | None:
    """The innermost active :class:`SessionBudget` of this context, or ``None``."""
    return _current.get()


@dataclass(frozen=True, slots=True)
class SessionUsage:
    """A frozen snapshot of what a session has used.

    .. versionadded:: 0.1.0
    """

    steps: int = 0
    """``@budget.step`` calls admitted."""
    llm_calls: int = 0
    """``@budget.llm_call`` calls admitted."""
    input_tokens: int = 0
    """Input tokens, cache reads and writes included."""
    output_tokens: int = 0
    """Output tokens, reasoning included."""
    total_tokens: int = 0
    """Input plus output tokens."""
    cost_usd: Decimal = Decimal(0)
    """Sum of the costs that are known (see ``unpriced_calls``)."""
    elapsed_seconds: float = 0.0
    """Seconds since the session was entered (monotonic clock)."""
    cache_read_tokens: int = 0
    """Input tokens read from a prompt cache."""
    cache_write_tokens: int = 0
    """Input tokens written to a prompt cache."""
    reasoning_tokens: int = 0
    """Reasoning tokens (part of the output)."""
    unpriced_calls: int = 0
    """LLM calls with usage but no known price: their cost is *unknown*, not zero."""
    unmeasured_calls: int = 0
    """LLM calls that reported no usable usage at all."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (USD as an exact string)."""
        return {
            "steps": self.steps,
            "llm_calls": self.llm_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": str(self.cost_usd),
            "elapsed_seconds": round(self.elapsed_seconds, 6),
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "unpriced_calls": self.unpriced_calls,
            "unmeasured_calls": self.unmeasured_calls,
        }

    def _values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left of each limited dimension; ``None`` where the session is unlimited.

    ``elapsed_seconds`` here is the time left. Values never go below zero.

    .. versionadded:: 0.1.0
    """

    steps: int | None = None
    llm_calls: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: Decimal | None = None
    elapsed_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class SessionResult:
    """How a session ended, available as ``session.result`` after the ``with`` block.

    .. versionadded:: 0.1.0
    """

    session_id: str
    stop_reason: str
    """``"completed"``, ``"error"``, or the limit that stopped it (``"max_steps"`` ...)."""
    usage: SessionUsage
    handoff_path: Path | None = None
    stopped_by: str | None = None
    """The session whose limit stopped this one (itself, or an enclosing session)."""


@dataclass(frozen=True, slots=True)
class CallSpec:
    """What a decorator knows about the calls it wraps."""

    kind: str
    name: str
    model: str | None = None
    provider: str | None = None
    usage: Callable[[Any], Any] | None = None
    estimate: Callable[..., Any] | None = None
    wrapup: bool = False
    timeout: float | None = None
    max_output_chars: int | None = None

    def request_model(self, kwargs: Mapping[str, Any]) -> str | None:
        """The model a call asks for: the decorator's ``model=``, else its ``model`` argument."""
        if self.model is not None:
            return self.model
        model = kwargs.get("model")
        return model if isinstance(model, str) else None


@dataclass(frozen=True, slots=True)
class _Exhaustion:
    reason: str
    usage: SessionUsage
    handoff: Handoff
    path: Path | None
    error: BaseException | None


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

#: What ``join()`` accepts: the limits and the chain come from the ledger.
_JOIN_KEYWORDS = frozenset(
    {
        "handoff_dir",
        "raise_on_exhausted",
        "prices",
        "on_unknown_cost",
        "thresholds",
        "on_threshold",
        "on_phase_change",
        "phases",
        "session_log",
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
        self._fired: set[tuple[str, float]] = set()
        self._phase = "explore"
        self._watch = bool((self.thresholds and self.on_threshold) or self.on_phase_change)
        #: The handoff this session resumed from (set by :meth:`resume`).
        self.resumed_from: Handoff | None = None
        self.parent_session_id: str | None = None
        #: Chain-wide caps (``max_total_usd``, ``max_total_steps``, ``max_sessions``).
        self.chain_caps = ChainCaps.build(
            max_total_usd=max_total_usd,
            max_total_steps=max_total_steps,
            max_sessions=max_sessions,
        )
        #: The chain's first session (this one, unless resumed).
        self.root_session_id = self.session_id
        #: This session's place in its chain: 1 for the first session.
        self.attempt = 1
        self._lineage_ids: tuple[str, ...] = (self.session_id,)
        self._prior = SessionUsage()._values()  # the chain's usage before this session
        self._set_chain_room()

        # Limits copied to plain attributes: the boundary reads them on every call.
        lim = self.limits
        self._max_steps = lim.max_steps
        self._max_llm_calls = lim.max_llm_calls
        self._max_usd = lim.max_usd
        # USD limits in units (rounded down: ``spent > limit`` is the same test in units).
        self._max_usd_units = None if lim.max_usd is None else to_units_floor(lim.max_usd)
        self._max_seconds = lim.max_seconds
        self._max_errors = lim.max_consecutive_errors
        self._step_cap = sys.maxsize if lim.max_steps is None else lim.max_steps
        self._llm_cap = sys.maxsize if lim.max_llm_calls is None else lim.max_llm_calls
        # Only sessions with nothing but count limits take the fast step path.
        self._plain = lim.max_seconds is None and reserve_for_wrapup is None and not self.chain_caps

        # A shared ledger (budgetkit.ledgers): the counters live there, not here.
        from ._shared import Outbox, check_ledger

        self.ledger: Ledger | None = check_ledger(ledger)
        if on_ledger_error not in ("closed", "open"):
            raise BudgetConfigError(
                f"on_ledger_error must be 'closed' or 'open', got {on_ledger_error!r}"
            )
        self.on_ledger_error = on_ledger_error
        self._shared: LedgerSession | None = None  # this session's handle in the ledger
        self._outbox = Outbox()
        self._last_usage: SessionUsage | None = None
        # The chain's ledger session, if any, and its in-process sessions (set on entry).
        self._ledger_member: SessionBudget | None = None
        self._local_members: tuple[SessionBudget, ...] = (self,)
        if self.ledger is not None:
            self._plain = False
        # The fast paths admit while steps < _fast_cap (LLM calls < _fast_llm_cap); -1 sends
        # every call to _admit. Setting _tripped or _reason (a limit crossed, or latched)
        # also sets both to -1.
        self._fast_cap = self._step_cap if self._plain else -1
        self._fast_llm_cap = self._llm_cap if self._plain else -1

        # Counters, guarded by _LOCK.
        self._steps = 0
        self._llm_calls = 0
        self._input: int = 0
        self._output: int = 0
        self._cache_read = 0
        self._cache_write = 0
        self._reasoning = 0
        self._cost = 0  # USD in units (budgetkit._money), like _reserved
        self._unpriced = 0
        self._unmeasured = 0
        self._errors_in_a_row = 0
        self._errors_pending = False  # some session of the chain counts errors in a row
        self._reserved = 0
        self._tripped_as: str | None = None  # a measured limit was crossed: raise at next boundary
        self._reason_as: str | None = None  # latched: exhausted for this reason
        self._refused: str | None = None

        self._exhaust_lock = threading.Lock()
        self._exhaustion: _Exhaustion | None = None
        self._warned: set[str] = set()
        self._warned_unmeasured: set[str] = set()
        self._pending_tasks: list[Any] = []
        self._context_summary: str | None = None
        self._resume_instructions: str | None = None

        self._entered = False
        self._parent: SessionBudget | None = None
        self._chain: tuple[SessionBudget, ...] = (self,)
        self._start: float | None = None
        self._end: float | None = None
        self._token: Any = None
        self._span: Any = None
        self._result: SessionResult | None = None

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Self:
        if self._entered:
            raise BudgetError(
                f"session {self.session_id!r} was already entered; a SessionBudget runs once "
                "(create a new one, or use SessionBudget.resume())"
            )
        parent = _current.get()
        chain: tuple[SessionBudget, ...] = (self,)
        if parent is not None:
            chain = (*parent._chain, self)
        if self.ledger is not None:
            self._enter_ledger(parent)
        self._entered = True
        self._parent = parent
        self._chain = chain
        member = next((s for s in chain if s._shared is not None), None)
        if member is not None:
            self._ledger_member = member
            self._local_members = tuple(s for s in chain if s is not member)
        self._start = _config.clock()
        self._span = _otel.start_session(self)
        self._token = _current.set(self)
        if _listeners:
            emit("session_start", self)
        return self

    def _enter_ledger(self, parent: SessionBudget | None) -> None:
        """Create this session in its ledger (unless joined); one ledger session per chain."""
        if parent is not None and parent._ledger_member is not None:
            other = parent._ledger_member
            raise BudgetConfigError(
                f"session {self.session_id!r} has a ledger but is nested in session "
                f"{other.session_id!r}, which has one too: a chain of nested sessions may "
                "hold one ledger session (enter this one outside the other)"
            )
        if self._shared is not None or self.ledger is None:
            return
        try:
            self._shared = self.ledger.create(
                self.session_id,
                self.limits,
                name=self.name,
                reserve_for_wrapup=self.reserve_for_wrapup,
                parent_session_id=self.parent_session_id,
                step_room=self._chain_step_room,
                usd_room=self._chain_usd_room,
                extra={"lineage": self._lineage_of(SessionUsage()).to_dict()},
            )
        except LedgerUnavailableError as exc:
            if self.on_ledger_error == "closed":
                raise
            from ._shared import warn_not_created

            warn_not_created(self, exc)
            self.ledger = None  # runs in this process only

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            _current.reset(self._token)
        except ValueError:  # exited in another context than it was entered in
            _current.set(self._parent)
        self._end = _config.clock()
        usage = self._snapshot()  # first: with a ledger, it reads a latch set by another worker
        exhausted = _exhaustion_of(exc)
        own = exhausted is not None and _only_exhaustions_of(exc, self.session_id)
        if self._reason is not None:
            stop_reason, stopped_by = self._reason, self.session_id
        elif exhausted is not None:
            stop_reason, stopped_by = exhausted.reason, exhausted.session_id
        elif exc is not None:
            stop_reason, stopped_by = "error", None
        else:
            stop_reason, stopped_by = "completed", None
        exhaustion = self._exhaustion
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
            self._write_done()
        _otel.end_session(self, self._span, self._result, exc)
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
        return self._snapshot(strict=self.on_ledger_error == "closed")

    @property
    def remaining(self) -> Remaining:
        """What is left of each limited dimension (``None`` where unlimited)."""
        return self._remaining_from(self._snapshot())

    def _remaining_from(self, used: SessionUsage) -> Remaining:
        lim = self.limits
        with localcontext(_EXACT):
            usd_left = None if lim.max_usd is None else max(lim.max_usd - used.cost_usd, Decimal(0))
            if self._chain_usd_room is not None:
                chain_left = max(self._chain_usd_room - used.cost_usd, Decimal(0))
                usd_left = chain_left if usd_left is None else min(usd_left, chain_left)

        def left(limit: int | None, value: int) -> int | None:
            return None if limit is None else max(limit - value, 0)

        steps_left = left(lim.max_steps, used.steps)
        if self._chain_step_room is not None:
            chain_steps = max(self._chain_step_room - used.steps, 0)
            steps_left = chain_steps if steps_left is None else min(steps_left, chain_steps)
        return Remaining(
            steps=steps_left,
            llm_calls=left(lim.max_llm_calls, used.llm_calls),
            input_tokens=left(lim.max_input_tokens, used.input_tokens),
            output_tokens=left(lim.max_output_tokens, used.output_tokens),
            total_tokens=left(lim.max_tokens, used.total_tokens),
            cost_usd=usd_left,
            elapsed_seconds=None
            if lim.max_seconds is None
            else max(lim.max_seconds - used.elapsed_seconds, 0.0),
        )

    @property
    def result(self) -> SessionResult | None:
        """How the session ended; ``None`` until the ``with`` block has exited."""
        return self._result

    @property
    def chain_usage(self) -> SessionUsage:
        """What the whole chain has used: the sessions this one resumed, plus this one."""
        return SessionUsage(**add_usage(self._prior, self._snapshot()._values()))

    @property
    def lineage(self) -> Lineage:
        """This session's chain, as its handoff records it (cumulative usage up to now)."""
        return self._lineage_of(self._snapshot())

    def _lineage_of(self, usage: SessionUsage) -> Lineage:
        return Lineage(
            root_session_id=self.root_session_id,
            attempt=self.attempt,
            session_ids=self._lineage_ids,
            caps=self.chain_caps,
            cumulative_usage=add_usage(self._prior, usage._values()),
        )

    def _set_chain_room(self) -> None:
        """What the chain caps leave for this session (read by ``_admit``)."""
        caps = self.chain_caps
        self._chain_step_room = (
            None if caps.max_total_steps is None else caps.max_total_steps - self._prior["steps"]
        )
        with localcontext(_EXACT):
            self._chain_usd_room = (
                None if caps.max_total_usd is None else caps.max_total_usd - self._prior["cost_usd"]
            )
        room = self._chain_usd_room
        self._chain_usd_units = None if room is None else to_units_floor(room)
        lim = self.limits
        # Whether a recorded charge can cross a limit: tokens, USD, or the chain's USD.
        self._measured = room is not None or any(
            limit is not None
            for limit in (lim.max_tokens, lim.max_input_tokens, lim.max_output_tokens, lim.max_usd)
        )

    @property
    def exhausted(self) -> bool:
        """Whether the session is latched as exhausted (with a ledger: by any worker)."""
        if self._reason is None and self._shared is not None:
            self._snapshot()  # picks up a latch set by another worker
        return self._reason is not None

    @property
    def parent(self) -> SessionBudget | None:
        """The enclosing session (nesting), if any."""
        return self._parent

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
        if pending_tasks is not None:
            if not isinstance(pending_tasks, list | tuple):
                raise BudgetTypeError(f"pending_tasks must be a list, got {pending_tasks!r}")
            try:
                import json  # lazily: keeps `import budgetkit` fast

                json.dumps(list(pending_tasks))
            except (TypeError, ValueError) as exc:
                raise BudgetTypeError(
                    f"pending_tasks must be JSON-serialisable, got {pending_tasks!r} ({exc})"
                ) from None
            self._pending_tasks = list(pending_tasks)
        if context_summary is not None:
            if not isinstance(context_summary, str):
                raise BudgetTypeError(f"context_summary must be a str, got {context_summary!r}")
            self._context_summary = context_summary
        if resume_instructions is not None:
            if not isinstance(resume_instructions, str):
                raise BudgetTypeError(
                    f"resume_instructions must be a str, got {resume_instructions!r}"
                )
            self._resume_instructions = resume_instructions

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
        self._record(usage_counts(usage), 0 if cost is None else to_units(cost))
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
        self._admit(None, "reserve", amount)
        holder = _Reservation(amount)
        token = _reservation.set(holder)
        try:
            yield
        finally:
            _reservation.reset(token)
            self._release(holder.take_all())

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
        from ._shared import check_ledger, session_id_from

        unknown = sorted(set(overrides) - _JOIN_KEYWORDS)
        if unknown:
            raise BudgetConfigError(
                "SessionBudget.join() takes the limits, name and chain from the ledger; it "
                "accepts only local settings, got "
                + ", ".join(f"{key}={overrides[key]!r}" for key in unknown)
            )
        found = check_ledger(ledger)
        if found is None:
            raise BudgetConfigError(
                "SessionBudget.join() needs a ledger: pass ledger=RedisLedger(url) or set "
                "$BUDGETKIT_LEDGER_URL"
            )
        session_id = check_session_id(session_id_from(session_id_or_headers))
        handle = found.join(session_id)
        lim = handle.limits
        session = cls(
            **{key: getattr(lim, key) for key in LIMIT_NAMES},
            session_id=session_id,
            name=handle.name,
            reserve_for_wrapup=handle.reserve_for_wrapup,
            ledger=found,
            **overrides,
        )
        session.parent_session_id = handle.parent_session_id
        lineage = handle.extra.get("lineage")
        if lineage is not None:
            chain = Lineage.from_dict(
                lineage,
                session_id=session_id,
                parent_session_id=handle.parent_session_id,
                source=f"ledger session {session_id!r}",
            )
            session.chain_caps = chain.caps
            session.root_session_id = chain.root_session_id
            session.attempt = chain.attempt
            session._lineage_ids = chain.session_ids
            session._prior = dict(chain.cumulative_usage)
            session._set_chain_room()
        session._shared = handle
        return session

    def inject(self, headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
        """Write this session's id into ``headers`` as the W3C ``baggage`` entry
        ``budgetkit.session.id`` (other baggage entries are kept); return ``headers``.

        A worker that receives them enters the session with :meth:`join`.

        .. versionadded:: 0.1.0
        """
        from ._shared import inject

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
        from . import _chainfiles

        path: Path | None = None
        if isinstance(handoff, Handoff):
            loaded, directory = handoff, None
        elif isinstance(handoff, str | os.PathLike):
            path = Path(handoff)
            loaded, directory = Handoff.load(path), path.parent
        else:
            raise BudgetTypeError(
                f"resume() takes a Handoff or a path to a handoff file, got {handoff!r}"
            )
        if chain is not None and not isinstance(chain, str):
            raise BudgetTypeError(f"chain must be a root session id (str) or None, got {chain!r}")
        lineage = _chainfiles.lineage_or_legacy(loaded)
        if chain is not None and lineage.root_session_id != chain:
            raise ChainError(
                f"handoff of session {loaded.session_id!r} belongs to chain "
                f"{lineage.root_session_id!r} ({' -> '.join(lineage.session_ids)}), "
                f"not to chain {chain!r}: it cannot continue it"
            )
        if directory is not None:
            _chainfiles.check_parent_link(loaded, lineage, directory)
        kwargs: dict[str, Any] = {}
        try:
            for key in LIMIT_NAMES:
                value = loaded.limits.get(key)
                # USD is written as an exact string; anything else is left to Limits.build.
                if key == "max_usd" and isinstance(value, str):
                    value = Decimal(value)
                kwargs[key] = value
            Limits.build(**kwargs)
        except (BudgetConfigError, BudgetTypeError, ArithmeticError) as exc:
            raise HandoffError(
                f"handoff of session {loaded.session_id!r} has invalid limits: {exc}"
            ) from None
        caps = lineage.caps
        kwargs["max_total_usd"] = caps.max_total_usd
        kwargs["max_total_steps"] = caps.max_total_steps
        kwargs["max_sessions"] = caps.max_sessions
        kwargs["name"] = loaded.name
        if directory is not None:
            kwargs["handoff_dir"] = directory
        kwargs.update(overrides)
        session = cls(**kwargs)
        session._join(lineage)
        own = session.handoff_dir / f"{session.session_id}.json" if session.handoff_dir else None
        if own is not None and own.exists():
            raise ChainError(
                f"cannot resume session {loaded.session_id!r} as session {session.session_id!r}: "
                f"{str(own)!r} already exists and would be overwritten"
            )
        if path is not None:
            _chainfiles.claim(path, loaded.session_id, session.session_id)
        session.parent_session_id = loaded.session_id
        session.resumed_from = loaded
        return session

    def _join(self, parent: Lineage) -> None:
        """Continue the chain of ``parent`` (the resumed handoff's lineage), or refuse."""
        ids = (*parent.session_ids, self.session_id)
        if self.session_id in parent.session_ids:
            raise ChainError(
                f"session {self.session_id!r} is already in chain {parent.root_session_id!r} "
                f"({' -> '.join(parent.session_ids)}): resuming {parent.session_ids[-1]!r} "
                "under that id would make a cycle in the parent links"
            )
        reached = cap_reached(self.chain_caps, parent.cumulative_usage, len(ids))
        if reached is not None:
            cap, detail = reached
            raise ChainCapError(
                f"cannot resume session {parent.session_ids[-1]!r} of chain "
                f"{parent.root_session_id!r} ({' -> '.join(parent.session_ids)}): {detail}; "
                f"pass a larger {cap}= to resume() to continue",
                reason=cap,
                session_id=parent.session_ids[-1],
                root_session_id=parent.root_session_id,
            )
        self.root_session_id = parent.root_session_id
        self.attempt = len(ids)
        self._lineage_ids = ids
        self._prior = dict(parent.cumulative_usage)
        self._set_chain_room()

    # ------------------------------------------------------------------ boundary
    @property
    def _tripped(self) -> str | None:
        """The measured limit that was crossed, to be raised at the next boundary."""
        return self._tripped_as

    @_tripped.setter
    def _tripped(self, reason: str | None) -> None:
        self._tripped_as = reason
        if reason is not None:
            self._fast_cap = self._fast_llm_cap = -1

    @property
    def _reason(self) -> str | None:
        """The reason the session is latched as exhausted."""
        return self._reason_as

    @_reason.setter
    def _reason(self, reason: str | None) -> None:
        self._reason_as = reason
        if reason is not None:
            self._fast_cap = self._fast_llm_cap = -1

    def _admit_step(self, name: str) -> None:
        """The fast path of ``_admit(STEP, name)``: count the step when nothing can refuse it.

        Anything that might refuse (a latch, a tripped limit, a time limit, the step cap)
        goes to :meth:`_admit`, which alone decides; this only skips its work when it
        would admit anyway.
        """
        if self._parent is None:  # the common case: no nesting
            # `with`, not acquire(): a call can hand the GIL to another thread while this one
            # holds the lock (a convoy of 8 threads ran 5x slower); entering `with` cannot.
            with _LOCK:
                admitted = self._steps < self._fast_cap
                if admitted:
                    self._steps += 1
            if admitted:
                if _listeners:
                    emit("step", self, name=name)
                if self._watch:
                    self._notify()
                return
        else:
            admitted = False
            with _LOCK:
                for s in self._chain:
                    if s._steps >= s._fast_cap or s._watch:
                        break
                else:
                    for s in self._chain:
                        s._steps += 1
                    admitted = True
            if admitted:
                if _listeners:
                    emit("step", self, name=name)
                return
        self._admit(STEP, name)

    def _admit_llm(self, name: str) -> None:
        """The fast path of ``_admit(LLM, name)`` (no reservation), as :meth:`_admit_step`."""
        if self._parent is None:
            with _LOCK:
                admitted = self._llm_calls < self._fast_llm_cap
                if admitted:
                    self._llm_calls += 1
            if admitted:
                if self._watch:
                    self._notify()
                return
        self._admit(LLM, name)

    def _admit(
        self, kind: str | None, name: str, reserve: int | None = None, *, wrapup: bool = False
    ) -> None:
        """Check every enclosing session, then count the call in all of them, atomically.

        Raises ``BudgetExhausted``: latched (handoff written) for a limit, or not latched
        (reason ``wrapup_reserve``) for an ordinary call that would eat the wrap-up reserve.
        """
        if self._ledger_member is not None:
            from . import _shared

            _shared.admit(self, kind, name, reserve, wrapup)
            return
        tripped, refused_by = check_and_count(self._chain, kind, name, reserve, wrapup)
        if tripped is not None:
            tripped._raise_exhausted()
        if refused_by is not None:
            raise refused_by._refusal("wrapup_reserve")
        if _listeners and kind == STEP:
            emit("step", self, name=name)
        self._notify_chain()

    def _in_wrapup_reserve(self, kind: str | None) -> bool:
        """Whether an ordinary call now would use the wrap-up reserve (called under _LOCK)."""
        keep = 1 - (self.reserve_for_wrapup or 0.0)
        lim = self.limits
        if (
            kind == STEP
            and lim.max_steps is not None
            and self._steps >= math.floor(lim.max_steps * keep)
        ):
            return True
        if (
            kind == LLM
            and lim.max_llm_calls is not None
            and self._llm_calls >= math.floor(lim.max_llm_calls * keep)
        ):
            return True
        measured = (
            (lim.max_tokens, self._input + self._output),
            (lim.max_input_tokens, self._input),
            (lim.max_output_tokens, self._output),
            (lim.max_usd, self._cost / UNITS_PER_USD),
        )
        for limit, used in measured:
            if limit is not None and float(used) > float(limit) * keep:
                return True
        if lim.max_seconds is not None:
            return _config.clock() - self._start_time() > lim.max_seconds * keep
        return False

    def _refusal(self, reason: str, *, message: str | None = None) -> BudgetExhausted:
        """A ``BudgetExhausted`` that does not latch the session and writes no file."""
        usage = self._snapshot()
        return BudgetExhausted(
            reason,
            session_id=self.session_id,
            usage=usage,
            handoff=self._build_handoff(reason, usage, None),
            message=message,
        )

    # ------------------------------------------------------------------ agent's view
    def _notify_chain(self) -> None:
        for s in self._chain:
            if s._watch:
                s._notify()

    def _notify(self) -> None:
        """Fire threshold and phase callbacks once for each crossing (outside the lock)."""
        used = self._snapshot()
        fracs = fractions(self, used)
        fire: list[tuple[str, float]] = []
        if self.on_threshold is not None:
            with _LOCK:
                for dim, f in fracs.items():
                    for t in self.thresholds:
                        if f >= t and (dim, t) not in self._fired:
                            self._fired.add((dim, t))
                            fire.append((dim, t))
        for dim, _t in fire:
            self.on_threshold(self, dim)  # type: ignore[misc]
        if self.on_phase_change is not None:
            phase = phase_of(fracs, self.phases)
            with _LOCK:
                changed, self._phase = phase != self._phase, phase
            if changed:
                self.on_phase_change(self, phase)

    def _phase_for(self, used: SessionUsage) -> str:
        return phase_of(fractions(self, used), self.phases)

    @property
    def phase(self) -> str:
        """``"explore"``, ``"converge"`` or ``"deliver"``, from the most-used limit.

        Bounds are ``phases`` (default 60% and 90%).
        """
        return self._phase_for(self._snapshot())

    def status_line(self) -> str:
        """One short line for the agent's prompt, e.g.
        ``Budget: 23 of 50 steps left, $0.42 of $1.00 left, 4 min left. Phase: converge.``
        Only limited dimensions appear.
        """
        return status_line(self)

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

            raise self._refusal("plan_exceeds_budget", message=give_up_message(n, left))

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

    def _start_time(self) -> float:
        start = self._start
        return _config.clock() if start is None else start

    def _raise_exhausted(self) -> NoReturn:
        """Write the handoff once (the first boundary to get here does), then raise."""
        with self._exhaust_lock:
            if self._exhaustion is None:
                # With a ledger, exactly one worker of the session writes the file.
                write = self._shared is None or _claim_handoff(self)
                self._exhaustion = self._write_handoff(write=write)
                if _listeners:
                    emit(
                        "exhausted",
                        self,
                        reason=self._exhaustion.reason,
                        handoff_path=self._exhaustion.path,
                    )
                _otel.exhausted(self, self._exhaustion.reason, self._refused)
            ex = self._exhaustion
        error = BudgetExhausted(
            ex.reason,
            session_id=self.session_id,
            usage=ex.usage,
            handoff=ex.handoff,
            handoff_path=ex.path,
            handoff_error=ex.error,
            message=self._chain_message(ex.reason, ex.usage.steps),
        )
        if ex.error is not None:
            error.add_note(f"budgetkit: the handoff could not be written: {ex.error!r}")
        raise error

    def _write_handoff(self, *, write: bool = True) -> _Exhaustion:
        reason = self._reason or "unknown"
        usage = self._snapshot()
        directory = self.handoff_dir if write else None
        path = None if directory is None else directory / f"{self.session_id}.json"
        handoff = self._build_handoff(reason, usage, path)
        error: BaseException | None = None
        if path is not None:
            try:
                write_atomic(path, handoff.to_dict())
            except Exception as exc:  # never let a write failure hide the budget error
                error, path = exc, None
        return _Exhaustion(reason, usage, handoff, path, error)

    def _chain_message(self, reason: str, steps: int) -> str | None:
        """The exception text when a chain cap stopped the session (else the default)."""
        if reason not in CHAIN_CAPS:
            return None
        return (
            f"Chain budget exhausted at step {steps} of session {self.attempt} of chain "
            f"{self.root_session_id!r}. Reason: {reason}. Resumable: only with a larger {reason}."
        )

    def _write_done(self) -> None:
        """A resumed session completed: record it, so its chain reads as finished."""
        from ._chainfiles import write_done

        result, directory = self._result, self.handoff_dir
        if result is None or directory is None:  # pragma: no cover - checked by the caller
            return
        try:
            write_done(
                directory,
                session_id=self.session_id,
                parent_session_id=self.parent_session_id,
                name=self.name,
                usage=result.usage.to_dict(),
                lineage=self._lineage_of(result.usage).to_dict(),
            )
        except Exception as exc:  # a completed session must not fail on its record
            warnings.warn(
                f"budgetkit: could not record that session {self.session_id!r} completed "
                f"in {str(directory)!r}: {exc!r}",
                BudgetWarning,
                stacklevel=3,
            )

    def _build_handoff(self, reason: str, usage: SessionUsage, path: Path | None) -> Handoff:
        where = repr(str(path)) if path is not None else "handoff"
        instructions = self._resume_instructions or (
            f"Resume with budgetkit.SessionBudget.resume({where}) for a fresh budget, "
            "and continue with the pending tasks."
        )
        trace_id, span_id = _otel.span_ids(self._span)
        return Handoff(
            session_id=self.session_id,
            parent_session_id=self.parent_session_id,
            stopped_at_step=usage.steps,
            reason=reason,
            limits=self.limits.as_dict(),
            usage=usage.to_dict(),
            pending_tasks=list(self._pending_tasks),
            context_summary=self._context_summary,
            resume_instructions=instructions,
            created_at=utc_now(),
            name=self.name,
            trace_id=trace_id,
            span_id=span_id,
            extra={"lineage": self._lineage_of(usage).to_dict()},
        )

    # ------------------------------------------------------------------ recording
    def _call_succeeded(self) -> None:
        """A success resets the run of consecutive errors (cheap when there is none)."""
        if not self._errors_pending:
            return
        with _LOCK:
            for s in self._chain:
                s._errors_in_a_row = 0
            self._errors_pending = False
        if self._ledger_member is not None:
            from . import _shared

            _shared.succeeded(self._ledger_member)

    def _call_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, BudgetError):
            return
        with _LOCK:
            for s in self._chain:
                s._errors_in_a_row += 1
                s._errors_pending = True
                if (
                    s._max_errors is not None
                    and s._errors_in_a_row >= s._max_errors
                    and s._tripped is None
                ):
                    s._tripped = "max_consecutive_errors"
        if self._ledger_member is not None:
            from . import _shared

            _shared.failed(self._ledger_member)

    def _record(
        self,
        counts: Counts | None,
        cost: int | None,
        release: int | None = None,
    ) -> None:
        """Add one call's token counts (``None``: unmeasured) and cost (units; ``None``:
        unpriced) to every session of the chain, and trip the measured limits it crosses."""
        if cost and (holder := _reservation.get()) is not None:
            with _LOCK:
                release = (release or 0) + holder.take(cost)
        if self._ledger_member is not None:
            from . import _shared

            _shared.record(self, counts, cost, release)
            return
        if self._parent is None and not release:  # the common case, without the loop
            with _LOCK:
                self._add(counts, cost)
            return
        record_in(self._chain, counts, cost, release)

    def _add(self, counts: Counts | None, cost: int | None) -> None:
        """Add one call to this session's counters (under _LOCK): the one recording rule."""
        if counts is None:
            self._unmeasured += 1
        else:
            inp, out, cache_read, cache_write, reasoning = counts
            self._input += inp
            self._output += out
            if cache_read:
                self._cache_read += cache_read
            if cache_write:
                self._cache_write += cache_write
            if reasoning:
                self._reasoning += reasoning
        if cost is None:
            if counts is not None:
                self._unpriced += 1
        else:
            self._cost += cost
        if self._tripped_as is None and self._measured:
            self._tripped = self._over_measured_limit()

    def _release(self, amount: int) -> None:
        if not amount:
            return
        if self._ledger_member is not None:
            from . import _shared

            _shared.release(self, amount)
            return
        release_in(self._chain, amount)

    def _over_measured_limit(self) -> str | None:
        if self._chain_usd_units is not None and self._cost > self._chain_usd_units:
            return "max_total_usd"
        lim = self.limits
        if lim.max_tokens is not None and self._input + self._output > lim.max_tokens:
            return "max_tokens"
        if lim.max_input_tokens is not None and self._input > lim.max_input_tokens:
            return "max_input_tokens"
        if lim.max_output_tokens is not None and self._output > lim.max_output_tokens:
            return "max_output_tokens"
        if self._max_usd_units is not None and self._cost > self._max_usd_units:
            return "max_usd"
        return None

    def _cost_unknown(self, model: str | None) -> None:
        """An LLM call could not be priced: warn once per model, or stop (``on_unknown_cost``)."""
        for s in reversed(self._chain):
            if s._max_usd is None and s._chain_usd_room is None:
                continue
            if s.on_unknown_cost == "error":
                with _LOCK:
                    if s._tripped is None:
                        s._tripped = "cost_unknown"
                if s._shared is not None:
                    from . import _shared

                    _shared.trip(s, "cost_unknown")
                continue
            key = model or "<unknown model>"
            if key not in s._warned:
                s._warned.add(key)
                warnings.warn(
                    f"budgetkit: the cost of a call to model {key!r} is unknown, so session "
                    f"{s.session_id!r} cannot count it against "
                    + (
                        f"max_usd={s._max_usd}. "
                        if s._max_usd is not None
                        else f"max_total_usd={s.chain_caps.max_total_usd}. "
                    )
                    + "Pass prices={model: (usd_per_million_input, usd_per_million_output)} "
                    "or on_unknown_cost='error'.",
                    CostUnknownWarning,
                    stacklevel=4,
                )

    def _all_prices(self) -> dict[str, tuple[Decimal, Decimal]]:
        """User prices of the whole chain; the innermost session's win."""
        if len(self._chain) == 1:
            return self.prices
        merged: dict[str, tuple[Decimal, Decimal]] = {}
        for s in self._chain:
            merged.update(s.prices)
        return merged

    def _snapshot(self, *, strict: bool = False) -> SessionUsage:
        if self._shared is not None:
            from . import _shared

            return _shared.snapshot(self, strict=strict)
        with _LOCK:
            steps, llm_calls = self._steps, self._llm_calls
            inp, out, cost = self._input, self._output, self._cost
            cr, cw, rs = self._cache_read, self._cache_write, self._reasoning
            unpriced, unmeasured = self._unpriced, self._unmeasured
        start = self._start
        if start is None:
            elapsed = 0.0
        else:
            end = self._end if self._end is not None else _config.clock()
            elapsed = max(end - start, 0.0)
        return SessionUsage(
            steps=steps,
            llm_calls=llm_calls,
            input_tokens=inp,
            output_tokens=out,
            total_tokens=inp + out,
            cost_usd=from_units(cost),
            elapsed_seconds=elapsed,
            cache_read_tokens=cr,
            cache_write_tokens=cw,
            reasoning_tokens=rs,
            unpriced_calls=unpriced,
            unmeasured_calls=unmeasured,
        )

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v}" for k, v in self.limits.limited().items())
        return f"<SessionBudget {self.session_id} {limits or 'unlimited'}>"


def check_and_count(
    members: Sequence[SessionBudget],
    kind: str | None,
    name: str,
    reserve: int | None,
    wrapup: bool,
) -> tuple[SessionBudget | None, SessionBudget | None]:
    """Check ``members`` (outermost first), then count the call in all of them, atomically.

    Returns ``(latched, refused_by)``: the session a limit latched (or that was latched), and
    the one whose wrap-up reserve refuses the call; both ``None`` when the call is counted.
    """
    tripped: SessionBudget | None = None
    refused_by: SessionBudget | None = None
    with _LOCK:
        for s in members:
            if s._reason is not None:
                tripped = s
                break
            reason = s._tripped
            if (
                reason is None
                and s._max_seconds is not None
                and _config.clock() - s._start_time() > s._max_seconds
            ):
                reason = "max_seconds"
            if reason is None:
                if kind == STEP:
                    if s._chain_step_room is not None and s._steps >= s._chain_step_room:
                        reason = "max_total_steps"
                    elif s._max_steps is not None and s._steps >= s._max_steps:
                        reason = "max_steps"
                elif (
                    kind == LLM
                    and s._max_llm_calls is not None
                    and s._llm_calls >= s._max_llm_calls
                ):
                    reason = "max_llm_calls"
            if reason is None and reserve is not None:
                wanted = s._cost + s._reserved + reserve
                if s._chain_usd_units is not None and wanted > s._chain_usd_units:
                    reason = "max_total_usd"
                elif s._max_usd_units is not None and wanted > s._max_usd_units:
                    reason = "max_usd"
            if reason is not None:
                s._reason = reason
                s._refused = name
                tripped = s
                break
            if not wrapup and s.reserve_for_wrapup is not None and s._in_wrapup_reserve(kind):
                refused_by = s
                break
        else:
            for s in members:
                if kind == STEP:
                    s._steps += 1
                elif kind == LLM:
                    s._llm_calls += 1
                if reserve is not None:
                    s._reserved += reserve
    return tripped, refused_by


def uncount(members: Sequence[SessionBudget], kind: str | None, reserve: int | None) -> None:
    """Take back what :func:`check_and_count` counted (a ledger refused the call after it)."""
    with _LOCK:
        for s in members:
            if kind == STEP:
                s._steps -= 1
            elif kind == LLM:
                s._llm_calls -= 1
            if reserve is not None:
                s._reserved -= reserve


def record_in(
    members: Sequence[SessionBudget], counts: Counts | None, cost: int | None, release: int | None
) -> None:
    """Add one call to ``members`` and release its reservation (see ``SessionBudget._add``)."""
    with _LOCK:
        for s in members:
            s._add(counts, cost)
            if release:
                s._reserved -= release


def release_in(members: Sequence[SessionBudget], amount: int) -> None:
    """Give ``amount`` of reserved USD (units) back to ``members``."""
    with _LOCK:
        for s in members:
            s._reserved -= amount


def _exhaustion_of(exc: BaseException | None) -> BudgetExhausted | None:
    """The ``BudgetExhausted`` that ended a block: ``exc`` itself, or the first of an
    exception group (a ``TaskGroup``) made of nothing else."""
    if isinstance(exc, BudgetExhausted):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found, rest = exc.split(BudgetExhausted)
        if found is not None and rest is None:
            first: BaseException = found
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            assert isinstance(first, BudgetExhausted)
            return first
    return None


def _only_exhaustions_of(exc: BaseException | None, session_id: str) -> bool:
    """Whether ``exc`` (or every exception of its group) is this session's exhaustion."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(lambda e: isinstance(e, BudgetExhausted) and e.session_id == session_id)
        return rest is None
    return isinstance(exc, BudgetExhausted) and exc.session_id == session_id


def _claim_handoff(session: SessionBudget) -> bool:
    from ._shared import claim_handoff

    return claim_handoff(session)


class _Reservation:
    """The part of a ``session.reserve()`` block (units) not yet consumed by charges."""

    __slots__ = ("left",)

    def __init__(self, amount: int) -> None:
        self.left = amount

    def take(self, cost: int) -> int:
        taken = min(cost, self.left)
        self.left -= taken
        return taken

    def take_all(self) -> int:
        with _LOCK:
            left, self.left = self.left, 0
        return left


_reservation: ContextVar[_Reservation | None] = ContextVar("budgetkit_reservation", default=None)


def _handoff_dir(value: object) -> Path | None:
    if value is _DEFAULT_DIR:
        return _config.default_handoff_dir()
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        if str(value) == "":
            raise BudgetConfigError("handoff_dir must be a directory path or None, got ''")
        return Path(value)
    raise BudgetTypeError(f"handoff_dir must be a path or None, got {value!r}")


def _validated_prices(prices: object) -> dict[str, tuple[Decimal, Decimal]]:
    if prices is None:
        return {}
    from ._pricing import validate_prices

    return validate_prices(prices)
