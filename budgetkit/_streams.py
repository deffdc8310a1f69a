"""Transparent proxies that measure the usage of streamed LLM responses.

:func:`wrap_stream` wraps a stream the way the caller already uses it (sync or
async iteration, ``with`` / ``async with``, attribute access) and reports the
stream's usage exactly once, when it is exhausted, closed, exited or fails.

Accumulation follows each provider's streaming contract:

* OpenAI chat: the last chunk whose ``usage`` is not null (only sent with
  ``stream_options={"include_usage": True}``);
* OpenAI Responses: the terminal event's ``response.usage``;
* Anthropic raw events: ``message_start`` usage, overwritten field by field by the
  non-``None`` fields of each ``message_delta`` usage (they are cumulative);
  ``client.messages.stream(...)`` also uses the SDK's final message snapshot;
* Gemini: cumulative snapshots, each replacing the last, with fields a later
  chunk dropped kept from earlier ones;
* LangChain ``AIMessageChunk``: summed;
* Bedrock ``converse_stream``: the ``metadata`` event.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import AsyncGeneratorType, GeneratorType
from typing import TYPE_CHECKING, Any, Final

import wrapt

from ._extract import (
    ANTHROPIC_USAGE_FIELDS,
    GEMINI_USAGE_FIELDS,
    TERMINAL_RESPONSE_EVENTS,
    MalformedUsageError,
    extract_usage,
    read_fields,
)
from ._usage import Usage
from .exceptions import UnmeasuredUsageWarning

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["STREAM_USAGE_HINT", "wrap_stream"]

STREAM_USAGE_HINT: Final = (
    "The stream ended without reporting token usage. For OpenAI chat completions pass "
    'stream_options={"include_usage": True} so the last chunk carries the usage.'
)
"""How to make a stream report its usage; for the core's unmeasured-call warning."""

OnEnd = Callable[[Usage | None], None]

_PROXY_TYPES: dict[type, type[_StreamProxy] | None] = {}
_PROXY_TYPES_LIMIT: Final = 1024
_NOT_STREAMS: Final = (
    str,
    bytes,
    bytearray,
    memoryview,
    Mapping,
    list,
    tuple,
    set,
    frozenset,
    range,
)
_SDK_MODULES: Final = ("openai.", "anthropic.")
_SNAPSHOT_ATTRIBUTES: Final = ("current_message_snapshot", "current_completion_snapshot")


def wrap_stream(
    result: object,
    on_end: OnEnd,
    *,
    model: str | None = None,
    provider: str | None = None,
) -> object | None:
    """Wrap ``result`` in a measuring proxy if it is a stream.

    Streams are OpenAI and Anthropic ``Stream`` / ``AsyncStream`` objects and
    their helper streams (``MessageStream``, ``ChatCompletionStream`` ...), the
    ``...StreamManager`` context managers that ``.stream(...)`` returns,
    generators, async generators and other iterators. Strings, bytes,
    containers, and models that merely are iterable are not streams.

    Args:
        result: the value an LLM call returned.
        on_end: called exactly once with the stream's usage, or ``None`` when
            the stream reported none, when it is exhausted, closed, exited, or
            raises; also when the caller stops iterating early (``break``).
            Exceptions it raises propagate to the caller.
        model: the model to record when the stream does not name one.
        provider: a provider id hint for pricing.

    Returns:
        A proxy that behaves like ``result``, or ``None`` if ``result`` is not a stream.
    """
    proxy_type = _proxy_type(result)
    if proxy_type is None:
        return None
    return proxy_type(result, _Tracker(on_end, model, provider))


def _proxy_type(result: object) -> type[_StreamProxy] | None:
    """The proxy for ``result``, decided by its class (cached: this runs on every call)."""
    cls = type(result)
    try:
        return _PROXY_TYPES[cls]
    except KeyError:
        pass
    proxy_type = _classify(cls)
    if len(_PROXY_TYPES) < _PROXY_TYPES_LIMIT:
        _PROXY_TYPES[cls] = proxy_type
    return proxy_type


def _classify(cls: type) -> type[_StreamProxy] | None:
    if issubclass(cls, _NOT_STREAMS):
        return None
    if issubclass(cls, GeneratorType):
        return _SyncStreamProxy
    if issubclass(cls, AsyncGeneratorType):
        return _AsyncStreamProxy
    module = cls.__module__
    if module == "unittest.mock":
        return None
    from_sdk = module.startswith(_SDK_MODULES)
    if from_sdk and cls.__name__.endswith("StreamManager"):
        return _StreamManagerProxy
    if hasattr(cls, "model_dump") or hasattr(cls, "__dataclass_fields__"):
        return None  # a response model that happens to be iterable
    if hasattr(cls, "__anext__") or (from_sdk and hasattr(cls, "__aiter__")):
        return _AsyncStreamProxy
    if hasattr(cls, "__next__") or (from_sdk and hasattr(cls, "__iter__")):
        return _SyncStreamProxy
    return None


