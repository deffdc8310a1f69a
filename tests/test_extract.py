"""extract_usage: every supported response shape, bad input, and the exact cost of each."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar
from unittest.mock import MagicMock, Mock

import anthropic
import genai_prices
import openai
import pydantic
import pytest
from anthropic.types import Message, RawMessageStartEvent, RawMessageStreamEvent
from google.genai import types as gemini
from langchain_core.messages import AIMessage, AIMessageChunk
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseCompletedEvent

from budgetkit import SessionBudget, budget
from budgetkit._extract import MalformedUsageError, extract_usage
from budgetkit._pricing import price_usage
from budgetkit._usage import Usage
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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

    assert usage == Usage(130, 0, model="gemini-2.5-pro", details={"input_tool_tokens": 30})


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


# -- every shape priced exactly as genai-prices prices it -------------------------------------
#
# For each response shape budgetkit reads, the reference price is genai-prices' own: its
# extractor reads the provider's JSON body (for LangChain and LiteLLM, the provider body those
# libraries were given) and ``genai_prices.calc_price`` prices it. budgetkit reads its shape of
# the same answer and prices it with ``price_usage``; the two must be equal, digit for digit.


def openai_chat_body(
    model: str,
    *,
    cached: int = 200,
    cache_write: int = 100,
    input_audio: int = 0,
    reasoning: int = 50,
    output_audio: int = 0,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {
                "cached_tokens": cached,
                "cache_write_tokens": cache_write,
                "audio_tokens": input_audio,
            },
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": output_audio,
            },
        },
    }


def responses_body(model: str) -> dict[str, Any]:
    return {
        **RESPONSE_BODY,
        "model": model,
        "usage": {
            "input_tokens": 1200,
            "input_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 100},
            "output_tokens": 300,
            "output_tokens_details": {"reasoning_tokens": 50},
            "total_tokens": 1500,
        },
    }


#: Anthropic cache-write splits: (5-minute, 1-hour) tokens, or None for no split reported.
TTL_SPLITS: dict[str, tuple[int, int] | None] = {
    "1h": (0, 100_000),
    "5m+1h": (30_000, 70_000),
    "5m": (100_000, 0),
    "no-split": None,
}


def anthropic_usage(split: tuple[int, int] | None, web_searches: int = 3) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": 1000,
        "output_tokens": 500,
        "cache_creation_input_tokens": 100_000,
        "cache_read_input_tokens": 20_000,
        "server_tool_use": {"web_search_requests": web_searches, "web_fetch_requests": 0},
    }
    if split is not None:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": split[0],
            "ephemeral_1h_input_tokens": split[1],
        }
    return usage


def anthropic_body(model: str, split: tuple[int, int] | None) -> dict[str, Any]:
    return {**ANTHROPIC_BODY, "model": model, "usage": anthropic_usage(split)}


def gemini_body(model: str, *, prompt: int = 1000) -> dict[str, Any]:
    """camelCase JSON with every modality breakdown the API reports."""
    return {
        "modelVersion": model,
        "usageMetadata": {
            "promptTokenCount": prompt,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": prompt - 400},
                {"modality": "AUDIO", "tokenCount": 300},
                {"modality": "IMAGE", "tokenCount": 60},
                {"modality": "DOCUMENT", "tokenCount": 40},
            ],
            "cachedContentTokenCount": 200,
            "cacheTokensDetails": [
                {"modality": "TEXT", "tokenCount": 120},
                {"modality": "AUDIO", "tokenCount": 80},
            ],
            "candidatesTokenCount": 250,
            "candidatesTokensDetails": [
                {"modality": "TEXT", "tokenCount": 200},
                {"modality": "IMAGE", "tokenCount": 50},
            ],
            "thoughtsTokenCount": 50,
            "toolUsePromptTokenCount": 30,
            "toolUsePromptTokensDetails": [{"modality": "TEXT", "tokenCount": 30}],
            "totalTokenCount": prompt + 330,
        },
    }


def gemini_snake(body: dict[str, Any]) -> dict[str, Any]:
    """The same body in the snake_case the google-genai SDK dumps by default."""
    return gemini.GenerateContentResponse.model_validate(body).model_dump(exclude_none=True)


def bedrock_body(split: tuple[int, int] | None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "inputTokens": 1000,
        "outputTokens": 500,
        "totalTokens": 121_500,
        "cacheReadInputTokens": 20_000,
        "cacheWriteInputTokens": 100_000,
    }
    if split is not None:
        usage["cacheDetails"] = [
            {"ttl": "5m", "inputTokens": split[0]},
            {"ttl": "1h", "inputTokens": split[1]},
        ]
    return {**BEDROCK_CONVERSE, "usage": usage}


def langchain_from_anthropic(body: dict[str, Any], *, legacy: bool = False) -> AIMessage:
    """The AIMessage langchain-anthropic builds from an Anthropic message (its
    ``_create_usage_metadata``): input made inclusive; when the TTL split is reported the
    current release zeroes ``cache_creation`` and reports the two splits instead, the
    older ones (``legacy``) kept the total next to the splits."""
    usage = body["usage"]
    details: dict[str, Any] = {
        "cache_read": usage["cache_read_input_tokens"],
        "cache_creation": usage["cache_creation_input_tokens"],
    }
    split = usage.get("cache_creation")
    if split:
        details.update(split)
        if not legacy and sum(split.values()) > 0:
            details["cache_creation"] = 0
    input_tokens = (
        usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )
    return AIMessage(
        content="hi",
        usage_metadata={
            "input_tokens": input_tokens,
            "output_tokens": usage["output_tokens"],
            "total_tokens": input_tokens + usage["output_tokens"],
            "input_token_details": details,  # type: ignore[typeddict-item]
        },
        response_metadata={"model_name": body["model"], "model_provider": "anthropic"},
    )


def langchain_from_openai(body: dict[str, Any]) -> AIMessage:
    """The AIMessage langchain-openai builds from a chat completion."""
    usage = body["usage"]
    prompt, completion = usage["prompt_tokens_details"], usage["completion_tokens_details"]
    return AIMessage(
        content="hi",
        usage_metadata={
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_token_details": {
                "audio": prompt["audio_tokens"],
                "cache_read": prompt["cached_tokens"],
            },
            "output_token_details": {
                "audio": completion["audio_tokens"],
                "reasoning": completion["reasoning_tokens"],
            },
        },
        response_metadata={"model_name": body["model"]},
    )


def litellm_from_anthropic(
    body: dict[str, Any], *, cost: float | None = None, legacy: bool = False
) -> SimpleNamespace:
    """The shape of litellm.ModelResponse on an Anthropic route (litellm is not installable
    here): inclusive prompt_tokens, the cache counts in prompt_tokens_details (newer releases
    name the writes ``cache_write_tokens``, older ones ``cache_creation_tokens``), the TTL
    split in ``cache_creation_token_details``, web searches in ``server_tool_use``."""
    usage = body["usage"]
    details = SimpleNamespace(
        cached_tokens=usage["cache_read_input_tokens"],
        audio_tokens=None,
        cache_creation_tokens=usage["cache_creation_input_tokens"],
        cache_creation_token_details=(
            SimpleNamespace(**usage["cache_creation"]) if "cache_creation" in usage else None
        ),
        web_search_requests=usage["server_tool_use"]["web_search_requests"],
    )
    if not legacy:
        details.cache_write_tokens = usage["cache_creation_input_tokens"]
    prompt = (
        usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )
    return SimpleNamespace(
        model=body["model"],
        usage=SimpleNamespace(
            prompt_tokens=prompt,
            completion_tokens=usage["output_tokens"],
            total_tokens=prompt + usage["output_tokens"],
            prompt_tokens_details=details,
            completion_tokens_details=None,
            server_tool_use=SimpleNamespace(**usage["server_tool_use"]),
            cache_creation_input_tokens=usage["cache_creation_input_tokens"],
            cache_read_input_tokens=usage["cache_read_input_tokens"],
        ),
        _hidden_params={"custom_llm_provider": "anthropic", "response_cost": cost},
    )


def litellm_from_openai(body: dict[str, Any]) -> SimpleNamespace:
    """litellm.ModelResponse on an OpenAI route: the OpenAI usage, as objects."""
    usage = body["usage"]
    return SimpleNamespace(
        model=body["model"],
        usage=SimpleNamespace(
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            total_tokens=usage["total_tokens"],
            prompt_tokens_details=SimpleNamespace(**usage["prompt_tokens_details"]),
            completion_tokens_details=SimpleNamespace(**usage["completion_tokens_details"]),
        ),
        _hidden_params={"custom_llm_provider": "openai"},
    )


@dataclasses.dataclass(frozen=True)
class Shape:
    """One answer: what budgetkit reads, and the provider body genai-prices reads."""

    response: Callable[[], object]
    body: dict[str, Any]
    provider_id: str
    api_flavor: str = "default"
    model: str | None = None  # the model kwarg (Bedrock bodies name none)
    details_matter: bool = False  # the finer counts change the price


def shapes() -> Iterator[Any]:
    for model in ("gpt-4o-mini", "gpt-5-mini", "o4-mini", "gpt-5.6-luna"):
        body = openai_chat_body(model)
        yield pytest.param(
            Shape(lambda b=body: ChatCompletion.model_validate(b), body, "openai", "chat"),
            id=f"openai-chat-{model}",
        )
    for model in ("gpt-audio", "gpt-audio-mini"):
        body = openai_chat_body(model, cached=0, cache_write=0, input_audio=400, output_audio=120)
        yield pytest.param(
            Shape(
                lambda b=body: ChatCompletion.model_validate(b), body, "openai", "chat", None, True
            ),
            id=f"openai-chat-audio-{model}",
        )
        yield pytest.param(
            Shape(lambda b=body: b, body, "openai", "chat", None, True),
            id=f"openai-chat-audio-dict-{model}",
        )
    for model in ("gpt-4o", "gpt-5-mini", "o3", "gpt-5.6-sol"):
        body = responses_body(model)
        yield pytest.param(
            Shape(lambda b=body: Response.model_validate(b), body, "openai", "responses"),
            id=f"responses-{model}",
        )
    for model in (
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "claude-3-5-haiku-latest",
    ):
        for name, split in TTL_SPLITS.items():
            body = anthropic_body(model, split)
            yield pytest.param(
                Shape(
                    lambda b=body: Message.model_validate(b), body, "anthropic", details_matter=True
                ),
                id=f"anthropic-{name}-{model}",
            )
    for model in (
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.5-pro",
        "gemini-2.5-flash-image",
    ):
        body = gemini_body(model)
        matter = model != "gemini-2.5-pro"  # the others price audio or image tokens apart
        yield pytest.param(
            Shape(
                lambda b=body: gemini.GenerateContentResponse.model_validate(b),
                body,
                "google",
                details_matter=matter,
            ),
            id=f"gemini-object-{model}",
        )
        yield pytest.param(
            Shape(lambda b=body: b, body, "google", details_matter=matter),
            id=f"gemini-camel-dict-{model}",
        )
        yield pytest.param(
            Shape(lambda b=body: gemini_snake(b), body, "google", details_matter=matter),
            id=f"gemini-snake-dict-{model}",
        )
    big = gemini_body("gemini-2.5-pro", prompt=250_000)  # over the 200k tier
    yield pytest.param(
        Shape(lambda b=big: gemini.GenerateContentResponse.model_validate(b), big, "google"),
        id="gemini-object-over-200k-tier",
    )
    for model in (
        BEDROCK_MODEL,
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "amazon.nova-pro-v1:0",
    ):
        for name, split in TTL_SPLITS.items():
            body = bedrock_body(split)
            matter = split is not None and split[1] > 0 and "claude" in model
            yield pytest.param(
                Shape(lambda b=body: b, body, "aws", model=model, details_matter=matter),
                id=f"bedrock-{name}-{model}",
            )
    body = bedrock_body((30_000, 70_000))
    yield pytest.param(
        Shape(
            lambda b=body: {"metadata": {"usage": b["usage"]}},
            body,
            "aws",
            model=BEDROCK_MODEL,
            details_matter=True,
        ),
        id="bedrock-stream-metadata-event",
    )
    for model in ("claude-sonnet-4-5", "claude-haiku-4-5"):
        for name, split in TTL_SPLITS.items():
            body = anthropic_body(model, split)
            body["usage"]["server_tool_use"]["web_search_requests"] = 0  # LangChain drops them
            matter = split is not None and split[1] > 0
            yield pytest.param(
                Shape(
                    lambda b=body: langchain_from_anthropic(b),
                    body,
                    "anthropic",
                    details_matter=matter,
                ),
                id=f"langchain-anthropic-{name}-{model}",
            )
            if split is not None:
                yield pytest.param(
                    Shape(
                        lambda b=body: langchain_from_anthropic(b, legacy=True),
                        body,
                        "anthropic",
                        details_matter=matter,
                    ),
                    id=f"langchain-anthropic-legacy-{name}-{model}",
                )
    for model in ("gpt-4o-mini", "o4-mini", "gpt-audio"):
        body = openai_chat_body(model, cache_write=0, input_audio=400, output_audio=120)
        if model == "gpt-audio":
            body = openai_chat_body(
                model, cached=0, cache_write=0, input_audio=400, output_audio=120
            )
        yield pytest.param(
            Shape(
                lambda b=body: langchain_from_openai(b),
                body,
                "openai",
                "chat",
                details_matter=model == "gpt-audio",
            ),
            id=f"langchain-openai-{model}",
        )
    for model in ("claude-sonnet-4-5", "claude-haiku-4-5"):
        for name, split in TTL_SPLITS.items():
            body = anthropic_body(model, split)
            yield pytest.param(
                Shape(
                    lambda b=body: litellm_from_anthropic(b), body, "anthropic", details_matter=True
                ),
                id=f"litellm-anthropic-{name}-{model}",
            )
        body = anthropic_body(model, TTL_SPLITS["5m+1h"])
        yield pytest.param(
            Shape(
                lambda b=body: litellm_from_anthropic(b, cost=0.0, legacy=True),
                body,
                "anthropic",
                details_matter=True,
            ),
            id=f"litellm-anthropic-legacy-reported-zero-{model}",
        )
    for model in ("gpt-4o-mini", "gpt-audio"):
        body = openai_chat_body(model, cached=0, cache_write=0, input_audio=400, output_audio=120)
        yield pytest.param(
            Shape(
                lambda b=body: litellm_from_openai(b),
                body,
                "openai",
                "chat",
                details_matter=model == "gpt-audio",
            ),
            id=f"litellm-openai-{model}",
        )


@pytest.mark.parametrize("shape", list(shapes()))
def test_every_shape_is_priced_exactly_as_genai_prices(shape: Shape) -> None:
    """budgetkit's price of each shape equals genai-prices' price of the provider body."""
    usage = extract_usage(shape.response(), model=shape.model)
    assert usage is not None
    assert usage.model is not None
    reference = genai_prices.extract_usage(
        shape.body, provider_id=shape.provider_id, api_flavor=shape.api_flavor
    )

    expected = genai_prices.calc_price(
        reference.usage, usage.model, provider_id=usage.provider
    ).total_price

    assert price_usage(usage) == expected
    without_details = dataclasses.replace(usage, details={})  # MARK
    assert (price_usage(without_details) != expected) is shape.details_matter


def test_anthropic_cache_ttl_split_and_web_searches_are_read() -> None:
    """The 1-hour share of the cache writes and the web searches are carried in ``details``."""
    usage = extract_usage(
        Message.model_validate(anthropic_body("claude-sonnet-4-5", (30_000, 70_000)))
    )

    assert usage == Usage(
        121_000,
        500,
        20_000,
        100_000,
        model="claude-sonnet-4-5",
        details={
            "cache_write_5m_tokens": 30_000,
            "cache_write_1h_tokens": 70_000,
            "web_searches": 3,
        },
    )


def test_langchain_anthropic_zeroed_cache_creation_still_counts_the_writes() -> None:
    """Current langchain-anthropic reports ``cache_creation: 0`` next to the TTL split; the
    writes are the split's sum, not zero (they were priced as plain input)."""
    message = langchain_from_anthropic(anthropic_body("claude-haiku-4-5", (30_000, 70_000)))
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_token_details"]["cache_creation"] == 0

    usage = extract_usage(message)

    assert usage is not None
    assert (usage.cache_write_tokens, usage.details["cache_write_1h_tokens"]) == (100_000, 70_000)


