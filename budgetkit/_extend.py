"""Extend in place: ``SessionBudget(on_exhausted=policy)`` may grant more budget when a limit
is reached, and the session goes on.

When a call is refused for one of the session's own limits (:data:`EXTENDABLE`), before the
handoff is written, ``policy(request)`` is asked once for that call, with an
:class:`ExtendRequest` (the reason, the usage, the limits, the grants so far). It returns a
:class:`Grant` (or ``None``: no grant). A grant raises the session's limits in its ledger in
one atomic operation (``LedgerSession.extend``), is recorded (``SessionBudget.grants``; the
chain's grants in the handoff's lineage, ``Lineage.grants``), emitted as the
``budgetkit.budget.extended`` span event, and the refused call is admitted again under the
new limits. A policy that raises, returns something else, or does not answer within
``on_exhausted_timeout`` seconds is "no grant".
Chain caps (``max_total_*``) are never extended: what a chain leaves still bounds the session.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._files import utc_now
from ._limits import Limits, non_negative_int, to_usd
from .exceptions import BudgetTypeError, BudgetWarning

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._boundary import Boundary
    from ._values import SessionUsage

__all__ = ["EXTENDABLE", "ExtendRequest", "Grant", "try_extend"]

#: The stop reasons a grant can lift: the session's own count and measured limits and time.
EXTENDABLE = frozenset(
    {
        "max_steps",
        "max_llm_calls",
        "max_tokens",
        "max_input_tokens",
        "max_output_tokens",
        "max_usd",
        "max_seconds",
    }
)

#: Grant field -> the limit it raises.
_RAISES = {
    "steps": "max_steps",
    "llm_calls": "max_llm_calls",
    "tokens": "max_tokens",
    "input_tokens": "max_input_tokens",
    "output_tokens": "max_output_tokens",
    "usd": "max_usd",
    "seconds": "max_seconds",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """More budget for a session that reached a limit: each amount is added to the limit it
    names (a limit that is not set stays unlimited).

    .. versionadded:: 0.1.0
    """

    steps: int = 0
    llm_calls: int = 0
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: Decimal = Decimal(0)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "llm_calls", "tokens", "input_tokens", "output_tokens"):
            non_negative_int(getattr(self, name), name)
        object.__setattr__(self, "usd", to_usd(self.usd, "usd", allow_zero=True))
        seconds = self.seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (0 <= seconds < float("inf"))
        ):
            raise BudgetTypeError(f"seconds must be a non-negative number, got {seconds!r}")

    def apply(self, limits: Limits) -> Limits:
        """``limits`` raised by this grant."""
        values: dict[str, Any] = {}
        for name, limit in _RAISES.items():
            current = getattr(limits, limit)
            amount = getattr(self, name)
            if current is not None and amount:
                values[limit] = current + amount
        return limits if not values else _replace(limits, values)

    def to_dict(self) -> dict[str, Any]:
        """The non-zero amounts, JSON-ready (USD as a string)."""
        out: dict[str, Any] = {}
        for name in _RAISES:
            value = getattr(self, name)
            if value:
                out[name] = str(value) if isinstance(value, Decimal) else value
        return out


def _replace(limits: Limits, values: dict[str, Any]) -> Limits:
    merged = {**limits.as_dict(), **values}
    if isinstance(merged.get("max_usd"), str):
        merged["max_usd"] = Decimal(merged["max_usd"])
    return Limits.build(**merged)


@dataclass(frozen=True, slots=True)
class ExtendRequest:
    """What ``on_exhausted`` is asked with.

    .. versionadded:: 0.1.0
    """

    session_id: str
    reason: str
    """The limit reached (``max_steps``, ``max_usd``, ...)."""
    usage: SessionUsage
    limits: dict[str, Any]
    """The session's limits now (``Limits.as_dict()``: USD as a string)."""
    grants: tuple[dict[str, Any], ...] = field(default=())
    """The grants already given to this session, oldest first."""


def _ask(
    policy: Callable[[ExtendRequest], object], request: ExtendRequest, timeout: float
) -> Grant | None:
    """The policy's grant, or ``None`` when it declines, raises, returns a non-``Grant`` or
    does not answer within ``timeout`` seconds (its thread is then left to finish alone)."""
    answer: list[object] = []

    def run() -> None:
        try:
            answer.append(policy(request))
        except Exception as exc:
            answer.append(exc)

    worker = threading.Thread(target=run, name="budgetkit-on-exhausted", daemon=True)
    worker.start()
    worker.join(timeout)
    if not answer:
        _warn(f"on_exhausted did not answer within {timeout:g} s: no grant")
        return None
    got = answer[0]
    if isinstance(got, Exception):
        _warn(f"on_exhausted raised {type(got).__name__}: no grant")
        return None
    if got is None:
        return None
    if not isinstance(got, Grant):
        _warn(f"on_exhausted returned {type(got).__name__}, not a budgetkit.Grant: no grant")
        return None
    return got


def _warn(message: str) -> None:
    warnings.warn(f"budgetkit: {message}", BudgetWarning, stacklevel=2)


def try_extend(b: Boundary, reason: str) -> bool:
    """Ask the session's ``on_exhausted`` for a grant for ``reason``; ``True`` when the
    session's limits were raised in its ledger (the refused call may be admitted again)."""
    budget = b.budget
    policy = budget.on_exhausted
    handle = b.handle
    if policy is None or handle is None or reason not in EXTENDABLE:
        return False
    with b.exhaust_lock:
        if b.exhaustion is not None or b.declined:  # the session is over
            return False
        snap = handle.snapshot()
        if snap.reason is None and snap.tripped is None:
            return True  # another thread's grant came first: admit the call again
        request = ExtendRequest(
            session_id=budget.session_id,
            reason=reason,
            usage=b.usage(),
            limits=budget.limits.as_dict(),
            grants=tuple(budget.grants),
        )
        grant = _ask(policy, request, budget.on_exhausted_timeout)
        limits = budget.limits if grant is None else grant.apply(budget.limits)
        if grant is None or limits == budget.limits:
            b.declined = True  # the other threads refused meanwhile stop too
            return False
        step_room, usd_room = budget.place.room()
        handle.extend(limits, step_room=step_room, usd_room=usd_room)
        budget.limits = limits
        record = {"reason": reason, "grant": grant.to_dict(), "at": utc_now()}
        budget.grants.append(record)
        budget.place.grants.append({"session_id": budget.session_id, **record})
        from . import _otel

        _otel.extended(b, reason, grant.to_dict())
    return True
