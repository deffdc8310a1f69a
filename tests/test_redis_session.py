"""SessionBudget with a Redis ledger: one budget for many processes, join/inject, faults."""

from __future__ import annotations

import functools
import json
import multiprocessing
import threading
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from redis_fixtures import RedisServer, ledger, redis_server, session_racer

from budgetkit import (
    BudgetConfigError,
    BudgetExhausted,
    LedgerUnavailableError,
    LedgerUnavailableWarning,
    SessionBudget,
    SessionNotFoundError,
    budget,
)
from budgetkit.ledgers import LEDGER_URL_ENV
from budgetkit.ledgers.redis import RedisLedger

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ledger", "redis_server"]  # fixtures, re-exported for pytest

ran: list[str] = []


@budget.step
def tool(name: str = "tool") -> str:
    ran.append(name)
    return name


@budget.llm_call(
    model="gpt-4o-mini", estimate=lambda tokens=1000: {"input_tokens": tokens, "output_tokens": 0}
)
def ask(tokens: int = 1000) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": tokens, "completion_tokens": 0}}


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    ran.clear()


def in_thread(fn: Any) -> Any:
    """Run ``fn`` in a plain thread (a fresh context, like another process); return its result."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if "error" in out:
        raise out["error"]
    return out["value"]


# ------------------------------------------------------------------ many processes
@pytest.mark.parametrize("with_steps", [True, False], ids=["max_steps", "max_usd"])
def test_eight_processes_share_one_session(
    redis_server: RedisServer, tmp_path: Path, with_steps: bool
) -> None:
    """8 spawned workers: exactly max_steps=1000 steps (or floor(max_usd / price) reserved
    calls), spend <= max_usd, and one handoff file among them."""
    handoffs = tmp_path / "handoffs"
    per_call = Decimal("0.0021")  # 10,000 input + 1,000 output tokens of gpt-4o-mini
    max_usd = Decimal("2.5") if with_steps else Decimal("0.5")
    creator = SessionBudget(
        max_steps=1000, max_usd=max_usd, ledger=RedisLedger(redis_server.url), handoff_dir=None
    )
    ctx = multiprocessing.get_context("spawn")
    with creator, ctx.Manager() as manager:
        go = manager.Event()
        work = functools.partial(session_racer, with_steps=with_steps)
        with ctx.Pool(8) as pool:
            pending = [
                pool.apply_async(work, (redis_server.url, creator.inject({}), str(handoffs), go))
                for _ in range(8)
            ]
            go.set()
            results = [p.get(timeout=180) for p in pending]
        used = creator.usage
    reason = "max_steps" if with_steps else "max_usd"
    assert {r["reason"] for r in results} == {reason}
    assert {r["stop"] for r in results} == {reason}
    if with_steps:
        assert sum(r["steps"] for r in results) == used.steps == 1000
    else:
        assert used.llm_calls == int(max_usd // per_call) == 238
    assert sum(r["calls"] for r in results) == used.llm_calls
    assert used.cost_usd == per_call * used.llm_calls <= max_usd
    written = [r["handoff_path"] for r in results if r["handoff_path"]]
    assert len(written) == 1
    assert [p.name for p in handoffs.iterdir()] == [f"{creator.session_id}.json"]
    doc = json.loads(handoffs.joinpath(f"{creator.session_id}.json").read_text())
    assert doc["reason"] == reason
    assert doc["usage"]["steps"] == used.steps
    assert creator.result is not None
    assert creator.result.stop_reason == reason


def test_exhausted_anywhere_stops_everywhere(ledger: RedisLedger, tmp_path: Path) -> None:
    """A worker that crosses max_usd trips the session; another stops at its next boundary
    without writing a second handoff."""
    with SessionBudget(max_usd=Decimal("0.001"), ledger=ledger, handoff_dir=tmp_path) as main:
        tool("main")
        assert not main.exhausted
        headers = main.inject({})

        def spend() -> BudgetExhausted:
            joined = SessionBudget.join(headers, ledger=ledger, handoff_dir=tmp_path)
            with joined:
                joined.charge(usd=Decimal("0.002"))  # crosses the limit: trips, no raise
                with pytest.raises(BudgetExhausted) as info:
                    tool("worker")
            return info.value

        first = in_thread(spend)
        assert main.exhausted  # latched by the other worker
        with pytest.raises(BudgetExhausted) as info:
            tool("main again")
    assert (first.reason, info.value.reason) == ("max_usd", "max_usd")
    assert first.handoff_path == tmp_path / f"{main.session_id}.json"
    assert info.value.handoff_path is None
    assert ran == ["main"]
    assert main.result is not None
    assert main.result.stop_reason == "max_usd"


def test_reservations_across_workers_never_overspend(ledger: RedisLedger) -> None:
    """Reserved calls in two joined sessions fit spent + reserved <= max_usd together."""
    main = SessionBudget(max_usd=Decimal("0.0006"), ledger=ledger, handoff_dir=None)
    with main, main.reserve(usd=Decimal("0.0004")):
        headers = main.inject({})

        def other() -> str:
            joined = SessionBudget.join(headers, ledger=ledger, handoff_dir=None)
            with joined, pytest.raises(BudgetExhausted) as info:
                ask(2000)  # $0.0003 does not fit beside the $0.0004 held
            return info.value.reason

        assert in_thread(other) == "max_usd"
        assert main.exhausted


# ------------------------------------------------------------------ join and inject
def test_inject_merges_baggage_and_join_reads_it(ledger: RedisLedger) -> None:
    """inject() keeps other baggage entries and replaces an old id and token; join() reads
    headers."""
    with SessionBudget(max_steps=7, name="planner", ledger=ledger, handoff_dir=None) as main:
        headers = {
            "Baggage": "user=alice, budgetkit.session.id=old;p=1, budgetkit.join_token=0",
            "x-other": "1",
        }
        assert main.inject(headers) is headers
        before, token = headers["Baggage"].split(",budgetkit.join_token=")
        assert before == f"user=alice,budgetkit.session.id={main.session_id}"
        assert len(token) == 64

        def work() -> tuple[Any, ...]:
            joined = SessionBudget.join(headers, ledger=ledger, handoff_dir=None)
            with joined:
                tool()
            return joined.session_id, joined.limits.max_steps, joined.name

        assert in_thread(work) == (main.session_id, 7, "planner")
        assert main.usage.steps == 1


def test_join_reads_opentelemetry_baggage(ledger: RedisLedger) -> None:
    """join() with no id takes budgetkit.session.id and the join token from the current
    OTel baggage."""
    with SessionBudget(max_steps=2, ledger=ledger, handoff_dir=None) as main:
        join_token = main.inject({})["baggage"].split("budgetkit.join_token=")[1]
        context = baggage.set_baggage("budgetkit.session.id", main.session_id)
        context = baggage.set_baggage("budgetkit.join_token", join_token, context)
        token = otel_context.attach(context)
        try:
            joined = SessionBudget.join(ledger=ledger, handoff_dir=None)
        finally:
            otel_context.detach(token)
        assert joined.session_id == main.session_id
    with pytest.raises(BudgetConfigError, match="baggage"):
        SessionBudget.join(ledger=ledger)


def test_join_errors(ledger: RedisLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown sessions, missing ids, limit keywords and a missing ledger are clear errors."""
    monkeypatch.delenv(LEDGER_URL_ENV, raising=False)
    with pytest.raises(SessionNotFoundError):
        SessionBudget.join("no-such-session", ledger=ledger)
    with pytest.raises(BudgetConfigError, match=r"no 'budgetkit\.session\.id' baggage"):
        SessionBudget.join({"baggage": "user=alice"}, ledger=ledger)
    with SessionBudget(max_steps=1, ledger=ledger, handoff_dir=None) as main:
        with pytest.raises(BudgetConfigError, match="max_steps"):
            SessionBudget.join(main.session_id, ledger=ledger, max_steps=100)
        with pytest.raises(BudgetConfigError, match="needs a ledger"):
            SessionBudget.join(main.session_id)


