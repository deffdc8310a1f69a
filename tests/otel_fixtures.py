"""OpenTelemetry SDK fixtures for budgetkit's telemetry tests (import them from test modules).

The global tracer and meter providers can be set only once per process, so the first use
installs one SDK ``TracerProvider`` for the whole run. Its sampler is switched on only while
the ``otel`` fixture is active: other tests keep getting unsampled spans (and handoffs with
no trace id), and the in-memory exporter is cleared for every test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult

from budgetkit import _otel

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class Switch(Sampler):
    """Samples everything while ``on``, nothing otherwise."""

    def __init__(self) -> None:
        self.on = False

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return (ALWAYS_ON if self.on else ALWAYS_OFF).should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "budgetkit-tests-switch"


class Faulty(SpanProcessor, SpanExporter):
    """A span processor and exporter that raise from every hook while ``raising``."""

    def __init__(self) -> None:
        self.raising = False
        self.calls = 0

    def _maybe_raise(self) -> None:
        if self.raising:
            self.calls += 1
            raise RuntimeError("telemetry backend exploded")

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self._maybe_raise()

    def _on_ending(self, span: Any) -> None:
        self._maybe_raise()

    def on_end(self, span: ReadableSpan) -> None:
        self._maybe_raise()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._maybe_raise()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


@dataclass
class Otel:
    """The process-wide test SDK: spans, metrics, and the switches."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    metrics: InMemoryMetricReader
    switch: Switch
    faulty: Faulty

    def spans(self) -> list[ReadableSpan]:
        """Finished spans, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called ``name``."""
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [s.name for s in self.spans()]

    def metric_points(self, name: str) -> list[Any]:
        """Data points of the metric ``name`` collected so far."""
        data = self.metrics.get_metrics_data()
        points: list[Any] = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


_INSTALLED: list[Otel] = []


def install() -> Otel:
    """Install the test SDK as the global providers (once per process)."""
    if _INSTALLED:
        return _INSTALLED[0]
    switch, faulty, exporter = Switch(), Faulty(), InMemorySpanExporter()
    provider = TracerProvider(sampler=switch)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(faulty))
    provider.add_span_processor(faulty)
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.fail("another global TracerProvider was set before the telemetry tests ran")
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    _INSTALLED.append(Otel(provider, exporter, reader, switch, faulty))
    return _INSTALLED[0]


@pytest.fixture
def otel() -> Iterator[Otel]:
    """The SDK, recording, with an empty exporter; content capture back to its default."""
    state = install()
    state.exporter.clear()
    state.metrics.get_metrics_data()  # drop what earlier tests recorded (cumulative points stay)
    state.switch.on = True
    _otel.capture_content(None)
    try:
        yield state
    finally:
        state.switch.on = False
        state.faulty.raising = False
        state.exporter.clear()
        _otel.capture_content(None)


def assert_children_of(parent: ReadableSpan, children: list[ReadableSpan]) -> None:
    """Every span in ``children`` is a direct child of ``parent``, in its trace."""
    for span in children:
        assert span.parent is not None, span.name
        assert span.parent.span_id == parent.context.span_id, span.name
        assert span.context.trace_id == parent.context.trace_id, span.name
