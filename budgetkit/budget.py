"""The decorators: ``@budget.step`` and ``@budget.llm_call``, and ``budget.current()``.

Use them as ``from budgetkit import budget`` then ``@budget.step``. Outside any
:class:`~budgetkit.SessionBudget` they are pure pass-through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._limits import positive_int, seconds, to_usd
from ._money import to_units
from ._session import current
from ._values import LLM, STEP, CallSpec
from ._wrap import wrap

if TYPE_CHECKING:
    from collections.abc import Callable
    from decimal import Decimal

__all__ = ["current", "llm_call", "step"]

P = ParamSpec("P")
R = TypeVar("R")


def _name_of(fn: Any) -> str:
    target = getattr(fn, "__func__", fn)
    return str(getattr(target, "__name__", None) or type(target).__name__)


@overload
def step(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def step(
    *,
    name: str | None = None,
    wrapup: bool = False,
    timeout: float | None = None,
    max_output_chars: int | None = None,
    max_calls: int | None = None,
    cost_usd: Decimal | int | str | None = None,
    key: Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def step(
    func: Any = None,
    /,
    *,
    name: str | None = None,
    wrapup: bool = False,
    timeout: float | None = None,
    max_output_chars: int | None = None,
    max_calls: int | None = None,
    cost_usd: Decimal | int | str | None = None,
    key: Callable[..., Any] | None = None,
) -> Any:
    """Mark a tool call as one step: checked at entry, counted against ``max_steps``.

    Works bare (``@budget.step``) or with options (``@budget.step(name="web_search")``) on
    functions, ``async def``, methods, classmethods and staticmethods (put it *above*
    ``@classmethod``/``@staticmethod``), generators and async generators (charged on
    their first iteration).

    Args:
        name: the tool name on spans and in handoffs; the function's ``__name__`` by default.
        wrapup: the step may use the session's ``reserve_for_wrapup``.
        timeout: seconds; an ``async def`` step is cancelled at the deadline, a sync step
            is judged when it returns; either raises :class:`~budgetkit.StepTimeoutError`.
        max_output_chars: a longer ``str`` result is cut to at most this many characters,
            the visible truncation marker included.
        max_calls: this tool may run at most that many times per session (counted in the
            session's ledger by ``name``, so across the workers of a shared session); the
            next call stops the session with reason ``max_tool_calls``, naming the tool.
        cost_usd: the price of one call of a paid tool (a ``Decimal``, ``int`` or decimal
            ``str``): reserved against ``max_usd`` when the step is admitted and charged
            when it ends (returned or raised), like an LLM call's cost.
        key: for ``SessionBudget(max_repeats=...)``, called with the step's arguments; calls
            whose results are equal count as "the same call" (default: all arguments).

    .. versionadded:: 0.1.0
    """
    _check_name(name)
    if max_calls is not None:
        max_calls = positive_int(max_calls, "max_calls")
    if key is not None and not callable(key):
        from .exceptions import BudgetTypeError

        raise BudgetTypeError(f"key must be a callable or None, got {key!r}")
    cost = None if cost_usd is None else to_units(to_usd(cost_usd, "cost_usd", allow_zero=True))
    _check_bool(wrapup, "wrapup")
    if timeout is not None:
        timeout = seconds(timeout, "timeout")
    if max_output_chars is not None:
        max_output_chars = positive_int(max_output_chars, "max_output_chars")

    def decorate(fn: Any) -> Any:
        spec = CallSpec(
            STEP,
            name or _name_of(fn),
            wrapup=wrapup,
            timeout=timeout,
            max_output_chars=max_output_chars,
            max_calls=max_calls,
            cost=cost or None,
            key=key,
        )
        return wrap(fn, spec)

    return decorate if func is None else decorate(func)


@overload
def llm_call(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def llm_call(
    *,
    name: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    usage: Callable[[Any], Any] | None = None,
    estimate: Callable[..., Any] | None = None,
    wrapup: bool = False,
    stream_usage: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def llm_call(
    func: Any = None,
    /,
    *,
    name: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    usage: Callable[[Any], Any] | None = None,
    estimate: Callable[..., Any] | None = None,
    wrapup: bool = False,
    stream_usage: bool = False,
) -> Any:
    """Mark an LLM call: checked at entry, its usage read from the response and priced.

    The returned object is read by duck typing (OpenAI, Anthropic, Gemini, LangChain,
    LiteLLM, Bedrock shapes); a returned stream is wrapped in a transparent proxy that
    charges the call when the stream ends.

    Args:
        name: the name on spans; the function's ``__name__`` by default.
        model: the model, when the response does not name it (Bedrock) or to price it.
        provider: the provider id for pricing (``openai``, ``anthropic``, ``aws`` ...).
        usage: ``callable(result)`` returning a :class:`~budgetkit.Usage` (or a provider
            response/usage block) for custom return types.
        estimate: ``callable(*args, **kwargs)`` returning an upper bound of the call's
            cost in USD, or token counts (``{"input_tokens": ..., "output_tokens": ...}``)
            priced with the model. The amount is reserved before the call; a call whose
            reservation does not fit the remaining ``max_usd`` is refused before it runs.
        wrapup: the call may use the session's ``reserve_for_wrapup``.
        stream_usage: for a function that passes its keyword arguments to OpenAI's
            ``chat.completions.create`` (or is that method): a call with ``stream=True``
            and ``messages=`` gets ``stream_options={"include_usage": True}`` added
            (merged into the caller's ``stream_options``; an explicit
            ``include_usage=False`` is kept), so the stream reports its usage in a last
            chunk with no choices. The function must accept ``stream_options`` (or
            ``**kwargs``).

    Raises:
        BudgetConfigError: ``stream_usage=True`` on a function that cannot take
            ``stream_options``.

    .. versionadded:: 0.1.0
    """
    _check_name(name)
    _check_name(model, "model")
    _check_name(provider, "provider")
    _check_bool(wrapup, "wrapup")
    _check_bool(stream_usage, "stream_usage")
    for label, fn_option in (("usage", usage), ("estimate", estimate)):
        if fn_option is not None and not callable(fn_option):
            from .exceptions import BudgetTypeError

            raise BudgetTypeError(f"{label} must be callable, got {fn_option!r}")

    def decorate(fn: Any) -> Any:
        spec = CallSpec(LLM, name or _name_of(fn), model, provider, usage, estimate, wrapup)
        return wrap(_asking_for_stream_usage(fn) if stream_usage else fn, spec)

    return decorate if func is None else decorate(func)


def _asking_for_stream_usage(fn: Any) -> Any:
    """``fn`` with ``stream_options={"include_usage": True}`` added to its OpenAI chat
    streams (``llm_call(stream_usage=True)``)."""
    import inspect

    import wrapt

    target = getattr(fn, "__func__", fn)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # no signature to read: trust the caller
        parameters = None
    if parameters is not None and not any(
        p.name == "stream_options" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    ):
        from .exceptions import BudgetConfigError

        raise BudgetConfigError(
            f"stream_usage=True needs a function that accepts stream_options (or **kwargs) and "
            f"passes it to client.chat.completions.create; {_name_of(fn)!r} does not"
        )

    def add(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if kwargs.get("stream") is True and "messages" in kwargs:
            options = kwargs.get("stream_options")
            if options is None or (isinstance(options, dict) and "include_usage" not in options):
                kwargs = {**kwargs, "stream_options": {**(options or {}), "include_usage": True}}
        return wrapped(*args, **kwargs)

    return wrapt.FunctionWrapper(fn, add)


def _check_name(value: object, label: str = "name") -> None:
    if value is not None and (not isinstance(value, str) or not value):
        from .exceptions import BudgetTypeError

        raise BudgetTypeError(f"{label} must be a non-empty str, got {value!r}")


def _check_bool(value: object, label: str) -> None:
    if not isinstance(value, bool):
        from .exceptions import BudgetTypeError

        raise BudgetTypeError(f"{label} must be a bool, got {value!r}")
