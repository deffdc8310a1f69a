"""Per-tool caps and prices: ``@budget.step(max_calls=N)`` and ``@budget.step(cost_usd=...)``.

Each test runs in process and on a real Redis ledger (``where``): the cap and the price are
ledger rules, so a shared session counts a tool's calls across its workers.
"""

from __future__ import annotations

import multiprocessing
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from redis_fixtures import ledger, redis_server, tool_racer

from budgetkit import BudgetExhausted, Handoff, SessionBudget, budget
from budgetkit.exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from budgetkit.ledgers.redis import RedisLedger

__all__ = ["ledger", "redis_server"]  # fixtures, re-exported for pytest


@budget.step(max_calls=3)
def search(query: str) -> str:
    return f"results for {query}"


@budget.step
def read(page: int) -> int:
    return page


@budget.step(name="web_search", cost_usd=Decimal("0.01"))
def paid_search(query: str) -> str:
    return query


@budget.step(cost_usd=Decimal("0.01"))
def paid_and_broken() -> None:
    raise ValueError("the API failed after billing")


@budget.step(max_calls=2)
async def async_search(query: str) -> str:
    return query


@budget.step(max_calls=2)
def paged(n: int) -> Any:
    yield from range(n)


def refused(body: Callable[[], object]) -> BudgetExhausted:
    """The ``BudgetExhausted`` that ``body`` raises (it must raise one)."""
    try:
        body()
    except BudgetExhausted as exc:
        return exc
    raise AssertionError("no BudgetExhausted was raised")


@pytest.fixture(params=["in-process", "redis"])
def where(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``ledger=`` for the session: ``None`` (in process) or a real Redis ledger."""
    monkeypatch.delenv("BUDGETKIT_LEDGER_URL", raising=False)
    if request.param == "in-process":
        return None
    return request.getfixturevalue("ledger")


def test_a_tool_runs_max_calls_times_then_the_session_stops_naming_it(
    where: Any, tmp_path: Path
) -> None:
    """Three calls of ``search`` run (other steps do not count towards its cap); the fourth
    stops the session with reason ``max_tool_calls``, the message and the handoff name the
    tool, and the handoff loads."""
    ran = []
    session = SessionBudget(max_steps=100, handoff_dir=tmp_path, ledger=where)

    def agent() -> None:
        with session:
            for i in range(10):
                read(i)
                ran.append(search(f"q{i}"))

    exc = refused(agent)
    assert ran == ["results for q0", "results for q1", "results for q2"]
    assert exc.reason == "max_tool_calls"
    assert "tool 'search' called 3 times" in str(exc)
    assert exc.handoff.extra["tool"] == {"name": "search", "calls": 3}
    assert exc.usage.steps == 7  # 4 reads and 3 searches were admitted
    assert exc.handoff_path is not None
    loaded = Handoff.load(exc.handoff_path)
    assert loaded.reason == "max_tool_calls"
    assert loaded.extra["tool"]["name"] == "search"
    assert session.result is not None
    assert session.result.stop_reason == "max_tool_calls"


def test_the_cap_is_per_session(where: Any) -> None:
    """A new session (a resumed one too) starts the tool's count at zero."""
    for _ in range(2):
        with SessionBudget(handoff_dir=None, ledger=where):
            assert [search("x") for _ in range(3)] == ["results for x"] * 3


def test_async_and_generator_tools_are_capped(where: Any) -> None:
    """The cap holds for ``async def`` tools (checked when the coroutine starts) and
    generators (one call per generator, charged on first iteration)."""
    import asyncio

    async def run() -> list[str]:
        out = []
        for i in range(3):
            out.append(await async_search(str(i)))
        return out

    with SessionBudget(handoff_dir=None, raise_on_exhausted=False, ledger=where):
        assert refused(lambda: asyncio.run(run())).reason == "max_tool_calls"
    with SessionBudget(handoff_dir=None, raise_on_exhausted=False, ledger=where):
        assert list(paged(2)) == [0, 1]
        assert list(paged(3)) == [0, 1, 2]
        assert refused(lambda: list(paged(1))).reason == "max_tool_calls"


def test_a_paid_tool_is_charged_toward_max_usd(where: Any) -> None:
    """Each call of a $0.01 tool adds $0.01 to ``cost_usd``; under ``max_usd=0.025`` the
    third call does not fit (spent + price > limit) and is refused before it runs, reason
    ``max_usd``; the calls are measured (not counted as unmeasured)."""
    ran = []

    def agent() -> None:
        for i in range(5):
            ran.append(paid_search(str(i)))

    with SessionBudget(
        max_usd=Decimal("0.025"), handoff_dir=None, raise_on_exhausted=False, ledger=where
    ) as session:
        assert refused(agent).reason == "max_usd"
    assert ran == ["0", "1"]
    result = session.result
    assert result is not None
    assert result.usage.cost_usd == Decimal("0.02")
    assert result.usage.unmeasured_calls == 0
    assert result.usage.unpriced_calls == 0


def test_a_paid_tool_that_raises_is_still_charged(where: Any) -> None:
    """The API may have billed a call that then failed: its price is charged either way."""
    with SessionBudget(handoff_dir=None, ledger=where) as session:
        for _ in range(3):
            with pytest.raises(ValueError, match="after billing"):
                paid_and_broken()
        assert session.usage.cost_usd == Decimal("0.03")


def test_paid_tool_prices_add_to_llm_costs_without_a_usd_limit(where: Any) -> None:
    with SessionBudget(handoff_dir=None, ledger=where) as session:
        paid_search("a")
        session.charge(usd=Decimal("0.5"))
        assert session.usage.cost_usd == Decimal("0.51")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_calls": 0}, BudgetConfigError),
        ({"max_calls": -1}, BudgetConfigError),
        ({"max_calls": 1.5}, BudgetTypeError),
        ({"max_calls": True}, BudgetTypeError),
        ({"cost_usd": Decimal("-0.01")}, BudgetConfigError),
        ({"cost_usd": float("nan")}, (BudgetConfigError, BudgetTypeError)),
        ({"cost_usd": "free"}, (BudgetConfigError, BudgetTypeError)),
    ],
)
def test_bad_tool_options_are_refused_at_decoration(kwargs: dict[str, Any], error: Any) -> None:
    with pytest.raises(error):
        budget.step(**kwargs)


# ------------------------------------------------------------------ across processes
def test_the_cap_holds_across_worker_processes(redis_server: Any, ledger: RedisLedger) -> None:
    """Four processes joined to one Redis session call a tool capped at 5, ten times each:
    exactly 5 calls run in all, because the count lives in the ledger."""
    session_id = f"tool-{uuid.uuid4().hex}"
    ctx = multiprocessing.get_context("spawn")
    creator = SessionBudget(
        session_id=session_id, handoff_dir=None, ledger=ledger, raise_on_exhausted=False
    )
    with creator, ctx.Manager() as manager:
        go = manager.Event()
        with ctx.Pool(4) as pool:
            pending = [
                pool.apply_async(tool_racer, (redis_server.url, ledger.key_prefix, session_id, go))
                for _ in range(4)
            ]
            go.set()
            ran = [p.get(timeout=120) for p in pending]
        snap = creator.usage
    assert sum(ran) == 5
    assert snap.steps == 5
