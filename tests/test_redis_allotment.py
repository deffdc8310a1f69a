"""Local allotments of the Redis ledger (``RedisLedger(url, allotment=...)``), against a real
redis-server: leases are pre-admits, so count limits stay exact across processes; leases
shrink near the limit, unused units go back on exit or recall, a dead worker's stay counted;
a trip stops every worker within ``2 * allotment_poll``; a paused server admits nothing
beyond a fresh lease."""

from __future__ import annotations

import multiprocessing
import signal
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from redis_fixtures import RedisServer, ledger, redis_server, units

from budgetkit import BudgetConfigError, SessionBudget, budget
from budgetkit._limits import Limits
from budgetkit.exceptions import BudgetExhausted, LedgerError, SessionNotFoundError
from budgetkit.ledgers._allotment import lease_holders
from budgetkit.ledgers.redis import RedisLedger

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["ledger", "redis_server"]  # fixtures, re-exported for pytest

FORK = multiprocessing.get_context("fork")


def new_id() -> str:
    return f"a-{uuid.uuid4().hex}"


def allotted(led: RedisLedger, size: int | str = "auto", poll: float = 0.05) -> RedisLedger:
    """The same server and prefix as ``led``, in allotment mode."""
    return RedisLedger(
        led.client,
        key_prefix=led.key_prefix,
        allotment=size,
        allotment_poll=poll,
        allotment_ttl=max(2.0, 4 * poll),
    )


def server_steps(led: RedisLedger, sid: str) -> int:
    """Steps counted on the server (leased units included), read without a handle."""
    return int(led.client.hget(led.keys(sid)[0], "steps") or 0)


# ------------------------------------------------------------------ one process
@pytest.mark.parametrize("functions", [True, False], ids=["fcall", "evalsha"])
def test_leases_halve_toward_the_limit_and_the_last_steps_are_exact(
    ledger: RedisLedger, functions: bool
) -> None:
    """A lone holder with a large allotment gets room // 2 each time: 50, 25, ... 1, 1, and
    exactly max_steps are admitted; the refusal latches as in exact mode. The same with the
    operations as EVALSHA scripts (a server without Functions)."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_steps=100))
    leased = allotted(ledger, 1000)
    leased.functions = functions
    handle = leased.join(sid)
    assert handle.allot is not None
    grants: list[int] = []
    exchange = handle.allot.exchange

    def spy(kind: str, **kwargs: Any) -> int:
        granted = exchange(kind, **kwargs)
        if granted:
            grants.append(granted)
        return granted

    handle.allot.exchange = spy  # type: ignore[method-assign]
    admitted = 0
    while handle.admit("step") is None:
        admitted += 1
    assert admitted == 100
    assert grants == [50, 25, 12, 6, 3, 2, 1, 1]
    assert handle.admit("llm") == "max_steps"  # latched for every kind
    assert ledger.join(sid).snapshot().steps == 100
    handle.close()


def test_unused_units_go_back_on_exit(ledger: RedisLedger) -> None:
    """A lease is counted on the server when granted; close gives back what was not used."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_steps=1000, max_llm_calls=50))
    handle = allotted(ledger, 100).join(sid)
    for _ in range(10):
        assert handle.admit("step") is None
    for _ in range(3):
        assert handle.admit("llm") is None
    assert server_steps(ledger, sid) == 100  # the lease, pre-admitted
    assert handle.snapshot().steps == 10  # this holder's own view leaves out its unused units
    handle.close()
    snap = ledger.join(sid).snapshot()
    assert (snap.steps, snap.llm_calls) == (10, 3)
    assert lease_holders(ledger, sid) == []  # no entry left behind


