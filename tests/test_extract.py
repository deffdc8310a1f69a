"""extract_usage: every supported response shape, bad input, and the exact cost of each."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar
from unittest.mock import MagicMock, Mock

import anthropic
import genai_prices
import openai
import pytest
from anthropic.types import Message, RawMessageStartEvent
from google.genai import types as gemini
from langchain_core.messages import AIMessage
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseCompletedEvent

from budgetkit._extract import MalformedUsageError, extract_usage
from budgetkit._pricing import price_usage
from budgetkit._usage import Usage
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Iterator

# Inclusive counts the stub reports for every provider: 1200 input (200 cache reads,
# 100 cache writes), 300 output (50 reasoning).
STUB_USAGE: dict[str, Any] = {
    "usage": (1200, 300),
    "cache_read_tokens": 200,
    "cache_write_tokens": 100,
}
MESSAGES: Any = [{"role": "user", "content": "How big is the budget?"}]


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(**STUB_USAGE, reasoning_tokens=50) as server:
        yield server


def genai_price(usage: Usage, provider_id: str | None = None) -> Decimal:
    """The price genai-prices itself computes for ``usage``."""
    assert usage.model is not None
    calculation = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_reasoning_tokens=usage.reasoning_tokens,
        ),
        usage.model,
        provider_id=provider_id,
    )
    return calculation.total_price


def assert_priced(usage: Usage, expected: Decimal, provider_id: str | None = None) -> None:
    """budgetkit's price equals the hand-computed figure and genai-prices' own."""
    assert price_usage(usage) == expected
    assert genai_price(usage, provider_id) == expected


# -- real SDK clients against the stub server -------------------------------------------------


def test_openai_chat_completion_object(stub: StubServer) -> None:
    """A sync ChatCompletion: inclusive prompt_tokens; gpt-4o-mini has no cache-write price."""
    with openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    usage = extract_usage(response)

    assert usage == Usage(1200, 300, 200, 100, 50, model="gpt-4o-mini")
    # (1000 x 0.15 + 200 x 0.075 + 300 x 0.6) / 1e6; cache writes bill as input.
    assert_priced(usage, Decimal("0.000345"))


@pytest.mark.asyncio
async def test_openai_chat_completion_async(stub: StubServer) -> None:
    """An AsyncOpenAI ChatCompletion reads the same way."""
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client:
        response = await client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES)

    usage = extract_usage(response)

    assert usage == Usage(1200, 300, 200, 100, 50, model="gpt-5-mini")
    # (1000 x 0.25 + 200 x 0.025 + 300 x 2) / 1e6
    assert_priced(usage, Decimal("0.000855"))


def test_openai_responses_api_object(stub: StubServer) -> None:
    """A Responses API Response: input_tokens_details / output_tokens_details."""
    with openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client:
        response = client.responses.create(model="gpt-4o", input="How big is the budget?")

    usage = extract_usage(response)

    assert usage == Usage(1200, 300, 200, 100, 50, model="gpt-4o")
    # (1000 x 2.5 + 200 x 1.25 + 300 x 10) / 1e6
    assert_priced(usage, Decimal("0.00575"))


def test_anthropic_message_object_adds_cache_tokens(stub: StubServer) -> None:
    """Anthropic input_tokens (900 here) excludes cache reads and writes; they are added."""
    with anthropic.Anthropic(
        base_url=stub.anthropic_base_url, api_key="test", max_retries=0
    ) as client:
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=512, messages=MESSAGES
        )
    assert message.usage.input_tokens == 900

    usage = extract_usage(message)

    assert usage == Usage(1200, 300, 200, 100, 50, model="claude-haiku-4-5")
    # (900 x 1 + 200 x 0.1 + 100 x 1.25 + 300 x 5) / 1e6
    assert_priced(usage, Decimal("0.002545"))


@pytest.mark.asyncio
async def test_anthropic_message_async(stub: StubServer) -> None:
    """AsyncAnthropic messages read the same way."""
    async with anthropic.AsyncAnthropic(
        base_url=stub.anthropic_base_url, api_key="test", max_retries=0
    ) as client:
        message = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=512,
            messages=MESSAGES,
        )

    assert extract_usage(message) == Usage(1200, 300, 200, 100, 50, model="claude-haiku-4-5")


def test_chat_completion_without_usage_is_none() -> None:
    """A body without a usage block (some OpenAI-compatible servers) gives None."""
    body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-4o", "choices": []}
    with (
        StubServer(reply=lambda _request: body) as server,
        openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client,
    ):
        response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert response.usage is None
    assert extract_usage(response) is None


# -- SDK objects built with model_validate ----------------------------------------------------

RESPONSE_BODY: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 0,
    "model": "gpt-4o-2024-08-06",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 40, "cache_write_tokens": 0},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 120,
    },
}
ANTHROPIC_BODY: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [],
    "usage": {
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
    },
}


def test_responses_api_model_validate() -> None:
    """A dated model name prices as its base model (gpt-4o-2024-08-06 -> gpt-4o)."""
    usage = extract_usage(Response.model_validate(RESPONSE_BODY))

    assert usage == Usage(100, 20, 40, 0, 5, model="gpt-4o-2024-08-06")
    # (60 x 2.5 + 40 x 1.25 + 20 x 10) / 1e6
    assert_priced(usage, Decimal("0.0004"))


def test_responses_api_completed_event() -> None:
    """The terminal stream event carries the whole response and its usage."""
    event = ResponseCompletedEvent.model_validate(
        {"type": "response.completed", "sequence_number": 9, "response": RESPONSE_BODY}
    )

    assert extract_usage(event) == Usage(100, 20, 40, 0, 5, model="gpt-4o-2024-08-06")


def test_anthropic_message_model_validate() -> None:
    """Message: 10 uncached + 100 written + 1000 read = 1110 inclusive input."""
    usage = extract_usage(Message.model_validate(ANTHROPIC_BODY))

    assert usage == Usage(1110, 20, 1000, 100, 0, model="claude-haiku-4-5")
    # (10 x 1 + 1000 x 0.1 + 100 x 1.25 + 20 x 5) / 1e6
    assert_priced(usage, Decimal("0.000335"))


def test_anthropic_message_start_event() -> None:
    """message_start carries the message with its input usage."""
    body = {**ANTHROPIC_BODY, "usage": {**ANTHROPIC_BODY["usage"], "output_tokens": 1}}
    event = RawMessageStartEvent.model_validate({"type": "message_start", "message": body})

    assert extract_usage(event) == Usage(1110, 1, 1000, 100, 0, model="claude-haiku-4-5")


GEMINI_CAMEL: dict[str, Any] = {
    "modelVersion": "gemini-2.5-pro",
    "usageMetadata": {
        "promptTokenCount": 1000,
        "candidatesTokenCount": 200,
        "thoughtsTokenCount": 50,
        "cachedContentTokenCount": 400,
        "totalTokenCount": 1250,
    },
}
GEMINI_SNAKE: dict[str, Any] = {
    "model_version": "gemini-2.5-pro",
    "usage_metadata": {
        "prompt_token_count": 1000,
        "candidates_token_count": 200,
        "thoughts_token_count": 50,
        "cached_content_token_count": 400,
        "total_token_count": 1250,
    },
}
GEMINI_USAGE = Usage(1000, 250, 400, 0, 50, model="gemini-2.5-pro")


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(gemini.GenerateContentResponse.model_validate(GEMINI_CAMEL), id="object"),
        pytest.param(GEMINI_CAMEL, id="camelCase-dict"),
        pytest.param(GEMINI_SNAKE, id="snake_case-dict"),
    ],
)
def test_gemini_output_adds_thoughts(response: object) -> None:
    """Gemini: candidates exclude thoughts, so output = 200 + 50; prompt includes the cache."""
    usage = extract_usage(response)

    assert usage == GEMINI_USAGE
    # (600 x 1.25 + 400 x 0.125 + 250 x 10) / 1e6
    assert_priced(usage, Decimal("0.0033"))


def test_gemini_tool_use_prompt_counts_as_input() -> None:
    """toolUsePromptTokenCount is separate from the prompt and billed as input."""
    body = {
        **GEMINI_CAMEL,
        "usageMetadata": {"promptTokenCount": 100, "toolUsePromptTokenCount": 30},
    }

    usage = extract_usage(gemini.GenerateContentResponse.model_validate(body))

    assert usage == Usage(130, 0, model="gemini-2.5-pro")


def test_gemini_models_prefix_is_stripped() -> None:
    """Some Gemini endpoints report "models/<id>"; genai-prices knows only "<id>"."""
    body = {**GEMINI_CAMEL, "modelVersion": "models/gemini-2.5-pro"}

    usage = extract_usage(body)

    assert usage is not None
    assert usage.model == "gemini-2.5-pro"


def test_langchain_ai_message_openai_style() -> None:
    """usage_metadata is inclusive; the model comes from response_metadata."""
    message = AIMessage(
        content="hi",
        usage_metadata={
            "input_tokens": 1000,
            "output_tokens": 100,
            "total_tokens": 1100,
            "input_token_details": {"cache_read": 400},
            "output_token_details": {"reasoning": 20},
        },
        response_metadata={"model_name": "gpt-4o-mini"},
    )

    usage = extract_usage(message)

    assert usage == Usage(1000, 100, 400, 0, 20, model="gpt-4o-mini")
    # (600 x 0.15 + 400 x 0.075 + 100 x 0.6) / 1e6
    assert_priced(usage, Decimal("0.00018"))


def test_langchain_ai_message_anthropic_style_is_not_double_counted() -> None:
    """langchain-anthropic already adds the cache counts into input_tokens."""
    message = AIMessage(
        content="hi",
        usage_metadata={
            "input_tokens": 1110,
            "output_tokens": 20,
            "total_tokens": 1130,
            "input_token_details": {"cache_read": 1000, "cache_creation": 100},
        },
        response_metadata={"model_name": "claude-haiku-4-5"},
    )

    usage = extract_usage(message)

    assert usage == Usage(1110, 20, 1000, 100, 0, model="claude-haiku-4-5")
    assert_priced(usage, Decimal("0.000335"))


class LiteLLMUsage:
    """The shape of litellm.Usage on an Anthropic route: inclusive prompt_tokens plus
    Anthropic-style cache attributes (litellm is not installable here)."""

    prompt_tokens = 1110
    completion_tokens = 20
    total_tokens = 1130
    prompt_tokens_details: ClassVar = {"cached_tokens": 1000, "cache_write_tokens": 100}
    completion_tokens_details = None
    cache_read_input_tokens = 1000
    cache_creation_input_tokens = 100


class LiteLLMModelResponse:
    """The shape of litellm.ModelResponse with the cost LiteLLM computed."""

    model = "claude-haiku-4-5"
    usage = LiteLLMUsage()
    _hidden_params: ClassVar[dict[str, Any]] = {
        "response_cost": 0.000335,
        "custom_llm_provider": "anthropic",
    }


def test_litellm_reported_cost_and_no_double_counted_cache() -> None:
    """prompt_tokens wins over the Anthropic-style attributes; the reported cost is kept."""
    usage = extract_usage(LiteLLMModelResponse())

    assert usage == Usage(
        1110, 20, 1000, 100, 0, model="claude-haiku-4-5", reported_cost_usd=Decimal("0.000335")
    )
    assert price_usage(usage) == Decimal("0.000335")


def test_openrouter_usage_cost_is_reported_cost() -> None:
    """OpenRouter puts the USD it charged in usage.cost."""
    body = {
        "model": "openai/gpt-4o",
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost": 0.0000375},
    }

    usage = extract_usage(body)

    assert usage is not None
    assert usage.reported_cost_usd == Decimal("0.0000375")


BEDROCK_CONVERSE: dict[str, Any] = {
    "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
    "stopReason": "end_turn",
    "usage": {
        "inputTokens": 10,
        "outputTokens": 20,
        "totalTokens": 1130,
        "cacheReadInputTokens": 1000,
        "cacheWriteInputTokens": 100,
    },
    "metrics": {"latencyMs": 300},
}
BEDROCK_MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"


def test_bedrock_converse_adds_cache_and_needs_model_kwarg() -> None:
    """Bedrock's inputTokens excludes the cache; the model comes from the caller."""
    usage = extract_usage(BEDROCK_CONVERSE, model=BEDROCK_MODEL)

    assert usage == Usage(1110, 20, 1000, 100, 0, model=BEDROCK_MODEL, provider="aws")
    # (10 x 1.1 + 1000 x 0.11 + 100 x 1.375 + 20 x 5.5) / 1e6
    assert_priced(usage, Decimal("0.0003685"), provider_id="aws")