def test_ledger_from_environment(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$BUDGETKIT_LEDGER_URL makes a session without ledger= shared, and join() use it."""
    monkeypatch.setenv(LEDGER_URL_ENV, redis_server.url)
    with SessionBudget(max_steps=2, handoff_dir=None) as main:
        assert isinstance(main.ledger, RedisLedger)
        joined = SessionBudget.join(main.inject({}), handoff_dir=None)
        in_thread(lambda: joined.__exit__(None, None, None) if joined.__enter__() else None)
        tool()
        assert main.usage.steps == 1


def test_consecutive_errors_count_across_workers(ledger: RedisLedger) -> None:
    """Failures in two workers make one run; the next boundary stops the session."""

    @budget.step
    def flaky() -> None:
        raise ValueError("boom")

    with SessionBudget(max_consecutive_errors=2, ledger=ledger, handoff_dir=None) as main:
        with pytest.raises(ValueError):
            flaky()

        def other() -> None:
            joined = SessionBudget.join(main.inject({}), ledger=ledger, handoff_dir=None)
            with joined, pytest.raises(ValueError):
                flaky()

        in_thread(other)
        with pytest.raises(BudgetExhausted) as info:
            tool()
    assert info.value.reason == "max_consecutive_errors"


def test_a_success_resets_the_run_of_errors_in_the_ledger(ledger: RedisLedger) -> None:
    """A worker's success after another worker's failure starts the run again."""

    @budget.step
    def flaky() -> None:
        raise ValueError("boom")

    with SessionBudget(max_consecutive_errors=2, ledger=ledger, handoff_dir=None) as main:
        with pytest.raises(ValueError):
            flaky()

        def other() -> None:
            with SessionBudget.join(main.inject({}), ledger=ledger, handoff_dir=None):
                tool("succeeds")  # saw the run at its admission: resets it

        in_thread(other)
        with pytest.raises(ValueError):
            flaky()
        tool("still running")
    assert ran == ["succeeds", "still running"]


def test_chain_caps_and_lineage_reach_the_workers(ledger: RedisLedger) -> None:
    """max_total_steps is enforced by the ledger; a joined worker carries the chain's ids."""
    with SessionBudget(max_total_steps=3, ledger=ledger, handoff_dir=None) as main:

        def work() -> tuple[Any, ...]:
            joined = SessionBudget.join(main.inject({}), ledger=ledger, handoff_dir=None)
            with joined:
                tool()
                tool()
            return joined.root_session_id, joined.attempt, joined.chain_caps.max_total_steps

        assert in_thread(work) == (main.session_id, 1, 3)
        tool()
        with pytest.raises(BudgetExhausted) as info:
            tool()
    assert info.value.reason == "max_total_steps"


def test_time_limit_and_wrapup_reserve_are_judged_by_the_ledger(ledger: RedisLedger) -> None:
    """reserve_for_wrapup refuses ordinary steps without latching; wrap-up steps still run."""

    @budget.step(wrapup=True)
    def summarize() -> str:
        return "summary"

    with SessionBudget(
        max_steps=5, reserve_for_wrapup=0.4, ledger=ledger, handoff_dir=None
    ) as main:
        tool()
        tool()
        tool()
        with pytest.raises(BudgetExhausted) as info:
            tool()
        assert info.value.reason == "wrapup_reserve"
        assert not main.exhausted
        assert summarize() == "summary"
        assert main.usage.steps == 4


# ------------------------------------------------------------------ nesting
def run_until_stopped() -> None:
    while True:
        tool()


def test_in_process_session_nested_in_a_ledger_session(ledger: RedisLedger) -> None:
    """An inner in-process limit refuses first; the ledger counts only admitted steps."""
    with SessionBudget(max_steps=5, ledger=ledger, handoff_dir=None) as outer:
        inner = SessionBudget(max_steps=2, handoff_dir=None)
        with pytest.raises(BudgetExhausted) as info, inner:
            run_until_stopped()
        assert (info.value.session_id, info.value.reason) == (inner.session_id, "max_steps")
        assert outer.usage.steps == 2
        tool()
        assert outer.usage.steps == 3


def test_ledger_session_nested_in_an_in_process_session(ledger: RedisLedger) -> None:
    """A ledger refusal takes back the enclosing session's count; two ledgers cannot nest."""
    with SessionBudget(max_steps=10, handoff_dir=None) as outer:
        shared = SessionBudget(max_steps=2, ledger=ledger, handoff_dir=None)
        with pytest.raises(BudgetExhausted) as info, shared:
            run_until_stopped()
        assert info.value.session_id == shared.session_id
        assert outer.usage.steps == shared.usage.steps == 2
        other = SessionBudget(ledger=ledger, handoff_dir=None)
        with other, pytest.raises(BudgetConfigError, match=r"may\s+hold one ledger session"):
            SessionBudget.join(other.session_id, ledger=ledger, trust_id=True).__enter__()


# ------------------------------------------------------------------ faults
def test_redis_down_fails_closed_at_the_boundary(tmp_path: Path) -> None:
    """With Redis gone, the next step raises LedgerUnavailableError naming the URL; the body
    does not run, and entering a new shared session fails the same way."""
    server = RedisServer(tmp_path / "redis").start()
    led = RedisLedger(server.url, socket_timeout=0.5, retries=0)
    try:
        with SessionBudget(max_steps=5, ledger=led, handoff_dir=None) as session:
            tool("before")
            assert session.usage.steps == 1
            server.kill()
            with pytest.raises(LedgerUnavailableError, match=server.url):
                tool("during")
            with pytest.raises(LedgerUnavailableError):
                _ = session.usage
        assert session.result is not None  # exit did not raise: it kept the last usage read
        assert session.result.usage.steps == 1
        with pytest.raises(LedgerUnavailableError, match=server.url):
            SessionBudget(ledger=led, handoff_dir=None).__enter__()
    finally:
        server.stop()
    assert ran == ["before"]


def test_fail_open_runs_and_sends_unsent_charges_once(tmp_path: Path) -> None:
    """on_ledger_error='open': calls run and warn while Redis is down; their charges are
    sent at the first boundary after it is back, each exactly once."""
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    led = RedisLedger(server.url, socket_timeout=0.5, retries=0)
    try:
        with SessionBudget(
            max_usd=1, ledger=led, handoff_dir=None, on_ledger_error="open"
        ) as session:
            ask(1000)
            server.kill()
            with pytest.warns(LedgerUnavailableWarning, match=server.url):
                ask(2000)  # admitted unchecked; its charge waits in the outbox
            with pytest.warns(LedgerUnavailableWarning):
                tool("while down")
            server.start()  # the same data: the session is still there
            tool("back")
            used = session.usage
    finally:
        server.stop()
    assert ran == ["while down", "back"]
    assert used.input_tokens == 3000
    assert used.cost_usd == Decimal("0.00045")  # $0.15 per million input tokens, charged once
    assert used.llm_calls == 1  # the admission made while down was not counted by the ledger


def _killing_call(server: RedisServer) -> Any:
    """An LLM call ($0.02 reserved, $0.015 spent) during which Redis dies."""

    @budget.llm_call(model="gpt-4o-mini", estimate=lambda: Decimal("0.02"))
    def call() -> dict[str, Any]:
        server.kill()
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 100_000, "completion_tokens": 0}}

    return call


