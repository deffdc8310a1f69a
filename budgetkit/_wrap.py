"""The one module that knows call shapes: plain, coroutine, generator, async generator.

Every shape follows the same rule: the boundary is where the body starts running. A plain
call is checked when called; a coroutine when it starts running (awaited or scheduled as a
task), not when the coroutine object is created; a generator or async generator on its first
iteration. One generator is one step however many items it yields.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

import wrapt

from . import _otel
from ._boundary import Boundary, active
from ._calls import (
    LLMCall,
    Nesting,
    admit_step_call,
    await_marked,
    enter_step,
    exit_step,
    llm_finished,
    run_marked,
)
from ._otel import start_call
from ._threads import OPEN, unbudgeted
from ._values import LLM, CallSpec
from .exceptions import StepTimeoutError

_TRACE = _otel.TRACE_STATE

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def kind_of(fn: Any) -> str:
    """``"asyncgen"``, ``"coroutine"``, ``"generator"`` or ``"sync"``."""
    f = getattr(fn, "__func__", fn)  # classmethod / staticmethod objects
    if inspect.isasyncgenfunction(f):
        return "asyncgen"
    if inspect.iscoroutinefunction(f):
        return "coroutine"
    if inspect.isgeneratorfunction(f):
        return "generator"
    return "sync"


def wrap(fn: Any, spec: CallSpec) -> Any:
    """Wrap ``fn`` with the boundary for its shape; signature and introspection are kept."""
    if not callable(fn) and not isinstance(fn, classmethod | staticmethod):
        from .exceptions import BudgetTypeError

        raise BudgetTypeError(f"@budget.{spec.kind} decorates a callable, got {fn!r}")
    shape = kind_of(fn)
    sync: Callable[[CallSpec], Wrapper]
    coroutine: Callable[[CallSpec], Wrapper]
    if spec.kind == LLM:
        sync, coroutine = llm_wrapper, llm_coroutine_wrapper
    elif (
        spec.wrapup
        or spec.timeout is not None
        or spec.max_output_chars is not None
        or spec.max_calls is not None
        or spec.cost is not None
    ):
        sync, coroutine = _sync_step_options, _coro_step_options
    else:
        sync, coroutine = _sync_step, _coro_step
    factories = {
        "sync": sync,
        "coroutine": coroutine,
        "generator": _gen_wrapper,
        "asyncgen": _agen_wrapper,
    }
    factory: Callable[[CallSpec], Wrapper] = factories[shape]
    return wrapt.FunctionWrapper(fn, factory(spec))


# ---------------------------------------------------------------------------- steps
def _sync_step(spec: CallSpec) -> Wrapper:
    # enter_step/exit_step inlined for the hot path: the rules stay in Boundary's
    # _admit_step/_call_succeeded and _otel; only the Python call layers are skipped.
    name = spec.name
    current = active.get  # a closure variable: one load cheaper than the global's method

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = current()
        if session is None:
            if OPEN.count:
                unbudgeted(spec)
            return wrapped(*args, **kwargs)
        if session.repeats:
            admit_step_call(session, spec, args, kwargs)
        else:
            session.admit_step(name)
        handle = (
            None if _TRACE["_TRACER_PROVIDER"] is None else start_call(session, spec, args, kwargs)
        )
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            exit_step(session, spec, handle, exc)
            raise
        if session.errors_pending or handle is not None:
            exit_step(session, spec, handle, None, result)
        return result

    return wrapper


def _coro_step(spec: CallSpec) -> Wrapper:
    name = spec.name
    current = active.get

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = current()
        if session is None:
            if OPEN.count:
                unbudgeted(spec)
            return await wrapped(*args, **kwargs)
        if session.repeats:
            admit_step_call(session, spec, args, kwargs)
        else:
            session.admit_step(name)
        handle = (
            None if _TRACE["_TRACER_PROVIDER"] is None else start_call(session, spec, args, kwargs)
        )
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            exit_step(session, spec, handle, exc)
            raise
        if session.errors_pending or handle is not None:
            exit_step(session, spec, handle, None, result)
        return result

    return wrapper


def _sync_step_options(spec: CallSpec) -> Wrapper:
    """A step with ``wrapup=``, ``timeout=`` or ``max_output_chars=`` (off the hot path)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = active.get()
        if session is None:
            if OPEN.count:
                unbudgeted(spec)
            return wrapped(*args, **kwargs)
        handle = _enter_with_options(session, spec, args, kwargs)
        started = time.monotonic()
        try:
            result = wrapped(*args, **kwargs)
            if spec.timeout is not None and time.monotonic() - started > spec.timeout:
                raise StepTimeoutError(
                    f"step {spec.name!r} took longer than timeout={spec.timeout}s "
                    "(sync steps are judged when they return)"
                )
            result = _truncate(result, spec.max_output_chars)
        except BaseException as exc:
            exit_step(session, spec, handle, exc)
            raise
        exit_step(session, spec, handle, None, result)
        return result

    return wrapper


