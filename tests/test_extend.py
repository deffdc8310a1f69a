"""Extend in place: ``SessionBudget(on_exhausted=policy)`` grants more budget when a limit is
reached, and the session goes on; in process and on a real Redis ledger."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from otel_fixtures import Otel, otel
from redis_fixtures import ledger, redis_server

from budgetkit import (
    BudgetExhausted,
    BudgetWarning,
    ExtendRequest,
    Grant,
    Handoff,
    SessionBudget,
    budget,
)
from budgetkit.exceptions import BudgetConfigError, BudgetTypeError, HandoffError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["ledger", "otel", "redis_server"]  # fixtures, re-exported for pytest


@budget.step
def tool(i: int) -> int:
    return i


@budget.step(max_calls=1)
def once() -> None:
    pass


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
    if request.param == "in-process":
        return None
    return request.getfixturevalue("ledger")


def test_a_grant_of_steps_lets_the_session_go_on(where: Any, tmp_path: Path) -> None:
    """``max_steps=3`` and a policy granting 2 steps twice, then declining: 7 steps run in
    one session; the handoff records both grants and the raised limit, and loads."""
    asked: list[ExtendRequest] = []

    def policy(request: ExtendRequest) -> Grant | None:
        asked.append(request)
        return Grant(steps=2) if len(asked) <= 2 else None

    ran = []
    session = SessionBudget(max_steps=3, handoff_dir=tmp_path, on_exhausted=policy, ledger=where)

    def agent() -> None:
        with session:
            for i in range(20):
                ran.append(tool(i))

    exc = refused(agent)
    assert ran == list(range(7))
    assert exc.reason == "max_steps"
    assert [r.reason for r in asked] == ["max_steps"] * 3
    assert [r.usage.steps for r in asked] == [3, 5, 7]
    assert [r.limits["max_steps"] for r in asked] == [3, 5, 7]
    assert [len(r.grants) for r in asked] == [0, 1, 2]
    assert asked[0].session_id == session.session_id
    lineage = exc.handoff.lineage
    assert lineage is not None
    grants = lineage.grants
    assert [g["grant"] for g in grants] == [{"steps": 2}, {"steps": 2}]
    assert {g["reason"] for g in grants} == {"max_steps"}
    assert {g["session_id"] for g in grants} == {session.session_id}
    assert "grants" not in exc.handoff.extra  # in the lineage, not beside it
    assert exc.handoff.limits["max_steps"] == 7
    assert session.limits.max_steps == 7
    assert exc.handoff_path is not None
    loaded = Handoff.load(exc.handoff_path).lineage
    assert loaded is not None
    assert loaded.grants == grants


def test_a_usd_grant_lifts_a_crossed_usd_limit(where: Any) -> None:
    """A charge crosses ``max_usd``; at the next boundary the policy grants $0.05 and the
    call runs; the next crossing is not granted."""
    calls = []

    def policy(request: ExtendRequest) -> Grant | None:
        calls.append(request.usage.cost_usd)
        return Grant(usd=Decimal("0.05")) if len(calls) == 1 else None

    session = SessionBudget(
        max_usd=Decimal("0.01"), handoff_dir=None, on_exhausted=policy, ledger=where
    )

    def agent() -> None:
        with session:
            session.charge(usd=Decimal("0.02"))
            tool(1)  # max_usd is crossed: granted, runs
            session.charge(usd=Decimal("0.05"))
            tool(2)  # crossed again: declined

    exc = refused(agent)
    assert exc.reason == "max_usd"
    assert calls == [Decimal("0.02"), Decimal("0.07")]
    assert session.limits.max_usd == Decimal("0.06")
    assert exc.usage.steps == 1


def test_a_grant_too_small_still_stops(where: Any) -> None:
    """A grant of tokens does not lift a step limit: the policy is asked once for the call,
    and the session stops."""
    asked = []

    def policy(request: ExtendRequest) -> Grant:
        asked.append(request)
        return Grant(tokens=100)

    def agent() -> None:
        with SessionBudget(
            max_steps=1, max_tokens=10, handoff_dir=None, on_exhausted=policy, ledger=where
        ):
            tool(1)
            tool(2)

    assert refused(agent).reason == "max_steps"
    assert len(asked) == 1


def test_a_policy_that_raises_is_no_grant(where: Any) -> None:
    def policy(request: ExtendRequest) -> Grant:
        raise RuntimeError("the approval service is down")

    def agent() -> None:
        with SessionBudget(max_steps=1, handoff_dir=None, on_exhausted=policy, ledger=where):
            tool(1)
            tool(2)

    with pytest.warns(BudgetWarning, match="raised RuntimeError: no grant"):
        exc = refused(agent)
    assert exc.reason == "max_steps"
    assert exc.handoff.lineage is not None
    assert exc.handoff.lineage.grants == ()


def test_a_policy_that_times_out_is_no_grant(where: Any) -> None:
    release = threading.Event()

    def policy(request: ExtendRequest) -> Grant:
        release.wait(10)  # a human who never answers
        return Grant(steps=100)

    def agent() -> None:
        with SessionBudget(
            max_steps=1,
            handoff_dir=None,
            on_exhausted=policy,
            on_exhausted_timeout=0.2,
            ledger=where,
        ):
            tool(1)
            tool(2)

    started = time.monotonic()
    with pytest.warns(BudgetWarning, match="did not answer within 0.2 s"):
        exc = refused(agent)
    release.set()
    assert exc.reason == "max_steps"
    assert time.monotonic() - started < 5


def test_a_policy_that_returns_something_else_is_no_grant(where: Any) -> None:
    def agent() -> None:
        with SessionBudget(
            max_steps=1,
            handoff_dir=None,
            on_exhausted=lambda request: {"steps": 5},
            ledger=where,
        ):
            tool(1)
            tool(2)

    with pytest.warns(BudgetWarning, match="not a budgetkit.Grant"):
        assert refused(agent).reason == "max_steps"


@pytest.mark.parametrize("kind", ["chain", "tool", "loop"])
def test_limits_that_are_not_extended(kind: str, where: Any) -> None:
    """Chain caps, per-tool caps and loop detection are never extended: the policy is not
    asked."""
    asked = []

    def policy(request: ExtendRequest) -> Grant:
        asked.append(request)
        return Grant(steps=100)

    options: dict[str, Any] = {"handoff_dir": None, "on_exhausted": policy, "ledger": where}
    if kind == "chain":
        options["max_total_steps"] = 1
    elif kind == "loop":
        options["max_repeats"] = 1

    def agent() -> None:
        with SessionBudget(**options):
            once()
            once()

    exc = refused(agent)
    expected = {"chain": "max_total_steps", "tool": "max_tool_calls", "loop": "loop_detected"}
    assert exc.reason == expected[kind]
    assert asked == []


def test_the_grant_is_a_span_event(otel: Otel) -> None:
    with SessionBudget(
        max_steps=1, handoff_dir=None, on_exhausted=lambda request: Grant(steps=1)
    ) as session:
        tool(1)
        tool(2)
    span = otel.span("budgetkit.session")
    [event] = [e for e in span.events if e.name == "budgetkit.budget.extended"]
    attrs = dict(event.attributes or {})
    assert attrs["budgetkit.budget.reason"] == "max_steps"
    assert attrs["budgetkit.grant.steps"] == 1
    assert attrs["budgetkit.session.id"] == session.session_id


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"steps": -1}, BudgetConfigError),
        ({"steps": 1.5}, BudgetTypeError),
        ({"usd": Decimal("-1")}, BudgetConfigError),
        ({"seconds": -1}, BudgetTypeError),
    ],
)
def test_bad_grants_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Grant(**kwargs)


def test_on_exhausted_must_be_callable() -> None:
    with pytest.raises(BudgetTypeError, match="on_exhausted"):
        SessionBudget(on_exhausted=42)  # type: ignore[arg-type]


def test_concurrent_refusals_ask_once_per_exhaustion(where: Any) -> None:
    """Eight threads run into ``max_steps=10`` together: the policy is asked once, grants
    10 more, every waiting thread goes on, and exactly 20 steps run in all; then the session
    stops (the policy declines at most once). Before the fix the threads refused while the
    policy was thinking each asked it again and 18 steps ran."""
    import contextvars

    asked = []

    def policy(request: ExtendRequest) -> Grant | None:
        asked.append(request.usage.steps)
        time.sleep(0.2)  # a slow approval: the other threads are refused meanwhile
        return Grant(steps=10) if len(asked) == 1 else None

    session = SessionBudget(
        max_steps=10,
        handoff_dir=None,
        on_exhausted=policy,
        raise_on_exhausted=False,
        ledger=where,
    )
    ran = []
    go = threading.Barrier(8)

    def worker() -> None:
        go.wait(10)
        for i in range(10):
            try:
                ran.append(tool(i))
            except BudgetExhausted:
                return

    with session:
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(worker,))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(ran) == 20
    # Asked once at 10; at 20 it is asked once more, unless the first call refused there was
    # a call admitted again after the grant (asked once per call): never more.
    assert asked in ([10], [10, 20])
    assert session.result is not None
    assert session.result.stop_reason == "max_steps"


# ------------------------------------------------------------------ grants in the lineage
def test_a_resumed_session_carries_the_chains_grants(tmp_path: Path) -> None:
    """Session 1 gets a grant and stops; its resume gets another: the second handoff's
    lineage lists both, each naming the session it was given to."""

    def generous(request: ExtendRequest) -> Grant | None:
        return Grant(steps=1) if not request.grants else None

    first = SessionBudget(max_steps=1, handoff_dir=tmp_path, on_exhausted=generous)

    def run(session: SessionBudget) -> BudgetExhausted:
        def agent() -> None:
            with session:
                for i in range(5):
                    tool(i)

        return refused(agent)

    one = run(first)
    assert one.handoff_path is not None
    second = SessionBudget.resume(one.handoff_path, on_exhausted=generous)
    two = run(second)
    lineage = two.handoff.lineage
    assert lineage is not None
    assert [g["session_id"] for g in lineage.grants] == [first.session_id, second.session_id]
    assert [g["grant"] for g in lineage.grants] == [{"steps": 1}, {"steps": 1}]
    assert len(second.grants) == 1  # the session's own


def test_a_handoff_with_legacy_extra_grants_still_loads(tmp_path: Path) -> None:
    """Handoffs written before the grants moved into the lineage (``extra["grants"]``) load;
    their grants read as that session's."""

    def once_more(request: ExtendRequest) -> Grant | None:
        return None if request.grants else Grant(steps=1)

    session = SessionBudget(max_steps=1, handoff_dir=tmp_path, on_exhausted=once_more)

    def agent() -> None:
        with session:
            for i in range(5):
                tool(i)

    exc = refused(agent)
    assert exc.handoff_path is not None
    doc = json.loads(exc.handoff_path.read_text())
    records = doc["extra"]["lineage"].pop("grants")
    doc["extra"]["grants"] = [{k: v for k, v in g.items() if k != "session_id"} for g in records]
    exc.handoff_path.write_text(json.dumps(doc))
    lineage = Handoff.load(exc.handoff_path).lineage
    assert lineage is not None
    assert lineage.grants == tuple(records)
    resumed = SessionBudget.resume(exc.handoff_path)
    assert resumed.place.grants == records


@pytest.mark.parametrize(
    ("record", "fault"),
    [
        ("not an object", "must be an object"),
        ({"session_id": "elsewhere", "reason": "max_steps", "grant": {}, "at": ""}, "session_id"),
        ({"session_id": "s1", "reason": "max_tool_calls", "grant": {}, "at": ""}, "reason"),
        ({"session_id": "s1", "reason": "max_steps", "grant": {"steps": -1}, "at": ""}, "grant"),
        ({"session_id": "s1", "reason": "max_steps", "grant": {"bogus": 1}, "at": ""}, "grant"),
        ({"session_id": "s1", "reason": "max_steps", "grant": {}, "at": 5}, "at must be"),
    ],
)
def test_a_bad_grant_record_is_refused_by_the_loader(record: object, fault: str) -> None:
    from budgetkit._lineage import Lineage

    doc = {
        "root_session_id": "s1",
        "attempt": 1,
        "session_ids": ["s1"],
        "caps": {},
        "cumulative_usage": {},
        "grants": [record],
    }
    with pytest.raises(HandoffError, match=fault):
        Lineage.from_dict(doc, session_id="s1", parent_session_id=None, source="test")
