"""OpenTelemetry hooks (placeholder: no-ops until the telemetry module lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._session import CallSpec, SessionBudget, SessionResult
    from ._usage import Usage


def start_session(session: SessionBudget) -> Any:
    """Open the session span; returns a handle or ``None``."""
    return None


def end_session(
    session: SessionBudget, handle: Any, result: SessionResult, exc: BaseException | None
) -> None:
    """Close the session span."""


def start_call(session: SessionBudget, spec: CallSpec, args: Any, kwargs: Any) -> Any:
    """Open a step or LLM-call span; returns a handle or ``None`` when nothing records."""
    return None


def end_call(
    handle: Any,
    session: SessionBudget,
    spec: CallSpec,
    error: BaseException | None,
    usage: Usage | None = None,
    cost: Any = None,
    result: Any = None,
) -> None:
    """Close a call span."""


def exhausted(session: SessionBudget, reason: str, refused: str | None) -> None:
    """Record the exhaustion event on the session span."""


def span_ids(handle: Any) -> tuple[str | None, str | None]:
    """The (trace id, span id) of a session span handle, as hex, for the handoff."""
    return None, None
