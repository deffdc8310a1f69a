"""Chains of sessions: lineage, chain-wide caps, run_chain, pending handoffs and claims."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from budgetkit import (
    BudgetExhausted,
    ChainCapError,
    ChainError,
    Handoff,
    HandoffClaimedError,
    HandoffError,
    SessionBudget,
    SessionUsage,
    budget,
    pending_handoffs,
    run_chain,
    run_chain_async,
)
from budgetkit._chainfiles import scan
from budgetkit._lineage import usage_from_dict
from budgetkit.cli import main
from budgetkit.ledgers.inprocess import InProcessLedgerSession

if TYPE_CHECKING:
    from pathlib import Path

TASKS = [f"task-{i}" for i in range(7)]
done: list[str] = []


@budget.step
def work(task: str) -> str:
    done.append(task)
    return task


@budget.step
async def awork(task: str) -> str:
    await asyncio.sleep(0)
    done.append(task)
    return task


@pytest.fixture(autouse=True)
def _clear_done() -> None:
    done.clear()


def agent(session: SessionBudget, tasks: list[str] = TASKS) -> list[str]:
    """Work through the pending tasks (or all of them), one step and $0.01 per task."""
    todo = session.resumed_from.pending_tasks if session.resumed_from else tasks
    for i, task in enumerate(todo):
        session.update_handoff(pending_tasks=todo[i:])
        work(task)
        session.charge(usd=Decimal("0.01"))
    return list(done)


def ten_tasks(session: SessionBudget) -> list[str]:
    """The agent, with ten tasks."""
    return agent(session, [f"task-{i}" for i in range(10)])


def handoffs_in(directory: Path) -> list[Handoff]:
    """Every handoff of a directory, by attempt."""
    found = [Handoff.load(p) for p in directory.glob("*.json")]
    return sorted(found, key=lambda h: h.lineage.attempt if h.lineage else 0)


def stop_once(directory: Path, **kwargs: Any) -> BudgetExhausted:
    """A first session that runs into max_steps=2 and hands off."""
    kwargs.setdefault("max_steps", 2)
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(handoff_dir=directory, **kwargs) as s,
    ):
        agent(s)
    return info.value


# --------------------------------------------------------------------------- must show
def test_three_session_chain_finishes_with_cumulative_usage_the_sum(handoff_dir: Path) -> None:
    """A chain of three sessions finishes; every figure of its cumulative usage is the sum."""
    result = run_chain(agent, max_steps=3, max_total_usd=1, handoff_dir=handoff_dir)
    assert result == TASKS
    handoffs = handoffs_in(handoff_dir)
    assert len(handoffs) == 2
    done_files = list(handoff_dir.glob("*.done"))
    assert len(done_files) == 1
    final = json.loads(done_files[0].read_text())
    records = [*(h.to_dict() for h in handoffs), final]
    root = handoffs[0].session_id
    ids = [r["session_id"] for r in records]
    for attempt, record in enumerate(records, start=1):
        lineage = record["extra"]["lineage"]
        assert lineage["root_session_id"] == root
        assert lineage["attempt"] == attempt
        assert lineage["session_ids"] == ids[:attempt]
        assert lineage["caps"] == {
            "max_total_usd": "1",
            "max_total_steps": None,
            "max_sessions": None,
        }
    usages = [usage_from_dict(r["usage"], "test") for r in records]
    assert [u["steps"] for u in usages] == [3, 3, 1]
    cumulative = usage_from_dict(final["extra"]["lineage"]["cumulative_usage"], "test")
    for key, value in cumulative.items():
        total = sum((u[key] for u in usages), type(value)(0))
        if key == "elapsed_seconds":
            assert value == pytest.approx(total, abs=1e-5)
        else:
            assert value == total, key
    assert cumulative["cost_usd"] == Decimal("0.07")
    assert scan(handoff_dir).chains[0].status == "finished"
    assert pending_handoffs(handoff_dir) == []


def test_max_total_usd_stops_a_chain_whose_sessions_are_each_within_budget(
    handoff_dir: Path,
) -> None:
    """Each session stays within max_usd, yet the chain stops on max_total_usd."""
    with pytest.raises(BudgetExhausted) as info:
        run_chain(
            ten_tasks,
            max_steps=3,
            max_usd=Decimal("0.04"),
            max_total_usd=Decimal("0.075"),
            handoff_dir=handoff_dir,
        )
    exc = info.value
    assert exc.reason == "max_total_usd"
    assert "Reason: max_total_usd" in str(exc)
    handoffs = handoffs_in(handoff_dir)
    assert [h.reason for h in handoffs] == ["max_steps", "max_steps", "max_total_usd"]
    for h in handoffs:
        assert Decimal(h.usage["cost_usd"]) <= Decimal("0.04")  # within its own budget
    lineage = exc.handoff.lineage
    assert lineage is not None
    assert lineage.attempt == 3
    assert lineage.cumulative_usage["cost_usd"] == Decimal("0.08")  # the crossing call completed
    assert lineage.cumulative_usage["cost_usd"] == sum(
        Decimal(h.usage["cost_usd"]) for h in handoffs
    )
    assert len(done) == 8  # the eighth task crossed the cap; the ninth never ran
    view = scan(handoff_dir).chains[0]
    assert view.status == "over caps"
    assert pending_handoffs(handoff_dir) == []


def test_two_processes_racing_to_claim_one_pending_handoff(
    handoff_dir: Path, tmp_path: Path
) -> None:
    """Of two processes resuming the same pending handoffs at once, exactly one wins each."""
    roots = []
    for i in range(5):
        roots.append(stop_once(handoff_dir, session_id=f"chain-{i}").session_id)
    go = tmp_path / "go"
    script = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        from budgetkit import HandoffClaimedError, pending_handoffs

        directory, go = Path(sys.argv[1]), Path(sys.argv[2])
        pending = pending_handoffs(directory)
        print(json.dumps({"ready": len(pending)}), flush=True)
        while not go.exists():
            time.sleep(0.001)
        won = {}
        for item in pending:
            try:
                session = item.resume()
            except HandoffClaimedError as exc:
                assert exc.session_id == item.session_id
                continue
            won[item.session_id] = session.session_id
        print(json.dumps(won), flush=True)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", script, str(handoff_dir), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"ready": 5}
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    for root in roots:
        winners = [r[root] for r in results if root in r]
        assert len(winners) == 1, results
        claim = json.loads((handoff_dir / f"{root}.claim").read_text())
        assert claim["claimed_by"] == winners[0]
    assert pending_handoffs(handoff_dir) == []


@pytest.mark.asyncio
async def test_run_chain_async_with_an_async_agent(handoff_dir: Path) -> None:
    """run_chain_async awaits an async agent in each session until it returns."""
    seen: list[tuple[int, Any]] = []

    async def async_agent(session: SessionBudget) -> str:
        resumed = session.resumed_from
        seen.append((session.attempt, resumed.session_id if resumed else None))
        todo = resumed.pending_tasks if resumed else TASKS
        for i, task in enumerate(todo):
            session.update_handoff(pending_tasks=todo[i:])
            await awork(task)
        return "report"

    result = await run_chain_async(async_agent, max_steps=3, handoff_dir=handoff_dir)
    assert result == "report"
    assert done == TASKS
    assert [attempt for attempt, _ in seen] == [1, 2, 3]
    assert seen[0][1] is None
    assert seen[1][1] is not None
    assert seen[2][1] is not None
    assert scan(handoff_dir).chains[0].status == "finished"


# --------------------------------------------------------------------------- lineage and caps
def test_every_handoff_records_its_lineage(handoff_dir: Path) -> None:
    """A first session's handoff names its chain, attempt 1, its caps and its usage so far."""
    exc = stop_once(handoff_dir, session_id="root-1", max_total_steps=50, max_sessions=4)
    lineage = Handoff.load(handoff_dir / "root-1.json").lineage
    assert lineage is not None
    assert lineage.root_session_id == "root-1"
    assert lineage.attempt == 1
    assert lineage.session_ids == ("root-1",)
    assert lineage.caps.max_total_steps == 50
    assert lineage.caps.max_sessions == 4
    assert lineage.cumulative_usage["steps"] == exc.usage.steps == 2
    assert lineage.cumulative_usage["cost_usd"] == exc.usage.cost_usd == Decimal("0.02")


