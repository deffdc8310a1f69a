"""Zero-code budgets: patch the ``openai`` and ``anthropic`` SDKs' create methods.

Patching goes through ``wrapt``'s post-import hooks, so it applies whether the SDK is
imported before or after :func:`instrument`. A patched call behaves like a function
decorated with ``@budget.llm_call``: it is a step boundary of the current session, its
usage is read from the response (or from the stream when it ends) and priced. When the
request names ``max_tokens``, ``max_completion_tokens`` or ``max_output_tokens``, an
upper-bound cost is reserved first, so spend never passes ``max_usd``.

Patched: ``chat.completions.create`` and ``responses.create`` of ``openai`` and
``messages.create`` of ``anthropic``, sync and async, streaming or not.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import TYPE_CHECKING, Any

import wrapt

from ._boundary import Boundary, active
from ._calls import Nesting
from ._values import LLM, CallSpec
from ._wrap import llm_coroutine_wrapper, llm_wrapper

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._session import SessionBudget

__all__ = ["instrument", "is_instrumented", "uninstrument"]

#: (module, class, method, provider)
_TARGETS = (
    ("openai.resources.chat.completions", "Completions", "create", "openai"),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", "openai"),
    ("openai.resources.responses", "Responses", "create", "openai"),
    ("openai.resources.responses", "AsyncResponses", "create", "openai"),
    ("anthropic.resources.messages", "Messages", "create", "anthropic"),
    ("anthropic.resources.messages", "AsyncMessages", "create", "anthropic"),
)

_lock = threading.RLock()


class _State:
    def __init__(self) -> None:
        self.active = False
        self.fallback: SessionBudget | None = None
        self.hooked: set[str] = set()
        #: (owner class, method name, original, our wrapper)
        self.patched: list[tuple[Any, str, Any, Any]] = []


_state = _State()


class _Patched(wrapt.FunctionWrapper[..., Any]):
    """Marks budgetkit's own wrappers (another library's ``FunctionWrapper`` is not ours)."""


def instrument(session: SessionBudget | None = None) -> None:
    """Charge every ``openai``/``anthropic`` create call to the current session.

    Calls made outside any ``with SessionBudget(...)`` block pass through uncharged,
    unless ``session`` is given. Calling it again only replaces ``session``.

    Args:
        session: the session to charge when none is active in the calling context
            (threads that did not copy the context, for example), while it is running;
            ``budgetkit run`` passes its own.

    .. versionadded:: 0.1.0
    """
    with _lock:
        _state.fallback = session
        if _state.active:
            return
        _state.active = Nesting.guard = True
        for module, cls, method, provider in _TARGETS:
            if module in sys.modules:  # imported already (or instrumented before)
                _patch(sys.modules[module], cls, method, provider)
            key = f"{module}:{cls}.{method}"
            if key not in _state.hooked:  # wrapt keeps hooks forever: register once
                _state.hooked.add(key)
                wrapt.register_post_import_hook(_hook(cls, method, provider), module)


def uninstrument() -> None:
    """Undo :func:`instrument`: restore the original methods.

    .. versionadded:: 0.1.0
    """
    with _lock:
        _state.active = Nesting.guard = False
        _state.fallback = None
        for owner, method, original, ours in reversed(_state.patched):
            if owner.__dict__.get(method) is ours:  # not re-wrapped by someone else since
                setattr(owner, method, original)
        _state.patched.clear()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _state.active


def _hook(cls_name: str, method: str, provider: str) -> Callable[[Any], None]:
    def hook(module: Any) -> None:
        with _lock:
            if _state.active:
                _patch(module, cls_name, method, provider)

    return hook


def _patch(module: Any, cls_name: str, method: str, provider: str) -> None:
    owner = getattr(module, cls_name, None)
    if owner is None:
        return
    original = owner.__dict__.get(method)
    if original is None or isinstance(original, _Patched):
        return
    spec = CallSpec(LLM, f"{provider}.{cls_name}.{method}", provider=provider, estimate=_estimate)
    make = llm_coroutine_wrapper if cls_name.startswith("Async") else llm_wrapper
    wrapper = make(spec, current=_session)
    ours = _Patched(original, wrapper)
    setattr(owner, method, ours)
    _state.patched.append((owner, method, original, ours))


def _session() -> Boundary | None:
    if not _state.active:  # a wrapper someone else re-wrapped, so it stayed in place
        return None
    if Nesting.inside.get():  # called by a @budget.llm_call function: it charges the call
        return None
    found = active.get()
    if found is not None:
        return found
    fallback = _state.fallback
    if fallback is not None and fallback.boundary.handle is not None and fallback.result is None:
        return fallback.boundary
    return None


def _estimate(*args: Any, **kwargs: Any) -> Mapping[str, int] | None:
    """Upper-bound tokens of a request that caps its output; ``None`` when it does not."""
    output: Any = None
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = kwargs.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            output = value
            break
    if output is None:
        return None
    prompt = {k: kwargs.get(k) for k in ("messages", "input", "system", "instructions", "tools")}
    # About four characters make a token; counting two keeps the bound on the safe side.
    text = json.dumps(prompt, default=str)
    return {"input_tokens": len(text) // 2 + 64, "output_tokens": output}
