"""price_usage, validate_prices and price_estimate."""

from __future__ import annotations

import decimal
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anthropic
import genai_prices
import openai
import pytest
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import ModelPrice

from budgetkit import SessionBudget, _money, _pricing, budget
from budgetkit._pricing import price_estimate, price_units, price_usage, validate_prices
from budgetkit._usage import Usage
from budgetkit.exceptions import BudgetConfigError, BudgetTypeError
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Iterator

BEFORE_SONNET_PRICE_CHANGE = datetime(2026, 1, 1, tzinfo=UTC)
AFTER_SONNET_PRICE_CHANGE = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _empty_price_cache() -> Iterator[None]:
    """Each test starts with budgetkit's model lookup cache empty."""
    _pricing._cache.clear()
    _pricing._unit_cache.clear()
    _pricing._direct_cache.clear()
    yield
    _pricing._cache.clear()
    _pricing._unit_cache.clear()
    _pricing._direct_cache.clear()


def genai_total(usage: Usage, when: datetime | None = None) -> Decimal:
    """What genai_prices.calc_price returns for ``usage``."""
    assert usage.model is not None
    return genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_reasoning_tokens=usage.reasoning_tokens,
        ),
        usage.model,
        provider_id=usage.provider,
        genai_request_timestamp=when,
    ).total_price


@pytest.mark.parametrize(
    ("usage", "when", "expected"),
    [
        pytest.param(
            # (1000 x 0.15 + 200 x 0.075 + 300 x 0.6) / 1e6
            Usage(1200, 300, 200, 0, 50, model="gpt-4o-mini"),
            None,
            Decimal("0.000345"),
            id="gpt-4o-mini-cache-read",
        ),
        pytest.param(
            # (900 x 1 + 200 x 0.1 + 100 x 1.25 + 300 x 5) / 1e6
            Usage(1200, 300, 200, 100, model="claude-haiku-4-5"),
            None,
            Decimal("0.002545"),
            id="claude-haiku-4-5-cache-read-and-write",
        ),
        pytest.param(
            # (600 x 1.25 + 400 x 0.125 + 250 x 10) / 1e6
            Usage(1000, 250, 400, 0, 50, model="gemini-2.5-pro"),
            None,
            Decimal("0.0033"),
            id="gemini-2.5-pro-base-tier",
        ),
        pytest.param(
            # over 200k input every token pays the tier rate:
            # (200000 x 2.5 + 50000 x 0.25 + 1000 x 15) / 1e6
            Usage(250_000, 1000, 50_000, model="gemini-2.5-pro"),
            None,
            Decimal("0.5275"),
            id="gemini-2.5-pro-over-200k-tier",
        ),
        pytest.param(
            # tiered before 2026-03-13: (300000 x 6 + 1000 x 22.5) / 1e6
            Usage(300_000, 1000, model="claude-sonnet-4-6"),
            BEFORE_SONNET_PRICE_CHANGE,
            Decimal("1.8225"),
            id="claude-sonnet-4-6-dated-tier",
        ),
        pytest.param(
            # flat from 2026-03-13: (300000 x 3 + 1000 x 15) / 1e6
            Usage(300_000, 1000, model="claude-sonnet-4-6"),
            AFTER_SONNET_PRICE_CHANGE,
            Decimal("0.915"),
            id="claude-sonnet-4-6-dated-flat",
        ),
        pytest.param(
            # audio prices make budgetkit defer to calc_price:
            # (600 x 0.3 + 400 x 0.03 + 100 x 2.5) / 1e6
            Usage(1000, 100, 400, model="gemini-2.5-flash"),
            None,
            Decimal("0.000442"),
            id="gemini-2.5-flash-via-calc-price",
        ),
        pytest.param(
            # (10 x 1.1 + 1000 x 0.11 + 100 x 1.375 + 20 x 5.5) / 1e6
            Usage(
                1110,
                20,
                1000,
                100,
                model="anthropic.claude-haiku-4-5-20251001-v1:0",
                provider="aws",
            ),
            None,
            Decimal("0.0003685"),
            id="bedrock-aws-provider",
        ),
        pytest.param(Usage(0, 0, model="gpt-4o"), None, Decimal(0), id="zero-tokens"),
    ],
)
def test_price_matches_hand_computation_and_genai_prices(
    usage: Usage, when: datetime | None, expected: Decimal
) -> None:
    """The first and the cached call both give the hand-computed figure, equal to calc_price."""
    first = price_usage(usage, when=when)
    cached = price_usage(usage, when=when)

    assert first == cached == expected
    assert genai_total(usage, when) == expected
    assert str(first) == str(genai_total(usage, when))  # same Decimal exponent, too