def test_resume_keeps_the_caps_and_adds_to_the_chain_usage(handoff_dir: Path) -> None:
    """A resumed session keeps the chain caps and counts the chain's usage before it."""
    stop_once(handoff_dir, session_id="root-1", max_total_steps=5, max_total_usd=1)
    session = SessionBudget.resume(handoff_dir / "root-1.json", max_steps=10)
    assert session.chain_caps.max_total_steps == 5
    assert session.chain_caps.max_total_usd == Decimal(1)
    assert (session.root_session_id, session.attempt) == ("root-1", 2)
    with session:
        work("x")
        assert session.remaining.steps == 2  # 5 for the chain, 3 of them used
        assert session.chain_usage.steps == 3
        assert session.chain_usage.cost_usd == Decimal("0.02")
        assert session.lineage.session_ids == ("root-1", session.session_id)


def test_max_total_steps_admits_exactly_n_steps_across_the_chain(handoff_dir: Path) -> None:
    """max_total_steps=5 over sessions of 3 steps: 5 steps run, then reason max_total_steps."""
    with pytest.raises(BudgetExhausted) as info:
        run_chain(agent, max_steps=3, max_total_steps=5, handoff_dir=handoff_dir)
    assert info.value.reason == "max_total_steps"
    assert done == TASKS[:5]
    assert [h.reason for h in handoffs_in(handoff_dir)] == ["max_steps", "max_total_steps"]


