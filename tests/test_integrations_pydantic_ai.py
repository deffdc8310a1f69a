"""budgetkit.integrations.pydantic_ai: real Pydantic AI agents on FunctionModel and TestModel."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("pydantic_ai")

from otel_fixtures import Otel, assert_children_of, otel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage

from budgetkit import BudgetExhausted, SessionBudget, budget
from budgetkit import _attributes as names
from budgetkit.integrations.pydantic_ai import BudgetCapability, BudgetModel

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pydantic_ai.messages import ModelMessage

__all__ = ["otel"]  # the fixture


# ----------------------------------------------------------------------------- the model
class Script:
    """A FunctionModel body: ``tool_turns`` tool calls, then the answer; counts its calls."""

    def __init__(self, tool_turns: int, tool: str = "lookup", per_turn: int = 1) -> None:
        self.tool_turns = tool_turns
        self.tool = tool
        self.per_turn = per_turn
        self.served = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.served += 1
        i = self.served
        usage = RequestUsage(input_tokens=100 * i, output_tokens=10 + i, cache_read_tokens=i)
        if i > self.tool_turns:
            return ModelResponse(parts=[TextPart("all done")], usage=usage)
        calls = [
            ToolCallPart(self.tool, {"q": f"q{i}.{k}"}, tool_call_id=f"call_{i}_{k}")
            for k in range(self.per_turn)
        ]
        return ModelResponse(parts=calls, usage=usage)


ran: list[str] = []
caught: list[BaseException] = []


async def lookup(q: str) -> str:
    """Look something up."""
    ran.append(q)
    await asyncio.sleep(0)
    return f"found {q}"


@budget.step
def fetch(q: str) -> str:
    return f"page for {q}"


def careful_lookup(q: str) -> str:
    """Look something up, never failing: every error becomes text for the model."""
    try:
        return fetch(q)
    except Exception as exc:
        caught.append(exc)
        return f"lookup failed: {exc}"


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()
    caught.clear()


@pytest.fixture
def thread_loop() -> Iterator[None]:
    """``run_sync`` uses the thread's default loop and leaves it open: own and close it."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def agent_for(model: Any, tool: Callable[..., Any] = lookup, **kwargs: Any) -> Agent[None, str]:
    agent: Agent[None, str] = Agent(model, name="researcher", **kwargs)
    agent.tool_plain(tool)
    return agent


def tool_returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [
        part
        for message in messages
        for part in getattr(message, "parts", ())
        if isinstance(part, ToolReturnPart)
    ]


# ----------------------------------------------------------------------------- charging
@pytest.mark.asyncio
async def test_run_charges_what_pydantic_ai_reports(handoff_dir: Path) -> None:
    script = Script(3)
    agent = agent_for(FunctionModel(script, model_name="house-model"))
    with SessionBudget(max_steps=10, handoff_dir=handoff_dir) as session:
        result = await agent.run("research this", capabilities=[BudgetCapability()])

    assert result.output == "all done"
    reported = result.usage
    usage = session.usage
    assert usage.steps == reported.tool_calls == len(tool_returns(result.all_messages())) == 3
    assert usage.llm_calls == reported.requests == script.served == 4
    assert usage.input_tokens == reported.input_tokens == 100 + 200 + 300 + 400
    assert usage.output_tokens == reported.output_tokens
    assert usage.total_tokens == reported.total_tokens
    assert usage.cache_read_tokens == reported.cache_read_tokens == 10
    assert session.result is not None
    assert session.result.stop_reason == "completed"


@pytest.mark.asyncio
async def test_run_stream_with_test_model_charges_what_pydantic_ai_reports(
    handoff_dir: Path,
) -> None:
    agent = agent_for(TestModel(call_tools=["lookup"]))
    with SessionBudget(handoff_dir=handoff_dir) as session:
        async with agent.run_stream("research this", capabilities=[BudgetCapability()]) as run:
            await run.get_output()
        reported = run.usage

    usage = session.usage
    assert usage.steps == reported.tool_calls == len(ran) == 1
    assert usage.llm_calls == reported.requests == 2
    assert (usage.input_tokens, usage.output_tokens) == (
        reported.input_tokens,
        reported.output_tokens,
    )
    assert usage.input_tokens > 0