def test_bedrock_stream_metadata_event() -> None:
    """converse_stream's metadata event carries the usage."""
    event = {"metadata": {"usage": BEDROCK_CONVERSE["usage"], "metrics": {"latencyMs": 300}}}

    usage = extract_usage(event, model=BEDROCK_MODEL)

    assert usage == Usage(1110, 20, 1000, 100, 0, model=BEDROCK_MODEL, provider="aws")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(
            {"model": "gpt-4o", "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
            Usage(10, 5, model="gpt-4o"),
            id="openai-chat-dict",
        ),
        pytest.param(
            {"model": "claude-haiku-4-5", "usage": ANTHROPIC_BODY["usage"]},
            Usage(1110, 20, 1000, 100, model="claude-haiku-4-5"),
            id="anthropic-dict",
        ),
        pytest.param(
            {"type": "response.completed", "response": RESPONSE_BODY},
            Usage(100, 20, 40, 0, 5, model="gpt-4o-2024-08-06"),
            id="responses-event-dict",
        ),
        pytest.param(
            {"prompt_tokens": 7, "completion_tokens": 3}, Usage(7, 3), id="bare-usage-block"
        ),
        pytest.param(
            {
                "model": "deepseek-chat",
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": 1,
                    "prompt_cache_hit_tokens": 6,
                },
            },
            Usage(10, 1, 6, model="deepseek-chat"),
            id="deepseek-cache-hits",
        ),
    ],
)
def test_plain_dicts(response: object, expected: Usage) -> None:
    """Decoded JSON bodies read like the SDK objects."""
    assert extract_usage(response) == expected


