"""The Redis ledger against its floor, measured side by side in one run (issue 18's table).

Starts its own redis-server on a loopback port (persistence off) and, with N worker processes
(spawn, default 8) for a fixed time each, measures:

- floor: redis-py ``EVALSHA`` of ``return 1`` in a loop (the client's floor: one round trip);
- ceiling: ``@budget.step`` with an in-process ``SessionBudget`` in each worker (no Redis);
- exact (after): every worker joined one session of this checkout's ``RedisLedger``; each
  worker admits steps (``handle.admit("step")``: one ``FCALL``), and again through
  ``@budget.step`` in a joined ``SessionBudget``;
- account: every worker joined one session of an ``Account`` (its window checked and charged
  in the same ``FCALL``), admitting steps, against the same admits of a plain session;
- exact (before): the same with another ledger module (``--before path/to/redis.py``, e.g.
  ``git show main:budgetkit/ledgers/redis.py > /tmp/before.py``), loaded as
  ``budgetkit.ledgers.redis_before``.

- allotments: the same ``@budget.step`` with ``RedisLedger(url, allotment="auto")`` (steps
  admitted from local leases), against the ceiling and against ``redis-benchmark`` (C, its
  default 50 connections) running ``EVALSHA`` of ``return 1``; round trips per admitted step
  are the server's script calls (``INFO commandstats``) over the steps admitted.

Server µs per admit come from ``INFO commandstats`` (``cmdstat_fcall`` and
``cmdstat_evalsha``), reset before each phase; server keys are counted after 1k and after 100k
steps of one session. Not part of the test suite; numbers depend on the machine (and on what
else runs on it: ``benchmarks/redis_instructions.py`` counts instructions instead).

    python benchmarks/redis.py [--seconds 2] [--workers 8] [--before /tmp/before.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# This file is named redis.py: keep its directory off sys.path so `import redis` is redis-py.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import redis  # noqa: E402

from budgetkit import SessionBudget, budget  # noqa: E402
from budgetkit._limits import Limits  # noqa: E402
from budgetkit.testing import redis_server  # noqa: E402


@budget.step
def tool(i: int) -> int:
    return i


def ledger_class(before: str | None) -> Any:
    """This checkout's RedisLedger, or the one in the file ``before``."""
    if before is None:
        from budgetkit.ledgers.redis import RedisLedger

        return RedisLedger
    name = "budgetkit.ledgers.redis_before"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, before)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module.RedisLedger


def timed(step: Any, seconds: float, go: Any) -> tuple[int, float]:
    step(-1)  # warm up: connection, scripts loaded
    go.wait()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            step(n)
            n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n, now - start


def worker(
    mode: str, url: str, session_id: str, before: str | None, seconds: float, go: Any
) -> tuple[int, float]:
    """Run one kind of operation for ``seconds``; return (operations, elapsed)."""
    if mode == "floor":
        client = redis.Redis.from_url(url)
        script = client.register_script("return 1")
        return timed(lambda i: script(keys=["x"], args=[]), seconds, go)
    if mode == "ceiling":
        with SessionBudget(max_steps=10**12, handoff_dir=None):
            return timed(tool, seconds, go)
    if mode == "leased":
        led = ledger_class(before)(url, allotment="auto")
        with SessionBudget.join(session_id, ledger=led, handoff_dir=None, trust_id=True):
            return timed(tool, seconds, go)
    led = ledger_class(before)(url)
    if mode in ("admit", "account"):
        handle = led.join(session_id)
        return timed(lambda i: handle.admit("step"), seconds, go)
    with SessionBudget.join(session_id, ledger=led, handoff_dir=None, trust_id=True):
        return timed(tool, seconds, go)


