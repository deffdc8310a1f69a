"""budgetkit.integrations.openai_agents: real Agents SDK runs on a canned ``Model``."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("agents")

from agents import (
    Agent,
    AgentsException,
    ModelResponse,
    Runner,
    ToolCallOutputItem,
    UserError,
    function_tool,
    set_tracing_disabled,
)
from agents import Usage as AgentsUsage
from agents.models.interface import Model
from agents.usage import InputTokensDetails, OutputTokensDetails
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses import response_usage as openai_usage
from otel_fixtures import Otel, assert_children_of, otel

from budgetkit import BudgetExhausted, SessionBudget, budget
from budgetkit import _attributes as names
from budgetkit.integrations.openai_agents import AgentsBudgetExhausted, BudgetRunHooks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from agents import RunResultStreaming
    from agents.items import TResponseOutputItem, TResponseStreamEvent

__all__ = ["otel"]  # the fixture


@pytest.fixture(autouse=True)
def _no_agents_tracing() -> Iterator[None]:
    """The SDK's own tracing exports to OpenAI; nothing here should leave the process."""
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


# ----------------------------------------------------------------------------- the model
def tool_call(i: int, name: str = "lookup") -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        arguments=json.dumps({"q": f"q{i}"}),
        call_id=f"call_{i}",
        name=name,
        type="function_call",
        id=f"fc_{i}",
    )


def answer(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg",
        content=[ResponseOutputText(annotations=[], text=text, type="output_text")],
        role="assistant",
        status="completed",
        type="message",
    )


def counts(i: int) -> tuple[int, int, int, int]:
    """Turn ``i``'s (input, output, cached, reasoning) tokens: the context grows each turn."""
    return 100 * i, 10 + i, i, 2


