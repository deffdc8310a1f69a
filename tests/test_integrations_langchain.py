"""budgetkit.integrations.langchain: real LangChain / LangGraph agents on a scripted fake model."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("langchain.agents")

from langchain.agents import create_agent
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from otel_fixtures import Otel, assert_children_of, otel
from pydantic import Field

from budgetkit import BudgetExhausted, BudgetWarning, SessionBudget, budget
from budgetkit import _attributes as names
from budgetkit.integrations.langchain import BudgetCallbackHandler

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from langchain_core.runnables import RunnableConfig

__all__ = ["otel"]  # the fixture


# ----------------------------------------------------------------------------- the agent
class Script:
    """The model's replies, in order; counts how many the model actually produced."""

    def __init__(self, turns: Sequence[AIMessage]) -> None:
        self.turns = list(turns)
        self.served = 0

    def __iter__(self) -> Iterator[AIMessage]:
        for turn in self.turns:
            self.served += 1
            yield turn


class ScriptedChatModel(GenericFakeChatModel):
    """LangChain's fake chat model, able to sit in a tool-calling agent."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def reply(i: int, *, tool_name: str | None = "lookup") -> AIMessage:
    """Turn ``i``: a tool call (or the final answer), with usage that grows with the context."""
    calls = []
    if tool_name is not None:
        calls = [
            {"name": tool_name, "args": {"q": f"q{i}"}, "id": f"call_{i}", "type": "tool_call"}
        ]
    input_tokens, output_tokens = 100 * i, 10 + i
    return AIMessage(
        content="" if calls else "all done",
        tool_calls=calls,
        usage_metadata={
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_token_details": {"cache_read": i},
        },
        response_metadata={"model_name": "house-model"},
    )


def script(tool_turns: int, tool_name: str = "lookup") -> Script:
    turns = [reply(i, tool_name=tool_name) for i in range(1, tool_turns + 1)]
    return Script([*turns, reply(tool_turns + 1, tool_name=None)])


def model_for(turns: Script) -> ScriptedChatModel:
    return ScriptedChatModel(messages=iter(turns))


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"found {q}"


@budget.step
def fetch(q: str) -> str:
    return f"page for {q}"


caught: list[BaseException] = []


@tool
def careful_lookup(q: str) -> str:
    """Look something up, never failing: every error becomes text for the model."""
    try:
        return fetch(q)
    except Exception as exc:
        caught.append(exc)
        return f"lookup failed: {exc}"


def graph_for(turns: Script, *, handle_tool_errors: bool, checkpointer: Any = None) -> Any:
    """A hand-built LangGraph agent: model node, ToolNode, loop."""
    model = model_for(turns)

    async def call_model(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"], config)]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([lookup], handle_tool_errors=handle_tool_errors))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile(checkpointer=checkpointer)


def ai_messages(messages: Sequence[BaseMessage]) -> list[AIMessage]:
    return [m for m in messages if isinstance(m, AIMessage)]


def tool_messages(messages: Sequence[BaseMessage]) -> list[ToolMessage]:
    return [m for m in messages if isinstance(m, ToolMessage)]


# ----------------------------------------------------------------------------- charging
def test_create_agent_charges_what_langchain_reports(handoff_dir: Path) -> None:
    turns = script(3)
    agent = create_agent(model_for(turns), [lookup])
    reported = UsageMetadataCallbackHandler()
    with SessionBudget(max_steps=10, handoff_dir=handoff_dir) as session:
        out = agent.invoke(
            {"messages": [("user", "research this")]},
            config={"callbacks": [BudgetCallbackHandler(), reported]},
        )

    messages = out["messages"]
    assert messages[-1].content == "all done"
    usage = session.usage
    # Steps and LLM calls: what the graph ran.
    assert usage.steps == len(tool_messages(messages)) == 3
    assert usage.llm_calls == len(ai_messages(messages)) == 4
    # Tokens: what LangChain's own usage callback added up.
    total = reported.usage_metadata["house-model"]
    assert usage.input_tokens == total["input_tokens"] == 100 + 200 + 300 + 400
    assert usage.output_tokens == total["output_tokens"]
    assert usage.total_tokens == total["total_tokens"]
    assert usage.cache_read_tokens == total["input_token_details"]["cache_read"] == 1 + 2 + 3 + 4
    assert usage.unmeasured_calls == 0
    assert session.result is not None
    assert session.result.stop_reason == "completed"
    assert not handoff_dir.exists()


@pytest.mark.asyncio
async def test_langgraph_astream_charges_what_langchain_reports(handoff_dir: Path) -> None:
    turns = script(3)
    graph = graph_for(turns, handle_tool_errors=False)
    reported = UsageMetadataCallbackHandler()
    last: dict[str, Any] = {}
    async with SessionBudget(handoff_dir=handoff_dir) as session:
        async for state in graph.astream(
            {"messages": [("user", "research this")]},
            config={"callbacks": [BudgetCallbackHandler(), reported]},
            stream_mode="values",
        ):
            last = state

    messages = last["messages"]
    usage = session.usage
    assert usage.steps == len(tool_messages(messages)) == 3
    assert usage.llm_calls == len(ai_messages(messages)) == turns.served == 4
    total = reported.usage_metadata["house-model"]
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        total["input_tokens"],
        total["output_tokens"],
        total["total_tokens"],
    )


def test_known_model_is_priced(handoff_dir: Path) -> None:
    turns = script(2)
    agent = create_agent(model_for(turns), [lookup])
    prices = {"house-model": (Decimal(2), Decimal(10))}  # USD per million tokens
    with SessionBudget(max_usd=1, prices=prices, handoff_dir=handoff_dir) as session:
        agent.invoke(
            {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
        )

    expected = sum(
        Decimal(100 * i) * 2 / 1_000_000 + Decimal(10 + i) * 10 / 1_000_000 for i in (1, 2, 3)
    )
    assert session.usage.cost_usd == expected
    assert session.usage.unpriced_calls == 0


# ----------------------------------------------------------------------------- exhaustion
def test_run_stops_at_the_limit_even_when_the_tool_catches(handoff_dir: Path) -> None:
    """The tool swallows the BudgetExhausted of its own step; the next model call re-raises."""
    caught.clear()
    turns = script(5, tool_name="careful_lookup")
    agent = create_agent(model_for(turns), [careful_lookup])
    # Each turn is two steps: the tool run, and the fetch() inside it.
    session = SessionBudget(max_steps=3, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        agent.invoke(
            {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
        )

    exc = info.value
    assert exc.reason == "max_steps"
    assert exc.session_id == session.session_id
    # Turn 2's fetch() was refused, the tool caught it and returned text ...
    assert len(caught) == 1
    assert isinstance(caught[0], BudgetExhausted)
    # ... and the third model call was refused before the model produced anything.
    assert turns.served == 2
    assert session.usage.steps == 3
    assert session.usage.llm_calls == 2
    assert exc.handoff_path is not None
    assert exc.handoff_path.exists()
    assert exc.handoff_path.parent == handoff_dir
    assert exc.handoff.reason == "max_steps"
    assert session.result is not None
    assert session.result.stop_reason == "max_steps"


@pytest.mark.asyncio
async def test_tool_node_that_handles_every_error_cannot_keep_the_run_going(
    handoff_dir: Path,
) -> None:
    """ToolNode(handle_tool_errors=True) turns the refused tool run into a ToolMessage;
    the run still ends at the next model call."""
    turns = script(5)
    graph = graph_for(turns, handle_tool_errors=True, checkpointer=InMemorySaver())
    config: RunnableConfig = {
        "callbacks": [BudgetCallbackHandler()],
        "configurable": {"thread_id": "t1"},
    }
    session = SessionBudget(max_steps=2, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info:
        async with session:
            await graph.ainvoke({"messages": [("user", "go")]}, config)

    assert info.value.reason == "max_steps"
    # Turns 1 and 2 ran their tools; turn 3's tool was refused (and reported to the model
    # as a tool error by ToolNode); the fourth model call was refused.
    assert turns.served == 3
    assert session.usage.steps == 2
    assert session.usage.llm_calls == 3
    results = tool_messages((await graph.aget_state(config)).values["messages"])
    assert [m.status for m in results] == ["success", "success", "error"]
    assert "BudgetExhausted" in str(results[-1].content)
    assert info.value.handoff_path is not None
    assert info.value.handoff_path.exists()


@pytest.mark.asyncio
async def test_token_limit_stops_the_graph_at_the_next_boundary(handoff_dir: Path) -> None:
    turns = script(5)
    graph = graph_for(turns, handle_tool_errors=False)
    # 111 + 212 tokens after two model calls: the second crosses the limit, and its tool
    # call is the next boundary.
    session = SessionBudget(max_tokens=300, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info:
        async with session:
            await graph.ainvoke(
                {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
            )

    assert info.value.reason == "max_tokens"
    assert turns.served == 2
    assert session.usage.steps == 1
    assert session.usage.total_tokens == 111 + 212
    assert info.value.handoff_path is not None
    assert info.value.handoff_path.exists()


# ----------------------------------------------------------------------------- sessions
def test_outside_a_session_the_handler_charges_nothing() -> None:
    agent = create_agent(model_for(script(2)), [lookup])
    out = agent.invoke(
        {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
    )
    assert out["messages"][-1].content == "all done"


def test_explicit_session_is_charged_from_a_thread_without_its_context(handoff_dir: Path) -> None:
    agent = create_agent(model_for(script(2)), [lookup])
    with SessionBudget(handoff_dir=handoff_dir) as session:
        handler = BudgetCallbackHandler(session)
        # A raw thread does not inherit the context: only the handler knows the session.
        worker = threading.Thread(
            target=agent.invoke,
            args=({"messages": [("user", "go")]},),
            kwargs={"config": {"callbacks": [handler]}},
        )
        worker.start()
        worker.join()
    assert session.usage.steps == 2
    assert session.usage.llm_calls == 3


# ----------------------------------------------------------------------------- spans
def test_spans_nest_under_the_session_span(otel: Otel, handoff_dir: Path) -> None:
    agent = create_agent(model_for(script(3)), [lookup])
    with SessionBudget(name="researcher", handoff_dir=handoff_dir):
        agent.invoke(
            {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
        )

    session_span = otel.span("invoke_agent researcher")
    tools = [s for s in otel.spans() if s.name == "execute_tool lookup"]
    chats = [
        s
        for s in otel.spans()
        if s.attributes and s.attributes.get(names.GEN_AI_OPERATION_NAME) == names.OP_CHAT
    ]
    assert len(tools) == 3
    assert len(chats) == 4
    assert_children_of(session_span, [*tools, *chats])
    assert [s.attributes[names.GEN_AI_USAGE_INPUT_TOKENS] for s in chats if s.attributes] == [
        100,
        200,
        300,
        400,
    ]


# ----------------------------------------------------------------------------- swallowed errors
@tool
def broken_lookup(q: str) -> str:
    """Look something up; always fails, and LangChain turns the failure into text."""
    raise ToolException(f"backend down for {q}")


broken_lookup.handle_tool_error = True


@tool
def raising_lookup(q: str) -> str:
    """Look something up; always raises."""
    raise ValueError(f"backend down for {q}")


def test_handle_tool_error_still_counts_toward_consecutive_errors(handoff_dir: Path) -> None:
    """20 failing tool calls in a row: a tool whose handle_tool_error turns each failure into
    an error ToolMessage still trips max_consecutive_errors (#19)."""
    turns = script(20, tool_name="broken_lookup")
    agent = create_agent(model_for(turns), [broken_lookup])
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_consecutive_errors=3, max_llm_calls=100, handoff_dir=handoff_dir),
    ):
        agent.invoke(
            {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
        )
    assert info.value.reason == "max_consecutive_errors"
    assert turns.served <= 4


@pytest.mark.parametrize("handle", [True, "the tool failed"])
def test_tool_node_error_messages_count_toward_consecutive_errors(
    handoff_dir: Path, handle: bool | str
) -> None:
    """ToolNode(handle_tool_errors=...) returning ToolMessage(status="error") counts (#19)."""
    turns = script(20, tool_name="raising_lookup")
    model = model_for(turns)

    def call_model(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"], config)]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([raising_lookup], handle_tool_errors=handle))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_consecutive_errors=3, max_llm_calls=100, handoff_dir=handoff_dir),
    ):
        graph.compile().invoke(
            {"messages": [("user", "go")]},
            config={"callbacks": [BudgetCallbackHandler()], "recursion_limit": 200},
        )
    assert info.value.reason == "max_consecutive_errors"
    assert turns.served <= 4


def test_a_success_after_errors_resets_the_count(handoff_dir: Path) -> None:
    """Error ToolMessages count; a tool that returns normally resets the run of errors."""
    names = ["broken_lookup", "broken_lookup", "lookup"] * 4
    turns = Script(
        [
            *(reply(i, tool_name=n) for i, n in enumerate(names, start=1)),
            reply(99, tool_name=None),
        ]
    )
    agent = create_agent(model_for(turns), [broken_lookup, lookup])
    with SessionBudget(max_consecutive_errors=3, handoff_dir=handoff_dir) as session:
        out = agent.invoke(
            {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
        )
    assert out["messages"][-1].content == "all done"
    assert session.usage.steps == 12


# ----------------------------------------------------------------------------- quiet stops
@pytest.mark.parametrize("limit", [{"max_steps": 1}, {"max_llm_calls": 1}])
def test_budgetkits_own_stop_logs_no_callback_error(
    handoff_dir: Path, caplog: pytest.LogCaptureFixture, limit: dict[str, int]
) -> None:
    """No "Error in BudgetCallbackHandler.on_tool_start callback: BudgetExhausted(...)" line
    for budgetkit's own stop; the exception still propagates (#19)."""
    agent = create_agent(model_for(script(5)), [lookup])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BudgetExhausted), SessionBudget(**limit, handoff_dir=handoff_dir):
        agent.invoke(
            {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
        )
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if "BudgetCallbackHandler" in m], logged


def test_other_callback_errors_are_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The filter drops only budgetkit's own stop: another handler's error is still logged."""
    from langchain_core.callbacks import BaseCallbackHandler

    class Broken(BaseCallbackHandler):
        def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            raise ValueError("boom")

    caplog.set_level(logging.WARNING)
    model_for(script(0)).invoke("hi", config={"callbacks": [Broken(), BudgetCallbackHandler()]})
    assert any("Error in Broken.on_chat_model_start" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- the budget in view
class RecordingChatModel(ScriptedChatModel):
    """Records the messages of every request it receives."""

    requests: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.requests.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_middleware_puts_the_status_line_in_every_request(
    handoff_dir: Path, asynchronous: bool
) -> None:
    """The system message the model receives carries session.status_line() (#19)."""
    import asyncio

    from budgetkit.integrations.langchain import BudgetMiddleware

    model = RecordingChatModel(messages=iter(script(1)))
    agent = create_agent(
        model, [lookup], system_prompt="You are a researcher.", middleware=[BudgetMiddleware()]
    )
    config: RunnableConfig = {"callbacks": [BudgetCallbackHandler()]}
    inputs = {"messages": [("user", "research this")]}
    with SessionBudget(max_steps=5, handoff_dir=handoff_dir):
        if asynchronous:
            out = asyncio.run(agent.ainvoke(inputs, config=config))
        else:
            out = agent.invoke(inputs, config=config)
    assert out["messages"][-1].content == "all done"
    first, second = model.requests
    assert first[0].type == "system"
    assert first[0].content == (
        "You are a researcher.\n\nBudget: 5 of 5 steps left. Phase: explore."
    )
    assert second[0].content == (
        "You are a researcher.\n\nBudget: 4 of 5 steps left. Phase: explore."
    )
    assert first[1].content == "research this"  # the user's message is unchanged
    # The agent's state keeps no budget text.
    assert not any("Budget:" in str(m.content) for m in out["messages"])


# ----------------------------------------------------------------------------- wind-down
class WindDownModel(RecordingChatModel):
    """Calls ``lookup`` while it is offered tools; answers once it is offered none."""

    offered: list[int] = Field(default_factory=list)
    tool_count: int = 0

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.model_copy(update={"tool_count": len(tools)})

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        from langchain_core.outputs import ChatGeneration, ChatResult

        self.offered.append(self.tool_count)
        i = len(self.offered)
        if self.tool_count:
            message = reply(i)
        else:
            message = reply(i, tool_name=None).model_copy(
                update={"content": f"final answer after {i - 1} turns"}
            )
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_finish_winds_down_to_a_final_answer_marked_budget_limited(handoff_dir: Path) -> None:
    """on_exhausted="finish": the tool call that would use the wrap-up reserve is not run,
    the next model call is offered no tools, and the run returns the answer, marked (#19)."""
    from budgetkit.integrations.langchain import BudgetMiddleware, budget_stop_reason

    model = WindDownModel(messages=iter(()))
    agent = create_agent(model, [lookup], middleware=[BudgetMiddleware(on_exhausted="finish")])
    with SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir) as session:
        out = agent.invoke(
            {"messages": [("user", "research this")]},
            config={"callbacks": [BudgetCallbackHandler()]},
        )
    assert model.offered == [1, 1, 1, 1, 1, 0]  # tools offered, until the final call
    assert out["messages"][-1].content == "final answer after 5 turns"
    assert budget_stop_reason(out) == "wrapup_reserve"
    assert session.usage.steps == 4
    assert [m.content for m in tool_messages(out["messages"])][-1].startswith("Not run")


def test_middleware_without_finish_still_raises_at_the_reserve(handoff_dir: Path) -> None:
    from budgetkit.integrations.langchain import BudgetMiddleware

    model = WindDownModel(messages=iter(()))
    agent = create_agent(model, [lookup], middleware=[BudgetMiddleware()])
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir),
    ):
        agent.invoke(
            {"messages": [("user", "go")]}, config={"callbacks": [BudgetCallbackHandler()]}
        )
    assert info.value.reason == "wrapup_reserve"