def test_only_plain_calls_use_the_lease(ledger: RedisLedger) -> None:
    """Reservations, capped tools and repeat digests go the exact path; measured usage is
    recorded on every call; a session with a wrap-up reserve has no lease at all."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_usd=1, max_steps=1000))
    handle = allotted(ledger, 100).join(sid)
    assert handle.allot is not None
    assert handle.admit("llm", units("0.10")) is None  # a reservation: atomic on the server
    assert handle.allot.left["llm"] == 0
    assert handle.admit("step", tool_cap=2, name="t") is None
    assert handle.allot.left["step"] == 0
    assert handle.admit("step") is None
    assert handle.allot.left["step"] == 99
    assert handle.record((10, 5, 0, 0, 0), units("0.2"), release=units("0.10")) is None
    assert ledger.join(sid).snapshot().cost_usd == Decimal("0.2")
    handle.close()
    keep = new_id()
    ledger.create(keep, Limits.build(max_steps=10), reserve_for_wrapup=0.2)
    assert allotted(ledger).join(keep).allot is None


def test_allotment_options_and_url() -> None:
    """``?allotment=``, ``?allotment_poll=`` and ``?allotment_ttl=`` in the URL; bad values
    are config errors."""
    led = RedisLedger("redis://127.0.0.1:1/0?allotment=auto&allotment_poll=0.2&allotment_ttl=5")
    assert led.allotment == (None, 0.2, 5.0)
    assert RedisLedger("redis://127.0.0.1:1/0?allotment=64").allotment == (64, 0.05, 2.0)
    assert RedisLedger("redis://127.0.0.1:1/0").allotment is None
    for bad in ("lots", 0.5, -3, True):
        with pytest.raises(BudgetConfigError):
            RedisLedger("redis://127.0.0.1:1/0", allotment=bad)  # type: ignore[arg-type]
    with pytest.raises(BudgetConfigError):
        RedisLedger("redis://127.0.0.1:1/0", allotment=8, allotment_poll=0)
    with pytest.raises(BudgetConfigError):
        RedisLedger("redis://127.0.0.1:1/0", allotment=8, allotment_poll=1, allotment_ttl=2)


def test_a_recall_moves_a_holders_unused_units_to_the_one_that_needs_them(
    ledger: RedisLedger,
) -> None:
    """A holds 49 unused steps; B, at the limit, makes the server recall them: A's poller
    gives them back and B gets all the remaining steps (none stranded, none twice)."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_steps=100))
    a = allotted(ledger, 1000).join(sid)
    b = allotted(ledger, 1000).join(sid)
    assert a.admit("step") is None
    assert a.allot is not None
    assert a.allot.left["step"] == 49
    got = 0
    while b.admit("step") is None:
        got += 1
    assert got == 99
    assert a.allot.left["step"] == 0  # given back, not expired: A's entry is still there
    assert a.holder in lease_holders(ledger, sid)
    assert server_steps(ledger, sid) == 100
    a.close()
    b.close()