class CannedModel(Model):
    """An Agents SDK ``Model`` that replays canned outputs, with usage, in order."""

    def __init__(self, outputs: list[list[TResponseOutputItem]], model: str = "house-model"):
        self.outputs = outputs
        self.model = model
        self.served = 0

    def _next(self) -> tuple[int, list[TResponseOutputItem]]:
        output = self.outputs[self.served]
        self.served += 1
        return self.served, output

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        i, output = self._next()
        inp, out, cached, reasoning = counts(i)
        usage = AgentsUsage(
            requests=1,
            input_tokens=inp,
            output_tokens=out,
            total_tokens=inp + out,
            input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        )
        return ModelResponse(output=output, usage=usage, response_id=f"resp_{i}")

    async def stream_response(
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[TResponseStreamEvent]:
        i, output = self._next()
        inp, out, cached, reasoning = counts(i)
        response = Response(
            id=f"resp_{i}",
            created_at=0,
            model=self.model,
            object="response",
            output=output,
            parallel_tool_calls=True,
            tool_choice="auto",
            tools=[],
            usage=ResponseUsage(
                input_tokens=inp,
                output_tokens=out,
                total_tokens=inp + out,
                input_tokens_details=openai_usage.InputTokensDetails(
                    cached_tokens=cached, cache_write_tokens=0
                ),
                output_tokens_details=openai_usage.OutputTokensDetails(reasoning_tokens=reasoning),
            ),
        )
        yield ResponseCompletedEvent(
            type="response.completed", response=response, sequence_number=i
        )


def canned(tool_turns: int, name: str = "lookup") -> CannedModel:
    outputs: list[list[TResponseOutputItem]] = [
        [tool_call(i, name)] for i in range(1, tool_turns + 1)
    ]
    return CannedModel([*outputs, [answer("all done")]])


ran: list[str] = []


@function_tool
def lookup(q: str) -> str:
    """Look something up."""
    ran.append(q)
    return f"found {q}"


@budget.step
def fetch(q: str) -> str:
    return f"page for {q}"


caught: list[BaseException] = []


@function_tool
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


async def drain(result: RunResultStreaming) -> None:
    async for _ in result.stream_events():
        pass


@pytest.fixture
def thread_loop() -> Iterator[None]:
    """``Runner.run_sync`` uses the thread's default loop and leaves it open: own and close it."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def tool_outputs(items: list[Any]) -> list[ToolCallOutputItem]:
    return [item for item in items if isinstance(item, ToolCallOutputItem)]


# ----------------------------------------------------------------------------- charging
@pytest.mark.asyncio
async def test_run_charges_what_the_sdk_reports(handoff_dir: Path) -> None:
    model = canned(3)
    agent = Agent(name="researcher", model=model, tools=[lookup])
    with SessionBudget(max_steps=10, handoff_dir=handoff_dir) as session:
        result = await Runner.run(agent, "research this", hooks=BudgetRunHooks())

    assert result.final_output == "all done"
    reported = result.context_wrapper.usage
    usage = session.usage
    assert usage.steps == len(tool_outputs(result.new_items)) == len(ran) == 3
    assert usage.llm_calls == reported.requests == model.served == 4
    assert usage.input_tokens == reported.input_tokens == 100 + 200 + 300 + 400
    assert usage.output_tokens == reported.output_tokens
    assert usage.total_tokens == reported.total_tokens
    assert usage.cache_read_tokens == reported.input_tokens_details.cached_tokens == 10
    assert usage.reasoning_tokens == reported.output_tokens_details.reasoning_tokens == 8
    assert session.result is not None
    assert session.result.stop_reason == "completed"


@pytest.mark.asyncio
async def test_run_streamed_charges_what_the_sdk_reports(handoff_dir: Path) -> None:
    model = canned(3)
    agent = Agent(name="researcher", model=model, tools=[lookup])
    with SessionBudget(handoff_dir=handoff_dir) as session:
        result = Runner.run_streamed(agent, "research this", hooks=BudgetRunHooks())
        await drain(result)

    assert result.final_output == "all done"
    reported = result.context_wrapper.usage
    usage = session.usage
    assert usage.steps == len(tool_outputs(result.new_items)) == 3
    assert usage.llm_calls == reported.requests == 4
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        reported.input_tokens,
        reported.output_tokens,
        reported.total_tokens,
    )


@pytest.mark.usefixtures("thread_loop")
def test_run_sync_prices_a_known_model(handoff_dir: Path) -> None:
    agent = Agent(name="researcher", model=canned(2), tools=[lookup])
    prices = {"house-model": (Decimal(2), Decimal(10))}  # USD per million tokens
    with SessionBudget(max_usd=1, prices=prices, handoff_dir=handoff_dir) as session:
        Runner.run_sync(agent, "go", hooks=BudgetRunHooks())

    expected = sum(
        Decimal(100 * i) * 2 / 1_000_000 + Decimal(10 + i) * 10 / 1_000_000 for i in (1, 2, 3)
    )
    assert session.usage.cost_usd == expected
    assert session.usage.unpriced_calls == 0


# ----------------------------------------------------------------------------- exhaustion
@pytest.mark.asyncio
async def test_refused_tool_call_ends_the_run_instead_of_becoming_text(handoff_dir: Path) -> None:
    model = canned(5)
    agent = Agent(name="researcher", model=model, tools=[lookup])
    session = SessionBudget(max_steps=2, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        await Runner.run(agent, "go", hooks=BudgetRunHooks())

    exc = info.value
    # Not wrapped in the SDK's UserError("Error running tool ..."), not fed to the model.
    assert type(exc) is AgentsBudgetExhausted
    assert not isinstance(exc, UserError)
    assert isinstance(exc, AgentsException)
    assert exc.run_data is not None  # the SDK attached the run's items so far
    assert exc.reason == "max_steps"
    assert exc.session_id == session.session_id
    assert ran == ["q1", "q2"]  # the third tool call never ran
    assert model.served == 3  # and no model call followed it
    assert exc.handoff_path is not None
    assert exc.handoff_path.exists()
    assert session.result is not None
    assert session.result.stop_reason == "max_steps"


@pytest.mark.usefixtures("thread_loop")
def test_run_sync_stops_at_the_limit_even_when_the_tool_catches(handoff_dir: Path) -> None:
    """The tool swallows the BudgetExhausted of its own step; the next model call re-raises."""
    model = canned(5, name="careful_lookup")
    agent = Agent(name="researcher", model=model, tools=[careful_lookup])
    # Each turn is two steps: the tool call, and the fetch() inside it.
    session = SessionBudget(max_steps=3, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        Runner.run_sync(agent, "go", hooks=BudgetRunHooks())

    exc = info.value
    assert exc.reason == "max_steps"
    assert len(caught) == 1
    assert isinstance(caught[0], BudgetExhausted)
    assert model.served == 2  # the third model call was refused before it was made
    assert session.usage.llm_calls == 2
    assert session.usage.steps == 3
    assert exc.handoff_path is not None
    assert exc.handoff_path.exists()


@pytest.mark.asyncio
async def test_streamed_run_raises_from_stream_events(handoff_dir: Path) -> None:
    model = canned(5)
    agent = Agent(name="researcher", model=model, tools=[lookup])
    session = SessionBudget(max_tokens=300, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        await drain(Runner.run_streamed(agent, "go", hooks=BudgetRunHooks()))

    # 111 + 212 tokens: the second response crosses the limit; its tool call is refused.
    assert info.value.reason == "max_tokens"
    assert model.served == 2
    assert ran == ["q1"]
    assert session.usage.total_tokens == 111 + 212
    assert info.value.handoff_path is not None
    assert info.value.handoff_path.exists()


# ----------------------------------------------------------------------------- sessions
@pytest.mark.asyncio
async def test_outside_a_session_the_hooks_charge_nothing() -> None:
    agent = Agent(name="researcher", model=canned(2), tools=[lookup])
    result = await Runner.run(agent, "go", hooks=BudgetRunHooks())
    assert result.final_output == "all done"


# ----------------------------------------------------------------------------- spans
@pytest.mark.asyncio
async def test_spans_nest_under_the_session_span(otel: Otel, handoff_dir: Path) -> None:
    agent = Agent(name="researcher", model=canned(3), tools=[lookup])
    with SessionBudget(name="researcher", handoff_dir=handoff_dir):
        await Runner.run(agent, "go", hooks=BudgetRunHooks())

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


# ----------------------------------------------------------------------------- swallowed errors
@function_tool
def broken_lookup(q: str) -> str:
    """Look something up; always fails (the SDK turns the failure into text)."""
    raise ValueError(f"backend down for {q}")


@pytest.mark.asyncio
async def test_tool_failure_output_counts_toward_consecutive_errors(handoff_dir: Path) -> None:
    """20 failing tool calls in a row, each turned into the SDK's failure text for the model,
    trip max_consecutive_errors (#19); before, only max_llm_calls stopped them."""
    model = canned(20, name="broken_lookup")
    agent = Agent(name="researcher", model=model, tools=[broken_lookup])
    session = SessionBudget(max_consecutive_errors=3, max_llm_calls=100, handoff_dir=handoff_dir)
    with pytest.raises(BudgetExhausted) as info, session:
        await Runner.run(agent, "go", hooks=BudgetRunHooks(), max_turns=100)
    assert info.value.reason == "max_consecutive_errors"
    assert model.served <= 4
    assert session.usage.steps == 3


@pytest.mark.asyncio
async def test_a_tool_success_ends_the_run_of_errors(handoff_dir: Path) -> None:
    names = ["broken_lookup", "broken_lookup", "lookup"] * 3
    model = CannedModel([*([tool_call(i, n)] for i, n in enumerate(names, 1)), [answer("done")]])
    agent = Agent(name="researcher", model=model, tools=[broken_lookup, lookup])
    with SessionBudget(max_consecutive_errors=3, handoff_dir=handoff_dir) as session:
        result = await Runner.run(agent, "go", hooks=BudgetRunHooks(), max_turns=100)
    assert result.final_output == "done"
    assert session.usage.steps == 9


# ----------------------------------------------------------------------------- the budget in view
class RecordingModel(CannedModel):
    """Also records the system instructions and input of every request it receives."""

    def __init__(self, outputs: list[list[TResponseOutputItem]]) -> None:
        super().__init__(outputs)
        self.requests: list[tuple[str | None, Any]] = []

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        system = kwargs.get("system_instructions", args[0] if args else None)
        given = kwargs.get("input", args[1] if len(args) > 1 else None)
        self.requests.append((system, given))
        return await super().get_response(*args, **kwargs)


@pytest.mark.asyncio
async def test_budget_instructions_put_the_status_line_in_every_request(
    handoff_dir: Path,
) -> None:
    """The system instructions the model receives carry session.status_line() (#19)."""
    from budgetkit.integrations.openai_agents import budget_instructions

    model = RecordingModel([[tool_call(1)], [answer("all done")]])
    agent = Agent(
        name="researcher",
        model=model,
        tools=[lookup],
        instructions=budget_instructions("You are a researcher."),
    )
    with SessionBudget(max_steps=5, handoff_dir=handoff_dir):
        result = await Runner.run(agent, "research this", hooks=BudgetRunHooks())
    assert result.final_output == "all done"
    systems = [system or "" for system, _ in model.requests]
    assert systems[0] == "You are a researcher.\n\nBudget: 5 of 5 steps left. Phase: explore."
    assert systems[1] == "You are a researcher.\n\nBudget: 4 of 5 steps left. Phase: explore."
    first_input = model.requests[0][1]
    assert first_input == "research this" or first_input[0]["content"] == "research this"


@pytest.mark.asyncio
async def test_budget_instructions_wrap_dynamic_instructions(handoff_dir: Path) -> None:
    from budgetkit.integrations.openai_agents import budget_instructions

    async def mine(context: Any, agent: Any) -> str:
        return f"You are {agent.name}."

    model = RecordingModel([[answer("ok")]])
    agent = Agent(name="scout", model=model, instructions=budget_instructions(mine))
    with SessionBudget(max_llm_calls=3, handoff_dir=handoff_dir):
        await Runner.run(agent, "go", hooks=BudgetRunHooks())
    assert (
        model.requests[0][0] == "You are scout.\n\nBudget: 3 of 3 LLM calls left. Phase: explore."
    )


# ----------------------------------------------------------------------------- state in the handoff
@pytest.mark.asyncio
async def test_exhausted_run_resumes_with_its_input_items(handoff_dir: Path) -> None:
    """The handoff stores the run's input items (no update_handoff call); the resumed run's
    first model request carries them (#19)."""
    from budgetkit.integrations.openai_agents import resume_input

    agent = Agent(name="researcher", model=canned(5), tools=[lookup])
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=2, handoff_dir=handoff_dir),
    ):
        await Runner.run(agent, "research this", hooks=BudgetRunHooks())
    stopped = info.value
    assert stopped.handoff_path is not None
    assert stopped.handoff.extra["framework_state"]["framework"] == "openai_agents"

    model = RecordingModel([[answer("all done")]])
    resumed = Agent(name="researcher", model=model, tools=[lookup])
    with SessionBudget.resume(stopped.handoff_path) as session:
        result = await Runner.run(resumed, resume_input(session), hooks=BudgetRunHooks())
    assert result.final_output == "all done"
    first = model.requests[0][1]
    assert first[0] == {"content": "research this", "role": "user"}
    kinds = [item.get("type") for item in first[1:]]
    assert kinds == ["function_call", "function_call_output"] * 3
    outputs = [item["output"] for item in first if item.get("type") == "function_call_output"]
    assert outputs[:2] == ["found q1", "found q2"]
    assert outputs[2].startswith("Not run")  # the call the budget refused
    assert first[-1]["call_id"] == "call_3"