@pytest.mark.usefixtures("thread_loop")
def test_agent_capability_with_run_sync_prices_a_known_model(handoff_dir: Path) -> None:
    agent = agent_for(
        FunctionModel(Script(2), model_name="house-model"), capabilities=[BudgetCapability()]
    )
    prices = {"house-model": (Decimal(2), Decimal(10))}  # USD per million tokens
    with SessionBudget(max_usd=1, prices=prices, handoff_dir=handoff_dir) as session:
        agent.run_sync("go")

    expected = sum(
        Decimal(100 * i) * 2 / 1_000_000 + Decimal(10 + i) * 10 / 1_000_000 for i in (1, 2, 3)
    )
    assert session.usage.cost_usd == expected
    assert session.usage.unpriced_calls == 0


# ----------------------------------------------------------------------------- exhaustion
@pytest.mark.asyncio
async def test_run_stops_at_the_limit_even_when_the_tool_catches(handoff_dir: Path) -> None:
    """The tool swallows the BudgetExhausted of its own step; the next request re-raises."""
    script = Script(5, tool="careful_lookup")
    agent = agent_for(FunctionModel(script), careful_lookup)
    # Each turn is two steps: the tool call, and the fetch() inside it.
    session = SessionBudget(max_steps=3, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        await agent.run("go", capabilities=[BudgetCapability()])

    exc = info.value
    assert exc.reason == "max_steps"
    assert exc.session_id == session.session_id
    assert len(caught) == 1
    assert isinstance(caught[0], BudgetExhausted)
    assert script.served == 2  # the third request was refused before it was sent
    assert session.usage.llm_calls == 2
    assert session.usage.steps == 3
    assert exc.handoff_path is not None
    assert exc.handoff_path.exists()
    assert session.result is not None
    assert session.result.stop_reason == "max_steps"


@pytest.mark.asyncio
async def test_refused_tool_call_in_a_parallel_batch_stops_the_run(handoff_dir: Path) -> None:
    script = Script(5, per_turn=3)
    agent = agent_for(FunctionModel(script))
    session = SessionBudget(max_steps=4, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        await agent.run("go", capabilities=[BudgetCapability()])

    # A plain BudgetExhausted, not an ExceptionGroup and not a retry prompt for the model.
    assert type(info.value) is BudgetExhausted
    assert info.value.reason == "max_steps"
    assert len(ran) == 4  # the first batch, and one call of the second
    assert script.served == 2
    assert info.value.handoff_path is not None
    assert info.value.handoff_path.exists()


@pytest.mark.asyncio
async def test_token_limit_stops_the_run_at_the_next_boundary(handoff_dir: Path) -> None:
    script = Script(5)
    agent = agent_for(FunctionModel(script))
    session = SessionBudget(max_tokens=300, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        await agent.run("go", capabilities=[BudgetCapability()])

    # 111 + 212 tokens: the second response crosses the limit; its tool call is refused.
    assert info.value.reason == "max_tokens"
    assert script.served == 2
    assert ran == ["q1.0"]
    assert session.usage.total_tokens == 111 + 212


# ----------------------------------------------------------------------------- sessions
@pytest.mark.asyncio
async def test_outside_a_session_the_capability_charges_nothing() -> None:
    agent = agent_for(FunctionModel(Script(2)))
    result = await agent.run("go", capabilities=[BudgetCapability()])
    assert result.output == "all done"


@pytest.mark.asyncio
async def test_budget_model_alone_charges_requests(handoff_dir: Path) -> None:
    agent = agent_for(BudgetModel(FunctionModel(Script(2))))
    with SessionBudget(handoff_dir=handoff_dir) as session:
        result = await agent.run("go")
    assert session.usage.llm_calls == result.usage.requests == 3
    assert session.usage.input_tokens == result.usage.input_tokens
    assert session.usage.steps == 0  # tools are charged by the capability only


# ----------------------------------------------------------------------------- spans
@pytest.mark.asyncio
async def test_spans_nest_under_the_session_span(otel: Otel, handoff_dir: Path) -> None:
    agent = agent_for(FunctionModel(Script(3), model_name="house-model"))
    with SessionBudget(name="researcher", handoff_dir=handoff_dir):
        await agent.run("go", capabilities=[BudgetCapability()])

    session_span = otel.span("invoke_agent researcher")
    tools = [s for s in otel.spans() if s.name == "execute_tool lookup"]
    chats = [s for s in otel.spans() if s.name == "chat house-model"]
    assert len(tools) == 3
    assert len(chats) == 4
    assert_children_of(session_span, [*tools, *chats])
    assert [s.attributes[names.GEN_AI_USAGE_INPUT_TOKENS] for s in chats if s.attributes] == [
        100,
        200,
        300,
        400,
    ]


# ----------------------------------------------------------------------------- with instrument()
@pytest.mark.asyncio
@pytest.mark.parametrize("streamed", [False, True])
async def test_budget_model_over_an_instrumented_sdk_charges_each_request_once(
    handoff_dir: Path, streamed: bool
) -> None:
    """BudgetModel around a real OpenAI model while ``instrument()`` patches the SDK: every
    request is one LLM call, charged by the adapter, not twice."""
    import openai
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    import budgetkit
    from budgetkit.testing import StubServer

    budgetkit.instrument()
    try:
        with StubServer(reply="ok", usage=(1200, 300)) as stub:
            client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
            model = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=client))
            agent: Agent[None, str] = Agent(BudgetModel(model))
            with SessionBudget(handoff_dir=handoff_dir) as session:
                if streamed:
                    async with agent.run_stream("go") as run:
                        await run.get_output()
                else:
                    await agent.run("go")
            await client.close()
        assert len(stub.requests) == 1
        assert session.usage.llm_calls == 1
        assert session.usage.input_tokens == 1200
    finally:
        budgetkit.uninstrument()


# ----------------------------------------------------------------------------- swallowed errors
def always_retry(q: str) -> str:
    """Look something up; always asks the model to try again."""
    from pydantic_ai import ModelRetry

    raise ModelRetry(f"backend down for {q}")


@pytest.mark.asyncio
async def test_model_retry_counts_toward_consecutive_errors(handoff_dir: Path) -> None:
    """20 tool calls in a row that raise ModelRetry trip max_consecutive_errors (#19)."""
    script = Script(20, tool="always_retry")
    agent: Agent[None, str] = Agent(FunctionModel(script, model_name="house-model"))
    agent.tool_plain(retries=100)(always_retry)
    session = SessionBudget(max_consecutive_errors=3, max_llm_calls=100, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        await agent.run("go", capabilities=[BudgetCapability()])
    assert info.value.reason == "max_consecutive_errors"
    assert script.served <= 4


# ----------------------------------------------------------------------------- the budget in view
@pytest.mark.asyncio
async def test_show_budget_puts_the_status_line_in_every_request(handoff_dir: Path) -> None:
    """The instructions the model receives carry session.status_line(), turn by turn (#19)."""
    seen: list[tuple[str | None, list[ModelMessage]]] = []
    script = Script(2)

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append((info.instructions, list(messages)))
        return script(messages, info)

    agent = agent_for(FunctionModel(model, model_name="house-model"), instructions="Be brief.")
    with SessionBudget(max_steps=5, handoff_dir=handoff_dir) as session:
        result = await agent.run("research this", capabilities=[BudgetCapability(show_budget=True)])
        final_line = session.status_line()
    assert result.output == "all done"
    instructions = [text or "" for text, _ in seen]
    assert "Budget: 5 of 5 steps left. Phase: explore." in instructions[0]
    assert "Budget: 4 of 5 steps left. Phase: explore." in instructions[1]
    assert final_line in instructions[2]
    assert all("Be brief." in text for text in instructions)
    # The user's prompt is unchanged.
    first = seen[0][1][0]
    prompts = [p.content for p in getattr(first, "parts", ()) if p.part_kind == "user-prompt"]
    assert prompts == ["research this"]


@pytest.mark.asyncio
async def test_without_show_budget_the_model_sees_no_budget(handoff_dir: Path) -> None:
    seen: list[str | None] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(info.instructions)
        return ModelResponse(parts=[TextPart("done")])

    agent = agent_for(FunctionModel(model, model_name="house-model"))
    with SessionBudget(max_steps=5, handoff_dir=handoff_dir):
        await agent.run("go", capabilities=[BudgetCapability()])
    assert not any("Budget:" in (text or "") for text in seen)


# ----------------------------------------------------------------------------- wind-down
@pytest.mark.asyncio
async def test_finish_winds_down_to_a_final_answer_marked_budget_limited(
    handoff_dir: Path,
) -> None:
    """on_exhausted="finish": in the wrap-up reserve the next request offers no tools, and the
    run returns the model's final answer, marked with the stop reason (#19)."""
    from budgetkit.integrations.pydantic_ai import budget_stop_reason

    offered: list[list[str]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        offered.append([t.name for t in info.function_tools])
        i = len(offered)
        if not info.function_tools:
            return ModelResponse(parts=[TextPart(f"final answer after {i - 1} turns")])
        return ModelResponse(parts=[ToolCallPart("lookup", {"q": f"q{i}"}, tool_call_id=f"c{i}")])

    agent = agent_for(FunctionModel(model, model_name="house-model"))
    capability = BudgetCapability(on_exhausted="finish")
    with SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir) as session:
        result = await agent.run("research this", capabilities=[capability])
    assert ran == ["q1", "q2", "q3", "q4"]  # the fifth tool call would eat the reserve
    assert offered[:5] == [["lookup"]] * 5
    assert offered[5] == []  # the final request offers no tools
    assert result.output == "final answer after 5 turns"
    assert budget_stop_reason(result) == "wrapup_reserve"
    assert session.usage.steps == 4
    assert session.usage.llm_calls == 6


@pytest.mark.asyncio
async def test_without_finish_the_reserve_still_raises(handoff_dir: Path) -> None:
    agent = agent_for(FunctionModel(Script(10), model_name="house-model"))
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir),
    ):
        await agent.run("research this", capabilities=[BudgetCapability()])
    assert info.value.reason == "wrapup_reserve"


