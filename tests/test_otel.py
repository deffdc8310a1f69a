"""budgetkit's spans, events and metrics, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import contextvars
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from otel_fixtures import Otel, otel

from budgetkit import BudgetExhausted, SessionBudget, UnmeasuredUsageWarning, Usage, budget
from budgetkit import _attributes as names
from budgetkit import otel as bk_otel

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["otel"]  # the fixture

# ----------------------------------------------------------------------------- the agent


@budget.step
def search(query: str) -> str:
    return f"results for {query}"


@budget.step(name="fetch")
async def fetch(url: str) -> str:
    await asyncio.sleep(0)
    return f"page {url}"


@budget.step
def broken(x: int) -> int:
    raise ValueError(f"bad input {x}")


@budget.step
def pages(n: int) -> Iterator[int]:
    yield from range(n)


USAGE = Usage(
    input_tokens=1200,
    output_tokens=300,
    cache_read_tokens=200,
    cache_write_tokens=100,
    reasoning_tokens=50,
    model="gpt-4o-mini-2024-07-18",
)


@budget.llm_call(model="gpt-4o-mini", provider="openai")
def ask(messages: list[dict[str, str]]) -> Usage:
    return USAGE


@budget.llm_call
def ask_any(prompt: str, model: str | None = None) -> Usage:
    return Usage(input_tokens=10, output_tokens=5, model="claude-sonnet-4-5")


@budget.llm_call(model="no-such-model-xyz")
def ask_unpriced(prompt: str) -> Usage:
    return Usage(input_tokens=10, output_tokens=5)


@budget.llm_call(model="gpt-4o-mini", usage=lambda r: None)
def ask_unmeasured(prompt: str) -> str:
    return "an answer with no usage"


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def assert_children_of(session_span: ReadableSpan, spans: list[ReadableSpan]) -> None:
    for span in spans:
        assert span.context.trace_id == session_span.context.trace_id, span.name
        assert parent_id(span) == session_span.context.span_id, span.name


# ----------------------------------------------------------------------------- span tree


def test_named_session_span_tree(otel: Otel) -> None:
    with SessionBudget(max_steps=5, name="researcher", handoff_dir=None):
        search("otel")
        ask(messages=[{"role": "user", "content": "hi"}])

    session = otel.span("invoke_agent researcher")
    tool, chat = otel.span("execute_tool search"), otel.span("chat gpt-4o-mini")
    assert session.parent is None
    assert_children_of(session, [tool, chat])
    assert (session.kind, tool.kind, chat.kind) == (
        SpanKind.INTERNAL,
        SpanKind.INTERNAL,
        SpanKind.CLIENT,
    )
    assert attrs(session)[names.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert attrs(session)[names.GEN_AI_AGENT_NAME] == "researcher"
    assert otel.names()[-1] == session.name  # ends last


def test_unnamed_session_is_budgetkit_session(otel: Otel) -> None:
    with SessionBudget(max_steps=5, handoff_dir=None) as s:
        search("x")

    session = otel.span("budgetkit.session")
    assert attrs(session)[names.SESSION_ID] == s.session_id
    assert names.GEN_AI_OPERATION_NAME not in attrs(session)
    assert session.instrumentation_scope is not None
    assert session.instrumentation_scope.name == "budgetkit"
    assert session.instrumentation_scope.schema_url == names.SCHEMA_URL


def test_session_span_is_current_inside_the_block_only(otel: Otel) -> None:
    before = trace.get_current_span()
    with SessionBudget(handoff_dir=None):
        inside = trace.get_current_span()
    assert trace.get_current_span() is before
    assert inside.get_span_context().span_id == otel.span("budgetkit.session").context.span_id


def test_nested_session_span_is_a_child(otel: Otel) -> None:
    with (
        SessionBudget(name="outer", handoff_dir=None),
        SessionBudget(name="inner", handoff_dir=None),
    ):
        search("deep")

    outer, inner = otel.span("invoke_agent outer"), otel.span("invoke_agent inner")
    assert parent_id(inner) == outer.context.span_id
    assert parent_id(otel.span("execute_tool search")) == inner.context.span_id


# ----------------------------------------------------------------------------- concurrency


@pytest.mark.asyncio
async def test_gather_and_create_task_nest_under_the_session(otel: Otel) -> None:
    async with SessionBudget(max_steps=10, handoff_dir=None):
        await asyncio.gather(*(fetch(f"u{i}") for i in range(3)))
        await asyncio.create_task(fetch("task"))

    session = otel.span("budgetkit.session")
    tools = [s for s in otel.spans() if s.name == "execute_tool fetch"]
    assert len(tools) == 4
    assert_children_of(session, tools)


@pytest.mark.asyncio
async def test_to_thread_nests_under_the_session(otel: Otel) -> None:
    async with SessionBudget(max_steps=10, handoff_dir=None):
        await asyncio.gather(*(asyncio.to_thread(search, f"q{i}") for i in range(3)))

    tools = [s for s in otel.spans() if s.name == "execute_tool search"]
    assert len(tools) == 3
    assert_children_of(otel.span("budgetkit.session"), tools)


def test_copied_context_threads_nest_under_the_session(otel: Otel) -> None:
    with SessionBudget(max_steps=10, handoff_dir=None), ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(contextvars.copy_context().run, search, f"q{i}") for i in range(4)]
        assert [f.result() for f in futures] == [f"results for q{i}" for i in range(4)]

    tools = [s for s in otel.spans() if s.name == "execute_tool search"]
    assert len(tools) == 4
    assert_children_of(otel.span("budgetkit.session"), tools)


def test_generator_step_holds_no_context_across_yields(otel: Otel) -> None:
    with SessionBudget(max_steps=10, handoff_dir=None):
        gen = pages(3)
        assert next(gen) == 0
        current_between_yields = trace.get_current_span().get_span_context().span_id
        search("between")
        assert list(gen) == [1, 2]

    session = otel.span("budgetkit.session")
    assert current_between_yields == session.context.span_id
    assert_children_of(session, [otel.span("execute_tool pages"), otel.span("execute_tool search")])


# ----------------------------------------------------------------------------- attributes


def test_step_span_attributes_and_budget_state(otel: Otel) -> None:
    with SessionBudget(max_steps=5, max_usd=2, handoff_dir=None) as s:
        search("a")
        search("b")

    second = [attrs(x) for x in otel.spans() if x.name == "execute_tool search"][1]
    assert second == {
        names.GEN_AI_OPERATION_NAME: "execute_tool",
        names.GEN_AI_TOOL_NAME: "search",
        names.GEN_AI_TOOL_TYPE: "function",
        names.SESSION_ID: s.session_id,
        "budgetkit.steps.used": 2,
        "budgetkit.steps.remaining": 3,
        "budgetkit.usd.used": 0.0,
        "budgetkit.usd.remaining": 2.0,
    }


def test_llm_span_attributes(otel: Otel) -> None:
    with SessionBudget(max_usd=1, handoff_dir=None) as s:
        ask(messages=[{"role": "user", "content": "hi"}])

    a = attrs(otel.span("chat gpt-4o-mini"))
    assert a[names.GEN_AI_OPERATION_NAME] == "chat"
    assert a[names.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[names.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert a[names.GEN_AI_RESPONSE_MODEL] == "gpt-4o-mini-2024-07-18"
    assert a[names.GEN_AI_USAGE_INPUT_TOKENS] == 1200
    assert a[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 300
    assert a[names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 200
    assert a[names.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 100
    assert a[names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 50
    assert a[names.CALL_COST_STATUS] == "priced"
    cost = float(s.usage.cost_usd)
    assert cost > 0
    assert a[names.CALL_COST_USD] == pytest.approx(cost)
    assert a["budgetkit.usd.used"] == pytest.approx(cost)
    assert a["budgetkit.usd.remaining"] == pytest.approx(1 - cost)


def test_llm_span_named_after_the_model_argument(otel: Otel) -> None:
    with SessionBudget(handoff_dir=None):
        ask_any("hi", model="claude-haiku-4-5")
    assert (
        attrs(otel.span("chat claude-haiku-4-5"))[names.GEN_AI_REQUEST_MODEL] == "claude-haiku-4-5"
    )


def test_llm_span_named_after_the_response_model_when_no_request_model(otel: Otel) -> None:
    with SessionBudget(handoff_dir=None):
        ask_any("hi")
    a = attrs(otel.span("chat claude-sonnet-4-5"))
    assert names.GEN_AI_REQUEST_MODEL not in a
    assert a[names.GEN_AI_RESPONSE_MODEL] == "claude-sonnet-4-5"


def test_unpriced_and_unmeasured_calls_are_marked(otel: Otel) -> None:
    with SessionBudget(handoff_dir=None):
        with pytest.warns(UnmeasuredUsageWarning):
            ask_unmeasured("hi")
        ask_unpriced("hi")  # no max_usd: no CostUnknownWarning

    assert attrs(otel.span("chat no-such-model-xyz"))[names.CALL_COST_STATUS] == "unpriced"
    unmeasured = attrs(otel.span("chat gpt-4o-mini"))
    assert unmeasured[names.CALL_COST_STATUS] == "unmeasured"
    assert names.CALL_COST_USD not in unmeasured
    session = attrs(otel.span("budgetkit.session"))
    assert session[names.SESSION_UNPRICED_CALLS] == 1
    assert session[names.SESSION_UNMEASURED_CALLS] == 1


def test_session_budget_state_at_start_and_end(otel: Otel) -> None:
    with SessionBudget(max_steps=4, max_tokens=10_000, handoff_dir=None):
        search("a")
        ask(messages=[])

    session = otel.span("budgetkit.session")
    a = attrs(session)
    assert a["budgetkit.steps.limit"] == 4
    assert a["budgetkit.tokens.limit"] == 10_000
    assert (a["budgetkit.steps.used"], a["budgetkit.steps.remaining"]) == (1, 3)
    assert (a["budgetkit.tokens.used"], a["budgetkit.tokens.remaining"]) == (1500, 8500)
    assert a["budgetkit.llm_calls.used"] == 1
    assert "budgetkit.llm_calls.remaining" not in a  # unlimited
    assert a[names.SESSION_STOP_REASON] == "completed"
    assert session.status.status_code is StatusCode.UNSET


# ----------------------------------------------------------------------------- exhaustion, errors


def test_exhaustion_event_and_error_status(otel: Otel) -> None:
    with SessionBudget(max_steps=2, handoff_dir=None) as s:
        search("q0")
        search("q1")
        with pytest.raises(BudgetExhausted):
            search("q2")

    assert otel.names().count("execute_tool search") == 2  # the refused call opened no span
    session = otel.span("budgetkit.session")
    assert session.status.status_code is StatusCode.ERROR
    a = attrs(session)
    assert a[names.ERROR_TYPE] == "budgetkit.BudgetExhausted"
    assert a[names.SESSION_STOP_REASON] == "max_steps"
    assert a[names.SESSION_STOPPED_BY] == s.session_id
    [event] = [e for e in session.events if e.name == names.EXHAUSTED_EVENT]
    assert dict(event.attributes or {}) == {
        names.EXHAUSTED_REASON: "max_steps",
        names.SESSION_ID: s.session_id,
        names.EXHAUSTED_LIMIT: 2,
        names.EXHAUSTED_USED: 2,
        names.EXHAUSTED_REFUSED_STEP: "search",
    }


def test_swallowed_usd_exhaustion_is_still_an_error(otel: Otel) -> None:
    with SessionBudget(max_usd=0.0001, raise_on_exhausted=False, handoff_dir=None):
        ask(messages=[])  # crosses the limit
        search("refused")

    session = otel.span("budgetkit.session")
    assert attrs(session)[names.SESSION_STOP_REASON] == "max_usd"
    assert session.status.status_code is StatusCode.ERROR
    [event] = session.events
    assert event.attributes is not None
    assert event.attributes[names.EXHAUSTED_LIMIT] == pytest.approx(0.0001)
    assert event.attributes[names.EXHAUSTED_USED] > 0.0001


def test_step_error_marks_the_step_and_is_recorded_once(otel: Otel) -> None:
    # The message is content: recorded with content capture on (tests/test_otel_hardening.py).
    bk_otel.capture_content(True)  # the fixture resets it afterwards
    with pytest.raises(ValueError, match="bad input"), SessionBudget(handoff_dir=None):
        broken(3)

    step = otel.span("execute_tool broken")
    assert step.status.status_code is StatusCode.ERROR
    assert attrs(step)[names.ERROR_TYPE] == "ValueError"
    [event] = step.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "bad input 3"
    session = otel.span("budgetkit.session")
    assert session.status.status_code is StatusCode.ERROR
    assert attrs(session)[names.SESSION_STOP_REASON] == "error"
    assert session.events == ()  # recorded on the step that raised, not twice


def test_error_outside_steps_is_recorded_on_the_session(otel: Otel) -> None:
    with pytest.raises(KeyError), SessionBudget(handoff_dir=None):
        raise KeyError("missing")

    session = otel.span("budgetkit.session")
    assert attrs(session)[names.ERROR_TYPE] == "KeyError"
    assert [e.name for e in session.events] == ["exception"]


def test_handled_step_error_leaves_the_session_unset(otel: Otel) -> None:
    with SessionBudget(handoff_dir=None):
        with pytest.raises(ValueError):
            broken(1)
        search("recovered")

    assert otel.span("execute_tool broken").status.status_code is StatusCode.ERROR
    assert otel.span("budgetkit.session").status.status_code is StatusCode.UNSET


# ----------------------------------------------------------------------------- content


def run_content_agent() -> None:
    with SessionBudget(handoff_dir=None):
        search("secret query")
        ask(messages=[{"role": "user", "content": "secret prompt"}])


CONTENT_KEYS = {
    names.GEN_AI_TOOL_CALL_ARGUMENTS,
    names.GEN_AI_INPUT_MESSAGES,
    names.GEN_AI_OUTPUT_MESSAGES,
}


def test_content_is_off_by_default(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(names.CAPTURE_CONTENT_ENV, raising=False)
    run_content_agent()
    for span in otel.spans():
        assert not CONTENT_KEYS & set(attrs(span)), span.name
        assert "secret" not in json.dumps(attrs(span))


def test_content_on_with_the_env_var(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(names.CAPTURE_CONTENT_ENV, "true")
    run_content_agent()
    tool, chat = attrs(otel.span("execute_tool search")), attrs(otel.span("chat gpt-4o-mini"))
    assert json.loads(tool[names.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"args": ["secret query"]}
    assert json.loads(chat[names.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "content": "secret prompt"}
    ]
    assert json.loads(chat[names.GEN_AI_OUTPUT_MESSAGES])["input_tokens"] == 1200


def test_content_on_with_the_setting(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(names.CAPTURE_CONTENT_ENV, "false")
    bk_otel.capture_content(True)  # the fixture resets it afterwards
    run_content_agent()
    assert names.GEN_AI_TOOL_CALL_ARGUMENTS in attrs(otel.span("execute_tool search"))
    assert names.GEN_AI_INPUT_MESSAGES in attrs(otel.span("chat gpt-4o-mini"))


# ----------------------------------------------------------------------------- resume


def test_resumed_session_links_to_the_previous_trace(otel: Otel, tmp_path: Path) -> None:
    with SessionBudget(max_steps=1, handoff_dir=tmp_path):
        search("a")
        with pytest.raises(BudgetExhausted) as info:
            search("b")
    first = otel.span("budgetkit.session")
    handoff = info.value.handoff
    assert handoff.trace_id == format(first.context.trace_id, "032x")
    assert handoff.span_id == format(first.context.span_id, "016x")
    otel.exporter.clear()

    with SessionBudget.resume(info.value.handoff_path or "", max_steps=5):
        search("b")

    second = otel.span("budgetkit.session")
    assert second.context.trace_id != first.context.trace_id
    [link] = second.links
    assert (link.context.trace_id, link.context.span_id) == (
        first.context.trace_id,
        first.context.span_id,
    )
    assert dict(link.attributes or {}) == {names.LINK_RESUMED_FROM: handoff.session_id}
    assert attrs(second)[names.SESSION_RESUMED_FROM] == handoff.session_id


# ----------------------------------------------------------------------------- metrics


def test_metrics_token_usage_cost_and_exhaustions(otel: Otel) -> None:
    with SessionBudget(max_llm_calls=1, handoff_dir=None):
        ask_any("hi", model="metrics-test-model")
        with pytest.raises(BudgetExhausted):
            ask_any("hi", model="metrics-test-model")

    tokens = {
        p.attributes[names.GEN_AI_TOKEN_TYPE]: p.sum
        for p in otel.metric_points(names.METRIC_TOKEN_USAGE)
        if p.attributes.get(names.GEN_AI_REQUEST_MODEL) == "metrics-test-model"
    }
    assert tokens == {"input": 10, "output": 5}
    cost = [
        p
        for p in otel.metric_points(names.METRIC_COST)
        if p.attributes.get(names.GEN_AI_REQUEST_MODEL) == "metrics-test-model"
    ]
    assert len(cost) == 1
    assert cost[0].value > 0
    exhaustions = [
        p.value
        for p in otel.metric_points(names.METRIC_EXHAUSTIONS)
        if p.attributes[names.EXHAUSTED_REASON] == "max_llm_calls"
    ]
    assert exhaustions[0] >= 1


# ----------------------------------------------------------------------------- robustness


def run_agent() -> tuple[list[str], dict[str, Any], str | None]:
    """A small agent; returns its results, its usage and its stop reason."""
    results: list[str] = []
    with SessionBudget(max_steps=3, raise_on_exhausted=False, handoff_dir=None) as s:
        for i in range(5):
            results.append(search(f"q{i}"))
            ask(messages=[{"role": "user", "content": str(i)}])
    assert s.result is not None
    usage = s.result.usage.to_dict()
    usage.pop("elapsed_seconds")
    return results, usage, s.result.stop_reason


def test_raising_processor_and_exporter_change_nothing(otel: Otel) -> None:
    expected = run_agent()
    otel.faulty.raising = True
    assert run_agent() == expected
    assert otel.faulty.calls > 0
    assert expected[2] == "max_steps"


def test_configure_refuses_a_foreign_provider(otel: Otel) -> None:
    with pytest.raises(bk_otel.OtelSetupError, match="already set"):
        bk_otel.configure(service_name="x")


# ----------------------------------------------------------------------------- no SDK


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "", **env},
    )


def test_no_sdk_records_nothing_and_starts_when_a_provider_is_set() -> None:
    proc = run_python(
        """
        from opentelemetry import trace
        from budgetkit import SessionBudget, Usage, budget, _otel

        @budget.step
        def tool(x):
            return x * 2

        @budget.llm_call(model="gpt-4o-mini")
        def llm(x):
            return Usage(input_tokens=3, output_tokens=4)

        def spy(fn, seen):
            def wrapper(*a, **k):
                handle = fn(*a, **k)
                seen.append(handle)
                return handle
            return wrapper

        seen = []
        _otel.start_call = spy(_otel.start_call, seen)
        with SessionBudget(max_steps=1, handoff_dir=None) as s:
            assert tool(2) == 4 and llm(1) is not None
            try:
                tool(3)
            except Exception as exc:
                print("handoff", exc.handoff.trace_id, exc.handoff.span_id)
        assert trace._TRACER_PROVIDER is None
        # With no SDK, neither steps nor LLM calls reach the span hook at all.
        assert seen == [], seen
        print("usage", s.usage.steps, s.usage.llm_calls, s.usage.total_tokens)

        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        with SessionBudget(handoff_dir=None):
            tool(1)
        print("after", sorted(s.name for s in exporter.get_finished_spans()))
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [
        "handoff None None",
        "usage 1 1 7",
        "after ['budgetkit.session', 'execute_tool tool']",
    ]
    assert proc.stderr == ""


def test_configure_without_the_sdk_names_the_extra() -> None:
    proc = run_python(
        """
        import sys
        sys.modules["opentelemetry.sdk"] = None  # as if the SDK were not installed
        from budgetkit import otel
        try:
            otel.configure(service_name="x")
        except otel.OtelSetupError as exc:
            print(exc)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "install budgetkit's [otel] extra" in proc.stdout
