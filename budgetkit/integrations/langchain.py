"""LangChain and LangGraph: a callback handler that charges model calls and tool runs.

Usage::

    from budgetkit.integrations.langchain import BudgetCallbackHandler

    with SessionBudget(max_steps=20, max_tokens=200_000):
        graph.invoke(inputs, config={"callbacks": [BudgetCallbackHandler()]})

Works the same with ``ainvoke``, ``stream`` and ``astream``, with LangGraph graphs, LangChain
``create_agent`` agents, plain chat models and tools: callbacks passed in ``config`` reach
every model and tool run inside.

Install with ``install budgetkit's [langchain] extra``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, LLMResult
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budgetkit.integrations.langchain needs langchain-core: budgetkit's [langchain] extra"
    ) from exc

try:  # LangChain v1 agents (the ``langchain`` package); the handler needs only langchain-core
    from langchain.agents.middleware import AgentMiddleware
except ImportError:  # pragma: no cover - depends on the environment
    AgentMiddleware = None  # type: ignore[assignment,misc]

from .._usage import Usage
from ..exceptions import BudgetExhausted
from ._common import (
    NOT_RUN_TEXT,
    STOP_KEY,
    WIND_DOWN_TEXT,
    Conversation,
    Step,
    ToolErrorReported,
    budget_text,
    check_on_exhausted,
    check_session,
    conversations,
    pricing_provider,
    record_conversation,
    session_for,
    settle_llm_call,
    start_llm_call,
    starts_wind_down,
    winding_down,
)

if TYPE_CHECKING:
    import os
    from uuid import UUID

    from langchain_core.messages import BaseMessage

    from .._calls import LLMCall
    from .._handoff import Handoff
    from .._session import SessionBudget

__all__ = ["BudgetCallbackHandler", "BudgetMiddleware", "budget_stop_reason", "resume_messages"]

#: The name of LangChain state in a handoff (``extra["framework_state"]["framework"]``).
FRAMEWORK = "langchain"

#: LangChain's callback manager logs every callback error at WARNING before re-raising it.
_MANAGER_LOG = "Error in %s.%s callback: %s"
_quiet_lock = threading.Lock()
#: ``repr()`` of the budgetkit stops being raised through the manager, not yet logged.
_quiet: dict[str, int] = {}


class _QuietStops(logging.Filter):
    """Drops the manager's "Error in BudgetCallbackHandler..." line for budgetkit's own stop
    (the exception propagates; it is not an error of the handler). Other lines pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg != _MANAGER_LOG or not isinstance(args, tuple) or len(args) != 3:
            return True
        text = args[2]
        if not isinstance(text, str):
            return True
        with _quiet_lock:
            left = _quiet.get(text)
            if not left:
                return True
            if left == 1:
                del _quiet[text]
            else:
                _quiet[text] = left - 1
        return False


def _stopping(exc: BudgetExhausted) -> None:
    """Note that LangChain's manager is about to log ``exc``: the filter drops that line."""
    with _quiet_lock:
        if len(_quiet) > 1_000:  # lines never logged (a caller without the manager)
            _quiet.clear()
        text = repr(exc)
        _quiet[text] = _quiet.get(text, 0) + 1


logging.getLogger("langchain_core.callbacks.manager").addFilter(_QuietStops())


