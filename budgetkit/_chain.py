"""Chains of bounded sessions: ``run_chain``, ``run_chain_async`` and ``pending_handoffs``."""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import _chainfiles
from ._claims import (
    DEFAULT_MAX_ATTEMPTS,
    check_lease_settings,
    check_max_attempts,
    check_shared_directory,
)
from ._handoff import Handoff
from ._lineage import CHAIN_CAPS
from ._session import SessionBudget
from .exceptions import (
    BudgetConfigError,
    BudgetExhausted,
    BudgetTypeError,
    BudgetWarning,
    ChainCapError,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._lineage import Lineage

__all__ = ["PendingHandoff", "pending_handoffs", "run_chain", "run_chain_async"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PendingHandoff:
    """A handoff waiting to be resumed: the newest of its chain, within its caps, and not
    held by a live claim (never claimed, or its last claim expired or failed).

    .. versionadded:: 0.1.0
    """

    path: Path
    """The handoff file."""
    handoff: Handoff
    """The loaded handoff."""
    lineage: Lineage
    """Its chain: ``root_session_id``, ``attempt``, ``session_ids``, ``caps``,
    ``cumulative_usage``."""
    attempts: int = 0
    """Claims of this handoff used so far (0: never resumed); the next claim is one more."""
    last_error: str | None = None
    """The exception type that ended the last attempt, when it raised."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """The retry cap it was found under; :meth:`resume` claims under the same cap."""

    @property
    def session_id(self) -> str:
        """The session that stopped and wrote the handoff."""
        return self.handoff.session_id

    @property
    def root_session_id(self) -> str:
        """The first session of its chain."""
        return self.lineage.root_session_id

    def resume(self, **overrides: Any) -> SessionBudget:
        """Claim the handoff and return the session that continues it.

        The same as ``SessionBudget.resume(self.path, chain=self.root_session_id,
        max_attempts=self.max_attempts, **overrides)``.

        Raises:
            HandoffClaimedError: another worker claimed it first.
            ChainCapError: the caps given are smaller than what the chain already used.
        """
        overrides.setdefault("max_attempts", self.max_attempts)
        return SessionBudget.resume(self.path, chain=self.root_session_id, **overrides)


def pending_handoffs(
    directory: str | os.PathLike[str], *, max_attempts: int | None = None
) -> list[PendingHandoff]:
    """The handoffs of ``directory`` that a worker may resume now, oldest first.

    One per chain at most: its newest handoff, when the chain is within its caps and the
    handoff is not held by a live claim: never claimed, or claimed by a worker whose lease
    expired (it died or hung) or whose session ended with an exception, as long as fewer than
    ``max_attempts`` claims (default 3) were made (a chain over its caps, or whose handoff
    failed that often, is not pending: ``budgetkit chain DIR`` shows it). Resume one with
    :meth:`PendingHandoff.resume`, which claims it atomically: of two workers that resume the
    same handoff, exactly one gets a session and the other a
    :class:`~budgetkit.HandoffClaimedError`. A file that cannot be read (corrupt, foreign,
    not a regular file) or contradicts its parent is skipped with a
    :class:`~budgetkit.BudgetWarning` naming it, and the other chains are still found; an
    unreadable claim counts as a live claim. A directory that does not exist has no pending
    handoffs.

    Raises:
        BudgetConfigError: ``directory`` is not a directory, or is world-writable, belongs
            to another user and has no sticky bit (anyone could plant handoffs in it).

    .. versionadded:: 0.1.0
    """
    if not isinstance(directory, str | os.PathLike):
        raise BudgetTypeError(f"directory must be a path, got {directory!r}")
    cap = check_max_attempts(max_attempts)
    base = Path(directory)
    if not base.exists():
        return []
    if not base.is_dir():
        raise BudgetConfigError(f"{str(base)!r} is not a directory")
    check_shared_directory(base)
    found: list[PendingHandoff] = []
    scanned = _chainfiles.scan(base, max_attempts=cap)
    for problem in scanned.problems:
        warnings.warn(f"budgetkit: {problem}", BudgetWarning, stacklevel=2)
    for view in scanned.chains:
        newest = view.newest
        if view.status in ("pending", "stale") and newest.handoff is not None:
            claim = newest.claim
            found.append(
                PendingHandoff(
                    newest.path,
                    newest.handoff,
                    newest.lineage,
                    attempts=0 if claim is None else claim.attempts,
                    last_error=None if claim is None else claim.last_error,
                    max_attempts=cap,
                )
            )
    found.sort(key=lambda p: (p.handoff.created_at, p.session_id))
    return found


# --------------------------------------------------------------------------- run_chain
def _prepare(
    agent: object,
    handoff: object,
    chain: str | None,
    kwargs: dict[str, Any],
    leasing: dict[str, Any],
) -> tuple[SessionBudget, dict[str, Any]]:
    """The first session of the run, and the keywords every later resume gets."""
    if not callable(agent):
        raise BudgetTypeError(f"agent must be a callable taking the session, got {agent!r}")
    if "raise_on_exhausted" in kwargs:
        raise BudgetTypeError(
            "run_chain() does not take raise_on_exhausted: it resumes on BudgetExhausted itself"
        )
    check_lease_settings(leasing["lease_seconds"], leasing["max_attempts"])
    if isinstance(handoff, PendingHandoff):
        chain = handoff.root_session_id if chain is None else chain
        if leasing["max_attempts"] is None:
            leasing = {**leasing, "max_attempts": handoff.max_attempts}
        handoff = handoff.path
    later = {k: v for k, v in kwargs.items() if k != "session_id"} | leasing
    if handoff is None:
        if chain is not None:
            raise BudgetTypeError("run_chain(chain=...) needs the handoff= that continues it")
        return SessionBudget(**kwargs), later
    if not isinstance(handoff, Handoff | str | os.PathLike):
        raise BudgetTypeError(
            f"handoff must be a Handoff, a PendingHandoff or a path, got {handoff!r}"
        )
    return SessionBudget.resume(handoff, chain=chain, **kwargs, **leasing), later


def _continue(
    session: SessionBudget, exc: BudgetExhausted, kwargs: dict[str, Any]
) -> SessionBudget:
    """The session after ``session`` stopped with ``exc``; raises when the chain must stop."""
    if exc.session_id != session.session_id or exc.reason in CHAIN_CAPS:
        # An enclosing or inner session's limit, or a chain cap: not ours to resume.
        raise exc
    target = exc.handoff_path if exc.handoff_path is not None else exc.handoff
    try:
        return SessionBudget.resume(target, chain=session.root_session_id, **kwargs)
    except ChainCapError as cap:
        raise BudgetExhausted(
            cap.reason,
            session_id=exc.session_id,
            usage=exc.usage,
            handoff=exc.handoff,
            handoff_path=exc.handoff_path,
            message=(
                f"Chain budget exhausted after session {session.attempt} of chain "
                f"{session.root_session_id!r}. Reason: {cap.reason}. "
                f"Resumable: only with a larger {cap.reason}."
            ),
        ) from cap


def run_chain(
    agent: Callable[[SessionBudget], T],
    *,
    handoff: Handoff | PendingHandoff | str | os.PathLike[str] | None = None,
    chain: str | None = None,
    lease_seconds: float | None = None,
    max_attempts: int | None = None,
    **budget_kwargs: Any,
) -> T:
    """Run ``agent(session)`` in a chain of bounded sessions until it returns.

    The first session is ``SessionBudget(**budget_kwargs)``, or ``SessionBudget.resume(handoff,
    **budget_kwargs)`` when ``handoff`` is given. Each time the agent stops with
    :class:`~budgetkit.BudgetExhausted` for its session's own limit, the next session resumes
    from that handoff (a fresh budget, the same keywords, the same chain) and the agent is
    called again; it reads ``session.resumed_from`` to pick up the pending tasks.

    Every resume claims its handoff with a lease of ``lease_seconds`` (default 60) under a
    retry cap of ``max_attempts`` claims (default 3); see :meth:`SessionBudget.resume`. When
    the agent raises, the claim records the failed attempt and the exception propagates.

    Returns:
        What the agent returned.

    Raises:
        BudgetExhausted: a chain cap stopped the chain (``reason`` is ``max_total_usd``,
            ``max_total_steps`` or ``max_sessions``), or an enclosing session's limit did.
        Exception: whatever else the agent raises propagates unchanged.
        BudgetTypeError: ``agent`` is an ``async def`` (use :func:`run_chain_async`).

    .. versionadded:: 0.1.0
    """
    if inspect.iscoroutinefunction(agent):
        raise BudgetTypeError(f"{agent!r} is async: use budgetkit.run_chain_async()")
    leasing = {"lease_seconds": lease_seconds, "max_attempts": max_attempts}
    session, later = _prepare(agent, handoff, chain, budget_kwargs, leasing)
    while True:
        try:
            with session:
                result = agent(session)
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()
                    raise BudgetTypeError(
                        f"{agent!r} returned an awaitable: use budgetkit.run_chain_async()"
                    )
                return result
        except BudgetExhausted as exc:
            session = _continue(session, exc, later)


async def run_chain_async(
    agent: Callable[[SessionBudget], Awaitable[T]],
    *,
    handoff: Handoff | PendingHandoff | str | os.PathLike[str] | None = None,
    chain: str | None = None,
    lease_seconds: float | None = None,
    max_attempts: int | None = None,
    **budget_kwargs: Any,
) -> T:
    """:func:`run_chain` for an ``async def`` agent: ``await agent(session)`` in each session.

    .. versionadded:: 0.1.0
    """
    leasing = {"lease_seconds": lease_seconds, "max_attempts": max_attempts}
    session, later = _prepare(agent, handoff, chain, budget_kwargs, leasing)
    while True:
        try:
            async with session:
                return await agent(session)
        except BudgetExhausted as exc:
            session = _continue(session, exc, later)
