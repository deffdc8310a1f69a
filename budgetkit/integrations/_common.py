"""What the framework adapters share: steps and LLM calls opened from hooks, not decorators.

A framework reports the start and the end of a call in two callbacks, so the adapters hold
the open :class:`Step` or :class:`~budgetkit._calls.LLMCall` between them. Opening one is
the step boundary: it admits the call against every limit or raises
:class:`~budgetkit.BudgetExhausted`, exactly as ``@budget.step`` / ``@budget.llm_call`` do.
"""

from __future__ import annotations

import functools
import json
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .._boundary import Boundary, active
from .._calls import LLMCall, enter_step, exit_step
from .._policy import WRAPUP_RESERVE
from .._session import SessionBudget
from .._values import LLM, STEP, CallSpec
from ..exceptions import BudgetExhausted, BudgetTypeError

__all__ = [
    "NOT_RUN_TEXT",
    "Conversation",
    "Step",
    "ToolErrorReported",
    "budget_text",
    "check_session",
    "conversations",
    "pricing_provider",
    "record_conversation",
    "session_for",
    "settle_llm_call",
    "source_state",
    "start_llm_call",
]


class ToolErrorReported(Exception):  # noqa: N818 - names what happened, like StopIteration
    """A tool call failed and the framework turned the failure into a message for the model.

    Frameworks catch a tool's exception and hand its text back to the model (LangChain's
    ``ToolMessage(status="error")``, OpenAI Agents' tool failure output, Pydantic AI's
    ``ModelRetry``). The adapter closes the step with this error, so it counts toward
    ``max_consecutive_errors`` and marks the tool's span as failed.
    """


def check_session(session: object) -> SessionBudget | None:
    """Validate an adapter's ``session=`` argument."""
    if session is not None and not isinstance(session, SessionBudget):
        raise BudgetTypeError(f"session must be a SessionBudget or None, got {session!r}")
    return session


def session_for(explicit: SessionBudget | None) -> Boundary | None:
    """The session to charge: the adapter's own, else the innermost active one of this context."""
    return explicit.boundary if explicit is not None else active.get()


class Step:
    """One admitted tool call, open until the framework reports its end."""

    __slots__ = ("handle", "session", "spec")

    def __init__(self, session: Boundary, name: str, arguments: object = None) -> None:
        self.session = session
        self.spec = CallSpec(STEP, name or "tool")
        self.handle = enter_step(session, self.spec, (), _arguments(arguments))

    def close(self, error: BaseException | None = None) -> None:
        """Record the outcome (``error`` is ``None`` on success) and end the span."""
        exit_step(self.session, self.spec, self.handle, error)


def start_llm_call(
    session: Boundary,
    name: str,
    *,
    model: str | None = None,
    provider: str | None = None,
    messages: object = None,
    wrapup: bool = False,
) -> LLMCall:
    """Admit one framework LLM call (or raise ``BudgetExhausted``) and open its span;
    ``wrapup`` lets it use the session's wrap-up reserve."""
    spec = CallSpec(LLM, name or "llm", model or None, provider or None, wrapup=wrapup)
    return LLMCall.begin(session, spec, (), {} if messages is None else {"messages": messages})


#: Sessions whose wrap-up reserve was reached under ``on_exhausted="finish"``: their model
#: calls may use the reserve, and are offered no tools.
winding_down: weakref.WeakSet[SessionBudget] = weakref.WeakSet()


def starts_wind_down(session: Boundary | None, exc: BudgetExhausted, finish: bool) -> bool:
    """Whether ``exc`` starts ``session``'s wind-down (``finish``: ``on_exhausted="finish"``,
    and ``exc`` is the wrap-up reserve's refusal); if so, the session winds down from now on
    (else the caller raises ``exc``)."""
    if not finish or session is None or exc.reason != WRAPUP_RESERVE:
        return False
    winding_down.add(session.budget)
    return True


def admit_llm_call(
    session: Boundary,
    name: str,
    *,
    finish: bool,
    model: str | None = None,
    provider: str | None = None,
    messages: object = None,
) -> tuple[LLMCall, bool]:
    """Admit one framework LLM call under ``on_exhausted`` (``finish``: the wrap-up reserve
    starts a wind-down whose model calls may use the reserve); the call, and whether the
    session is winding down (this call's answer is then the run's final one)."""
    winding = finish and session.budget in winding_down
    try:
        call = start_llm_call(
            session, name, model=model, provider=provider, messages=messages, wrapup=winding
        )
    except BudgetExhausted as exc:
        if winding or not starts_wind_down(session, exc, finish):
            raise
        winding = True
        call = start_llm_call(
            session, name, model=model, provider=provider, messages=messages, wrapup=True
        )
    return call, winding


