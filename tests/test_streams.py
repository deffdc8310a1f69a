"""wrap_stream: transparent proxies that report a stream's usage exactly once."""

from __future__ import annotations

import asyncio
import gc
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from unittest.mock import MagicMock, Mock

import anthropic
import openai
import pytest
from google.genai import types as gemini
from langchain_core.messages import AIMessage, AIMessageChunk
from openai.types.chat import ChatCompletion

from budgetkit._pricing import price_usage
from budgetkit._streams import STREAM_USAGE_HINT, wrap_stream
from budgetkit._usage import Usage
from budgetkit.exceptions import UnmeasuredUsageWarning
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

MESSAGES: Any = [{"role": "user", "content": "Summarise the budget in five words"}]
REPLY = "Spend less, measure everything, always."
INCLUDE_USAGE: Any = {"include_usage": True}
# The stub's inclusive usage: 1200 input (200 cache reads, 100 cache writes), 300 output.
STUB_USAGE: dict[str, Any] = {
    "usage": (1200, 300),
    "cache_read_tokens": 200,
    "cache_write_tokens": 100,
}


class Ends:
    """An on_end callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[Usage | None] = []

    def __call__(self, usage: Usage | None) -> None:
        self.calls.append(usage)

    @property
    def usage(self) -> Usage | None:
        """The one reported usage; fails unless on_end ran exactly once."""
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


@pytest.fixture
def ends() -> Ends:
    return Ends()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(reply=REPLY, **STUB_USAGE) as server:
        yield server


@pytest.fixture
def oai(stub: StubServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(stub: StubServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=stub.anthropic_base_url, api_key="test", max_retries=0
    ) as client:
        yield client


def chat_text(chunks: list[Any]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


# -- OpenAI chat completions -----------------------------------------------------------------


def test_openai_chat_stream_with_include_usage(oai: openai.OpenAI, ends: Ends) -> None:
    """The last chunk's usage is reported once, after the caller got every chunk."""
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    )
    proxy: Any = wrap_stream(stream, ends)

    chunks = list(proxy)

    assert chat_text(chunks) == REPLY
    assert ends.usage == Usage(1200, 300, 200, 100, model="gpt-4o-mini")
    # (1000 x 0.15 + 200 x 0.075 + 300 x 0.6) / 1e6
    assert price_usage(ends.usage) == Decimal("0.000345")


def test_openai_chat_stream_without_include_usage_reports_none(
    oai: openai.OpenAI, stub: StubServer, ends: Ends
) -> None:
    """Without stream_options the API sends no usage: on_end(None), and the hint says why."""
    proxy: Any = wrap_stream(
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True), ends
    )

    assert chat_text(list(proxy)) == REPLY
    assert ends.calls == [None]
    assert "stream_options" not in stub.requests[-1][1]
    assert 'stream_options={"include_usage": True}' in STREAM_USAGE_HINT


def test_openai_stream_proxy_is_transparent(oai: openai.OpenAI, ends: Ends) -> None:
    """isinstance, attributes (.response) and ``with`` behave as on the real stream."""
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    )
    proxy: Any = wrap_stream(stream, ends)

    assert isinstance(proxy, openai.Stream)
    assert proxy.response is stream.response
    with proxy as entered:
        assert entered is proxy
        first = next(entered)
        rest = list(entered)

    assert chat_text([first, *rest]) == REPLY
    assert ends.usage == Usage(1200, 300, 200, 100, model="gpt-4o-mini")


def test_break_reports_once_with_what_was_seen(oai: openai.OpenAI, ends: Ends) -> None:
    """Stopping early reports once (no usage yet); closing afterwards does not report again."""
    proxy: Any = wrap_stream(
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
        ),
        ends,
    )

    for _chunk in proxy:
        break
    gc.collect()

    assert ends.calls == [None]
    proxy.close()
    assert ends.calls == [None]


def test_close_before_iterating_reports_none_once(oai: openai.OpenAI, ends: Ends) -> None:
    """close() ends the stream: reported once, with no usage."""
    proxy: Any = wrap_stream(
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
        ),
        ends,
    )

    proxy.close()
    proxy.close()

    assert ends.calls == [None]


def test_openai_error_mid_stream_reports_once_and_raises(ends: Ends) -> None:
    """An error event mid-stream raises to the caller and reports once, usage unknown."""
    with (
        StubServer(reply=REPLY, error_after=2) as server,
        openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client,
    ):
        proxy: Any = wrap_stream(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
            ),
            ends,
        )
        seen: list[Any] = []
        with pytest.raises(openai.APIError, match="failed mid-stream"):
            seen.extend(proxy)

    assert chat_text(seen) == "Spend less,"
    assert ends.calls == [None]


