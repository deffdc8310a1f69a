"""The LLM-call fast path and integer USD: the same answers as the general path, faster.

An OpenAI ``ChatCompletion`` is read by attribute (``_extract.direct_reader``), priced in
integer units (``_pricing.price_units``) and charged without building a ``Usage``; every
other response takes the general path. These tests hold the fast path to the general one.
"""

from __future__ import annotations

import decimal
import random
from decimal import Decimal
from typing import Any

import openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from budgetkit import BudgetExhausted, SessionBudget, _calls, _money, budget
from budgetkit._extract import direct_reader, extract_usage
from budgetkit._pricing import price_units, price_usage
from budgetkit._usage import Usage, usage_counts
from budgetkit.testing import StubServer, capture_budget

MODEL = "gpt-4o-mini-2024-07-18"


def chat(usage: dict[str, Any] | None, model: Any = MODEL, **extra: Any) -> ChatCompletion:
    """A ChatCompletion as the openai client builds it (without validation)."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
        ],
        "usage": usage,
        **extra,
    }
    return ChatCompletion.construct(**body)  # type: ignore[no-any-return]


def full_usage(
    prompt: Any = 120,
    completion: Any = 30,
    cached: Any = 0,
    reasoning: Any = 0,
    cache_write: Any = None,
) -> dict[str, Any]:
    details: dict[str, Any] = {"cached_tokens": cached, "audio_tokens": 0}
    if cache_write is not None:
        details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": 150,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
    }


def validated(usage: dict[str, Any], **extra: Any) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "ok"},
                }
            ],
            "usage": usage,
            **extra,
        }
    )


READ = direct_reader(ChatCompletion)


# ------------------------------------------------------------------ reader
def test_chat_completion_has_a_direct_reader_and_other_types_do_not() -> None:
    assert READ is not None
    assert direct_reader(dict) is None
    assert direct_reader(Usage) is None


def general(response: ChatCompletion) -> tuple[str | None, tuple[int, ...]] | None:
    usage = extract_usage(response)
    return None if usage is None else (usage.model, usage_counts(usage))


COMMON = [
    validated(full_usage()),
    validated(full_usage(cached=100, reasoning=10, completion=40)),
    validated(full_usage(cache_write=7)),
    validated({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
]


@pytest.mark.parametrize("response", COMMON)
def test_direct_read_equals_the_general_reader(response: ChatCompletion) -> None:
    assert READ is not None
    found = READ(response)
    assert found is not None, "a plain OpenAI response must take the fast path"
    assert found == general(response)


@pytest.mark.parametrize(
    "response",
    [
        chat(full_usage(prompt="120")),  # a string count (the SDK coerces it)
        chat(full_usage(prompt=True)),  # a bool count (the SDK coerces it)
        chat(full_usage(completion=-1)),  # negative
        chat(full_usage(prompt=12.0)),  # a float count
        chat(full_usage(cached=None)),  # DeepSeek-style: cache hits elsewhere
        chat(None),  # no usage
        chat({**full_usage(), "cost": 0.25}),  # OpenRouter's reported cost (an extra field)
        chat({**full_usage(cached=None), "prompt_cache_hit_tokens": 40}),  # DeepSeek
        chat(full_usage(), model=None),
        chat(full_usage(), model=""),
        chat(full_usage(), system_fingerprint=None, surprise="extra field"),
    ],
)
def test_odd_responses_leave_the_fast_path_to_the_general_reader(response: ChatCompletion) -> None:
    """Whatever the fast path reads must equal the general reader; what it cannot, it
    declines (``None``) rather than guess."""
    assert READ is not None
    found = READ(response)
    if found is None:
        return
    assert found == general(response)


def test_odd_responses_that_the_fast_path_declines() -> None:
    assert READ is not None
    for response in (
        chat(full_usage(completion=-1)),
        chat({**full_usage(), "cost": 0.25}),
        chat({**full_usage(cached=None), "prompt_cache_hit_tokens": 40}),
        chat(None),
    ):
        assert READ(response) is None, response


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.integers(0, 10**7),
    completion=st.integers(0, 10**6),
    cached_share=st.floats(0, 1),
    reasoning_share=st.floats(0, 1),
)
def test_direct_read_equals_the_general_reader_for_any_counts(
    prompt: int, completion: int, cached_share: float, reasoning_share: float
) -> None:
    assert READ is not None
    response = chat(
        full_usage(
            prompt=prompt,
            completion=completion,
            cached=int(prompt * cached_share),
            reasoning=int(completion * reasoning_share),
        )
    )
    assert READ(response) == general(response)


# ------------------------------------------------------------------ pricing
def _models() -> list[tuple[str, str]]:
    from genai_prices.data_snapshot import get_snapshot

    return [(p.id, m.id) for p in get_snapshot().providers for m in p.models]


def test_integer_prices_equal_the_decimal_prices_for_every_model() -> None:
    """``price_units`` is ``price_usage`` rounded up to 10^-18 USD, for every model
    genai-prices knows (flat, tiered and finer-than-a-unit rates alike)."""
    rng = random.Random(9)
    checked = integer = 0
    for provider, model in _models():
        for _ in range(3):
            inp = rng.choice([0, 1, 999, 120_000, 250_000, 2_000_000])
            out = rng.choice([0, 1, 777, 64_000])
            cached = rng.randint(0, inp)
            write = rng.randint(0, inp - cached)
            counts = (inp, out, cached, write, rng.randint(0, out))
            usage = Usage(*counts, model=model, provider=provider)
            usd = price_usage(usage)
            units = price_units(model, provider, counts)
            expected = None if usd is None else _money.to_units(usd)
            assert units == expected, (provider, model, counts, usd)
            checked += 1
            integer += usd is not None and usd == _money.from_units(units or 0)
    assert checked > 1000
    assert integer > checked // 2  # most prices are whole units: exact in integers


def test_user_price_table_wins_over_genai_prices() -> None:
    counts = (1_000_000, 1_000_000, 0, 0, 0)
    prices = {MODEL: (Decimal("1"), Decimal("2"))}
    assert price_units(MODEL, None, counts, prices) == 3 * _money.UNITS_PER_USD
    assert price_units("no-such-model", None, counts) is None
    assert price_units(None, None, counts) is None


# ------------------------------------------------------------------ money
@given(st.decimals(min_value=0, max_value=10**9, places=18, allow_nan=False))
def test_units_round_trip_exactly_up_to_18_places(amount: Decimal) -> None:
    assert _money.from_units(_money.to_units(amount)) == amount
    assert _money.to_units(amount) == _money.to_units_floor(amount)


@given(st.decimals(min_value=-(10**6), max_value=10**6, places=30, allow_nan=False))
@example(Decimal("0.059604644775390624999999999999"))  # more digits than Decimal's precision
def test_units_round_up_charges_and_down_limits(amount: Decimal) -> None:
    exact = decimal.Context(prec=decimal.MAX_PREC)
    scaled = amount.scaleb(18, exact)
    assert _money.to_units(amount) == int(scaled.to_integral_value(decimal.ROUND_CEILING, exact))
    assert _money.to_units_floor(amount) == int(
        scaled.to_integral_value(decimal.ROUND_FLOOR, exact)
    )


def test_from_units_has_no_trailing_zeros() -> None:
    assert str(_money.from_units(360_000_000_000_000)) == "0.00036"
    assert str(_money.from_units(10 * _money.UNITS_PER_USD)) == "10"
    assert _money.from_units(-1) == Decimal("-0.000000000000000001")


def test_a_usd_limit_finer_than_a_unit_still_compares_exactly() -> None:
    """A limit of 1.5 units: spending 1 unit is within it, 2 units are over it."""
    limit = Decimal("0.0000000000000000015")
    with SessionBudget(max_usd=limit, handoff_dir=None) as s:
        s.charge(usd=Decimal("1e-18"))
        assert s.boundary.snapshot().tripped is None
        s.charge(usd=Decimal("1e-18"))
        assert s.boundary.snapshot().tripped == "max_usd"


# ------------------------------------------------------------------ through the decorator
def _client(stub: StubServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)


def test_real_openai_responses_take_the_fast_path_and_charge_like_the_general_one() -> None:
    """The first response of a type takes the general path and teaches the fast one;
    later responses, read directly, are charged exactly the same."""
    _calls._direct.pop(ChatCompletion, None)
    with (
        StubServer(usage=(1200, 300), cache_read_tokens=200, reasoning_tokens=50) as stub,
        _client(stub) as client,
    ):

        @budget.llm_call
        def ask(prompt: str) -> ChatCompletion:
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
            )

        with capture_budget() as events, SessionBudget(handoff_dir=None) as s:
            first = ask("one")
            assert ChatCompletion in _calls._direct  # learnt from the first response
            assert READ is not None
            assert READ(first) is not None
            ask("two")
            ask("three")
    one = price_usage(extract_usage(first) or Usage())
    assert one is not None
    assert one > 0
    used = s.usage
    assert used.llm_calls == 3
    assert (used.input_tokens, used.output_tokens) == (3600, 900)
    assert (used.cache_read_tokens, used.reasoning_tokens) == (600, 150)
    assert used.cost_usd == 3 * one
    calls = events.of_kind("llm_call")
    assert [c.data["cost_usd"] for c in calls] == [one] * 3
    assert len({c.data["usage"] for c in calls}) == 1  # model and counts identical on both paths


def test_fast_path_trips_max_usd_at_the_next_boundary(tmp_path: Any) -> None:
    response = validated(full_usage(prompt=1_000_000, completion=0, cached=0))
    one = price_usage(extract_usage(response) or Usage())
    assert one == Decimal("0.15")

    @budget.llm_call
    def ask() -> ChatCompletion:
        return response

    with SessionBudget(max_usd=Decimal("0.40"), handoff_dir=tmp_path) as s:
        ask()
        ask()
        ask()  # crosses 0.40 when it is charged; the call itself completes
        with pytest.raises(BudgetExhausted) as caught:
            ask()
    assert caught.value.reason == "max_usd"
    assert s.usage.llm_calls == 3
    assert s.usage.cost_usd == Decimal("0.45")


def test_fast_path_counts_max_llm_calls_exactly(tmp_path: Any) -> None:
    response = validated(full_usage())

    @budget.llm_call
    def ask() -> ChatCompletion:
        return response

    with SessionBudget(max_llm_calls=4, handoff_dir=tmp_path) as s:
        for _ in range(4):
            ask()
        with pytest.raises(BudgetExhausted) as caught:
            ask()
    assert caught.value.reason == "max_llm_calls"
    assert s.usage.llm_calls == 4


def test_fast_path_fills_the_model_from_the_request_when_the_response_lacks_it() -> None:
    response = chat(full_usage(), model=None)

    @budget.llm_call(model="gpt-4o-mini")
    def ask() -> ChatCompletion:
        return response

    with capture_budget() as events, SessionBudget(handoff_dir=None) as s:
        ask()
        ask()
    calls = events.of_kind("llm_call")
    assert [c.data["usage"].model for c in calls] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert s.usage.unpriced_calls == 0
    assert s.usage.cost_usd > 0
