"""What happens when a decorated call enters and leaves: admission, recording, spans."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from . import _otel
from ._events import emit
from ._events import listeners as _listeners
from ._interrupts import deferred
from ._limits import to_usd
from ._money import from_units, to_units
from ._usage import Counts, Usage, usage_counts
from ._values import LLM, STEP, CallSpec
from ._warnings import warn
from .exceptions import UnmeasuredUsageWarning

if TYPE_CHECKING:
    from ._boundary import Boundary
    from ._extract import DirectRead
    from ._streams import OnResponse


class Nesting:
    """While ``instrument()`` is active, a decorated LLM call marks the time its body runs:
    an instrumented SDK call inside it is the same LLM call, charged once (by the decorator).
    """

    guard = False  # instrument() is active: decorated LLM calls mark their bodies
    inside: ContextVar[bool] = ContextVar("budgetkit_inside_llm_call", default=False)


def run_marked(wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run a decorated LLM call's body marked as inside it (see :class:`Nesting`)."""
    token = Nesting.inside.set(True)
    try:
        return wrapped(*args, **kwargs)
    finally:
        Nesting.inside.reset(token)


async def await_marked(wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """:func:`run_marked` for an ``async def`` body."""
    token = Nesting.inside.set(True)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        Nesting.inside.reset(token)


#: ``_pricing.price_units``: (model, provider, counts, prices) to units, or ``None``.
PriceUnits = Callable[[str | None, str | None, Counts, Mapping[str, Any]], int | None]


def enter_step(session: Boundary, spec: CallSpec, args: Any, kwargs: Any) -> Any:
    """The step boundary: admit (or raise ``BudgetExhausted``), then open the span."""
    if spec.max_calls is None and spec.cost is None and not session.repeats:
        session.admit_step(spec.name)
    else:  # a capped or paid tool, or loop detection: the general admission
        admit_step_call(session, spec, args, kwargs)
    if _otel.TRACE_STATE["_TRACER_PROVIDER"] is None:  # as _otel.start_call, inlined
        return None
    return _otel.start_call(session, spec, args, kwargs)


def admit_step_call(
    session: Boundary, spec: CallSpec, args: Any, kwargs: Any, *, wrapup: bool = False
) -> None:
    """Admit a step with its per-tool cap, price and (under ``max_repeats``) call digest."""
    digest = None
    if session.repeats:
        from ._digest import key_digest

        digest = key_digest(spec.name, spec.key, args, kwargs)
    session.admit(STEP, spec.name, spec.cost, wrapup=wrapup, tool_cap=spec.max_calls, digest=digest)


def exit_step(
    session: Boundary,
    spec: CallSpec,
    handle: Any,
    error: BaseException | None,
    result: Any = None,
) -> None:
    """Record the outcome of an admitted step (a paid tool's price is charged either way:
    the call may have been billed)."""
    if spec.cost is not None:
        session.record(_NO_TOKENS, spec.cost, spec.cost)
    if error is None:
        session.call_succeeded()
    else:
        session.call_failed(error)
    if handle is not None:
        _otel.end_call(handle, session, spec, _real_error(error), result=result)


#: A paid tool's call: a price and no tokens (measured, so not an unmeasured call).
_NO_TOKENS = (0, 0, 0, 0, 0)

#: What ends a call from outside while its request may be in flight or billed.
_INTERRUPTS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


def _real_error(error: BaseException | None) -> BaseException | None:
    """A generator closed early (``GeneratorExit``) finished, it did not fail."""
    return None if isinstance(error, GeneratorExit) else error


def llm_finished(session: Boundary, spec: CallSpec, handle: Any, kwargs: Any, result: Any) -> Any:
    """An admitted call without a reservation returned ``result``: settle it, or wrap its
    stream. A response of a type with a direct reader (an OpenAI ``ChatCompletion``) is
    read without building a ``Usage`` and priced in integers: the LLM-call fast path."""
    direct = _direct.get(type(result))
    if direct is not None:
        read, price_units = direct
        found = read(result)
        if found is not None:
            model, counts = found
            if model is None:
                model = spec.request_model(kwargs)
            cost = price_units(model, spec.provider, counts, session.all_prices())
            settle(session, spec, handle, model, counts, cost, None, result)
            return result
    return LLMCall(session, spec, spec.request_model(kwargs), None, handle).finish(result)


#: For each exact response type with a direct reader (``_extract.direct_reader``): the
#: reader and ``_pricing.price_units``, bound when the first response of the type takes the
#: general path (both modules load lazily, and an import statement here would cost more
#: than the whole fast path).
_direct: dict[type, tuple[Callable[[Any], DirectRead | None], PriceUnits] | None] = {}
_DIRECT_TYPES_LIMIT = 256


class Loaded:
    """Functions of modules loaded on first use, bound once (an import statement on every
    call would cost more than the fast path): ``_streams``, ``_extract``, ``_pricing``."""

    wrap_stream: Callable[..., Any] | None = None
    abandoned: Any = ()  # ``_streams.ABANDONED.queue`` once a stream was wrapped
    settle_abandoned: Callable[[], None] | None = None
    extract_usage: Callable[..., Usage | None] | None = None
    malformed: type[Exception] = Exception
    price_usage: Callable[..., Any] | None = None
    price_estimate: Callable[..., Any] | None = None


def _streams() -> Callable[..., Any]:
    from ._streams import ABANDONED, settle_abandoned, wrap_stream

    Loaded.abandoned, Loaded.settle_abandoned = ABANDONED.queue, settle_abandoned
    Loaded.wrap_stream = wrap_stream
    return wrap_stream


def settle_abandoned() -> None:
    """Report the streams abandoned so far (a boundary's first duty; cheap when none)."""
    if Loaded.abandoned and Loaded.settle_abandoned is not None:
        Loaded.settle_abandoned()


def _learn(cls: type) -> None:
    """Remember whether responses of type ``cls`` have a direct reader."""
    from ._extract import direct_reader
    from ._pricing import price_units

    if cls not in _direct and len(_direct) < _DIRECT_TYPES_LIMIT:
        reader = direct_reader(cls)
        _direct[cls] = None if reader is None else (reader, price_units)


def settle(
    session: Boundary,
    spec: CallSpec,
    handle: Any,
    model: str | None,
    counts: Counts | None,
    cost: int | None,
    usage: Usage | None,
    result: Any,
    *,
    streamed: bool = False,
    release: int | None = None,
    call: LLMCall | None = None,
) -> None:
    """Record a finished LLM call and close its span: the one settlement of every call.

    ``counts`` ``None`` is an unmeasured call, ``cost`` (units) ``None`` an unpriced one;
    ``usage`` (the general path's) is built from the counts only when a listener needs it.
    Fail closed: an unmeasured call that held a reservation is charged the reservation; one
    without is an unknown cost (``on_unknown_cost``), like an unpriced call.
    """
    if counts is None and release:
        cost = release  # what budgetkit knows it may have cost: the reservation
    session.record(counts, cost, release or 0)
    if call is not None:
        call.recorded = True
    if counts is None:
        _warn_unmeasured(session, spec, streamed=streamed, charged=cost)
        if cost is None:
            session.cost_unknown(model)
    elif cost is None:
        session.cost_unknown(model)
    if session.errors_pending:
        session.call_succeeded()
    if handle is None and not _listeners:
        return
    provider = spec.provider if usage is None else usage.provider
    if _listeners:
        if usage is None and counts is not None:
            usage = Usage(*counts, model=model, provider=provider)
        usd = None if cost is None else from_units(cost)
        emit("llm_call", session.budget, name=spec.name, usage=usage, cost_usd=usd)
    charged = None if counts is None else (model, provider, counts)
    _otel.end_call(handle, session, spec, None, charged, cost, result)


class LLMCall:
    """One admitted ``@budget.llm_call`` on the general path: reservation, span, settlement."""

    __slots__ = (
        "admitted",
        "handle",
        "model",
        "observer",
        "recorded",
        "reserved",
        "session",
        "spec",
    )

    def __init__(
        self,
        session: Boundary,
        spec: CallSpec,
        model: str | None,
        reserved: int | None,
        handle: Any,
    ) -> None:
        self.session = session
        self.spec = spec
        self.model = model
        self.reserved = reserved
        self.handle = handle
        #: The session counted the call (and holds its reservation); see :meth:`prepare`.
        self.admitted = True
        #: The call has been charged: settling it again, or failing it, does nothing.
        self.recorded = False
        self.observer: OnResponse | None = None
        """Told the id and usage of an OpenAI Responses response (``instrument()``)."""

    @classmethod
    def prepare(cls, session: Boundary, spec: CallSpec, args: Any, kwargs: Any) -> LLMCall:
        """A call not admitted yet, with its request model and reservation (``estimate=``)."""
        if Loaded.abandoned:  # streams dropped since the last boundary are charged first
            settle_abandoned()
        model = spec.request_model(kwargs)
        call = cls(session, spec, model, _estimate(session, spec, model, args, kwargs), None)
        call.admitted = False
        return call

    def admit(self, args: Any, kwargs: Any) -> None:
        """Admit the call, reserving its estimate (may raise ``BudgetExhausted``); open its
        span. Ctrl-C waits until the call is both admitted and known to be."""
        with deferred():
            self.session.admit(LLM, self.spec.name, self.reserved, wrapup=self.spec.wrapup)
            self.admitted = True
        self.handle = _otel.start_call(self.session, self.spec, args, kwargs)

    @classmethod
    def begin(cls, session: Boundary, spec: CallSpec, args: Any, kwargs: Any) -> LLMCall:
        """:meth:`prepare` and :meth:`admit` (for adapters that hold the call themselves)."""
        call = cls.prepare(session, spec, args, kwargs)
        call.admit(args, kwargs)
        return call

    @classmethod
    def reserving(
        cls, session: Boundary, spec: CallSpec, tokens: Mapping[str, int], kwargs: Any
    ) -> LLMCall:
        """:meth:`begin` for a reservation given as token counts (``instrument()``)."""
        model = spec.request_model(kwargs)
        call = cls(session, spec, model, reserve_units(session, spec, model, tokens), None)
        call.admitted = False
        call.admit((), kwargs)
        return call

    def fail(self, error: BaseException) -> None:
        """The call raised: release the reservation, count the error.

        Interrupted instead (``KeyboardInterrupt``, ``SystemExit``, a cancelled task), the
        request may have been billed: it is charged its reservation (without one, its cost
        is unknown), never released as if unused.
        """
        if self.recorded or not self.admitted:
            return
        session = self.session
        if isinstance(error, _INTERRUPTS):
            session.record(None, self.reserved or None, self.reserved or 0)
            self.recorded = True
            if not self.reserved:
                session.cost_unknown(self.model)
        else:
            self.recorded = True
            if self.reserved:
                session.release(self.reserved)
            session.call_failed(error)
        _otel.end_call(self.handle, session, self.spec, _real_error(error))

    def finish(self, result: Any, *, hide_usage_chunks: bool = False) -> Any:
        """The call returned: read usage now, or wrap a stream that settles when it ends
        (exhausted, closed, or dropped: see ``_streams``)."""
        wrap_stream = Loaded.wrap_stream or _streams()
        proxy = wrap_stream(
            result,
            self.stream_ended,
            model=self.model,
            provider=self.spec.provider,
            hide_usage_chunks=hide_usage_chunks,
            on_response=self.observer,
        )
        if proxy is not None:
            return proxy
        usage = self.read_usage(result)
        if self.observer is not None and usage is not None:
            response_id = getattr(result, "id", None)
            if isinstance(response_id, str):
                self.observer(response_id, usage)
        self.settle(usage, result=result, streamed=False)
        if type(result) not in _direct:
            _learn(type(result))
        return result

    def stream_ended(self, usage: Usage | None) -> None:
        """Called once by a stream proxy when the stream is exhausted, closed or fails."""
        self.settle(self.fill(usage), result=None, streamed=True)

    def read_usage(self, result: Any) -> Usage | None:
        """Usage of a non-streamed result; malformed usage warns and counts as unmeasured."""
        extract_usage = Loaded.extract_usage or _extractor()
        spec = self.spec
        try:
            raw = result if spec.usage is None else spec.usage(result)
            if raw is None or isinstance(raw, Usage):
                usage = raw
            else:
                usage = extract_usage(raw, model=self.model, provider=spec.provider)
        except Loaded.malformed as exc:
            warn(
                f"budgetkit: ignoring malformed usage from {spec.name!r}: {exc}",
                UnmeasuredUsageWarning,
            )
            return None
        except Exception as exc:  # a user's usage= callable must not break the call
            warn(
                f"budgetkit: the usage= callable of {spec.name!r} raised {exc!r}; "
                "the call is counted as unmeasured",
                UnmeasuredUsageWarning,
            )
            return None
        return self.fill(usage)

    def fill(self, usage: Usage | None) -> Usage | None:
        """Supply the model and provider the response lacks from the request."""
        if usage is None:
            return None
        changes: dict[str, Any] = {}
        if usage.model is None and self.model is not None:
            changes["model"] = self.model
        if self.spec.provider is not None and usage.provider is None:
            changes["provider"] = self.spec.provider
        return dataclasses.replace(usage, **changes) if changes else usage

    def settle(self, usage: Usage | None, *, result: Any, streamed: bool) -> None:
        """Price the usage, then :func:`settle` the call (once), with Ctrl-C held back until
        the call is charged."""
        if self.recorded:
            return
        with deferred():
            self._settle(usage, result=result, streamed=streamed)

    def _settle(self, usage: Usage | None, *, result: Any, streamed: bool) -> None:
        session = self.session
        cost: int | None = None
        counts: Counts | None = None
        model = self.model
        if usage is not None:
            price_usage = Loaded.price_usage or _pricer()
            usd = price_usage(usage, prices=session.all_prices())
            cost = None if usd is None else to_units(usd)
            counts, model = usage_counts(usage), usage.model
        settle(
            session,
            self.spec,
            self.handle,
            model,
            counts,
            cost,
            usage,
            result,
            streamed=streamed,
            release=self.reserved,
            call=self,
        )


def _estimate(
    session: Boundary, spec: CallSpec, model: str | None, args: Any, kwargs: Any
) -> int | None:
    """The USD (units) to reserve for a call with ``estimate=``: a number, or token counts."""
    if spec.estimate is None:
        return None
    value = spec.estimate(*args, **kwargs)
    if value is None:  # the estimator has no bound for this call
        return None
    if isinstance(value, Mapping):
        return reserve_units(session, spec, model, value)
    return to_units(to_usd(value, f"the estimate of {spec.name!r}", allow_zero=True))


def reserve_units(
    session: Boundary, spec: CallSpec, model: str | None, tokens: Mapping[str, int]
) -> int | None:
    """Token counts priced with the call's model, in units; ``None`` (and the unknown cost
    noted) when the model has no price."""
    price_estimate = Loaded.price_estimate or _pricer(estimate=True)
    cost = price_estimate(tokens, model, spec.provider, session.all_prices())
    if cost is None:
        session.cost_unknown(model)
        return None
    return int(to_units(cost))


def _extractor() -> Callable[..., Usage | None]:
    from ._extract import MalformedUsageError, extract_usage

    Loaded.malformed = MalformedUsageError
    Loaded.extract_usage = extract_usage
    return extract_usage


def _pricer(*, estimate: bool = False) -> Callable[..., Any]:
    from ._pricing import price_estimate, price_usage

    Loaded.price_usage, Loaded.price_estimate = price_usage, price_estimate
    return price_estimate if estimate else price_usage


def _warn_unmeasured(
    session: Boundary, spec: CallSpec, *, streamed: bool, charged: int | None
) -> None:
    key = "stream" if streamed else "response"
    if key in session.warned_unmeasured:
        return
    session.warned_unmeasured.add(key)
    if streamed:
        from ._streams import STREAM_USAGE_HINT

        hint = STREAM_USAGE_HINT
    else:
        hint = "pass usage=callable to @budget.llm_call to read it from your return type"
    counted = (
        f"charges its reservation (${from_units(charged)})"
        if charged is not None
        else "counts the call but cannot measure it"
    )
    warn(
        f"budgetkit: {spec.name!r} returned no token usage, so session "
        f"{session.budget.session_id!r} {counted}; {hint}",
        UnmeasuredUsageWarning,
    )
