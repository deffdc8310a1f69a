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

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, LLMResult
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budgetkit.integrations.langchain needs langchain-core: budgetkit's [langchain] extra"
    ) from exc

from .._usage import Usage
from ._common import Step, check_session, pricing_provider, session_for, start_llm_call

if TYPE_CHECKING:
    from uuid import UUID

    from langchain_core.messages import BaseMessage

    from .._calls import LLMCall
    from .._session import SessionBudget

__all__ = ["BudgetCallbackHandler"]


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
    refusal at WARNING, "Error in BudgetCallbackHandler...", before re-raising it.)

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
        """Admit the model call (or raise ``BudgetExhausted``)."""
        prompt: object = messages[0] if len(messages) == 1 else messages
        self._start_llm(serialized, prompt, run_id, metadata, kwargs)

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
        self._llm_calls[run_id] = start_llm_call(
            session, name, model=model, provider=pricing_provider(provider), messages=prompt
        )

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
        call = self._llm_calls.pop(run_id, None)
        if call is None:
            return
        usage, output = _usage_of(response, call.spec.provider)
        call.settle(call.fill(usage), result=output, streamed=False)

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
        self._steps[run_id] = Step(session, name, inputs if inputs is not None else input_str)

    def on_tool_end(
        self,
        output: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """The tool run returned."""
        step = self._steps.pop(run_id, None)
        if step is not None:
            step.close()

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