def test_interrupted_stream_reports_none(ends: Ends) -> None:
    """A connection cut before the usage chunk: reported once, unmeasured."""
    with (
        StubServer(reply=REPLY, cut_after=1) as server,
        openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client,
    ):
        proxy: Any = wrap_stream(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
            ),
            ends,
        )
        assert chat_text(list(proxy)) == "Spend"

    assert ends.calls == [None]


@pytest.mark.asyncio
async def test_openai_async_chat_stream(stub: StubServer, ends: Ends) -> None:
    """AsyncStream: ``async for`` works and the usage is reported once."""
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
        )
        proxy: Any = wrap_stream(stream, ends)
        assert isinstance(proxy, openai.AsyncStream)

        chunks = [chunk async for chunk in proxy]

    assert chat_text(chunks) == REPLY
    assert ends.usage == Usage(1200, 300, 200, 100, model="gpt-4o-mini")


@pytest.mark.asyncio
async def test_openai_async_stream_async_with_and_close(stub: StubServer, ends: Ends) -> None:
    """``async with`` plus an early exit reports once; the awaited close() is forwarded."""
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
        )
        proxy: Any = wrap_stream(stream, ends)
        async with proxy as entered:
            assert entered is proxy
            first = await entered.__anext__()
        await proxy.close()

    assert chat_text([first]) == ""  # the role chunk
    assert ends.calls == [None]


@pytest.mark.asyncio
async def test_async_break_reports_once(stub: StubServer, ends: Ends) -> None:
    """Breaking out of ``async for`` reports once, when the event loop finalises the iterator."""
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
        )
        proxy: Any = wrap_stream(stream, ends)
        async for _chunk in proxy:
            break
        gc.collect()
        for _ in range(3):
            await asyncio.sleep(0)
        await proxy.close()

    assert ends.calls == [None]


# -- OpenAI Responses API --------------------------------------------------------------------


def test_openai_responses_raw_stream(oai: openai.OpenAI, ends: Ends) -> None:
    """responses.create(stream=True): the response.completed event's usage."""
    proxy: Any = wrap_stream(
        oai.responses.create(model="gpt-4o", input="Summarise", stream=True), ends
    )

    events = list(proxy)

    assert events[-1].type == "response.completed"
    assert ends.usage == Usage(1200, 300, 200, 100, model="gpt-4o")
    # (1000 x 2.5 + 200 x 1.25 + 300 x 10) / 1e6
    assert price_usage(ends.usage) == Decimal("0.00575")


def test_openai_responses_stream_manager(oai: openai.OpenAI, ends: Ends) -> None:
    """responses.stream(...) returns a manager; the stream it opens is measured."""
    manager: Any = wrap_stream(oai.responses.stream(model="gpt-4o", input="Summarise"), ends)

    with manager as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()

    assert "".join(texts) == REPLY == final.output_text
    assert ends.usage == Usage(1200, 300, 200, 100, model="gpt-4o")


# -- Anthropic --------------------------------------------------------------------------------


def test_anthropic_raw_stream(claude: anthropic.Anthropic, ends: Ends) -> None:
    """message_start usage, overwritten by message_delta's cumulative output_tokens."""
    proxy: Any = wrap_stream(
        claude.messages.create(
            model="claude-haiku-4-5", max_tokens=512, messages=MESSAGES, stream=True
        ),
        ends,
    )

    events = list(proxy)

    assert next(event.type for event in events) == "message_start"
    assert ends.usage == Usage(1200, 300, 200, 100, model="claude-haiku-4-5")
    # (900 x 1 + 200 x 0.1 + 100 x 1.25 + 300 x 5) / 1e6
    assert price_usage(ends.usage) == Decimal("0.002545")


def test_anthropic_message_stream_manager_text_stream(
    claude: anthropic.Anthropic, ends: Ends
) -> None:
    """messages.stream(): text_stream and get_final_message bypass the proxy's iteration,
    so the usage comes from the SDK's final snapshot when the manager exits."""
    manager: Any = wrap_stream(
        claude.messages.stream(model="claude-haiku-4-5", max_tokens=512, messages=MESSAGES), ends
    )

    with manager as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        assert ends.calls == []

    assert text == REPLY
    assert final.usage.output_tokens == 300
    assert ends.usage == Usage(1200, 300, 200, 100, model="claude-haiku-4-5")


