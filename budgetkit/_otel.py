"""OpenTelemetry spans, events and metrics for sessions and decorated calls.

Only ``opentelemetry-api`` is used. Until an application installs a tracer provider, every
hook returns after one attribute read: no span objects are made (the API's no-op span alone
would cost more than the budget check). Every call into OpenTelemetry is guarded, so a
failing span processor or exporter never reaches the agent.

Spans: the session span (``invoke_agent {name}`` or ``budgetkit.session``) is made current
for the ``with`` block; ``execute_tool {tool}`` and ``chat {model}`` call spans are started
with :meth:`Tracer.start_span` under the current context and never attached, so a generator
may yield between their start and end. Names are in :mod:`budgetkit._attributes`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from decimal import Decimal
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import _attributes as names
from ._money import UNITS_PER_USD, from_units, to_float, to_units_floor
from ._policy import DIMENSION
from ._policy import used as used_of

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

    from ._boundary import Boundary
    from ._messages import ResponseInfo
    from ._policy import Counters
    from ._usage import Counts
    from ._values import CallSpec, SessionResult

__all__ = [
    "capture_content",
    "end_call",
    "end_session",
    "exhausted",
    "span_ids",
    "start_call",
    "start_session",
]

_log = logging.getLogger("budgetkit.otel")

#: ``opentelemetry.trace``'s module namespace. Its ``_TRACER_PROVIDER`` stays ``None`` until an
#: application sets a provider: one dict read is the cheapest "is an SDK on?" check (the
#: public getter builds a proxy provider), and the hot paths make it on every call.
TRACE_STATE: dict[str, Any] = vars(trace)

#: Content attributes longer than this are cut (and end with an ellipsis).
MAX_CONTENT_CHARS = 32_768

_LLM = "llm"
_Attrs = dict[str, "AttributeValue"]
_Pair = Callable[["Boundary", "Counters"], tuple[int | float, int | float]]
#: What an LLM call was charged for: (response model, provider, counts).
Charged = tuple["str | None", "str | None", "Counts"]


# ----------------------------------------------------------------------------- settings
class _Settings:
    """Process-wide telemetry settings and the tracer/meter resolved for the global provider."""

    capture: bool | None = None
    tracer_provider: object = None
    tracer: Tracer | None = None
    meter_provider: object = None
    meters: _Instruments | None = None


def capture_content(enabled: bool | None) -> None:
    """Record prompts, tool arguments and results on spans (``None``: follow the env var).

    Read when a session starts. Off unless this says so or
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
    """
    if enabled is not None and not isinstance(enabled, bool):
        from .exceptions import BudgetTypeError

        raise BudgetTypeError(f"capture_content takes a bool or None, got {enabled!r}")
    _Settings.capture = enabled


def _capture_enabled() -> bool:
    if _Settings.capture is not None:
        return _Settings.capture
    return os.environ.get(names.CAPTURE_CONTENT_ENV, "").strip().lower() in names.CAPTURE_CONTENT_ON


def _tracer(provider: object) -> Tracer | None:
    """budgetkit's tracer from the global provider, or ``None`` when it cannot record."""
    if provider is not _Settings.tracer_provider:
        tracer: Tracer | None = None
        if not isinstance(provider, trace.NoOpTracerProvider):
            tracer = trace.get_tracer(
                names.INSTRUMENTATION_NAME, _version(), schema_url=names.SCHEMA_URL
            )
        _Settings.tracer, _Settings.tracer_provider = tracer, provider
    return _Settings.tracer


def _version() -> str:
    from ._version import VERSION

    return VERSION


def failed(where: str) -> None:
    """OpenTelemetry raised: note it for debugging, never re-raise."""
    _log.debug("budgetkit: OpenTelemetry raised in %s; ignored", where, exc_info=True)


# ----------------------------------------------------------------------------- budget state
def _num(value: int | float | Decimal) -> int | float:
    return float(value) if isinstance(value, Decimal) else value


def _left(limit: Any, used: Any) -> int | float:
    return _num(max(limit - used, 0))


