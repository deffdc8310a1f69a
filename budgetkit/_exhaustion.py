"""Exhaustion: build and write the handoff, raise ``BudgetExhausted``, record completions.

The first boundary to find its session latched writes the handoff, once (with a shared
ledger: exactly one worker of the session does), *before* the exception is raised; a failed
write never hides the budget error, it is attached to the exception.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from . import _otel
from ._events import emit
from ._events import listeners as _listeners
from ._files import utc_now, write_atomic
from ._handoff import Handoff
from ._lineage import CHAIN_CAPS
from ._policy import LOOP_DETECTED, TOOL_CHECK
from .exceptions import BudgetExhausted, BudgetWarning, LedgerUnavailableError

if TYPE_CHECKING:
    from pathlib import Path

    from ._boundary import Boundary
    from ._session import SessionBudget
    from ._values import SessionResult, SessionUsage

__all__ = [
    "Exhaustion",
    "exhaust",
    "exhaustion_of",
    "only_exhaustions_of",
    "refusal",
    "result_of",
]


@dataclass(frozen=True, slots=True)
class Exhaustion:
    """What the first boundary that found the session exhausted wrote and raised."""

    reason: str
    usage: SessionUsage
    handoff: Handoff
    path: Path | None
    """Where the handoff was written (``None``: not written)."""
    error: BaseException | None
    """Why the handoff could not be written to ``target``."""
    target: Path | None = None
    """Where the handoff was to be written."""
    tool: tuple[str, int] | None = None
    """For ``max_tool_calls``: the refused tool and its calls admitted."""
    loop: tuple[str, int] | None = None
    """For ``loop_detected``: the repeated step and its run of equal calls."""


def exhaust(b: Boundary, reason: str | None = None) -> NoReturn:
    """Write the handoff once (the first boundary to get here does), then raise.

    ``reason`` is the latched reason when the caller knows it (a ledger's answer).
    """
    ex = record_exhaustion(b, reason)
    error = BudgetExhausted(
        ex.reason,
        session_id=b.budget.session_id,
        usage=ex.usage,
        handoff=ex.handoff,
        handoff_path=ex.path,
        handoff_error=ex.error,
        message=message(b, ex),
    )
    if ex.error is not None:
        error.add_note(f"budgetkit: the handoff could not be written: {ex.error!r}")
    raise error


def record_exhaustion(b: Boundary, reason: str | None = None) -> Exhaustion:
    """Latch the session, write its handoff and tell listeners and spans, once; the record."""
    with b.exhaust_lock:
        if b.exhaustion is None:
            snap = b.snapshot()
            found = reason or snap.reason or snap.tripped or "unknown"
            handle = b.handle
            try:  # with a shared ledger, exactly one worker of the session writes the file
                write = handle is None or handle.claim_handoff_writer()
                if handle is not None and snap.reason is None:
                    found = handle.latch(found)
            except LedgerUnavailableError:
                write = False  # another worker may have claimed it; never write two
            tool = None
            if found == TOOL_CHECK.reason and snap.refused is not None:
                tool = (snap.refused, dict(snap.tool_calls).get(snap.refused, 0))
            loop = None
            if found == LOOP_DETECTED and snap.last_step is not None:
                loop = (snap.last_step, snap.repeats)
            b.exhaustion = _write_handoff(b, found, write=write, tool=tool, loop=loop)
            if _listeners:
                emit("exhausted", b.budget, reason=found, handoff_path=b.exhaustion.path)
            _otel.exhausted(b, found, snap.refused)
        return b.exhaustion


def message(b: Boundary, ex: Exhaustion) -> str:
    """What ran out (used of limit), and how to resume: the handoff path and the call."""
    budget = b.budget
    steps = ex.usage.steps
    if ex.reason in CHAIN_CAPS:
        head = (
            f"Chain budget exhausted at step {steps} of session {budget.attempt} of chain "
            f"{budget.root_session_id!r}. Reason: {ex.reason}. "
            f"Resumable: only with a larger {ex.reason}."
        )
    else:
        head = f"Session budget exhausted at step {steps}. Reason: {ex.reason} ({_ran_out(b, ex)})."
    if ex.error is not None:
        return (
            f"{head} Resumable: false: the handoff could not be written to "
            f"{str(ex.target)!r} ({type(ex.error).__name__}: {ex.error})."
        )
    where = (
        "exc.handoff (handoff_dir=None wrote no file)" if ex.path is None else repr(str(ex.path))
    )
    if ex.reason in CHAIN_CAPS:
        return f"{head} Handoff: {where}."
    return f"{head} Resumable: true: budgetkit.SessionBudget.resume({where})."


def _ran_out(b: Boundary, ex: Exhaustion) -> str:
    """``3 of 3 steps used``, ``$0.0512 of $0.05 spent``, or the unknown models and fixes."""
    from ._policy import DIMENSION

    budget = b.budget
    if ex.reason == "cost_unknown":
        models = ", ".join(repr(m) for m in b.unknown_models) or "'<unknown model>'"
        return (
            f"the cost of calls to {models} is unknown under {usd_limits(budget)}; pass "
            f"prices={{model: (usd_per_million_input, usd_per_million_output)}} to price "
            "them, or on_unknown_cost='warn' to let the session go on"
        )
    if ex.reason == TOOL_CHECK.reason and ex.tool is not None:
        name, calls = ex.tool
        return f"tool {name!r} called {calls} times, its max_calls"
    if ex.reason == LOOP_DETECTED and ex.loop is not None:
        name, calls = ex.loop
        return f"step {name!r} called {calls} times in a row with equal arguments"
    if ex.reason.startswith("account_"):
        return _account_ran_out(budget, ex)
    d = DIMENSION.get(ex.reason)
    limit = None if d is None else getattr(budget.limits, d.limit)
    if d is None or limit is None:
        return "limit reached"
    if d.usage is None:  # consecutive errors
        return f"{limit} failed calls in a row"
    used = getattr(ex.usage, d.usage)
    if d.limit == "max_usd":
        return f"${used} of ${limit} spent"
    if d.limit == "max_seconds":
        return f"{used:.1f} s of {limit:g} s"
    return f"{used} of {limit} {d.label} used"


def _account_ran_out(budget: SessionBudget, ex: Exhaustion) -> str:
    """``account 'alice' over its day (UTC) window's max_usd: $5.01 of $5 spent; resets at ..``"""
    found = ex.handoff.extra.get("account")
    if not isinstance(found, dict) or "used" not in found:
        return "the session's account is over a limit of its window"
    return (
        f"account {found['id']!r} over its {found['window']} window's "
        f"{ex.reason.removeprefix('account_')}: {found['used']}; it resets at {found['resets_at']}"
    )


def account_section(b: Boundary, reason: str) -> dict[str, object] | None:
    """The handoff's ``extra["account"]`` for a stop by the account: its id, window, usage
    of the limit and when the window resets. A session joined from another process knows
    its account from its ledger session (``account_terms``); ``None``: no account found."""
    account = b.budget.account
    terms = account.terms if account is not None else getattr(b.handle, "account_terms", None)
    if terms is None:
        return None
    try:
        usage = terms.usage_in(b.ledger)
    except Exception:  # the handoff must be written even if the ledger is gone
        return {"id": terms.account_id, "window": terms.window.label}
    return {
        "id": terms.account_id,
        "window": usage.window,
        "window_start": usage.window_start.isoformat(),
        "resets_at": usage.resets_at.isoformat(),
        "limit": reason.removeprefix("account_"),
        "used": usage.describe(reason),
    }


def refusal(b: Boundary, reason: str, *, message: str | None = None) -> BudgetExhausted:
    """A ``BudgetExhausted`` that does not latch the session and writes no file."""
    usage = b.usage()
    return BudgetExhausted(
        reason,
        session_id=b.budget.session_id,
        usage=usage,
        handoff=build_handoff(b, reason, usage, None),
        message=message,
    )


def _write_handoff(
    b: Boundary,
    reason: str,
    *,
    write: bool,
    tool: tuple[str, int] | None = None,
    loop: tuple[str, int] | None = None,
) -> Exhaustion:
    usage = b.usage()
    directory = b.budget.handoff_dir if write else None
    path = None if directory is None else directory / f"{b.budget.session_id}.json"
    handoff = build_handoff(b, reason, usage, path)
    if tool is not None:  # max_tool_calls: the handoff names the tool
        handoff.extra["tool"] = {"name": tool[0], "calls": tool[1]}
    if loop is not None:  # loop_detected: the handoff names the step
        handoff.extra["loop"] = {"step": loop[0], "repeats": loop[1]}
    if reason.startswith("account_"):  # the account stopped it: which, and until when
        section = account_section(b, reason)
        if section is not None:
            handoff.extra["account"] = section
    if b.budget.handoff_notes.framework_state is not None:
        from ._framework_state import attach

        attach(b.budget, handoff, path)  # before the handoff: its sidecar is written first
    error: BaseException | None = None
    target = path
    if path is not None:
        try:
            write_atomic(path, handoff.to_dict())
        except Exception as exc:  # never let a write failure hide the budget error
            error, path = exc, None
    return Exhaustion(reason, usage, handoff, path, error, target, tool, loop)


def build_handoff(b: Boundary, reason: str, usage: SessionUsage, path: Path | None) -> Handoff:
    """The handoff of session ``b`` stopped for ``reason`` with ``usage``."""
    budget = b.budget
    notes = budget.handoff_notes
    where = repr(str(path)) if path is not None else "handoff"
    instructions = notes.resume_instructions or (
        f"Resume with budgetkit.SessionBudget.resume({where}) for a fresh budget, "
        "and continue with the pending tasks."
    )
    trace_id, span_id = _otel.span_ids(b.telemetry)
    return Handoff(
        session_id=budget.session_id,
        parent_session_id=budget.parent_session_id,
        stopped_at_step=usage.steps,
        reason=reason,
        limits=budget.limits.as_dict(),
        usage=usage.to_dict(),
        pending_tasks=list(notes.pending_tasks),
        context_summary=notes.context_summary,
        resume_instructions=instructions,
        created_at=utc_now(),
        name=budget.name,
        trace_id=trace_id,
        span_id=span_id,
        extra={"lineage": budget.place.lineage(usage).to_dict()},
    )


def write_done(b: Boundary, result: SessionResult) -> None:
    """A resumed session completed: record it, so its chain reads as finished."""
    from ._chainfiles import write_done as write_done_file

    budget = b.budget
    directory = budget.handoff_dir
    if directory is None:  # pragma: no cover - checked by the caller
        return
    try:
        write_done_file(
            directory,
            session_id=budget.session_id,
            parent_session_id=budget.parent_session_id,
            name=budget.name,
            usage=result.usage.to_dict(),
            lineage=budget.place.lineage(result.usage).to_dict(),
        )
    except Exception as exc:  # a completed session must not fail on its record
        warnings.warn(
            f"budgetkit: could not record that session {budget.session_id!r} completed "
            f"in {str(directory)!r}: {exc!r}",
            BudgetWarning,
            stacklevel=4,
        )


def result_of(b: Boundary, exc: BaseException | None) -> SessionResult:
    """How session ``b`` ended, its block having raised ``exc`` (or not)."""
    from ._values import SessionResult

    snap = b.snapshot()  # first: with a ledger, it reads a latch set by another worker
    exhausted = exhaustion_of(exc)
    if snap.reason is None and snap.tripped is not None:
        # The last call crossed a measured limit and no boundary followed: the session is
        # exhausted all the same (latched, handoff written), only nothing raises.
        record_exhaustion(b, snap.tripped)
        snap = b.snapshot()
    if snap.reason is not None:
        stop_reason, stopped_by = snap.reason, b.budget.session_id
    elif exhausted is not None:
        stop_reason, stopped_by = exhausted.reason, exhausted.session_id
    elif exc is not None:
        stop_reason, stopped_by = "error", None
    else:
        stop_reason, stopped_by = "completed", None
    exhaustion = b.exhaustion
    return SessionResult(
        session_id=b.budget.session_id,
        stop_reason=stop_reason,
        usage=b.usage(),
        handoff_path=exhaustion.path if exhaustion else None,
        stopped_by=stopped_by,
    )


def exhaustion_of(exc: BaseException | None) -> BudgetExhausted | None:
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


def only_exhaustions_of(exc: BaseException | None, session_id: str) -> bool:
    """Whether ``exc`` (or every exception of its group) is this session's exhaustion."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(lambda e: isinstance(e, BudgetExhausted) and e.session_id == session_id)
        return rest is None
    return isinstance(exc, BudgetExhausted) and exc.session_id == session_id


def usd_limits(budget: SessionBudget) -> str:
    """The USD limits that apply to ``budget``, as they are written (``max_usd=0.05``)."""
    parts = []
    if budget.limits.max_usd is not None:
        parts.append(f"max_usd={budget.limits.max_usd}")
    if budget.chain_caps.max_total_usd is not None:
        parts.append(f"max_total_usd={budget.chain_caps.max_total_usd}")
    return " and ".join(parts)
