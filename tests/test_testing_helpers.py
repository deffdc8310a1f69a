"""budgetkit.testing: FakeClock, capture_budget, fake_usage, record_spans, StubServer."""

from __future__ import annotations

import ast
import asyncio
import math
import socket
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from otel_fixtures import Otel, otel

import budgetkit.testing
from budgetkit import (
    BudgetConfigError,
    BudgetExhausted,
    BudgetTypeError,
    CostUnknownWarning,
    SessionBudget,
    _config,
    _events,
    budget,
)
from budgetkit._extract import extract_usage
from budgetkit._pricing import price_usage
from budgetkit.testing import (
    BudgetCapture,
    FakeClock,
    StubServer,
    capture_budget,
    fake_usage,
    record_spans,
)

__all__ = ["otel"]  # the fixture, imported for its side effect on pytest


@budget.step
def tool() -> str:
    return "ok"


@budget.llm_call
def model(tokens_in: int = 1_000, tokens_out: int = 100) -> dict[str, Any]:
    return fake_usage("gpt-4o-mini", tokens_in, tokens_out)


def _core_emits_events() -> bool:
    with capture_budget() as captured, SessionBudget(handoff_dir=None):
        tool()
    return bool(captured.events)


needs_events = pytest.mark.skipif(
    not _core_emits_events(),
    reason="the core does not emit budgetkit._events yet (session/step/charge call sites)",
)


# ----------------------------------------------------------------------------- FakeClock
def test_fake_clock_installs_and_restores_the_clock() -> None:
    """Inside the block sessions read the fake clock; after it, the real one again."""
    assert _config.clock is time.monotonic
    with FakeClock(start=5.0) as clock:
        assert _config.clock is clock
        assert clock() == 5.0
        assert clock.advance(2.5) == 7.5
        assert clock.now == 7.5
    assert _config.clock is time.monotonic


def test_fake_clock_restores_on_error_and_nests() -> None:
    """Nested clocks restore in order, also when the block raises."""
    outer, inner = FakeClock(), FakeClock(100)

    def fail_inside() -> None:
        with outer, inner:
            assert _config.clock is inner
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert _config.clock is time.monotonic


def test_fake_clock_drives_max_seconds() -> None:
    """max_seconds trips from advance() alone, without sleeping."""
    with (
        FakeClock() as clock,
        SessionBudget(max_seconds=10, handoff_dir=None, raise_on_exhausted=False) as session,
    ):
        tool()
        clock.advance(10)  # equal to the limit: still within budget
        tool()
        clock.advance(0.5)
        tool()  # refused: BudgetExhausted, swallowed on exit
    assert session.result is not None
    assert session.result.stop_reason == "max_seconds"
    assert session.usage.steps == 2
    assert session.usage.elapsed_seconds == 10.5


def test_fake_clock_drives_async_sessions() -> None:
    """An async session started on the fake clock is judged by it too."""

    @budget.step
    async def slow() -> None:
        _config.clock.advance(30)  # type: ignore[attr-defined]

    async def main() -> SessionBudget:
        async with SessionBudget(max_seconds=60, handoff_dir=None, raise_on_exhausted=False) as s:
            while True:
                await slow()
        return s

    with FakeClock():
        session = asyncio.run(main())
    assert session.result is not None
    assert session.result.stop_reason == "max_seconds"
    assert session.usage.steps == 3  # at 0, 30 and 60 seconds


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
def test_fake_clock_rejects_bad_advances(bad: float) -> None:
    """A negative, NaN or infinite advance is a clear error; the clock does not move."""
    clock = FakeClock()
    with pytest.raises(BudgetConfigError, match="seconds"):
        clock.advance(bad)
    assert clock.now == 0.0


@pytest.mark.parametrize("bad", ["1", True, None])
def test_fake_clock_rejects_non_numbers(bad: object) -> None:
    """A string, bool or None is a type error naming the argument."""
    with pytest.raises(BudgetTypeError, match="seconds"):
        FakeClock().advance(bad)  # type: ignore[arg-type]
    with pytest.raises(BudgetTypeError, match="start"):
        FakeClock(bad)  # type: ignore[arg-type]


