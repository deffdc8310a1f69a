"""Admitted steps per second with the Redis ledger, next to the in-process ledger.

Starts its own redis-server on a loopback port (persistence off), then for 1, 4 and 8 worker
processes (spawn) runs ``@budget.step`` calls for a fixed time:

- in-process: each worker has its own ``SessionBudget`` (counters under the process lock);
- redis: every worker has joined one ``SessionBudget(ledger=RedisLedger(url))``; each step is
  one atomic script call on the server.

Prints a table of total admitted steps per second (summed over the workers) and the median
latency of one admission. Not part of the test suite; numbers depend on the machine.

    python benchmarks/redis.py [--seconds 2] [--workers 1 4 8]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

# This file is named redis.py: keep its directory off sys.path so `import redis` is redis-py.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from budgetkit import SessionBudget, budget  # noqa: E402
from budgetkit.ledgers.redis import RedisLedger  # noqa: E402
from budgetkit.testing import redis_server  # noqa: E402


@budget.step
def tool(i: int) -> int:
    return i


def worker(
    url: str | None, headers: dict[str, str] | None, seconds: float, go: Any
) -> tuple[int, float]:
    """Run steps for ``seconds``; return (steps, elapsed)."""
    if url is None:
        session = SessionBudget(max_steps=10**12, handoff_dir=None)
    else:
        session = SessionBudget.join(headers, ledger=RedisLedger(url), handoff_dir=None)
    with session:
        tool(-1)  # warm up: connection, scripts loaded
        go.wait()
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(50):
                tool(n)
                n += 1
            now = time.perf_counter()
            if now >= deadline:
                return n, now - start


def run(url: str | None, workers: int, seconds: float) -> tuple[float, float]:
    """Total admitted steps per second, and mean µs per admission in one worker."""
    ctx = multiprocessing.get_context("spawn")
    headers = None
    creator = None
    if url is not None:
        creator = SessionBudget(max_steps=10**12, ledger=RedisLedger(url), handoff_dir=None)
        creator.__enter__()
        headers = dict(creator.inject({}))
    try:
        with ctx.Manager() as manager:
            go = manager.Event()
            with ctx.Pool(workers) as pool:
                pending = [
                    pool.apply_async(worker, (url, headers, seconds, go)) for _ in range(workers)
                ]
                time.sleep(0.5 + 0.1 * workers)  # every worker joined and warmed up
                go.set()
                results = [p.get(timeout=seconds + 120) for p in pending]
    finally:
        if creator is not None:
            creator.__exit__(None, None, None)
    rate = sum(n / elapsed for n, elapsed in results)
    per_call_us = sum(elapsed / n for n, elapsed in results) / len(results) * 1e6
    if creator is not None:
        assert creator.usage.steps == sum(n for n, _ in results) + workers  # + the warm-ups
    return rate, per_call_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, {args.seconds:g} s per run, loopback redis-server")
    print(
        f"{'processes':>9} | {'in-process steps/s':>18} | {'redis steps/s':>13} | "
        f"{'µs/step in-proc':>15} | {'µs/step redis':>13}"
    )
    print("-" * 81)
    with redis_server() as url:
        for n in args.workers:
            local, local_us = run(None, n, args.seconds)
            shared, shared_us = run(url, n, args.seconds)
            print(
                f"{n:>9} | {local:>18,.0f} | {shared:>13,.0f} | {local_us:>15.2f} | "
                f"{shared_us:>13.1f}"
            )


if __name__ == "__main__":
    main()
