"""A real ``redis-server`` for the ledger tests: started on a free loopback port, stopped after.

``redis_server`` is one server for the whole run (no persistence). Fault tests start their
own :class:`RedisServer` to kill and restart. A missing ``redis-server`` fails the tests with
the command that installs it: they must run in CI, never skip.

The worker functions at the bottom run in ``multiprocessing`` (spawn) children, which import
this module by name.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import redis

from budgetkit import BudgetExhausted, SessionBudget, Usage, _money, budget
from budgetkit._usage import Counts, usage_counts
from budgetkit.ledgers.redis import RedisLedger

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

INSTALL_HINT = (
    "redis-server is not installed; the Redis ledger tests need a real server: "
    "apt-get install -y redis-server (scripts/bootstrap.sh does it)"
)


def units(usd: str | int | Decimal) -> int:
    """USD as the ledger protocol's integer units of 10^-18 USD."""
    return _money.to_units(Decimal(usd))


def counts(usage: Usage) -> Counts:
    """A usage as the ledger protocol's token counts."""
    return usage_counts(usage)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RedisServer:
    """One ``redis-server`` process on loopback, with its own data directory."""

    def __init__(self, directory: Path, *, appendonly: bool = False, config: str = "") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self.binary = binary
        self.directory = directory
        self.appendonly = appendonly
        #: Lines of a redis.conf given before the command-line options (e.g. rename-command).
        self.config = config
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        log = (self.directory / "redis.log").open("ab")
        conf = self.directory / "redis.conf"
        conf.write_text(self.config)
        self.process = subprocess.Popen(
            [
                self.binary,
                str(conf),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        admin = self.admin()
        deadline = time.monotonic() + 10
        while True:
            try:
                if admin.ping():
                    break
            except redis.exceptions.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.directory / "redis.log").read_text(errors="replace")
                pytest.fail(f"redis-server did not start on port {self.port}:\n{log_text}")
            time.sleep(0.02)
        admin.close()
        return self

    def admin(self) -> redis.Redis:
        """A plain client for inspecting the server."""
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server (no persistence) for the whole run."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ledger(redis_server: RedisServer) -> Iterator[RedisLedger]:
    """A ledger on the shared server, with a key prefix of its own."""
    led = RedisLedger(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield led
    led.client.close()


# ------------------------------------------------------------------ worker processes
def ledger_racer(url: str, prefix: str, session_id: str, go: Any) -> dict[str, Any]:
    """Join a session and admit steps (each with a reserved, charged LLM call) until refused."""
    handle = RedisLedger(url, key_prefix=prefix).join(session_id)
    go.wait()
    steps = calls = 0
    while True:
        reason = handle.admit("step", name="tool")
        if reason is not None:
            break
        steps += 1
        if handle.admit("llm", units("0.01"), name="ask") is None:
            calls += 1
            cost = Decimal("0.001") + Decimal(steps % 4) / 1000  # 0.001 .. 0.004
            handle.record(
                counts(Usage(input_tokens=10, output_tokens=5)), units(cost), release=units("0.01")
            )
    return {"steps": steps, "calls": calls, "reason": reason, "won": handle.claim_handoff_writer()}


def hold_reservation(url: str, prefix: str, session_id: str, ready: Any) -> None:
    """Join, reserve $0.50 for an LLM call, say so, then hang until killed."""
    handle = RedisLedger(url, key_prefix=prefix, reservation_ttl=1.0).join(session_id)
    assert handle.admit("llm", units("0.5"), name="slow call") is None
    ready.set()
    time.sleep(600)


@budget.step
def racer_tool(i: int) -> int:
    """A tool step of the racing workers."""
    return i


@budget.llm_call(
    model="gpt-4o-mini", estimate=lambda i: {"input_tokens": 10_000, "output_tokens": 1_000}
)
def racer_ask(i: int) -> dict[str, Any]:
    """An LLM call that reserves its own price ($0.0021 with gpt-4o-mini) before it runs."""
    return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10_000, "completion_tokens": 1_000}}


def session_racer(
    url: str, headers: dict[str, str], handoff_dir: str, go: Any, *, with_steps: bool
) -> dict[str, Any]:
    """Join a SessionBudget (its id and join token in ``headers``); run (steps and) reserved
    LLM calls until it is exhausted."""
    session = SessionBudget.join(
        headers, ledger=RedisLedger(url), handoff_dir=handoff_dir, raise_on_exhausted=False
    )
    steps = calls = 0
    go.wait()
    with session:
        try:
            while True:
                if with_steps:
                    racer_tool(steps)
                    steps += 1
                racer_ask(calls)
                calls += 1
        except BudgetExhausted as exc:
            error = exc
    assert session.result is not None
    return {
        "steps": steps,
        "calls": calls,
        "reason": error.reason,
        "handoff_path": None if error.handoff_path is None else str(error.handoff_path),
        "stop": session.result.stop_reason,
    }


@budget.step(max_calls=5)
def capped_tool(i: int) -> int:
    """A tool capped at 5 calls per session (``@budget.step(max_calls=5)``)."""
    return i


def tool_racer(url: str, prefix: str, session_id: str, go: Any) -> int:
    """Join a SessionBudget and call ``capped_tool`` up to 10 times; how many ran."""
    session = SessionBudget.join(  # a test's own workers: joined by the id alone
        session_id, ledger=RedisLedger(url, key_prefix=prefix), handoff_dir=None, trust_id=True
    )
    ran = 0
    go.wait()
    with session:
        for i in range(10):
            try:
                capped_tool(i)
            except BudgetExhausted:
                break
            ran += 1
    return ran