class _Tracker:
    """Accumulates one stream's usage and reports it exactly once."""

    def __init__(self, on_end: OnEnd, model: str | None, provider: str | None) -> None:
        self._on_end = on_end
        self._model = model
        self._provider = provider
        self._lock = threading.Lock()
        self._finished = False
        self._last: Usage | None = None  # OpenAI, Responses, Bedrock, anything else
        self._summed: Usage | None = None  # LangChain chunks
        self._anthropic: dict[str, object] | None = None
        self._gemini: dict[str, object] | None = None
        self._stream_model: object = None
        self._malformed: MalformedUsageError | None = None

    def observe(self, item: object) -> None:
        """Feed one streamed item; never raises."""
        try:
            self._observe(item)
        except MalformedUsageError as error:
            self._malformed = error
        except Exception:  # noqa: S110 - measuring must never break the caller's stream
            pass

    def finish(self, source: object = None) -> None:
        """Report the usage, once; ``source`` may hold an SDK's final snapshot."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        usage = self._snapshot_usage(source) or self._accumulated_usage()
        if usage is None and self._malformed is not None:
            warnings.warn(
                f"budgetkit ignored a stream's usage: {self._malformed}",
                UnmeasuredUsageWarning,
                stacklevel=2,
            )
        self._on_end(usage)

    def _observe(self, item: object) -> None:
        kind = _get(item, "type")
        if kind == "message_start":
            message = _get(item, "message")
            self._stream_model = _get(message, "model")
            self._anthropic = read_fields(_get(message, "usage"), ANTHROPIC_USAGE_FIELDS)
        elif kind == "message_delta":
            delta_usage = _get(item, "usage")
            if delta_usage is not None:
                fields = self._anthropic if self._anthropic is not None else {}
                fields.update(read_fields(delta_usage, ANTHROPIC_USAGE_FIELDS))
                self._anthropic = fields
        elif kind in TERMINAL_RESPONSE_EVENTS:
            self._last = self._extract(item) or self._last
        elif kind == "chunk" and _get(item, "chunk") is not None:  # openai .stream() helper
            self._observe(_get(item, "chunk"))
        else:
            self._observe_chunk(item)

    def _observe_chunk(self, item: object) -> None:
        metadata = _get(item, "usage_metadata")
        if metadata is None and isinstance(item, Mapping):
            metadata = item.get("usageMetadata")
        if isinstance(metadata, Mapping) and "input_tokens" in metadata:
            self._summed = _add(self._summed, self._extract(item))
        elif metadata is not None:
            self._stream_model = _gemini_model(item) or self._stream_model
            fields = self._gemini if self._gemini is not None else {}
            fields.update(read_fields(metadata, GEMINI_USAGE_FIELDS))
            self._gemini = fields
        elif _get(item, "usage") is not None or isinstance(_get(item, "metadata"), Mapping):
            self._last = self._extract(item) or self._last

    def _extract(self, item: object) -> Usage | None:
        return extract_usage(item, model=self._model, provider=self._provider)

    def _snapshot_usage(self, source: object) -> Usage | None:
        if source is None:
            return None
        for name in _SNAPSHOT_ATTRIBUTES:
            try:
                snapshot = getattr(source, name, None)
                usage = self._extract(snapshot) if snapshot is not None else None
            except Exception:  # noqa: S112 - no snapshot yet (the SDK asserts)
                continue
            if usage is not None:
                return usage
        return None

    def _accumulated_usage(self) -> Usage | None:
        try:
            stream_model = self._stream_model if isinstance(self._stream_model, str) else None
            if self._anthropic is not None:
                return self._extract({"model": stream_model, "usage": self._anthropic})
            if self._gemini is not None:
                return self._extract(
                    {"model_version": stream_model, "usage_metadata": self._gemini}
                )
        except MalformedUsageError as error:
            self._malformed = error
            return None
        return self._summed or self._last


class _StreamProxy(wrapt.BaseObjectProxy[Any]):
    """Base of the proxies: holds the tracker."""

    _self_tracker: _Tracker

    def __init__(self, wrapped: Any, tracker: _Tracker) -> None:
        super().__init__(wrapped)
        self._self_tracker = tracker

    def _self_wrap_entered(self, entered: Any) -> Any:
        """What ``with`` binds: this proxy, or a proxy of the stream the manager opened."""
        if entered is self.__wrapped__:
            return self
        proxy_type = _proxy_type(entered)
        if proxy_type is None or proxy_type is _StreamManagerProxy:
            return entered
        return proxy_type(entered, self._self_tracker)

    def _self_source(self) -> Any:
        """What may hold the SDK's final usage snapshot when the stream ends."""
        return self.__wrapped__


