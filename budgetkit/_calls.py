"""What happens when a decorated call enters and leaves: admission, recording, spans."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from opentelemetry import trace as _trace

from . import _otel
from ._events import emit
from ._events import listeners as _listeners
from ._limits import to_usd
from ._session import LLM, CallSpec, SessionBudget
from ._usage import Usage
from .exceptions import UnmeasuredUsageWarning


def enter_step(session: SessionBudget, spec: CallSpec, args: Any, kwargs: Any) -> Any:
    """The step boundary: admit (or raise ``BudgetExhausted``), then open the span."""
    session._admit_step(spec.name)
    if _trace._TRACER_PROVIDER is None:  # the same no-SDK check as _otel.start_call, inlined
        return None
    return _otel.start_call(session, spec, args, kwargs)


def exit_step(
    session: SessionBudget,
    spec: CallSpec,
    handle: Any,
    error: BaseException | None,
    result: Any = None,
) -> None:
    """Record the outcome of an admitted step."""
    if error is None:
        session._call_succeeded()
    else:
        session._call_failed(error)
    if handle is not None:
        _otel.end_call(handle, session, spec, _real_error(error), result=result)


def _real_error(error: BaseException | None) -> BaseException | None:
    """A generator closed early (``GeneratorExit``) finished, it did not fail."""
    return None if isinstance(error, GeneratorExit) else error


def request_model(spec: CallSpec, kwargs: Mapping[str, Any]) -> str | None:
    """The model the call asks for: the decorator's ``model=``, else the ``model`` argument."""
    if spec.model is not None:
        return spec.model
    model = kwargs.get("model")
    return model if isinstance(model, str) else None


class LLMCall:
    """One admitted ``@budget.llm_call``: its reservation, span, and settlement."""

    __slots__ = ("_done", "handle", "model", "reserved", "session", "spec")

    def __init__(self, session: SessionBudget, spec: CallSpec, args: Any, kwargs: Any) -> None:
        self.session = session
        self.spec = spec
        self.model = request_model(spec, kwargs)
        self.reserved = _estimate(session, spec, self.model, args, kwargs)
        session._admit(LLM, spec.name, self.reserved, wrapup=spec.wrapup)
        self.handle = _otel.start_call(session, spec, args, kwargs)
        self._done = False

    def fail(self, error: BaseException) -> None:
        """The call raised: release the reservation, count the error."""
        if self._done:
            return
        self._done = True
        self.session._release(self.reserved or Decimal(0))
        self.session._call_failed(error)
        _otel.end_call(self.handle, self.session, self.spec, _real_error(error))

    def finish(self, result: Any) -> Any:
        """The call returned: read usage now, or wrap a stream that settles when it ends."""
        from ._streams import wrap_stream

        proxy = wrap_stream(
            result, self.stream_ended, model=self.model, provider=self.spec.provider
        )
        if proxy is not None:
            return proxy
        self.settle(self.read_usage(result), result=result, streamed=False)
        return result

    def stream_ended(self, usage: Usage | None) -> None:
        """Called once by a stream proxy when the stream is exhausted, closed or fails."""
        self.settle(self._fill(usage), result=None, streamed=True)

    def read_usage(self, result: Any) -> Usage | None:
        """Usage of a non-streamed result; malformed usage warns and counts as unmeasured."""
        from ._extract import MalformedUsageError, extract_usage

        spec = self.spec
        try:
            raw = result if spec.usage is None else spec.usage(result)
            if raw is None or isinstance(raw, Usage):
                usage = raw
            else:
                usage = extract_usage(raw, model=self.model, provider=spec.provider)
        except MalformedUsageError as exc:
            warnings.warn(
                f"budgetkit: ignoring malformed usage from {spec.name!r}: {exc}",
                UnmeasuredUsageWarning,
                stacklevel=4,
            )
            return None
        except Exception as exc:  # a user's usage= callable must not break the call
            warnings.warn(
                f"budgetkit: the usage= callable of {spec.name!r} raised {exc!r}; "
                "the call is counted as unmeasured",
                UnmeasuredUsageWarning,
                stacklevel=4,
            )
            return None
        return self._fill(usage)

    def _fill(self, usage: Usage | None) -> Usage | None:
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
        """Price the usage, charge it, release the reservation, close the span."""
        if self._done:
            return
        self._done = True
        session = self.session
        cost: Decimal | None = None
        if usage is not None:
            from ._pricing import price_usage

            cost = price_usage(usage, prices=session._all_prices())
        session._record(usage, cost, priced=cost is not None, release=self.reserved)
        if usage is None:
            _warn_unmeasured(session, self.spec, streamed=streamed)
        elif cost is None:
            session._cost_unknown(usage.model)
        session._call_succeeded()
        if _listeners:
            emit("llm_call", session, name=self.spec.name, usage=usage, cost_usd=cost)
        _otel.end_call(self.handle, session, self.spec, None, usage, cost, result)


def _estimate(
    session: SessionBudget, spec: CallSpec, model: str | None, args: Any, kwargs: Any
) -> Decimal | None:
    """The USD to reserve for a call with ``estimate=``: a number, or token counts to price."""
    if spec.estimate is None:
        return None
    value = spec.estimate(*args, **kwargs)
    if value is None:  # the estimator has no bound for this call
        return None
    if isinstance(value, Mapping):
        from ._pricing import price_estimate

        cost = price_estimate(value, model, spec.provider, session._all_prices())
        if cost is None:
            session._cost_unknown(model)
        return cost
    return to_usd(value, f"the estimate of {spec.name!r}", allow_zero=True)


def _warn_unmeasured(session: SessionBudget, spec: CallSpec, *, streamed: bool) -> None:
    key = "stream" if streamed else "response"
    if key in session._warned_unmeasured:
        return
    session._warned_unmeasured.add(key)
    if streamed:
        from ._streams import STREAM_USAGE_HINT

        hint = STREAM_USAGE_HINT
    else:
        hint = "pass usage=callable to @budget.llm_call to read it from your return type"
    warnings.warn(
        f"budgetkit: {spec.name!r} returned no token usage, so session {session.session_id!r} "
        f"counts the call but cannot measure it; {hint}",
        UnmeasuredUsageWarning,
        stacklevel=4,
    )
