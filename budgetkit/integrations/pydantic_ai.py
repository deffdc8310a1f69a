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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.models.wrapper import WrapperModel
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budgetkit.integrations.pydantic_ai needs Pydantic AI: budgetkit's [pydantic-ai] extra"
    ) from exc

from .._calls import Nesting, await_marked
from .._usage import Usage
from ._common import Step, check_session, pricing_provider, session_for, start_llm_call

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pydantic_ai.capabilities.abstract import ValidatedToolArgs, WrapToolExecuteHandler
    from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
    from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.tools import RunContext, ToolDefinition
    from pydantic_ai.usage import RequestUsage

    from .._calls import LLMCall
    from .._session import SessionBudget

__all__ = ["BudgetCapability", "BudgetModel"]


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

    def __init__(self, wrapped: Model | str, *, session: SessionBudget | None = None) -> None:
        super().__init__(wrapped)
        self.budget_session = check_session(session)

    def _admit(self, messages: list[ModelMessage]) -> LLMCall | None:
        session = session_for(self.budget_session)
        if session is None:
            return None
        return start_llm_call(
            session,
            self.wrapped.model_name,
            model=self.wrapped.model_name,
            provider=pricing_provider(self.wrapped.system),
            messages=messages,
        )

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """Admit the request (or raise ``BudgetExhausted``), send it, charge its usage."""
        call = self._admit(messages)
        if call is None:
            return await self.wrapped.request(messages, model_settings, model_request_parameters)
        try:
            response: ModelResponse = await await_marked(
                self.wrapped.request, (messages, model_settings, model_request_parameters), {}
            )
        except BaseException as exc:
            call.fail(exc)
            raise
        call.settle(call.fill(_usage_of(response.usage, response)), result=response, streamed=False)
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
        call = self._admit(messages)
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
                _settle_stream(call, opened)
            raise
        if opened is not None:
            _settle_stream(call, opened)


def _settle_stream(call: LLMCall, stream: StreamedResponse) -> None:
    response = stream.get()
    call.settle(call.fill(_usage_of(stream.usage, response)), result=response, streamed=True)


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

    .. versionadded:: 0.1.0
    """

    session: SessionBudget | None = None

    def __post_init__(self) -> None:
        check_session(self.session)

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live session: not part of an agent spec

    def get_wrapper_model(self, model: Model) -> Model | None:
        """Charge every model request, whichever model serves it."""
        return BudgetModel(model, session=self.session)

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
        step = Step(session, call.tool_name, args)
        try:
            result = await handler(args)
        except BaseException as exc:
            step.close(exc)
            raise
        step.close()
        return result


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
