"""``budgetkit run``: child processes charge the same budget as the script that started them.

Every test runs ``python -m budgetkit run`` in a real process on a real script that makes
real ``openai`` calls against the stub server, and counts the requests the server received:
that is what the budget let through, whichever process sent it. Each process of a script
makes at most a few dozen calls, so a budget that fails to hold shows as a count, never as
a hang.

The ledger is the embedded one (served by the ``budgetkit run`` process over a Unix socket)
unless a test passes ``--redis URL``, which uses a real ``redis-server``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from redis_fixtures import redis_server

from budgetkit import Handoff
from budgetkit.cli import EXIT_EXHAUSTED
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from redis_fixtures import RedisServer

__all__ = ["redis_server"]  # a fixture, re-exported for pytest

#: The openai client and a bounded loop of calls, shared by every script below.
PRELUDE = """
import os, sys
import openai

client = openai.OpenAI(base_url=os.environ["STUB_URL"], api_key="k", max_retries=0)


def ask(n):
    client.chat.completions.create(
        model="gpt-4o-mini",
        max_tokens=20,
        messages=[{"role": "user", "content": f"step {n} of pid {os.getpid()}"}],
    )


def loop(limit=20):
    \"\"\"Call until refused (or ``limit`` calls); the number of calls made and the error.\"\"\"
    n = 0
    try:
        while n < limit:
            ask(n)
            n += 1
    except Exception as exc:  # BudgetExhausted: the budget is spent
        return n, type(exc).__name__
    return n, None


def report(*parts):
    \"\"\"One line on stdout in one write, so the lines of processes never interleave.\"\"\"
    os.write(1, (" ".join(map(str, parts)) + "\\n").encode())


def parent_calls():
    \"\"\"The parent's own calls after its children: refused, so the run exits 3.\"\"\"
    for n in range(20):
        ask(n)
"""

_EXHAUSTED = re.compile(r"budgetkit: budget exhausted \((\w+)\) .*; handoff: (\S+)\n")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "BUDGETKIT_")) and k not in ("NO_COLOR", "CI")
    }
    return {**env, **extra}


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """A fresh stub per test, so ``len(stub.requests)`` counts this test's calls only."""
    with StubServer(usage=(100, 20)) as server:
        yield server


def _script(tmp_path: Path, body: str, name: str = "agent.py") -> Path:
    path = tmp_path / name
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def _run(
    tmp_path: Path, stub: StubServer, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "budgetkit", "run", *args],
        cwd=tmp_path,
        env=_env(STUB_URL=stub.base_url),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _exhausted(result: subprocess.CompletedProcess[str], tmp_path: Path) -> Handoff:
    """Exit code 3, and the handoff named on stderr."""
    assert result.returncode == EXIT_EXHAUSTED, result.stdout + result.stderr
    match = _EXHAUSTED.search(result.stderr)
    assert match is not None, result.stderr
    handoff = Handoff.load(tmp_path / match.group(2))
    assert handoff.reason == match.group(1)
    return handoff


def _ledger_args(kind: str, request: pytest.FixtureRequest) -> list[str]:
    if kind == "embedded":
        return []
    server: RedisServer = request.getfixturevalue("redis_server")
    return ["--redis", server.url]


LEDGERS = pytest.mark.parametrize("ledger", ["embedded", "redis"])


# ---------------------------------------------------------------------------- os.fork
@LEDGERS
def test_forked_children_charge_the_run_budget(
    tmp_path: Path, stub: StubServer, ledger: str, request: pytest.FixtureRequest
) -> None:
    # Before: each of the 4 children counted in its own copy of the counters, and the
    # parent in its own: 25 requests went through a budget of 5.
    script = _script(
        tmp_path,
        """
        pids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                report("child", *loop())
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        parent_calls()
        """,
    )
    result = _run(
        tmp_path, stub, "--max-llm-calls", "5", *_ledger_args(ledger, request),
        "--", "python", str(script),
    )  # fmt: skip
    handoff = _exhausted(result, tmp_path)
    assert len(stub.requests) == 5
    assert handoff.reason == "max_llm_calls"
    assert handoff.usage["llm_calls"] == 5
    made = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("child")]
    assert len(made) == 4
    assert sum(made) == 5
    assert result.stdout.count("BudgetExhausted") == 4  # every child was refused in the end


@LEDGERS
def test_racing_forked_children_admit_exactly_the_limit(
    tmp_path: Path, stub: StubServer, ledger: str, request: pytest.FixtureRequest
) -> None:
    # 8 children released at once by one write to a pipe, all calling as fast as they can.
    script = _script(
        tmp_path,
        """
        gate_r, gate_w = os.pipe()
        pids = []
        for _ in range(8):
            pid = os.fork()
            if pid == 0:
                os.read(gate_r, 1)
                report("child", *loop())
                os._exit(0)
            pids.append(pid)
        os.write(gate_w, b"x" * 8)
        for pid in pids:
            os.waitpid(pid, 0)
        parent_calls()
        """,
    )
    result = _run(
        tmp_path, stub, "--max-llm-calls", "5", *_ledger_args(ledger, request),
        "--", "python", str(script),
    )  # fmt: skip
    handoff = _exhausted(result, tmp_path)
    assert len(stub.requests) == 5
    assert handoff.usage["llm_calls"] == 5
    made = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("child")]
    assert len(made) == 8
    assert sum(made) == 5