def phase(
    url: str, mode: str, workers: int, seconds: float, before: str | None = None
) -> tuple[float, float]:
    """Total operations per second over the workers, and server µs per EVALSHA."""
    admin = redis.Redis.from_url(url)
    session_id = f"bench-{uuid.uuid4().hex}"
    if mode in ("admit", "session"):
        ledger_class(before)(url).create(session_id, Limits.build(max_steps=10**12))
    if mode == "account":
        from budgetkit import Account

        terms = Account(f"bench-{uuid.uuid4().hex}", max_steps=10**12).terms
        ledger_class(before)(url).create(session_id, Limits(), account=terms)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        go = manager.Event()
        with ctx.Pool(workers) as pool:
            pending = [
                pool.apply_async(worker, (mode, url, session_id, before, seconds, go))
                for _ in range(workers)
            ]
            time.sleep(1.0 + 0.2 * workers)  # every worker started and warmed up
            admin.config_resetstat()
            go.set()
            results = [p.get(timeout=seconds + 120) for p in pending]
    stats = admin.info("commandstats")
    admin.close()
    rate = sum(n / elapsed for n, elapsed in results)
    # The operations are FCALLs (EVALSHA on a server without Functions, and the floor's).
    calls = usec = 0.0
    for command in ("cmdstat_fcall", "cmdstat_evalsha"):
        calls += float(stats.get(command, {}).get("calls", 0))
        usec += float(stats.get(command, {}).get("usec", 0))
    return rate, usec / calls if calls else 0.0


def script_calls(admin: Any) -> int:
    """Script calls the server has run since its stats were reset (FCALL or EVALSHA)."""
    stats = admin.info("commandstats")
    return sum(int(stats.get(c, {}).get("calls", 0)) for c in ("cmdstat_fcall", "cmdstat_evalsha"))


def leased_phase(url: str, workers: int, seconds: float) -> tuple[float, float]:
    """Allotment mode: admitted steps/s over the workers, and script calls per step."""
    admin = redis.Redis.from_url(url)
    session_id = f"bench-{uuid.uuid4().hex}"
    ledger_class(None)(url).create(session_id, Limits.build(max_steps=10**12))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        go = manager.Event()
        with ctx.Pool(workers) as pool:
            pending = [
                pool.apply_async(worker, ("leased", url, session_id, None, seconds, go))
                for _ in range(workers)
            ]
            time.sleep(1.0 + 0.2 * workers)
            admin.config_resetstat()
            go.set()
            results = [p.get(timeout=seconds + 120) for p in pending]
            calls = script_calls(admin)  # before the workers exit (and give leases back)
    admin.close()
    rate = sum(n / elapsed for n, elapsed in results)
    return rate, calls / max(sum(n for n, _ in results), 1)


def redis_benchmark_rate(url: str) -> float:
    """``redis-benchmark`` (C) running ``EVALSHA`` of ``return 1``: requests per second."""
    admin = redis.Redis.from_url(url)
    sha = admin.script_load("return 1")
    port = admin.connection_pool.connection_kwargs["port"]
    admin.close()
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-n", "200000", "-q", "--csv", "EVALSHA", sha, "0"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    row = [line for line in out.splitlines() if "EVALSHA" in line][-1]
    return float(row.split(",")[1].strip('"'))


def allotment_rows(url: str, workers: int, seconds: float, rounds: int) -> list[str]:
    """Issue 18's allotment rows: ratios to the ceiling (measured next to each round, the
    median of the rounds' ratios) and to redis-benchmark."""
    c_rate = redis_benchmark_rate(url)
    ratios: list[float] = []
    rates: list[float] = []
    trips: list[float] = []
    for _ in range(rounds):
        ceiling, _ = phase(url, "ceiling", workers, seconds)
        rate, per_step = leased_phase(url, workers, seconds)
        ratios.append(rate / ceiling)
        rates.append(rate)
        trips.append(per_step)
    rate = statistics.median(rates)
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return [
        f"redis-benchmark EVALSHA 'return 1' (C, 50 connections): {c_rate:,.0f}/s",
        f"allotments, {workers} processes: {rate:,.0f} admitted steps/s (median of {rounds})",
        f"  ÷ in-process ceiling = {statistics.median(ratios):.2f} [rounds: {each}] (target ≥ 0.5)",
        f"  ÷ redis-benchmark EVALSHA rate = {rate / c_rate:.2f} (target ≥ 3)",
        f"  round trips per admitted step = {max(trips):.4f} (the most of any round; target ≤ 0.1)",
    ]