class _SyncContext(_StreamProxy):
    """``with``: report the usage when the block exits, or when entering fails."""

    def __enter__(self) -> Any:
        try:
            entered = self.__wrapped__.__enter__()
        except BaseException:
            self._self_tracker.finish(self._self_source())
            raise
        return self._self_wrap_entered(entered)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            exit_result: bool | None = self.__wrapped__.__exit__(exc_type, exc_value, traceback)
        finally:
            self._self_tracker.finish(self._self_source())
        return exit_result


class _AsyncContext(_StreamProxy):
    """``async with``: report the usage when the block exits, or when entering fails."""

    async def __aenter__(self) -> Any:
        try:
            entered = await self.__wrapped__.__aenter__()
        except BaseException:
            self._self_tracker.finish(self._self_source())
            raise
        return self._self_wrap_entered(entered)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            exit_result: bool | None = await self.__wrapped__.__aexit__(
                exc_type, exc_value, traceback
            )
        finally:
            self._self_tracker.finish(self._self_source())
        return exit_result


class _SyncStreamProxy(_SyncContext):
    """Proxy of a sync stream, generator or iterator."""

    def __iter__(self) -> Iterator[Any]:
        return self._self_iterate()

    def _self_iterate(self) -> Iterator[Any]:
        tracker = self._self_tracker
        try:
            for item in self.__wrapped__:
                tracker.observe(item)
                yield item
        finally:  # exhausted, raised, or closed after ``break``
            tracker.finish(self.__wrapped__)

    def __next__(self) -> Any:
        return self._self_step(self.__wrapped__.__next__)

    def send(self, value: Any) -> Any:
        """``generator.send``, measured."""
        return self._self_step(lambda: self.__wrapped__.send(value))

    def throw(self, *args: Any) -> Any:
        """``generator.throw``, measured."""
        return self._self_step(lambda: self.__wrapped__.throw(*args))

    def _self_step(self, advance: Callable[[], Any]) -> Any:
        try:
            item = advance()
        except BaseException:
            self._self_tracker.finish(self.__wrapped__)
            raise
        self._self_tracker.observe(item)
        return item

    def close(self) -> Any:
        """Close the stream and report its usage."""
        try:
            return self.__wrapped__.close()
        finally:
            self._self_tracker.finish(self.__wrapped__)


class _AsyncStreamProxy(_AsyncContext):
    """Proxy of an async stream, async generator or async iterator."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._self_aiterate()

    async def _self_aiterate(self) -> AsyncIterator[Any]:
        tracker = self._self_tracker
        try:
            async for item in self.__wrapped__:
                tracker.observe(item)
                yield item
        finally:  # exhausted, raised, or closed after ``break``
            tracker.finish(self.__wrapped__)

    async def __anext__(self) -> Any:
        return await self._self_astep(self.__wrapped__.__anext__())

    async def asend(self, value: Any) -> Any:
        """``async_generator.asend``, measured."""
        return await self._self_astep(self.__wrapped__.asend(value))

    async def athrow(self, *args: Any) -> Any:
        """``async_generator.athrow``, measured."""
        return await self._self_astep(self.__wrapped__.athrow(*args))

    async def _self_astep(self, advance: Awaitable[Any]) -> Any:
        try:
            item = await advance
        except BaseException:
            self._self_tracker.finish(self.__wrapped__)
            raise
        self._self_tracker.observe(item)
        return item

    async def aclose(self) -> Any:
        """``async_generator.aclose``; reports the usage."""
        try:
            return await self.__wrapped__.aclose()
        finally:
            self._self_tracker.finish(self.__wrapped__)

    def close(self) -> Any:
        """The stream's ``close`` (async on the SDKs' streams); reports the usage."""
        try:
            closing = self.__wrapped__.close()
        except BaseException:
            self._self_tracker.finish(self.__wrapped__)
            raise
        if inspect.isawaitable(closing):
            return self._self_finish_after(closing)
        self._self_tracker.finish(self.__wrapped__)
        return closing

    async def _self_finish_after(self, closing: Awaitable[Any]) -> Any:
        try:
            return await closing
        finally:
            self._self_tracker.finish(self.__wrapped__)


class _StreamManagerProxy(_SyncContext, _AsyncContext, _StreamProxy):
    """Proxy of ``client.messages.stream(...)``-style managers; the request starts on enter."""

    _self_stream: Any = None

    def _self_source(self) -> Any:
        return self._self_stream  # None until entered: nothing was requested

    def _self_wrap_entered(self, entered: Any) -> Any:
        self._self_stream = entered
        return super()._self_wrap_entered(entered)


def _add(total: Usage | None, chunk: Usage | None) -> Usage | None:
    """Sum two chunk usages (LangChain chunks carry deltas)."""
    if chunk is None or total is None:
        return total or chunk
    return total + chunk


def _get(obj: object, name: str) -> object:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _gemini_model(item: object) -> object:
    model = _get(item, "model_version")
    if model is None and isinstance(item, Mapping):
        model = item.get("modelVersion")
    return model
