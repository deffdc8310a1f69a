"""A ledger session's snapshot: one consistent read of its counters and state."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from .._money import from_units

if TYPE_CHECKING:
    from .._policy import Counters
    from .._values import SessionUsage

__all__ = ["LedgerSnapshot", "snapshot_of"]


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """One consistent read of a shared session's counters and state."""

    steps: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    """Sum of the known costs."""
    reserved_usd: Decimal = Decimal(0)
    """USD held by live reservations (expired ones are already released)."""
    unpriced_calls: int = 0
    unmeasured_calls: int = 0
    errors_in_a_row: int = 0
    reason: str | None = None
    """Latched: the session is exhausted for this reason."""
    tripped: str | None = None
    """A measured limit was crossed; the next boundary latches it."""
    refused: str | None = None
    """The name of the call that was refused when the session latched."""
    elapsed_seconds: float = 0.0
    """Seconds since the session was created, by the server's clock."""
    handoff_writer: str | None = None
    """The handle that won :meth:`LedgerSession.claim_handoff_writer`, if any."""
    repeats: int = 0
    """Steps in a row called with equal arguments (the last one's run)."""
    last_step: str | None = None
    """The name of the step of that run."""
    tool_calls: tuple[tuple[str, int], ...] = ()
    """Admitted calls of each tool with a per-tool cap, as ``(name, calls)`` sorted by name."""

    def usage(self) -> SessionUsage:
        """The session's usage as the user sees it (``session.usage``)."""
        from .._values import SessionUsage

        return SessionUsage(
            steps=self.steps,
            llm_calls=self.llm_calls,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.input_tokens + self.output_tokens,
            cost_usd=self.cost_usd,
            elapsed_seconds=self.elapsed_seconds,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
            unpriced_calls=self.unpriced_calls,
            unmeasured_calls=self.unmeasured_calls,
        )


def snapshot_of(c: Counters, *, elapsed: float, writer: str | None = None) -> LedgerSnapshot:
    """A :class:`LedgerSnapshot` of ``c``."""
    return LedgerSnapshot(
        steps=c.steps,
        llm_calls=c.llm_calls,
        input_tokens=c.input_tokens,
        output_tokens=c.output_tokens,
        cache_read_tokens=c.cache_read_tokens,
        cache_write_tokens=c.cache_write_tokens,
        reasoning_tokens=c.reasoning_tokens,
        cost_usd=from_units(c.cost),
        reserved_usd=from_units(c.reserved),
        unpriced_calls=c.unpriced_calls,
        unmeasured_calls=c.unmeasured_calls,
        errors_in_a_row=c.errors_in_a_row,
        reason=c.reason,
        tripped=c.tripped,
        refused=c.refused,
        elapsed_seconds=elapsed,
        handoff_writer=writer,
        repeats=c.repeats,
        last_step=c.last_step,
        tool_calls=tuple(sorted((k, v) for k, v in c.tool_calls.items() if v)),
    )
