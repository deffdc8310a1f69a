"""Reservations count the context a provider stores for a Responses call (#16 item 5).

A Responses request naming ``previous_response_id`` (or a ``conversation``) is billed for the
stored conversation as input, though its arguments hold only the new turn. ``instrument()``
remembers the token totals of the responses it saw and adds them to the reservation; an id it
never saw is reserved at the model's whole context window.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import openai
import pytest

import budgetkit
from budgetkit import BudgetExhausted, SessionBudget
from budgetkit._instrument import UNKNOWN_CONTEXT_TOKENS, StoredContext
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

LIMIT = Decimal("0.05")
TURN_INPUT = 2000  # the new turn's tokens; the stored conversation comes on top
MAX_OUTPUT = 1000


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    budgetkit.uninstrument()


def stored_conversation_usage() -> Callable[[dict[str, Any]], tuple[int, int]]:
    """Bill like the Responses API: input is the new turn plus everything stored before it."""
    totals: dict[str, int] = {}
    numbers = itertools.count(1)  # the stub numbers its responses resp_stub1, resp_stub2 ...

    def usage(body: dict[str, Any]) -> tuple[int, int]:
        stored = totals.get(str(body.get("previous_response_id")), 0)
        stored += totals.get(str(body.get("conversation")), 0)
        input_tokens = TURN_INPUT + stored
        output_tokens = int(body.get("max_output_tokens") or MAX_OUTPUT)
        totals[f"resp_stub{next(numbers)}"] = input_tokens + output_tokens
        if body.get("conversation"):
            totals[str(body["conversation"])] = input_tokens + output_tokens
        return input_tokens, output_tokens

    return usage


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(usage=stored_conversation_usage()) as server:
        yield server


@pytest.fixture
def client(stub: StubServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as c:
        yield c


def test_a_chain_of_responses_stays_within_max_usd(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    """gpt-4o turns of 2,000 new tokens chained by previous_response_id, capped at 1,000 output
    tokens: $0.015, then $0.0225, then $0.03. Before, the third call's reservation counted only
    its own arguments (about $0.010), it was sent, and the session spent $0.0675 against
    max_usd=0.05. Now it reserves the stored 6,000 tokens too and is refused before it is sent."""
    budgetkit.instrument()
    session = SessionBudget(max_usd=LIMIT, handoff_dir=handoff_dir)

    def chat() -> None:
        previous = None
        with session:
            for _ in range(10):
                response = client.responses.create(
                    model="gpt-4o",
                    input="next step",
                    previous_response_id=previous,
                    max_output_tokens=MAX_OUTPUT,
                )
                previous = response.id

    with pytest.raises(BudgetExhausted) as info:
        chat()
    assert info.value.reason == "max_usd"
    assert len(stub.requests) == 2
    assert session.usage.cost_usd == Decimal("0.0375") <= LIMIT
    assert session.boundary.snapshot().reserved_usd == 0


def test_a_streamed_response_is_remembered_too(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    """The id and totals of a streamed response come from its terminal event."""
    budgetkit.instrument()
    session = SessionBudget(max_usd=LIMIT, handoff_dir=handoff_dir)

    def chat() -> None:
        with session:
            first = client.responses.create(model="gpt-4o", input="a", max_output_tokens=MAX_OUTPUT)
            with client.responses.stream(
                model="gpt-4o",
                input="b",
                previous_response_id=first.id,
                max_output_tokens=MAX_OUTPUT,
            ) as stream:
                second = stream.get_final_response()
            client.responses.create(
                model="gpt-4o", input="c", previous_response_id=second.id, max_output_tokens=1000
            )

    with pytest.raises(BudgetExhausted):
        chat()
    assert len(stub.requests) == 2
    assert session.usage.cost_usd == Decimal("0.0375")


def test_an_unknown_previous_response_is_reserved_at_the_context_window(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    """An id from another process may hold up to the model's context window (gpt-4o: 128,000
    tokens, $0.32 of input): refused up front under max_usd=0.05, nothing sent."""
    budgetkit.instrument()
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_usd=LIMIT, handoff_dir=handoff_dir),
    ):
        client.responses.create(
            model="gpt-4o", input="go on", previous_response_id="resp_from_yesterday"
        )
    assert info.value.reason == "max_usd"
    assert stub.requests == []


def test_a_known_previous_response_without_an_output_cap_reserves_its_input(
    handoff_dir: Path,
) -> None:
    """Without max_output_tokens only the input can be bounded; it is reserved all the same
    (seen from the server while the request is in flight)."""
    session = SessionBudget(max_usd=1, handoff_dir=handoff_dir)
    reserved: list[Decimal] = []

    def reply(body: dict[str, Any]) -> str:
        if body.get("previous_response_id"):
            reserved.append(session.boundary.snapshot().reserved_usd)
        return "ok"

    budgetkit.instrument()
    with (
        StubServer(reply=reply, usage=stored_conversation_usage()) as stub,
        openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as client,
        session,
    ):
        first = client.responses.create(model="gpt-4o", input="a", max_output_tokens=MAX_OUTPUT)
        client.responses.create(model="gpt-4o", input="b", previous_response_id=first.id)
    # 3,000 stored tokens plus the request's own text, at $2.50 per million input tokens.
    assert len(reserved) == 1
    assert Decimal("0.0075") < reserved[0] < Decimal("0.008")
    assert session.boundary.snapshot().reserved_usd == 0


def test_a_conversation_is_stored_context_as_well(
    client: openai.OpenAI, stub: StubServer, handoff_dir: Path
) -> None:
    budgetkit.instrument()
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_usd=LIMIT, handoff_dir=handoff_dir),
    ):
        client.responses.create(
            model="gpt-4o", input="hi", conversation="conv_elsewhere", max_output_tokens=10
        )
    assert info.value.reason == "max_usd"
    assert stub.requests == []


def test_stored_context_memory_is_bounded() -> None:
    """An LRU of ids: the oldest are forgotten (and then reserved conservatively)."""
    memory = StoredContext(capacity=3)
    for i in range(5):
        memory.remember(f"resp_{i}", 100 * i)
    assert len(memory) == 3
    assert memory.tokens("resp_0") is None
    assert memory.tokens("resp_4") == 400
    memory.tokens("resp_2")  # used: now the most recent
    memory.remember("resp_5", 500)
    assert memory.tokens("resp_2") == 200
    assert memory.tokens("resp_3") is None
    assert UNKNOWN_CONTEXT_TOKENS >= 1_000_000