# ----------------------------------------------------------------------------- wind-down
class WindDownModel(CannedModel):
    """Calls ``lookup`` while it is offered tools; answers once it is offered none."""

    def __init__(self) -> None:
        super().__init__([])
        self.offered: list[list[str]] = []
        self.tool_choices: list[object] = []

    def _offer(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        settings = kwargs.get("model_settings", args[2] if len(args) > 2 else None)
        tools = kwargs.get("tools", args[3] if len(args) > 3 else [])
        self.offered.append([t.name for t in tools])
        self.tool_choices.append(getattr(settings, "tool_choice", None))
        i = len(self.offered)
        output = [tool_call(i)] if tools else [answer(f"final answer after {i - 1} turns")]
        self.outputs.append(output)

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self._offer(args, kwargs)
        return await super().get_response(*args, **kwargs)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        self._offer(args, kwargs)
        return super().stream_response(*args, **kwargs)


@pytest.mark.asyncio
async def test_finish_winds_down_to_a_final_answer_marked_budget_limited(
    handoff_dir: Path,
) -> None:
    """on_exhausted="finish": the tool call that would use the wrap-up reserve is rejected by
    a tool guardrail, the next model call is offered no tools, and the run returns the
    answer, marked with the stop reason (#19)."""
    from agents import ModelSettings

    from budgetkit.integrations.openai_agents import budget_stop_reason, run_within_budget

    model = WindDownModel()
    agent = Agent(
        name="researcher",
        model=model,
        tools=[lookup],
        model_settings=ModelSettings(tool_choice="required"),
    )
    with SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir) as session:
        result = await run_within_budget(agent, "research this", on_exhausted="finish")
    assert ran == ["q1", "q2", "q3", "q4"]  # the fifth tool call would eat the reserve
    assert model.offered == [["lookup"]] * 5 + [[]]  # the final call offers no tools
    assert model.tool_choices[-1] is None  # and does not require one
    assert result.final_output == "final answer after 5 turns"
    assert budget_stop_reason(result) == "wrapup_reserve"
    outputs = [item.output for item in tool_outputs(result.new_items)]
    assert str(outputs[-1]).startswith("Not run")
    assert session.usage.steps == 4
    assert session.usage.llm_calls == 6
    assert session.result is not None
    assert session.result.stop_reason == "completed"