def test_fake_clock_uninstall_without_install() -> None:
    """uninstall() without install() is a programming error, not a silent no-op."""
    with pytest.raises(RuntimeError, match="install"):
        FakeClock().uninstall()


# ----------------------------------------------------------------------------- fake_usage
def test_fake_usage_is_read_and_priced_like_a_real_response() -> None:
    """The extractor reads the counts and genai-prices prices them."""
    response = fake_usage("gpt-4o-mini", 10_000, 1_000)
    usage = extract_usage(response)
    assert (usage.input_tokens, usage.output_tokens, usage.model) == (10_000, 1_000, "gpt-4o-mini")
    assert price_usage(usage) == Decimal("0.0021")
    with SessionBudget(handoff_dir=None) as session:
        model(10_000, 1_000)
    assert session.usage.cost_usd == Decimal("0.0021")
    assert session.usage.unpriced_calls == 0


def test_fake_usage_cache_and_reasoning_details() -> None:
    """Cache reads and reasoning tokens land in the provider's details blocks."""
    response = fake_usage("o4-mini", 5_000, 2_000, cache_read_tokens=4_000, reasoning_tokens=1_500)
    assert response["usage"]["prompt_tokens_details"] == {"cached_tokens": 4_000}
    assert response["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1_500}
    usage = extract_usage(response)
    assert usage.cache_read_tokens == 4_000
    assert usage.reasoning_tokens == 1_500
    assert usage.input_tokens == 5_000
    assert usage.output_tokens == 2_000


def test_fake_usage_unknown_model_is_unpriced() -> None:
    """A model the table does not know stays unpriced, as with a real response."""

    @budget.llm_call
    def homemade() -> dict[str, Any]:
        return fake_usage("homemade-7b", 100, 10)

    session = SessionBudget(max_usd=1, on_unknown_cost="warn", handoff_dir=None)

    def run() -> None:
        with session:
            homemade()

    with pytest.warns(CostUnknownWarning, match="unknown"):
        run()
    assert session.usage.unpriced_calls == 1
    assert session.usage.cost_usd == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("", 1, 1), {}, BudgetTypeError, "model"),
        (("m", -1, 1), {}, BudgetConfigError, "input_tokens"),
        (("m", 1, 1.5), {}, BudgetTypeError, "output_tokens"),
        (("m", True, 1), {}, BudgetTypeError, "input_tokens"),
        (("m", 10, 1), {"cache_read_tokens": 11}, BudgetConfigError, "cache_read_tokens"),
        (("m", 10, 1), {"reasoning_tokens": 2}, BudgetConfigError, "reasoning_tokens"),
    ],
)
def test_fake_usage_bad_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad counts are rejected with a message naming the argument."""
    with pytest.raises(error, match=match):
        fake_usage(*args, **kwargs)


# ----------------------------------------------------------------------------- capture_budget
def test_capture_budget_records_events_while_active() -> None:
    """Events emitted inside the block are recorded and sorted by kind; none after it."""
    a, b = object(), object()
    with capture_budget() as captured:
        _events.emit("session_start", a)
        _events.emit("step", a, name="search")
        _events.emit("llm_call", a, name="ask", usage=None, cost_usd=Decimal(1))
        _events.emit("charge", b, usage=None, cost_usd=Decimal(2))
        _events.emit("exhausted", a, reason="max_steps", handoff_path=None)
        _events.emit("session_end", a, result=None)
    _events.emit("step", a, name="after")
    assert isinstance(captured, BudgetCapture)
    assert captured.kinds() == [
        "session_start",
        "step",
        "llm_call",
        "charge",
        "exhausted",
        "session_end",
    ]
    assert captured.sessions == [a, b]
    assert [e.data["name"] for e in captured.steps] == ["search"]
    assert [e.data["cost_usd"] for e in captured.charges] == [Decimal(1), Decimal(2)]
    assert [e.data["reason"] for e in captured.exhaustions] == ["max_steps"]
    assert _events.listeners == []


def test_capture_budget_unsubscribes_on_error_and_nests() -> None:
    """Nested captures both record; each unsubscribes on exit, also when the block raises."""
    inner = BudgetCapture()

    def fail_inside() -> None:
        nonlocal inner
        with capture_budget() as outer:
            with capture_budget() as inner:
                _events.emit("step", None, name="x")
            raise KeyError(outer)

    with pytest.raises(KeyError) as failed:
        fail_inside()
    (outer,) = failed.value.args
    assert len(outer.events) == 1
    assert len(inner.events) == 1
    assert _events.listeners == []


@needs_events
def test_capture_budget_sees_a_real_session() -> None:
    """A real session reports its start, steps, charges, exhaustion and end."""
    with (
        capture_budget() as captured,
        SessionBudget(max_steps=2, handoff_dir=None, raise_on_exhausted=False) as session,
    ):
        while True:
            tool()
            model()
    assert captured.sessions == [session]
    assert captured.kinds()[0] == "session_start"
    assert "session_end" in captured.kinds()
    assert [e.data["name"] for e in captured.steps] == ["tool", "tool"]
    assert [e.kind for e in captured.charges][:2] == ["llm_call", "llm_call"]
    assert captured.charges[0].data["cost_usd"] == Decimal("0.00021")
    assert [e.data["reason"] for e in captured.exhaustions] == ["max_steps"]


@needs_events
def test_capture_budget_exhaustion_carries_the_handoff_path(tmp_path: Path) -> None:
    """The exhausted event names the handoff file that was written."""

    def run() -> None:
        with SessionBudget(max_llm_calls=1, handoff_dir=tmp_path):
            model()
            model()

    with capture_budget() as captured, pytest.raises(BudgetExhausted) as stopped:
        run()
    (event,) = captured.exhaustions
    assert event.data["handoff_path"] == stopped.value.handoff_path


# ----------------------------------------------------------------------------- record_spans
def test_record_spans_collects_only_its_own_block(otel: Otel) -> None:
    """Spans that end inside the block are recorded, in a tree; those after it are not."""
    with record_spans() as spans, SessionBudget(name="agent", handoff_dir=None):
        tool()
        model()
    with SessionBudget(handoff_dir=None):
        tool()
    assert spans.names() == ["execute_tool tool", "chat gpt-4o-mini", "invoke_agent agent"]
    assert spans.tree() == "invoke_agent agent\n  execute_tool tool\n  chat gpt-4o-mini"
    root = spans.span("invoke_agent agent")
    assert [s.name for s in spans.children(root)] == ["execute_tool tool", "chat gpt-4o-mini"]
    spans.clear()
    assert spans.spans == []


def test_record_spans_reuses_one_processor(otel: Otel) -> None:
    """Many recorders share one processor on the provider; each sees what ended in its block."""
    with record_spans() as first:
        with record_spans() as second, SessionBudget(handoff_dir=None):
            tool()
        with SessionBudget(handoff_dir=None):
            tool()
    assert len(first.spans) == 4
    assert len(second.spans) == 2
    with pytest.raises(AssertionError, match="2 spans named"):
        first.span("execute_tool tool")


def test_capture_budget_sees_steps_of_nested_sessions() -> None:
    """A step inside a nested session is reported once, like one in a single session."""
    from budgetkit import SessionBudget, budget
    from budgetkit.testing import capture_budget

    @budget.step
    def tool() -> None:
        return None

    with capture_budget() as captured:
        with SessionBudget(handoff_dir=None), SessionBudget(handoff_dir=None):
            tool()
        assert len(captured.steps) == 1


# ----------------------------------------------------------------------------- StubServer
def test_stub_server_is_public_and_answers_the_real_openai_client() -> None:
    import openai

    assert "StubServer" in budgetkit.testing.__all__
    question = [{"role": "user", "content": "How much?"}]
    with (
        StubServer(reply="Ten dollars.", usage=(2_000, 500), cache_read_tokens=500) as stub,
        openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client,
        SessionBudget(handoff_dir=None) as session,
    ):
        assert stub.base_url == f"http://127.0.0.1:{stub.port}/v1"
        assert stub.anthropic_base_url == stub.url == f"http://127.0.0.1:{stub.port}"

        @budget.llm_call
        def ask() -> Any:
            return client.chat.completions.create(model="gpt-4o-mini", messages=question)

        answer = ask()
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=question,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                streamed = chunk.usage
        response = client.responses.create(model="gpt-4o-mini", input="How much?")
    assert answer.choices[0].message.content == text == response.output_text == "Ten dollars."
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2_000, 500)
    assert streamed.prompt_tokens == 2_000
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 500
    # budgetkit read and priced the stub's answer like a real one.
    assert session.usage.llm_calls == 1
    assert (session.usage.input_tokens, session.usage.output_tokens) == (2_000, 500)
    assert session.usage.cost_usd > 0
    assert [path for path, _ in stub.requests] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/responses",
    ]
    with pytest.raises(RuntimeError, match="not running"):
        _ = stub.port  # stopped at the end of the block


def test_stub_server_listens_on_the_port_asked_for() -> None:
    import openai

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with StubServer(port=port) as stub:
        assert stub.port == port
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="test", max_retries=0
        ) as client:
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "echo"}]
            )
        assert answer.choices[0].message.content == "Stub reply to: echo"
        with pytest.raises(RuntimeError, match="already running"):
            stub.start()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_stub_server_on_an_ipv6_host() -> None:
    import anthropic

    with StubServer(host="::1", reply="six") as stub:
        assert stub.anthropic_base_url == f"http://[::1]:{stub.port}"
        with anthropic.Anthropic(
            base_url=stub.anthropic_base_url, api_key="test", max_retries=0
        ) as claude:
            message = claude.messages.create(
                model="claude-haiku-4-5",
                max_tokens=10,
                messages=[{"role": "user", "content": "v?"}],
            )
    assert message.content[0].type == "text"
    assert message.content[0].text == "six"


@pytest.mark.parametrize(
    ("port", "error", "message"),
    [
        ("8080", BudgetTypeError, "port must be an int"),
        (True, BudgetTypeError, "port must be an int"),
        (-1, BudgetConfigError, "from 0 to 65535"),
        (65_536, BudgetConfigError, "from 0 to 65535"),
    ],
)
def test_stub_server_rejects_a_bad_port(port: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        StubServer(port=port)


ROOT = Path(__file__).resolve().parent.parent


def _imports_of(path: Path) -> set[str]:
    """The absolute names a Python file imports (modules, and ``module.name`` of from-imports)."""
    inside = ROOT / "budgetkit" in path.parents
    package = path.parent.relative_to(ROOT).parts if inside else ()
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_only_budgetkit_testing_imports_the_private_stub_module() -> None:
    """Everyone else, from the demo to the benchmarks, uses ``budgetkit.testing.StubServer``."""
    sources = [
        path
        for folder in ("budgetkit", "tests", "scripts", "benchmarks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if ".venv" not in path.parts
    ]
    importers = [
        str(path.relative_to(ROOT))
        for path in sources
        if "budgetkit._stubserver" in _imports_of(path)
    ]
    assert importers == ["budgetkit/testing.py"]
    # Relative imports are resolved: the demo's ``from ..testing import StubServer``.
    assert "budgetkit.testing.StubServer" in _imports_of(ROOT / "budgetkit" / "cli" / "_demo.py")


def test_docs_never_mention_the_private_stub_module() -> None:
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    mentions = [
        str(page.relative_to(ROOT))
        for page in pages
        if "_stubserver" in page.read_text(encoding="utf-8")
    ]
    assert mentions == []