def test_max_sessions_stops_run_chain_before_a_third_session(handoff_dir: Path) -> None:
    """With max_sessions=2 the chain ends after two sessions, reason max_sessions."""
    with pytest.raises(BudgetExhausted) as info:
        run_chain(agent, max_steps=3, max_sessions=2, handoff_dir=handoff_dir)
    exc = info.value
    assert exc.reason == "max_sessions"
    assert isinstance(exc.__cause__, ChainCapError)
    assert len(done) == 6
    second = handoffs_in(handoff_dir)[-1]
    assert exc.session_id == second.session_id
    assert not (handoff_dir / f"{second.session_id}.claim").exists()
    assert scan(handoff_dir).chains[0].status == "over caps"
    assert pending_handoffs(handoff_dir) == []


def test_a_session_with_chain_caps_leaves_the_fast_step_path() -> None:
    """Chain caps on steps or USD turn the fast path off (the general rules decide);
    sessions without them keep it. max_sessions is judged at resume, never at a boundary."""
    assert SessionBudget(max_steps=3, handoff_dir=None).boundary.rules().plain
    assert not SessionBudget(max_total_steps=3, handoff_dir=None).boundary.rules().plain
    assert not SessionBudget(max_total_usd=1, handoff_dir=None).boundary.rules().plain
    assert SessionBudget(max_sessions=3, handoff_dir=None).boundary.rules().plain
    with SessionBudget(max_total_steps=3, handoff_dir=None) as s:
        handle = s.boundary.handle
        assert isinstance(handle, InProcessLedgerSession)
        assert handle.fast_step_cap == -1


def test_a_reservation_past_max_total_usd_is_refused() -> None:
    """reserve() is judged against the chain's USD cap too."""
    s = SessionBudget(max_total_usd=Decimal("0.05"), handoff_dir=None)
    with pytest.raises(BudgetExhausted) as info, s, s.reserve(usd=Decimal("0.06")):
        pass
    assert info.value.reason == "max_total_usd"


def test_a_handoff_without_lineage_starts_a_chain_rooted_at_it(handoff_dir: Path) -> None:
    """A handoff written before lineage existed resumes as the root of a new chain."""
    stop_once(handoff_dir, session_id="old-1")
    path = handoff_dir / "old-1.json"
    doc = json.loads(path.read_text())
    doc["extra"] = {}
    path.write_text(json.dumps(doc))
    session = SessionBudget.resume(path)
    assert (session.root_session_id, session.attempt) == ("old-1", 2)
    assert session.chain_usage.steps == 2


