"""Pydantic AI: a capability that charges model requests and tool calls.

Usage::

    from budgetkit.integrations.pydantic_ai import BudgetCapability

    with SessionBudget(max_steps=20, max_usd=2):
        result = await agent.run("Plan the trip", capabilities=[BudgetCapability()])

Or once for every run of an agent: ``Agent(model, capabilities=[BudgetCapability()])``.
Works with ``run``, ``run_sync``, ``run_stream`` and ``iter``. To charge a model used
outside an agent run, wrap it directly: ``BudgetModel(model)``.

Install with ``install budgetkit's [pydantic-ai] extra``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

try:
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.models.wrapper import WrapperModel
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budgetkit.integrations.pydantic_ai needs Pydantic AI: budgetkit's [pydantic-ai] extra"
    ) from exc

from .._calls import Nesting, await_marked
from .._policy import WRAPUP_RESERVE
from .._usage import Usage
from ..exceptions import BudgetExhausted
from ._common import (
    NOT_RUN_TEXT,
    STOP_KEY,
    WIND_DOWN_TEXT,
    Step,
    admit_llm_call,
    budget_text,
    check_on_exhausted,
    check_session,
    pricing_provider,
    record_conversation,
    session_for,
    settle_llm_call,
    starts_wind_down,
)

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator

    from pydantic_ai.capabilities.abstract import ValidatedToolArgs, WrapToolExecuteHandler
    from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
    from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.tools import RunContext, ToolDefinition
    from pydantic_ai.usage import RequestUsage

    from .._calls import LLMCall
    from .._handoff import Handoff
    from .._session import SessionBudget
    from ._common import Conversation

__all__ = ["BudgetCapability", "BudgetModel", "budget_stop_reason", "resume_messages"]

#: The name of Pydantic AI state in a handoff (``extra["framework_state"]["framework"]``).
FRAMEWORK = "pydantic_ai"


class BudgetModel(WrapperModel):
    """A model wrapper that charges each request to the current :class:`SessionBudget`.

    A request is admitted before it is sent, like ``@budget.llm_call``, and charged with the
    ``ModelResponse.usage`` Pydantic AI reports (the numbers it adds to ``result.usage()``),
    priced when the model is known. A streamed request is charged when its stream closes,
    with the usage received so far. :class:`BudgetCapability` applies it to every request.

    Args:
        wrapped: the model to charge, or a model name Pydantic AI can infer.
        session: charge this session; by default the innermost one active at each request.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        wrapped: Model | str,
        *,
        session: SessionBudget | None = None,
        on_exhausted: Literal["raise", "finish"] = "raise",
    ) -> None:
        super().__init__(wrapped)
        self.budget_session = check_session(session)
        self.on_exhausted: Literal["raise", "finish"] = on_exhausted
        check_on_exhausted(on_exhausted)

    def _admit(
        self, messages: list[ModelMessage]
    ) -> tuple[LLMCall | None, bool, Conversation | None]:
        """The admitted call, whether it is the wind-down's final request, and the
        conversation the session's handoff stores (these messages, then the answer)."""
        session = session_for(self.budget_session)
        if session is None:
            return None, False, None
        conversation = record_conversation(session, FRAMEWORK, list(messages), _messages_json)
        call, winding = admit_llm_call(
            session,
            self.wrapped.model_name,
            finish=self.on_exhausted == "finish",
            model=self.wrapped.model_name,
            provider=pricing_provider(self.wrapped.system),
            messages=messages,
        )
        return call, winding, conversation

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Admit the request (or raise ``BudgetExhausted``), send it, charge its usage."""
        call, winding, conversation = self._admit(messages)
        if call is None:
            return await self.wrapped.request(messages, model_settings, model_request_parameters)
        if winding:  # the final answer: no function tools offered
            model_request_parameters = replace(model_request_parameters, function_tools=[])
        try:
            response: ModelResponse = await await_marked(
                self.wrapped.request, (messages, model_settings, model_request_parameters), {}
            )
        except BaseException as exc:
            call.fail(exc)
            raise
        settle_llm_call(call, _usage_of(response.usage, response), result=response, streamed=False)
        if winding:
            metadata = dict(response.metadata or {})
            metadata[STOP_KEY] = WRAPUP_RESERVE
            response = replace(response, metadata=metadata)
        if conversation is not None:
            conversation.items.append(response)
        return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        """Admit the streamed request; charge the usage received when the stream closes."""
        call, winding, conversation = self._admit(messages)
        if winding:  # the final answer: no function tools offered
            model_request_parameters = replace(model_request_parameters, function_tools=[])
        stream_cm = self.wrapped.request_stream(
            messages, model_settings, model_request_parameters, run_context
        )
        if call is None:
            async with stream_cm as unbudgeted:
                yield unbudgeted
            return
        opened: StreamedResponse | None = None
        mark = Nesting.inside.set(True)  # while the request is sent (see Nesting)
        try:
            async with stream_cm as response_stream:
                Nesting.inside.reset(mark)
                opened = response_stream
                yield response_stream
        except BaseException as exc:
            if opened is None:  # the request itself failed
                Nesting.inside.reset(mark)
                call.fail(exc)
            else:  # tokens were received: charge them
                _settle_stream(call, opened, conversation)
            raise
        if opened is not None:
            _settle_stream(call, opened, conversation)


def _settle_stream(
    call: LLMCall, stream: StreamedResponse, conversation: Conversation | None
) -> None:
    response = stream.get()
    if conversation is not None:
        conversation.items.append(response)
    settle_llm_call(call, _usage_of(stream.usage, response), result=response, streamed=True)


def _messages_json(messages: list[ModelMessage]) -> object:
    """The conversation as ``ModelMessagesTypeAdapter`` JSON, every tool call of the last
    response answered (a tool the run never ran gets a return saying so)."""
    from pydantic_ai.messages import (
        ModelMessagesTypeAdapter,
        ModelRequest,
        ModelResponse,
        ToolCallPart,
        ToolReturnPart,
    )

    kept = list(messages)
    last = kept[-1] if kept else None
    if isinstance(last, ModelResponse):
        calls = [part for part in last.parts if isinstance(part, ToolCallPart)]
        if calls:
            returns = [
                ToolReturnPart(c.tool_name, NOT_RUN_TEXT, tool_call_id=c.tool_call_id)
                for c in calls
            ]
            kept.append(ModelRequest(parts=returns))
    return ModelMessagesTypeAdapter.dump_python(kept, mode="json")


def resume_messages(
    source: SessionBudget | Handoff | str | os.PathLike[str] | None = None,
) -> list[ModelMessage]:
    """The message history a stopped Pydantic AI run left in its handoff, to continue it.

    The :class:`BudgetModel` (so :class:`BudgetCapability`) stores, in the handoff, the
    messages of the run's latest model request and its response, as
    ``ModelMessagesTypeAdapter`` JSON. A tool call the run never answered gets a tool return
    saying it was not run, so the history ends with a request, which Pydantic AI sends as
    is when no new prompt is given::

        with SessionBudget.resume(path) as session:
            result = await agent.run(message_history=resume_messages(session))

    Args:
        source: the session resumed from the handoff (``SessionBudget.resume(path)``), the
            handoff's path, a :class:`~budgetkit.Handoff` (inline state only), or ``None``
            for the innermost active session.

    Raises:
        HandoffError: the handoff holds no Pydantic AI state, or its sidecar file is
            missing or was changed.

    .. versionadded:: 0.1.0
    """
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    from ..exceptions import HandoffError
    from ._common import source_state

    payload = source_state(source, FRAMEWORK)
    try:
        return ModelMessagesTypeAdapter.validate_python(payload)
    except Exception as exc:
        raise HandoffError(f"the handoff's Pydantic AI messages do not load: {exc}") from None


@dataclass
class BudgetCapability(AbstractCapability[Any]):
    """A Pydantic AI capability that charges an agent run to the current :class:`SessionBudget`.

    Every model request goes through a :class:`BudgetModel` (admitted before it is sent,
    charged with the usage Pydantic AI reports); every function tool call is one step,
    admitted before the tool runs. Exhaustion raises :class:`~budgetkit.BudgetExhausted`
    out of ``agent.run`` after the handoff is written; Pydantic AI does not turn it into a
    retry prompt. If tool code catches it, the next model request raises again: exhaustion
    is latched.

    Example::

        with SessionBudget(max_steps=20, max_usd=2):
            result = await agent.run("Plan the trip", capabilities=[BudgetCapability()])

    Args:
        session: charge this session; by default the innermost session active where each
            request or tool call starts.
        show_budget: add the session's ``status_line()`` to the instructions of every model
            request, so the model sees what is left.

    .. versionadded:: 0.1.0
    """

    session: SessionBudget | None = None
    show_budget: bool = False
    on_exhausted: Literal["raise", "finish"] = "raise"
    """``"finish"``: when the session reaches its wrap-up reserve (``reserve_for_wrapup``),
    the tool call that would use it is not run (the model is told to answer), and the next
    request is sent without function tools, so the run *returns* a final answer marked with
    the stop reason (:func:`budget_stop_reason`). ``"raise"`` (the default): the run raises
    ``BudgetExhausted``. A hard limit always raises."""
    """Show the model its budget: ``session.status_line()`` (what is left, and the phase) is
    added to the instructions of every request, computed when the request is made. The
    user's prompt is not changed."""

    def __post_init__(self) -> None:
        check_session(self.session)
        check_on_exhausted(self.on_exhausted)
        if not isinstance(self.show_budget, bool):
            from ..exceptions import BudgetTypeError

            raise BudgetTypeError(f"show_budget must be a bool, got {self.show_budget!r}")

    def get_instructions(self) -> Any:
        """With ``show_budget``, a dynamic instruction: the session's status line."""
        if not self.show_budget:
            return None
        explicit = self.session

        def budget_status(ctx: RunContext[Any]) -> str:
            return budget_text(explicit)

        return budget_status

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live session: not part of an agent spec

    def get_wrapper_model(self, model: Model) -> Model | None:
        """Charge every model request, whichever model serves it."""
        return BudgetModel(model, session=self.session, on_exhausted=self.on_exhausted)

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: ValidatedToolArgs,
        handler: WrapToolExecuteHandler,
    ) -> Any:
        """Admit the tool call as one step (or raise ``BudgetExhausted``), then run it."""
        session = session_for(self.session)
        if session is None:
            return await handler(args)
        try:
            step = Step(session, call.tool_name, args)
        except BudgetExhausted as exc:
            # A wind-down: the next request is the final answer, without tools.
            if not starts_wind_down(session, exc, self.on_exhausted == "finish"):
                raise
            return WIND_DOWN_TEXT
        try:
            result = await handler(args)
        except BaseException as exc:
            step.close(exc)
            raise
        step.close()
        return result


def budget_stop_reason(result: Any) -> str | None:
    """Why a run with ``on_exhausted="finish"`` wound down (``"wrapup_reserve"``), or ``None``
    for a run that finished by itself.

    Args:
        result: the ``AgentRunResult`` (or a ``ModelResponse``).
    """
    response = getattr(result, "response", result)
    metadata = getattr(response, "metadata", None)
    reason = metadata.get(STOP_KEY) if isinstance(metadata, dict) else None
    return reason if isinstance(reason, str) else None


def _usage_of(usage: RequestUsage, response: ModelResponse) -> Usage | None:
    """The request's usage; ``None`` when the model reported none (every count zero)."""
    if not (usage.input_tokens or usage.output_tokens):
        return None
    reasoning = usage.details.get("reasoning_tokens", 0) if usage.details else 0
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=reasoning if isinstance(reasoning, int) else 0,
        model=response.model_name or None,
        provider=pricing_provider(response.provider_name),
    )
