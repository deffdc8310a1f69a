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

A stream the caller abandons (drops without exhausting or closing it) is reported when its
proxy is garbage-collected: the finalizer only queues the stream, and the report is made at a
safe point, the next LLM-call boundary or a small daemon thread, whichever comes first (a
finalizer may run inside any code, locks held, so it never settles by itself).

The SDKs' raw responses (``with_raw_response`` / ``with_streaming_response``) are measured too:
a body already read is read for its usage at once; otherwise the proxy measures whichever way
the caller reads it (``parse()``, ``read()``/``text()``/``json()``, ``iter_lines()`` ...).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import gc
import inspect
import json
import os
import queue
import sys
import threading
import warnings
import weakref
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

__all__ = ["ABANDONED", "STREAM_USAGE_HINT", "settle_abandoned", "wrap_stream"]

STREAM_USAGE_HINT: Final = (
    "The stream ended without reporting token usage. For OpenAI chat completions pass "
    'stream_options={"include_usage": True} so the last chunk carries the usage.'
)
"""How to make a stream report its usage; for the core's unmeasured-call warning."""

OnEnd = Callable[[Usage | None], None]
OnResponse = Callable[[str, Usage], None]

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
_SDK_PACKAGES: Final = frozenset({"openai", "anthropic"})  # classes re-exported at the top
_SNAPSHOT_ATTRIBUTES: Final = ("current_message_snapshot", "current_completion_snapshot")
_RAW_STREAMS: Final = frozenset({"Stream", "AsyncStream"})  # the SDKs' own SSE streams


def wrap_stream(
    result: object,
    on_end: OnEnd,
    *,
    model: str | None = None,
    provider: str | None = None,
    hide_usage_chunks: bool = False,
    on_response: OnResponse | None = None,
) -> object | None:
    """Wrap ``result`` in a measuring proxy if it is a stream.

    Streams are OpenAI and Anthropic ``Stream`` / ``AsyncStream`` objects and
    their helper streams (``MessageStream``, ``ChatCompletionStream`` ...), the
    ``...StreamManager`` context managers that ``.stream(...)`` returns, the SDKs'
    raw responses, generators, async generators and other iterators. Strings,
    bytes, containers, and models that merely are iterable are not streams.

    Args:
        result: the value an LLM call returned.
        on_end: called exactly once with the stream's usage, or ``None`` when
            the stream reported none, when it is exhausted, closed, exited, or
            raises; also when the caller stops iterating early (``break``), and
            when the caller drops the stream (see the module's docstring).
            Exceptions it raises propagate to the caller.
        model: the model to record when the stream does not name one.
        provider: a provider id hint for pricing.
        hide_usage_chunks: do not show the caller OpenAI's usage-only chunk (no
            choices), for a stream whose request budgetkit asked for it.
        on_response: called with an OpenAI Responses response's id and usage, when
            the stream carried both, before ``on_end``.

    Returns:
        A proxy that behaves like ``result``; ``result`` itself for a raw response
        whose body was already read (reported already); ``None`` if ``result`` is
        not a stream.
    """
    proxy_type = _proxy_type(result)
    if proxy_type is None:
        return None
    if ABANDONED.queue:
        settle_abandoned()
    tracker = _Tracker(on_end, model, provider, hide_usage_chunks, on_response)
    if issubclass(proxy_type, _RawResponseProxy | _AsyncRawResponseProxy) and _read_body(
        result, tracker
    ):
        return result
    _start_worker()
    return proxy_type(result, tracker)


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


def _from_sdk(cls: type) -> bool:
    module = cls.__module__
    return module in _SDK_PACKAGES or module.startswith(_SDK_MODULES)


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
    from_sdk = _from_sdk(cls)
    if from_sdk and cls.__name__.endswith("StreamManager"):
        return _StreamManagerProxy
    if from_sdk and cls.__name__.endswith("APIResponse") and hasattr(cls, "parse"):
        if inspect.iscoroutinefunction(cls.parse):
            return _AsyncRawResponseProxy
        return _RawResponseProxy
    if hasattr(cls, "model_dump") or hasattr(cls, "__dataclass_fields__"):
        return None  # a response model that happens to be iterable
    if hasattr(cls, "__anext__") or (from_sdk and hasattr(cls, "__aiter__")):
        return _AsyncStreamProxy
    if hasattr(cls, "__next__") or (from_sdk and hasattr(cls, "__iter__")):
        return _SyncStreamProxy
    return None


