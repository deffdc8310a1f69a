"""The session log: atomic appends from many processes, records, corrupt lines."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from budgetkit import BudgetError, BudgetExhausted, BudgetTypeError, SessionBudget, budget
from budgetkit._session_log import (
    CorruptRecordWarning,
    SessionLogWarning,
    append_record,
    log_session,
    read_records,
    record_problem,
    session_log_path,
    session_record,
)

PROCESSES = 4
APPENDS = 200
PAD = 3000  # bytes per record: larger than any interleaving would leave intact


def record(n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "session_id": f"s{n}",
        "stop_reason": "completed",
        "limits": {"max_steps": 10},
        "usage": {
            "steps": n,
            "llm_calls": 0,
            "total_tokens": 0,
            "cost_usd": "0",
            "elapsed_seconds": 0.5,
        },
        **extra,
    }


def _writer(path: str, worker: int, start: Any) -> None:
    start.wait()
    for i in range(APPENDS):
        append_record(path, record(i, worker=worker, pad="x" * PAD))


# ---------------------------------------------------------------------------- appending
def test_append_and_read_round_trip(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "sessions.jsonl"  # the directory is created
    append_record(log, record(1))
    append_record(log, record(2, cost=Decimal("0.10"), when=datetime(2026, 1, 1, tzinfo=UTC)))
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    got = list(read_records(log))
    assert [n for n, _ in got] == [1, 2]
    assert got[0][1] == record(1)
    assert got[1][1]["cost"] == "0.10"
    assert got[1][1]["when"] == "2026-01-01 00:00:00+00:00"


def test_newlines_in_values_stay_on_one_line(tmp_path: Path) -> None:
    log = tmp_path / "s.jsonl"
    append_record(log, record(1, name="a\nb"))
    assert log.read_text().count("\n") == 1
    assert next(read_records(log))[1]["name"] == "a\nb"


def test_append_rejects_bad_records(tmp_path: Path) -> None:
    log = tmp_path / "s.jsonl"
    with pytest.raises(BudgetTypeError):
        append_record(log, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(BudgetTypeError, match="JSON"):
        append_record(log, {"x": float("nan")})
    assert not log.exists() or log.read_bytes() == b""


def test_append_after_a_torn_line_starts_a_new_line(tmp_path: Path) -> None:
    log = tmp_path / "s.jsonl"
    append_record(log, record(1))
    with log.open("ab") as handle:
        handle.write(b'{"session_id": "torn", "us')  # a writer died mid-line
    append_record(log, record(3))
    reports: list[tuple[Path, int, str]] = []
    got = list(read_records(log, on_corrupt=lambda *args: reports.append(args)))
    assert [(n, r["session_id"]) for n, r in got] == [(1, "s1"), (3, "s3")]
    assert [(p, n) for p, n, _ in reports] == [(log, 2)]


def test_concurrent_appends_from_processes(tmp_path: Path) -> None:
    log = tmp_path / "sessions.jsonl"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(log), w, start)) for w in range(PROCESSES)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b""
    docs = [json.loads(line) for line in lines[:-1]]  # every line is intact JSON
    assert len(docs) == PROCESSES * APPENDS
    seen = sorted((d["worker"], d["usage"]["steps"]) for d in docs)
    assert seen == [(w, i) for w in range(PROCESSES) for i in range(APPENDS)]
    assert all(len(d["pad"]) == PAD for d in docs)


# ---------------------------------------------------------------------------- reading
def test_corrupt_lines_are_warned_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "s.jsonl"
    append_record(log, record(1))
    with log.open("ab") as handle:
        handle.write(b"not json\n\n[1, 2]\n\xff\xfe\n")
    append_record(log, record(2))
    append_record(log, {"stop_reason": "completed"})  # JSON, but not a session record
    with pytest.warns(CorruptRecordWarning) as caught:
        got = list(read_records(log))
    assert [n for n, _ in got] == [1, 6]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4
    assert f"{log}:2: corrupt session record skipped: not valid JSON" in messages[0]
    assert f"{log}:4:" in messages[1]
    assert "not a JSON object" in messages[1]
    assert f"{log}:5:" in messages[2]
    assert "not UTF-8" in messages[2]
    assert f"{log}:7:" in messages[3]
    assert "usage" in messages[3]


def test_corrupt_lines_go_to_the_callback(tmp_path: Path) -> None:
    log = tmp_path / "s.jsonl"
    log.write_text('{"a": 1}\ngarbage\n')
    reports: list[tuple[Path, int, str]] = []
    got = list(read_records(log, on_corrupt=lambda *args: reports.append(args)))
    assert got == []
    assert [(p, n) for p, n, _ in reports] == [(log, 1), (log, 2)]
    assert list(read_records(log, validate=False, on_corrupt=lambda *a: None)) == [(1, {"a": 1})]


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_records(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"stop_reason": None}, "stop_reason"),
        ({"usage": "x"}, "usage is missing"),
        ({"limits": [1]}, "limits"),
    ],
)
def test_record_problem(change: dict[str, Any], problem: str) -> None:
    assert record_problem(record()) is None
    bad = {**record(), **change}
    assert problem in (record_problem(bad) or "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", -1),
        ("steps", 1.5),
        ("llm_calls", True),
        ("total_tokens", "5"),
        ("cost_usd", "abc"),
        ("cost_usd", "-0.5"),
        ("elapsed_seconds", "1"),
        ("elapsed_seconds", float("nan")),
    ],
)
def test_record_problem_usage_fields(field: str, value: object) -> None:
    bad = record()
    bad["usage"][field] = value
    assert f"usage.{field}" in (record_problem(bad) or "")
    del bad["usage"][field]
    assert f"usage.{field} is missing" in (record_problem(bad) or "")


# ---------------------------------------------------------------------------- records
def test_session_record_of_a_finished_session() -> None:
    with SessionBudget(max_steps=3, max_usd=0.5, handoff_dir=None, name="agent") as session:
        session.charge(usd=Decimal("0.01"), input_tokens=10, output_tokens=5)
    before = datetime.now(UTC)
    rec = session_record(session)
    assert rec["kind"] == "budgetkit.session"
    assert rec["schema_version"] == 1
    assert rec["session_id"] == session.session_id
    assert rec["parent_session_id"] is None
    assert rec["name"] == "agent"
    assert rec["limits"] == session.limits.as_dict()
    assert rec["limits"]["max_usd"] == "0.5"
    assert rec["usage"]["total_tokens"] == 15
    assert rec["usage"]["cost_usd"] == "0.01"
    assert rec["stop_reason"] == "completed"
    assert rec["stopped_by"] is None
    assert rec["handoff_path"] is None
    assert rec["duration_seconds"] == rec["usage"]["elapsed_seconds"]
    started = datetime.fromisoformat(rec["started_at"])
    ended = datetime.fromisoformat(rec["ended_at"])
    assert started.utcoffset() is not None
    assert started <= ended
    assert abs((ended - before).total_seconds()) < 5
    assert record_problem(rec) is None
    json.dumps(rec)


def test_session_record_of_an_exhausted_session(tmp_path: Path) -> None:
    @budget.step
    def work() -> None:
        return None

    def run() -> None:
        with SessionBudget(max_steps=2, handoff_dir=tmp_path) as session:
            sessions.append(session)
            for _ in range(3):
                work()

    sessions: list[SessionBudget] = []
    with pytest.raises(BudgetExhausted):
        run()
    s = sessions[0]
    rec = session_record(s, ended_at=datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC))
    assert rec["stop_reason"] == "max_steps"
    assert rec["stopped_by"] == s.session_id
    assert rec["usage"]["steps"] == 2
    assert rec["handoff_path"] == str(tmp_path / f"{s.session_id}.json")
    assert rec["ended_at"] == "2026-05-01T12:00:00.000+00:00"
    assert rec["started_at"] <= rec["ended_at"]


def test_session_record_of_a_running_session_is_an_error() -> None:
    session = SessionBudget(max_steps=3, handoff_dir=None)
    with pytest.raises(BudgetError, match="has not finished"):
        session_record(session)


def test_session_log_path() -> None:
    assert session_log_path(None, environ={}) is None
    assert session_log_path(None, environ={"BUDGETKIT_SESSION_LOG": " "}) is None
    env = {"BUDGETKIT_SESSION_LOG": "/var/log/s.jsonl"}
    assert session_log_path(None, environ=env) == Path("/var/log/s.jsonl")
    assert session_log_path("mine.jsonl", environ=env) == Path("mine.jsonl")
    with pytest.raises(BudgetTypeError):
        session_log_path(3, environ=env)  # type: ignore[arg-type]


def test_log_session_appends(tmp_path: Path) -> None:
    log = tmp_path / "s.jsonl"
    with SessionBudget(max_steps=3, handoff_dir=None) as session:
        pass
    assert log_session(session, environ={}) is None
    assert log_session(session, environ={"BUDGETKIT_SESSION_LOG": str(log)}) == log
    assert log_session(session, log) == log
    assert [r["session_id"] for _, r in read_records(log)] == [session.session_id] * 2


def test_log_session_warns_instead_of_raising(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with SessionBudget(max_steps=3, handoff_dir=None) as session:
        pass
    with pytest.warns(SessionLogWarning, match="could not append"):
        assert log_session(session, blocker / "s.jsonl") is None
