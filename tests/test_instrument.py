"""``budgetkit.instrument()``: the openai and anthropic SDKs charged without decorators."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anthropic
import openai
import pytest
import wrapt
from openai._base_client import AsyncAPIClient, SyncAPIClient

import budgetkit
from budgetkit import BudgetExhausted, SessionBudget
from budgetkit._instrument import is_instrumented
from budgetkit._pricing import price_usage
from budgetkit._usage import Usage
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

USAGE = (1200, 300)
MESSAGES = [{"role": "user", "content": "Summarise the budget rules."}]


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    budgetkit.uninstrument()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(usage=USAGE) as server:
        yield server


@pytest.fixture
def client(stub: StubServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as c:
        yield c


def _cost(model: str, provider: str, tokens: tuple[int, int] = USAGE) -> Decimal:
    cost = price_usage(
        Usage(input_tokens=tokens[0], output_tokens=tokens[1], model=model, provider=provider)
    )
    assert cost is not None
    return cost


def _loop(session: SessionBudget, client: openai.OpenAI, **kwargs: Any) -> None:
    """An agent that never decides it is done."""
    with session:
        while True:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kwargs)


def test_exported_from_the_package() -> None:
    assert "instrument" in budgetkit.__all__
    assert "uninstrument" in budgetkit.__all__
    assert budgetkit.__all__ == sorted(budgetkit.__all__)


def test_openai_chat_is_charged_inside_a_session(client: openai.OpenAI, handoff_dir: Path) -> None:
    budgetkit.instrument()
    with SessionBudget(handoff_dir=handoff_dir) as session:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content
    usage = session.usage
    assert (usage.llm_calls, usage.input_tokens, usage.output_tokens) == (1, *USAGE)
    assert usage.cost_usd == _cost("gpt-4o-mini", "openai")


def test_calls_outside_a_session_pass_through(client: openai.OpenAI, stub: StubServer) -> None:
    budgetkit.instrument()
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(stub.requests) == 1


def test_uninstrument_restores_the_original_methods() -> None:
    # instrument() patches the request method every SDK method goes through.
    original = SyncAPIClient.__dict__["request"]
    budgetkit.instrument()
    assert is_instrumented()
    assert isinstance(SyncAPIClient.__dict__["request"], wrapt.FunctionWrapper)
    assert isinstance(AsyncAPIClient.__dict__["request"], wrapt.FunctionWrapper)
    budgetkit.instrument()  # idempotent: not wrapped twice
    assert SyncAPIClient.__dict__["request"].__wrapped__ is original
    budgetkit.uninstrument()
    budgetkit.uninstrument()
    assert not is_instrumented()
    assert SyncAPIClient.__dict__["request"] is original
    budgetkit.instrument()  # again after uninstrument: modules already imported are patched
    assert isinstance(SyncAPIClient.__dict__["request"], wrapt.FunctionWrapper)


def test_uninstrumented_calls_are_not_charged(client: openai.OpenAI, handoff_dir: Path) -> None:
    budgetkit.instrument()
    budgetkit.uninstrument()
    with SessionBudget(handoff_dir=handoff_dir) as session:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert session.usage.llm_calls == 0


def test_count_limit_stops_before_the_request_is_sent(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    budgetkit.instrument()
    with pytest.raises(BudgetExhausted) as info:
        _loop(SessionBudget(max_llm_calls=2, handoff_dir=handoff_dir), client)
    assert info.value.reason == "max_llm_calls"
    assert len(stub.requests) == 2
    assert info.value.handoff_path is not None
    assert info.value.handoff_path.is_file()


def test_max_tokens_reserves_so_spend_stays_within_max_usd(handoff_dir: Path) -> None:
    # The model uses its whole output cap: without a reservation the last call overshoots.
    def usage(body: dict[str, Any]) -> tuple[int, int]:
        return math.ceil(len(json.dumps(body)) / 4), int(body["max_tokens"])

    limit = Decimal("0.002")
    budgetkit.instrument()
    session = SessionBudget(max_usd=limit, handoff_dir=handoff_dir)
    with (
        StubServer(usage=usage) as stub,
        openai.OpenAI(base_url=stub.base_url, api_key="t", max_retries=0) as client,
        pytest.raises(BudgetExhausted) as info,
    ):
        _loop(session, client, max_tokens=1000)
    assert info.value.reason == "max_usd"
    assert session.usage.cost_usd <= limit
    assert session.usage.llm_calls == len(stub.requests)  # the refused call never started
    # Each call costs about $0.0006: three fit, the fourth's reservation does not.
    assert len(stub.requests) == 3


def test_no_reservation_without_an_output_cap(client: openai.OpenAI, handoff_dir: Path) -> None:
    limit = Decimal("0.0001")
    budgetkit.instrument()
    s = SessionBudget(max_usd=limit, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted):
        _loop(s, client)
    # The crossing call completes, the next boundary stops: a measured limit.
    assert s.usage.cost_usd > limit


def test_openai_streaming_chat_is_charged_when_the_stream_ends(
    client: openai.OpenAI, handoff_dir: Path
) -> None:
    budgetkit.instrument()
    with SessionBudget(handoff_dir=handoff_dir) as session:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    assert (session.usage.llm_calls, session.usage.total_tokens) == (1, sum(USAGE))
    assert session.usage.cost_usd == _cost("gpt-4o-mini", "openai")


def test_openai_responses_plain_and_streamed(client: openai.OpenAI, handoff_dir: Path) -> None:
    budgetkit.instrument()
    with SessionBudget(handoff_dir=handoff_dir) as session:
        response = client.responses.create(model="gpt-4o-mini", input="hello")
        assert response.output_text
        events = list(client.responses.create(model="gpt-4o-mini", input="hello", stream=True))
        assert events[-1].type == "response.completed"
    assert (session.usage.llm_calls, session.usage.total_tokens) == (2, 2 * sum(USAGE))


def test_anthropic_messages_sync_and_streamed(stub: StubServer, handoff_dir: Path) -> None:
    budgetkit.instrument()
    model = "claude-haiku-4-5"
    with (
        anthropic.Anthropic(base_url=stub.anthropic_base_url, api_key="t", max_retries=0) as c,
        SessionBudget(handoff_dir=handoff_dir) as session,
    ):
        message = c.messages.create(model=model, max_tokens=500, messages=MESSAGES)
        assert message.content
        with c.messages.create(model=model, max_tokens=500, messages=MESSAGES, stream=True) as s:
            kinds = [event.type for event in s]
        assert kinds[-1] == "message_stop"
    assert (session.usage.llm_calls, session.usage.total_tokens) == (2, 2 * sum(USAGE))
    assert session.usage.cost_usd == 2 * _cost(model, "anthropic")


@pytest.mark.asyncio
async def test_async_clients_are_charged(stub: StubServer, handoff_dir: Path) -> None:
    budgetkit.instrument()
    async with (
        openai.AsyncOpenAI(base_url=stub.base_url, api_key="t", max_retries=0) as oa,
        anthropic.AsyncAnthropic(base_url=stub.anthropic_base_url, api_key="t") as an,
        SessionBudget(handoff_dir=handoff_dir) as session,
    ):
        await oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=400)
        stream = await oa.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
        await oa.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=400)
        await an.messages.create(model="claude-haiku-4-5", max_tokens=400, messages=MESSAGES)
        assert session.boundary.snapshot().reserved_usd == 0  # every reservation was settled
    assert (session.usage.llm_calls, session.usage.total_tokens) == (4, 4 * sum(USAGE))
    expected = 3 * _cost("gpt-4o-mini", "openai") + _cost("claude-haiku-4-5", "anthropic")
    assert session.usage.cost_usd == expected


def test_failed_request_releases_its_reservation(handoff_dir: Path) -> None:
    budgetkit.instrument()
    with (
        openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="t", max_retries=0) as client,
        SessionBudget(max_usd=1, handoff_dir=handoff_dir) as session,
    ):
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=9)
        assert session.boundary.snapshot().reserved_usd == 0
    assert (session.usage.llm_calls, session.usage.cost_usd) == (1, 0)


def test_fallback_session_charges_threads_without_its_context(
    client: openai.OpenAI, handoff_dir: Path
) -> None:
    session = SessionBudget(handoff_dir=handoff_dir)
    budgetkit.instrument(session)

    def call() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    call()  # before the session runs: not charged
    with session:
        thread = threading.Thread(target=call)  # a fresh context: no current session
        thread.start()
        thread.join()
    call()  # after it ended: not charged
    assert session.usage.llm_calls == 1


def test_patches_an_sdk_imported_after_instrument() -> None:
    code = (
        "import sys, budgetkit\n"
        "assert 'openai' not in sys.modules\n"
        "budgetkit.instrument()\n"
        "import openai, wrapt\n"
        "from openai._base_client import AsyncAPIClient, SyncAPIClient\n"
        "from openai.resources.responses import AsyncResponses\n"
        "for cls in (SyncAPIClient, AsyncAPIClient):\n"
        "    assert isinstance(cls.__dict__['request'], wrapt.FunctionWrapper), cls\n"
        "assert isinstance(AsyncResponses.__dict__['connect'], wrapt.FunctionWrapper)\n"
        "budgetkit.uninstrument()\n"
        "assert not isinstance(AsyncAPIClient.__dict__['request'], wrapt.FunctionWrapper)\n"
        "assert not isinstance(AsyncResponses.__dict__['connect'], wrapt.FunctionWrapper)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_decorated_call_around_an_instrumented_one_is_charged_once(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    """``@budget.llm_call`` on a function that calls an instrumented SDK: one LLM call, one
    charge (the decorator's), not two."""
    budgetkit.instrument()

    @budgetkit.budget.llm_call
    def ask(prompt: str) -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )

    with SessionBudget(handoff_dir=handoff_dir) as session:
        ask("one")
        ask("two")
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # not decorated
    usage = session.usage
    assert len(stub.requests) == 3
    assert (usage.llm_calls, usage.input_tokens, usage.output_tokens) == (3, 3600, 900)
    assert usage.cost_usd == 3 * _cost("gpt-4o-mini-2024-07-18", "openai")


@pytest.mark.asyncio
async def test_a_decorated_async_call_around_an_instrumented_one_is_charged_once(
    stub: StubServer, handoff_dir: Path
) -> None:
    budgetkit.instrument()
    client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0)

    @budgetkit.budget.llm_call
    async def ask(prompt: str) -> Any:
        return await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )

    async with SessionBudget(handoff_dir=handoff_dir) as session:
        await ask("one")
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await client.close()
    assert len(stub.requests) == 2
    assert session.usage.llm_calls == 2
    assert session.usage.input_tokens == 2400