class _Tracker:
    """Accumulates one stream's usage and reports it exactly once."""

    def __init__(
        self,
        on_end: OnEnd,
        model: str | None,
        provider: str | None,
        hide_usage_chunks: bool = False,
        on_response: OnResponse | None = None,
    ) -> None:
        self._on_end = on_end
        self._model = model
        self._provider = provider
        self.hide_usage_chunks = hide_usage_chunks
        self._on_response = on_response
        self._response_id: object = None
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

    @property
    def finished(self) -> bool:
        """Whether the usage was reported."""
        return self._finished

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
        response_id = self._response_id
        if usage is not None and self._on_response is not None and isinstance(response_id, str):
            with contextlib.suppress(Exception):  # remembering never breaks the stream
                self._on_response(response_id, usage)
        self._on_end(usage)

    def body(self, content: bytes, content_type: str) -> None:
        """Feed a whole response body (JSON, or server-sent events); never raises."""
        feed = _BodyFeed(self, content_type)
        feed.add(content)
        feed.close()

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
            self._response_id = _get(_get(item, "response"), "id")
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
            if _get(item, "object") == "response":  # a whole Responses response
                self._response_id = _get(item, "id")
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
    """Base of the proxies: holds the tracker.

    The first proxy of a tracker carries its finalizer; a proxy derived from it (the stream
    a manager opened, the stream a raw response parsed into) holds its parent, so the
    finalizer runs when the last of them is gone.
    """

    _self_tracker: _Tracker
    _self_parent: Any = None

    def __init__(self, wrapped: Any, tracker: _Tracker, parent: _StreamProxy | None = None) -> None:
        super().__init__(wrapped)
        self._self_tracker = tracker
        if parent is None:
            # Neither the proxy nor the stream is referenced: only the tracker, which
            # references neither. Not run at interpreter exit (atexit=False).
            weakref.finalize(self, _abandon, tracker).atexit = False
        else:
            self._self_parent = parent
        if type(wrapped).__name__ in _RAW_STREAMS and _from_sdk(type(wrapped)):
            _finish_on_close(wrapped, tracker)

    def _self_wrap_entered(self, entered: Any) -> Any:
        """What ``with`` binds: this proxy, or a proxy of the stream the manager opened."""
        if entered is self.__wrapped__:
            return self
        proxy_type = _proxy_type(entered)
        if proxy_type is None or proxy_type is _StreamManagerProxy:
            return entered
        return proxy_type(entered, self._self_tracker, self)

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
        hide = tracker.hide_usage_chunks
        deferred = False
        try:
            for item in self.__wrapped__:
                tracker.observe(item)
                if hide and _usage_only(item):
                    continue
                yield item
        except GeneratorExit:  # closed: by the caller, or by the garbage collector
            deferred = _not_now(tracker)
            raise
        finally:  # exhausted, raised, or closed after ``break``
            if not deferred:
                tracker.finish(self.__wrapped__)

    def __next__(self) -> Any:
        while True:
            item = self._self_step(self.__wrapped__.__next__)
            if not (self._self_tracker.hide_usage_chunks and _usage_only(item)):
                return item

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
        hide = tracker.hide_usage_chunks
        deferred = False
        try:
            async for item in self.__wrapped__:
                tracker.observe(item)
                if hide and _usage_only(item):
                    continue
                yield item
        except GeneratorExit:  # closed: by the caller, or by the garbage collector
            deferred = _not_now(tracker)
            raise
        finally:  # exhausted, raised, or closed after ``break``
            if not deferred:
                tracker.finish(self.__wrapped__)

    async def __anext__(self) -> Any:
        while True:
            item = await self._self_astep(self.__wrapped__.__anext__())
            if not (self._self_tracker.hide_usage_chunks and _usage_only(item)):
                return item

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


