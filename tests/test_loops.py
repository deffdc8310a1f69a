"""Loop detection: ``SessionBudget(max_repeats=N)`` stops a session whose same step is called
with equal arguments N times in a row (reason ``loop_detected``), in process and on Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from redis_fixtures import ledger, redis_server

from budgetkit import BudgetExhausted, Handoff, SessionBudget, budget
from budgetkit._digest import call_digest
from budgetkit.exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["ledger", "redis_server"]  # fixtures, re-exported for pytest

ran: list[Any] = []


@budget.step
def search(query: str, page: int = 1) -> str:
    ran.append((query, page))
    return query


@budget.step
def fetch(url: str) -> str:
    ran.append(url)
    return url


@budget.step(key=lambda query, request_id: query)
def keyed(query: str, request_id: int) -> str:
    ran.append((query, request_id))
    return query


@budget.llm_call(model="gpt-4o-mini")
def think() -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def refused(body: Callable[[], object]) -> BudgetExhausted:
    """The ``BudgetExhausted`` that ``body`` raises (it must raise one)."""
    try:
        body()
    except BudgetExhausted as exc:
        return exc
    raise AssertionError("no BudgetExhausted was raised")


@pytest.fixture(params=["in-process", "redis"])
def where(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("BUDGETKIT_LEDGER_URL", raising=False)
    ran.clear()
    if request.param == "in-process":
        return None
    return request.getfixturevalue("ledger")


def test_three_equal_calls_in_a_row_run_then_the_session_stops(where: Any, tmp_path: Path) -> None:
    """With ``max_repeats=3`` the third equal call in a row runs and trips ``loop_detected``;
    the next boundary (whatever it is) is refused, the handoff names the step and loads."""
    session = SessionBudget(max_repeats=3, handoff_dir=tmp_path, ledger=where)

    def agent() -> None:
        with session:
            for _ in range(10):
                think()  # LLM calls between the steps do not break the run of repeats
                search("same", page=2)

    exc = refused(agent)
    assert ran == [("same", 2)] * 3
    assert exc.reason == "loop_detected"
    assert "'search' called 3 times in a row with equal arguments" in str(exc)
    assert exc.handoff.extra["loop"] == {"step": "search", "repeats": 3}
    assert exc.handoff_path is not None
    assert Handoff.load(exc.handoff_path).reason == "loop_detected"
    assert session.result is not None
    assert session.result.stop_reason == "loop_detected"


def test_different_arguments_or_another_step_break_the_run(where: Any) -> None:
    with SessionBudget(max_repeats=3, handoff_dir=None, ledger=where):
        for i in range(5):
            search("a")
            search("a")
            search("a", page=i + 2)  # other arguments: a new run
            fetch("x")
            fetch("x")
            search("b")  # another step came between: a new run
    assert len(ran) == 30


def test_keyword_and_positional_spellings_are_not_merged_but_values_are(where: Any) -> None:
    """Arguments are compared by value, not by ``repr`` or identity: equal lists built apart
    are equal, and a dict's order does not matter."""
    a = call_digest("s", ([1, 2], {"x": 1, "y": 2}), {})
    b = call_digest("s", ([1, 2], {"y": 2, "x": 1}), {})
    assert a == b
    assert call_digest("s", (1,), {}) != call_digest("s", (1.0,), {})
    assert call_digest("s", ((1,),), {}) != call_digest("s", ([1],), {})
    assert call_digest("s", (1,), {}) != call_digest("t", (1,), {})
    assert call_digest("s", (Decimal("0.1"),), {}) == call_digest("s", (Decimal("0.1"),), {})


def test_unserialisable_arguments_are_never_equal(where: Any) -> None:
    """An argument that cannot be compared by value (a lock) makes each call distinct: the
    same call ten times in a row does not trip."""
    lock = threading.Lock()
    assert call_digest("s", (lock,), {}) != call_digest("s", (lock,), {})
    deep: list[Any] = []
    for _ in range(1000):
        deep = [deep]
    assert call_digest("s", (deep,), {}) != call_digest("s", (deep,), {})
    with SessionBudget(max_repeats=2, handoff_dir=None, ledger=where):
        for _ in range(10):
            fetch(lock)  # type: ignore[arg-type]
    assert len(ran) == 10


def test_huge_arguments_are_digested_in_full(where: Any) -> None:
    """Two 10 MB strings that differ only in their last character are different calls."""
    big = "x" * 10_000_000
    assert call_digest("s", (big + "a",), {}) != call_digest("s", (big + "b",), {})
    with SessionBudget(max_repeats=2, handoff_dir=None, ledger=where):
        fetch(big + "a")
        fetch(big + "b")
        fetch(big + "b")  # the second equal call in a row: it runs and trips the limit
        assert refused(lambda: fetch("other")).reason == "loop_detected"
    assert len(ran) == 3


def test_key_chooses_what_counts_as_the_same_call(where: Any) -> None:
    """``key=`` drops the request id: calls with the same query and new ids are repeats."""

    def agent() -> None:
        with SessionBudget(max_repeats=2, handoff_dir=None, ledger=where):
            for i in range(5):
                keyed("q", i)

    assert refused(agent).reason == "loop_detected"
    assert ran == [("q", 0), ("q", 1)]


def test_async_steps_are_compared_too(where: Any) -> None:
    @budget.step
    async def lookup(x: int) -> int:
        return x

    async def run() -> int:
        n = 0
        for _ in range(5):
            await lookup(1)
            n += 1
        return n

    with SessionBudget(max_repeats=2, handoff_dir=None, raise_on_exhausted=False, ledger=where):
        assert refused(lambda: asyncio.run(run())).reason == "loop_detected"


@dataclasses.dataclass
class Query:
    text: str


def test_dataclass_arguments_compare_by_fields() -> None:
    assert call_digest("s", (Query("a"),), {}) == call_digest("s", (Query("a"),), {})
    assert call_digest("s", (Query("a"),), {}) != call_digest("s", (Query("b"),), {})


@pytest.mark.parametrize(("value", "error"), [(0, BudgetConfigError), ("3", BudgetTypeError)])
def test_bad_max_repeats_is_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        SessionBudget(max_repeats=value)


def test_max_repeats_is_carried_by_the_handoff(tmp_path: Path) -> None:
    def agent() -> None:
        with SessionBudget(max_repeats=2, max_steps=1, handoff_dir=tmp_path):
            fetch("a")
            fetch("b")

    exc = refused(agent)
    assert exc.handoff_path is not None
    resumed = SessionBudget.resume(exc.handoff_path)
    assert resumed.limits.max_repeats == 2
