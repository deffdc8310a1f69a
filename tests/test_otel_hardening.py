"""Telemetry under hostile conditions (issue #17): what an exception leaks, a dead collector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.trace import StatusCode
from otel_fixtures import Otel, otel

from budgetkit import SessionBudget, budget
from budgetkit import _attributes as names
from budgetkit import otel as bk_otel

if TYPE_CHECKING:
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["otel"]  # the fixture

SECRET = "acct-7731-secret"


@budget.step
def lookup(account: str) -> str:
    raise ValueError(f"no such account: {account}")


@budget.llm_call(model="gpt-4o-mini")
def ask(prompt: str) -> Any:
    raise RuntimeError(f"provider refused the prompt {prompt!r}")


@budget.step
def noop() -> None:
    return None


def _everything(span: ReadableSpan) -> str:
    """All a span carries that an exporter would send: attributes, events, status."""
    return json.dumps(
        {
            "attributes": dict(span.attributes or {}),
            "events": [[e.name, dict(e.attributes or {})] for e in span.events],
            "status": span.status.description,
        },
        default=str,
    )


def _failing_agent() -> None:
    with pytest.raises(ValueError, match=SECRET):
        lookup(SECRET)
    with pytest.raises(RuntimeError, match=SECRET):
        ask(SECRET)
    raise KeyError(SECRET)  # outside any step: recorded on the session span


def _run_failing_agent() -> None:
    session = SessionBudget(handoff_dir=None)
    with pytest.raises(KeyError), session:
        _failing_agent()


def test_exception_content_is_not_recorded_without_capture(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content capture off: the exception's type only; no message, no stack trace, anywhere."""
    monkeypatch.delenv(names.CAPTURE_CONTENT_ENV, raising=False)
    _run_failing_agent()
    for span in otel.spans():
        assert SECRET not in _everything(span), span.name
    for name, kind in (
        ("execute_tool lookup", "ValueError"),
        ("chat gpt-4o-mini", "RuntimeError"),
        ("budgetkit.session", "KeyError"),
    ):
        span = otel.span(name)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == kind
        [event] = span.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.type"] == kind
        assert "exception.message" not in event.attributes
        assert "exception.stacktrace" not in event.attributes


def test_exception_content_is_recorded_with_capture(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content capture on: the message and the stack trace, as before."""
    monkeypatch.setenv(names.CAPTURE_CONTENT_ENV, "true")
    _run_failing_agent()
    step = otel.span("execute_tool lookup")
    assert step.status.description == f"ValueError: no such account: {SECRET}"
    [event] = step.events
    assert event.attributes is not None
    assert event.attributes["exception.message"] == f"no such account: {SECRET}"
    assert "lookup" in str(event.attributes["exception.stacktrace"])


@budget.step
def outer() -> None:
    noop()  # refused at max_steps=1: BudgetExhausted goes through outer's span


def test_budget_exhausted_records_the_budgetkit_reason(otel: Otel) -> None:
    """Capture off, ``BudgetExhausted`` through a step: its type and reason, no message."""
    bk_otel.capture_content(False)
    with SessionBudget(max_steps=1, handoff_dir=None, raise_on_exhausted=False) as session:
        outer()
    assert session.exhausted
    span = otel.span("execute_tool outer")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "BudgetExhausted (reason: max_steps)"
    [event] = span.events
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "BudgetExhausted"
    assert event.attributes[names.EXHAUSTED_REASON] == "max_steps"
    assert "exception.message" not in event.attributes
    assert "exception.stacktrace" not in event.attributes


# ----------------------------------------------------------------------------- a dead collector

_DEAD_COLLECTOR = """
import json, socket, sys, time, warnings
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from budgetkit import BudgetWarning, SessionBudget, otel

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()  # nothing listens there any more: every export is refused
endpoint = f"http://127.0.0.1:{port}/v1/traces"

out = {}
for label, kwargs in (("default", {}), ("short", {"timeout": 0.3})):
    telemetry = otel.configure(service_name="dead", exporter=OTLPSpanExporter(endpoint=endpoint))
    with SessionBudget(handoff_dir=None):
        pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.monotonic()
        telemetry.shutdown(**kwargs)
        out[label] = {
            "seconds": time.monotonic() - started,
            "warnings": [
                str(w.message) for w in caught if issubclass(w.category, BudgetWarning)
            ],
        }
print(json.dumps(out))
"""


def test_shutdown_is_bounded_when_the_collector_is_down(tmp_path: Path) -> None:
    """A real OTLP/HTTP exporter at a closed loopback port: shutdown returns within its timeout
    (2 s by default, or the ``timeout=`` given) and says once that spans were dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _DEAD_COLLECTOR],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("shutdown with a dead collector still running after 120 s")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["default"]["seconds"] < 2 + 1, out
    assert out["short"]["seconds"] < 0.3 + 1, out
    for label in ("default", "short"):
        [warning] = out[label]["warnings"]
        assert "dropped" in warning, warning
