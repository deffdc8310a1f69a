"""In-process budget events, for ``budgetkit.testing.capture_budget`` and other observers.

Costs nothing when nobody listens: emitters check ``listeners`` before building an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["BudgetEvent", "emit", "listeners", "subscribe"]


@dataclass(frozen=True, slots=True)
class BudgetEvent:
    """One thing that happened to a session.

    ``kind`` is one of ``session_start``, ``session_end``, ``step``, ``llm_call``, ``charge``
    or ``exhausted``; ``data`` carries the details (``name``, ``usage``, ``cost_usd``,
    ``reason``, ``result`` ...).
    """

    kind: str
    session: Any
    data: dict[str, Any] = field(default_factory=dict)


#: Callbacks receiving every event; mutate only through :func:`subscribe`.
listeners: list[Callable[[BudgetEvent], None]] = []


def subscribe(callback: Callable[[BudgetEvent], None]) -> Callable[[], None]:
    """Add a listener; returns a function that removes it."""
    listeners.append(callback)

    def unsubscribe() -> None:
        if callback in listeners:
            listeners.remove(callback)

    return unsubscribe


def emit(kind: str, session: Any, **data: Any) -> None:
    """Deliver an event to every listener; a failing listener never breaks the agent."""
    event = BudgetEvent(kind, session, data)
    for callback in list(listeners):
        try:
            callback(event)
        except Exception:  # noqa: S112 - observers must not break the observed
            continue
