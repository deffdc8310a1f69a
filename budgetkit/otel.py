"""Optional OpenTelemetry set-up for applications that have none of their own.

budgetkit itself only uses ``opentelemetry-api``: its spans go wherever the application's
tracer provider sends them. For a script or CLI without an OpenTelemetry set-up::

    from budgetkit import otel

    shutdown = otel.configure(service_name="my-agent")
    try:
        run_agent()
    finally:
        shutdown()  # flushes, so a short run exports its spans

:func:`configure` reads the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` ...) and exports OTLP
over HTTP through a ``BatchSpanProcessor``. It needs ``install budgetkit's [otel] extra``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import trace

from . import _otel
from .exceptions import BudgetConfigError, BudgetWarning

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from ._session import SessionBudget

__all__ = ["OtelSetupError", "Telemetry", "capture_content", "configure", "trace_id_of"]

capture_content = _otel.capture_content

_INSTALL_HINT = "install budgetkit's [otel] extra"
#: Seconds :meth:`Telemetry.shutdown` waits for the exporter by default.
SHUTDOWN_TIMEOUT: Final = 2.0
_LOCK = threading.Lock()


class OtelSetupError(BudgetConfigError):
    """:func:`configure` cannot set up OpenTelemetry (SDK missing, another provider set ...)."""


class Telemetry:
    """What :func:`configure` set up; call it (or use it as a context manager) to shut down.

    Shutting down flushes the spans still queued, then stops the exporter, waiting at most
    2 seconds (``shutdown(timeout=...)``). A later :func:`configure` in the same process
    installs a fresh exporter on the same provider.
    """

    def __init__(self, tracer_provider: TracerProvider, processor: SpanProcessor | None) -> None:
        self.tracer_provider = tracer_provider
        self._processor = processor

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span ended so far; ``False`` if the timeout passed first."""
        if self._processor is None:
            return True
        return self._processor.force_flush(timeout_millis)

    def shutdown(self, *, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Flush and stop this set-up's exporter (idempotent), waiting at most ``timeout``
        seconds.

        An exporter whose endpoint is down retries for a while; shutdown does not wait for it
        past ``timeout``: it says once, with a :class:`~budgetkit.BudgetWarning`, that the
        spans not exported yet are dropped, and returns ``False``. The export goes on in a
        daemon thread until the exporter gives up, or the process exits.

        Returns:
            ``True`` when the exporter finished within ``timeout``.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise BudgetConfigError(
                f"timeout must be a non-negative number of seconds, got {timeout!r}"
            )
        processor, self._processor = self._processor, None
        if processor is None:
            return True
        _SLOT.release(processor)
        finished = threading.Event()

        def stop() -> None:
            try:  # the batch processor exports what is queued, then stops its exporter
                processor.shutdown()
            except Exception:  # telemetry never breaks the agent
                _otel.failed("Telemetry.shutdown")
            finally:
                finished.set()

        threading.Thread(target=stop, name="budgetkit-otel-shutdown", daemon=True).start()
        if finished.wait(timeout):
            return True
        warnings.warn(
            f"budgetkit.otel: the span exporter did not finish within {timeout:g} s (is the "
            "endpoint down?); the spans it had not exported yet are dropped",
            BudgetWarning,
            stacklevel=2,
        )
        return False

    __call__ = shutdown

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def configure(
    service_name: str | None = None,
    *,
    export: bool = True,
    exporter: SpanExporter | None = None,
) -> Telemetry:
    """Install an SDK tracer provider as the global one, exporting OTLP/HTTP by default.

    Args:
        service_name: the ``service.name`` resource attribute when ``OTEL_SERVICE_NAME``
            is not set (default ``"budgetkit"``).
        export: ``False`` records spans in-process only (real trace ids, nothing sent).
        exporter: send spans here instead of the exporter ``OTEL_TRACES_EXPORTER`` names
            (``otlp``, the default, ``console`` or ``none``).

    Returns:
        A :class:`Telemetry`; call it at exit to flush and shut down.

    Raises:
        OtelSetupError: the SDK is not installed (install ``budgetkit[otel]``), or
            another global tracer provider is already set.
    """
    sdk_trace, export_mod = _import_sdk()
    with _LOCK:
        provider = _provider(sdk_trace, service_name)
        chosen = exporter if exporter is not None else (_env_exporter() if export else None)
        processor = None if chosen is None else export_mod.BatchSpanProcessor(chosen)
        if processor is not None:
            _SLOT.install(processor)
    return Telemetry(provider, processor)


def trace_id_of(session: SessionBudget) -> str | None:
    """The trace id (32 hex digits) of a session's span, or ``None`` if nothing recorded it."""
    return _otel.span_ids(session.boundary.telemetry)[0]


def _import_sdk() -> tuple[Any, Any]:
    try:
        from opentelemetry.sdk import trace as sdk_trace
        from opentelemetry.sdk.trace import export as export_mod
    except ImportError as exc:
        raise OtelSetupError(
            f"budgetkit.otel.configure() needs the OpenTelemetry SDK: {_INSTALL_HINT} ({exc})"
        ) from exc
    return sdk_trace, export_mod


def _provider(sdk_trace: Any, service_name: str | None) -> TracerProvider:
    """The global SDK provider this module installed, installing it on first use."""
    current = trace.get_tracer_provider()
    installed = _SLOT.provider
    if installed is not None and current is installed:
        return installed
    if not isinstance(current, trace.ProxyTracerProvider):
        raise OtelSetupError(
            "a global OpenTelemetry tracer provider is already set; budgetkit's spans go to "
            "it already, so budgetkit.otel.configure() is not needed"
        )
    from opentelemetry.sdk.resources import Resource

    named = bool(os.environ.get("OTEL_SERVICE_NAME"))  # the environment wins
    resource = Resource.create({} if named else {"service.name": service_name or "budgetkit"})
    provider: TracerProvider = sdk_trace.TracerProvider(resource=resource)
    provider.add_span_processor(cast("SpanProcessor", _SLOT))
    trace.set_tracer_provider(provider)
    _SLOT.provider = provider
    return provider


def _env_exporter() -> SpanExporter | None:
    """The exporter named by ``OTEL_TRACES_EXPORTER`` / ``OTEL_EXPORTER_OTLP_*PROTOCOL``."""
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        raise OtelSetupError(f"OTEL_TRACES_EXPORTER={kind!r}: use 'otlp', 'console' or 'none'")
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ).strip()
    return _otlp_exporter(protocol)