class BudgetCallbackHandler(BaseCallbackHandler):
    """Charges each LangChain model call and tool run to the current :class:`SessionBudget`.

    A chat model (or LLM) call is admitted when it starts, like ``@budget.llm_call``, and
    charged when it ends with the ``usage_metadata`` the model reported (the same numbers
    LangChain's ``UsageMetadataCallbackHandler`` adds up), priced when the model is known.
    A tool run is one step, like ``@budget.step``.

    Exhaustion stops the run: the handler sets ``raise_error`` (LangChain otherwise logs and
    ignores callback errors), so the :class:`~budgetkit.BudgetExhausted` raised when a model
    call or tool run is refused propagates out of ``invoke``/``ainvoke``/``stream``, after
    the handoff is written. A tool that catches it and returns text does not keep the run
    going: exhaustion is latched, so the next model call raises again. (LangChain logs the
    refusal at WARNING, "Error in BudgetCallbackHandler...", before re-raising it; a logging
    filter on ``langchain_core.callbacks.manager`` drops that line for budgetkit's own stop.)

    The handler is synchronous and runs inline (``run_inline``), also in async runs: its work
    is a few counter updates, and LangChain drops the errors of async handlers called from
    synchronous runs, which would let an exhausted run continue.

    Example::

        with SessionBudget(max_steps=20, max_tokens=200_000):
            graph.invoke(inputs, config={"callbacks": [BudgetCallbackHandler()]})

    Args:
        session: charge this session; by default, the innermost session active where each
            call starts (calls made outside any session are not charged, like decorators).

    .. versionadded:: 0.1.0
    """

    raise_error: bool = True
    run_inline: bool = True

    def __init__(self, session: SessionBudget | None = None) -> None:
        super().__init__()
        self.session = check_session(session)
        self._llm_calls: dict[UUID, LLMCall] = {}
        self._steps: dict[UUID, Step] = {}
        self._conversations: dict[UUID, Conversation] = {}

    # ------------------------------------------------------------------ model calls
    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Admit the model call (or raise ``BudgetExhausted``); its messages become the
        conversation the session's handoff stores."""
        prompt: object = messages[0] if len(messages) == 1 else messages
        session = session_for(self.session)
        if session is not None and len(messages) == 1:
            self._conversations[run_id] = record_conversation(
                session, FRAMEWORK, list(messages[0]), _messages_json
            )
        try:
            self._start_llm(serialized, prompt, run_id, metadata, kwargs)
        except BaseException:
            self._conversations.pop(run_id, None)
            raise

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Admit a (non-chat) LLM call (or raise ``BudgetExhausted``)."""
        prompt: object = prompts[0] if len(prompts) == 1 else prompts
        self._start_llm(serialized, prompt, run_id, metadata, kwargs)

    def _start_llm(
        self,
        serialized: Mapping[str, Any] | None,
        prompt: object,
        run_id: UUID,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        session = session_for(self.session)
        if session is None:
            return
        meta = metadata or {}
        params = kwargs.get("invocation_params")
        params = params if isinstance(params, Mapping) else {}
        model = _first_str(params.get("model"), params.get("model_name"), meta.get("ls_model_name"))
        provider = _first_str(meta.get("ls_provider"))
        name = _first_str(kwargs.get("name"), _serialized_name(serialized), model) or "llm"
        try:
            self._llm_calls[run_id] = start_llm_call(
                session,
                name,
                model=model,
                provider=pricing_provider(provider),
                messages=prompt,
                wrapup=session.budget in winding_down,
            )
        except BudgetExhausted as exc:
            _stopping(exc)
            raise

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Charge the call with the usage the model reported."""
        conversation = self._conversations.pop(run_id, None)
        call = self._llm_calls.pop(run_id, None)
        if call is None:
            return
        usage, output = _usage_of(response, call.spec.provider)
        if conversation is not None and isinstance(output, AIMessage):
            conversation.items.append(output)
        settle_llm_call(call, usage, result=output, streamed=False)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """The call failed: release it and count the error."""
        self._conversations.pop(run_id, None)
        call = self._llm_calls.pop(run_id, None)
        if call is not None:
            call.fail(error)

    # ------------------------------------------------------------------ tool runs
    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Admit the tool run as one step (or raise ``BudgetExhausted``)."""
        session = session_for(self.session)
        if session is None:
            return
        name = _first_str(kwargs.get("name"), _serialized_name(serialized)) or "tool"
        try:
            self._steps[run_id] = Step(session, name, inputs if inputs is not None else input_str)
        except BudgetExhausted as exc:
            _stopping(exc)
            raise

    def on_tool_end(
        self,
        output: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """The tool run returned; an error ``ToolMessage`` (``handle_tool_error``) is a failure."""
        step = self._steps.pop(run_id, None)
        if step is not None:
            if isinstance(output, ToolMessage):
                conversation = conversations.get(step.session.budget)
                if conversation is not None:
                    conversation.items.append(output)
            step.close(_reported_error(output))

    def on_tool_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """The tool run raised: count the error (budget errors excepted)."""
        step = self._steps.pop(run_id, None)
        if step is not None:
            step.close(error)

    def __repr__(self) -> str:
        bound = "current session" if self.session is None else repr(self.session)
        return f"<BudgetCallbackHandler charging {bound}>"


def _with_status(request: Any, session: SessionBudget | None) -> Any:
    """The model request with the budget's status line appended to its system message."""
    from langchain_core.messages import SystemMessage

    status = budget_text(session)
    if not status:
        return request
    current = request.system_message
    text = current.text if current is not None else ""
    content = f"{text}\n\n{status}" if text else status
    return request.override(system_message=SystemMessage(content=content))