#: Seconds attributes are rounded to microseconds (``round(x, 6)``): a clock's float noise
#: (``0.24812715699954424``) says nothing a viewer should show.
SECONDS_PLACES = 6
_SECONDS = "max_seconds"


def _tidy(name: str, value: int | float | Decimal) -> int | float:
    """An attribute value of limit ``name``: seconds to microseconds, USD as the nearest
    float to its exact decimal amount (never the result of float arithmetic)."""
    if name == _SECONDS:
        return round(float(value), SECONDS_PLACES)
    return _num(value)


def _usd_left(limit: Any, used: float) -> float:
    """USD remaining, computed in decimal: ``used`` is the float nearest an exact amount of
    18 places at most, so its shortest repr is that amount (to float precision), and the
    difference converts to the float nearest the exact remainder (``0.04988405``, not
    ``0.049884050000000006``)."""
    left = Decimal(str(limit)) - Decimal(repr(used))
    return float(left) if left > 0 else 0.0


#: A cost in units below this has at most 15 significant digits.
_SHORT_UNITS = 10**15


def _short(units: int) -> bool:
    """Whether ``units`` has at most 15 significant digits. Then the float nearest its USD
    repr()s as exactly that amount (any two such decimals are distinct doubles), so
    :func:`_usd_left`'s decimal difference is the exact integer one."""
    if units < _SHORT_UNITS:
        return True
    divisor: int = 10 ** (len(str(units)) - 15)
    return units % divisor == 0


def _usd_pair(limit: Any) -> _Pair:
    """(used, remaining) of a USD limit, in integer units where that gives the value
    :func:`_usd_left` gives (a limit of whole units below 10^28 units, whose difference the
    default decimal context holds exactly, and a cost of at most 15 significant digits)."""
    limit_units = to_units_floor(limit)
    exact = limit_units < 10**28 and from_units(limit_units) == limit

    def pair(b: Boundary, c: Counters) -> tuple[int | float, int | float]:
        cost = c.cost
        used = cost / UNITS_PER_USD  # _money.to_float, inlined
        if exact and _short(cost):
            return used, ((limit_units - cost) / UNITS_PER_USD if limit_units > cost else 0.0)
        return used, _usd_left(limit, used)

    return pair


def _live_pair(name: str, limit: Any) -> _Pair:
    """(used, remaining) of limit ``name`` set to ``limit``, from the live counters."""
    dimension = DIMENSION[name]
    if dimension.counters == ("cost",):
        return _usd_pair(limit)
    if name == _SECONDS:

        def seconds(b: Boundary, c: Counters) -> tuple[int | float, int | float]:
            value = b.live(dimension)
            return round(value, SECONDS_PLACES), _tidy(name, max(limit - value, 0))

        return seconds
    fields = dimension.counters
    if len(fields) == 1:
        read = attrgetter(fields[0])

        def one(b: Boundary, c: Counters) -> tuple[int | float, int | float]:
            value: int = read(c)
            return value, (limit - value if limit > value else 0)

        return one

    def total(b: Boundary, c: Counters) -> tuple[int | float, int | float]:
        value = used_of(c, fields)
        return value, (limit - value if limit > value else 0)

    return total


#: (used key, remaining key, reader of (used, remaining)) for each limit a session sets.
_Plan = tuple[tuple[str, str, _Pair], ...]


def _plans(b: Boundary) -> dict[str, tuple[str, str, _Pair]]:
    """(used key, remaining key, reader) of each limit the session sets, by limit name."""
    return {
        name: (names.USED_KEYS[name], names.REMAINING_KEYS[name], _live_pair(name, limit))
        for name, limit in b.budget.limits.limited().items()
    }


#: What an LLM call's charge can change (count limits were taken at admission).
_MEASURED = frozenset(name for name, d in DIMENSION.items() if d.rule == "measured")


def _add_live(attrs: _Attrs, b: Boundary, plan: _Plan) -> None:
    """The used and remaining attributes of ``plan``'s limits, read from one look at the
    counters (a few loads per call)."""
    if not plan:
        return
    c = b.counters()
    for used_key, remaining_key, read in plan:
        attrs[used_key], attrs[remaining_key] = read(b, c)