# ---------------------------------------------------------------------------- subprocess
@LEDGERS
def test_a_python_subprocess_charges_the_run_budget(
    tmp_path: Path, stub: StubServer, ledger: str, request: pytest.FixtureRequest
) -> None:
    # Before: the child was not instrumented at all: 20 uncharged calls, then 5 more in the
    # parent.
    _script(tmp_path, 'report("child", *loop())\n', name="child.py")
    script = _script(
        tmp_path,
        """
        import subprocess
        done = subprocess.run([sys.executable, "child.py"], timeout=60)
        report("child exit", done.returncode)
        parent_calls()
        """,
    )
    result = _run(
        tmp_path, stub, "--max-llm-calls", "5", *_ledger_args(ledger, request),
        "--", "python", str(script),
    )  # fmt: skip
    handoff = _exhausted(result, tmp_path)
    assert len(stub.requests) == 5
    assert handoff.usage["llm_calls"] == 5
    assert "child 5 BudgetExhausted" in result.stdout
    assert "child exit 0" in result.stdout


def _wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


def test_a_child_that_outlives_the_run_is_refused(tmp_path: Path, stub: StubServer) -> None:
    # A child left running after the run ended finds no ledger: its calls fail closed
    # (LedgerUnavailableError) instead of spending without a budget.
    _script(
        tmp_path,
        """
        import time
        open("ready", "w").write("ready\\n")
        deadline = time.monotonic() + 60
        while not os.path.exists("go") and time.monotonic() < deadline:
            time.sleep(0.02)
        with open("child.out", "w") as out:
            print(*loop(), file=out)
        """,
        name="child.py",
    )
    script = _script(
        tmp_path,
        """
        import subprocess, time
        subprocess.Popen(
            [sys.executable, "child.py"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while not os.path.exists("ready"):
            time.sleep(0.02)
        """,
    )
    result = _run(tmp_path, stub, "--max-llm-calls", "5", "--", "python", str(script))
    assert result.returncode == 0, result.stderr
    (tmp_path / "go").touch()
    assert _wait_for(tmp_path / "child.out").split() == ["0", "LedgerUnavailableError"]
    assert len(stub.requests) == 0


def test_a_child_started_after_the_run_does_not_run_unbudgeted(
    tmp_path: Path, stub: StubServer
) -> None:
    # The run's environment copied into a process started after the run ended: it cannot
    # join the budget, so it stops at start-up and says why.
    _script(tmp_path, 'report("child", *loop())\n', name="child.py")
    script = _script(tmp_path, 'import json\njson.dump(dict(os.environ), open("env.json", "w"))\n')
    result = _run(tmp_path, stub, "--max-llm-calls", "5", "--", "python", str(script))
    assert result.returncode == 0, result.stderr
    env = json.loads((tmp_path / "env.json").read_text())
    late = subprocess.run(
        [sys.executable, "child.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert late.returncode == 1
    assert "budgetkit run: this process cannot join the run's budget" in late.stderr
    assert "LedgerUnavailableError" in late.stderr
    assert late.stdout == ""
    assert len(stub.requests) == 0


# ---------------------------------------------------------------------------- multiprocessing
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_a_multiprocessing_pool_charges_the_run_budget(
    tmp_path: Path, stub: StubServer, method: str
) -> None:
    # Before: spawn and forkserver workers were not charged at all, fork workers each in
    # their own copy: 4 tasks of 10 calls, then 5 in the parent.
    script = _script(
        tmp_path,
        f"""
        import multiprocessing


        def work(i):
            return loop(10)


        if __name__ == "__main__":
            with multiprocessing.get_context({method!r}).Pool(2) as pool:
                results = pool.map(work, range(4))
            report("made", sum(n for n, _ in results))
            parent_calls()
        """,
    )
    result = _run(tmp_path, stub, "--max-llm-calls", "5", "--", "python", str(script))
    handoff = _exhausted(result, tmp_path)
    assert len(stub.requests) == 5
    assert handoff.usage["llm_calls"] == 5
    assert "made 5" in result.stdout


@LEDGERS
def test_a_spawn_pool_shares_a_usd_budget(
    tmp_path: Path, stub: StubServer, ledger: str, request: pytest.FixtureRequest
) -> None:
    # gpt-4o-mini, 100 in + 20 out per call: $0.000027 a call; each call reserves its worst
    # case first, so spend stays within the limit across processes.
    script = _script(
        tmp_path,
        """
        import multiprocessing


        def work(i):
            return loop(20)


        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                results = pool.map(work, range(4))
            report("made", sum(n for n, _ in results))
            parent_calls()
        """,
    )
    result = _run(
        tmp_path, stub, "--max-usd", "0.0003", *_ledger_args(ledger, request),
        "--", "python", str(script),
    )  # fmt: skip
    handoff = _exhausted(result, tmp_path)
    assert handoff.reason == "max_usd"
    made = int(re.search(r"made (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert len(stub.requests) == made
    # The summary reads the ledger once every process is done (the handoff was written at
    # the first refusal, while other calls were still settling).
    line = re.search(r"(\d+) LLM calls, \d+ tokens, \$([\d.]+);", result.stderr)
    assert line is not None, result.stderr
    assert int(line.group(1)) == made
    spent = Decimal(line.group(2))
    assert spent == made * Decimal("0.000027") <= Decimal("0.0003")
    assert made >= 8  # the budget was used, not refused early