def test_litellm_older_cache_creation_tokens_are_cache_writes() -> None:
    """Older LiteLLM releases name the cache writes ``cache_creation_tokens``."""
    response = litellm_from_anthropic(anthropic_body("claude-haiku-4-5", None), legacy=True)

    usage = extract_usage(response)

    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        121_000,
        20_000,
        100_000,
    )


def test_gemini_modalities_are_read() -> None:
    """Gemini's per-modality breakdowns, as genai-prices names them."""
    usage = extract_usage(
        gemini.GenerateContentResponse.model_validate(gemini_body("gemini-2.5-flash"))
    )

    assert usage == Usage(
        1030,
        300,
        200,
        0,
        50,
        model="gemini-2.5-flash",
        details={
            "input_text_tokens": 630,
            "input_audio_tokens": 300,
            "input_image_tokens": 100,
            "cache_text_read_tokens": 120,
            "cache_audio_read_tokens": 80,
            "output_text_tokens": 200,
            "output_image_tokens": 50,
            "input_tool_tokens": 30,
            "input_text_tool_tokens": 30,
        },
    )


def test_anthropic_stream_with_one_hour_cache_writes() -> None:
    """A streamed Anthropic message keeps the TTL split and the web searches of its events."""
    body = anthropic_body("claude-sonnet-4-5", (30_000, 70_000))
    start_usage = {**body["usage"], "output_tokens": 1}
    events = [
        {"type": "message_start", "message": {**body, "usage": start_usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "output_tokens": 500,
                "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 0},
            },
        },
        {"type": "message_stop"},
    ]

    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)

    @budget.llm_call
    def stream() -> Iterator[Any]:
        for event in events:
            yield adapter.validate_python(event)

    with SessionBudget(handoff_dir=None) as session:
        for _event in stream():
            pass

    expected = genai_prices.extract_usage(body, provider_id="anthropic").calc_price().total_price
    assert session.usage.cost_usd == expected
    assert session.usage.cache_write_tokens == 100_000