def _coro_step_options(spec: CallSpec) -> Wrapper:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = active.get()
        if session is None:
            if OPEN.count:
                unbudgeted(spec)
            return await wrapped(*args, **kwargs)
        handle = _enter_with_options(session, spec, args, kwargs)
        try:
            if spec.timeout is None:
                result = await wrapped(*args, **kwargs)
            else:
                try:
                    result = await asyncio.wait_for(wrapped(*args, **kwargs), spec.timeout)
                except TimeoutError as exc:
                    raise StepTimeoutError(
                        f"step {spec.name!r} was cancelled at timeout={spec.timeout}s"
                    ) from exc
            result = _truncate(result, spec.max_output_chars)
        except BaseException as exc:
            exit_step(session, spec, handle, exc)
            raise
        exit_step(session, spec, handle, None, result)
        return result

    return wrapper


def _enter_with_options(session: Boundary, spec: CallSpec, args: Any, kwargs: Any) -> Any:
    if spec.wrapup:
        admit_step_call(session, spec, args, kwargs, wrapup=True)
        return start_call(session, spec, args, kwargs)
    return enter_step(session, spec, args, kwargs)


def _truncate(result: Any, limit: int | None) -> Any:
    """Cut a string result to at most ``limit`` characters, the visible marker included.

    The full marker (:data:`TRUNCATION_MARKER`) is used while it takes at most half the
    limit, then the short one (:data:`SHORT_TRUNCATION_MARKER`) while some text still fits,
    then a lone ``…``.
    """
    if limit is None or not isinstance(result, str) or len(result) <= limit:
        return result
    size = len(result)
    for marker, most in ((TRUNCATION_MARKER, limit // 2), (SHORT_TRUNCATION_MARKER, limit - 1)):
        # The widest marker (every character cut) bounds the one actually written; then
        # keep the characters its narrower count frees, if the count stays as narrow.
        keep = limit - len(marker.format(n=size))
        if keep < 1 or len(marker.format(n=size)) > most:
            continue
        wider = limit - len(marker.format(n=size - keep))
        if len(marker.format(n=size - wider)) == len(marker.format(n=size - keep)):
            keep = wider
        return result[:keep] + marker.format(n=size - keep)
    return result[: limit - 1] + "\u2026"


TRUNCATION_MARKER = "\n[... {n} more characters truncated by budgetkit]"
SHORT_TRUNCATION_MARKER = "\u2026[+{n} chars]"


# ---------------------------------------------------------------------------- LLM calls
def llm_wrapper(spec: CallSpec, current: Callable[[], Boundary | None] = active.get) -> Wrapper:
    """The sync LLM-call wrapper; ``current`` finds the session (``instrument()`` widens it,
    and does its own finding: a call it leaves uncharged is not an unbudgeted one)."""
    name = spec.name
    watch = current is active.get  # warn about calls that lost their session's context
    plain = spec.estimate is None and not spec.wrapup  # admitted without a reservation

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = current()
        if session is None:
            if watch and OPEN.count:
                unbudgeted(spec)
            return wrapped(*args, **kwargs)
        call = None if plain else LLMCall.prepare(session, spec, args, kwargs)
        handle = None
        try:  # from admission on: an interrupted call is still charged (LLMCall.fail)
            if call is None:
                session.admit_llm(name)
                handle = None if _otel.quiet() else start_call(session, spec, args, kwargs)
            else:
                call.admit(args, kwargs)
            result = (
                run_marked(wrapped, args, kwargs) if Nesting.guard else wrapped(*args, **kwargs)
            )
            if call is not None:
                return call.finish(result)
            return llm_finished(session, spec, handle, kwargs, result)
        except BaseException as exc:  # the body failed, or settling it was interrupted
            (call or LLMCall(session, spec, None, None, handle)).fail(exc)
            raise

    return wrapper


def llm_coroutine_wrapper(
    spec: CallSpec, current: Callable[[], Boundary | None] = active.get
) -> Wrapper:
    """The ``async def`` LLM-call wrapper; ``current`` as in :func:`llm_wrapper`."""
    name = spec.name
    watch = current is active.get
    plain = spec.estimate is None and not spec.wrapup

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = current()
        if session is None:
            if watch and OPEN.count:
                unbudgeted(spec)
            return await wrapped(*args, **kwargs)
        call = None if plain else LLMCall.prepare(session, spec, args, kwargs)
        handle = None
        try:  # from admission on: an interrupted call is still charged (LLMCall.fail)
            if call is None:
                session.admit_llm(name)
                handle = None if _otel.quiet() else start_call(session, spec, args, kwargs)
            else:
                call.admit(args, kwargs)
            if Nesting.guard:
                result = await await_marked(wrapped, args, kwargs)
            else:
                result = await wrapped(*args, **kwargs)
            if call is not None:
                return call.finish(result)
            return llm_finished(session, spec, handle, kwargs, result)
        except BaseException as exc:  # the body failed, or settling it was interrupted
            (call or LLMCall(session, spec, None, None, handle)).fail(exc)
            raise

    return wrapper


# ---------------------------------------------------------------------------- generators
def _gen_wrapper(spec: CallSpec) -> Wrapper:
    run = _gen_llm if spec.kind == LLM else _gen_step

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = active.get()
        if session is None:
            if OPEN.count:
                unbudgeted(spec)
            return wrapped(*args, **kwargs)
        return run(session, spec, wrapped(*args, **kwargs), args, kwargs)

    return wrapper


def _gen_step(
    session: Boundary, spec: CallSpec, gen: Generator[Any, Any, Any], args: Any, kwargs: Any
) -> Generator[Any, Any, Any]:
    handle = enter_step(session, spec, args, kwargs)
    try:
        result = yield from gen
    except BaseException as exc:
        exit_step(session, spec, handle, exc)
        raise
    exit_step(session, spec, handle, None)
    return result


def _gen_llm(
    session: Boundary, spec: CallSpec, gen: Generator[Any, Any, Any], args: Any, kwargs: Any
) -> Generator[Any, Any, Any]:
    call = LLMCall.begin(session, spec, args, kwargs)
    stream = call.finish(gen)  # a proxy that settles the call when the stream ends
    try:
        yield from stream
    except BaseException as exc:
        call.fail(exc)
        raise
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _agen_wrapper(spec: CallSpec) -> Wrapper:
    run = _agen_llm if spec.kind == LLM else _agen_step

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        session = active.get()
        if session is None:
            if OPEN.count:
                unbudgeted(spec)
            return wrapped(*args, **kwargs)
        return run(session, spec, wrapped(*args, **kwargs), args, kwargs)

    return wrapper


async def _agen_step(
    session: Boundary, spec: CallSpec, agen: AsyncGenerator[Any, Any], args: Any, kwargs: Any
) -> AsyncGenerator[Any, Any]:
    # Re-yields agen by hand (``async for`` would drop asend/athrow), forwarding all of them.
    handle = enter_step(session, spec, args, kwargs)
    try:
        try:
            item = await agen.__anext__()
        except StopAsyncIteration:
            item = _DONE
        while item is not _DONE:
            try:
                sent = yield item
            except GeneratorExit:
                await agen.aclose()
                raise
            except BaseException as thrown:  # forwarded into the generator
                step = agen.athrow(thrown)
            else:
                step = agen.__anext__() if sent is None else agen.asend(sent)
            try:
                item = await step
            except StopAsyncIteration:
                item = _DONE
    except BaseException as exc:
        exit_step(session, spec, handle, exc)
        raise
    exit_step(session, spec, handle, None)


_DONE: Any = object()


async def _agen_llm(
    session: Boundary, spec: CallSpec, agen: AsyncGenerator[Any, Any], args: Any, kwargs: Any
) -> AsyncGenerator[Any, Any]:
    call = LLMCall.begin(session, spec, args, kwargs)
    stream = call.finish(agen)
    try:
        async for item in stream:
            yield item
    except BaseException as exc:
        call.fail(exc)
        raise
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
