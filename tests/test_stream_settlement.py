"""Streams settle exactly once, even when the caller abandons them (fail closed, #16 item 3).

A stream the caller drops after one chunk, or after one ``next()``, is charged what it reported
or, when it reported nothing, the reservation it was admitted with; the settlement happens
when the proxy is garbage-collected and is applied at the next LLM-call boundary at the
latest. ``instrument()`` asks OpenAI chat streams for their usage chunk.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import openai
import pytest

import budgetkit
from budgetkit import BudgetExhausted, SessionBudget, budget
from budgetkit._pricing import price_estimate, price_usage
from budgetkit._streams import settle_abandoned
from budgetkit._usage import Usage
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MESSAGES: Any = [{"role": "user", "content": "Tell me a long story about budgets"}]
USAGE = (1200, 300)
ESTIMATE = Decimal("0.002")  # reserved per call: 25 calls fit in $0.05
LIMIT = Decimal("0.05")
UNMEASURED = pytest.mark.filterwarnings("ignore::budgetkit.UnmeasuredUsageWarning")


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    budgetkit.uninstrument()
    settle_abandoned()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(usage=USAGE) as server:
        yield server


@pytest.fixture
def client(stub: StubServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as c:
        yield c


def _cost(tokens: tuple[int, int] = USAGE, model: str = "gpt-4o-mini") -> Decimal:
    cost = price_usage(Usage(*tokens, model=model, provider="openai"))
    assert cost is not None
    return cost


def _abandon(stream: Any, how: str) -> None:
    """Read one chunk the way ``how`` says, then drop every reference to the stream."""
    if how == "break":
        for _chunk in stream:
            break
    else:
        next(stream)


@UNMEASURED
@pytest.mark.parametrize("how", ["break", "next"])
def test_abandoned_decorated_streams_are_charged_their_reservation(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path, how: str
) -> None:
    """100 streams each dropped after one chunk, under max_usd with estimate=: each is charged
    its reservation, so the session stops at the budget (before: all 100 ran, for $0)."""

    @budget.llm_call(model="gpt-4o-mini", estimate=lambda *a, **k: ESTIMATE)
    def story() -> Any:
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)

    session = SessionBudget(max_usd=LIMIT, handoff_dir=handoff_dir)

    def agent() -> None:
        with session:
            for _ in range(100):
                _abandon(story(), how)

    with pytest.raises(BudgetExhausted) as info:
        agent()
    assert info.value.reason == "max_usd"
    assert len(stub.requests) == 25
    assert session.usage.llm_calls == 25
    assert session.usage.cost_usd == 25 * ESTIMATE == LIMIT
    assert session.boundary.snapshot().reserved_usd == 0


@UNMEASURED
@pytest.mark.parametrize("how", ["break", "next"])
def test_abandoned_instrumented_streams_are_charged_their_reservation(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path, how: str
) -> None:
    """The same through ``instrument()``: max_tokens is the estimate."""
    budgetkit.instrument()
    session = SessionBudget(max_usd=LIMIT, handoff_dir=handoff_dir)

    def agent() -> None:
        with session:
            for _ in range(100):
                _abandon(
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=8000
                    ),
                    how,
                )

    with pytest.raises(BudgetExhausted) as info:
        agent()
    assert info.value.reason == "max_usd"
    # Each call reserves 8,000 output tokens and its prompt's characters / 2 + 64 input
    # tokens (the documented bound), at gpt-4o-mini's prices: about $0.0048, so ten fit.
    prompt = dict.fromkeys(("messages", "input", "prompt", "system", "instructions", "tools"))
    prompt_chars = len(json.dumps({**prompt, "messages": MESSAGES}))
    tokens = {"input_tokens": prompt_chars // 2 + 64, "output_tokens": 8000}
    per_call = price_estimate(tokens, "gpt-4o-mini", "openai")
    assert per_call is not None
    assert len(stub.requests) == int(LIMIT // per_call) == 10
    assert session.usage.llm_calls == 10
    assert session.usage.cost_usd == 10 * per_call <= LIMIT
    assert session.boundary.snapshot().reserved_usd == 0


@UNMEASURED
def test_a_dropped_stream_settles_once_without_another_call(
    client: openai.OpenAI, handoff_dir: Path
) -> None:
    """Garbage collection settles an abandoned stream (no later boundary needed), once."""

    @budget.llm_call(model="gpt-4o-mini", estimate=lambda *a, **k: ESTIMATE)
    def story() -> Any:
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)

    with SessionBudget(max_usd=1, handoff_dir=handoff_dir) as session:
        stream = story()
        next(stream)
        assert session.boundary.snapshot().reserved_usd == ESTIMATE
        del stream
        gc.collect()
        settle_abandoned()
        settle_abandoned()
        assert session.boundary.snapshot().reserved_usd == 0
    assert session.usage.cost_usd == ESTIMATE
    assert session.usage.unmeasured_calls == 1


def test_an_abandoned_stream_is_charged_the_usage_it_reported(
    client: openai.OpenAI, handoff_dir: Path
) -> None:
    """A stream dropped after its usage chunk arrived is charged that usage, not the estimate."""

    @budget.llm_call(model="gpt-4o-mini", estimate=lambda *a, **k: ESTIMATE)
    def story() -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )

    with SessionBudget(max_usd=1, handoff_dir=handoff_dir) as session:
        stream = story()
        while next(stream).usage is None:  # read up to the usage chunk, never to the end
            pass
        del stream
        gc.collect()
        settle_abandoned()
    assert (session.usage.input_tokens, session.usage.output_tokens) == USAGE
    assert session.usage.cost_usd == _cost()


def test_the_finalizer_keeps_neither_the_proxy_nor_the_stream_alive(
    client: openai.OpenAI, handoff_dir: Path
) -> None:
    """Abandoning a stream frees it: the settlement hook holds no reference to either object."""

    @budget.llm_call
    def story() -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )

    with SessionBudget(handoff_dir=handoff_dir):
        proxy = story()
        next(proxy)
        proxy_ref = weakref.ref(proxy)
        stream_ref = weakref.ref(proxy.__wrapped__)
        del proxy
        gc.collect()
        assert proxy_ref() is None
        assert stream_ref() is None
        settle_abandoned()


def test_abandoned_streams_at_interpreter_exit_are_quiet(stub: StubServer, tmp_path: Path) -> None:
    """A stream still open (or dropped) when the interpreter exits prints nothing and exits 0."""
    script = tmp_path / "agent.py"
    script.write_text(
        textwrap.dedent(f"""
            import warnings

            import openai
            from budgetkit import SessionBudget, UnmeasuredUsageWarning, budget

            warnings.simplefilter("ignore", UnmeasuredUsageWarning)

            client = openai.OpenAI(base_url={stub.base_url!r}, api_key="t", max_retries=0)

            @budget.llm_call(model="gpt-4o-mini", estimate=lambda *a, **k: 0.001)
            def story():
                return client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}],
                    stream=True,
                )

            session = SessionBudget(max_usd=1, handoff_dir=None)
            session.__enter__()
            kept = story()
            next(kept)
            dropped = story()
            next(dropped)
            del dropped
            print("done")
        """)
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"
    assert out.stderr == ""


# -- instrument() asks chat streams for their usage ------------------------------------------------


def _chunks_of(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    return list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, **kwargs
        )
    )


def test_instrument_adds_include_usage_and_hides_the_usage_chunk(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    """A chat stream started without stream_options is measured; the caller sees the same
    chunks as without budgetkit (the usage-only chunk it did not ask for is not shown)."""
    plain = _chunks_of(client)
    budgetkit.instrument()
    with SessionBudget(max_usd=1, handoff_dir=handoff_dir) as session:
        measured = _chunks_of(client)

    def shown(chunks: list[Any]) -> list[Any]:
        return [c.model_dump(exclude={"id"}) for c in chunks]

    assert shown(measured) == shown(plain)
    assert stub.requests[-1][1]["stream_options"] == {"include_usage": True}
    assert (session.usage.input_tokens, session.usage.output_tokens) == USAGE
    assert session.usage.unmeasured_calls == 0
    assert session.usage.cost_usd == _cost()


def test_instrument_merges_include_usage_into_the_callers_stream_options(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    budgetkit.instrument()
    with SessionBudget(handoff_dir=handoff_dir) as session:
        _chunks_of(client, stream_options={"include_obfuscation": False})
    sent = stub.requests[-1][1]["stream_options"]
    assert sent == {"include_obfuscation": False, "include_usage": True}
    assert session.usage.total_tokens == sum(USAGE)


def test_instrument_keeps_an_explicit_include_usage_false(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    """The caller who said no to the usage chunk keeps that: the call is unmeasured."""
    budgetkit.instrument()
    with (
        SessionBudget(handoff_dir=handoff_dir) as session,
        pytest.warns(budgetkit.UnmeasuredUsageWarning),
    ):
        chunks = _chunks_of(client, stream_options={"include_usage": False})
    assert stub.requests[-1][1]["stream_options"] == {"include_usage": False}
    assert all(c.choices for c in chunks)
    assert session.usage.unmeasured_calls == 1


def test_instrument_shows_the_usage_chunk_when_the_caller_asked_for_it(
    client: openai.OpenAI, handoff_dir: Path
) -> None:
    budgetkit.instrument()
    with SessionBudget(handoff_dir=handoff_dir) as session:
        chunks = _chunks_of(client, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert session.usage.total_tokens == sum(USAGE)


# -- @budget.llm_call(stream_usage=True) -------------------------------------------------------


def test_stream_usage_flag_adds_include_usage_to_an_openai_chat_call(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    """The decorator's flag asks the request for its usage chunk, so the stream is measured."""
    create = budget.llm_call(stream_usage=True)(client.chat.completions.create)
    with SessionBudget(handoff_dir=handoff_dir) as session:
        chunks = list(create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
        create(model="gpt-4o-mini", messages=MESSAGES)  # not a stream: left alone
    assert stub.requests[0][1]["stream_options"] == {"include_usage": True}
    assert "stream_options" not in stub.requests[1][1]
    assert chunks[-1].usage is not None
    assert session.usage.total_tokens == 2 * sum(USAGE)
    assert session.usage.unmeasured_calls == 0


def test_stream_usage_flag_refuses_a_function_that_cannot_take_it() -> None:
    """A function without a stream_options parameter (or **kwargs) cannot be helped: said
    when it is decorated, not discovered as an unmeasured stream later."""

    def story(*, messages: Any, stream: bool) -> Any:
        return None

    with pytest.raises(budgetkit.BudgetConfigError, match="stream_options"):
        budget.llm_call(stream_usage=True)(story)


def test_stream_usage_flag_must_be_a_bool() -> None:
    with pytest.raises(budgetkit.BudgetTypeError, match="stream_usage"):
        budget.llm_call(stream_usage="yes")  # type: ignore[call-overload]