#: Where a wind-down's final answer records why the run stopped.
STOP_KEY = "budgetkit_stop_reason"

#: What a resumed run's model reads for a tool call the stopped run never answered.
NOT_RUN_TEXT = "Not run: the budget ran out before this tool call; it was not executed."

#: What the model reads instead of a tool result once the wrap-up reserve is reached.
WIND_DOWN_TEXT = (
    "Not run: the budget's wrap-up reserve is reached. Do not call tools; give your final "
    "answer now from what you have."
)


class Conversation:
    """The history a framework's latest model call saw, grown with its answer and the tool
    results after it; the session's handoff stores it (``_framework_state``)."""

    __slots__ = ("items", "to_json")

    def __init__(self, items: list[Any], to_json: Callable[[list[Any]], object]) -> None:
        self.items = items
        self.to_json = to_json

    def dump(self) -> object:
        return self.to_json(self.items)


#: The conversation each session's handoff would store (see ``Conversation``).
conversations: weakref.WeakKeyDictionary[SessionBudget, Conversation] = weakref.WeakKeyDictionary()


def record_conversation(
    session: Boundary, framework: str, items: list[Any], to_json: Callable[[list[Any]], object]
) -> Conversation:
    """Make ``items`` (a model call's history) the state ``session``'s handoff stores;
    ``to_json(items)`` is called only if the handoff is written."""
    from .._framework_state import record

    conversation = Conversation(items, to_json)
    conversations[session.budget] = conversation
    record(session.budget, framework, conversation.dump)
    return conversation


def source_state(source: object, framework: str) -> object:
    """The stored ``framework`` state of ``source``: a handoff path, a :class:`Handoff`, a
    session resumed from one, or ``None`` (the innermost active session, resumed)."""
    from pathlib import Path

    from .._framework_state import load
    from .._handoff import Handoff
    from ..exceptions import HandoffError

    if source is None:
        current = active.get()
        if current is None:
            raise HandoffError(
                "no active session: pass the handoff (its path) or the resumed session"
            )
        source = current.budget
    if isinstance(source, SessionBudget):
        if source.resumed_from is None:
            raise HandoffError(
                f"session {source.session_id!r} was not resumed from a handoff "
                "(SessionBudget.resume): it has no earlier state"
            )
        lease = source.lease
        directory = None if lease is None else lease.handoff_path.parent
        return load(source.resumed_from, directory, framework)
    if isinstance(source, Handoff):
        return load(source, None, framework)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return load(Handoff.load(path), path.parent, framework)
    raise BudgetTypeError(
        f"expected a handoff path, a Handoff, a resumed SessionBudget or None, got {source!r}"
    )


def check_on_exhausted(value: object) -> str:
    """Validate an adapter's ``on_exhausted=`` argument."""
    if value not in ("raise", "finish"):
        from ..exceptions import BudgetConfigError

        raise BudgetConfigError(f"on_exhausted must be 'raise' or 'finish', got {value!r}")
    return str(value)


def budget_text(explicit: SessionBudget | None) -> str:
    """What the model is shown of its budget: the session's ``status_line()``; empty outside
    a session."""
    session = session_for(explicit)
    return "" if session is None else session.budget.status_line()


def settle_llm_call(call: LLMCall, usage: Any, *, result: object, streamed: bool) -> None:
    """Charge a framework's model call *without* ending a run of tool errors.

    In a framework loop every failed tool call is followed by a model call that reads the
    error; if that call counted as a success, ``max_consecutive_errors`` could never trip on
    tool failures. So in an adapter only a tool that returns normally ends the run of errors
    (a model call that raises still adds to it).
    """
    session = call.session
    pending = session.errors_pending
    session.errors_pending = False  # settle() resets the run only when errors are pending
    try:
        call.settle(call.fill(usage), result=result, streamed=streamed)
    finally:
        if pending:
            session.errors_pending = True


def _arguments(arguments: object) -> dict[str, Any]:
    """Tool arguments as the keyword arguments a decorated step would have had."""
    if arguments is None:
        return {}
    if isinstance(arguments, Mapping):
        return {str(key): value for key, value in arguments.items()}
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    return {"input": arguments}


@functools.lru_cache(maxsize=128)
def pricing_provider(name: str | None) -> str | None:
    """The genai-prices id of a framework's provider name, or ``None`` when it has none.

    Frameworks name providers their own way (``google_genai``, ``google-gla``, ``bedrock``).
    An id genai-prices does not know would make the model unpriceable, so it is dropped and
    the model name alone is looked up.
    """
    if not name:
        return None
    try:
        from genai_prices.data_snapshot import get_snapshot

        found = get_snapshot().find_provider(None, name, None)
    except Exception:
        return None
    provider_id = getattr(found, "id", None)
    return provider_id if isinstance(provider_id, str) else None