# ----------------------------------------------------------------------------- state in the handoff
def exhaust_agent(handoff_dir: Path, **session: Any) -> BudgetExhausted:
    """A create_agent run stopped by max_steps=2 at its third tool call."""
    agent = create_agent(model_for(script(5)), [lookup], system_prompt="You are a researcher.")
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=2, handoff_dir=handoff_dir, **session),
    ):
        agent.invoke(
            {"messages": [("user", "research this")]},
            config={"callbacks": [BudgetCallbackHandler()]},
        )
    return info.value


def test_exhausted_run_resumes_with_its_messages(handoff_dir: Path) -> None:
    """The handoff stores the conversation (no update_handoff call); the resumed run's first
    model request carries it (#19)."""
    from budgetkit.integrations.langchain import resume_messages

    stopped = exhaust_agent(handoff_dir)
    assert stopped.handoff_path is not None
    state = stopped.handoff.extra["framework_state"]
    assert state["framework"] == "langchain"
    assert "payload" in state

    model = RecordingChatModel(messages=iter([reply(9, tool_name=None)]))
    agent = create_agent(model, [lookup], system_prompt="You are a researcher.")
    with SessionBudget.resume(stopped.handoff_path) as session:
        out = agent.invoke(
            {"messages": resume_messages(session)},
            config={"callbacks": [BudgetCallbackHandler()]},
        )
    first = model.requests[0]
    assert [m.type for m in first] == ["system", "human", "ai", "tool", "ai", "tool", "ai", "tool"]
    assert first[0].content == "You are a researcher."  # once: the agent's own
    assert first[1].content == "research this"
    assert [m.content for m in first if m.type == "tool"][:2] == ["found q1", "found q2"]
    unanswered = first[-1]
    assert isinstance(unanswered, ToolMessage)
    assert unanswered.tool_call_id == "call_3"
    assert unanswered.status == "error"
    assert unanswered.content.startswith("Not run")
    assert out["messages"][-1].content == "all done"


