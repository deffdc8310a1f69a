"""budgetkit's exceptions and warnings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from ._handoff import Handoff
    from ._values import SessionUsage

__all__ = [
    "AccountExhaustedError",
    "BudgetConfigError",
    "BudgetError",
    "BudgetExhausted",
    "BudgetTypeError",
    "BudgetWarning",
    "ChainCapError",
    "ChainError",
    "CostUnknownWarning",
    "HandoffClaimedError",
    "HandoffError",
    "JoinRefusedError",
    "LedgerError",
    "LedgerUnavailableError",
    "LedgerUnavailableWarning",
    "SessionNotFoundError",
    "StepTimeoutError",
    "UnmeasuredUsageWarning",
]


class BudgetError(Exception):
    """Base class of every budgetkit error."""


class BudgetConfigError(BudgetError, ValueError):
    """An argument has a value budgetkit cannot accept (negative limit, unsafe session id ...)."""


class BudgetTypeError(BudgetError, TypeError):
    """An argument has the wrong type (a string or bool where a number belongs ...)."""


class JoinRefusedError(BudgetConfigError):
    """``SessionBudget.join`` was refused: the join token is missing (and ``trust_id=True``
    was not given) or does not match the session's.

    .. versionadded:: 0.1.0
    """


class HandoffError(BudgetError, ValueError):
    """A handoff file is missing, truncated, corrupt or not a budgetkit handoff."""


class LedgerError(BudgetError):
    """A shared ledger (``budgetkit.ledgers``) could not do what a session asked of it."""


class LedgerUnavailableError(LedgerError, ConnectionError):
    """The ledger's server is unreachable or timed out; the message names its URL.

    Raised at the step boundary under the default ``on_ledger_error="closed"`` (fail closed).

    .. versionadded:: 0.1.0
    """

    def __init__(self, message: str, *, url: str) -> None:
        self.url = url
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unavailable, (str(self), self.url))


def _rebuild_unavailable(message: str, url: str) -> LedgerUnavailableError:
    return LedgerUnavailableError(message, url=url)


class SessionNotFoundError(LedgerError, LookupError):
    """A session id is not in the ledger: never created there, or expired (``ttl``).

    Joining such a session is an error, never a fresh unlimited session.

    .. versionadded:: 0.1.0
    """


class ChainError(BudgetError, ValueError):
    """A handoff cannot continue a chain: it belongs to another chain, its parent links form a
    cycle, or its lineage contradicts the files next to it. The message names the sessions.

    .. versionadded:: 0.1.0
    """


class HandoffClaimedError(ChainError):
    """The handoff was already claimed by a resume (``SessionBudget.resume(path)``,
    ``run_chain``, a ``pending_handoffs`` worker); a handoff is resumed at most once.

    Attributes:
        session_id: the session whose handoff was claimed.
        claimed_by: the session that claimed it, when the claim file says.

    .. versionadded:: 0.1.0
    """

    def __init__(self, message: str, *, session_id: str, claimed_by: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.claimed_by = claimed_by

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


class ChainCapError(ChainError):
    """Resuming would start a session in a chain already at or over a chain-wide cap
    (``max_total_usd``, ``max_total_steps``, ``max_sessions``), or the caps given are smaller
    than what the chain has already used. Raised before any work runs; nothing is claimed.

    Attributes:
        reason: the chain cap: ``max_total_usd``, ``max_total_steps`` or ``max_sessions``.
        session_id: the session whose handoff was to be resumed.
        root_session_id: the chain's first session.

    .. versionadded:: 0.1.0
    """

    def __init__(self, message: str, *, reason: str, session_id: str, root_session_id: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.session_id = session_id
        self.root_session_id = root_session_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[BudgetError], message: str, state: dict[str, Any]) -> BudgetError:
    """Unpickle an error whose ``__init__`` takes keywords: its message, then its state."""
    error = cls.__new__(cls)
    BudgetError.__init__(error, message)
    error.__dict__.update(state)
    return error


class AccountExhaustedError(BudgetError):
    """A new session of an :class:`~budgetkit.Account` was refused up front: the account's
    current window has used up one of its limits. Raised on entering the session, before any
    work runs. (A *running* session of the account stops with :class:`BudgetExhausted`,
    reason ``account_max_usd`` ...)

    Attributes:
        account_id: the account.
        reason: the limit, as a stop reason: ``account_max_usd``, ``account_max_steps``,
            ``account_max_llm_calls`` or ``account_max_tokens``.
        window: the window's description (``day (UTC)``, ``rolling hour`` ...).
        resets_at: when the window resets (an aware ``datetime`` in its timezone; for a
            rolling window, when its oldest sub-bucket drops out).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, message: str, *, account_id: str, reason: str, window: str, resets_at: datetime
    ) -> None:
        super().__init__(message)
        self.account_id = account_id
        self.reason = reason
        self.window = window
        self.resets_at = resets_at

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


class BudgetExhausted(BudgetError):  # noqa: N818 - the name is the public contract
    """A session limit was reached; raised at the step boundary after it tripped.

    The handoff file (when the session has a ``handoff_dir``) is written before
    this is raised. Exhaustion is latched: every later boundary of the session
    raises again.

    Attributes:
        reason: which limit tripped (``max_steps``, ``max_llm_calls``, ``max_tokens``,
            ``max_input_tokens``, ``max_output_tokens``, ``max_usd``, ``max_seconds``,
            ``max_consecutive_errors``, ...; for a chain cap ``max_total_usd``,
            ``max_total_steps`` or ``max_sessions``).
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
                self.handoff_error,
            ),
        )


def _rebuild_exhausted(
    reason: str,
    session_id: str,
    usage: SessionUsage,
    handoff: Handoff,
    handoff_path: Path | None,
    message: str,
    handoff_error: BaseException | None = None,
) -> BudgetExhausted:
    return BudgetExhausted(
        reason,
        session_id=session_id,
        usage=usage,
        handoff=handoff,
        handoff_path=handoff_path,
        message=message,
        handoff_error=handoff_error,
    )


class BudgetWarning(UserWarning):
    """Base class of budgetkit's warnings."""


class CostUnknownWarning(BudgetWarning):
    """A call's cost could not be priced while ``max_usd`` is set; it is not counted as zero."""


class UnbudgetedCallWarning(BudgetWarning):
    """A decorated call ran outside every session while a session was open in the process
    (a thread that did not copy the context): it was not charged."""


class UnmeasuredUsageWarning(BudgetWarning):
    """An LLM call returned no usable usage (no usage block, or malformed counts)."""


class LedgerUnavailableWarning(BudgetWarning):
    """The ledger was unreachable and ``on_ledger_error="open"`` let the call run uncounted."""


class StepTimeoutError(TimeoutError):
    """A ``@budget.step(timeout=...)`` ran past its deadline.

    Async steps are cancelled at the deadline; sync steps cannot be interrupted, so they
    are judged when they return and this is raised instead of their result.
    """