@pytest.mark.parametrize(
    "model", ["gpt-4o", "gpt-5-mini", "claude-haiku-4-5", "gemini-2.5-pro", "o3-mini"]
)
@pytest.mark.parametrize(
    "counts",
    [(1000, 500, 0, 0, 0), (10_000, 500, 8000, 1000, 200), (300_000, 2000, 100_000, 5000, 0)],
    ids=["plain", "cached", "large"],
)
def test_direct_computation_equals_calc_price(model: str, counts: tuple[int, ...]) -> None:
    """budgetkit's cached computation returns exactly what genai-prices returns."""
    input_tokens, output_tokens, cache_read, cache_write, reasoning = counts
    usage = Usage(input_tokens, output_tokens, cache_read, cache_write, reasoning, model=model)

    assert _pricing._lookup(None, model) is not None
    assert _pricing._lookup(None, model).direct is not None  # type: ignore[union-attr]
    assert price_usage(usage) == genai_total(usage)


def test_model_lookup_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated calls for one model look it up in genai-prices once."""
    calls: list[str] = []
    original = DataSnapshot.find_provider_model

    def counting(self: DataSnapshot, model_ref: str, *args: Any) -> Any:
        calls.append(model_ref)
        return original(self, model_ref, *args)

    monkeypatch.setattr(DataSnapshot, "find_provider_model", counting)
    usage = Usage(1000, 500, model="gpt-4o-mini")

    results = {price_usage(usage) for _ in range(5)}

    assert results == {Decimal("0.00045")}  # (1000 x 0.15 + 500 x 0.6) / 1e6
    assert calls == ["gpt-4o-mini"]


def test_unknown_model_is_none_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown model is unknown cost (None), not zero, and is not looked up again."""
    calls: list[str] = []
    original = DataSnapshot.find_provider_model

    def counting(self: DataSnapshot, model_ref: str, *args: Any) -> Any:
        calls.append(model_ref)
        return original(self, model_ref, *args)

    monkeypatch.setattr(DataSnapshot, "find_provider_model", counting)
    usage = Usage(1000, 500, model="my-local-llama")

    assert price_usage(usage) is None
    assert price_usage(usage) is None
    assert calls == ["my-local-llama"]


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param(Usage(1000, 500), id="no-model"),
        pytest.param(
            Usage(1000, 500, model="gpt-4o", provider="nosuchprovider"), id="unknown-provider"
        ),
        pytest.param(Usage(10, 1, cache_read_tokens=20, model="gpt-4o"), id="cache-exceeds-input"),
    ],
)
def test_unpriceable_usage_is_none(usage: Usage) -> None:
    """No model, an unknown provider, or usage genai-prices rejects: cost unknown."""
    assert price_usage(usage) is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("models/gemini-2.5-pro", Decimal("0.00625"), id="models-prefix"),
        pytest.param("openai/gpt-4o", Decimal("0.0075"), id="gateway-prefix"),
        pytest.param("GPT-4o", Decimal("0.0075"), id="case-insensitive"),
    ],
)
def test_model_reference_normalisation(model: str, expected: Decimal) -> None:
    """Gateway and Gemini prefixes are resolved: 1000 in + 500 out."""
    assert price_usage(Usage(1000, 500, model=model)) == expected


def test_reported_cost_wins() -> None:
    """A cost the gateway reported is used as is, even for an unknown model."""
    usage = Usage(1000, 500, model="my-local-llama", reported_cost_usd=Decimal("0.0123"))

    assert price_usage(usage, prices={"my-local-llama": (Decimal(1), Decimal(1))}) == Decimal(
        "0.0123"
    )