def _final(b: Boundary, result: SessionResult) -> _Attrs:
    """Used (every dimension) and remaining (limited ones) at session end."""
    u = result.usage
    used: dict[str, Any] = {
        name: b.live(d) if d.usage is None else getattr(u, d.usage) for name, d in DIMENSION.items()
    }
    limits = b.budget.limits.limited()
    attrs: _Attrs = {}
    for name, value in used.items():
        attrs[names.USED_KEYS[name]] = _tidy(name, value)
        if name in limits:
            attrs[names.REMAINING_KEYS[name]] = _tidy(name, _left(limits[name], value))
    return attrs


# ----------------------------------------------------------------------------- session span
class _SessionSpan:
    """What a session keeps of its telemetry: the span (or ``None``) and per-call settings."""

    __slots__ = ("capture", "counted", "measured", "plan", "recorded_error", "span", "token")

    def __init__(self, b: Boundary, capture: bool) -> None:
        plans = _plans(b)
        self.plan: _Plan = tuple(plans.values())
        self.measured: _Plan = tuple(p for name, p in plans.items() if name in _MEASURED)
        # An LLM span states the measured dimensions once, when the call has been charged.
        self.counted: _Plan = tuple(p for name, p in plans.items() if name not in _MEASURED)
        self.capture = capture
        self.span: Span | None = None
        self.token: Any = None
        # The exception last recorded on a step span (not its id: a freed one's id is reused).
        self.recorded_error: BaseException | None = None


def start_session(b: Boundary) -> Any:
    """Open the session span and make it current; returns the session's telemetry handle."""
    handle = _SessionSpan(b, _capture_enabled())
    try:
        provider = trace.get_tracer_provider()  # also loads OTEL_PYTHON_TRACER_PROVIDER
        tracer = None if TRACE_STATE["_TRACER_PROVIDER"] is None else _tracer(provider)
        if tracer is not None:
            handle.span = _open_session_span(tracer, b)
            handle.token = otel_context.attach(trace.set_span_in_context(handle.span))
    except Exception:  # telemetry never breaks the agent
        failed("start_session")
    return handle


def _open_session_span(tracer: Tracer, b: Boundary) -> Span:
    session = b.budget
    attrs: _Attrs = {
        names.SESSION_ID: session.session_id,
        names.GEN_AI_CONVERSATION_ID: session.root_session_id,
    }
    if session.name:
        name = names.INVOKE_AGENT_SPAN.format(name=session.name)
        attrs[names.GEN_AI_OPERATION_NAME] = names.OP_INVOKE_AGENT
        attrs[names.GEN_AI_AGENT_NAME] = session.name
        attrs[names.SESSION_NAME] = session.name
    else:
        name = names.SESSION_SPAN
    if session.parent_session_id is not None:
        attrs[names.SESSION_RESUMED_FROM] = session.parent_session_id
    for limit_name, limit in session.limits.limited().items():
        attrs[names.LIMIT_KEYS[limit_name]] = _tidy(limit_name, limit)
        attrs[names.USED_KEYS[limit_name]] = 0
        attrs[names.REMAINING_KEYS[limit_name]] = _tidy(limit_name, limit)
    return tracer.start_span(
        name, kind=SpanKind.INTERNAL, attributes=attrs, links=_resume_links(session)
    )