def _otlp_exporter(protocol: str) -> SpanExporter:
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcExporter,
            )

            exporter: SpanExporter = GrpcExporter()
            return exporter
    except ImportError as exc:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        hint = _INSTALL_HINT if protocol != "grpc" else f"pip install {package}"
        raise OtelSetupError(f"OTLP over {protocol} needs {package}: {hint} ({exc})") from exc
    raise OtelSetupError(f"OTLP protocol {protocol!r} is not supported: use http/protobuf or grpc")


class _Slot:
    """The one span processor budgetkit adds to its provider; holds the current exporter.

    A provider is global for the whole process and cannot be replaced, but its processors
    can't be removed either: this slot lets ``configure()`` run again after a shutdown.
    """

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self._inner: SpanProcessor | None = None

    def install(self, processor: SpanProcessor) -> None:
        old, self._inner = self._inner, processor
        if old is not None:
            old.shutdown()

    def release(self, processor: SpanProcessor) -> None:
        if self._inner is processor:
            self._inner = None

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        inner = self._inner
        if inner is not None:
            inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        inner = self._inner
        if inner is not None:
            inner.on_end(span)

    def _on_ending(self, span: Span) -> None:
        # The SDK's own hook (SpanProcessor._on_ending, OpenTelemetry SDK >= 1.28); an older
        # processor has none.
        hook = getattr(self._inner, "_on_ending", None)
        if hook is not None:
            hook(span)

    def shutdown(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        inner = self._inner
        return True if inner is None else inner.force_flush(timeout_millis)


_SLOT = _Slot()
