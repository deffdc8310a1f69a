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

import dataclasses
import inspect
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal

try:
    from agents import (
        Agent,
        AgentsException,
        FunctionTool,
        Model,
        ModelResponse,
        ModelSettings,
        RunConfig,
        RunContextWrapper,
        RunHooks,
        Runner,
        Tool,
        ToolGuardrailFunctionOutput,
        ToolInputGuardrail,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budgetkit.integrations.openai_agents needs the OpenAI Agents SDK: "
        "install budgetkit's [openai-agents] extra"
    ) from exc

from .._policy import WRAPUP_RESERVE
from .._usage import Usage
from ..exceptions import BudgetExhausted
from ._common import (
    NOT_RUN_TEXT,
    WIND_DOWN_TEXT,
    Step,
    ToolErrorReported,
    admit_llm_call,
    budget_text,
    check_on_exhausted,
    check_session,
    conversations,
    record_conversation,
    session_for,
    settle_llm_call,
    starts_wind_down,
    winding_down,
)

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Awaitable, Callable

    from agents import RunResult, RunResultStreaming
    from agents.items import TResponseInputItem, TResponseStreamEvent
    from agents.tool_guardrails import ToolInputGuardrailData

    from .._calls import LLMCall
    from .._handoff import Handoff
    from .._session import SessionBudget

__all__ = [
    "AgentsBudgetExhausted",
    "BudgetRunHooks",
    "budget_instructions",
    "budget_stop_reason",
    "resume_input",
    "run_streamed_within_budget",
    "run_within_budget",
]

#: The name of Agents SDK state in a handoff (``extra["framework_state"]["framework"]``).
FRAMEWORK = "openai_agents"

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
        on_exhausted: ``"raise"`` (the default), or ``"finish"``: a model call refused by
            the wrap-up reserve is admitted from the reserve instead. The rest of the
            wind-down (the refused tool call skipped, the last call made without tools)
            needs the agent prepared by :func:`run_within_budget`.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        session: SessionBudget | None = None,
        *,
        on_exhausted: Literal["raise", "finish"] = "raise",
    ) -> None:
        self.session = check_session(session)
        check_on_exhausted(on_exhausted)
        self.on_exhausted: Literal["raise", "finish"] = on_exhausted
        self._llm_calls: defaultdict[int, list[tuple[object, LLMCall]]] = defaultdict(list)
        self._steps: defaultdict[_Key, list[Step]] = defaultdict(list)
        #: Tool calls already admitted by the wind-down's guardrail, by call id.
        self._admitted: dict[str, Step] = {}

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
        record_conversation(session, FRAMEWORK, list(input_items), _items_json)
        try:
            call, winding = admit_llm_call(
                session,
                agent.name,
                finish=self.on_exhausted == "finish",
                model=_model_name(agent.model),
                messages=input_items,
            )
        except BudgetExhausted as exc:
            raise _reraise(exc) from None
        if winding:  # this run ends with the answer to this call
            _mark(context, WRAPUP_RESERVE)
        self._llm_calls[id(context)].append((context, call))

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        """Charge the call with the response's usage."""
        call = _pop(self._llm_calls, id(context), context)
        if call is None:
            return
        conversation = conversations.get(call.session.budget)
        if conversation is not None:
            conversation.items.extend(response.to_input_items())
        settle_llm_call(call, _usage_of(response), result=response.output, streamed=False)

    async def on_tool_start(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool
    ) -> None:
        """Admit the tool call as one step (or end the run with ``BudgetExhausted``)."""
        session = session_for(self.session)
        if session is None:
            return
        call_id = getattr(context, "tool_call_id", None)
        step = self._admitted.pop(call_id, None) if isinstance(call_id, str) else None
        if step is None:
            try:
                step = Step(session, tool.name, getattr(context, "tool_arguments", None))
            except BudgetExhausted as exc:
                raise _reraise(exc) from None
        self._steps[_tool_key(context, tool)].append(step)

    async def _wind_down_guard(self, data: ToolInputGuardrailData) -> Any:
        """A tool input guardrail: admit the call as a step; a call refused by the wrap-up
        reserve is not run (the model reads that it should answer now)."""
        session = session_for(self.session)
        context = data.context
        call_id = getattr(context, "tool_call_id", None)
        if session is None or not isinstance(call_id, str):
            return ToolGuardrailFunctionOutput.allow()
        try:
            step = Step(session, context.tool_name, getattr(context, "tool_arguments", None))
        except BudgetExhausted as exc:
            # The guard is installed for on_exhausted="finish" only; a wind-down makes the
            # next model call without tools. Any other refusal: on_tool_start raises it again.
            if not starts_wind_down(session, exc, finish=True):
                return ToolGuardrailFunctionOutput.allow()
            return ToolGuardrailFunctionOutput.reject_content(WIND_DOWN_TEXT)
        self._admitted[call_id] = step
        return ToolGuardrailFunctionOutput.allow()

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        """The tool returned; the SDK's failure text for a tool that raised is a failure."""
        key = _tool_key(context, tool)
        steps = self._steps.get(key)
        if not steps:
            return
        step = steps.pop(0)
        if not steps:
            del self._steps[key]
        step.close(_reported_error(result))

    def __repr__(self) -> str:
        bound = "current session" if self.session is None else repr(self.session)
        return f"<BudgetRunHooks charging {bound}>"