def test_custom_prices_win_and_price_cache_as_input() -> None:
    """A user price table beats genai-prices; cache tokens bill at the input rate."""
    prices = validate_prices({"gpt-4o": (1, 2), "my-local-llama": (Decimal("0.5"), 1.5)})
    # (1000 x 1 + 500 x 2) / 1e6, the 400 cached tokens included in the 1000
    assert price_usage(Usage(1000, 500, 400, model="gpt-4o"), prices=prices) == Decimal("0.002")
    # (2000 x 0.5 + 1000 x 1.5) / 1e6
    assert price_usage(Usage(2000, 1000, model="my-local-llama"), prices=prices) == Decimal(
        "0.0025"
    )


def test_custom_prices_fall_through_to_genai_prices() -> None:
    """Models missing from the table are priced by genai-prices."""
    prices = validate_prices({"my-local-llama": (1, 1)})

    assert price_usage(Usage(1000, 500, model="gpt-4o"), prices=prices) == Decimal("0.0075")


def test_validate_prices_converts_to_decimal() -> None:
    """ints, floats and Decimals become Decimals; floats by their shortest repr."""
    assert validate_prices({"a": (1, 0.15), "b": [Decimal("2.5"), 0]}) == {
        "a": (Decimal(1), Decimal("0.15")),
        "b": (Decimal("2.5"), Decimal(0)),
    }


@pytest.mark.parametrize(
    ("prices", "error", "fragments"),
    [
        pytest.param([("gpt-4o", (1, 2))], BudgetTypeError, ["prices", "list"], id="not-a-mapping"),
        pytest.param({1: (1, 2)}, BudgetTypeError, ["prices", "1", "int"], id="non-str-key"),
        pytest.param({"": (1, 2)}, BudgetConfigError, ["prices", "''"], id="empty-key"),
        pytest.param({"m": 1.5}, BudgetTypeError, ["prices['m']", "1.5"], id="not-a-pair"),
        pytest.param(
            {"m": (1, 2, 3)}, BudgetConfigError, ["prices['m']", "(1, 2, 3)"], id="three-rates"
        ),
        pytest.param({"m": (-1, 2)}, BudgetConfigError, ["prices['m'][0]", "-1"], id="negative"),
        pytest.param(
            {"m": (1, float("nan"))}, BudgetConfigError, ["prices['m'][1]", "nan"], id="nan"
        ),
        pytest.param(
            {"m": (float("inf"), 1)}, BudgetConfigError, ["prices['m'][0]", "inf"], id="inf"
        ),
        pytest.param({"m": (True, 1)}, BudgetTypeError, ["prices['m'][0]", "True"], id="bool"),
        pytest.param({"m": (1, "2")}, BudgetTypeError, ["prices['m'][1]", "'2'"], id="str"),
        pytest.param(
            {"m": (Decimal("NaN"), 1)},
            BudgetConfigError,
            ["prices['m'][0]", "NaN"],
            id="decimal-nan",
        ),
    ],
)
def test_validate_prices_rejects_malformed_tables(
    prices: object, error: type[Exception], fragments: list[str]
) -> None:
    """The error names ``prices``, the key and the bad value."""
    with pytest.raises(error) as caught:
        validate_prices(prices)

    for fragment in fragments:
        assert fragment in str(caught.value)


def test_price_estimate_prices_token_counts() -> None:
    """An estimate mapping is priced like a real response: (1000 x 0.15 + 500 x 0.6) / 1e6."""
    assert price_estimate({"input_tokens": 1000, "output_tokens": 500}, "gpt-4o-mini") == Decimal(
        "0.00045"
    )


def test_price_estimate_uses_custom_prices_and_unknown_is_none() -> None:
    """The user table applies to estimates; an unknown model or no model is None."""
    prices = validate_prices({"my-local-llama": (2, 4)})

    assert price_estimate({"input_tokens": 500}, "my-local-llama", None, prices) == Decimal("0.001")
    assert price_estimate({"input_tokens": 500}, "another-local-model", None, prices) is None
    assert price_estimate({"input_tokens": 500}, None) is None


@pytest.mark.parametrize(
    ("tokens", "error", "fragment"),
    [
        pytest.param([1000], BudgetTypeError, "mapping", id="not-a-mapping"),
        pytest.param({"prompt_tokens": 1}, BudgetConfigError, "'prompt_tokens'", id="unknown-key"),
        pytest.param({"input_tokens": 1.5}, BudgetTypeError, "1.5", id="float"),
        pytest.param({"input_tokens": True}, BudgetTypeError, "True", id="bool"),
        pytest.param({"input_tokens": -1}, BudgetConfigError, "-1", id="negative"),
    ],
)
def test_price_estimate_rejects_bad_counts(
    tokens: Any, error: type[Exception], fragment: str
) -> None:
    """A malformed estimate is a configuration error naming the bad value."""
    with pytest.raises(error, match="estimate") as caught:
        price_estimate(tokens, "gpt-4o")

    assert fragment in str(caught.value)


