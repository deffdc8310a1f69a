"""Chaos on one Redis ledger session: 8 worker processes race on it while the test SIGKILLs
random workers and SIGSTOPs/SIGCONTs and restarts redis-server, in exact mode and in
allotment mode (steps from local leases). After every run, what the workers were granted
stays within the limits: admitted steps <= max_steps, and the cost of the LLM calls that ran
(each with an estimate >= its cost) <= max_usd; and while redis-server is stopped, no worker
admits a step later than its lease's bound (2 * allotment_poll; at once in exact mode).

What the workers were granted is counted on the client side, in shared memory, right after
each grant (so a worker killed later still counts), since a restart may lose the server's
own counts.
"""

from __future__ import annotations

import multiprocessing
import random
import signal
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from redis_fixtures import RedisServer, units

from budgetkit._limits import Limits
from budgetkit.exceptions import LedgerError
from budgetkit.ledgers.redis import RedisLedger

if TYPE_CHECKING:
    from pathlib import Path

RUNS = 10  # per mode
WORKERS = 8
POLL = 0.05  # allotment mode's allotment_poll: local admits stop 2 * POLL after the last read
SLACK = 0.1  # a worker counts its step just after the admit: scheduling may delay that
MAX_USD = Decimal("2.00")
ESTIMATE = units("0.01")


def chaos_worker(
    url: str, session_id: str, seed: int, slot: int, steps: Any, spent: Any, allotment: bool
) -> None:
    """Admit steps, each with an LLM call reserved at $0.01 that costs $0.002..$0.01, until
    refused or the ledger fails; count each grant in shared memory as it is granted."""
    rng = random.Random(seed)
    mode: dict[str, Any] = {}
    if allotment:  # a killed worker's lease entry goes after 0.5 s: the others wait no longer
        mode = {"allotment": "auto", "allotment_poll": POLL, "allotment_ttl": 0.5}
    try:
        handle = RedisLedger(url, socket_timeout=0.2, retries=0, reservation_ttl=0.5, **mode).join(
            session_id
        )
        while True:
            try:
                if handle.admit("step") is not None:
                    return
                steps[slot] += 1  # this worker's own slot: no lock a SIGKILL could strand
                if handle.admit("llm", ESTIMATE) is not None:
                    return
                cost = units("0.002") * rng.randint(1, 5)
                spent[slot] += cost  # the provider bills the call ...
                time.sleep(rng.random() * 0.02)  # ... and the answer takes a while
                handle.record((10, 5, 0, 0, 0), cost, release=ESTIMATE)
            except LedgerError:  # unavailable, unknown, stale: fail closed, try again later
                time.sleep(0.05)
    except LedgerError:
        return


@pytest.mark.parametrize("allotment", [False, True], ids=["exact", "allotment"])
def test_chaos_never_grants_more_than_the_limits(tmp_path: Path, allotment: bool) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(18 + allotment)
    bound = 2 * POLL if allotment else 0.0
    try:
        led = RedisLedger(server.url, socket_timeout=1.0, retries=0)
        for run in range(RUNS):
            sid = f"chaos-{uuid.uuid4().hex}"
            max_steps = 150 if run % 2 else 10_000  # a count limit binds, or USD does
            led.create(sid, Limits.build(max_steps=max_steps, max_usd=MAX_USD))
            steps = ctx.Array("q", WORKERS, lock=False)
            spent = ctx.Array("q", WORKERS, lock=False)  # units of 10^-18 USD (< 2^63 here)
            workers = [
                ctx.Process(
                    target=chaos_worker,
                    args=(server.url, sid, rng.random(), i, steps, spent, allotment),
                )
                for i in range(WORKERS)
            ]
            for w in workers:
                w.start()
            time.sleep(rng.uniform(0.1, 0.3))
            for w in rng.sample(workers, 2):
                w.kill()  # SIGKILL, possibly mid-call
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            paused = time.monotonic()
            pause, during = rng.random() * 0.5, 0
            if pause > bound + SLACK:
                time.sleep(bound + SLACK)
                before = sum(steps)
                time.sleep(pause - bound - SLACK)
                during = sum(steps) - before
            time.sleep(max(paused + pause - time.monotonic(), 0))
            server.process.send_signal(signal.SIGCONT)
            if run % 4 == 3:
                server.kill()  # restarted from its append-only file
                server.start()
            deadline = time.monotonic() + 8
            for w in workers:
                w.join(max(deadline - time.monotonic(), 0.1))
            for w in workers:
                if w.is_alive():
                    w.kill()
                    w.join(5)
            granted, cost = sum(steps), sum(spent)
            assert during == 0, f"run {run}: {during} steps admitted with Redis stopped"
            assert 0 < granted <= max_steps, f"run {run}: {granted} steps admitted"
            assert cost <= units(MAX_USD), f"run {run}: ${cost / 10**18} spent"
    finally:
        server.stop()