# --------------------------------------------------------------------------- bad input
def forge(path: Path, **changes: Any) -> None:
    """Rewrite fields of a handoff file (lineage keys go under extra.lineage)."""
    doc = json.loads(path.read_text())
    lineage = doc["extra"]["lineage"]
    for key, value in changes.items():
        (lineage if key in lineage else doc)[key] = value
    path.write_text(json.dumps(doc))


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a directory and its bytes."""
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_resuming_a_chain_over_its_caps_is_refused_before_any_work(handoff_dir: Path) -> None:
    """A chain over max_total_usd cannot be resumed; nothing is claimed or written."""
    with pytest.raises(BudgetExhausted):
        run_chain(ten_tasks, max_steps=3, max_total_usd=Decimal("0.075"), handoff_dir=handoff_dir)
    last = handoffs_in(handoff_dir)[-1]
    before = snapshot(handoff_dir)
    ran = len(done)
    with pytest.raises(ChainCapError) as info:
        SessionBudget.resume(handoff_dir / f"{last.session_id}.json")
    err = info.value
    assert err.reason == "max_total_usd"
    assert err.session_id == last.session_id
    assert last.session_id in str(err)
    assert err.root_session_id in str(err)
    assert isinstance(err, ValueError)
    assert snapshot(handoff_dir) == before
    assert len(done) == ran
    # A larger cap continues it.
    with SessionBudget.resume(handoff_dir / f"{last.session_id}.json", max_total_usd=1) as s:
        assert s.attempt == 4


@pytest.mark.parametrize(
    ("cap", "value"),
    [("max_total_usd", Decimal("0.01")), ("max_total_steps", 2), ("max_sessions", 1)],
)
def test_caps_smaller_than_what_the_chain_used_are_refused(
    cap: str, value: Any, handoff_dir: Path
) -> None:
    """Caps given to resume() below the chain's usage raise ChainCapError naming the cap."""
    stop_once(handoff_dir, session_id="root-1")  # 2 steps, $0.02, 1 session
    before = snapshot(handoff_dir)
    with pytest.raises(ChainCapError, match=rf"root-1.*{cap}") as info:
        SessionBudget.resume(handoff_dir / "root-1.json", **{cap: value})
    assert info.value.reason == cap
    assert snapshot(handoff_dir) == before


def test_a_claimed_handoff_cannot_be_resumed_again(handoff_dir: Path) -> None:
    """The second resume of one handoff file raises HandoffClaimedError naming both sessions."""
    stop_once(handoff_dir, session_id="root-1")
    first = SessionBudget.resume(handoff_dir / "root-1.json", session_id="worker-a")
    before = snapshot(handoff_dir)
    with pytest.raises(HandoffClaimedError, match=r"'root-1'.*'worker-a'") as info:
        SessionBudget.resume(handoff_dir / "root-1.json", session_id="worker-b")
    assert info.value.claimed_by == first.session_id
    assert isinstance(info.value, ChainError)
    assert snapshot(handoff_dir) == before


def test_threads_racing_to_resume_one_handoff_exactly_one_wins(handoff_dir: Path) -> None:
    """Eight threads resume the same path at once: one session, seven HandoffClaimedError."""
    stop_once(handoff_dir, session_id="root-1")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def worker() -> None:
        barrier.wait()
        try:
            SessionBudget.resume(handoff_dir / "root-1.json")
            outcomes.append("won")
        except HandoffClaimedError:
            outcomes.append("lost")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]


def test_a_handoff_of_another_chain_is_refused_as_a_continuation(handoff_dir: Path) -> None:
    """resume(chain=...) and run_chain(chain=...) refuse a handoff of a different chain."""
    stop_once(handoff_dir, session_id="chain-a")
    stop_once(handoff_dir, session_id="chain-b")
    with pytest.raises(ChainError, match=r"'chain-b'.*'chain-a'"):
        SessionBudget.resume(handoff_dir / "chain-b.json", chain="chain-a")
    with pytest.raises(ChainError, match=r"'chain-b'.*'chain-a'"):
        run_chain(agent, handoff=handoff_dir / "chain-b.json", chain="chain-a")
    assert not list(handoff_dir.glob("*.claim"))


def test_a_parent_file_of_another_chain_is_refused(handoff_dir: Path) -> None:
    """A handoff whose parent's file belongs to another chain is refused, and reported."""
    stop_once(handoff_dir, session_id="q")
    with (
        pytest.raises(BudgetExhausted),
        SessionBudget.resume(handoff_dir / "q.json", session_id="p") as s,
    ):
        agent(s)
    # x claims that p is the root of its chain; p's own file says p continues q.
    stop_once(handoff_dir, session_id="x")
    forge(
        handoff_dir / "x.json",
        parent_session_id="p",
        root_session_id="p",
        attempt=2,
        session_ids=["p", "x"],
    )
    before = snapshot(handoff_dir)
    with pytest.raises(ChainError, match=r"'x'.*'p'.*chain 'q'"):
        SessionBudget.resume(handoff_dir / "x.json")
    assert snapshot(handoff_dir) == before
    problems = scan(handoff_dir).problems
    assert len(problems) == 1
    assert "'x'" in problems[0]
    assert "'q'" in problems[0]