def test_importing_budgetkit_does_not_import_pricing_dependencies() -> None:
    """genai-prices, pydantic and httpx load only when a price is first needed."""
    code = (
        "import sys, budgetkit, budgetkit._pricing, budgetkit._extract, budgetkit._streams;"
        "print(sorted(m for m in ('genai_prices', 'pydantic', 'httpx', 'httpx2')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )

    assert result.stdout.strip() == "[]"


# -- 1-hour cache writes ---------------------------------------------------------------------

SONNET_1H_BODY: dict[str, Any] = {
    "id": "msg_1h",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "cached for an hour"}],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 1000,
        "output_tokens": 500,
        "cache_creation_input_tokens": 100_000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 100_000},
    },
}


def test_anthropic_one_hour_cache_writes_cost_the_one_hour_rate() -> None:
    """100k tokens written to the 1-hour cache of claude-sonnet-4-5 cost $6 per million, not
    the 5-minute $3.75: (1000 x 3 + 100000 x 6 + 500 x 15) / 1e6 = 0.6105 (it was 0.3855)."""

    @budget.llm_call
    def ask(client: anthropic.Anthropic) -> Any:
        return client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=512,
            messages=[{"role": "user", "content": "Cache the context for an hour."}],
        )

    with (
        StubServer(reply=lambda _request: SONNET_1H_BODY) as stub,
        anthropic.Anthropic(
            base_url=stub.anthropic_base_url, api_key="test", max_retries=0
        ) as client,
        SessionBudget(max_usd=10, handoff_dir=None) as session,
    ):
        message = ask(client)

    assert message.usage.cache_creation is not None
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 100_000
    assert session.usage.cost_usd == Decimal("0.6105")
    expected = genai_prices.extract_usage(SONNET_1H_BODY, provider_id="anthropic").calc_price()
    assert expected.total_price == Decimal("0.6105")


def _models_pricing(price_key: str) -> list[tuple[str, str]]:
    from genai_prices.data_snapshot import get_snapshot

    return [
        (provider.id, model.id)
        for provider in get_snapshot().providers
        for model in provider.models
        if isinstance(model.prices, ModelPrice) and getattr(model.prices, price_key) is not None
    ]


def test_one_hour_cache_writes_equal_calc_price_for_every_model_that_prices_them() -> None:
    """Every model with a 1-hour cache-write price: 5-minute and 1-hour writes, cache reads
    and web searches priced exactly as genai-prices prices them."""
    models = _models_pricing("cache_write_1h_mtok")
    checked = 0
    for provider, model in models:
        for write_1h in (0, 30_000, 100_000):
            usage = Usage(
                151_000,
                500,
                20_000,
                100_000,
                model=model,
                provider=provider,
                details={"cache_write_1h_tokens": write_1h, "web_searches": 3},
            )
            try:
                reference: Decimal | None = genai_prices.calc_price(
                    genai_prices.Usage(
                        input_tokens=151_000,
                        output_tokens=500,
                        cache_read_tokens=20_000,
                        cache_write_tokens=100_000,
                        cache_write_1h_tokens=write_1h,
                        web_searches=3,
                    ),
                    model,
                    provider_id=provider,
                ).total_price
            except LookupError:  # an id its own match rules do not match
                reference = None
            assert price_usage(usage) == reference, (provider, model, write_1h)
            checked += reference is not None
    assert checked > 150


# -- the caller's decimal context ------------------------------------------------------------


