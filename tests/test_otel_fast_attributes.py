"""The LLM span's cheap readers give exactly the values of the general ones.

``_otel`` reads a response's id, model, finish reasons and provider with a reader learnt once
per response type, and a USD limit's remainder in integer units where that is the value the
decimal computation gives. Span attributes are a contract: these tests hold the cheap paths
to the general ones, value for value (the float's bits included).
"""

from __future__ import annotations

import math
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import anthropic.types
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from budgetkit import _messages, _otel
from budgetkit._money import to_float
from budgetkit._policy import Counters

# ----------------------------------------------------------------------------- USD remainders

#: Costs as they grow: sums of per-token prices (many trailing zeros), and arbitrary units.
COSTS = st.one_of(
    st.integers(0, 10**6).map(lambda n: n * 150_000_000_000),
    st.integers(0, 10**15),
    st.integers(0, 10**33),
    st.builds(lambda m, e: m * 10**e, st.integers(1, 10**16), st.integers(0, 18)),
)
#: Limits with up to 30 decimal places (as entry rounding allows), small and large.
LIMITS = st.one_of(
    st.integers(1, 10**15).map(Decimal),
    st.builds(lambda m, e: Decimal(m).scaleb(-e), st.integers(1, 10**20), st.integers(0, 30)),
)


def decimal_pair(limit: Decimal, cost: int) -> tuple[float, float]:
    """What the span said before integer remainders: the decimal computation."""
    used = to_float(cost)
    return used, _otel._usd_left(limit, used)


def same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(
        x == y and math.copysign(1, x) == math.copysign(1, y) for x, y in zip(a, b, strict=True)
    )


@settings(max_examples=1000, deadline=None)
@given(limit=LIMITS, cost=COSTS)
@example(limit=Decimal("0.05"), cost=115_950_000_000_000)  # 0.05 - 0.00011595
@example(limit=Decimal(10**9), cost=36_000_000_000_000)
@example(limit=Decimal("1"), cost=10**18 + 1)  # more than 15 significant digits
@example(limit=Decimal("0.1234567890123456789"), cost=1)  # a limit finer than a unit
@example(limit=Decimal(10**12), cost=123)  # a difference past 28 digits
@example(limit=Decimal("0.5"), cost=5 * 10**17)  # nothing left
@example(limit=Decimal(10**15), cost=10**80 + 10**40)  # far past any limit
def test_usd_remaining_is_the_decimal_remainder(limit: Decimal, cost: int) -> None:
    pair = _otel._usd_pair(limit)
    assert same(pair(None, Counters(cost=cost)), decimal_pair(limit, cost))  # type: ignore[arg-type]


def test_usd_remainder_takes_the_integer_path_for_typical_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole-unit limit and a priced cost never reach the decimal computation."""

    def refuse(limit: Any, used: float) -> float:
        raise AssertionError("the decimal path was taken")

    monkeypatch.setattr(_otel, "_usd_left", refuse)
    for limit in (Decimal("0.05"), Decimal(10**9), Decimal("12.5")):
        pair = _otel._usd_pair(limit)
        for cost in (0, 36_000_000_000_000, 123_456_789_012_345 * 10**10, 10**30):
            pair(None, Counters(cost=cost))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="decimal path"):
        _otel._usd_pair(Decimal(1))(None, Counters(cost=10**18 + 1))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- responses


def chat_completion(reasons: list[Any]) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-9",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": i,
                    "finish_reason": reason,
                    "message": {"role": "assistant", "content": "ok"},
                }
                for i, reason in enumerate(reasons)
            ],
        }
    )


def anthropic_message() -> Any:
    return anthropic.types.Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        }
    )


RESPONSES = [
    pytest.param(chat_completion(["stop"]), id="chat-completion"),
    pytest.param(chat_completion(["tool_calls", "length"]), id="chat-completion-two-choices"),
    pytest.param(ChatCompletion.construct(id="c", model="m", choices=[]), id="no-choices"),
    pytest.param(anthropic_message(), id="anthropic-message"),
    pytest.param({"object": "chat.completion", "id": "d", "model": "m"}, id="openai-dict"),
    pytest.param({"type": "message", "stop_reason": "max_tokens", "id": "a"}, id="anthropic-dict"),
    pytest.param(
        SimpleNamespace(type="ai", response_metadata={"model_name": "x", "finish_reason": "STOP"}),
        id="langchain-like",
    ),
    pytest.param(SimpleNamespace(candidates=[SimpleNamespace(finish_reason="X.SAFETY")]), id="gem"),
    pytest.param("text", id="a-string"),
    pytest.param(42, id="an-int"),
]


@pytest.mark.parametrize("result", RESPONSES)
def test_the_learnt_reader_reads_what_the_general_readers_read(result: Any) -> None:
    reader = _messages.response_reader(type(result))
    expected = (*_messages.response_info(result), _messages.provider_of(result))
    assert reader(result) == expected
    assert reader(result) == expected  # a reader is reused for every response of its type


def test_finish_reason_words_are_unchanged() -> None:
    class Reason:
        value = "Tool_Use"

    for reason, word in [("stop", "stop"), ("STOP", "stop"), ("FinishReason.MAX", "max")]:
        assert _messages._word(reason) == word
    assert _messages._word(Reason()) == "tool_use"