def test_an_unsent_charge_is_retried_when_the_session_exits(tmp_path: Path) -> None:
    """A charge that could not be sent (Redis died during the call) is not dropped at exit:
    the exit resends it, so the ledger bills the call once at its cost."""
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    led = RedisLedger(server.url, socket_timeout=0.5, retries=0)
    try:
        with SessionBudget(max_usd=Decimal("0.05"), ledger=led, handoff_dir=None) as session:
            _killing_call(server)()  # returns; its charge waits in the outbox
            server.start()  # same data; no boundary follows before the block exits
        snap = led.join(session.session_id).snapshot()
    finally:
        server.stop()
    assert (snap.llm_calls, snap.cost_usd, snap.reserved_usd) == (1, Decimal("0.015"), 0)


def test_a_session_exiting_with_undelivered_charges_says_so(tmp_path: Path) -> None:
    """Redis still down when the block exits: a warning names the undelivered charge and
    the usage the ledger is missing, instead of dropping it silently."""
    server = RedisServer(tmp_path / "redis").start()
    led = RedisLedger(server.url, socket_timeout=0.5, retries=0)
    try:

        def run() -> None:
            with SessionBudget(max_usd=Decimal("0.05"), ledger=led, handoff_dir=None):
                _killing_call(server)()

        with pytest.warns(LedgerUnavailableWarning, match=r"1 charge.*not delivered.*0\.015"):
            run()
    finally:
        server.stop()


