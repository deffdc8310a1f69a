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
from .exceptions import BudgetExhausted, BudgetWarning, LedgerUnavailableError

if TYPE_CHECKING:
    from pathlib import Path

    from ._boundary import Boundary
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
    error: BaseException | None


def exhaust(b: Boundary, reason: str | None = None) -> NoReturn:
    """Write the handoff once (the first boundary to get here does), then raise.

    ``reason`` is the latched reason when the caller knows it (a ledger's answer).
    """
    with b.exhaust_lock:
        if b.exhaustion is None:
            snap = b.snapshot()
            found = reason or snap.reason or "unknown"
            handle = b.handle
            try:  # with a shared ledger, exactly one worker of the session writes the file
                write = handle is None or handle.claim_handoff_writer()
            except LedgerUnavailableError:
                write = False  # another worker may have claimed it; never write two
            b.exhaustion = _write_handoff(b, found, write=write)
            if _listeners:
                emit("exhausted", b.budget, reason=found, handoff_path=b.exhaustion.path)
            _otel.exhausted(b, found, snap.refused)
        ex = b.exhaustion
    error = BudgetExhausted(
        ex.reason,
        session_id=b.budget.session_id,
        usage=ex.usage,
        handoff=ex.handoff,
        handoff_path=ex.path,
        handoff_error=ex.error,
        message=_chain_message(b, ex.reason, ex.usage.steps),
    )
    if ex.error is not None:
        error.add_note(f"budgetkit: the handoff could not be written: {ex.error!r}")
    raise error


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


def _write_handoff(b: Boundary, reason: str, *, write: bool) -> Exhaustion:
    usage = b.usage()
    directory = b.budget.handoff_dir if write else None
    path = None if directory is None else directory / f"{b.budget.session_id}.json"
    handoff = build_handoff(b, reason, usage, path)
    error: BaseException | None = None
    if path is not None:
        try:
            write_atomic(path, handoff.to_dict())
        except Exception as exc:  # never let a write failure hide the budget error
            error, path = exc, None
    return Exhaustion(reason, usage, handoff, path, error)


def _chain_message(b: Boundary, reason: str, steps: int) -> str | None:
    """The exception text when a chain cap stopped the session (else the default)."""
    if reason not in CHAIN_CAPS:
        return None
    budget = b.budget
    return (
        f"Chain budget exhausted at step {steps} of session {budget.attempt} of chain "
        f"{budget.root_session_id!r}. Reason: {reason}. Resumable: only with a larger {reason}."
    )


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