@pytest.mark.asyncio
async def test_without_finish_the_reserve_still_raises(handoff_dir: Path) -> None:
    from budgetkit.integrations.openai_agents import run_within_budget

    agent = Agent(name="researcher", model=WindDownModel(), tools=[lookup])
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir),
    ):
        await run_within_budget(agent, "research this")
    assert info.value.reason == "wrapup_reserve"


@pytest.mark.asyncio
async def test_finish_still_raises_at_a_hard_limit(handoff_dir: Path) -> None:
    from budgetkit.integrations.openai_agents import run_within_budget

    agent = Agent(name="researcher", model=WindDownModel(), tools=[lookup])
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=3, handoff_dir=handoff_dir),
    ):
        await run_within_budget(agent, "research this", on_exhausted="finish")
    assert info.value.reason == "max_steps"
    assert ran == ["q1", "q2", "q3"]


@pytest.mark.asyncio
async def test_a_run_that_finishes_by_itself_is_not_marked(handoff_dir: Path) -> None:
    from budgetkit.integrations.openai_agents import budget_stop_reason, run_within_budget

    agent = Agent(name="researcher", model=canned(1), tools=[lookup])
    with SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir):
        result = await run_within_budget(agent, "go", on_exhausted="finish")
    assert result.final_output == "all done"
    assert budget_stop_reason(result) is None