def test_a_huge_usage_trips_max_usd_instead_of_wedging_the_worker(ledger: RedisLedger) -> None:
    """10^30 tokens in one response: the charge lands (exact counters, no overflow), the
    next boundary raises BudgetExhausted('max_usd') as in process, never LedgerError."""

    @budget.llm_call(model="gpt-4o-mini")
    def huge() -> dict[str, Any]:
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10**30, "completion_tokens": 0}}

    with SessionBudget(max_usd=1, ledger=ledger, handoff_dir=None) as session:
        huge()
        with pytest.raises(BudgetExhausted) as info:
            tool("after")
        assert info.value.reason == "max_usd"
        assert session.usage.input_tokens == 10**30
    assert ran == []


def test_open_policy_runs_in_process_when_the_ledger_cannot_create(tmp_path: Path) -> None:
    """on_ledger_error='open' and no server at entry: the session runs in this process."""
    from redis_fixtures import free_port

    led = RedisLedger(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, retries=0)
    with pytest.warns(LedgerUnavailableWarning, match="in this process only"):
        session = SessionBudget(
            max_steps=1, ledger=led, handoff_dir=None, on_ledger_error="open"
        ).__enter__()
    try:
        tool()
        with pytest.raises(BudgetExhausted):
            tool()
    finally:
        session.__exit__(None, None, None)