def test_a_round_trip_that_sees_a_trip_stops_local_admits_at_once(ledger: RedisLedger) -> None:
    """With a fresh lease a worker may admit locally until its read is 2 * poll old; any
    round trip that sees the trip (here a charge) stops it at once."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_usd=1))
    a = ledger.join(sid)
    b = allotted(ledger, 100, poll=30).join(sid)  # no poll within this test
    assert b.admit("step") is None
    assert a.record((1, 1, 0, 0, 0), units("1.5")) == "max_usd"
    assert b.admit("step") is None  # its read is fresh: within the documented bound
    assert b.record((1, 1, 0, 0, 0), units("0.01")) == "max_usd"
    assert b.admit("step") == "max_usd"
    assert b.admit("llm") == "max_usd"
    b.close()


# ------------------------------------------------------------------ processes
def lease_racer(url: str, prefix: str, sid: str, size: int | str, go: Any, out: Any) -> None:
    """Admit steps (and every third an LLM call) from leases until refused; count them."""
    handle = RedisLedger(url, key_prefix=prefix, allotment=size).join(sid)
    go.wait()
    steps = calls = 0
    while handle.admit("step") is None:
        steps += 1
        if steps % 3 == 0 and handle.admit("llm") is None:
            calls += 1
    handle.close()
    out.put((steps, calls))


@pytest.mark.parametrize("size", ["auto", 7])
def test_processes_on_leases_admit_exactly_max_steps(
    redis_server: RedisServer, size: int | str
) -> None:
    """Six processes racing from leases admit exactly max_steps in all (never more: leases
    are pre-admits; never less: unused units come back), and the server agrees."""
    prefix = f"t-{uuid.uuid4().hex[:8]}:"
    led = RedisLedger(redis_server.url, key_prefix=prefix)
    sid = new_id()
    led.create(sid, Limits.build(max_steps=3000, max_llm_calls=1500))
    go, out = FORK.Event(), FORK.Queue()
    workers = [
        FORK.Process(target=lease_racer, args=(redis_server.url, prefix, sid, size, go, out))
        for _ in range(6)
    ]
    for w in workers:
        w.start()
    go.set()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(10)
    steps = sum(r[0] for r in results)
    calls = sum(r[1] for r in results)
    assert steps == 3000
    assert calls == sum(r[0] // 3 for r in results)  # every LLM call admitted
    snap = led.join(sid).snapshot()
    assert (snap.steps, snap.llm_calls, snap.reason) == (3000, calls, "max_steps")


def hold_lease(url: str, sid: str, ready: Any) -> None:
    """Lease 50 steps, use 5, say so, then hang until killed."""
    handle = RedisLedger(url, allotment=50, allotment_ttl=0.5).join(sid)
    for _ in range(5):
        assert handle.admit("step") is None
    ready.set()
    time.sleep(600)


def test_a_killed_workers_leased_units_stay_counted(redis_server: RedisServer) -> None:
    """A SIGKILLed holder cannot say which units it used: all 50 stay counted (fail
    closed), and its entry expires after allotment_ttl so it is not waited on."""
    led = RedisLedger(redis_server.url)
    sid = new_id()
    led.create(sid, Limits.build(max_steps=120))
    ready = FORK.Event()
    proc = FORK.Process(target=hold_lease, args=(redis_server.url, sid, ready))
    proc.start()
    assert ready.wait(20)
    proc.kill()
    proc.join(10)
    assert server_steps(led, sid) == 50
    time.sleep(0.7)
    other = RedisLedger(redis_server.url, allotment=50).join(sid)
    admitted = 0
    while other.admit("step") is None:
        admitted += 1
    assert admitted == 70
    assert lease_holders(led, sid) == [other.holder]  # the dead holder's entry is gone
    assert server_steps(led, sid) == 120
    other.close()


POLL = 0.1


def trip_racer(url: str, sid: str, slot: int, go: Any, stamps: Any) -> None:
    """Admit steps from a huge lease; worker 0 trips max_usd after a while. Each worker
    stamps (CLOCK_MONOTONIC, shared by processes) the start of its last admitted call (the
    decision comes later: preemption never makes a stamp late); worker 0 the end of its
    trip (the server applied it before)."""
    handle = RedisLedger(url, allotment=10**6, allotment_poll=POLL).join(sid)
    assert handle.admit("step") is None
    go.wait()
    started = time.monotonic()
    while True:
        if slot == 0 and time.monotonic() - started > 0.3:
            assert handle.record((1, 1, 0, 0, 0), units("2")) == "max_usd"
            stamps[0] = time.monotonic()
            return
        asked = time.monotonic()
        if handle.admit("step") is not None:
            return
        stamps[slot] = asked
        time.sleep(0.0002)  # paced: the lease outlasts the test by far


def test_a_trip_stops_every_worker_within_two_polls(redis_server: RedisServer) -> None:
    """One worker trips max_usd; each other worker, admitting locally from a lease of a
    million steps (minutes of its work), admits nothing later than 2 * allotment_poll after
    the trip."""
    led = RedisLedger(redis_server.url)
    sid = new_id()
    led.create(sid, Limits.build(max_usd=1))
    go = FORK.Event()
    stamps = FORK.Array("d", 4, lock=False)
    workers = [
        FORK.Process(target=trip_racer, args=(redis_server.url, sid, i, go, stamps))
        for i in range(4)
    ]
    for w in workers:
        w.start()
    time.sleep(0.5)
    go.set()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    tripped = stamps[0]
    assert tripped > 0
    for i in range(1, 4):
        assert stamps[i] > 0, f"worker {i} never admitted"
        late = stamps[i] - tripped
        assert late <= 2 * POLL, f"worker {i} admitted {late:.3f} s after the trip"


def pause_racer(url: str, sid: str, go: Any, stamps: Any) -> None:
    """Admit from leases until the ledger fails; stamp the start of the last admitted call."""
    handle = RedisLedger(
        url, allotment=10**6, allotment_poll=POLL, socket_timeout=0.3, retries=0
    ).join(sid)
    assert handle.admit("step") is None
    go.set()
    try:
        while True:
            asked = time.monotonic()
            if handle.admit("step") is not None:
                return
            stamps[0] = asked
            time.sleep(0.0002)  # paced: the lease outlasts the test by far
    except LedgerError:
        stamps[1] = time.monotonic()


def test_a_paused_redis_admits_nothing_beyond_a_fresh_lease(tmp_path: Path) -> None:
    """redis-server SIGSTOPped: a worker holding a large lease admits locally for at most
    2 * allotment_poll after the server's last answer, then fails closed."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        led = RedisLedger(server.url)
        sid = new_id()
        led.create(sid, Limits.build(max_steps=10**9))
        go = FORK.Event()
        stamps = FORK.Array("d", 2, lock=False)
        proc = FORK.Process(target=pause_racer, args=(server.url, sid, go, stamps))
        proc.start()
        assert go.wait(20)
        time.sleep(0.3)
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        proc.join(20)
        server.process.send_signal(signal.SIGCONT)
        assert proc.exitcode == 0
        assert stamps[1] > paused  # it failed closed (LedgerUnavailableError)
        late = stamps[0] - paused
        assert late <= 2 * POLL, f"admitted {late:.3f} s after the pause"
    finally:
        server.stop()


# ------------------------------------------------------------------ sessions
@budget.step
def leased_tool(i: int) -> int:
    return i


def run_until_exhausted(tool: Callable[[int], int] = leased_tool) -> tuple[int, str | None]:
    """Call ``tool`` until a boundary refuses: how many ran, and the reason."""
    for i in range(10**6):
        try:
            tool(i)
        except BudgetExhausted as exc:
            return i, exc.reason
    return 10**6, None


def test_a_joined_session_admits_from_leases_and_stops_exactly(ledger: RedisLedger) -> None:
    """``SessionBudget.join`` on an allotment ledger: ``@budget.step`` runs exactly
    max_steps times and the session reports it stopped at max_steps."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_steps=500))
    session = SessionBudget.join(
        sid, ledger=allotted(ledger), handoff_dir=None, trust_id=True, raise_on_exhausted=False
    )
    with session:
        ran, reason = run_until_exhausted()
    assert (ran, reason) == (500, "max_steps")
    assert session.result is not None
    assert session.result.stop_reason == "max_steps"
    assert ledger.join(sid).snapshot().steps == 500


def fork_runner(out: Any) -> None:
    """In a forked child, inside the parent's session: run steps until refused."""
    out.put(run_until_exhausted())


def test_a_forked_child_never_admits_from_its_parents_lease(ledger: RedisLedger) -> None:
    """A child forked inside a joined session is a holder of its own: the parent's unused
    units (copied with its memory) are not the child's, so the two admit exactly max_steps
    together (the child gets the parent's unused units by a recall)."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_steps=100))
    session = SessionBudget.join(
        sid, ledger=allotted(ledger, 1000), handoff_dir=None, trust_id=True
    )
    out = FORK.Queue()
    with session:
        leased_tool(0)  # the parent leases 50 and uses one
        child = FORK.Process(target=fork_runner, args=(out,))
        child.start()
        ran, reason = out.get(timeout=30)
        child.join(10)
        assert (ran, reason) == (99, "max_steps")
        with pytest.raises(BudgetExhausted):
            leased_tool(1)
    assert ledger.join(sid).snapshot().steps == 100


def test_a_redis_restarted_empty_ends_local_admits(tmp_path: Path) -> None:
    """redis-server killed and restarted empty (no persistence): a worker's lease is no good
    past its bound; its next admit finds no session (SessionNotFoundError), and so does every
    one after it: nothing is admitted that the new server did not grant."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        led = RedisLedger(server.url, allotment=1000, allotment_poll=POLL, retries=0)
        sid = new_id()
        led.create(sid, Limits.build(max_steps=10**6))
        handle = led.join(sid)
        assert handle.admit("step") is None
        assert handle.allot is not None
        assert handle.allot.left["step"] == 999
        server.kill()
        server.start()  # same port, empty
        time.sleep(2 * POLL + 0.05)
        for _ in range(3):
            with pytest.raises(SessionNotFoundError):
                handle.admit("step")
        assert server.admin().dbsize() == 0
    finally:
        server.stop()


# ------------------------------------------------------------------ the exact path near the limit
EXACT_CALLS = {
    "capped tool": lambda h: h.admit("step", name="capped", tool_cap=10**6),
    "repeat digest": lambda h: h.admit("step", name="rep", digest="d"),
    "estimate": lambda h: h.admit("llm", units("0.001"), name="est"),
}


@pytest.mark.parametrize("call", list(EXACT_CALLS), ids=list(EXACT_CALLS))
@pytest.mark.parametrize("exact", [False, True], ids=["leased", "exact-mode"])
def test_an_exact_path_call_near_the_limit_recalls_other_holders_unused_units(
    ledger: RedisLedger, call: str, exact: bool
) -> None:
    """A holds 49 leased, unused steps (and LLM calls). B's exact-path calls (a capped tool,
    a repeat digest, an estimate), whether B is a lease holder or an exact-mode handle, get
    every unit A has not used: near the limit the refused admit recalls A's units and waits
    for them instead of latching early. Exactly the limit is admitted in all, never more."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_steps=100, max_llm_calls=100, max_repeats=10**6))
    a = allotted(ledger, 1000).join(sid)
    assert a.admit("step") is None
    assert a.admit("llm") is None
    assert a.allot is not None
    assert (a.allot.left["step"], a.allot.left["llm"]) == (49, 49)
    b = (ledger if exact else allotted(ledger, 1000)).join(sid)
    admit = EXACT_CALLS[call]
    admitted = 0
    while (reason := admit(b)) is None:
        admitted += 1
        if admitted == 60:  # past the point where A's unused units counted as used
            assert ledger.join(sid).snapshot().reason is None  # not latched early
    kind, limit = ("llm", "max_llm_calls") if call == "estimate" else ("step", "max_steps")
    assert (admitted, reason) == (99, limit)
    assert a.allot.left[kind] == 0  # given back on the recall
    assert a.admit(kind) == limit  # the session is exhausted for A too, and latched
    snap = ledger.join(sid).snapshot()
    assert (snap.steps if kind == "step" else snap.llm_calls) == 100
    assert snap.reason == limit
    a.close()
    b.close()


@budget.step(max_calls=10**6)
def capped_tool(i: int) -> int:
    return i


def test_a_session_with_a_capped_tool_runs_to_its_limit_beside_a_lease_holder(
    ledger: RedisLedger,
) -> None:
    """A session whose steps are a capped tool (the exact path) runs exactly to max_steps and
    stops with max_steps there, while another worker holds 49 unused leased steps."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_steps=100))
    holder = allotted(ledger, 1000).join(sid)
    assert holder.admit("step") is None  # leases 50, uses 1
    session = SessionBudget.join(
        sid, ledger=allotted(ledger), handoff_dir=None, trust_id=True, raise_on_exhausted=False
    )
    with session:
        ran, reason = run_until_exhausted(capped_tool)
    assert (ran, reason) == (99, "max_steps")
    assert session.result is not None
    assert session.result.stop_reason == "max_steps"
    holder.close()
    assert ledger.join(sid).snapshot().steps == 100


def test_a_holder_that_never_gives_back_delays_the_final_refusal_only_briefly(
    ledger: RedisLedger,
) -> None:
    """A live holder that does not answer the recall (its poll outlasts the test): the
    waiting exact admit asks for ``allotment_ttl + 2 * allotment_poll`` of its own ledger,
    then its refusal is final and latched; the units still out stay counted (never over)."""
    sid = new_id()
    ledger.create(sid, Limits.build(max_steps=100))
    holder = allotted(ledger, 1000, poll=30).join(sid)
    assert holder.admit("step") is None  # leases 50, uses 1; no poll for 30 s
    waiter = RedisLedger(
        ledger.client,
        key_prefix=ledger.key_prefix,
        allotment=1000,
        allotment_poll=0.02,
        allotment_ttl=0.2,
    ).join(sid)
    for _ in range(50):
        assert waiter.admit("step", name="t", tool_cap=10**6) is None
    asked = time.monotonic()
    assert waiter.admit("step", name="t", tool_cap=10**6) == "max_steps"
    waited = time.monotonic() - asked
    assert 0.2 <= waited < 2.0
    snap = ledger.join(sid).snapshot()
    assert (snap.steps, snap.reason) == (100, "max_steps")
    holder.close()
    waiter.close()
