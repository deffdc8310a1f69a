"""Claims are leases: stranded work is retried, never lost, up to a retry cap (issue #17).

A worker killed after it claimed a handoff, or a resumed session that ends with an error,
makes the handoff claimable again (after the lease expires, or at once after the error),
with an attempt counter and a cap on retries. Every test is bounded in time: child processes
run with timeouts, and polling loops have deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from budgetkit import (
    BudgetExhausted,
    BudgetWarning,
    HandoffClaimedError,
    SessionBudget,
    budget,
    pending_handoffs,
    run_chain,
)
from budgetkit._chainfiles import scan
from budgetkit.cli import main

if TYPE_CHECKING:
    from pathlib import Path

#: Seconds a child process or a polling loop may take before the test calls it a hang.
HANG = 30

TASKS = [f"task-{i}" for i in range(5)]
done: list[str] = []


@pytest.fixture(autouse=True)
def _clear_done() -> None:
    done.clear()


@budget.step
def work(task: str) -> str:
    done.append(task)
    return task


def agent(session: SessionBudget) -> list[str]:
    """Work through the pending tasks (or all of them), one step per task."""
    todo = session.resumed_from.pending_tasks if session.resumed_from else TASKS
    for i, task in enumerate(todo):
        session.update_handoff(pending_tasks=todo[i:])
        work(task)
    return list(done)


def poisoned(session: SessionBudget) -> None:
    """A resumed session that does one step, then raises ValueError."""
    with session:
        work("x")
        raise ValueError("poison")


def stop_once(directory: Path, session_id: str = "root-1") -> Path:
    """A first session that runs into max_steps=2 and hands off; the handoff's path."""
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=2, session_id=session_id, handoff_dir=directory) as s,
    ):
        agent(s)
    path = info.value.handoff_path
    assert path is not None
    return path


def _env() -> dict[str, str]:
    """This environment without settings that change budgetkit's behaviour."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BUDGETKIT_"))}


def status_of(directory: Path, **kwargs: Any) -> str:
    (view,) = scan(directory, **kwargs).chains
    return view.status


def wait_for(predicate: Any, what: str, timeout: float = HANG) -> None:
    """Poll ``predicate()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout} s")
        time.sleep(0.05)


def claim_doc(directory: Path, session_id: str = "root-1") -> dict[str, Any]:
    """The current claim of a handoff, as `budgetkit chain --json` reports it."""
    (view,) = scan(directory).chains
    for s in view.sessions:
        if s.session_id == session_id:
            assert s.claim is not None
            return s.claim.doc or {}
    raise AssertionError(f"no session {session_id!r}")


# --------------------------------------------------------------------------- must show
_HOLD_AND_WAIT = """
import sys, time
from budgetkit import SessionBudget

session = SessionBudget.resume(sys.argv[1], lease_seconds=float(sys.argv[2]))
with session:
    print(session.session_id, flush=True)
    time.sleep(600)  # killed here, holding the claim
"""


