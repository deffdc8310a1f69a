"""Server instructions per Redis ledger operation, counted by callgrind (repeatable).

Wall-clock server µs (``INFO commandstats``) move with whatever else runs on the machine;
instruction counts do not. This runs ``redis-server`` under ``valgrind --tool=callgrind``,
and for each operation zeroes the counters, runs it ``--calls`` times from one client, dumps
the counters and divides: instructions per operation, including the server's reading and
answering of the command (as for the floor).

Rows: the floor (``EVALSHA`` and ``FCALL`` of ``return 1``); the floor of any admit (one Lua
function that reads the admit's fields with one ``HMGET`` and writes one field, with and
without ``TIME``); and the ledger's operations, before (another ledger module, default the
``main`` branch's ``budgetkit/ledgers/redis.py`` via ``git show``) and after (this checkout).

    python benchmarks/redis_instructions.py [--calls 2000] [--before path/to/redis.py]

Needs valgrind; not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# This directory holds redis.py: keep it off sys.path so `import redis` is redis-py.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import redis  # noqa: E402

from budgetkit._limits import Limits  # noqa: E402
from budgetkit.ledgers import redis as after_module  # noqa: E402


def load_module(path: str) -> Any:
    """The ledger module in the file ``path``, as ``budgetkit.ledgers.redis_before``."""
    name = "budgetkit.ledgers.redis_before"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main_branch_module(directory: Path) -> str | None:
    """``budgetkit/ledgers/redis.py`` of the ``main`` branch, written to ``directory``."""
    try:
        text = subprocess.run(
            ["git", "show", "main:budgetkit/ledgers/redis.py"],
            cwd=_HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = directory / "redis_before.py"
    path.write_text(text)
    return str(path)


class Callgrind:
    """``redis-server`` under callgrind, with counters zeroed and dumped on demand."""

    def __init__(self, directory: Path) -> None:
        with __import__("socket").socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.out = directory / "callgrind.out"
        self.process = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={self.out}",
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port, socket_timeout=120)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start under valgrind") from None
                time.sleep(0.2)
        self.dumps = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def control(self, option: str) -> None:
        subprocess.run(
            ["callgrind_control", option, str(self.process.pid)],
            check=True,
            capture_output=True,
        )

    def per_call(self, operation: Any, calls: int) -> float:
        """Server instructions per call of ``operation`` (warmed up first)."""
        for _ in range(20):
            operation()
        self.control("-z")
        for _ in range(calls):
            operation()
        self.control("-d")
        self.dumps += 1
        dump = Path(f"{self.out}.{self.dumps}")
        deadline = time.monotonic() + 60
        while not dump.exists() or "totals:" not in dump.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no callgrind dump {dump}")
            time.sleep(0.1)
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1]) / calls
        raise RuntimeError(f"no totals in {dump}")

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(60)


def floor_library(fields: list[str]) -> str:
    """``return 1``, and the least any admit does: read its fields, (ask TIME,) write one."""
    names = ", ".join(f"'{f}'" for f in fields)
    return f"""#!lua name=bk_floor
local F = {{{names}}}
redis.register_function('floor_return1', function(keys, args) return 1 end)
redis.register_function('floor_read_write', function(keys, args)
  local got = redis.call('HMGET', keys[1], unpack(F))
  redis.call('HSET', keys[1], 'steps', (tonumber(got[1]) or 0) + 1)
  return 1
end)
redis.register_function('floor_read_time_write', function(keys, args)
  local got = redis.call('HMGET', keys[1], unpack(F))
  local t = redis.call('TIME')
  redis.call('HSET', keys[1], 'steps', (tonumber(got[1]) or 0) + 1)
  return 1
end)
"""


def ledger_rows(server: Callgrind, module: Any, calls: int) -> dict[str, float]:
    """Instructions per operation of one ledger module: a step admit, a charged LLM call
    (an admit with a reservation, then its record releasing it), and a record alone (a
    call without ``estimate=``)."""
    led = module.RedisLedger(server.url, key_prefix=f"i{uuid.uuid4().hex[:6]}:")
    handle = led.create(f"s-{uuid.uuid4().hex}", Limits.build(max_steps=10**12, max_usd=10**9))
    rows = {"admit step": server.per_call(lambda: handle.admit("step"), calls)}

    def charged() -> None:
        handle.admit("llm", 10**16)
        handle.record((100, 10, 0, 0, 0), 10**15, release=10**16)

    rows["admit llm (reserve) + record"] = server.per_call(charged, calls // 2)
    rows["record (no reservation)"] = server.per_call(
        lambda: handle.record((100, 10, 0, 0, 0), 10**15), calls
    )
    led.client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--before", help="another ledger module (default: main's redis.py)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        before_path = args.before or main_branch_module(directory)
        server = Callgrind(directory)
        try:
            client = server.client
            script = client.register_script("return 1")
            evalsha = server.per_call(lambda: script(keys=["x"], args=[]), args.calls)
            client.function_load(floor_library(after_module.admit_fields("step", False)))
            client.hset("f{x}", "steps", 0)
            floors = {
                name: server.per_call(
                    lambda name=name: client.fcall(f"floor_{name}", 1, "f{x}"), args.calls
                )
                for name in ("return1", "read_write", "read_time_write")
            }
            before = (
                ledger_rows(server, load_module(before_path), args.calls) if before_path else {}
            )
            after = ledger_rows(server, after_module, args.calls)
        finally:
            server.stop()
    print(f"server instructions per operation (callgrind, {args.calls} calls, one client)")
    print(f"floor   EVALSHA 'return 1':                   {evalsha:>10,.0f}")
    print(f"floor   FCALL 'return 1':                     {floors['return1']:>10,.0f}")
    for name, label in (
        ("read_write", "any admit: HMGET its fields + HSET one"),
        ("read_time_write", "the same + TIME"),
    ):
        print(f"floor   {label + ':':<38}{floors[name]:>10,.0f}  ({floors[name] / evalsha:.2f}x)")
    print()
    ratio = "÷ return 1"
    print(f"{'operation':<30} | {'before':>10} | {ratio:>10} | {'after':>10} | {ratio:>10}")
    print("-" * 82)
    for name, value in after.items():
        old = before.get(name, float("nan"))
        print(
            f"{name:<30} | {old:>10,.0f} | {old / evalsha:>10.2f} | {value:>10,.0f} | "
            f"{value / evalsha:>10.2f}"
        )
    print()
    print("÷ return 1: against EVALSHA 'return 1' (the issue's floor); a charged LLM call is")
    print("two operations (admit with a reservation, then record).")


if __name__ == "__main__":
    main()