@pytest.mark.asyncio
async def test_anthropic_async_raw_stream_and_async_manager(stub: StubServer) -> None:
    """AsyncAnthropic: create(stream=True) and messages.stream() both report once."""
    raw_ends, manager_ends = Ends(), Ends()
    async with anthropic.AsyncAnthropic(
        base_url=stub.anthropic_base_url, api_key="test", max_retries=0
    ) as client:
        raw: Any = wrap_stream(
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=512, messages=MESSAGES, stream=True
            ),
            raw_ends,
        )
        _ = [event async for event in raw]
        manager: Any = wrap_stream(
            client.messages.stream(model="claude-haiku-4-5", max_tokens=512, messages=MESSAGES),
            manager_ends,
        )
        async with manager as stream:
            text = "".join([piece async for piece in stream.text_stream])

    assert text == REPLY
    expected = Usage(1200, 300, 200, 100, model="claude-haiku-4-5")
    assert raw_ends.usage == manager_ends.usage == expected


def test_anthropic_error_mid_stream_reports_what_was_seen(ends: Ends) -> None:
    """An error event after message_start: the input usage seen so far is reported once."""
    with (
        StubServer(reply=REPLY, error_after=1, **STUB_USAGE) as server,
        anthropic.Anthropic(
            base_url=server.anthropic_base_url, api_key="test", max_retries=0
        ) as client,
    ):
        proxy: Any = wrap_stream(
            client.messages.create(
                model="claude-haiku-4-5", max_tokens=512, messages=MESSAGES, stream=True
            ),
            ends,
        )
        with pytest.raises(anthropic.APIStatusError, match="overloaded"):
            list(proxy)

    # message_start reported the input and output_tokens=1; the final delta never came.
    assert ends.usage == Usage(1200, 1, 200, 100, model="claude-haiku-4-5")


# -- generators and other iterators ------------------------------------------------------------


def langchain_chunks() -> Iterator[AIMessageChunk]:
    yield AIMessageChunk(
        content="",
        usage_metadata={
            "input_tokens": 1110,
            "output_tokens": 0,
            "total_tokens": 1110,
            "input_token_details": {"cache_read": 1000, "cache_creation": 100},
        },
    )
    yield AIMessageChunk(content="Spend less.")
    yield AIMessageChunk(
        content="",
        usage_metadata={"input_tokens": 0, "output_tokens": 20, "total_tokens": 20},
        response_metadata={"model_name": "claude-haiku-4-5"},
    )


def test_langchain_chunks_are_summed(ends: Ends) -> None:
    """AIMessageChunk usage is additive (input on the first chunk, output on the last)."""
    proxy: Any = wrap_stream(langchain_chunks(), ends)

    assert [chunk.content for chunk in proxy] == ["", "Spend less.", ""]
    assert ends.usage == Usage(1110, 20, 1000, 100, model="claude-haiku-4-5")
    # (10 x 1 + 1000 x 0.1 + 100 x 1.25 + 20 x 5) / 1e6
    assert price_usage(ends.usage) == Decimal("0.000335")


def gemini_chunks() -> Iterator[gemini.GenerateContentResponse]:
    yield gemini.GenerateContentResponse.model_validate(
        {
            "modelVersion": "gemini-2.5-pro",
            "usageMetadata": {
                "promptTokenCount": 1000,
                "candidatesTokenCount": 1,
                "cachedContentTokenCount": 400,
            },
        }
    )
    # A later snapshot may drop a field an earlier one reported (here the cache count).
    yield gemini.GenerateContentResponse.model_validate(
        {
            "modelVersion": "gemini-2.5-pro",
            "usageMetadata": {
                "promptTokenCount": 1000,
                "candidatesTokenCount": 200,
                "thoughtsTokenCount": 50,
            },
        }
    )


def test_gemini_chunks_are_cumulative_with_backfill(ends: Ends) -> None:
    """Each Gemini chunk replaces the running totals; dropped fields keep earlier values."""
    proxy: Any = wrap_stream(gemini_chunks(), ends)

    assert len(list(proxy)) == 2
    assert ends.usage == Usage(1000, 250, 400, 0, 50, model="gemini-2.5-pro")
    # (600 x 1.25 + 400 x 0.125 + 250 x 10) / 1e6
    assert price_usage(ends.usage) == Decimal("0.0033")


def test_bedrock_converse_stream_metadata_event(ends: Ends) -> None:
    """converse_stream's metadata event carries the usage; the model comes from the caller."""
    events = iter(
        [
            {"messageStart": {"role": "assistant"}},
            {"contentBlockDelta": {"delta": {"text": "Spend less."}, "contentBlockIndex": 0}},
            {"messageStop": {"stopReason": "end_turn"}},
            {
                "metadata": {
                    "usage": {"inputTokens": 10, "outputTokens": 20, "cacheReadInputTokens": 1000}
                }
            },
        ]
    )
    model = "anthropic.claude-haiku-4-5-20251001-v1:0"

    proxy: Any = wrap_stream(events, ends, model=model)
    assert len(list(proxy)) == 4

    assert ends.usage == Usage(1010, 20, 1000, 0, model=model, provider="aws")