if AgentMiddleware is not None:

    class BudgetMiddleware(AgentMiddleware):
        """LangChain v1 agent middleware that shows the model its budget on every call.

        ``create_agent(model, tools, middleware=[BudgetMiddleware()])``: before each model
        call, the session's ``status_line()`` (what is left, and the phase) is appended to the
        system message the model receives; the user's messages and the agent's state are not
        changed. Charging is still the :class:`BudgetCallbackHandler`'s job.

        With ``on_exhausted="finish"`` and a session ``reserve_for_wrapup``, the wrap-up
        reserve ends the run with an answer instead of an exception: the tool call that would
        use the reserve is not run (the model reads that it should answer now), the next
        model call is made with no tools, and ``invoke`` returns; the answer's
        ``response_metadata`` carries the stop reason (:func:`budget_stop_reason`).

        Args:
            session: show this session; by default the innermost active one.
            show_budget: append the status line to the system message (default ``True``).
            on_exhausted: ``"raise"`` (the default) or ``"finish"`` (above). A hard limit
                always raises.

        .. versionadded:: 0.1.0
        """

        def __init__(
            self,
            session: SessionBudget | None = None,
            *,
            show_budget: bool = True,
            on_exhausted: Literal["raise", "finish"] = "raise",
        ) -> None:
            super().__init__()
            self.session = check_session(session)
            self.show_budget = show_budget
            check_on_exhausted(on_exhausted)
            self.on_exhausted = on_exhausted

        def _request(self, request: Any) -> tuple[Any, bool]:
            winding = self._winding()
            if self.show_budget:
                request = _with_status(request, self.session)
            if winding:
                request = request.override(tools=[])
            return request, winding

        def _winding(self) -> bool:
            session = session_for(self.session)
            return (
                self.on_exhausted == "finish"
                and session is not None
                and session.budget in winding_down
            )

        def _stop(self, exc: BudgetExhausted) -> bool:
            """Whether ``exc`` starts the wind-down (else it is raised)."""
            return starts_wind_down(session_for(self.session), exc, self.on_exhausted == "finish")

        def wrap_model_call(self, request: Any, handler: Any) -> Any:
            """Call the model with the status line in its system message; while winding
            down, with no tools, and mark the answer."""
            changed, winding = self._request(request)
            try:
                response = handler(changed)
            except BudgetExhausted as exc:
                if winding or not self._stop(exc):
                    raise
                changed, winding = self._request(request)
                response = handler(changed)
            return _marked(response) if winding else response

        async def awrap_model_call(self, request: Any, handler: Any) -> Any:
            """Async :meth:`wrap_model_call`."""
            changed, winding = self._request(request)
            try:
                response = await handler(changed)
            except BudgetExhausted as exc:
                if winding or not self._stop(exc):
                    raise
                changed, winding = self._request(request)
                response = await handler(changed)
            return _marked(response) if winding else response

        def wrap_tool_call(self, request: Any, handler: Any) -> Any:
            """Run the tool; a call refused by the wrap-up reserve starts the wind-down."""
            try:
                return handler(request)
            except BudgetExhausted as exc:
                if not self._stop(exc):
                    raise
                return _wind_down_message(request)

        async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
            """Async :meth:`wrap_tool_call`."""
            try:
                return await handler(request)
            except BudgetExhausted as exc:
                if not self._stop(exc):
                    raise
                return _wind_down_message(request)


def _wind_down_message(request: Any) -> ToolMessage:
    call = request.tool_call
    return ToolMessage(content=WIND_DOWN_TEXT, tool_call_id=call["id"], name=call["name"])


def _marked(response: Any) -> Any:
    """The model's answer with ``response_metadata["budgetkit_stop_reason"]`` set."""
    messages = list(getattr(response, "result", None) or [])
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, AIMessage):
            metadata = {**message.response_metadata, STOP_KEY: "wrapup_reserve"}
            messages[i] = message.model_copy(update={"response_metadata": metadata})
            return dataclasses.replace(response, result=messages)
    if isinstance(response, AIMessage):
        metadata = {**response.response_metadata, STOP_KEY: "wrapup_reserve"}
        return response.model_copy(update={"response_metadata": metadata})
    return response


def budget_stop_reason(state: Any) -> str | None:
    """Why an agent run with ``BudgetMiddleware(on_exhausted="finish")`` wound down
    (``"wrapup_reserve"``), or ``None`` for a run that finished by itself.

    Args:
        state: the agent's result (``{"messages": [...]}``) or its last message.
    """
    message = state
    if isinstance(state, Mapping):
        messages = state.get("messages") or []
        message = messages[-1] if messages else None
    metadata = getattr(message, "response_metadata", None)
    reason = metadata.get(STOP_KEY) if isinstance(metadata, Mapping) else None
    return reason if isinstance(reason, str) else None