class _RawResponseProxy(_StreamProxy):
    """Proxy of an SDK raw response whose body is still to be read (``with_streaming_response``,
    or ``with_raw_response`` of a stream): measures whichever way the caller reads the body."""

    _self_parsed: Any = None

    def parse(self, **kwargs: Any) -> Any:
        """``parse()``, measured: a stream is wrapped, a model is read for its usage."""
        try:
            parsed = self.__wrapped__.parse(**kwargs)
        except BaseException:
            self._self_tracker.finish()
            raise
        return self._self_measure(parsed)

    def _self_measure(self, parsed: Any) -> Any:
        cached = self._self_parsed
        if cached is not None and cached.__wrapped__ is parsed:
            return cached
        proxy_type = _proxy_type(parsed)
        if proxy_type is _SyncStreamProxy or proxy_type is _AsyncStreamProxy:
            proxy = proxy_type(parsed, self._self_tracker, self)
            self._self_parsed = proxy
            return proxy
        self._self_tracker.observe(parsed)
        self._self_tracker.finish()
        return parsed

    def read(self) -> Any:
        """``read()``, measured."""
        return self._self_after_body(self.__wrapped__.read)

    def text(self) -> Any:
        """``text()``, measured."""
        return self._self_after_body(self.__wrapped__.text)

    def json(self) -> Any:
        """``json()``, measured."""
        return self._self_after_body(self.__wrapped__.json)

    def _self_after_body(self, read: Callable[[], Any]) -> Any:
        try:
            value = read()
        finally:
            _read_body(self.__wrapped__, self._self_tracker)
            self._self_tracker.finish()
        return value

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """``iter_bytes()``, measured."""
        return self._self_feed(self.__wrapped__.iter_bytes(*args, **kwargs), lines=False)

    def iter_text(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """``iter_text()``, measured."""
        return self._self_feed(self.__wrapped__.iter_text(*args, **kwargs), lines=False)

    def iter_lines(self) -> Iterator[Any]:
        """``iter_lines()``, measured."""
        return self._self_feed(self.__wrapped__.iter_lines(), lines=True)

    def _self_feed(self, chunks: Iterator[Any], *, lines: bool) -> Iterator[Any]:
        tracker = self._self_tracker
        feed = _BodyFeed(tracker, _content_type(self.__wrapped__))
        try:
            for chunk in chunks:
                feed.add(chunk, line=lines)
                yield chunk
        finally:
            feed.close()
            tracker.finish()

    def close(self) -> Any:
        """Close the response and report what was read of it."""
        try:
            return self.__wrapped__.close()
        finally:
            self._self_tracker.finish()


class _AsyncRawResponseProxy(_RawResponseProxy):
    """:class:`_RawResponseProxy` of an async raw response (its readers are coroutines)."""

    async def parse(self, **kwargs: Any) -> Any:
        """``await parse()``, measured."""
        try:
            parsed = await self.__wrapped__.parse(**kwargs)
        except BaseException:
            self._self_tracker.finish()
            raise
        return self._self_measure(parsed)

    async def read(self) -> Any:
        """``await read()``, measured."""
        return await self._self_aafter_body(self.__wrapped__.read())

    async def text(self) -> Any:
        """``await text()``, measured."""
        return await self._self_aafter_body(self.__wrapped__.text())

    async def json(self) -> Any:
        """``await json()``, measured."""
        return await self._self_aafter_body(self.__wrapped__.json())

    async def _self_aafter_body(self, reading: Awaitable[Any]) -> Any:
        try:
            value = await reading
        finally:
            _read_body(self.__wrapped__, self._self_tracker)
            self._self_tracker.finish()
        return value

    def iter_bytes(self, *args: Any, **kwargs: Any) -> Any:
        """``iter_bytes()``, measured."""
        return self._self_afeed(self.__wrapped__.iter_bytes(*args, **kwargs), lines=False)

    def iter_text(self, *args: Any, **kwargs: Any) -> Any:
        """``iter_text()``, measured."""
        return self._self_afeed(self.__wrapped__.iter_text(*args, **kwargs), lines=False)

    def iter_lines(self) -> Any:
        """``iter_lines()``, measured."""
        return self._self_afeed(self.__wrapped__.iter_lines(), lines=True)

    async def _self_afeed(self, chunks: AsyncIterator[Any], *, lines: bool) -> AsyncIterator[Any]:
        tracker = self._self_tracker
        feed = _BodyFeed(tracker, _content_type(self.__wrapped__))
        try:
            async for chunk in chunks:
                feed.add(chunk, line=lines)
                yield chunk
        finally:
            feed.close()
            tracker.finish()

    async def close(self) -> Any:
        """Close the response and report what was read of it."""
        try:
            return await self.__wrapped__.close()
        finally:
            self._self_tracker.finish()


class _BodyFeed:
    """Reads a raw response body as it passes: server-sent events line by line (each
    ``data:`` JSON is observed), a JSON body as one document when it ends, anything else
    (audio, images) not at all."""

    def __init__(self, tracker: _Tracker, content_type: str) -> None:
        self._tracker = tracker
        self._events = content_type.startswith("text/event-stream")
        self._ignored = not self._events and "json" not in content_type
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._size = 0

    def add(self, chunk: object, *, line: bool = False) -> None:
        if self._ignored:
            return
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else str(chunk)
        if line:
            text += "\n"
        if not self._events:
            self._size += len(text)
            if self._size <= _MAX_JSON_BODY:  # a model's answer; never a huge download
                self._pending += text
            return
        self._pending += text
        *complete, self._pending = self._pending.split("\n")
        for record in complete:
            self._line(record)

    def close(self) -> None:
        if self._ignored:
            return
        rest, self._pending = self._pending + self._decoder.decode(b"", final=True), ""
        if self._events:
            for record in rest.split("\n"):
                self._line(record)
        elif rest and self._size <= _MAX_JSON_BODY:
            self._observe_json(rest)

    def _line(self, record: str) -> None:
        if record.startswith("data:"):
            data = record[5:].strip()
            if data and data != "[DONE]":
                self._observe_json(data)

    def _observe_json(self, text: str) -> None:
        try:
            value = json.loads(text)
        except ValueError:
            return
        self._tracker.observe(value)


_MAX_JSON_BODY: Final = 16 * 2**20


def _content_type(response: Any) -> str:
    try:
        return str(response.http_response.headers.get("content-type") or "")
    except Exception:  # not an SDK response after all
        return ""


def _read_body(response: Any, tracker: _Tracker) -> bool:
    """Feed the body of a raw response that was read already; ``False`` if it was not."""
    try:
        content = response.http_response.content  # raises when the body was not read
    except Exception:  # httpx's ResponseNotRead, or not an SDK response
        return False
    if not isinstance(content, bytes):
        return False
    tracker.body(content, _content_type(response))
    tracker.finish()
    return True


def _usage_only(item: object) -> bool:
    """OpenAI's last chat chunk under ``include_usage``: usage and no choices."""
    return _get(item, "choices") == [] and _get(item, "usage") is not None


# ------------------------------------------------------------------ abandoned streams
class _Abandoned:
    """Trackers of streams abandoned while the cycle collector ran.

    A stream whose last reference the caller drops is settled there and then, by its
    proxy's finalizer: that is a point in the caller's code. The cycle collector, though, may
    run finalizers anywhere, even inside a lock budgetkit or OpenTelemetry holds; what it
    finalizes is only queued here, and settled by :func:`settle_abandoned` at the next
    LLM-call boundary, or by a daemon thread woken for it, whichever is first. A tracker
    leaves ``queue`` only once it is settled, so a boundary that finds the queue empty knows
    nothing is being settled either.
    """

    def __init__(self) -> None:
        self.queue: collections.deque[_Tracker] = collections.deque()
        self.lock = threading.RLock()  # reentrant: a settlement may cross a boundary
        self.wakeup: queue.SimpleQueue[None] = queue.SimpleQueue()  # reentrant put
        self.worker: threading.Thread | None = None


ABANDONED: Final = _Abandoned()
_is_finalizing = sys.is_finalizing  # kept: module globals may be gone at shutdown
_worker_lock = threading.Lock()


_collecting = [False]  # the cycle collector is running (set by a gc callback)


def _gc_phase(phase: str, info: object) -> None:
    _collecting[0] = phase == "start"


gc.callbacks.append(_gc_phase)


def _abandon(tracker: _Tracker) -> None:
    """The finalizer of a stream's last proxy: settle now, or queue it (see
    :class:`_Abandoned`). Never at interpreter exit."""
    if tracker.finished or _not_now(tracker):
        return
    with contextlib.suppress(Exception):  # nobody to report to: the caller is gone
        tracker.finish()


def _not_now(tracker: _Tracker) -> bool:
    """Whether a stream closed by a finalizer must not be reported here: queued when the
    cycle collector is running, dropped when the interpreter is exiting."""
    if _is_finalizing():
        return True
    if not _collecting[0]:
        return False
    ABANDONED.queue.append(tracker)
    ABANDONED.wakeup.put(None)
    return True


def _finish_on_close(stream: Any, tracker: _Tracker) -> None:
    """Report when an SDK stream's HTTP response is closed: OpenAI's helper streams
    (``chat.completions.stream()``, ``responses.stream()``) built on it close the response,
    not the stream, when their ``with`` block is left early. Patched on the response
    instance (the stream already holds its response in a reference cycle, through its
    generator, so the hook's reference to the response adds no new lifetime); the stream is
    held weakly."""
    response = getattr(stream, "response", None)
    if response is None or "close" in getattr(response, "__dict__", ()):
        return
    try:
        stream_ref = weakref.ref(stream)
    except TypeError:
        return
    close = getattr(response, "close", None)
    aclose = getattr(response, "aclose", None)

    def closing() -> Any:
        try:
            return None if close is None else close()
        finally:
            if not (tracker.finished or _not_now(tracker)):  # the SDK's generator, collected
                tracker.finish(stream_ref())

    async def aclosing() -> Any:
        try:
            return None if aclose is None else await aclose()
        finally:
            if not (tracker.finished or _not_now(tracker)):
                tracker.finish(stream_ref())

    with contextlib.suppress(AttributeError, TypeError):  # a response that refuses attributes
        if close is not None:
            response.close = closing
        if aclose is not None:
            response.aclose = aclosing


def settle_abandoned() -> None:
    """Report every abandoned stream queued so far (waiting for one being reported)."""
    pending = ABANDONED.queue
    with ABANDONED.lock:
        while pending:
            tracker = pending[0]
            with contextlib.suppress(Exception):  # nobody to report to: the caller is gone
                tracker.finish()
            if pending and pending[0] is tracker:  # not taken by a nested settlement
                pending.popleft()


def _start_worker() -> None:
    """Start the daemon thread that settles abandoned streams (once per process)."""
    if ABANDONED.worker is not None:
        return
    with _worker_lock:
        if ABANDONED.worker is None:
            worker = threading.Thread(
                target=_settle_forever, name="budgetkit-stream-settler", daemon=True
            )
            worker.start()
            ABANDONED.worker = worker


def _settle_forever() -> None:
    while True:
        ABANDONED.wakeup.get()
        settle_abandoned()


def _after_fork() -> None:
    """The child has no worker thread and must not inherit a held lock."""
    ABANDONED.lock = threading.RLock()
    ABANDONED.wakeup = queue.SimpleQueue()
    ABANDONED.worker = None


os.register_at_fork(after_in_child=_after_fork)


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
