"""Chains of bounded sessions: ``run_chain``, ``run_chain_async`` and ``pending_handoffs``."""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import _chainfiles
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
    """A handoff waiting to be resumed: the newest of its chain, unclaimed, within its caps.

    .. versionadded:: 0.1.0
    """

    path: Path
    """The handoff file."""
    handoff: Handoff
    """The loaded handoff."""
    lineage: Lineage
    """Its chain: ``root_session_id``, ``attempt``, ``session_ids``, ``caps``,
    ``cumulative_usage``."""

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

        The same as ``SessionBudget.resume(self.path, chain=self.root_session_id, **overrides)``.

        Raises:
            HandoffClaimedError: another worker claimed it first.
            ChainCapError: the caps given are smaller than what the chain already used.
        """
        return SessionBudget.resume(self.path, chain=self.root_session_id, **overrides)


def pending_handoffs(directory: str | os.PathLike[str]) -> list[PendingHandoff]:
    """The handoffs of ``directory`` that no session has resumed yet, oldest first.

    One per chain at most: its newest handoff, when it is not claimed and the chain is within
    its caps (a chain over its caps is not pending: ``budgetkit chain DIR`` shows it). Resume
    one with :meth:`PendingHandoff.resume`, which claims it atomically: of two workers that
    resume the same handoff, exactly one gets a session and the other a
    :class:`~budgetkit.HandoffClaimedError`. A file that cannot be read (corrupt, foreign,
    not a regular file) or contradicts its parent is skipped with a
    :class:`~budgetkit.BudgetWarning` naming it, and the other chains are still found; an
    unreadable claim counts as a claim. A directory that does not exist has no pending
    handoffs.

    .. versionadded:: 0.1.0
    """
    if not isinstance(directory, str | os.PathLike):
        raise BudgetTypeError(f"directory must be a path, got {directory!r}")
    base = Path(directory)
    if not base.exists():
        return []
    if not base.is_dir():
        raise BudgetConfigError(f"{str(base)!r} is not a directory")
    found: list[PendingHandoff] = []
    scanned = _chainfiles.scan(base)
    for problem in scanned.problems:
        warnings.warn(f"budgetkit: {problem}", BudgetWarning, stacklevel=2)
    for view in scanned.chains:
        newest = view.newest
        if view.status == "pending" and newest.handoff is not None:
            found.append(PendingHandoff(newest.path, newest.handoff, newest.lineage))
    found.sort(key=lambda p: (p.handoff.created_at, p.session_id))
    return found


# --------------------------------------------------------------------------- run_chain
def _prepare(
    agent: object, handoff: object, chain: str | None, kwargs: dict[str, Any]
) -> tuple[SessionBudget, dict[str, Any]]:
    """The first session of the run, and the keywords every later resume gets."""
    if not callable(agent):
        raise BudgetTypeError(f"agent must be a callable taking the session, got {agent!r}")
    if "raise_on_exhausted" in kwargs:
        raise BudgetTypeError(
            "run_chain() does not take raise_on_exhausted: it resumes on BudgetExhausted itself"
        )
    later = {k: v for k, v in kwargs.items() if k != "session_id"}
    if isinstance(handoff, PendingHandoff):
        chain = handoff.root_session_id if chain is None else chain
        handoff = handoff.path
    if handoff is None:
        if chain is not None:
            raise BudgetTypeError("run_chain(chain=...) needs the handoff= that continues it")
        return SessionBudget(**kwargs), later
    if not isinstance(handoff, Handoff | str | os.PathLike):
        raise BudgetTypeError(
            f"handoff must be a Handoff, a PendingHandoff or a path, got {handoff!r}"
        )
    return SessionBudget.resume(handoff, chain=chain, **kwargs), later


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
    **budget_kwargs: Any,
) -> T:
    """Run ``agent(session)`` in a chain of bounded sessions until it returns.

    The first session is ``SessionBudget(**budget_kwargs)``, or ``SessionBudget.resume(handoff,
    **budget_kwargs)`` when ``handoff`` is given. Each time the agent stops with
    :class:`~budgetkit.BudgetExhausted` for its session's own limit, the next session resumes
    from that handoff (a fresh budget, the same keywords, the same chain) and the agent is
    called again; it reads ``session.resumed_from`` to pick up the pending tasks.

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
    session, later = _prepare(agent, handoff, chain, budget_kwargs)
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
    **budget_kwargs: Any,
) -> T:
    """:func:`run_chain` for an ``async def`` agent: ``await agent(session)`` in each session.

    .. versionadded:: 0.1.0
    """
    session, later = _prepare(agent, handoff, chain, budget_kwargs)
    while True:
        try:
            async with session:
                return await agent(session)
        except BudgetExhausted as exc:
            session = _continue(session, exc, later)
