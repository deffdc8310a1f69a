"""GenAI conventions on budgetkit's spans (issue #21), checked with the SDK's in-memory exporter.

Content in the conventional ``{role, parts}`` shape for each provider's request and response,
response attributes, the conversation id across a chain, OK statuses, exact numbers, and the
status line. The openai and anthropic calls go through the real clients to the local stub.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anthropic
import openai
import pytest
from opentelemetry.trace import StatusCode
from otel_fixtures import Otel, otel

import budgetkit
from budgetkit import BudgetExhausted, SessionBudget, Usage, _otel, budget
from budgetkit import _attributes as names
from budgetkit import otel as bk_otel
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["otel"]  # the fixture

SYSTEM = "You are terse."
QUESTION = "Capital of France?"


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def content(span: ReadableSpan, key: str) -> Any:
    return json.loads(attrs(span)[key])


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"type": "text", "content": text}]}


def assistant(text: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "role": "assistant",
        "parts": [{"type": "text", "content": text}],
        "finish_reason": finish,
    }


@pytest.fixture
def capture() -> Iterator[None]:
    bk_otel.capture_content(True)
    try:
        yield
    finally:
        bk_otel.capture_content(None)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(reply="Paris.", usage=(1200, 300)) as server:
        yield server


@pytest.fixture
def instrumented() -> Iterator[None]:
    budgetkit.instrument()
    try:
        yield
    finally:
        budgetkit.uninstrument()


# ----------------------------------------------------------------------------- real clients


def test_openai_chat_messages_and_response(
    otel: Otel, capture: None, stub: StubServer, instrumented: None
) -> None:
    client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
    with SessionBudget(handoff_dir=None) as s:
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        )
    [chat] = [x for x in otel.spans() if x.name.startswith("chat")]
    # Instructions inside the chat history stay there (as the conventions say).
    assert content(chat, names.GEN_AI_INPUT_MESSAGES) == [
        {"role": "system", "parts": [{"type": "text", "content": SYSTEM}]},
        user(QUESTION),
    ]
    assert names.GEN_AI_SYSTEM_INSTRUCTIONS not in attrs(chat)
    assert content(chat, names.GEN_AI_OUTPUT_MESSAGES) == [assistant("Paris.")]
    a = attrs(chat)
    assert a[names.GEN_AI_RESPONSE_ID] == reply.id
    assert a[names.GEN_AI_RESPONSE_MODEL] == reply.model
    assert a[names.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert a[names.GEN_AI_CONVERSATION_ID] == s.root_session_id
    assert chat.status.status_code is StatusCode.OK


def test_openai_responses_messages_and_instructions(
    otel: Otel, capture: None, stub: StubServer, instrumented: None
) -> None:
    client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
    with SessionBudget(handoff_dir=None):
        reply = client.responses.create(model="gpt-4o-mini", instructions=SYSTEM, input=QUESTION)
    [chat] = [x for x in otel.spans() if x.name.startswith("chat")]
    assert content(chat, names.GEN_AI_SYSTEM_INSTRUCTIONS) == [{"type": "text", "content": SYSTEM}]
    assert content(chat, names.GEN_AI_INPUT_MESSAGES) == [user(QUESTION)]
    assert content(chat, names.GEN_AI_OUTPUT_MESSAGES) == [assistant("Paris.")]
    a = attrs(chat)
    assert a[names.GEN_AI_RESPONSE_ID] == reply.id
    assert a[names.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


def test_anthropic_messages_and_system(
    otel: Otel, capture: None, stub: StubServer, instrumented: None
) -> None:
    client = anthropic.Anthropic(base_url=stub.anthropic_base_url, api_key="test", max_retries=0)
    with SessionBudget(handoff_dir=None):
        reply = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            system=SYSTEM,
            messages=[{"role": "user", "content": QUESTION}],
        )
    [chat] = [x for x in otel.spans() if x.name.startswith("chat")]
    assert content(chat, names.GEN_AI_SYSTEM_INSTRUCTIONS) == [{"type": "text", "content": SYSTEM}]
    assert content(chat, names.GEN_AI_INPUT_MESSAGES) == [user(QUESTION)]
    assert content(chat, names.GEN_AI_OUTPUT_MESSAGES) == [assistant("Paris.")]
    a = attrs(chat)
    assert a[names.GEN_AI_RESPONSE_ID] == reply.id
    assert a[names.GEN_AI_RESPONSE_MODEL] == reply.model
    assert a[names.GEN_AI_RESPONSE_FINISH_REASONS] == ("end_turn",)
    assert chat.status.status_code is StatusCode.OK


def test_decorator_path_sets_provider_request_model_and_response(
    otel: Otel, capture: None, stub: StubServer
) -> None:
    client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)

    @budget.llm_call
    def ask(prompt: str) -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )

    with SessionBudget(handoff_dir=None):
        reply = ask(QUESTION)
    [chat] = [x for x in otel.spans() if x.name.startswith("chat")]
    a = attrs(chat)
    assert a[names.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[names.GEN_AI_REQUEST_MODEL] == reply.model  # the model that answered
    assert a[names.GEN_AI_RESPONSE_ID] == reply.id
    assert a[names.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    # One prompt string is the user's message.
    assert content(chat, names.GEN_AI_INPUT_MESSAGES) == [user(QUESTION)]
    assert content(chat, names.GEN_AI_OUTPUT_MESSAGES) == [assistant("Paris.")]


def test_openai_tool_calls_both_ways(otel: Otel, capture: None, instrumented: None) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {
            "id": "chatcmpl-tools",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    history = [
        {"role": "user", "content": "find x"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "x is 1"},
    ]
    with StubServer(reply=reply) as stub, SessionBudget(handoff_dir=None):
        client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=history)
    [chat] = [x for x in otel.spans() if x.name.startswith("chat")]
    tool_call = {"type": "tool_call", "id": "call_1", "name": "search", "arguments": {}}
    assert content(chat, names.GEN_AI_INPUT_MESSAGES) == [
        user("find x"),
        {"role": "assistant", "parts": [tool_call]},
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": "call_1", "response": "x is 1"}],
        },
    ]
    assert content(chat, names.GEN_AI_OUTPUT_MESSAGES) == [
        {"role": "assistant", "parts": [tool_call], "finish_reason": "tool_call"}
    ]
    assert attrs(chat)[names.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)


# ----------------------------------------------------------------------------- other shapes


def test_gemini_contents_and_candidates(otel: Otel, capture: None) -> None:
    from google.genai import types

    response = types.GenerateContentResponse(
        response_id="gemini-1",
        model_version="gemini-2.5-flash",
        candidates=[
            types.Candidate(
                content=types.Content(role="model", parts=[types.Part(text="Paris.")]),
                finish_reason=types.FinishReason.STOP,
            )
        ],
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=10, candidates_token_count=5
        ),
    )

    @budget.llm_call(model="gemini-2.5-flash", provider="google")
    def generate(*, contents: Any, config: Any) -> Any:
        return response

    with SessionBudget(handoff_dir=None):
        generate(
            contents=[types.Content(role="user", parts=[types.Part(text=QUESTION)])],
            config=types.GenerateContentConfig(system_instruction=SYSTEM),
        )
    chat = otel.span("chat gemini-2.5-flash")
    assert content(chat, names.GEN_AI_SYSTEM_INSTRUCTIONS) == [{"type": "text", "content": SYSTEM}]
    assert content(chat, names.GEN_AI_INPUT_MESSAGES) == [user(QUESTION)]
    assert content(chat, names.GEN_AI_OUTPUT_MESSAGES) == [assistant("Paris.")]
    a = attrs(chat)
    assert a[names.GEN_AI_RESPONSE_ID] == "gemini-1"
    assert a[names.GEN_AI_RESPONSE_MODEL] == "gemini-2.5-flash"
    assert a[names.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


def test_langchain_messages_and_ai_message(otel: Otel, capture: None) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    answer = AIMessage(
        content="Paris.",
        id="run-42",
        response_metadata={"finish_reason": "stop", "model_name": "gpt-4o-mini-2024-07-18"},
        usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
    )

    @budget.llm_call(model="gpt-4o-mini", provider="openai")
    def invoke(messages: list[Any]) -> Any:
        return answer

    with SessionBudget(handoff_dir=None):
        invoke([SystemMessage(SYSTEM), HumanMessage(QUESTION)])
    chat = otel.span("chat gpt-4o-mini")
    assert content(chat, names.GEN_AI_INPUT_MESSAGES) == [
        {"role": "system", "parts": [{"type": "text", "content": SYSTEM}]},
        user(QUESTION),
    ]
    assert content(chat, names.GEN_AI_OUTPUT_MESSAGES) == [assistant("Paris.")]
    a = attrs(chat)
    assert a[names.GEN_AI_RESPONSE_ID] == "run-42"
    assert a[names.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


def test_unknown_shapes_fall_back_to_the_raw_values(otel: Otel, capture: None) -> None:
    @budget.llm_call(model="gpt-4o-mini", provider="openai")
    def ask(a: int, b: int) -> Usage:
        return Usage(input_tokens=10, output_tokens=5)

    with SessionBudget(handoff_dir=None):
        ask(1, 2)
    chat = otel.span("chat gpt-4o-mini")
    assert content(chat, names.GEN_AI_INPUT_MESSAGES) == {"args": [1, 2]}
    assert content(chat, names.GEN_AI_OUTPUT_MESSAGES)["input_tokens"] == 10


def test_long_content_stays_valid_json(otel: Otel, capture: None) -> None:
    @budget.llm_call(model="gpt-4o-mini", provider="openai")
    def ask(prompt: str) -> Usage:
        return Usage(input_tokens=10, output_tokens=5)

    with SessionBudget(handoff_dir=None):
        ask("x" * (_otel.MAX_CONTENT_CHARS * 2))
    raw = attrs(otel.span("chat gpt-4o-mini"))[names.GEN_AI_INPUT_MESSAGES]
    assert len(raw) <= _otel.MAX_CONTENT_CHARS
    [message] = json.loads(raw)
    assert message["parts"][0]["content"].endswith("…")


def test_response_attributes_without_content_capture(otel: Otel, stub: StubServer) -> None:
    client = openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)

    @budget.llm_call
    def ask(prompt: str) -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )

    with SessionBudget(handoff_dir=None):
        reply = ask(QUESTION)
    a = attrs(next(x for x in otel.spans() if x.name.startswith("chat")))
    assert a[names.GEN_AI_RESPONSE_ID] == reply.id
    assert names.GEN_AI_INPUT_MESSAGES not in a
    assert names.GEN_AI_OUTPUT_MESSAGES not in a
    assert QUESTION not in json.dumps(a)


# ----------------------------------------------------------------------------- chains, status


@budget.step
def search(query: str) -> str:
    return f"results for {query}"


@budget.llm_call(model="gpt-4o-mini", provider="openai")
def ask_usage(prompt: str) -> Usage:
    return Usage(input_tokens=1200, output_tokens=300, model="gpt-4o-mini")


def test_conversation_id_is_the_chain_root_on_every_span(otel: Otel, tmp_path: Path) -> None:
    with SessionBudget(max_steps=1, handoff_dir=tmp_path) as first:
        search("a")
        ask_usage("hi")
        with pytest.raises(BudgetExhausted) as info:
            search("b")
    with SessionBudget.resume(info.value.handoff_path or "", max_steps=5) as second:
        search("b")
        ask_usage("hi")
    assert second.root_session_id == first.session_id != second.session_id
    spans = otel.spans()
    assert len(spans) == 6
    for span in spans:
        assert attrs(span)[names.GEN_AI_CONVERSATION_ID] == first.session_id, span.name


def test_normal_session_step_and_llm_spans_end_ok(otel: Otel) -> None:
    with SessionBudget(handoff_dir=None):
        search("a")
        ask_usage("hi")
    for span in otel.spans():
        assert span.status.status_code is StatusCode.OK, span.name


def test_usd_and_seconds_attributes_carry_no_float_noise(otel: Otel) -> None:
    with SessionBudget(max_usd=Decimal("0.05"), max_seconds=60, handoff_dir=None) as s:
        ask_usage("hi")
        search("a")
    cost = s.usage.cost_usd
    exact_left = Decimal("0.05") - cost
    chat = attrs(otel.span("chat gpt-4o-mini"))
    step = attrs(otel.span("execute_tool search"))
    session = attrs(otel.span("budgetkit.session"))
    for a in (chat, step, session):
        assert repr(a["budgetkit.usd.remaining"]) == str(exact_left), a
        assert repr(a["budgetkit.usd.used"]) == str(cost)
    for a in (step, session):
        for key in ("budgetkit.seconds.used", "budgetkit.seconds.remaining"):
            assert a[key] == round(a[key], 6)
            assert len(repr(a[key]).partition(".")[2]) <= 6, (key, a[key])


def test_status_line_on_the_session_span(otel: Otel) -> None:
    with SessionBudget(max_steps=5, handoff_dir=None) as s:
        search("a")
    line = attrs(otel.span("budgetkit.session"))[names.BUDGET_STATUS]
    assert line == s.status_line()
    assert line.startswith("Budget: 4 of 5 steps left")