@pytest.mark.asyncio
async def test_streamed_finish_winds_down_to_a_final_answer_marked_budget_limited(
    handoff_dir: Path,
) -> None:
    from budgetkit.integrations.openai_agents import (
        budget_stop_reason,
        run_streamed_within_budget,
    )

    model = WindDownModel()
    agent = Agent(name="researcher", model=model, tools=[lookup])
    with SessionBudget(max_steps=5, reserve_for_wrapup=0.2, handoff_dir=handoff_dir) as session:
        result = run_streamed_within_budget(agent, "research this", on_exhausted="finish")
        await drain(result)
    assert model.offered == [["lookup"]] * 5 + [[]]
    assert result.final_output == "final answer after 5 turns"
    assert budget_stop_reason(result) == "wrapup_reserve"
    assert session.usage.steps == 4


def test_hooks_and_run_must_agree_on_on_exhausted() -> None:
    from budgetkit import BudgetConfigError
    from budgetkit.integrations.openai_agents import run_within_budget

    agent = Agent(name="researcher", model=WindDownModel(), tools=[lookup])
    with pytest.raises(BudgetConfigError, match="on_exhausted"):
        asyncio.run(run_within_budget(agent, "go", hooks=BudgetRunHooks(), on_exhausted="finish"))
    with pytest.raises(BudgetConfigError, match="on_exhausted"):
        BudgetRunHooks(on_exhausted="stop")  # type: ignore[arg-type]