def test_bad_ledger_arguments() -> None:
    """ledger= must be a ledger; on_ledger_error is 'closed' or 'open'."""
    with pytest.raises(TypeError, match="ledger must be"):
        SessionBudget(ledger="redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(BudgetConfigError, match="on_ledger_error"):
        SessionBudget(on_ledger_error="maybe")  # type: ignore[arg-type]


def test_a_fresh_session_id_is_not_reused(ledger: RedisLedger) -> None:
    """Entering a session whose id is already in the ledger is refused (join it instead)."""
    sid = f"fixed-{uuid.uuid4().hex[:8]}"
    with SessionBudget(session_id=sid, ledger=ledger, handoff_dir=None):
        pass
    with pytest.raises(BudgetConfigError, match="already exists"):
        SessionBudget(session_id=sid, ledger=ledger, handoff_dir=None).__enter__()


def test_a_session_that_expires_mid_run_stops_at_the_next_boundary(
    redis_server: RedisServer,
) -> None:
    """An LLM call that returns after the keys expired still returns; the next boundary
    raises SessionNotFoundError instead of running unlimited."""
    led = RedisLedger(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex[:8]}:", ttl=0.3)

    @budget.llm_call(model="gpt-4o-mini")
    def slow() -> dict[str, Any]:
        time.sleep(0.5)  # longer than the ttl: nobody touches the session meanwhile
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 1}}

    def run() -> None:
        with SessionBudget(max_usd=1, ledger=led, handoff_dir=None):
            assert slow()["model"] == "gpt-4o-mini"
            with pytest.raises(SessionNotFoundError, match="expired"):
                tool("after expiry")

    # The charge of the call could not land: the exit says so (issue 18).
    with pytest.warns(LedgerUnavailableWarning, match="not delivered"):
        run()
    assert ran == []
