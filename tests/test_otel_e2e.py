"""End to end: the example agent exports through the real OTLP/HTTP exporter.

Each test runs ``tests/otel_example.py`` in a fresh process with ``budgetkit.otel.configure()``
and ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a receiver on 127.0.0.1, so this process's
global tracer provider is untouched.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

EXAMPLE = Path(__file__).with_name("otel_example.py")


def run_example(endpoint: str) -> dict[str, Any]:
    """Run the example agent against ``endpoint``; its JSON summary."""
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    for key in ("OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


# ----------------------------------------------------------------------------- OTLP receiver


class Receiver(ThreadingHTTPServer):
    """Accepts OTLP/HTTP protobuf trace exports, as Jaeger's OTLP receiver on :4318 does."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[dict[str, Any], str, Span]]:
        """(resource attributes, scope name + schema url, span) for every span received."""
        out = []
        for request in self.requests:
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    scope = f"{ss.scope.name} {ss.schema_url}"
                    out.extend((resource, scope, span) for span in ss.spans)
        return out


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.headers["Content-Type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append(request)
        self.server.paths.append(self.path)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    items: list[KeyValue] = list(kvs)
    return {kv.key: value(kv.value) for kv in items}


def test_otlp_http_export_decodes_like_jaeger(receiver: Receiver) -> None:
    summary = run_example(receiver.endpoint)

    assert summary["stop_reason"] == "max_steps"
    assert set(receiver.paths) == {"/v1/traces"}
    received = receiver.spans()
    by_name: dict[str, list[Span]] = {}
    for resource, scope, span in received:
        assert resource["service.name"] == "budgetkit-e2e"
        assert scope == "budgetkit https://opentelemetry.io/schemas/1.41.0"
        by_name.setdefault(span.name, []).append(span)
    assert {k: len(v) for k, v in by_name.items()} == {
        "invoke_agent researcher": 1,
        "execute_tool search": 3,
        "chat gpt-4o-mini": 3,
    }

    [session] = by_name["invoke_agent researcher"]
    assert session.trace_id.hex() == summary["trace_id"]
    assert session.parent_span_id == b""
    for child in by_name["execute_tool search"] + by_name["chat gpt-4o-mini"]:
        assert child.trace_id == session.trace_id
        assert child.parent_span_id == session.span_id

    s = attributes(session.attributes)
    assert s["budgetkit.session.id"] == summary["session_id"]
    assert s["budgetkit.session.stop_reason"] == "max_steps"
    assert (s["budgetkit.steps.limit"], s["budgetkit.steps.used"]) == (3, 3)
    assert s["budgetkit.usd.limit"] == 1.0
    assert s["error.type"] == "budgetkit.BudgetExhausted"
    assert session.status.code == Status.STATUS_CODE_ERROR
    assert session.kind == Span.SPAN_KIND_INTERNAL
    [event] = session.events
    assert event.name == "budgetkit.budget.exhausted"
    assert attributes(event.attributes)["budgetkit.budget.refused_step"] == "search"

    chat = by_name["chat gpt-4o-mini"][0]
    c = attributes(chat.attributes)
    assert chat.kind == Span.SPAN_KIND_CLIENT
    assert c["gen_ai.operation.name"] == "chat"
    assert c["gen_ai.provider.name"] == "openai"
    assert c["gen_ai.request.model"] == "gpt-4o-mini"
    assert c["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert (c["gen_ai.usage.input_tokens"], c["gen_ai.usage.output_tokens"]) == (1000, 200)
    assert c["budgetkit.call.cost_usd"] > 0
    tool = attributes(by_name["execute_tool search"][0].attributes)
    assert tool["gen_ai.tool.name"] == "search"
    assert "gen_ai.tool.call.arguments" not in tool  # content is off by default


# ----------------------------------------------------------------------------- Arize Phoenix


def phoenix_python() -> str | None:
    """An interpreter with ``arize-phoenix``: this one, or ``$BUDGETKIT_PHOENIX_PYTHON``."""
    if importlib.util.find_spec("phoenix") is not None:
        return sys.executable
    other = os.environ.get("BUDGETKIT_PHOENIX_PYTHON")
    return other if other and Path(other).is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def phoenix(tmp_path: Path) -> Iterator[str]:
    """``phoenix serve`` on loopback with its own working dir; yields its base URL."""
    python = phoenix_python()
    assert python is not None
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_WORKING_DIR": str(tmp_path / "phoenix"),
    }
    log = (tmp_path / "phoenix.log").open("w")
    server = subprocess.Popen(
        [python, "-m", "phoenix.server.main", "serve"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is None and _healthy(url), 120, "phoenix serve")
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
        return bool(response.status == 200)


@pytest.mark.slow
@pytest.mark.skipif(phoenix_python() is None, reason="arize-phoenix is not installed")
def test_phoenix_receives_the_session_and_its_children(phoenix: str) -> None:
    summary = run_example(phoenix)

    def spans() -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = get_json(f"{phoenix}/v1/projects/default/spans?limit=100")[
            "data"
        ]
        return data if len(data) >= 7 else []

    received = [s for s in wait_for(spans, 60, "spans in Phoenix") if s["context"]]
    trace_ids = {s["context"]["trace_id"] for s in received}
    assert trace_ids == {summary["trace_id"]}
    [session] = [s for s in received if s["name"] == "invoke_agent researcher"]
    children = [s for s in received if s is not session]
    assert (
        sorted(s["name"] for s in children)
        == ["chat gpt-4o-mini"] * 3 + ["execute_tool search"] * 3
    )
    assert all(s["parent_id"] == session["context"]["span_id"] for s in children)
    assert session["attributes"]["budgetkit.session.stop_reason"] == "max_steps"
    assert session["status_code"] == "ERROR"
    assert [e["name"] for e in session["events"]] == ["budgetkit.budget.exhausted"]
    # Phoenix maps the GenAI operation names to its own span kinds.
    kinds = {s["name"]: s["span_kind"] for s in received}
    assert kinds == {
        "invoke_agent researcher": "AGENT",
        "chat gpt-4o-mini": "LLM",
        "execute_tool search": "TOOL",
    }


def run_demo(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``budgetkit demo`` exporting to ``endpoint``, with content capture on."""
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
        "NO_COLOR": "1",
    }
    for key in ("OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "budgetkit", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
@pytest.mark.skipif(phoenix_python() is None, reason="arize-phoenix is not installed")
def test_phoenix_shows_the_demo_and_its_resume_as_one_session(phoenix: str, tmp_path: Path) -> None:
    handoffs = tmp_path / "handoffs"
    run_demo(phoenix, "--handoff-dir", str(handoffs))
    [handoff] = handoffs.glob("*.json")
    first_session = json.loads(handoff.read_text())["session_id"]
    run_demo(phoenix, "--resume", str(handoff))

    def spans() -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = get_json(f"{phoenix}/v1/projects/default/spans?limit=1000")[
            "data"
        ]
        roots = [s for s in data if s["parent_id"] is None]
        return data if len(roots) >= 2 else []

    received = wait_for(spans, 60, "both traces in Phoenix")
    time.sleep(1)  # the last spans of a batch may land just after the roots
    received = spans()
    roots = {s["context"]["trace_id"]: s for s in received if s["parent_id"] is None}
    assert len(roots) == 2
    first, resumed = sorted(roots.values(), key=lambda s: str(s["start_time"]))

    # One conversation: Phoenix maps gen_ai.conversation.id to its session.id.
    for span in received:
        assert span["attributes"]["gen_ai.conversation.id"] == first_session, span["name"]
        assert span["attributes"]["session.id"] == first_session, span["name"]
    session = get_json(f"{phoenix}/v1/sessions/{first_session}")["data"]
    assert {t["trace_id"] for t in session["traces"]} == set(roots)

    # The LLM spans show the prompt and the reply, the response id and finish reason.
    llm = [s for s in received if s["span_kind"] == "LLM"]
    assert len(llm) >= 4
    for span in llm:
        a = span["attributes"]
        assert a["llm.input_messages.0.message.role"] == "user"
        assert a["llm.input_messages.0.message.content"].split()[0] in (
            "PLAN",
            "SUMMARISE",
            "REPORT",
        )
        assert a["llm.output_messages.0.message.role"] == "assistant"
        assert a["llm.output_messages.0.message.content"]
        assert a["gen_ai.response.id"].startswith("chatcmpl-")
        assert a["gen_ai.response.finish_reasons"] == ["stop"]
        assert a["llm.finish_reason"] == "stop"

    # Normal spans are OK; the run the budget stopped is the one error.
    tools = [s for s in received if s["span_kind"] == "TOOL"]
    assert tools
    assert {s["status_code"] for s in llm + tools} == {"OK"}
    assert first["status_code"] == "ERROR"
    assert first["attributes"]["budgetkit.status"].startswith("Budget: ")
    assert resumed["status_code"] == "OK"
    assert resumed["attributes"]["budgetkit.session.resumed_from"] == first_session