class _WindDownModel(Model):
    """The agent's model; once its session winds down, called with no tools, no handoffs
    and no ``tool_choice``."""

    def __init__(self, wrapped: Model, session: SessionBudget | None) -> None:
        self.wrapped = wrapped
        self.budget_session = session

    def _winding(self) -> bool:
        session = session_for(self.budget_session)
        return session is not None and session.budget in winding_down

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        if self._winding():
            args, kwargs = _without_tools(args, kwargs)
        return await self.wrapped.get_response(*args, **kwargs)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        if self._winding():
            args, kwargs = _without_tools(args, kwargs)
        return self.wrapped.stream_response(*args, **kwargs)

    async def close(self) -> None:
        await self.wrapped.close()


#: The ``id()`` of the run contexts (``RunContextWrapper``) of runs a wind-down ended, and why.
_stopped: dict[int, str] = {}


def _mark(context: object, reason: str) -> None:
    key = id(context)
    if key not in _stopped:
        weakref.finalize(context, _stopped.pop, key, None)
    _stopped[key] = reason


_TOOLS_AT = {"model_settings": 2, "tools": 3, "handoffs": 5}


def _without_tools(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``Model.get_response`` arguments with no tools, no handoffs, no ``tool_choice``."""
    values = list(args)
    for name, at in _TOOLS_AT.items():
        current = values[at] if at < len(values) else kwargs.get(name)
        if name == "model_settings":
            settings = current if isinstance(current, ModelSettings) else ModelSettings()
            new: Any = dataclasses.replace(settings, tool_choice=None, parallel_tool_calls=None)
        else:
            new = []
        if at < len(values):
            values[at] = new
        else:
            kwargs = {**kwargs, name: new}
    return tuple(values), kwargs


async def run_within_budget(
    agent: Agent[Any],
    input: str | list[TResponseInputItem],
    *,
    session: SessionBudget | None = None,
    on_exhausted: Literal["raise", "finish"] = "raise",
    hooks: BudgetRunHooks | None = None,
    **runner_kwargs: Any,
) -> RunResult:
    """``Runner.run`` charged to the session, that can end with an answer at the budget.

    With ``on_exhausted="finish"`` and a session ``reserve_for_wrapup``: the tool call that
    would use the wrap-up reserve is not run (a tool input guardrail rejects it, so the
    model reads that it should answer now), the next model call is made with no tools and
    no handoffs, and the run *returns* that answer; :func:`budget_stop_reason` of the result
    is ``"wrapup_reserve"``. A hard limit still raises. ``"raise"`` (the default) is
    ``Runner.run(agent, input, hooks=BudgetRunHooks())``.

    The wind-down prepares ``agent`` (a clone, with its model wrapped and a guardrail on its
    function tools): agents it hands off to are charged, but their tools are not skipped.

    Args:
        agent: the starting agent.
        input: the input, as for ``Runner.run``.
        session: charge this session; by default the innermost active one.
        on_exhausted: ``"raise"`` or ``"finish"`` (above).
        hooks: the :class:`BudgetRunHooks` to use (default: new ones).
        runner_kwargs: passed to ``Runner.run`` (``run_config``, ``max_turns``, ...).

    .. versionadded:: 0.1.0
    """
    hooks = _hooks_for(hooks, session, on_exhausted)
    if on_exhausted == "finish":
        agent, runner_kwargs = _winding_agent(agent, hooks, runner_kwargs)
    return await Runner.run(agent, input, hooks=hooks, **runner_kwargs)


def run_streamed_within_budget(
    agent: Agent[Any],
    input: str | list[TResponseInputItem],
    *,
    session: SessionBudget | None = None,
    on_exhausted: Literal["raise", "finish"] = "raise",
    hooks: BudgetRunHooks | None = None,
    **runner_kwargs: Any,
) -> RunResultStreaming:
    """:func:`run_within_budget` for ``Runner.run_streamed``: returns the streaming result
    (consume ``stream_events()``; a budget stop is raised from it).

    .. versionadded:: 0.1.0
    """
    hooks = _hooks_for(hooks, session, on_exhausted)
    if on_exhausted == "finish":
        agent, runner_kwargs = _winding_agent(agent, hooks, runner_kwargs)
    return Runner.run_streamed(agent, input, hooks=hooks, **runner_kwargs)


def _hooks_for(
    hooks: BudgetRunHooks | None, session: SessionBudget | None, on_exhausted: str
) -> BudgetRunHooks:
    check_on_exhausted(on_exhausted)
    if hooks is None:
        return BudgetRunHooks(
            session, on_exhausted="finish" if on_exhausted == "finish" else "raise"
        )
    if hooks.on_exhausted != on_exhausted:
        from ..exceptions import BudgetConfigError

        raise BudgetConfigError("hooks= has another on_exhausted than the run's")
    return hooks


def _winding_agent(
    agent: Agent[Any], hooks: BudgetRunHooks, kwargs: dict[str, Any]
) -> tuple[Agent[Any], dict[str, Any]]:
    """``agent`` with its model able to answer without tools, and a guardrail on its
    function tools that skips the call the wrap-up reserve refuses."""
    guard: ToolInputGuardrail[Any] = ToolInputGuardrail(
        guardrail_function=hooks._wind_down_guard,  # noqa: SLF001 - this module's own
        name="budgetkit_wind_down",
    )
    tools = [
        dataclasses.replace(
            tool, tool_input_guardrails=[*(tool.tool_input_guardrails or []), guard]
        )
        if isinstance(tool, FunctionTool)
        else tool
        for tool in agent.tools
    ]
    config = kwargs.get("run_config") or RunConfig()
    if config.model is not None:  # it overrides every agent's model
        base = config.model
        if not isinstance(base, Model):
            base = config.model_provider.get_model(base)
        wrapped = _WindDownModel(base, hooks.session)
        return agent.clone(tools=tools), {
            **kwargs,
            "run_config": dataclasses.replace(config, model=wrapped),
        }
    model = agent.model
    if not isinstance(model, Model):
        model = config.model_provider.get_model(model or None)
    return agent.clone(tools=tools, model=_WindDownModel(model, hooks.session)), kwargs


def budget_stop_reason(result: Any) -> str | None:
    """Why a :func:`run_within_budget` run with ``on_exhausted="finish"`` wound down
    (``"wrapup_reserve"``), or ``None`` for a run that finished by itself.

    Args:
        result: the ``RunResult`` (or ``RunResultStreaming``).

    .. versionadded:: 0.1.0
    """
    context = getattr(result, "context_wrapper", None)
    return None if context is None else _stopped.get(id(context))


def _default_failure_text() -> str | None:
    """What the SDK's default ``failure_error_function`` tells the model."""
    try:
        from agents.tool import default_tool_error_function

        text = default_tool_error_function(None, RuntimeError())  # type: ignore[arg-type]
    except Exception:  # pragma: no cover - depends on the SDK version
        return None
    return text if isinstance(text, str) and text else None


_FAILURE_TEXT = _default_failure_text()


def _reported_error(result: object) -> ToolErrorReported | None:
    """A tool failure the SDK turned into its default failure text for the model.

    A custom ``failure_error_function`` (or ``RunConfig.tool_error_formatter``) writes its
    own text, which cannot be told from a result; let it raise to count the failure.
    """
    if _FAILURE_TEXT is not None and isinstance(result, str) and result.startswith(_FAILURE_TEXT):
        return ToolErrorReported(result)
    return None


def budget_instructions(
    instructions: str | Callable[[RunContextWrapper[Any], Agent[Any]], Any] | None = None,
    *,
    session: SessionBudget | None = None,
) -> Callable[[RunContextWrapper[Any], Agent[Any]], Awaitable[str]]:
    """Dynamic ``instructions`` that show the model its budget on every turn.

    ``Agent(instructions=budget_instructions("You are a researcher."))``: the SDK calls it
    before each model request, and the model reads your instructions followed by the
    session's ``status_line()`` (what is left, and the phase). The user's input is not
    changed.

    Args:
        instructions: your instructions: a string, or the SDK's dynamic form (a function of
            ``(context, agent)``, sync or async); ``None`` for the status line alone.
        session: show this session; by default the innermost active one.

    .. versionadded:: 0.1.0
    """
    check_session(session)
    if instructions is not None and not (isinstance(instructions, str) or callable(instructions)):
        from ..exceptions import BudgetTypeError

        raise BudgetTypeError(
            f"instructions must be a str, a function or None, got {instructions!r}"
        )

    async def with_budget(context: RunContextWrapper[Any], agent: Agent[Any]) -> str:
        base: object = instructions
        if callable(instructions):
            base = instructions(context, agent)
            if inspect.isawaitable(base):
                base = await base
        status = budget_text(session)
        text = base if isinstance(base, str) else ""
        return f"{text}\n\n{status}" if text and status else (text or status)

    return with_budget


def _items_json(items: list[Any]) -> object:
    """The input items as JSON, every function call answered (a call the run never ran
    gets an output saying so)."""
    from pydantic_core import to_jsonable_python

    kept: list[Any] = to_jsonable_python(items)
    answered = {
        item.get("call_id")
        for item in kept
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    }
    for item in list(kept):
        if isinstance(item, dict) and item.get("type") == "function_call":
            call_id = item.get("call_id")
            if call_id not in answered:
                kept.append(
                    {"type": "function_call_output", "call_id": call_id, "output": NOT_RUN_TEXT}
                )
    return kept


def resume_input(
    source: SessionBudget | Handoff | str | os.PathLike[str] | None = None,
) -> list[TResponseInputItem]:
    """The input items a stopped Agents SDK run left in its handoff, to continue it.

    :class:`BudgetRunHooks` stores, in the handoff, the input items of the run's latest model
    call (the original input and the items generated so far) and that call's output. A
    function call the run never ran gets an output saying so. Continue with::

        with SessionBudget.resume(path) as session:
            result = await Runner.run(agent, resume_input(session), hooks=BudgetRunHooks())

    Args:
        source: the session resumed from the handoff (``SessionBudget.resume(path)``), the
            handoff's path, a :class:`~budgetkit.Handoff` (inline state only), or ``None``
            for the innermost active session.

    Raises:
        HandoffError: the handoff holds no Agents SDK state, or its sidecar file is missing
            or was changed.

    .. versionadded:: 0.1.0
    """
    from ..exceptions import HandoffError
    from ._common import source_state

    payload = source_state(source, FRAMEWORK)
    if not isinstance(payload, list) or not all(isinstance(item, dict) for item in payload):
        raise HandoffError("the handoff's Agents SDK state is not a list of input items")
    return payload


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