def test_langchain_stream_chunks_keep_the_one_hour_writes() -> None:
    """LangChain chunks are added up; the 1-hour writes of the first chunk stay in the sum.
    (This checks ``Usage.__add__``, which sums ``details``.)"""
    body = anthropic_body("claude-haiku-4-5", (30_000, 70_000))
    body["usage"]["server_tool_use"]["web_search_requests"] = 0  # LangChain drops them
    whole = langchain_from_anthropic(body).usage_metadata
    assert whole is not None
    first = AIMessageChunk(
        content="",
        usage_metadata={**whole, "output_tokens": 0, "total_tokens": whole["input_tokens"]},
        response_metadata={"model_name": "claude-haiku-4-5"},
    )
    last = AIMessageChunk(
        content="hi",
        usage_metadata={
            "input_tokens": 0,
            "output_tokens": whole["output_tokens"],
            "total_tokens": whole["output_tokens"],
        },
    )

    @budget.llm_call
    def stream() -> Iterator[AIMessageChunk]:
        yield first
        yield last

    with SessionBudget(handoff_dir=None) as session:
        for _chunk in stream():
            pass

    expected = genai_prices.extract_usage(body, provider_id="anthropic").calc_price().total_price
    assert session.usage.cost_usd == expected
    assert (session.usage.input_tokens, session.usage.output_tokens) == (121_000, 500)