def _resume_links(session: Any) -> list[Link]:
    """A link to the span of the session this one resumed, when its handoff recorded it."""
    handoff = session.resumed_from
    if handoff is None or not handoff.trace_id or not handoff.span_id:
        return []
    try:
        parent = SpanContext(
            trace_id=int(handoff.trace_id, 16),
            span_id=int(handoff.span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except (TypeError, ValueError):
        return []
    if not parent.is_valid:
        return []
    return [Link(parent, {names.LINK_RESUMED_FROM: handoff.session_id})]


def end_session(
    session: Boundary, handle: Any, result: SessionResult, exc: BaseException | None
) -> None:
    """Record how the session ended on its span, end it, and restore the previous context."""
    if not isinstance(handle, _SessionSpan):
        return
    try:
        if handle.span is not None:
            _close_session_span(handle, session, result, exc)
    except Exception:  # telemetry never breaks the agent
        failed("end_session")
    finally:
        _detach(handle.token)
        handle.token = None


def _close_session_span(
    handle: _SessionSpan, session: Boundary, result: SessionResult, exc: BaseException | None
) -> None:
    span = handle.span
    assert span is not None
    attrs = _final(session, result)
    attrs[names.SESSION_STOP_REASON] = result.stop_reason
    if result.stopped_by is not None:
        attrs[names.SESSION_STOPPED_BY] = result.stopped_by
    attrs[names.SESSION_UNPRICED_CALLS] = result.usage.unpriced_calls
    attrs[names.SESSION_UNMEASURED_CALLS] = result.usage.unmeasured_calls
    status = _status_line(session)
    if status is not None:
        attrs[names.BUDGET_STATUS] = status
    span.set_attributes(attrs)
    if result.stop_reason not in ("completed", "error"):
        span.set_attribute(names.ERROR_TYPE, names.EXHAUSTED_ERROR_TYPE)
        span.set_status(Status(StatusCode.ERROR, f"budget exhausted: {result.stop_reason}"))
    elif exc is not None:
        _mark_error(span, exc, record=exc is not handle.recorded_error, capture=handle.capture)
    elif result.stop_reason == "completed":
        span.set_status(_OK)
    span.end()


def _status_line(session: Boundary) -> str | None:
    """The session's one-line budget status (``Budget: 3 of 5 steps left, ...``)."""
    try:
        line = session.budget.status_line()
    except Exception:  # a status line is a nicety: never fail the span for it
        failed("status_line")
        return None
    return line if isinstance(line, str) else None


def _detach(token: Any) -> None:
    """Undo the session's attach; a block exited in another context leaves that one alone."""
    if token is None:
        return
    var = getattr(token, "var", None)
    try:
        if isinstance(var, ContextVar):
            var.reset(token)
        else:
            otel_context.detach(token)
    except (ValueError, RuntimeError):
        pass


def span_ids(handle: Any) -> tuple[str | None, str | None]:
    """The (trace id, span id) of a session span handle, as hex, for the handoff."""
    span = handle.span if isinstance(handle, _SessionSpan) else None
    if span is None:
        return None, None
    try:
        ctx = span.get_span_context()
    except Exception:  # telemetry never breaks the agent
        return None, None
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None, None  # a span no backend receives is nothing to link to
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def exhausted(session: Boundary, reason: str, refused: str | None) -> None:
    """Add the ``budgetkit.budget.exhausted`` event to the session span; count it."""
    try:
        handle = session.telemetry
        span = handle.span if isinstance(handle, _SessionSpan) else None
        if span is not None:
            span.add_event(names.EXHAUSTED_EVENT, _exhaustion_attrs(session, reason, refused))
        meters = _meters()
        if meters is not None:
            meters.exhaustions.add(1, {names.EXHAUSTED_REASON: reason})
    except Exception:  # telemetry never breaks the agent
        failed("exhausted")


def extended(session: Boundary, reason: str, grant: dict[str, Any]) -> None:
    """Add the ``budgetkit.budget.extended`` event (the reason and the grant) to the span."""
    try:
        handle = session.telemetry
        span = handle.span if isinstance(handle, _SessionSpan) else None
        if span is not None:
            attrs: _Attrs = {
                names.EXHAUSTED_REASON: reason,
                names.SESSION_ID: session.budget.session_id,
            }
            for key, value in grant.items():
                attrs[f"budgetkit.grant.{key}"] = (
                    value if isinstance(value, int | float) else str(value)
                )
            span.add_event("budgetkit.budget.extended", attrs)
    except Exception:  # telemetry never breaks the agent
        failed("extended")


def _exhaustion_attrs(session: Boundary, reason: str, refused: str | None) -> _Attrs:
    attrs: _Attrs = {names.EXHAUSTED_REASON: reason, names.SESSION_ID: session.budget.session_id}
    limit = session.budget.limits.limited().get(reason)
    if limit is not None:
        used, _ = _live_pair(reason, limit)(session, session.counters())
        attrs[names.EXHAUSTED_LIMIT] = _tidy(reason, limit)
        attrs[names.EXHAUSTED_USED] = used
    status = _status_line(session)
    if status is not None:
        attrs[names.BUDGET_STATUS] = status
    if refused is not None:
        attrs[names.EXHAUSTED_REFUSED_STEP] = refused
    return attrs


# ----------------------------------------------------------------------------- call spans
class _LLMSpan:
    """An LLM call's span (``None`` when only metrics record) and its request model."""

    __slots__ = ("model", "span")

    def __init__(self, span: Span | None, model: str | None) -> None:
        self.span = span
        self.model = model


def quiet() -> bool:
    """Whether nothing records an LLM call (no tracer provider, no meter provider): the
    fast path's check, before it would call :func:`start_call` for nothing."""
    return TRACE_STATE["_TRACER_PROVIDER"] is None and _meter_provider() is None


def start_call(session: Boundary, spec: CallSpec, args: Any, kwargs: Any) -> Any:
    """Open a step or LLM-call span; returns a handle or ``None`` when nothing records."""
    provider = TRACE_STATE["_TRACER_PROVIDER"]
    if provider is None and (spec.kind != _LLM or _meter_provider() is None):
        return None  # nothing records: skip all span work
    try:
        tracer = None if provider is None else _tracer(provider)
        if spec.kind == _LLM:
            return _start_llm(tracer, session, spec, args, kwargs)
        if tracer is None:
            return None
        return _start_step(tracer, session, spec, args, kwargs)
    except Exception:  # telemetry never breaks the agent
        failed("start_call")
        return None


def _session_handle(session: Boundary) -> _SessionSpan | None:
    handle = session.telemetry
    return handle if isinstance(handle, _SessionSpan) else None


def _start_step(tracer: Tracer, session: Boundary, spec: CallSpec, args: Any, kwargs: Any) -> Span:
    attrs: _Attrs = {
        names.GEN_AI_OPERATION_NAME: names.OP_EXECUTE_TOOL,
        names.GEN_AI_TOOL_NAME: spec.name,
        names.GEN_AI_TOOL_TYPE: names.TOOL_TYPE_FUNCTION,
        names.SESSION_ID: session.budget.session_id,
        names.GEN_AI_CONVERSATION_ID: session.budget.root_session_id,
    }
    handle = _session_handle(session)
    if handle is not None:
        _add_live(attrs, session, handle.plan)
        if handle.capture:
            attrs[names.GEN_AI_TOOL_CALL_ARGUMENTS] = _content(_arguments(args, kwargs))
    return tracer.start_span(names.EXECUTE_TOOL_SPAN.format(name=spec.name), attributes=attrs)


def _start_llm(
    tracer: Tracer | None, session: Boundary, spec: CallSpec, args: Any, kwargs: Any
) -> _LLMSpan:
    model = spec.request_model(kwargs)
    if tracer is None:  # metrics only
        return _LLMSpan(None, model)
    attrs: _Attrs = {
        names.GEN_AI_OPERATION_NAME: names.OP_CHAT,
        names.SESSION_ID: session.budget.session_id,
        names.GEN_AI_CONVERSATION_ID: session.budget.root_session_id,
    }
    if spec.provider is not None:
        attrs[names.GEN_AI_PROVIDER_NAME] = _provider_name(spec.provider)
    if model is not None:
        attrs[names.GEN_AI_REQUEST_MODEL] = model
    handle = _session_handle(session)
    if handle is not None:
        _add_live(attrs, session, handle.counted)
        if handle.capture:
            _add_input(attrs, args, kwargs)
    name = names.CHAT_SPAN_NO_MODEL if model is None else _chat_span_name(model)
    span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
    return _LLMSpan(span, model)


def end_call(
    handle: Any,
    session: Boundary,
    spec: CallSpec,
    error: BaseException | None,
    usage: Charged | None = None,
    cost: int | None = None,
    result: Any = None,
) -> None:
    """Close a call span: usage (``(model, provider, counts)``), cost (units) and budget
    state for LLM calls; status on error."""
    if handle is None:
        return
    try:
        if isinstance(handle, _LLMSpan):
            _end_llm(handle, session, spec, error, usage, cost, result)
        else:
            _end_step(handle, session, error, result)
    except Exception:  # telemetry never breaks the agent
        failed("end_call")


def _end_step(span: Span, session: Boundary, error: BaseException | None, result: Any) -> None:
    if error is not None:
        _mark_step_error(span, session, error)
    else:
        if result is not None:
            handle = _session_handle(session)
            if handle is not None and handle.capture:
                span.set_attribute(names.GEN_AI_TOOL_CALL_RESULT, _content(result))
        span.set_status(_OK)
    span.end()


def _end_llm(
    handle: _LLMSpan,
    session: Boundary,
    spec: CallSpec,
    error: BaseException | None,
    usage: Charged | None,
    cost: int | None,
    result: Any,
) -> None:
    span = handle.span
    if span is not None:
        if error is None:
            _close_llm_span(span, handle.model, session, spec, usage, cost, result)
        else:
            session_handle = _session_handle(session)
            if session_handle is not None:
                attrs: _Attrs = {}
                _add_live(attrs, session, session_handle.measured)
                span.set_attributes(attrs)
            _mark_step_error(span, session, error)
            span.end()
    if error is None and usage is not None:
        _record_metrics(spec, handle.model, usage, cost)


def _close_llm_span(
    span: Span,
    model: str | None,
    session: Boundary,
    spec: CallSpec,
    usage: Charged | None,
    cost: int | None,
    result: Any,
) -> None:
    attrs = _usage_attrs(spec, usage, cost)
    response_model = None
    if result is not None:
        response_model, provider = _add_response(attrs, result)
        if spec.provider is None and names.GEN_AI_PROVIDER_NAME not in attrs and provider:
            attrs[names.GEN_AI_PROVIDER_NAME] = provider
    handle = _session_handle(session)
    if handle is not None:
        _add_live(attrs, session, handle.measured)
        if handle.capture and result is not None:
            _add_output(attrs, result)
    if model is None:
        # The decorator did not see the request's model: the model that answered stands in.
        answered = usage[0] if usage is not None and usage[0] else response_model
        if answered:
            attrs[names.GEN_AI_REQUEST_MODEL] = answered
            span.update_name(_chat_span_name(answered))
    span.set_attributes(attrs)
    span.set_status(_OK)
    span.end()


def _add_response(attrs: _Attrs, result: Any) -> tuple[str | None, str | None]:
    """``gen_ai.response.id`` / ``.model`` / ``.finish_reasons`` (no content); the model and
    the provider its type tells, read by a reader learnt once per response type."""
    cls = type(result)
    reader = _RESPONSE_READERS.get(cls)
    if reader is None:
        from ._messages import response_reader  # lazily: json and the readers of content

        reader = response_reader(cls)
        if len(_RESPONSE_READERS) < _READERS_LIMIT:
            _RESPONSE_READERS[cls] = reader
    response_id, model, reasons, provider = reader(result)
    if response_id:
        attrs[names.GEN_AI_RESPONSE_ID] = response_id
    if model and names.GEN_AI_RESPONSE_MODEL not in attrs:
        attrs[names.GEN_AI_RESPONSE_MODEL] = model
    if reasons:
        attrs[names.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
    return model, provider


#: The response reader of each exact response type (:func:`_messages.response_reader`).
_RESPONSE_READERS: dict[type, Callable[[Any], ResponseInfo]] = {}
_READERS_LIMIT = 256


def _chat_span_name(model: str) -> str:
    """``chat {model}``, formatted once per model (up to a bound)."""
    name = _CHAT_NAMES.get(model)
    if name is None:
        name = names.CHAT_SPAN.format(model=model)
        if len(_CHAT_NAMES) < _READERS_LIMIT:
            _CHAT_NAMES[model] = name
    return name


_CHAT_NAMES: dict[str, str] = {}
#: The one OK status every span that ends well is given (a ``Status`` is immutable).
_OK = Status(StatusCode.OK)


def _add_input(attrs: _Attrs, args: Any, kwargs: Any) -> None:
    """The request's system instructions and input messages in the conventional shape;
    the call's arguments as they are when the shape is unknown."""
    from ._messages import request_messages

    shaped = request_messages(args, kwargs)
    if shaped is None:
        attrs[names.GEN_AI_INPUT_MESSAGES] = _content(_arguments(args, kwargs))
        return
    system, messages = shaped
    if system:
        attrs[names.GEN_AI_SYSTEM_INSTRUCTIONS] = _shaped_content(system)
    attrs[names.GEN_AI_INPUT_MESSAGES] = _shaped_content(messages)


def _add_output(attrs: _Attrs, result: Any) -> None:
    from ._messages import response_messages

    messages = response_messages(result)
    attrs[names.GEN_AI_OUTPUT_MESSAGES] = (
        _content(result) if messages is None else _shaped_content(messages)
    )


def _usage_attrs(spec: CallSpec, usage: Charged | None, cost: int | None) -> _Attrs:
    if usage is None:
        return {names.CALL_COST_STATUS: names.COST_UNMEASURED}
    model, provider, (inp, out, cache_read, cache_write, reasoning) = usage
    attrs: _Attrs = {
        names.GEN_AI_USAGE_INPUT_TOKENS: inp,
        names.GEN_AI_USAGE_OUTPUT_TOKENS: out,
    }
    if model:
        attrs[names.GEN_AI_RESPONSE_MODEL] = model
    if spec.provider is None and provider:
        attrs[names.GEN_AI_PROVIDER_NAME] = _provider_name(provider)
    if cache_read:
        attrs[names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = cache_read
    if cache_write:
        attrs[names.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = cache_write
    if reasoning:
        attrs[names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = reasoning
    if cost is None:
        attrs[names.CALL_COST_STATUS] = names.COST_UNPRICED
    else:
        attrs[names.CALL_COST_STATUS] = names.COST_PRICED
        attrs[names.CALL_COST_USD] = to_float(cost)
    return attrs


def _provider_name(provider: str) -> str:
    return names.PROVIDER_NAMES.get(provider, provider)


def _mark_step_error(span: Span, session: Boundary, error: BaseException) -> None:
    handle = _session_handle(session)
    capture = handle.capture if handle is not None else _capture_enabled()
    _mark_error(span, error, record=True, capture=capture)
    if handle is not None:
        handle.recorded_error = error


def _mark_error(span: Span, error: BaseException, *, record: bool, capture: bool) -> None:
    """Error status and ``error.type``; the exception event once, on the span that saw it.

    An exception's message and stack trace often hold the call's arguments, so they are
    content: recorded only with content capture on. Without it, the status and the event say
    the exception's type, and budgetkit's ``reason`` for its own errors.
    """
    from .exceptions import BudgetError

    span.set_attribute(names.ERROR_TYPE, _error_type(error))
    kind = type(error).__name__
    reason = getattr(error, "reason", None) if isinstance(error, BudgetError) else None
    if capture:
        description = f"{kind}: {error}"
    elif isinstance(reason, str):
        description = f"{kind} (reason: {reason})"
    else:
        description = kind
    span.set_status(Status(StatusCode.ERROR, description))
    if not record:
        return
    if capture:
        span.record_exception(error, escaped=True)
        return
    attrs: _Attrs = {"exception.type": kind, "exception.escaped": "True"}
    if isinstance(reason, str):
        attrs[names.EXHAUSTED_REASON] = reason
    span.add_event("exception", attrs)


def _error_type(error: BaseException) -> str:
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# ----------------------------------------------------------------------------- content
def _arguments(args: Any, kwargs: Any) -> Any:
    """A call's arguments as one JSON-ready value: keyword arguments, plus ``args`` if any."""
    out: dict[str, Any] = {"args": list(args)} if args else {}
    out.update(kwargs)
    return out


def _content(value: Any) -> str:
    """``value`` as JSON (objects via ``model_dump``/``to_dict``/``repr``), truncated."""
    if isinstance(value, str):
        text = value
    else:
        import json  # lazily: only content capture needs it

        try:
            text = json.dumps(value, default=_jsonable, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
    if len(text) > MAX_CONTENT_CHARS:
        text = text[: MAX_CONTENT_CHARS - 1] + "…"
    return text


def _jsonable(value: Any) -> Any:
    for method in ("model_dump", "to_dict"):
        dump = getattr(value, method, None)
        if callable(dump):
            try:
                return dump()
            except Exception:  # fall back to repr
                break
    if isinstance(value, Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    return repr(value)


def _shaped_content(value: Any) -> str:
    """Conventional messages or parts as JSON, still valid JSON when too long: the longest
    strings are shortened (ending with an ellipsis) until it fits :data:`MAX_CONTENT_CHARS`."""
    import json

    text = json.dumps(value, default=_jsonable, ensure_ascii=False)
    cap = MAX_CONTENT_CHARS
    while len(text) > MAX_CONTENT_CHARS and cap > 16:
        cap //= 2
        value = _shorten(value, cap)
        text = json.dumps(value, default=_jsonable, ensure_ascii=False)
    return text if len(text) <= MAX_CONTENT_CHARS else _content(text)


def _shorten(value: Any, cap: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= cap else value[: cap - 1] + "…"
    if isinstance(value, dict):
        return {k: _shorten(v, cap) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, cap) for v in value]
    return value


# ----------------------------------------------------------------------------- metrics
class _Instruments:
    """budgetkit's instruments on the global meter provider."""

    __slots__ = ("cost", "exhaustions", "token_usage")

    def __init__(self, token_usage: Histogram, cost: Counter, exhaustions: Counter) -> None:
        self.token_usage = token_usage
        self.cost = cost
        self.exhaustions = exhaustions


def _meter_provider() -> Any:
    """The global meter provider, or ``None`` when none is set.

    An application that set one has imported the metrics API, so it is looked up in
    ``sys.modules`` rather than imported: ``import budgetkit`` stays cheap.
    """
    internal = sys.modules.get("opentelemetry.metrics._internal")
    return None if internal is None else getattr(internal, "_METER_PROVIDER", None)


def _meters() -> _Instruments | None:
    """The instruments, or ``None`` until the application sets a meter provider."""
    provider = _meter_provider()
    if provider is None:
        return None
    if provider is not _Settings.meter_provider:
        _Settings.meters, _Settings.meter_provider = _make_instruments(), provider
    return _Settings.meters


def _make_instruments() -> _Instruments:
    from opentelemetry import metrics

    meter = metrics.get_meter(names.INSTRUMENTATION_NAME, _version(), schema_url=names.SCHEMA_URL)
    try:
        tokens = meter.create_histogram(
            names.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(names.TOKEN_BUCKETS),
        )
    except TypeError:  # opentelemetry-api < 1.30 has no bucket advisory
        tokens = meter.create_histogram(names.METRIC_TOKEN_USAGE, unit="{token}")
    cost = meter.create_counter(
        names.METRIC_COST, unit="{USD}", description="Known cost of LLM calls, in US dollars."
    )
    exhaustions = meter.create_counter(
        names.METRIC_EXHAUSTIONS, unit="{exhaustion}", description="Sessions stopped by a budget."
    )
    return _Instruments(tokens, cost, exhaustions)


def _record_metrics(spec: CallSpec, model: str | None, usage: Charged, cost: int | None) -> None:
    meters = _meters()
    if meters is None:
        return
    response_model, usage_provider, counts = usage
    attrs: _Attrs = {names.GEN_AI_OPERATION_NAME: names.OP_CHAT}
    provider = spec.provider or usage_provider
    if provider:
        attrs[names.GEN_AI_PROVIDER_NAME] = _provider_name(provider)
    if response_model:
        attrs[names.GEN_AI_RESPONSE_MODEL] = response_model
    if model:
        attrs[names.GEN_AI_REQUEST_MODEL] = model
    meters.token_usage.record(counts[0], {**attrs, names.GEN_AI_TOKEN_TYPE: names.TOKEN_TYPE_INPUT})
    meters.token_usage.record(
        counts[1], {**attrs, names.GEN_AI_TOKEN_TYPE: names.TOKEN_TYPE_OUTPUT}
    )
    if cost is not None:
        meters.cost.add(to_float(cost), attrs)