@pytest.mark.parametrize(
    "configure",
    [
        pytest.param({"prec": 3, "rounding": decimal.ROUND_DOWN}, id="3-digits-rounding-down"),
        pytest.param(
            {"prec": 4, "rounding": decimal.ROUND_UP, "traps": [decimal.Inexact]},
            id="4-digits-trapping-inexact",
        ),
    ],
)
def test_pricing_ignores_the_callers_decimal_context(configure: dict[str, Any]) -> None:
    """Prices are computed in budgetkit's own decimal context: a caller's precision, rounding
    or traps change neither the price nor the integer rates cached on the first call."""
    haiku = Usage(1200, 300, 200, 100, model="claude-haiku-4-5")  # 0.002545
    sonnet = Usage(101_000, 500, 0, 100_000, model="claude-sonnet-4-5")  # 0.3855
    bedrock_counts = (1110, 20, 1000, 100, 0)  # 1.375 per million: 0.0003685
    bedrock = "anthropic.claude-haiku-4-5-20251001-v1:0"
    table = validate_prices({"my-llama": (Decimal("0.123"), Decimal("0.456"))})
    llama = Usage(1234, 567, model="my-llama")  # (1234 x 0.123 + 567 x 0.456) / 1e6

    with decimal.localcontext() as context:
        context.prec = configure["prec"]
        context.rounding = configure["rounding"]
        for trap in configure.get("traps", []):
            context.traps[trap] = True
        inside = (
            price_usage(haiku),
            price_usage(sonnet),
            price_units(bedrock, "aws", bedrock_counts),
            price_usage(llama, prices=table),
            price_estimate({"input_tokens": 1234, "output_tokens": 567}, "my-llama", None, table),
        )

    assert inside == (
        Decimal("0.002545"),
        Decimal("0.3855"),
        _money.to_units(Decimal("0.0003685")),
        Decimal("0.000410334"),
        Decimal("0.000410334"),
    )
    # The rates cached while the caller's context was active are right, too.
    assert price_units(bedrock, "aws", bedrock_counts) == _money.to_units(Decimal("0.0003685"))


def test_session_cost_ignores_the_callers_decimal_context() -> None:
    """A whole session, the real openai client on the fast path, under a 3-digit context."""
    with (
        StubServer(usage=(1234, 567), cache_read_tokens=200) as stub,
        openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client,
        decimal.localcontext() as context,
    ):
        context.prec = 3
        context.rounding = decimal.ROUND_FLOOR
        with SessionBudget(max_usd=1, handoff_dir=None) as session:
            budget.llm_call(client.chat.completions.create)(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )

    # (1034 x 0.15 + 200 x 0.075 + 567 x 0.6) / 1e6
    assert session.usage.cost_usd == Decimal("0.0005103")


# -- a reported cost of zero -----------------------------------------------------------------


def test_reported_zero_cost_for_a_known_model_is_priced_from_the_table() -> None:
    """A gateway's ``cost: 0`` for a call that used tokens of a model the table knows is
    not believed: the table prices it. (1000 x 0.15 + 500 x 0.6) / 1e6."""
    usage = Usage(1000, 500, model="gpt-4o-mini", reported_cost_usd=Decimal(0))

    assert price_usage(usage) == Decimal("0.00045")
    prices = validate_prices({"my-llama": (1, 2)})
    local = Usage(1000, 500, model="my-llama", reported_cost_usd=Decimal("0.0"))
    assert price_usage(local, prices=prices) == Decimal("0.002")


def test_reported_zero_cost_for_an_unknown_model_is_unknown() -> None:
    """Fail closed: ``cost: 0`` with tokens of a model no table knows is an unknown cost."""
    usage = Usage(1000, 500, model="my-local-llama", reported_cost_usd=Decimal(0))

    assert price_usage(usage) is None
    assert price_usage(Usage(1000, 500, reported_cost_usd=Decimal(0))) is None


def test_reported_zero_cost_without_tokens_is_zero() -> None:
    """Nothing used, nothing charged: a zero cost for zero tokens stands."""
    usage = Usage(0, 0, model="my-local-llama", reported_cost_usd=Decimal(0))

    assert price_usage(usage) == Decimal(0)


def test_reported_zero_cost_in_a_session() -> None:
    """OpenRouter-style ``usage.cost: 0``: charged from the table for a known model, counted
    as unpriced for an unknown one."""

    @budget.llm_call
    def ask(model: str) -> dict[str, Any]:
        return {
            "model": model,
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "cost": 0},
        }

    with SessionBudget(handoff_dir=None) as session:
        ask("openai/gpt-4o-mini")
        ask("someone/home-made-7b")

    assert session.usage.cost_usd == Decimal("0.00045")
    assert session.usage.unpriced_calls == 1