def test_a_cycle_in_the_parent_links_is_refused(handoff_dir: Path) -> None:
    """r continues a, a continues r: resume and the directory scan name the cycle."""
    stop_once(handoff_dir, session_id="r")
    with (
        pytest.raises(BudgetExhausted),
        SessionBudget.resume(handoff_dir / "r.json", session_id="a") as s,
    ):
        agent(s)
    (handoff_dir / "r.claim").unlink()
    forge(
        handoff_dir / "r.json",
        parent_session_id="a",
        root_session_id="a",
        attempt=2,
        session_ids=["a", "r"],
    )
    with pytest.raises(ChainError, match="cycle"):
        SessionBudget.resume(handoff_dir / "a.json")
    with pytest.raises(ChainError, match="cycle"):
        SessionBudget.resume(handoff_dir / "r.json")
    problems = scan(handoff_dir).problems
    assert len(problems) == 2
    assert all("cycle" in p for p in problems)
    assert main(["chain", str(handoff_dir)]) == 1


def test_a_lineage_listing_a_session_twice_is_a_corrupt_handoff(handoff_dir: Path) -> None:
    """A lineage that lists a session twice fails Handoff.load, naming the session."""
    stop_once(handoff_dir, session_id="r")
    forge(handoff_dir / "r.json", session_ids=["r", "r"], attempt=2, parent_session_id="r")
    with pytest.raises(HandoffError, match=r"'r' twice"):
        Handoff.load(handoff_dir / "r.json")


def test_resuming_under_an_id_already_in_the_chain_is_a_cycle(handoff_dir: Path) -> None:
    """resume(session_id=<an id of the chain>) raises ChainError; nothing is claimed."""
    stop_once(handoff_dir, session_id="r")
    with pytest.raises(ChainError, match=r"'r'.*cycle"):
        SessionBudget.resume(handoff_dir / "r.json", session_id="r", handoff_dir=handoff_dir / "x")
    assert not (handoff_dir / "r.claim").exists()


def test_resuming_under_the_id_of_an_existing_handoff_would_overwrite_it(
    handoff_dir: Path,
) -> None:
    """A resumed session whose handoff file already exists is refused; the file is kept."""
    stop_once(handoff_dir, session_id="r")
    stop_once(handoff_dir, session_id="other")
    before = snapshot(handoff_dir)
    with pytest.raises(ChainError, match=r"'other'.*overwritten"):
        SessionBudget.resume(handoff_dir / "r.json", session_id="other")
    assert snapshot(handoff_dir) == before


def test_chain_errors_survive_pickling() -> None:
    """ChainCapError and HandoffClaimedError cross process boundaries with their fields."""
    import pickle

    cap = ChainCapError("m", reason="max_sessions", session_id="s", root_session_id="r")
    copy = pickle.loads(pickle.dumps(cap))
    assert (str(copy), copy.reason, copy.session_id, copy.root_session_id) == (
        "m",
        "max_sessions",
        "s",
        "r",
    )
    claimed = pickle.loads(pickle.dumps(HandoffClaimedError("c", session_id="s", claimed_by="w")))
    assert (str(claimed), claimed.claimed_by) == ("c", "w")


# --------------------------------------------------------------------------- run_chain
def test_run_chain_returns_at_once_when_the_agent_fits(handoff_dir: Path) -> None:
    """An agent that fits in one session runs once and leaves no files."""
    assert run_chain(agent, max_steps=50, handoff_dir=handoff_dir) == TASKS
    assert not handoff_dir.exists()


def test_run_chain_continues_a_given_pending_handoff(handoff_dir: Path) -> None:
    """run_chain(handoff=pending) claims it and finishes the chain."""
    stop_once(handoff_dir, session_id="root-1", max_steps=3)
    (pending,) = pending_handoffs(handoff_dir)
    assert run_chain(agent, handoff=pending, max_steps=3) == TASKS
    assert (handoff_dir / "root-1.claim").exists()
    assert scan(handoff_dir).chains[0].status == "finished"