def keys_after(url: str, steps: int, before: str | None) -> int:
    """Keys on the server after ``steps`` admitted steps, each with a charged LLM call."""
    admin = redis.Redis.from_url(url)
    admin.flushall()
    handle = ledger_class(before)(url).create(
        f"bench-{uuid.uuid4().hex}", Limits.build(max_usd=10**9)
    )
    for _ in range(steps):
        handle.admit("step")
        handle.admit("llm", 10**16)
        handle.record((100, 10, 0, 0, 0), 10**15, release=10**16)
    n = int(admin.dbsize())
    admin.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--before", help="another ledger module to compare (main's redis.py)")
    parser.add_argument("--key-steps", type=int, nargs=2, default=[1_000, 100_000])
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the floor and each ledger's admits measured in turn this many times; the "
        "ratios are the median of each round's (a shared machine's load moves between phases)",
    )
    args = parser.parse_args()
    n, secs = args.workers, args.seconds
    print(
        f"cpus: {os.cpu_count()}, {n} processes, {secs:g} s per phase, {args.rounds} rounds, "
        "loopback redis-server"
    )
    versions: list[tuple[str, str | None]] = [("after", None)]
    if args.before:
        versions.insert(0, ("before", args.before))
    with redis_server() as url:
        floors: list[tuple[float, float]] = []
        admits: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in versions}
        for _ in range(args.rounds):
            floors.append(phase(url, "floor", n, secs))
            for label, before in versions:
                admits[label].append(phase(url, "admit", n, secs, before))
        floor = median([rate for rate, _ in floors])
        floor_us = median([us for _, us in floors])
        ceiling, _ = phase(url, "ceiling", n, secs)
        print(f"floor   redis-py EVALSHA 'return 1': {floor:>12,.0f}/s  {floor_us:.2f} µs server")
        print(f"ceiling in-process @budget.step:     {ceiling:>12,.0f}/s")
        print()
        print(
            f"{'ledger':>6} | {'admits/s':>10} | {'÷ floor':>7} | {'server µs':>9} | "
            f"{'÷ return 1':>10} | {'steps/s':>10} | {'÷ floor':>7} | "
            f"{'keys ' + str(args.key_steps[0]):>10} | {'keys ' + str(args.key_steps[1]):>11}"
        )
        print("-" * 96)
        ratios: list[str] = []
        for label, before in versions:
            rounds = admits[label]
            rate = median([r for r, _ in rounds])
            admit_us = median([us for _, us in rounds])
            rate_ratio = median([r / f for (r, _), (f, _) in zip(rounds, floors, strict=True)])
            us_ratio = median([u / fu for (_, u), (_, fu) in zip(rounds, floors, strict=True)])
            steps, _ = phase(url, "session", n, secs, before)
            small = keys_after(url, args.key_steps[0], before)
            large = keys_after(url, args.key_steps[1], before)
            print(
                f"{label:>6} | {rate:>10,.0f} | {rate_ratio:>7.2f} | {admit_us:>9.2f} | "
                f"{us_ratio:>10.2f} | {steps:>10,.0f} | {steps / floor:>7.2f} | "
                f"{small:>10} | {large:>11}"
            )
            each = ", ".join(f"{r / f:.2f}" for (r, _), (f, _) in zip(rounds, floors, strict=True))
            ratios.append(
                f"{label:>6}: exact admits/s ÷ redis-py EVALSHA 'return 1' ({n} processes) = "
                f"{rate_ratio:.2f} [rounds: {each}] (target ≥ 0.8); "
                f"server µs per admit ÷ 'return 1' = {us_ratio:.2f} (target ≤ 3)"
            )
        print()
        print(
            "admits/s: handle.admit('step'), one FCALL (before: EVALSHA); "
            "steps/s: @budget.step in a joined SessionBudget; "
            "keys: after that many steps (each with a charged LLM call)"
        )
        print()
        print("\n".join(ratios))
        plain = [phase(url, "admit", n, secs) for _ in range(args.rounds)]
        account = [phase(url, "account", n, secs) for _ in range(args.rounds)]
        print(
            "account: admits/s of a session of an Account ÷ of a plain session = "
            f"{median([a / p for (a, _), (p, _) in zip(account, plain, strict=True)]):.2f}; "
            f"server µs per admit {median([u for _, u in account]):.2f} vs "
            f"{median([u for _, u in plain]):.2f} (information)"
        )
        print()
        print("\n".join(allotment_rows(url, n, secs, args.rounds)))


def median(values: list[float]) -> float:
    return statistics.median(values)


if __name__ == "__main__":
    main()
