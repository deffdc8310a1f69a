"""budgetkit's exceptions and warnings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from ._handoff import Handoff
    from ._session import SessionUsage

__all__ = [
    "BudgetConfigError",
    "BudgetError",
    "BudgetExhausted",
    "BudgetTypeError",
    "BudgetWarning",
    "CostUnknownWarning",
    "HandoffError",
    "StepTimeoutError",
    "UnmeasuredUsageWarning",
]


class BudgetError(Exception):
    """Base class of every budgetkit error."""


class BudgetConfigError(BudgetError, ValueError):
    """An argument has a value budgetkit cannot accept (negative limit, unsafe session id ...)."""


class BudgetTypeError(BudgetError, TypeError):
    """An argument has the wrong type (a string or bool where a number belongs ...)."""


class HandoffError(BudgetError, ValueError):
    """A handoff file is missing, truncated, corrupt or not a budgetkit handoff."""


class BudgetExhausted(BudgetError):  # noqa: N818 - the name is the public contract
    """A session limit was reached; raised at the step boundary after it tripped.

    The handoff file (when the session has a ``handoff_dir``) is written before
    this is raised. Exhaustion is latched: every later boundary of the session
    raises again.

    Attributes:
        reason: which limit tripped (``max_steps``, ``max_llm_calls``, ``max_tokens``,
            ``max_input_tokens``, ``max_output_tokens``, ``max_usd``, ``max_seconds``,
            ``max_consecutive_errors``, ...).
        session_id: the id of the session whose limit tripped.
        usage: the session's usage when it stopped.
        handoff: the handoff describing how to resume.
        handoff_path: where the handoff was written, or ``None``.
        handoff_error: the error that prevented writing the handoff, if any.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        reason: str,
        *,
        session_id: str,
        usage: SessionUsage,
        handoff: Handoff,
        handoff_path: Path | None = None,
        handoff_error: BaseException | None = None,
        message: str | None = None,
    ) -> None:
        self.reason = reason
        self.session_id = session_id
        self.usage = usage
        self.handoff = handoff
        self.handoff_path = handoff_path
        self.handoff_error = handoff_error
        if message is None:
            message = (
                f"Session budget exhausted at step {usage.steps}. "
                f"Reason: {reason}. Resumable: true."
            )
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_exhausted,
            (
                self.reason,
                self.session_id,
                self.usage,
                self.handoff,
                self.handoff_path,
                self.message,
            ),
        )


def _rebuild_exhausted(
    reason: str,
    session_id: str,
    usage: SessionUsage,
    handoff: Handoff,
    handoff_path: Path | None,
    message: str,
) -> BudgetExhausted:
    return BudgetExhausted(
        reason,
        session_id=session_id,
        usage=usage,
        handoff=handoff,
        handoff_path=handoff_path,
        message=message,
    )


class BudgetWarning(UserWarning):
    """Base class of budgetkit's warnings."""


class CostUnknownWarning(BudgetWarning):
    """A call's cost could not be priced while ``max_usd`` is set; it is not counted as zero."""


class UnmeasuredUsageWarning(BudgetWarning):
    """An LLM call returned no usable usage (no usage block, or malformed counts)."""


class StepTimeoutError(TimeoutError):
    """A ``@budget.step(timeout=...)`` ran past its deadline.

    Async steps are cancelled at the deadline; sync steps cannot be interrupted, so they
    are judged when they return and this is raised instead of their result.
    """