def test_run_chain_lets_other_errors_propagate(handoff_dir: Path) -> None:
    """An error that is not budget exhaustion propagates; the failed attempt is recorded and
    the handoff is pending again (it was "running" for good before claims were leases)."""
    calls: list[int] = []

    def failing(session: SessionBudget) -> None:
        calls.append(session.attempt)
        if session.attempt == 2:
            raise RuntimeError("tool broke")
        agent(session)

    with pytest.raises(RuntimeError, match="tool broke"):
        run_chain(failing, max_steps=3, handoff_dir=handoff_dir)
    assert calls == [1, 2]
    (view,) = scan(handoff_dir).chains
    assert view.status == "pending"
    failed = json.loads(view.newest.path.with_suffix(".failed").read_text())
    assert (failed["error_type"], failed["attempt"]) == ("RuntimeError", 1)


def test_run_chain_does_not_resume_an_enclosing_sessions_exhaustion(handoff_dir: Path) -> None:
    """When an enclosing session runs out, its BudgetExhausted propagates unchanged."""
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(max_steps=2, handoff_dir=None) as outer,
    ):
        run_chain(agent, max_steps=50, handoff_dir=handoff_dir)
    assert info.value.session_id == outer.session_id
    assert len(done) == 2


def test_run_chain_rejects_async_agents_and_raise_on_exhausted() -> None:
    """run_chain points async agents to run_chain_async and refuses raise_on_exhausted."""

    async def async_agent(session: SessionBudget) -> None:
        pass

    with pytest.raises(TypeError, match="run_chain_async"):
        run_chain(async_agent, handoff_dir=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="raise_on_exhausted"):
        run_chain(agent, raise_on_exhausted=False)


# --------------------------------------------------------------------------- pending handoffs
def test_pending_handoffs_are_the_unresumed_newest_handoffs_oldest_first(
    handoff_dir: Path,
) -> None:
    """Oldest first by creation time; claimed, finished and over-cap chains are left out."""
    import time

    for name in ("z-first", "m-second", "a-third", "claimed", "capped"):
        stop_once(handoff_dir, session_id=name, max_sessions=1 if name == "capped" else None)
        time.sleep(0.005)
    SessionBudget.resume(handoff_dir / "claimed.json")
    found = pending_handoffs(handoff_dir)
    assert [p.session_id for p in found] == ["z-first", "m-second", "a-third"]
    assert found[0].root_session_id == "z-first"
    assert found[0].lineage.attempt == 1
    assert pending_handoffs(handoff_dir / "missing") == []


# --------------------------------------------------------------------------- command line
def test_chain_command_shows_chains_usage_caps_and_state(
    handoff_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`budgetkit chain DIR` lists each chain, its sessions, totals against caps, and state."""
    run_chain(agent, max_steps=3, max_total_usd=1, max_sessions=5, handoff_dir=handoff_dir)
    stop_once(handoff_dir, session_id="waiting", max_total_steps=10)
    assert main(["chain", str(handoff_dir)]) == 0
    out = capsys.readouterr().out
    assert "finished, 3 session(s) on file" in out
    assert "total: 7 steps, $0.0700 of $1.0000, 0 LLM calls, 3 session(s) of 5" in out
    assert "chain waiting: pending, 1 session(s) on file" in out
    assert "total: 2 steps of 10" in out
    assert main(["chain", str(handoff_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    states = {c["root_session_id"]: c["status"] for c in doc["chains"]}
    assert states["waiting"] == "pending"
    assert sorted(states.values()) == ["finished", "pending"]
    assert doc["problems"] == []


def test_chain_command_reports_unreadable_files_and_missing_directories(
    handoff_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupt file or a missing directory is a one-line error and exit code 1."""
    stop_once(handoff_dir, session_id="ok")
    (handoff_dir / "broken.json").write_text("{")
    assert main(["chain", str(handoff_dir)]) == 1
    captured = capsys.readouterr()
    assert "chain ok: pending" in captured.out
    assert "broken.json" in captured.err
    assert "Traceback" not in captured.err
    assert main(["chain", str(handoff_dir / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_chain_usage_is_a_session_usage(handoff_dir: Path) -> None:
    """session.chain_usage is a SessionUsage summing the chain so far."""
    with SessionBudget(handoff_dir=handoff_dir) as s:
        work("x")
        assert isinstance(s.chain_usage, SessionUsage)
        assert s.chain_usage.steps == 1