def _messages_json(messages: list[BaseMessage]) -> object:
    """The conversation as LangChain's message dicts: without the leading system messages
    (the agent adds its own again), every tool call of the last answer answered."""
    from langchain_core.messages import SystemMessage, messages_to_dict

    start = 0
    while start < len(messages) and isinstance(messages[start], SystemMessage):
        start += 1
    kept = list(messages[start:])
    last = next((i for i in range(len(kept) - 1, -1, -1) if isinstance(kept[i], AIMessage)), None)
    if last is not None:
        answer = kept[last]
        assert isinstance(answer, AIMessage)
        answered = {m.tool_call_id for m in kept[last + 1 :] if isinstance(m, ToolMessage)}
        for call in answer.tool_calls:
            if call.get("id") and call["id"] not in answered:
                kept.append(
                    ToolMessage(
                        content=NOT_RUN_TEXT,
                        tool_call_id=call["id"],
                        name=call["name"],
                        status="error",
                    )
                )
    return messages_to_dict(kept)


def resume_messages(
    source: SessionBudget | Handoff | str | os.PathLike[str] | None = None,
) -> list[BaseMessage]:
    """The conversation a stopped LangChain run left in its handoff, to continue it.

    The :class:`BudgetCallbackHandler` stores, in the handoff, the messages of the run's
    latest model call, that call's answer and the tool results after it (the leading system
    messages excepted: the agent adds its own). A tool call the run never answered gets a
    ``ToolMessage(status="error")`` saying it was not run. Continue with::

        with SessionBudget.resume(path) as session:
            agent.invoke({"messages": resume_messages(session)}, config=config)

    Args:
        source: the session resumed from the handoff (``SessionBudget.resume(path)``), the
            handoff's path, a :class:`~budgetkit.Handoff` (inline state only), or ``None``
            for the innermost active session.

    Raises:
        HandoffError: the handoff holds no LangChain state, or its sidecar file is missing
            or was changed.

    .. versionadded:: 0.1.0
    """
    from langchain_core.messages import messages_from_dict

    from ..exceptions import HandoffError
    from ._common import source_state

    payload = source_state(source, FRAMEWORK)
    try:
        return messages_from_dict(payload)  # type: ignore[arg-type]
    except Exception as exc:
        raise HandoffError(f"the handoff's LangChain messages do not load: {exc}") from None


def _usage_of(response: LLMResult, provider: str | None) -> tuple[Usage | None, object]:
    """The usage LangChain reports for one call, and the output message (for spans).

    The first generation's ``usage_metadata``, as LangChain's own usage callbacks read it
    (providers that return several candidates put the call's usage on each one); for
    completion-style LLMs, ``llm_output["token_usage"]``.
    """
    generation = (
        response.generations[0][0] if response.generations and response.generations[0] else None
    )
    output: object = generation.text if generation is not None else None
    if isinstance(generation, ChatGeneration):
        message = generation.message
        output = message
        metadata = message.usage_metadata if isinstance(message, AIMessage) else None
        if metadata is not None:
            input_details: Mapping[str, Any] = metadata.get("input_token_details") or {}
            output_details: Mapping[str, Any] = metadata.get("output_token_details") or {}
            model = _first_str(
                message.response_metadata.get("model_name"),
                message.response_metadata.get("model"),
            )
            return Usage(
                input_tokens=metadata.get("input_tokens", 0),
                output_tokens=metadata.get("output_tokens", 0),
                cache_read_tokens=input_details.get("cache_read", 0) or 0,
                cache_write_tokens=input_details.get("cache_creation", 0) or 0,
                reasoning_tokens=output_details.get("reasoning", 0) or 0,
                model=model,
                provider=provider,
            ), output
    llm_output = response.llm_output or {}
    block = llm_output.get("token_usage") or llm_output.get("usage")
    if isinstance(block, Mapping) and block:
        from .._extract import MalformedUsageError, extract_usage

        model = _first_str(llm_output.get("model_name"), llm_output.get("model"))
        try:
            return extract_usage(block, model=model, provider=provider), output
        except MalformedUsageError:  # counted as unmeasured (and warned about) when settled
            return None, output
    return None, output


def _reported_error(output: Any) -> ToolErrorReported | None:
    """The failure a tool's handled error left in its output: ``ToolMessage(status="error")``."""
    if isinstance(output, ToolMessage) and output.status == "error":
        text = output.content if isinstance(output.content, str) else str(output.content)
        return ToolErrorReported(text)
    return None


def _serialized_name(serialized: Mapping[str, Any] | None) -> str | None:
    if not serialized:
        return None
    name = serialized.get("name")
    if isinstance(name, str) and name:
        return name
    ids = serialized.get("id")
    if isinstance(ids, Sequence) and ids and isinstance(ids[-1], str):
        return ids[-1]
    return None


def _first_str(*values: object) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return None