def test_generator_raising_reports_once_with_what_was_seen(ends: Ends) -> None:
    """A generator that fails after the usage chunk: reported once, error propagates."""

    def failing() -> Iterator[Any]:
        yield {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
        raise RuntimeError("provider went away")

    proxy: Any = wrap_stream(failing(), ends)

    with pytest.raises(RuntimeError, match="went away"):
        list(proxy)
    assert ends.usage == Usage(10, 5, model="gpt-4o-mini")


def test_generator_send_and_next_are_measured(ends: Ends) -> None:
    """next() and send() on a proxied generator observe items and finish on StopIteration."""

    def echo() -> Iterator[Any]:
        received = yield "ready"
        yield {"model": "gpt-4o", "usage": {"prompt_tokens": received, "completion_tokens": 1}}

    proxy: Any = wrap_stream(echo(), ends)

    assert next(proxy) == "ready"
    assert proxy.send(7)["usage"]["prompt_tokens"] == 7
    with pytest.raises(StopIteration):
        next(proxy)
    assert ends.usage == Usage(7, 1, model="gpt-4o")


@pytest.mark.asyncio
async def test_async_generator(ends: Ends) -> None:
    """Async generators are proxied: ``async for`` and on_end once."""

    async def chunks() -> AsyncIterator[Any]:
        yield {"model": "gpt-4o-mini", "usage": None}
        yield {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 100, "completion_tokens": 20}}

    proxy: Any = wrap_stream(chunks(), ends)

    assert len([chunk async for chunk in proxy]) == 2
    assert ends.usage == Usage(100, 20, model="gpt-4o-mini")


def test_model_kwarg_fills_in_a_stream_without_model(ends: Ends) -> None:
    """A stream that never names its model gets the caller's model."""
    chunks = iter([{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}])

    list(wrap_stream(chunks, ends, model="gpt-4o", provider="openai"))  # type: ignore[call-overload]

    assert ends.usage == Usage(1, 1, model="gpt-4o", provider="openai")


def test_malformed_usage_in_a_stream_reports_none_with_a_warning(ends: Ends) -> None:
    """A malformed usage chunk never breaks iteration; it is dropped with a warning."""
    chunks = iter([{"model": "gpt-4o", "usage": {"prompt_tokens": -5, "completion_tokens": 1}}])
    proxy: Any = wrap_stream(chunks, ends)

    with pytest.warns(UnmeasuredUsageWarning, match=r"usage.prompt_tokens is -5"):
        assert len(list(proxy)) == 1

    assert ends.calls == [None]


def test_on_end_runs_once_when_exhausted_then_closed_and_exited(ends: Ends) -> None:
    """Exhaustion, close() and ``with`` exit together still report exactly once."""

    def chunks() -> Iterator[Any]:
        yield {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    proxy: Any = wrap_stream(chunks(), ends)
    list(proxy)
    proxy.close()

    assert len(ends.calls) == 1


@pytest.mark.parametrize(
    "result",
    [
        pytest.param("a string", id="str"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param({"usage": {}}, id="dict"),
        pytest.param([1, 2], id="list"),
        pytest.param((1, 2), id="tuple"),
        pytest.param(None, id="None"),
        pytest.param(Mock(), id="Mock"),
        pytest.param(MagicMock(), id="MagicMock"),
        pytest.param(AIMessage(content="hi"), id="langchain-message"),
        pytest.param(
            ChatCompletion.model_validate(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "gpt-4o",
                    "choices": [],
                }
            ),
            id="pydantic-response",
        ),
    ],
)
def test_non_streams_are_not_wrapped(result: object, ends: Ends) -> None:
    """Values that are merely iterable are responses, not streams."""
    assert wrap_stream(result, ends) is None
    assert ends.calls == []


def test_openai_chat_completion_stream_helper(oai: openai.OpenAI, ends: Ends) -> None:
    """chat.completions.stream(...): chunk events and the helper's final snapshot."""
    manager: Any = wrap_stream(
        oai.chat.completions.stream(
            model="gpt-4o-mini", messages=MESSAGES, stream_options=INCLUDE_USAGE
        ),
        ends,
    )

    with manager as stream:
        final = stream.get_final_completion()

    assert final.choices[0].message.content == REPLY
    assert ends.usage == Usage(1200, 300, 200, 100, model="gpt-4o-mini")
