"""Normalised token usage of one LLM call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one LLM call, normalised across providers.

    Counts are inclusive, as in genai-prices and pydantic-ai: ``input_tokens``
    includes cache reads and writes, ``output_tokens`` includes reasoning.

    .. versionadded:: 0.1.0
    """

    input_tokens: int = 0
    """All input tokens: uncached, cache reads and cache writes."""
    output_tokens: int = 0
    """All output tokens, reasoning included."""
    cache_read_tokens: int = 0
    """Input tokens read from the provider's prompt cache (part of ``input_tokens``)."""
    cache_write_tokens: int = 0
    """Input tokens written to the provider's prompt cache (part of ``input_tokens``)."""
    reasoning_tokens: int = 0
    """Reasoning or thinking tokens (part of ``output_tokens``)."""
    model: str | None = None
    """The model that answered, as the response names it."""
    provider: str | None = None
    """Provider id hint for pricing (``openai``, ``anthropic``, ``google``, ``aws`` ...)."""
    reported_cost_usd: Decimal | None = None
    """A cost the provider or gateway reported (LiteLLM, OpenRouter); wins over the price
    table, except a cost of zero for a call that used tokens (see the money concepts page)."""
    details: Mapping[str, int] = field(default_factory=dict, hash=False)
    """Finer counts that some models price apart, keyed by genai-prices usage key:
    ``cache_write_1h_tokens`` (part of ``cache_write_tokens``), ``input_audio_tokens`` (part
    of ``input_tokens``), ``output_audio_tokens``, ``cache_audio_read_tokens``,
    ``web_searches`` (server-side searches, counted apart from tokens) ... Counts of zero are
    left out. Read-only."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        """The counts added up (stream chunks that carry deltas); model and provider of
        ``other`` win where it names them. A reported cost is not carried."""
        if not isinstance(other, Usage):
            return NotImplemented
        details = dict(self.details)
        for key, count in other.details.items():
            details[key] = details.get(key, 0) + count
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            model=other.model or self.model,
            provider=other.provider or self.provider,
            details=details,
        )


#: Token counts as the session adds them: (input, output, cache read, cache write, reasoning).
Counts = tuple[int, int, int, int, int]


def usage_counts(usage: Usage) -> Counts:
    """The counts of ``usage``, in :data:`Counts` order."""
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )
