"""The embedded ledger: a session served by one process over a Unix socket, shared by others.

It applies the in-process ledger's own operations, so the differential test holds every
answer and snapshot equal to an ``InProcessLedger``'s; the rest is transport: processes,
forks, dead holders, resent operations, errors, and the socket's privacy.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import stat
import threading
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from redis_fixtures import counts, redis_server, units

from budgetkit import BudgetConfigError, BudgetExhausted, SessionBudget, Usage, budget
from budgetkit._limits import Limits
from budgetkit.exceptions import LedgerUnavailableError, SessionNotFoundError
from budgetkit.ledgers import LEDGER_URL_ENV, ledger_for_url
from budgetkit.ledgers.embedded import EmbeddedLedger, EmbeddedLedgerServer
from budgetkit.ledgers.inprocess import LOCK, InProcessLedger
from budgetkit.ledgers.redis import RedisLedger

if TYPE_CHECKING:
    from collections.abc import Iterator

    from redis_fixtures import RedisServer

    from budgetkit.ledgers import LedgerSnapshot

__all__ = ["redis_server"]  # a fixture, re-exported for pytest


@pytest.fixture
def server() -> Iterator[EmbeddedLedgerServer]:
    with EmbeddedLedgerServer() as running:
        yield running


@pytest.fixture
def ledger(server: EmbeddedLedgerServer) -> Iterator[EmbeddedLedger]:
    client = EmbeddedLedger(server.url)
    yield client
    client.close()


def new_id() -> str:
    return f"s-{uuid.uuid4().hex}"


def same(snap: LedgerSnapshot) -> tuple[Any, ...]:
    """A snapshot without what differs by design (the clock, the claimant's name)."""
    return tuple(
        getattr(snap, name)
        for name in type(snap).__dataclass_fields__
        if name not in ("elapsed_seconds", "handoff_writer")
    )


# ------------------------------------------------------------------ the same rules
def test_every_answer_and_snapshot_equals_the_in_process_ledgers(
    ledger: EmbeddedLedger,
) -> None:
    rng = random.Random(16)
    for _ in range(12):
        limit = Limits.build(
            max_steps=rng.choice([None, 5, 20]),
            max_llm_calls=rng.choice([None, 4, 15]),
            max_tokens=rng.choice([None, 3000]),
            max_usd=rng.choice([None, Decimal("0.01"), Decimal("0.05")]),
            max_consecutive_errors=rng.choice([None, 3]),
        )
        keep = rng.choice([None, 0.2])
        session_id = new_id()
        local = InProcessLedger().create(session_id, limit, reserve_for_wrapup=keep)
        shared = ledger.create(session_id, limit, reserve_for_wrapup=keep)
        held = 0
        for _ in range(120):
            op = rng.choice(["step", "llm", "reserve", "record", "release", "fail", "succeed"])
            if op in ("step", "llm", "reserve"):
                reserve = rng.choice([None, units("0.002")]) if op != "reserve" else units("0.004")
                kind = None if op == "reserve" else op
                wrapup = rng.random() < 0.1
                got = shared.admit(kind, reserve, name=op, wrapup=wrapup)
                assert got == local.admit(kind, reserve, name=op, wrapup=wrapup)
                if got is None and reserve:
                    held += reserve
            elif op == "record":
                usage = None if rng.random() < 0.1 else Usage(rng.randrange(500), rng.randrange(99))
                cost = None if rng.random() < 0.1 else units(Decimal(rng.randrange(3000)) / 10**6)
                back = min(held, units("0.002"))
                held -= back
                c = None if usage is None else counts(usage)
                assert shared.record(c, cost, release=back) == local.record(c, cost, release=back)
            elif op == "release":
                back = min(held, units("0.004"))
                held -= back
                shared.release(back)
                local.release(back)
            elif op == "fail":
                assert shared.fail() == local.fail()
            else:
                shared.succeed()
                local.succeed()
            assert same(shared.snapshot()) == same(local.snapshot())
        assert shared.latch("max_steps") == local.latch("max_steps")
        assert same(shared.snapshot()) == same(local.snapshot())


def test_join_sees_the_limits_and_settings_the_creator_stored(ledger: EmbeddedLedger) -> None:
    session_id = new_id()
    limit = Limits.build(max_steps=3, max_usd=Decimal("0.25"), max_seconds=60)
    ledger.create(
        session_id,
        limit,
        name="agent",
        reserve_for_wrapup=0.1,
        parent_session_id="before",
        extra={"lineage": {"attempt": 2}},
    )
    joined = EmbeddedLedger(ledger.url).join(session_id)
    assert joined.limits == limit
    assert (joined.name, joined.reserve_for_wrapup, joined.parent_session_id) == (
        "agent",
        0.1,
        "before",
    )
    assert joined.extra == {"lineage": {"attempt": 2}}


# ------------------------------------------------------------------ errors
def test_errors_name_the_ledger(ledger: EmbeddedLedger, tmp_path: Any) -> None:
    session_id = new_id()
    ledger.create(session_id, Limits.build(max_steps=1))
    with pytest.raises(BudgetConfigError, match="already exists"):
        ledger.create(session_id, Limits.build(max_steps=1))
    with pytest.raises(SessionNotFoundError, match="never created there"):
        ledger.join(new_id())
    nowhere = EmbeddedLedger(f"budgetkit+unix://{tmp_path}/none.sock")
    with pytest.raises(LedgerUnavailableError) as info:
        nowhere.join(session_id)
    assert info.value.url == nowhere.url
    assert "none.sock" in str(info.value)
    for bad in ("budgetkit+unix://relative/path", "redis://x", "budgetkit+unix://host/x"):
        with pytest.raises(BudgetConfigError, match="not an embedded ledger URL"):
            EmbeddedLedger(bad)


def test_a_stopped_server_fails_closed(server: EmbeddedLedgerServer) -> None:
    handle = EmbeddedLedger(server.url).create(new_id(), Limits.build(max_steps=5))
    assert handle.admit("step") is None
    server.close()
    with pytest.raises(LedgerUnavailableError, match="unavailable"):
        handle.admit("step")


def test_the_socket_is_private_and_removed_on_close() -> None:
    with EmbeddedLedgerServer() as running:
        directory = running.directory
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(running.path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(running.path.stat().st_mode)
    assert not directory.exists()


def test_the_scheme_picks_the_ledger(
    server: EmbeddedLedgerServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    assert isinstance(ledger_for_url(server.url), EmbeddedLedger)
    assert isinstance(ledger_for_url("redis://127.0.0.1:1/0"), RedisLedger)
    assert isinstance(ledger_for_url("unix:///tmp/redis.sock"), RedisLedger)  # Redis, not ours
    # $BUDGETKIT_LEDGER_URL may name an embedded ledger: sessions then live there.
    monkeypatch.setenv(LEDGER_URL_ENV, server.url)
    with SessionBudget(max_steps=2, handoff_dir=tmp_path) as session:
        pass
    joined = EmbeddedLedger(server.url).join(session.session_id)
    assert joined.limits.max_steps == 2


# ------------------------------------------------------------------ idempotency
def test_a_resent_operation_is_applied_once(ledger: EmbeddedLedger) -> None:
    handle = ledger.create(new_id(), Limits.build(max_llm_calls=3))
    op = handle.new_op_id()
    assert handle.admit("llm", units("0.01"), op_id=op) is None
    assert handle.admit("llm", units("0.01"), op_id=op) is None  # answered, not counted
    record = handle.new_op_id()
    for _ in range(2):
        handle.record(counts(Usage(10, 5)), units("0.001"), release=units("0.01"), op_id=record)
    snap = handle.snapshot()
    assert (snap.llm_calls, snap.input_tokens, snap.cost_usd, snap.reserved_usd) == (
        1,
        10,
        Decimal("0.001"),
        0,
    )


def test_a_holder_gives_back_only_what_it_holds(ledger: EmbeddedLedger) -> None:
    session_id = new_id()
    first = ledger.create(session_id, Limits.build(max_usd=1))
    assert first.admit("llm", units("0.3")) is None
    other = EmbeddedLedger(ledger.url).join(session_id)  # another connection: another holder
    other.release(units("0.3"))
    assert other.record(None, 0, release=units("0.3")) is None
    assert first.snapshot().reserved_usd == Decimal("0.3")
    first.release(units("0.5"))
    assert first.snapshot().reserved_usd == 0


# ------------------------------------------------------------------ processes
def _reserve_and_hang(url: str, session_id: str, ready: Any) -> None:
    handle = EmbeddedLedger(url).join(session_id)
    assert handle.admit("llm", units("0.25"), name="slow call") is None
    ready.set()
    time.sleep(600)


def test_a_killed_holders_reservation_is_charged_not_released(ledger: EmbeddedLedger) -> None:
    session_id = new_id()
    handle = ledger.create(session_id, Limits.build(max_usd=1))
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    worker = ctx.Process(target=_reserve_and_hang, args=(ledger.url, session_id, ready))
    worker.start()
    try:
        assert ready.wait(60)
        assert handle.snapshot().reserved_usd == Decimal("0.25")
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        worker.join(30)
    deadline = time.monotonic() + 10
    while handle.snapshot().reserved_usd and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = handle.snapshot()
    # The call may have spent the money before its worker died: it is spend, never refunded.
    assert (snap.reserved_usd, snap.cost_usd, snap.unmeasured_calls) == (0, Decimal("0.25"), 1)


def _race(url: str, session_id: str, go: Any) -> int:
    handle = EmbeddedLedger(url).join(session_id)
    go.wait()
    admitted = 0
    while handle.admit("step", name="tool") is None:
        admitted += 1
    return admitted


def test_eight_processes_race_and_exactly_the_limit_is_admitted(ledger: EmbeddedLedger) -> None:
    session_id = new_id()
    handle = ledger.create(session_id, Limits.build(max_steps=200))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        go = manager.Event()
        with ctx.Pool(8) as pool:
            results = pool.starmap_async(_race, [(ledger.url, session_id, go)] * 8)
            go.set()
            admitted = results.get(120)
    assert sum(admitted) == 200
    snap = handle.snapshot()
    assert (snap.steps, snap.reason) == (200, "max_steps")


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_a_forked_child_is_a_holder_of_its_own(
    kind: str, server: EmbeddedLedgerServer, request: pytest.FixtureRequest
) -> None:
    # Before (Redis): the child's copy of the handle reused the parent's operation ids, so
    # the server answered its admissions from the parent's and counted none of them.
    if kind == "embedded":
        led: Any = EmbeddedLedger(server.url)
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        led = RedisLedger(redis.url, key_prefix=f"fork-{uuid.uuid4().hex[:8]}:")
    handle = led.create(new_id(), Limits.build(max_steps=100))
    assert handle.admit("step") is None  # the parent's connection is open when it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: three steps, then say whether it won the handoff
        try:
            for _ in range(3):
                assert handle.admit("step") is None
            won = handle.claim_handoff_writer()
            os.write(write, b"won" if won else b"lost")
        finally:
            os._exit(0)
    try:
        os.close(write)
        answer = _read_all(read, timeout=30)
    finally:
        _reap(pid)
    assert handle.admit("step") is None  # the parent's connection still works
    assert handle.snapshot().steps == 5
    assert answer == b"won"
    assert handle.claim_handoff_writer() is False  # exactly one handle writes the handoff


def _read_all(fd: int, timeout: float) -> bytes:
    import selectors

    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                chunk = os.read(fd, 100)
                if not chunk:
                    break
                data += chunk
    os.close(fd)
    return data


def _reap(pid: int, timeout: float = 30) -> int:
    """The child's exit status; killed if it does not exit in time (a deadlock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} did not exit within {timeout}s")


def test_fork_while_another_thread_holds_the_ledger_lock() -> None:
    # Before: the child got a copy of the lock held by a thread it does not have, and hung
    # at its first boundary.
    holding = threading.Event()

    def hold() -> None:
        with LOCK:
            holding.set()
            time.sleep(0.3)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    pid = os.fork()  # waits for the lock, so the child's copy is free
    if pid == 0:
        try:
            with LOCK:
                pass
        finally:
            os._exit(0)
    thread.join()
    assert _reap(pid, timeout=10) == 0


@budget.step
def _tool() -> None:
    pass


def test_session_budgets_share_one_embedded_session(ledger: EmbeddedLedger, tmp_path: Any) -> None:
    creator = SessionBudget(max_steps=5, ledger=ledger, handoff_dir=tmp_path)
    with creator:
        _tool()
        joined = SessionBudget.join(
            creator.session_id,
            ledger=EmbeddedLedger(ledger.url),
            handoff_dir=tmp_path,
            trust_id=True,
        )
        out: dict[str, Any] = {}

        def worker() -> None:  # a fresh context, like another process
            with joined:
                try:
                    while True:
                        _tool()
                except BudgetExhausted as exc:
                    out["exc"] = exc

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(30)
        assert creator.usage.steps == 5
        with pytest.raises(BudgetExhausted):
            _tool()
    assert out["exc"].reason == "max_steps"
    assert creator.result is not None
    assert creator.result.usage.steps == 5