def test_large_state_goes_to_a_sidecar_checked_on_read(
    handoff_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from budgetkit import HandoffError
    from budgetkit import _framework_state as framework_state
    from budgetkit.integrations.langchain import resume_messages

    monkeypatch.setattr(framework_state, "INLINE_BYTES", 100)
    stopped = exhaust_agent(handoff_dir)
    assert stopped.handoff_path is not None
    state = stopped.handoff.extra["framework_state"]
    sidecar = handoff_dir / f"{stopped.session_id}.state"
    assert state["sidecar"] == sidecar.name
    assert "payload" not in state
    assert state["bytes"] == sidecar.stat().st_size > 100
    assert sidecar.stat().st_mode & 0o777 == 0o600  # written like the handoff
    messages = resume_messages(stopped.handoff_path)
    assert [m.type for m in messages][:3] == ["human", "ai", "tool"]
    with pytest.raises(HandoffError, match="sidecar"):  # an object alone cannot find it
        resume_messages(stopped.handoff)

    sidecar.write_bytes(sidecar.read_bytes().replace(b"found q1", b"found q7"))
    with pytest.raises(HandoffError, match="does not match the sha256"):
        resume_messages(stopped.handoff_path)
    sidecar.unlink()
    with pytest.raises(HandoffError, match="cannot read the state sidecar"):
        resume_messages(stopped.handoff_path)


def test_a_state_over_the_hard_cap_is_omitted_with_a_warning(
    handoff_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from budgetkit import BudgetWarning, HandoffError
    from budgetkit import _framework_state as framework_state
    from budgetkit.integrations.langchain import resume_messages

    monkeypatch.setattr(framework_state, "INLINE_BYTES", 100)
    monkeypatch.setattr(framework_state, "MAX_STATE_BYTES", 200)
    with pytest.warns(BudgetWarning, match="not in its handoff"):
        stopped = exhaust_agent(handoff_dir)
    assert stopped.handoff_path is not None
    assert "over the cap of 200 bytes" in stopped.handoff.extra["framework_state"]["omitted"]
    assert not (handoff_dir / f"{stopped.session_id}.state").exists()
    with pytest.raises(HandoffError, match="was not stored"):
        resume_messages(stopped.handoff_path)


def test_without_a_handoff_dir_a_large_state_stays_inline(
    handoff_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from budgetkit import _framework_state as framework_state
    from budgetkit.integrations.langchain import resume_messages

    monkeypatch.setattr(framework_state, "INLINE_BYTES", 100)
    agent = create_agent(model_for(script(5)), [lookup])
    with pytest.raises(BudgetExhausted) as info, SessionBudget(max_steps=2, handoff_dir=None):
        agent.invoke(
            {"messages": [("user", "research this")]},
            config={"callbacks": [BudgetCallbackHandler()]},
        )
    assert info.value.handoff.extra["framework_state"]["bytes"] > 100
    messages = resume_messages(info.value.handoff)  # no file: the object holds it all
    assert messages[0].content == "research this"


def test_warnings_as_errors_do_not_hide_the_budget_error(
    handoff_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state that cannot be stored warns; under warnings-as-errors the run still ends with
    BudgetExhausted and a handoff, never with the warning."""
    import warnings

    from budgetkit import _framework_state as framework_state

    monkeypatch.setattr(framework_state, "MAX_STATE_BYTES", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        stopped = exhaust_agent(handoff_dir)
    assert stopped.reason == "max_steps"
    assert stopped.handoff_path is not None
    assert "omitted" in stopped.handoff.extra["framework_state"]
