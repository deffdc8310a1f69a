"""Helpers for testing code that runs under a budget.

- :class:`FakeClock` drives ``max_seconds`` (and ``elapsed_seconds``) without sleeping.
- :func:`capture_budget` records what sessions did: starts, steps, charges, exhaustions.
- :func:`fake_usage` builds an LLM response that budgetkit reads and prices like a real one.
- :func:`record_spans` collects the spans of a block in memory (needs ``budgetkit[otel]``).
- :func:`redis_server` runs a throwaway ``redis-server`` for the Redis ledger's examples.
- :class:`StubServer` stands in for the OpenAI and Anthropic HTTP APIs, so the real clients
  run offline (``budgetkit stub`` serves one from the command line).

The pytest plugin (:mod:`budgetkit.pytest_plugin`) wraps these in fixtures.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from . import _config, _events
from ._events import BudgetEvent
from ._stubserver import StubServer
from .exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

    from opentelemetry.sdk.trace import ReadableSpan

    from ._session import SessionBudget

__all__ = [
    "BudgetCapture",
    "BudgetEvent",
    "FakeClock",
    "SpanRecorder",
    "StubServer",
    "capture_budget",
    "fake_usage",
    "record_spans",
    "redis_server",
]


# ----------------------------------------------------------------------------- clock
class FakeClock:
    """A monotonic clock you move by hand, installed as the clock every session reads.

    Use it as a context manager and enter it *before* the session, so the session's start
    time is read from it::

        with FakeClock() as clock, SessionBudget(max_seconds=60) as session:
            clock.advance(61)
            step()  # raises BudgetExhausted, reason "max_seconds"

    Args:
        start: the time the clock shows at first, in seconds.

    .. versionadded:: 0.1.0
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = _seconds(start, "start", allow_negative=True)
        self._lock = threading.Lock()
        self._saved: list[Callable[[], float]] = []

    @property
    def now(self) -> float:
        """The time the clock shows."""
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0) and return the new time."""
        step = _seconds(seconds, "seconds")
        with self._lock:
            self._now += step
            return self._now

    def install(self) -> None:
        """Make this the clock of every session (prefer the ``with`` form)."""
        self._saved.append(_config.clock)
        _config.clock = self

    def uninstall(self) -> None:
        """Put back the clock that was there before :meth:`install`."""
        if not self._saved:
            raise RuntimeError("FakeClock.uninstall() without a matching install()")
        _config.clock = self._saved.pop()

    def __enter__(self) -> Self:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


def _seconds(value: object, name: str, *, allow_negative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BudgetTypeError(f"{name} must be a number of seconds, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (number < 0 and not allow_negative):
        raise BudgetConfigError(f"{name} must be a finite, non-negative number, got {value!r}")
    return number


# ----------------------------------------------------------------------------- events
@dataclass
class BudgetCapture:
    """What :func:`capture_budget` recorded, in the order it happened.

    The lists keep growing while the ``with`` block runs and are final after it.

    .. versionadded:: 0.1.0
    """

    events: list[BudgetEvent] = field(default_factory=list)
    """Every event: ``session_start``, ``step``, ``llm_call``, ``charge``, ``exhausted``,
    ``session_end``."""

    @property
    def sessions(self) -> list[SessionBudget]:
        """The sessions that did anything, in order of their first event."""
        seen: dict[int, SessionBudget] = {}
        for event in self.events:
            seen.setdefault(id(event.session), event.session)
        return list(seen.values())

    @property
    def steps(self) -> list[BudgetEvent]:
        """``step`` events (``data["name"]``)."""
        return self.of_kind("step")

    @property
    def charges(self) -> list[BudgetEvent]:
        """``llm_call`` and ``charge`` events (``data["usage"]``, ``data["cost_usd"]``)."""
        return self.of_kind("llm_call", "charge")

    @property
    def exhaustions(self) -> list[BudgetEvent]:
        """``exhausted`` events (``data["reason"]``, ``data["handoff_path"]``)."""
        return self.of_kind("exhausted")

    def of_kind(self, *kinds: str) -> list[BudgetEvent]:
        """The events of the given kinds."""
        return [event for event in self.events if event.kind in kinds]

    def kinds(self) -> list[str]:
        """The kind of every event, in order: handy in an ``assert``."""
        return [event.kind for event in self.events]


@contextmanager
def capture_budget() -> Iterator[BudgetCapture]:
    """Record every budget event of the process while the block runs.

    Like ``structlog.testing.capture_logs``: events from every thread and task are
    recorded, including sessions entered before the block (only their later events)::

        with capture_budget() as captured:
            run_agent()
        assert [e.data["reason"] for e in captured.exhaustions] == ["max_steps"]

    .. versionadded:: 0.1.0
    """
    capture = BudgetCapture()
    lock = threading.Lock()

    def listen(event: BudgetEvent) -> None:
        with lock:
            capture.events.append(event)

    unsubscribe = _events.subscribe(listen)
    try:
        yield capture
    finally:
        unsubscribe()


# ----------------------------------------------------------------------------- usage
def fake_usage(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cache_read_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """An OpenAI chat-completion-shaped response with this usage.

    Return it from an ``@budget.llm_call`` function in a test: budgetkit reads the usage
    and prices it with genai-prices (or your ``prices=``) exactly as it would a real
    response. Counts are inclusive: ``input_tokens`` includes ``cache_read_tokens`` and
    ``output_tokens`` includes ``reasoning_tokens``.

    .. versionadded:: 0.1.0
    """
    if not isinstance(model, str) or not model:
        raise BudgetTypeError(f"model must be a non-empty str, got {model!r}")
    counts = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read_tokens,
        "reasoning_tokens": reasoning_tokens,
    }
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise BudgetTypeError(f"{name} must be an int, got {value!r}")
        if value < 0:
            raise BudgetConfigError(f"{name} must be >= 0, got {value!r}")
    if cache_read_tokens > input_tokens:
        raise BudgetConfigError(
            f"cache_read_tokens ({cache_read_tokens}) cannot exceed input_tokens ({input_tokens})"
        )
    if reasoning_tokens > output_tokens:
        raise BudgetConfigError(
            f"reasoning_tokens ({reasoning_tokens}) cannot exceed output_tokens ({output_tokens})"
        )
    usage: dict[str, Any] = {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    if cache_read_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": cache_read_tokens}
    if reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


# ----------------------------------------------------------------------------- spans
class SpanRecorder:
    """The spans that ended while :func:`record_spans` (or ``budget_spans``) was active.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        self._spans: list[ReadableSpan] = []
        self._lock = threading.Lock()

    def add(self, span: ReadableSpan) -> None:
        """Record one ended span (budgetkit's span processor calls it)."""
        with self._lock:
            self._spans.append(span)

    @property
    def spans(self) -> list[ReadableSpan]:
        """Finished spans, in the order they ended."""
        with self._lock:
            return list(self._spans)

    def names(self) -> list[str]:
        """The names of the finished spans, in the order they ended."""
        return [span.name for span in self.spans]

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called ``name`` (``AssertionError`` if not exactly one)."""
        found = [span for span in self.spans if span.name == name]
        assert len(found) == 1, f"{len(found)} spans named {name!r}; spans: {self.names()}"
        return found[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        """The finished direct children of ``parent``, in start order."""
        parent_id = parent.context.span_id if parent.context is not None else None
        kids = [s for s in self.spans if s.parent is not None and s.parent.span_id == parent_id]
        return sorted(kids, key=lambda s: s.start_time or 0)

    def tree(self) -> str:
        """The span tree as indented names, one span a line, children in start order."""
        spans = self.spans
        ids = {s.context.span_id for s in spans if s.context is not None}
        roots = [s for s in spans if s.parent is None or s.parent.span_id not in ids]
        lines: list[str] = []

        def walk(level: Sequence[ReadableSpan], depth: int) -> None:
            for span in sorted(level, key=lambda s: s.start_time or 0):
                lines.append("  " * depth + span.name)
                walk(self.children(span), depth + 1)

        walk(roots, 0)
        return "\n".join(lines)

    def clear(self) -> None:
        """Forget the spans recorded so far."""
        with self._lock:
            self._spans.clear()


class _Fanout:
    """The one span processor budgetkit adds to a provider: feeds the active recorders.

    Processors cannot be removed from an SDK provider, so recorders come and go here.
    """

    def __init__(self) -> None:
        self.recorders: list[SpanRecorder] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """Nothing to do when a span starts."""

    def _on_ending(self, span: Any) -> None:
        """Nothing to do before a span ends."""

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        for recorder in list(self.recorders):
            recorder.add(span)

    def shutdown(self) -> None:
        self.recorders.clear()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


_FANOUTS: dict[int, tuple[Any, _Fanout]] = {}
_FANOUT_LOCK = threading.Lock()


def _fanout() -> _Fanout:
    """The fan-out processor of the global SDK provider, installing both as needed."""
    from opentelemetry import trace

    from . import otel

    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise otel.OtelSetupError(
            "record_spans() needs the OpenTelemetry SDK: install budgetkit's [otel] extra"
        ) from exc
    with _FANOUT_LOCK:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            provider = otel.configure(export=False).tracer_provider
        if not isinstance(provider, TracerProvider):
            raise otel.OtelSetupError(
                f"record_spans() needs an OpenTelemetry SDK tracer provider; the global one is "
                f"{type(provider).__name__}"
            )
        known = _FANOUTS.get(id(provider))
        if known is not None and known[0] is provider:
            return known[1]
        fanout = _Fanout()
        provider.add_span_processor(fanout)  # type: ignore[arg-type]
        _FANOUTS[id(provider)] = (provider, fanout)
        return fanout


@contextmanager
def record_spans() -> Iterator[SpanRecorder]:
    """Collect the spans that end inside the block, in memory.

    Uses the global OpenTelemetry SDK tracer provider, installing one (through
    :func:`budgetkit.otel.configure` with ``export=False``) when the process has none.
    A provider is global for the whole process, so the spans of other threads that end
    meanwhile are recorded too; spans the provider's sampler drops are not. Needs
    ``budgetkit[otel]``.

    .. versionadded:: 0.1.0
    """
    fanout = _fanout()
    recorder = SpanRecorder()
    fanout.recorders.append(recorder)
    try:
        yield recorder
    finally:
        if recorder in fanout.recorders:
            fanout.recorders.remove(recorder)


# ----------------------------------------------------------------------------- redis
@contextmanager
def redis_server(*, binary: str = "redis-server", timeout: float = 10.0) -> Iterator[str]:
    """Run a throwaway ``redis-server`` on a free loopback port; yield its URL.

    No persistence, no password; the server is stopped when the block exits. For tests and
    examples of :class:`budgetkit.ledgers.redis.RedisLedger`::

        with redis_server() as url:
            ledger = RedisLedger(url)

    Raises:
        BudgetConfigError: ``redis-server`` is not installed, or did not start in ``timeout``.

    .. versionadded:: 0.1.0
    """
    import shutil
    import socket
    import subprocess
    import time

    path = shutil.which(binary)
    if path is None:
        raise BudgetConfigError(
            f"{binary!r} is not installed (Debian/Ubuntu: apt-get install redis-server)"
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([path, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise BudgetConfigError(f"{binary!r} did not start on 127.0.0.1:{port}")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - redis exits on SIGTERM
            process.kill()
            process.wait(10)
