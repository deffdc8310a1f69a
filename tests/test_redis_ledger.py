"""The Redis ledger alone, against a real redis-server: atomic, exact, idempotent, fault-safe."""

from __future__ import annotations

import multiprocessing
import random
import signal
import socket
import threading
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis_fixtures import (
    RedisServer,
    counts,
    hold_reservation,
    ledger,
    ledger_racer,
    redis_server,
    units,
)

from budgetkit import BudgetConfigError, Usage
from budgetkit._limits import Limits
from budgetkit.exceptions import LedgerError, LedgerUnavailableError, SessionNotFoundError
from budgetkit.ledgers.redis import (
    LIBRARY_NAME,
    LUA_BIGNUM,
    RedisLedger,
    from_units,
    redact,
    to_units,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from budgetkit.ledgers import LedgerSnapshot

__all__ = ["ledger", "redis_server"]  # fixtures, re-exported for pytest


def new_id() -> str:
    return f"s-{uuid.uuid4().hex}"


def limits(**values: Any) -> Limits:
    return Limits.build(**values)


# ------------------------------------------------------------------ exact money
def test_lua_digit_arithmetic_matches_python_ints(redis_server: RedisServer) -> None:
    """The scripts' add, subtract-clamped-at-zero and compare agree with Python's ints."""
    rng = random.Random(8)
    pairs = [(0, 0), (1, 0), (10**14 - 1, 1), (10**28 - 1, 1), (10**14, 1), (5, 5), (3, 7)]
    # Around the one- and two-chunk paths (14 and 28 digits): carries, borrows, equal highs.
    for edge in (10**14, 10**15, 10**28, 10**29):
        for x in (edge - 1, edge, edge + 1):
            pairs += [(x, 1), (x, x), (x, edge - 1), (x, 10**14 - 1), (10**28 - 1, x)]
            pairs += [(x, x - 1), (x - 1, x), (x + 10**14, x), (x, 10**14 + 1)]
    pairs += [(10**20, 99), (99, 10**20), (10**15, 0), (0, 10**15)]
    for _ in range(300):
        a, b = rng.randrange(10 ** rng.randint(1, 40)), rng.randrange(10 ** rng.randint(1, 40))
        pairs.append((a, b))
    script = (
        LUA_BIGNUM
        + """
local out = {}
for i = 1, #ARGV, 2 do
  local a, b = ARGV[i], ARGV[i + 1]
  table.insert(out, add(a, b))
  table.insert(out, sub0(a, b))
  table.insert(out, tostring(cmp(a, b)))
end
return out
"""
    )
    args = [str(x) for pair in pairs for x in pair]
    got = redis_server.admin().eval(script, 0, *args)
    for i, (a, b) in enumerate(pairs):
        assert got[3 * i : 3 * i + 3] == [
            str(a + b),
            str(max(a - b, 0)),
            str((a > b) - (a < b)),
        ], (a, b)


def test_usd_units_are_exact_and_round_up_past_18_places() -> None:
    """Decimals go to 10^-18 USD integers and back unchanged; finer amounts round up."""
    for text in ("0", "1", "0.00036", "12345678901234567890.123456789012345678", "5E+3"):
        assert from_units(to_units(Decimal(text))) == Decimal(text)
    assert to_units(Decimal("0.0000000000000000001")) == "1"
    assert to_units(Decimal("1.0000000000000000001")) == "1000000000000000001"
    assert str(from_units("360000000000000")) == "0.00036"
    with pytest.raises(BudgetConfigError):
        to_units(Decimal(-1))


def test_url_password_is_redacted() -> None:
    """Error messages name the URL without its password."""
    assert redact("redis://:hunter2@db:6379/1") == "redis://:***@db:6379/1"
    assert redact("redis://me:hunter2@db/0") == "redis://me:***@db/0"
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


# ------------------------------------------------------------------ sessions
def test_join_sees_the_limits_the_creator_stored(ledger: RedisLedger) -> None:
    """A joined handle carries the creator's limits, name and wrap-up reserve."""
    sid = new_id()
    lim = limits(max_steps=5, max_usd=Decimal("0.30"), max_seconds=60.0)
    ledger.create(sid, lim, name="crawler", reserve_for_wrapup=0.1, parent_session_id="p1")
    joined = ledger.join(sid)
    assert joined.limits == lim
    assert (joined.name, joined.reserve_for_wrapup, joined.parent_session_id) == (
        "crawler",
        0.1,
        "p1",
    )


def test_create_of_an_existing_id_and_join_of_an_unknown_one_are_errors(
    ledger: RedisLedger,
) -> None:
    """Ids are not silently reused, and an unknown id is never a fresh unlimited session."""
    sid = new_id()
    ledger.create(sid, limits(max_steps=1))
    with pytest.raises(BudgetConfigError, match="already exists"):
        ledger.create(sid, limits(max_steps=1))
    with pytest.raises(SessionNotFoundError, match="never created there, or it expired"):
        ledger.join(new_id())


def test_count_limit_admits_exactly_n_then_latches_every_kind(ledger: RedisLedger) -> None:
    """max_steps=3 admits 3 steps; the 4th latches the session, and LLM calls are refused too."""
    handle = ledger.create(new_id(), limits(max_steps=3))
    assert [handle.admit("step", name="t") for _ in range(3)] == [None, None, None]
    assert handle.admit("step", name="fourth") == "max_steps"
    assert handle.admit("llm", name="ask") == "max_steps"
    snap = handle.snapshot()
    assert (snap.steps, snap.llm_calls, snap.reason, snap.refused) == (3, 0, "max_steps", "fourth")


def test_measured_limit_trips_on_record_and_latches_at_the_next_admit(
    ledger: RedisLedger,
) -> None:
    """Usage equal to a limit is within budget; the charge that crosses it trips, not refuses."""
    handle = ledger.create(new_id(), limits(max_tokens=100, max_usd=1))
    assert handle.record(counts(Usage(input_tokens=60, output_tokens=40)), units(1)) is None
    assert handle.admit("llm") is None
    assert handle.record(counts(Usage(input_tokens=1)), None) == "max_tokens"
    assert handle.snapshot().reason is None
    assert handle.admit("step", name="next") == "max_tokens"
    snap = handle.snapshot()
    assert (snap.input_tokens, snap.output_tokens, snap.unpriced_calls) == (61, 40, 1)
    assert snap.cost_usd == Decimal(1)


def test_a_record_adds_every_count_whichever_fields_it_reads(ledger: RedisLedger) -> None:
    """A usual record (measured, priced, no cache or reasoning tokens) reads fewer fields;
    records of every mix of zero and non-zero counts, priced, unpriced and unmeasured, each
    twice in a row, still add up exactly (a field left unread would restart from zero)."""
    sid = new_id()
    handle = ledger.create(sid, limits(max_tokens=10**9, max_usd=10**6))
    want = [0] * 5
    cost = unpriced = unmeasured = 0
    for mask in range(32):
        counts = tuple(7 * (i + 1) if mask >> i & 1 else 0 for i in range(5))
        for priced in (True, False, True, False):
            assert handle.record(counts, 10**15 if priced else None) is None
            want = [w + c for w, c in zip(want, counts, strict=True)]
            cost += 10**15 if priced else 0
            unpriced += 0 if priced else 1
        assert handle.record(None, 10**15) is None
        assert handle.record(None, 10**15) is None
        cost += 2 * 10**15
        unmeasured += 2
    snap = handle.snapshot()
    got = [
        snap.input_tokens,
        snap.output_tokens,
        snap.cache_read_tokens,
        snap.cache_write_tokens,
        snap.reasoning_tokens,
    ]
    assert got == want
    assert (snap.cost_usd, snap.unpriced_calls, snap.unmeasured_calls) == (
        from_units(str(cost)),
        unpriced,
        unmeasured,
    )


def test_reservations_are_admitted_against_spent_plus_reserved(ledger: RedisLedger) -> None:
    """A reservation that does not fit latches max_usd; records take only their own holder's."""
    sid = new_id()
    first = ledger.create(sid, limits(max_usd=Decimal("1.00")))
    second = ledger.join(sid)
    assert first.admit("llm", units("0.60")) is None
    # Releasing from another holder's reservation gives nothing back.
    second.release(units("0.60"))
    assert second.snapshot().reserved_usd == Decimal("0.60")
    assert first.record(counts(Usage(input_tokens=1)), units("0.25"), release=units("0.60")) is None
    assert second.snapshot().reserved_usd == 0
    assert second.admit("llm", units("0.75")) is None  # 0.25 + 0.75 == 1.00 fits
    assert first.admit("llm", units("0.000000000000000001"), name="one atto") == "max_usd"
    snap = first.snapshot()
    assert (snap.reason, snap.cost_usd, snap.reserved_usd) == (
        "max_usd",
        Decimal("0.25"),
        Decimal("0.75"),
    )


def test_wrapup_reserve_refuses_without_latching(ledger: RedisLedger) -> None:
    """With 20% kept for wrap-up, ordinary calls stop at 80%, wrap-up calls still run."""
    handle = ledger.create(new_id(), limits(max_steps=10), reserve_for_wrapup=0.2)
    assert [handle.admit("step") for _ in range(8)] == [None] * 8
    assert handle.admit("step") == "wrapup_reserve"
    assert handle.admit("step", wrapup=True) is None
    assert handle.snapshot().reason is None


def test_time_limit_is_judged_by_the_server_clock(ledger: RedisLedger) -> None:
    """max_seconds counts from the session's creation on the server."""
    handle = ledger.create(new_id(), limits(max_seconds=0.2))
    assert handle.admit("step") is None
    time.sleep(0.3)
    assert handle.admit("step") == "max_seconds"
    assert handle.snapshot().elapsed_seconds >= 0.3


def test_consecutive_errors_trip_and_a_success_resets(ledger: RedisLedger) -> None:
    """fail() counts errors in a row across handles; succeed() starts the run again."""
    sid = new_id()
    a = ledger.create(sid, limits(max_consecutive_errors=2))
    b = ledger.join(sid)
    assert a.fail() is None
    b.succeed()
    assert a.fail() is None
    assert b.fail() == "max_consecutive_errors"


def test_latch_and_handoff_claim_are_first_wins(ledger: RedisLedger) -> None:
    """The first latch reason stays; exactly one handle of many wins the handoff claim."""
    sid = new_id()
    handles = [ledger.create(sid, limits(max_steps=1))] + [ledger.join(sid) for _ in range(5)]
    handles[0].trip("cost_unknown")
    handles[1].trip("max_usd")
    assert handles[2].admit("step", name="x") == "cost_unknown"
    assert handles[3].latch("max_steps") == "cost_unknown"
    wins = [h.claim_handoff_writer() for h in handles]
    assert wins == [True, False, False, False, False, False]
    assert handles[0].claim_handoff_writer()  # asking again (a retry) still answers True
    assert handles[4].snapshot().handoff_writer == handles[0].holder


# ------------------------------------------------------------------ idempotency
def test_a_replayed_operation_is_applied_once(ledger: RedisLedger) -> None:
    """The same op id sent twice (a retry) counts once and gets the same answer back."""
    handle = ledger.create(new_id(), limits(max_steps=2))
    op_id = handle.new_op_id()
    assert handle.admit("step", op_id=op_id) is None
    handle._pending.add(int(op_id))  # as if its reply had been lost: still unacknowledged
    assert handle.admit("step", op_id=op_id) is None
    assert handle.snapshot().steps == 1


class DropOneReply:
    """A TCP proxy to Redis that swallows the reply to one operation (``FCALL``, or
    ``EVALSHA`` on a server without Functions) and drops the link.

    The server has applied the command; the client sees a broken connection and retries.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.armed = False
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            state = {"drop": False}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        while data := _recv(client):
            if self.armed and (b"FCALL" in data.upper() or b"EVALSHA" in data.upper()):
                self.armed, state["drop"] = False, True
            upstream.sendall(data)
        upstream.close()

    def _down(self, upstream: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        while data := _recv(upstream):
            if state["drop"]:
                self.dropped += 1
                client.close()
                upstream.close()
                return
            client.sendall(data)
        client.close()

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def dropping_proxy(redis_server: RedisServer) -> Iterator[DropOneReply]:
    """A proxy in front of the shared server that can lose one reply."""
    proxy = DropOneReply(redis_server.port)
    yield proxy
    proxy.close()


def test_a_lost_reply_retried_by_the_client_is_not_charged_twice(
    redis_server: RedisServer, dropping_proxy: DropOneReply
) -> None:
    """redis-py retries a command whose reply was lost; the op id keeps it from counting twice."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    direct = RedisLedger(redis_server.url, key_prefix=prefix)
    via_proxy = RedisLedger(f"redis://127.0.0.1:{dropping_proxy.port}/0", key_prefix=prefix)
    sid = new_id()
    handle = direct.create(sid, limits(max_steps=10, max_usd=1))
    flaky = via_proxy.join(sid)
    assert flaky.admit("step") is None  # scripts are loaded on this connection now
    for op in ("step", "charge"):
        dropping_proxy.armed = True
        if op == "step":
            assert flaky.admit("step") is None
        else:
            flaky.record(counts(Usage(input_tokens=7)), units("0.125"))
        assert not dropping_proxy.armed
    assert dropping_proxy.dropped == 2
    snap = handle.snapshot()
    assert (snap.steps, snap.input_tokens, snap.cost_usd) == (2, 7, Decimal("0.125"))


# ------------------------------------------------------------------ many processes
def test_eight_processes_race_on_one_ledger_session(
    redis_server: RedisServer, ledger: RedisLedger
) -> None:
    """8 spawned workers admit exactly max_steps=1000, spend <= max_usd; one claims the handoff."""
    sid = new_id()
    ledger.create(sid, limits(max_steps=1000, max_usd=Decimal(5)))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        go = manager.Event()
        with ctx.Pool(8) as pool:
            pending = [
                pool.apply_async(ledger_racer, (redis_server.url, ledger.key_prefix, sid, go))
                for _ in range(8)
            ]
            go.set()
            results = [p.get(timeout=120) for p in pending]
    snap = ledger.join(sid).snapshot()
    assert sum(r["steps"] for r in results) == snap.steps == 1000
    assert {r["reason"] for r in results} == {"max_steps"}
    assert sum(r["won"] for r in results) == 1
    assert sum(r["calls"] for r in results) == snap.llm_calls
    assert snap.cost_usd <= Decimal(5)
    assert snap.reserved_usd == 0


def test_eight_processes_racing_on_reservations_never_overspend(
    redis_server: RedisServer, ledger: RedisLedger
) -> None:
    """Reserved calls from 8 threads admit floor(max_usd / estimate) and spend exactly that."""
    sid = new_id()
    ledger.create(sid, limits(max_usd=Decimal("1.00")))
    admitted: list[int] = []

    def worker() -> None:
        handle = ledger.join(sid)
        n = 0
        while handle.admit("llm", units("0.003")) is None:
            n += 1
            handle.record(counts(Usage(input_tokens=1)), units("0.003"), release=units("0.003"))
        admitted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    snap = ledger.join(sid).snapshot()
    assert sum(admitted) == snap.llm_calls == 333
    assert snap.cost_usd == Decimal("0.999") <= Decimal(1)
    assert snap.reason == "max_usd"


# ------------------------------------------------------------------ faults
def test_unreachable_redis_fails_closed_naming_the_url() -> None:
    """No server on the port: a clear LedgerUnavailableError naming the URL (password hidden)."""
    from redis_fixtures import free_port

    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    led = RedisLedger(url, socket_timeout=0.5, retries=1)
    with pytest.raises(LedgerUnavailableError) as info:
        led.join("anything")
    assert f"127.0.0.1:{url.rsplit(':', 1)[1]}" in str(info.value)
    assert "secret" not in str(info.value)
    assert info.value.url == redact(url)


def test_paused_redis_times_out_and_leaves_counters_untouched(
    redis_server: RedisServer, ledger: RedisLedger
) -> None:
    """A server that stops answering raises LedgerUnavailableError; nothing half-applied stays."""
    sid = new_id()
    handle = ledger.create(sid, limits(max_steps=5))
    assert handle.admit("step") is None
    slow = RedisLedger(
        redis_server.url, key_prefix=ledger.key_prefix, socket_timeout=0.2, retries=0
    ).join(sid)
    admin = redis_server.admin()
    admin.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    try:
        with pytest.raises(LedgerUnavailableError, match=redis_server.url):
            slow.admit("step")
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    time.sleep(0.1)
    assert handle.snapshot().steps == 1  # the timed-out call's connection was dropped unrun
    assert slow.admit("step") is None  # and the handle works again
    assert handle.snapshot().steps == 2


def test_redis_killed_mid_run_fails_closed_and_restarts_consistent(tmp_path: Path) -> None:
    """kill -9 under 4 busy threads: each gets the URL-naming error; after a restart from the
    append-only file every counter is whole (no charge half-applied)."""
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    try:
        led = RedisLedger(server.url, socket_timeout=1.0, retries=0)
        sid = new_id()
        led.create(sid, limits(max_usd=Decimal(10_000)))
        acked = {"admits": 0, "records": 0}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker() -> None:
            handle = led.join(sid)
            try:
                while True:
                    assert handle.admit("llm", units("0.01")) is None
                    with lock:
                        acked["admits"] += 1
                    handle.record(
                        counts(Usage(input_tokens=10, output_tokens=5)),
                        units("0.004"),
                        release=units("0.01"),
                    )
                    with lock:
                        acked["records"] += 1
            except LedgerUnavailableError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        server.kill()
        for t in threads:
            t.join(30)
        assert len(errors) == 4
        assert all(server.url in str(e) for e in errors)

        server.start()  # same port, same data directory
        snap: LedgerSnapshot = led.join(sid).snapshot()  # the same client reconnects
        records = snap.input_tokens // 10
        assert acked["admits"] <= snap.llm_calls <= acked["admits"] + 4
        assert acked["records"] <= records <= acked["records"] + 4
        assert snap.output_tokens == 5 * records
        assert snap.cost_usd == Decimal("0.004") * records
        # Every admitted call not yet recorded still holds exactly its reservation.
        state = server.admin().hgetall(led.keys(sid)[0])  # 'r:<holder>': what it reserved
        held = [amount for field, amount in state.items() if field.startswith("r:")]
        assert sum(map(from_units, held)) == snap.reserved_usd
        assert snap.reserved_usd == Decimal("0.01") * (snap.llm_calls - records)
        assert acked["admits"] > 50
    finally:
        server.stop()


def test_a_killed_workers_reservation_expires_as_spend(
    redis_server: RedisServer, ledger: RedisLedger
) -> None:
    """A worker SIGKILLed while holding $0.50 (it may have been billed) stops holding it after
    its reservation_ttl, and the $0.50 is *spent*, never released for another worker."""
    sid = new_id()
    handle = ledger.create(sid, limits(max_usd=Decimal("1.00")))
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    worker = ctx.Process(
        target=hold_reservation, args=(redis_server.url, ledger.key_prefix, sid, ready)
    )
    worker.start()
    try:
        assert ready.wait(60)
        assert handle.snapshot().reserved_usd == Decimal("0.5")
    finally:
        worker.kill()
        worker.join(10)
    deadline = time.monotonic() + 5
    while handle.snapshot().reserved_usd and time.monotonic() < deadline:
        time.sleep(0.1)
    snap = handle.snapshot()
    assert (snap.reserved_usd, snap.cost_usd) == (0, Decimal("0.5"))
    assert handle.admit("llm", units("0.6")) == "max_usd"  # the money is not spent twice


def test_a_reply_resent_long_after_is_applied_once(ledger: RedisLedger) -> None:
    """A charge whose reply was lost, resent after what was the idempotency window (op_ttl),
    still counts once: the answer is kept until the client has it, however long it retries."""
    led = RedisLedger(ledger.client, key_prefix=ledger.key_prefix, op_ttl=0.2)
    handle = led.create(new_id(), limits(max_usd=1))
    op_id = handle.new_op_id()
    assert handle.record(counts(Usage(input_tokens=7)), units("0.01"), op_id=op_id) is None
    time.sleep(0.5)  # past op_ttl
    handle._pending.add(int(op_id))  # as if the reply had been lost: the client resends
    assert handle.record(counts(Usage(input_tokens=7)), units("0.01"), op_id=op_id) is None
    snap = handle.snapshot()
    assert (snap.input_tokens, snap.cost_usd) == (7, Decimal("0.01"))


def test_server_memory_does_not_grow_with_steps(
    redis_server: RedisServer, ledger: RedisLedger
) -> None:
    """No key (and no hash field) per operation: after 2000 admits and charges the session
    holds as many keys and fields as after 20."""
    handle = ledger.create(new_id(), limits(max_usd=1000))
    admin = redis_server.admin()

    def footprint() -> tuple[int, int]:
        keys = admin.keys(f"{ledger.key_prefix}*")
        fields = sum(admin.hlen(k) for k in keys if admin.type(k) == "hash")
        return len(keys), fields

    def run(n: int) -> None:
        for _ in range(n):
            assert handle.admit("llm", units("0.01")) is None
            handle.record(counts(Usage(input_tokens=1)), units("0.001"), release=units("0.01"))

    run(20)
    small = footprint()
    run(2000)
    assert footprint() == small


def test_an_admit_given_up_on_a_paused_redis_is_undone(tmp_path: Path) -> None:
    """SIGSTOP the server; admits time out (the client gives up, the call never runs), yet the
    server applies them once resumed. The worker's next operation undoes them: only the
    admit that was answered counts, and only its reservation is held."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        led = RedisLedger(server.url, socket_timeout=0.3, retries=0)
        handle = led.create(new_id(), limits(max_usd=10))
        assert handle.admit("llm", units("0.01")) is None
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            for _ in range(4):
                with pytest.raises(LedgerUnavailableError):
                    handle.admit("llm", units("0.01"))
        finally:
            server.process.send_signal(signal.SIGCONT)
        time.sleep(0.3)  # the server applies what it had buffered
        assert handle.admit("llm", units("0.01")) is None
        snap = handle.snapshot()
        assert (snap.llm_calls, snap.reserved_usd) == (2, Decimal("0.02"))
    finally:
        server.stop()


def test_huge_token_counts_trip_the_limit_instead_of_failing(ledger: RedisLedger) -> None:
    """10^30 tokens, or 2^62 twice, are added exactly (no 64-bit overflow): the measured
    limit trips, as in process, and the handle keeps working."""
    handle = ledger.create(new_id(), limits(max_tokens=10**6))
    assert handle.record((2**62, 0, 0, 0, 0), 0) == "max_tokens"
    assert handle.record((2**62, 0, 0, 0, 0), 0) == "max_tokens"
    assert handle.snapshot().input_tokens == 2**63
    assert handle.admit("step") == "max_tokens"
    other = ledger.create(new_id(), limits(max_usd=1))
    assert other.record((10**30, 10**30, 0, 0, 0), units(10**20)) == "max_usd"
    snap = other.snapshot()
    assert (snap.input_tokens, snap.cost_usd) == (10**30, Decimal(10**20))


def test_an_absurd_max_usd_is_a_config_error(ledger: RedisLedger) -> None:
    """max_usd=Decimal('1e5000') is refused clearly, before anything reaches Redis."""
    from budgetkit import SessionBudget

    with pytest.raises(BudgetConfigError, match="max_usd"):
        SessionBudget(max_usd=Decimal("1e5000"), ledger=ledger)


def test_expired_session_cannot_be_joined_or_charged(redis_server: RedisServer) -> None:
    """Keys expire ttl after the last operation; then join and every operation fail."""
    led = RedisLedger(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex[:8]}:", ttl=0.5)
    sid = new_id()
    handle = led.create(sid, limits(max_steps=100, max_usd=1))
    assert handle.admit("llm", units("0.1")) is None
    for _ in range(4):  # activity keeps it alive past its ttl
        time.sleep(0.25)
        assert handle.admit("step") is None
    led.join(sid)
    time.sleep(0.8)
    with pytest.raises(SessionNotFoundError, match="expired"):
        led.join(sid)
    with pytest.raises(SessionNotFoundError):
        handle.admit("step")
    with pytest.raises(SessionNotFoundError):
        handle.snapshot()
    assert redis_server.admin().keys(f"{led.key_prefix}*") == []


def test_client_objects_and_bad_arguments(redis_server: RedisServer) -> None:
    """A ready redis.Redis client works (decoded replies too); bad arguments are clear errors."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    led = RedisLedger(client, key_prefix=f"test-{uuid.uuid4().hex[:8]}:")
    assert led.url == redis_server.url
    handle = led.create(new_id(), limits(max_steps=1))
    assert handle.admit("step") is None
    assert handle.snapshot().steps == 1
    with pytest.raises(TypeError):
        RedisLedger(42)
    with pytest.raises(BudgetConfigError):
        RedisLedger(redis_server.url, ttl=0)
    with pytest.raises(BudgetConfigError):
        RedisLedger("http://nope")


# ------------------------------------------------------------------ Redis Functions
def _calls(admin: redis.Redis, command: str) -> int:
    stats = admin.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_the_function_library_is_reloaded_after_function_flush(tmp_path: Path) -> None:
    """Operations are FCALLs of one library; FUNCTION FLUSH (or a restart) drops it, and the
    next operation loads it again and goes on, without an error and without EVALSHA."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        admin = server.admin()
        handle = RedisLedger(server.url).create(new_id(), limits(max_steps=3))
        assert handle.admit("step") is None
        assert LIBRARY_NAME in str(admin.function_list())
        admin.function_flush()
        assert LIBRARY_NAME not in str(admin.function_list())
        assert handle.admit("step") is None
        assert LIBRARY_NAME in str(admin.function_list())
        assert handle.admit("step") is None
        assert handle.admit("step") == "max_steps"
        assert handle.snapshot().steps == 3
        assert handle.ledger.functions
        assert _calls(admin, "fcall") >= 6
        assert _calls(admin, "evalsha") == 0
    finally:
        server.stop()


def test_without_fcall_the_ledger_falls_back_to_evalsha(tmp_path: Path) -> None:
    """A server whose FCALL is renamed away (as a server before 7.0 has none) runs the same
    operations as EVALSHA scripts: limits, idempotent retries and all."""
    server = RedisServer(tmp_path / "redis", config='rename-command FCALL ""\n').start()
    try:
        admin = server.admin()
        with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
            admin.fcall("anything", 0)
        led = RedisLedger(server.url)
        handle = led.create(new_id(), limits(max_steps=2, max_usd=1))
        op_id = handle.new_op_id()
        assert handle.admit("step", op_id=op_id) is None
        handle._pending.add(int(op_id))  # its reply lost: the retry is answered, not applied
        assert handle.admit("step", op_id=op_id) is None
        assert handle.admit("llm", units("0.5")) is None
        assert handle.admit("step") is None
        assert handle.admit("step") == "max_steps"
        snap = led.join(handle.session_id).snapshot()
        assert (snap.steps, snap.llm_calls, snap.reserved_usd) == (2, 1, Decimal("0.5"))
        assert not led.functions
        assert _calls(admin, "evalsha") >= 5
    finally:
        server.stop()


def test_a_user_without_function_permission_gets_a_clear_error(tmp_path: Path) -> None:
    """An ACL user that may FCALL but not FUNCTION LOAD is told what to grant; once the
    library is loaded (by a user who may), it works."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        admin = server.admin()
        admin.acl_setuser(
            "agent",
            enabled=True,
            passwords=["+secret"],
            keys=["*"],
            commands=["+@all", "-function"],
        )
        url = f"redis://agent:secret@127.0.0.1:{server.port}/0"
        limited = RedisLedger(url)
        with pytest.raises(LedgerError, match=r"FUNCTION LOAD \(ACL: \+function\|load\)") as err:
            limited.create(new_id(), limits(max_steps=1))
        assert LIBRARY_NAME in str(err.value)
        assert "secret" not in str(err.value)
        RedisLedger(server.url).create(new_id(), limits(max_steps=1))  # loads the library
        handle = limited.create(new_id(), limits(max_steps=1))
        assert handle.admit("step") is None
        assert handle.admit("step") == "max_steps"
    finally:
        server.stop()
