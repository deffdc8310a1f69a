"""Value types shared by the session, its ledger, telemetry and exceptions.

Frozen snapshots and descriptions only: no counting, no I/O. Kept below ``_session`` so
that ``exceptions`` and ``_otel`` need not import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

__all__ = ["CallSpec", "HandoffNotes", "Remaining", "SessionResult", "SessionUsage"]

#: The two kinds of call a boundary admits.
STEP = "step"
LLM = "llm"


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

    def __add__(self, other: SessionUsage) -> SessionUsage:
        """The field-by-field sum: a chain's usage is its sessions' usages added up."""
        if not isinstance(other, SessionUsage):
            return NotImplemented
        return SessionUsage(*(getattr(self, n) + getattr(other, n) for n in _FIELDS))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SessionUsage:
        """A usage from a checked mapping (``_lineage.usage_from_dict``); unknown keys ignored."""
        return cls(**{name: values[name] for name in _FIELDS if name in values})


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

    @property
    def exhausted(self) -> bool:
        """Whether a limit stopped the session, whether or not a boundary raised (the last
        call may have crossed a measured limit with no boundary after it)."""
        return self.stop_reason not in ("completed", "error")


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
    max_calls: int | None = None
    """A step's per-tool cap: admitted at most this many times per session."""
    cost: int | None = None
    """A paid step's price per call, in units of 10^-18 USD (charged toward ``max_usd``)."""
    key: Callable[..., Any] | None = None
    """What counts as "the same call" of a step for ``max_repeats`` (default: all arguments)."""

    def request_model(self, kwargs: Mapping[str, Any]) -> str | None:
        """The model a call asks for: the decorator's ``model=``, else its ``model`` argument."""
        if self.model is not None:
            return self.model
        model = kwargs.get("model")
        return model if isinstance(model, str) else None


@dataclass(slots=True)
class HandoffNotes:
    """What a session's handoff says if it stops (``SessionBudget.update_handoff``)."""

    pending_tasks: list[Any] = field(default_factory=list)
    context_summary: str | None = None
    resume_instructions: str | None = None
    #: A framework adapter's latest state: its name and what returns it as JSON values
    #: (see ``_framework_state``).
    framework_state: tuple[str, Callable[[], object]] | None = None

    def update(
        self,
        *,
        pending_tasks: list[Any] | None,
        context_summary: str | None,
        resume_instructions: str | None,
    ) -> None:
        """Set the values given (``None`` keeps one), checked now so a write cannot fail."""
        from .exceptions import BudgetTypeError

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
            _loadable(list(pending_tasks), "pending_tasks")
            self.pending_tasks = list(pending_tasks)
        if context_summary is not None:
            if not isinstance(context_summary, str):
                raise BudgetTypeError(f"context_summary must be a str, got {context_summary!r}")
            _loadable(context_summary, "context_summary")
            self.context_summary = context_summary
        if resume_instructions is not None:
            if not isinstance(resume_instructions, str):
                raise BudgetTypeError(
                    f"resume_instructions must be a str, got {resume_instructions!r}"
                )
            _loadable(resume_instructions, "resume_instructions")
            self.resume_instructions = resume_instructions


def _loadable(value: object, name: str) -> None:
    """Refuse what a handoff could hold but its loader refuses (lone surrogates, deep
    nesting): a session never writes a handoff that cannot be resumed."""
    from ._files import document_problem
    from .exceptions import BudgetConfigError

    problem = document_problem(value)
    if problem is not None:
        raise BudgetConfigError(f"{name} is {problem}")


_FIELDS = tuple(f.name for f in fields(SessionUsage))
