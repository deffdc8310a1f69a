"""Zero-code budgets: patch the ``openai`` and ``anthropic`` SDKs' create methods.

Patching goes through ``wrapt``'s post-import hooks, so it applies whether the SDK is
imported before or after :func:`instrument`. A patched call behaves like a function
decorated with ``@budget.llm_call``; when the request names ``max_tokens`` or
``max_output_tokens``, an upper-bound cost is reserved first, so spend never passes
``max_usd``.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import wrapt

from ._calls import LLMCall
from ._session import LLM, CallSpec, SessionBudget, _current

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["instrument", "uninstrument"]

#: (module, class, method, provider, uses an "async def" method)
_TARGETS = (
    ("openai.resources.chat.completions", "Completions", "create", "openai"),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", "openai"),
    ("openai.resources.responses", "Responses", "create", "openai"),
    ("openai.resources.responses", "AsyncResponses", "create", "openai"),
    ("anthropic.resources.messages", "Messages", "create", "anthropic"),
    ("anthropic.resources.messages", "AsyncMessages", "create", "anthropic"),
)

_lock = threading.Lock()
_state: dict[str, Any] = {"active": False, "session": None, "patched": []}


def instrument(session: SessionBudget | None = None) -> None:
    """Charge every ``openai``/``anthropic`` create call to the current session.

    Args:
        session: a session to charge when no session is active in the calling context
            (threads that did not copy the context, for example); ``budgetkit run``
            passes its own.
    """
    with _lock:
        _state["session"] = session
        if _state["active"]:
            return
        _state["active"] = True
        for module, cls, method, provider in _TARGETS:
            wrapt.register_post_import_hook(_patcher(module, cls, method, provider), module)


def uninstrument() -> None:
    """Undo :func:`instrument`: restore the original methods."""
    with _lock:
        _state["active"] = False
        _state["session"] = None
        for owner, method, original in reversed(_state["patched"]):
            setattr(owner, method, original)
        _state["patched"].clear()


def _patcher(module_name: str, cls_name: str, method: str, provider: str) -> Callable[[Any], None]:
    def patch(module: Any) -> None:
        if not _state["active"]:
            return
        owner = getattr(module, cls_name, None)
        if owner is None:
            return
        original = owner.__dict__.get(method)
        if original is None or isinstance(original, wrapt.FunctionWrapper):
            return
        spec = CallSpec(LLM, f"{cls_name}.{method}", provider=provider, estimate=_estimate)
        is_async = cls_name.startswith("Async")
        wrapper = _async_wrapper(spec) if is_async else _sync_wrapper(spec)
        setattr(owner, method, wrapt.FunctionWrapper(original, wrapper))
        _state["patched"].append((owner, method, original))

    return patch


def _session() -> SessionBudget | None:
    return _current.get() or _state["session"]


def _sync_wrapper(spec: CallSpec) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = _session()
        if session is None:
            return wrapped(*args, **kwargs)
        call = LLMCall(session, spec, args, kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return call.finish(result)

    return wrapper


def _async_wrapper(spec: CallSpec) -> Callable[..., Any]:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = _session()
        if session is None:
            return await wrapped(*args, **kwargs)
        call = LLMCall(session, spec, args, kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return call.finish(result)

    return wrapper


def _estimate(*args: Any, **kwargs: Any) -> Mapping[str, int] | None:
    """Upper-bound tokens of a request that caps its output; ``None`` when it does not."""
    output = kwargs.get("max_tokens") or kwargs.get("max_output_tokens")
    output = output or kwargs.get("max_completion_tokens")
    if not isinstance(output, int) or isinstance(output, bool) or output <= 0:
        return None
    prompt = {k: kwargs.get(k) for k in ("messages", "input", "system", "instructions", "tools")}
    # About four characters make a token; counting two keeps the bound on the safe side.
    text = json.dumps(prompt, default=str)
    return {"input_tokens": len(text) // 2 + 64, "output_tokens": output}
