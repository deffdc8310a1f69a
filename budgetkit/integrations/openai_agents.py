"""OpenAI Agents SDK: run hooks that charge model responses and tool calls.

Usage::

    from budgetkit.integrations.openai_agents import BudgetRunHooks

    with SessionBudget(max_steps=20, max_usd=2):
        result = await Runner.run(agent, "Plan the trip", hooks=BudgetRunHooks())

The same hooks work with ``Runner.run_sync`` and ``Runner.run_streamed`` (the exhaustion is
then raised from ``stream_events()``).

Install with ``install budgetkit's [openai-agents] extra``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

try:
    from agents import Agent, AgentsException, ModelResponse, RunContextWrapper, RunHooks, Tool
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budgetkit.integrations.openai_agents needs the OpenAI Agents SDK: "
        "install budgetkit's [openai-agents] extra"
    ) from exc

from .._usage import Usage
from ..exceptions import BudgetExhausted
from ._common import Step, check_session, session_for, start_llm_call

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

    from .._calls import LLMCall
    from .._session import SessionBudget

__all__ = ["AgentsBudgetExhausted", "BudgetRunHooks"]

_Key = tuple[str, object, str]


class AgentsBudgetExhausted(BudgetExhausted, AgentsException):
    """The :class:`~budgetkit.BudgetExhausted` a :class:`BudgetRunHooks` raises.

    It is also an ``agents.AgentsException``: the Agents SDK re-raises its own exceptions
    unchanged (any other exception from a tool hook would reach the caller wrapped in a
    ``UserError``) and attaches the run's items so far as ``run_data``. Catch it as
    ``BudgetExhausted``.

    .. versionadded:: 0.1.0
    """


def _reraise(exc: BudgetExhausted) -> AgentsBudgetExhausted:
    error = AgentsBudgetExhausted(
        exc.reason,
        session_id=exc.session_id,
        usage=exc.usage,
        handoff=exc.handoff,
        handoff_path=exc.handoff_path,
        handoff_error=exc.handoff_error,
        message=exc.message,
    )
    for note in getattr(exc, "__notes__", ()):
        error.add_note(note)
    return error


class BudgetRunHooks(RunHooks[Any]):
    """``RunHooks`` that charge an Agents SDK run to the current :class:`SessionBudget`.

    Each model call is admitted in ``on_llm_start``, like ``@budget.llm_call``, and charged
    in ``on_llm_end`` with the ``ModelResponse.usage`` the SDK reports (the same numbers it
    adds to ``result.context_wrapper.usage``), priced when the agent's model is known. Each
    local tool call is one step, admitted in ``on_tool_start``.

    On exhaustion the hook raises :class:`AgentsBudgetExhausted`, a ``BudgetExhausted`` that
    ends the run: the SDK does not turn it into a tool result for the model, and the handoff
    is written. If tool code hits the budget itself (a ``@budget.step`` inside the tool) and
    the SDK's ``failure_error_function`` turns that into text for the model, the run still
    stops at the next model call: exhaustion is latched.

    Example::

        with SessionBudget(max_steps=20, max_usd=2):
            result = await Runner.run(agent, "Plan the trip", hooks=BudgetRunHooks())

    Args:
        session: charge this session; by default, the innermost session active where each
            call starts (runs outside any session are not charged).

    .. versionadded:: 0.1.0
    """

    def __init__(self, session: SessionBudget | None = None) -> None:
        self.session = check_session(session)
        self._llm_calls: defaultdict[int, list[tuple[object, LLMCall]]] = defaultdict(list)
        self._steps: defaultdict[_Key, list[Step]] = defaultdict(list)

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        """Admit the model call (or end the run with ``BudgetExhausted``)."""
        session = session_for(self.session)
        if session is None:
            return
        try:
            call = start_llm_call(
                session, agent.name, model=_model_name(agent.model), messages=input_items
            )
        except BudgetExhausted as exc:
            raise _reraise(exc) from None
        self._llm_calls[id(context)].append((context, call))

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        """Charge the call with the response's usage."""
        call = _pop(self._llm_calls, id(context), context)
        if call is None:
            return
        call.settle(call.fill(_usage_of(response)), result=response.output, streamed=False)

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        """Admit the tool call as one step (or end the run with ``BudgetExhausted``)."""
        session = session_for(self.session)
        if session is None:
            return
        try:
            step = Step(session, tool.name, getattr(context, "tool_arguments", None))
        except BudgetExhausted as exc:
            raise _reraise(exc) from None
        self._steps[_tool_key(context, tool)].append(step)

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        """The tool returned (an error the SDK turned into text counts as returned)."""
        key = _tool_key(context, tool)
        steps = self._steps.get(key)
        if not steps:
            return
        step = steps.pop(0)
        if not steps:
            del self._steps[key]
        step.close()

    def __repr__(self) -> str:
        bound = "current session" if self.session is None else repr(self.session)
        return f"<BudgetRunHooks charging {bound}>"


def _pop(
    pending: defaultdict[int, list[tuple[object, LLMCall]]], key: int, context: object
) -> LLMCall | None:
    calls = pending.get(key)
    if not calls:
        return None
    for i, (owner, call) in enumerate(calls):
        if owner is context:
            del calls[i]
            if not calls:
                del pending[key]
            return call
    return None


def _tool_key(context: object, tool: Tool) -> _Key:
    """Function tools get a ``ToolContext`` with the call id; other tools share the run's."""
    call_id = getattr(context, "tool_call_id", None)
    if isinstance(call_id, str) and call_id:
        return ("call", call_id, tool.name)
    return ("context", id(context), tool.name)


def _model_name(model: object) -> str | None:
    """The model an agent asks for, when it names one (``None``: the run's default)."""
    name = model if isinstance(model, str) else getattr(model, "model", None)
    if not isinstance(name, str) or not name:
        return None
    return name.removeprefix("litellm/")


def _usage_of(response: ModelResponse) -> Usage | None:
    """The response's usage; ``None`` when the model reported none (every count zero)."""
    u = response.usage
    if not (u.input_tokens or u.output_tokens or u.total_tokens):
        return None
    input_details = u.input_tokens_details
    output_details = u.output_tokens_details
    return Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=(getattr(input_details, "cached_tokens", 0) or 0),
        cache_write_tokens=(getattr(input_details, "cache_write_tokens", 0) or 0),
        reasoning_tokens=(getattr(output_details, "reasoning_tokens", 0) or 0),
    )