def test_a_worker_killed_after_its_claim_strands_nothing(handoff_dir: Path) -> None:
    """A real worker resumes a handoff and is SIGKILLed. While its lease is renewed the
    handoff is running; once the lease expires it is pending again (attempt 1 used), and
    another resume claims it (attempt 2) and completes the chain."""
    path = stop_once(handoff_dir)
    lease = 1.0
    child = subprocess.Popen(
        [sys.executable, "-W", "error", "-c", _HOLD_AND_WAIT, str(path), str(lease)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert child.stdout is not None
        worker = child.stdout.readline().strip()
        assert worker, child.stderr.read() if child.stderr else ""
        # Alive and renewing: longer than one lease, the claim holds.
        time.sleep(2.5 * lease)
        assert pending_handoffs(handoff_dir) == []
        assert status_of(handoff_dir) == "running"
        with pytest.raises(HandoffClaimedError, match=worker):
            SessionBudget.resume(path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(HANG)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    wait_for(lambda: pending_handoffs(handoff_dir) != [], "the killed worker's handoff pending")
    (pending,) = pending_handoffs(handoff_dir)
    assert pending.session_id == "root-1"
    assert pending.attempts == 1
    assert status_of(handoff_dir) == "stale"
    with pending.resume(max_steps=10) as session:
        agent(session)
    assert session.result is not None
    assert session.result.stop_reason == "completed"
    assert claim_doc(handoff_dir)["attempt"] == 2
    assert claim_doc(handoff_dir)["claimed_by"] == session.session_id
    assert status_of(handoff_dir) == "finished"
    assert (handoff_dir / f"{session.session_id}.done").exists()
    assert done == TASKS  # two before the handoff, three after the crash: none twice
    assert pending_handoffs(handoff_dir) == []


def test_a_failing_resumed_session_is_retried_up_to_the_cap(
    handoff_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resumed session that raises ValueError writes <id>.failed (the exception type, the
    attempt) and the handoff is claimable again at once; after the cap (3 attempts) it is
    reported failed and is not claimable."""
    path = stop_once(handoff_dir)
    failed = handoff_dir / "root-1.failed"
    for attempt in (1, 2, 3):
        (pending,) = pending_handoffs(handoff_dir)
        assert pending.attempts == attempt - 1
        session = pending.resume()
        with pytest.raises(ValueError, match="poison"):
            poisoned(session)
        assert session.result is not None
        assert session.result.stop_reason == "error"
        record = json.loads(failed.read_text())
        assert record["kind"] == "budgetkit.failed"
        assert record["error_type"] == "ValueError"
        assert record["attempt"] == attempt
        assert record["claimed_by"] == session.session_id
        assert claim_doc(handoff_dir)["attempt"] == attempt
        assert "poison" not in failed.read_text()  # the type only: messages may hold secrets
    assert pending_handoffs(handoff_dir) == []
    assert status_of(handoff_dir) == "failed"
    with pytest.raises(HandoffClaimedError, match=r"failed 3 times.*ValueError.*--reclaim"):
        SessionBudget.resume(path)
    assert main(["chain", str(handoff_dir)]) == 0
    out = capsys.readouterr().out
    assert "chain root-1: failed" in out
    assert "3 of 3 attempts" in out
    assert "ValueError" in out
    assert main(["chain", str(handoff_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (chain,) = doc["chains"]
    assert chain["status"] == "failed"
    assert chain["sessions"][0]["claim"]["attempts"] == 3
    assert chain["sessions"][0]["claim"]["last_error"] == "ValueError"
    # A larger cap lets it be tried again.
    assert [p.session_id for p in pending_handoffs(handoff_dir, max_attempts=4)] == ["root-1"]


def test_the_second_attempt_is_claimable_at_once_and_counts(handoff_dir: Path) -> None:
    """After a failure the handoff is pending again without waiting for the lease; the next
    claim is attempt 2, and it may complete the chain."""
    path = stop_once(handoff_dir)
    with pytest.raises(ValueError), SessionBudget.resume(path, lease_seconds=3600):
        raise ValueError("first try")
    assert status_of(handoff_dir) == "pending"
    with SessionBudget.resume(path, max_steps=10) as session:
        agent(session)
    assert claim_doc(handoff_dir)["attempt"] == 2
    assert status_of(handoff_dir) == "finished"


# --------------------------------------------------------------------------- the lease
def test_the_lease_is_renewed_while_the_session_runs(handoff_dir: Path) -> None:
    """A resumed session that runs (here: sleeps in one step) for several leases keeps its
    claim: no other worker may take it meanwhile."""
    path = stop_once(handoff_dir)
    seen: list[object] = []
    with SessionBudget.resume(path, lease_seconds=0.5, max_steps=10) as session:
        for _ in range(3):
            time.sleep(0.5)
            seen.append(status_of(handoff_dir))
            try:
                SessionBudget.resume(path)
            except HandoffClaimedError as exc:
                seen.append(exc.claimed_by)
        agent(session)
    assert seen == ["running", session.session_id] * 3
    assert status_of(handoff_dir) == "finished"


def test_a_session_that_ended_keeps_its_claim_after_the_lease(handoff_dir: Path) -> None:
    """A resumed session that completed with no record in the directory (handoff_dir=None)
    closes its claim: the handoff is not resumed again when the lease runs out."""
    path = stop_once(handoff_dir)
    with SessionBudget.resume(path, lease_seconds=0.2, handoff_dir=None, max_steps=10) as s:
        agent(s)
    time.sleep(0.5)
    assert pending_handoffs(handoff_dir) == []
    assert status_of(handoff_dir) == "ended"
    with pytest.raises(HandoffClaimedError, match=r"completed"):
        SessionBudget.resume(path)


_EXHAUST_THEN_DIE = """
import os, sys
from budgetkit import BudgetExhausted, SessionBudget, budget

@budget.step
def step():
    pass

session = SessionBudget.resume(sys.argv[1], lease_seconds=0.2, max_steps=1)
with session:
    try:
        step()
        step()
    except BudgetExhausted:
        os._exit(0)  # its handoff is written; the process dies before the block exits
"""


def test_a_handoff_whose_chain_moved_on_is_not_claimed_again(handoff_dir: Path) -> None:
    """A worker that wrote the next handoff of the chain and then died never closed its
    claim; when that lease expires the old handoff is still not claimable (the chain moved
    on), and pending_handoffs offers the new one."""
    path = stop_once(handoff_dir)
    subprocess.run(
        [sys.executable, "-c", _EXHAUST_THEN_DIE, str(path)],
        env=_env(),
        timeout=HANG,
        check=True,
    )
    time.sleep(0.4)
    with pytest.raises(HandoffClaimedError, match="continues it"):
        SessionBudget.resume(path)
    (pending,) = pending_handoffs(handoff_dir)
    assert pending.lineage.attempt == 2


def test_a_resumed_session_never_entered_lets_its_claim_lapse(handoff_dir: Path) -> None:
    """resume() claims; a session that is not entered before its lease expires loses the
    claim to the next worker, and entering it then raises instead of running twice."""
    path = stop_once(handoff_dir)
    idle = SessionBudget.resume(path, lease_seconds=0.2)
    time.sleep(0.4)
    assert status_of(handoff_dir) == "stale"
    taker = SessionBudget.resume(path, max_steps=10)
    with pytest.raises(HandoffClaimedError, match=taker.session_id), idle:
        pass
    with taker:
        agent(taker)
    assert status_of(handoff_dir) == "finished"


def test_a_holder_that_lost_its_claim_says_so_and_records_nothing(handoff_dir: Path) -> None:
    """A session whose claim was released by hand (--reclaim --force) while it ran warns at
    exit and writes no .failed record over the new state."""
    path = stop_once(handoff_dir)
    session = SessionBudget.resume(path)

    def released_meanwhile() -> None:
        with session:
            assert main(["chain", str(handoff_dir), "--reclaim", "root-1", "--force"]) == 0
            raise ValueError("too late")

    with pytest.warns(BudgetWarning, match="lost its claim"), pytest.raises(ValueError):
        released_meanwhile()
    assert not (handoff_dir / "root-1.failed").exists()
    assert status_of(handoff_dir) == "pending"


def test_racing_to_reclaim_an_expired_claim_exactly_one_wins(handoff_dir: Path) -> None:
    """Eight threads re-claim one expired claim at once: one session, seven
    HandoffClaimedError; the winner's claim is attempt 2."""
    path = stop_once(handoff_dir)
    SessionBudget.resume(path, lease_seconds=0.1)  # claimed, never entered
    time.sleep(0.3)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def worker() -> None:
        barrier.wait()
        try:
            outcomes.append(SessionBudget.resume(path).session_id)
        except HandoffClaimedError:
            outcomes.append("lost")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    assert len(outcomes) == 8
    assert outcomes.count("lost") == 7, outcomes
    winner = next(o for o in outcomes if o != "lost")
    assert claim_doc(handoff_dir)["claimed_by"] == winner
    assert claim_doc(handoff_dir)["attempt"] == 2


_RACE = """
import json, sys, time
from pathlib import Path
from budgetkit import HandoffClaimedError, SessionBudget

path, go = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    print(json.dumps(SessionBudget.resume(path, lease_seconds=60).session_id))
except HandoffClaimedError:
    print(json.dumps(None))
"""


def test_two_processes_racing_to_reclaim_an_expired_claim(
    handoff_dir: Path, tmp_path: Path
) -> None:
    """Of several processes re-claiming one expired claim at once, exactly one wins."""
    path = stop_once(handoff_dir)
    SessionBudget.resume(path, lease_seconds=0.1)
    time.sleep(0.3)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", _RACE, str(path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    go.touch()
    winners = []
    for proc in procs:
        out, err = proc.communicate(timeout=HANG)
        assert proc.returncode == 0, err
        winners.append(json.loads(out))
    won = [w for w in winners if w is not None]
    assert len(won) == 1, winners
    assert claim_doc(handoff_dir)["claimed_by"] == won[0]


def test_run_chain_retries_a_stale_handoff(handoff_dir: Path) -> None:
    """run_chain(handoff=...) continues a handoff whose claim expired."""
    path = stop_once(handoff_dir)
    SessionBudget.resume(path, lease_seconds=0.1)
    time.sleep(0.3)
    (pending,) = pending_handoffs(handoff_dir)
    assert run_chain(agent, handoff=pending, max_steps=10, handoff_dir=handoff_dir) == TASKS
    assert claim_doc(handoff_dir)["attempt"] == 2


def test_claim_records_its_holder_and_lease(handoff_dir: Path) -> None:
    """The claim names its holder (pid, host, a random holder id), its attempt and lease."""
    import socket

    path = stop_once(handoff_dir)
    session = SessionBudget.resume(path, lease_seconds=42)
    doc = json.loads((handoff_dir / "root-1.claim").read_text())
    assert doc["kind"] == "budgetkit.claim"
    assert doc["claimed_by"] == session.session_id
    assert doc["pid"] == os.getpid()
    assert doc["host"] == socket.gethostname()
    assert len(doc["holder"]) == 32
    assert int(doc["holder"], 16) >= 0
    assert doc["attempt"] == 1
    assert doc["lease_seconds"] == 42
    with session:
        pass


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("lease_seconds", 0),
        ("lease_seconds", -1),
        ("lease_seconds", float("nan")),
        ("lease_seconds", "60"),
        ("max_attempts", 0),
        ("max_attempts", 1.5),
        ("max_attempts", True),
    ],
)
def test_bad_lease_settings_are_refused(handoff_dir: Path, keyword: str, value: object) -> None:
    """lease_seconds is a positive finite number, max_attempts a positive int; nothing is
    claimed when one is wrong."""
    from budgetkit import BudgetConfigError, BudgetTypeError

    path = stop_once(handoff_dir)
    with pytest.raises((BudgetConfigError, BudgetTypeError), match=keyword):
        SessionBudget.resume(path, **{keyword: value})
    assert not (handoff_dir / "root-1.claim").exists()


# --------------------------------------------------------------------------- --reclaim
def test_reclaim_releases_a_stale_claim_and_refuses_a_live_one(
    handoff_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`budgetkit chain DIR --reclaim ID` releases a stale claim; a live one is refused with
    a clear message unless --force; attempts count from 1 again after a release."""
    path = stop_once(handoff_dir)
    live = SessionBudget.resume(path, lease_seconds=3600)
    assert main(["chain", str(handoff_dir), "--reclaim", "root-1"]) == 1
    err = capsys.readouterr().err
    assert "live" in err
    assert live.session_id in err
    assert "--force" in err
    assert "Traceback" not in err
    assert status_of(handoff_dir) == "running"
    assert main(["chain", str(handoff_dir), "--reclaim", "root-1", "--force"]) == 0
    assert "released" in capsys.readouterr().out
    (pending,) = pending_handoffs(handoff_dir)
    assert pending.attempts == 0
    # A stale claim needs no --force.
    SessionBudget.resume(path, lease_seconds=0.1)
    time.sleep(0.3)
    assert main(["chain", str(handoff_dir), "--reclaim", "root-1"]) == 0
    with SessionBudget.resume(path, max_steps=10) as session:
        agent(session)
    assert claim_doc(handoff_dir)["attempt"] == 1
    assert status_of(handoff_dir) == "finished"


def test_reclaim_gives_a_failed_handoff_another_go(handoff_dir: Path) -> None:
    """A handoff that failed max_attempts times can be retried by hand."""
    path = stop_once(handoff_dir)
    for _ in range(3):
        with pytest.raises(ValueError), SessionBudget.resume(path):
            raise ValueError
    assert status_of(handoff_dir) == "failed"
    assert main(["chain", str(handoff_dir), "--reclaim", "root-1"]) == 0
    assert [p.attempts for p in pending_handoffs(handoff_dir)] == [0]


def test_reclaim_errors(handoff_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An id with no claim, an unknown id and a bad id are one-line errors (exit 1 or 2)."""
    stop_once(handoff_dir)
    assert main(["chain", str(handoff_dir), "--reclaim", "root-1"]) == 1
    assert "not claimed" in capsys.readouterr().err
    assert main(["chain", str(handoff_dir), "--reclaim", "nobody"]) == 1
    assert "no handoff" in capsys.readouterr().err
    assert main(["chain", str(handoff_dir), "--reclaim", "../etc/passwd"]) == 2
    assert "session id" in capsys.readouterr().err
    assert main(["chain", str(handoff_dir), "--force"]) == 2
    assert "--reclaim" in capsys.readouterr().err


def test_chain_command_shows_running_stale_and_attempts(
    handoff_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`budgetkit chain` tells a live claim (running, who holds it) from a stale one."""
    path = stop_once(handoff_dir)
    holder = SessionBudget.resume(path, lease_seconds=0.2)
    assert main(["chain", str(handoff_dir)]) == 0
    out = capsys.readouterr().out
    assert "chain root-1: running" in out
    assert f"claimed by {holder.session_id}" in out
    assert "attempt 1 of 3" in out
    time.sleep(0.4)
    assert main(["chain", str(handoff_dir)]) == 0
    out = capsys.readouterr().out
    assert "chain root-1: stale" in out
    assert "lease expired" in out
    assert main(["chain", str(handoff_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    claim = doc["chains"][0]["sessions"][0]["claim"]
    assert claim["state"] == "stale"
    assert claim["claimed_by"] == holder.session_id
    assert claim["attempts"] == 1
    assert claim["pid"] == os.getpid()


def test_the_lease_holds_when_the_agent_changes_directory(
    handoff_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A handoff resumed by a relative path keeps its lease while the agent works in another
    directory (agents run tools with os.chdir)."""
    path = stop_once(handoff_dir)
    monkeypatch.chdir(path.parent)
    session = SessionBudget.resume(path.name, lease_seconds=0.3, max_steps=10)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with session:
        os.chdir(elsewhere)
        time.sleep(0.8)
        assert status_of(handoff_dir) == "running"
        os.chdir(path.parent)
    assert status_of(handoff_dir) == "finished"


def test_a_session_whose_handoff_could_not_be_written_is_retried(
    handoff_dir: Path, tmp_path: Path
) -> None:
    """A resumed session that stops on its limit but cannot write its handoff (here: a
    directory is in the way) has lost its work; it counts as a failed attempt, so the old
    handoff is retried instead of being closed for good."""
    path = stop_once(handoff_dir)
    other = tmp_path / "other"
    session = SessionBudget.resume(path, max_steps=1, handoff_dir=other)

    def stopped_without_a_handoff() -> None:
        with session:
            (other / f"{session.session_id}.json").mkdir(parents=True)
            agent(session)

    with pytest.raises(BudgetExhausted) as info:
        stopped_without_a_handoff()
    assert info.value.handoff_error is not None
    failed = json.loads((handoff_dir / "root-1.failed").read_text())
    assert failed["error_type"] == "IsADirectoryError"
    (pending,) = pending_handoffs(handoff_dir)
    assert (pending.attempts, pending.last_error) == (1, "IsADirectoryError")


def test_a_claim_written_before_leases_is_held_until_released(
    handoff_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A claim without a lease (written by an older budgetkit) never expires: the handoff
    stays running, --reclaim needs --force, and then it is pending again."""
    path = stop_once(handoff_dir)
    old = {"kind": "budgetkit.claim", "session_id": "root-1", "claimed_by": "old-worker"}
    (handoff_dir / "root-1.claim").write_text(json.dumps(old))
    os.utime(handoff_dir / "root-1.claim", (0, 0))  # however old
    assert status_of(handoff_dir) == "running"
    with pytest.raises(HandoffClaimedError, match=r"old-worker.*no lease"):
        SessionBudget.resume(path)
    assert main(["chain", str(handoff_dir), "--reclaim", "root-1"]) == 1
    assert "no lease" in capsys.readouterr().err
    assert main(["chain", str(handoff_dir), "--reclaim", "root-1", "--force"]) == 0
    with SessionBudget.resume(path, max_steps=10) as session:
        agent(session)
    assert status_of(handoff_dir) == "finished"


def test_ctrl_c_in_a_resumed_session_is_a_failed_attempt(handoff_dir: Path) -> None:
    """A resumed session interrupted by KeyboardInterrupt records it like any other failure,
    so its handoff is retried."""
    path = stop_once(handoff_dir)
    session = SessionBudget.resume(path)

    def interrupted() -> None:
        with session:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert json.loads((handoff_dir / "root-1.failed").read_text())["error_type"] == (
        "KeyboardInterrupt"
    )
    assert status_of(handoff_dir) == "pending"