@pytest.mark.asyncio
async def test_a_run_that_finishes_by_itself_is_not_marked(handoff_dir: Path) -> None:
    from budgetkit.integrations.pydantic_ai import budget_stop_reason

    agent = agent_for(FunctionModel(Script(1), model_name="house-model"))
    with SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir):
        result = await agent.run("go", capabilities=[BudgetCapability(on_exhausted="finish")])
    assert result.output == "all done"
    assert budget_stop_reason(result) is None


# ----------------------------------------------------------------------------- state in the handoff
@pytest.mark.asyncio
async def test_exhausted_run_resumes_with_its_messages(handoff_dir: Path) -> None:
    """The handoff stores the message history (no update_handoff call); the resumed run's
    first model request carries it (#19)."""
    from pydantic_ai.messages import ModelRequest, UserPromptPart

    from budgetkit.integrations.pydantic_ai import resume_messages

    agent = agent_for(FunctionModel(Script(5), model_name="house-model"), system_prompt="Be brief.")
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=2, handoff_dir=handoff_dir),
    ):
        await agent.run("research this", capabilities=[BudgetCapability()])
    stopped = info.value
    assert stopped.handoff_path is not None
    assert stopped.handoff.extra["framework_state"]["framework"] == "pydantic_ai"

    seen: list[list[ModelMessage]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(list(messages))
        return ModelResponse(parts=[TextPart("all done")])

    resumed = agent_for(FunctionModel(model, model_name="house-model"), system_prompt="Be brief.")
    with SessionBudget.resume(stopped.handoff_path) as session:
        result = await resumed.run(
            message_history=resume_messages(session), capabilities=[BudgetCapability()]
        )
    assert result.output == "all done"
    first = seen[0]
    assert [m.kind for m in first] == ["request", "response"] * 3 + ["request"]
    assert isinstance(first[0], ModelRequest)
    prompts = [p.content for p in first[0].parts if isinstance(p, UserPromptPart)]
    assert prompts == ["research this"]
    system = [p.content for p in first[0].parts if p.part_kind == "system-prompt"]
    assert system == ["Be brief."]  # once: the history's own
    returns = [p.content for p in tool_returns(first)]
    assert returns[:2] == ["found q1.0", "found q2.0"]
    assert returns[2].startswith("Not run")  # the call the budget refused