def test_response_model_wins_over_model_kwarg() -> None:
    """The model the response names is the one that answered."""
    response = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )

    usage = extract_usage(response, model="gpt-4o-mini")

    assert usage is not None
    assert usage.model == "gpt-4o-mini-2024-07-18"


def test_provider_kwarg_wins_over_inferred_provider() -> None:
    """The caller's provider hint replaces the one inferred from the shape (Bedrock: aws)."""
    usage = extract_usage(BEDROCK_CONVERSE, model=BEDROCK_MODEL, provider="bedrock")

    assert usage is not None
    assert usage.provider == "bedrock"


def test_integral_float_counts_are_accepted() -> None:
    """12.0 is a whole number of tokens (some gateways emit floats)."""
    assert extract_usage({"usage": {"prompt_tokens": 12.0, "completion_tokens": 3}}) == Usage(12, 3)


# -- bad input ------------------------------------------------------------------------------


class RaisingAttributes:
    """An object whose every attribute access fails."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(None, id="None"),
        pytest.param("a string", id="str"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param(42, id="int"),
        pytest.param({}, id="empty-dict"),
        pytest.param({"choices": []}, id="dict-without-usage"),
        pytest.param([{"usage": {"prompt_tokens": 1}}], id="list"),
        pytest.param(Mock(), id="Mock"),
        pytest.param(MagicMock(), id="MagicMock"),
        pytest.param(RaisingAttributes(), id="raising-getattr"),
        pytest.param(AIMessage(content="no usage"), id="AIMessage-without-usage"),
        pytest.param({"usageMetadata": {}}, id="empty-gemini-metadata"),
    ],
)
def test_no_usage_is_none(response: object) -> None:
    """Anything without a usage report gives None and never raises."""
    assert extract_usage(response) is None


@pytest.mark.parametrize(
    ("response", "field", "value"),
    [
        pytest.param(
            {"usage": {"prompt_tokens": -1, "completion_tokens": 2}},
            "usage.prompt_tokens",
            "-1",
            id="negative",
        ),
        pytest.param(
            {"usage": {"prompt_tokens": 1, "completion_tokens": 2.5}},
            "usage.completion_tokens",
            "2.5",
            id="non-integer-float",
        ),
        pytest.param(
            {"usage": {"prompt_tokens": True, "completion_tokens": 2}},
            "usage.prompt_tokens",
            "True",
            id="bool",
        ),
        pytest.param(
            {"usage": {"input_tokens": "12", "output_tokens": 2}},
            "usage.input_tokens",
            "'12'",
            id="str",
        ),
        pytest.param(
            {"usage": {"inputTokens": [1], "outputTokens": 2}},
            "usage.inputTokens",
            "[1]",
            id="list",
        ),
        pytest.param(
            {"usageMetadata": {"promptTokenCount": float("nan")}},
            "usage_metadata.prompt_token_count",
            "nan",
            id="nan",
        ),
        pytest.param(
            {"usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": -3}}},
            "usage.prompt_tokens_details.cached_tokens",
            "-3",
            id="negative-nested",
        ),
    ],
)
def test_malformed_usage_raises(response: object, field: str, value: str) -> None:
    """Negative, non-integer, bool and wrong-typed counts raise, naming field and value."""
    with pytest.raises(MalformedUsageError) as caught:
        extract_usage(response)

    assert caught.value.field == field
    assert field in str(caught.value)
    assert value in str(caught.value)


def test_malformed_usage_error_is_a_value_error() -> None:
    """Callers may catch it as ValueError."""
    assert issubclass(MalformedUsageError, ValueError)
