"""The handoff file: contents, atomic 0600 write, failures, Handoff.load, resume."""

from __future__ import annotations

import json
import os
import stat
import threading
import warnings
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from budgetkit import (
    BudgetConfigError,
    BudgetExhausted,
    BudgetTypeError,
    BudgetWarning,
    Handoff,
    HandoffError,
    SessionBudget,
    _config,
    _files,
    budget,
)

ran: list[int] = []


@budget.step
def tool(i: int = 0) -> int:
    ran.append(i)
    return i


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    ran.clear()


def run(session: SessionBudget, steps: int = 1000) -> None:
    """Enter ``session`` and call ``tool`` up to ``steps`` times."""
    with session:
        for i in range(steps):
            tool(i)


def exhaust(handoff_dir: Any, **kwargs: Any) -> tuple[SessionBudget, BudgetExhausted]:
    """Run a session with max_steps=2 (unless given) into exhaustion."""
    kwargs.setdefault("max_steps", 2)
    s = SessionBudget(handoff_dir=handoff_dir, **kwargs)
    with pytest.raises(BudgetExhausted) as info:
        run(s)
    return s, info.value


# --------------------------------------------------------------------------- contents
def test_handoff_file_schema(handoff_dir: Path) -> None:
    """The handoff is handoff_dir/<session_id>.json with every documented key."""
    s, exc = exhaust(handoff_dir, max_steps=3, max_usd=Decimal("2.50"), session_id="agent-7")
    path = handoff_dir / "agent-7.json"
    assert exc.handoff_path == path
    doc = json.loads(path.read_text())
    for key in (
        "schema_version",
        "session_id",
        "parent_session_id",
        "stopped_at_step",
        "reason",
        "limits",
        "usage",
        "pending_tasks",
        "context_summary",
        "resume_instructions",
        "created_at",
    ):
        assert key in doc, key
    assert doc["schema_version"] == 1
    assert doc["session_id"] == "agent-7"
    assert doc["parent_session_id"] is None
    assert doc["stopped_at_step"] == 3
    assert doc["reason"] == "max_steps"
    assert doc["limits"]["max_steps"] == 3
    assert doc["limits"]["max_usd"] == "2.50"
    assert doc["limits"]["max_tokens"] is None
    assert doc["usage"]["steps"] == 3
    assert doc["usage"]["cost_usd"] == "0"
    assert doc["pending_tasks"] == []
    assert doc["context_summary"] is None
    assert "resume" in doc["resume_instructions"]
    assert datetime.fromisoformat(doc["created_at"]).utcoffset() is not None
    assert s.result is not None
    assert s.result.handoff_path == path


def test_handoff_mode_0600(handoff_dir: Path) -> None:
    """The handoff file is created with mode 0600."""
    _, exc = exhaust(handoff_dir)
    assert exc.handoff_path is not None
    assert stat.S_IMODE(exc.handoff_path.stat().st_mode) == 0o600


def test_update_handoff_contents_written(handoff_dir: Path) -> None:
    """update_handoff() values end up in the file; None keeps the previous value."""
    with SessionBudget(max_steps=1, handoff_dir=handoff_dir) as s:
        s.update_handoff(
            pending_tasks=["a", {"b": 1}],
            context_summary="did x",
            resume_instructions="do y next",
        )
        s.update_handoff(pending_tasks=["b"])  # others kept
        tool()
        with pytest.raises(BudgetExhausted) as info:
            tool()
    doc = json.loads(info.value.handoff_path.read_text())  # type: ignore[union-attr]
    assert doc["pending_tasks"] == ["b"]
    assert doc["context_summary"] == "did x"
    assert doc["resume_instructions"] == "do y next"
    assert info.value.handoff.pending_tasks == ["b"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"pending_tasks": "task"}, "pending_tasks"),
        ({"pending_tasks": [object()]}, "pending_tasks"),
        ({"context_summary": 5}, "context_summary"),
        ({"resume_instructions": ["x"]}, "resume_instructions"),
    ],
)
def test_update_handoff_rejects_bad_values(kwargs: dict[str, Any], name: str) -> None:
    """update_handoff() rejects values that are not the right type or not JSON-serialisable."""
    s = SessionBudget(handoff_dir=None)
    with pytest.raises(BudgetTypeError, match=name):
        s.update_handoff(**kwargs)


def test_handoff_exists_before_exception_is_seen(handoff_dir: Path) -> None:
    """By the time BudgetExhausted reaches the caller the file is complete and loadable."""
    with SessionBudget(max_steps=1, handoff_dir=handoff_dir) as s:
        tool()
        with pytest.raises(BudgetExhausted) as info:
            tool()
        # Read while still inside the session, straight after the raise.
        assert info.value.handoff_path is not None
        assert Handoff.load(info.value.handoff_path) == info.value.handoff
    assert s.exhausted


def test_handoff_dir_none_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """handoff_dir=None writes no file but still attaches the handoff to the exception."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(_config.HANDOFF_DIR_ENV, raising=False)
    _, exc = exhaust(None)
    assert exc.handoff_path is None
    assert exc.handoff_error is None
    assert exc.handoff.reason == "max_steps"
    assert list(tmp_path.iterdir()) == []


def test_default_handoff_dir_is_cwd_handoffs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without handoff_dir the file goes to ./handoffs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(_config.HANDOFF_DIR_ENV, raising=False)
    s = SessionBudget(max_steps=1)
    with pytest.raises(BudgetExhausted) as info:
        run(s)
    assert info.value.handoff_path is not None
    assert info.value.handoff_path.resolve() == tmp_path / "handoffs" / f"{s.session_id}.json"
    assert (tmp_path / "handoffs" / f"{s.session_id}.json").is_file()


def test_env_overrides_default_handoff_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BUDGETKIT_HANDOFF_DIR overrides the default directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGETKIT_HANDOFF_DIR", str(tmp_path / "env-dir"))
    s = SessionBudget(max_steps=1)
    with pytest.raises(BudgetExhausted):
        run(s)
    assert (tmp_path / "env-dir" / f"{s.session_id}.json").is_file()
    assert not (tmp_path / "handoffs").exists()


# --------------------------------------------------------------------------- atomic write
def test_temp_file_complete_and_private_before_rename(
    handoff_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At rename time the temp file (same dir) is complete, fsynced, 0600; the target is absent."""
    events: list[str] = []
    real_replace, real_fsync = os.replace, os.fsync

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        src, dst = Path(src), Path(dst)
        events.append("replace")
        assert src.parent == dst.parent == handoff_dir
        assert not dst.exists()
        assert stat.S_IMODE(src.stat().st_mode) == 0o600
        doc = json.loads(src.read_text())  # complete, parseable
        assert doc["reason"] == "max_steps"
        real_replace(src, dst)

    monkeypatch.setattr(_files.os, "replace", replace)
    monkeypatch.setattr(_files.os, "fsync", fsync)
    _, exc = exhaust(handoff_dir)
    assert events == ["fsync", "replace", "fsync"]  # file, rename, then the directory
    assert [p.name for p in handoff_dir.iterdir()] == [exc.handoff_path.name]  # type: ignore[union-attr]


def test_reader_never_sees_partial_file(handoff_dir: Path) -> None:
    """A reader polling the path while 150 sessions overwrite it only ever parses whole documents.

    The sessions share one session_id, so each exhaustion replaces the same file; a writer
    that truncated and rewrote in place would let the reader see empty or partial JSON.
    """
    path = handoff_dir / "shared.json"
    stop = threading.Event()
    reads: list[int] = []
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            try:
                doc = json.loads(text)
            except ValueError:
                bad.append(text)
                continue
            reads.append(len(doc["pending_tasks"]))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(150):
            with SessionBudget(max_steps=1, session_id="shared", handoff_dir=handoff_dir) as s:
                s.update_handoff(pending_tasks=["x" * 200] * (i % 40))
                tool()
                with pytest.raises(BudgetExhausted):
                    tool()
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert reads  # the reader did observe files
    assert [p.name for p in handoff_dir.iterdir()] == ["shared.json"]  # no temp files left


def test_write_failure_still_raises_budget_error(tmp_path: Path) -> None:
    """A handoff that cannot be written still raises BudgetExhausted, with the failure attached,
    and its message says it cannot be resumed from a file: the path and the OS error."""
    blocker = tmp_path / "not-a-dir"
    s = SessionBudget(handoff_dir=blocker, max_steps=2)

    def run_blocked() -> None:
        with s:
            blocker.write_text("I am a file")  # the directory is taken after the start
            while True:
                tool()

    with pytest.raises(BudgetExhausted) as info:
        run_blocked()
    exc = info.value
    assert exc.reason == "max_steps"
    assert exc.handoff_path is None
    assert isinstance(exc.handoff_error, OSError)
    assert any("handoff could not be written" in n for n in exc.__notes__)
    assert exc.handoff.stopped_at_step == 2
    assert blocker.read_text() == "I am a file"
    target = blocker / f"{s.session_id}.json"
    assert str(exc).endswith(
        f"Resumable: false: the handoff could not be written to {str(target)!r} "
        f"({type(exc.handoff_error).__name__}: {exc.handoff_error})."
    )


def test_an_unusable_handoff_dir_is_refused_when_the_session_starts(tmp_path: Path) -> None:
    """handoff_dir is checked when the session starts, not when it ends: a path under a file
    is a BudgetConfigError naming it, and no step runs."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("I am a file")
    s = SessionBudget(handoff_dir=blocker / "handoffs", max_steps=2)
    with pytest.raises(BudgetConfigError, match="not-a-dir"), s:
        tool()
    assert ran == []


def test_a_world_writable_handoff_dir_warns(tmp_path: Path) -> None:
    """A world-writable handoff_dir without the sticky bit is used, with a BudgetWarning."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.warns(BudgetWarning, match="world-writable"), SessionBudget(handoff_dir=shared):
        pass
    shared.chmod(0o1777)  # sticky: owners alone may remove their files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SessionBudget(handoff_dir=shared):
            pass


def test_the_message_without_a_handoff_dir_names_the_handoff_object() -> None:
    """handoff_dir=None: the message says where the handoff is (on the exception)."""
    _, exc = exhaust(None)
    assert str(exc) == (
        "Session budget exhausted at step 2. Reason: max_steps (2 of 2 steps used). "
        "Resumable: true: budgetkit.SessionBudget.resume(exc.handoff "
        "(handoff_dir=None wrote no file))."
    )


def test_write_failure_latches_without_retry(
    handoff_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write is not retried by later boundaries; each re-raise carries the same error."""
    calls: list[int] = []

    def broken(path: Path, doc: dict[str, Any]) -> None:
        calls.append(1)
        raise PermissionError(13, "denied")

    from budgetkit import _exhaustion

    monkeypatch.setattr(_exhaustion, "write_atomic", broken)
    with SessionBudget(max_steps=1, handoff_dir=handoff_dir):
        tool()
        errors = []
        for _ in range(3):
            with pytest.raises(BudgetExhausted) as info:
                tool()
            errors.append(info.value.handoff_error)
    assert calls == [1]
    assert all(isinstance(e, PermissionError) for e in errors)
    assert errors[0] is errors[1] is errors[2]


def test_failed_rename_leaves_no_temp_file(
    handoff_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the rename fails the temp file is removed: nothing half-written stays behind."""

    def replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files.os, "replace", replace)
    _, exc = exhaust(handoff_dir)
    assert isinstance(exc.handoff_error, OSError)
    assert exc.handoff_path is None
    assert list(handoff_dir.iterdir()) == []


# --------------------------------------------------------------------------- load
def test_load_round_trip(handoff_dir: Path) -> None:
    """Handoff.load returns the same Handoff that was attached to the exception."""
    _, exc = exhaust(handoff_dir)
    loaded = Handoff.load(exc.handoff_path)  # type: ignore[arg-type]
    assert loaded == exc.handoff
    assert loaded.stopped_at_step == 2
    assert Handoff.load(str(exc.handoff_path)) == loaded


def _valid_doc(handoff_dir: Path) -> dict[str, Any]:
    _, exc = exhaust(handoff_dir)
    return json.loads(exc.handoff_path.read_text())  # type: ignore[union-attr,no-any-return]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: {"hello": "world"}, "not a budgetkit handoff"),
        (lambda d: [d], "not a budgetkit handoff"),
        (lambda d: {k: v for k, v in d.items() if k != "reason"}, "reason"),
        (lambda d: {**d, "schema_version": 99}, "schema_version"),
        (lambda d: {**d, "stopped_at_step": "5"}, "stopped_at_step"),
        (lambda d: {**d, "stopped_at_step": True}, "stopped_at_step"),
        (lambda d: {**d, "limits": []}, "limits"),
        (lambda d: {**d, "session_id": "../../etc/passwd"}, "session_id"),
        (lambda d: {**d, "pending_tasks": "x"}, "pending_tasks"),
        (lambda d: {**d, "parent_session_id": 7}, "parent_session_id"),
        (lambda d: {**d, "context_summary": ["x"]}, "context_summary"),
        (lambda d: {**d, "name": 3}, "name"),
        (lambda d: {**d, "usage": {**d["usage"], "elapsed_seconds": 10**400}}, "elapsed_seconds"),
    ],
)
def test_load_rejects_foreign_documents(
    mutate: Any, message: str, handoff_dir: Path, tmp_path: Path
) -> None:
    """Handoff.load raises HandoffError naming the problem for JSON that is not a valid handoff."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(mutate(_valid_doc(handoff_dir))))
    with pytest.raises(HandoffError, match=message) as info:
        Handoff.load(bad)
    assert "bad.json" in str(info.value)
    with pytest.raises(HandoffError):
        SessionBudget.resume(bad)


def _with_state(doc: dict[str, Any], **entry: Any) -> dict[str, Any]:
    state = {"framework": "langchain", "format": 1, "bytes": 2, **entry}
    return {**doc, "extra": {**doc["extra"], "framework_state": state}}


@pytest.mark.parametrize(
    "entry",
    [
        {"payload": [{"type": "human"}]},
        {"sidecar": "{sid}.state", "sha256": "a" * 64},
        {"omitted": "too large"},
    ],
)
def test_load_accepts_a_framework_state(entry: dict[str, Any], handoff_dir: Path) -> None:
    """The loader accepts the adapters' extra["framework_state"] in each of its forms (#19)."""
    doc = _valid_doc(handoff_dir)
    entry = {
        k: v.format(sid=doc["session_id"]) if isinstance(v, str) else v for k, v in entry.items()
    }
    path = handoff_dir / "state.json"
    path.write_text(json.dumps(_with_state(doc, **entry)))
    assert Handoff.load(path).extra["framework_state"]["framework"] == "langchain"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"payload": []}, None),  # replaced below by a non-object
        ({"framework": "Lang Chain", "payload": []}, "framework must be"),
        ({"format": "1", "payload": []}, "format must be"),
        ({"bytes": -1, "payload": []}, "bytes must be"),
        ({}, "one of payload, sidecar or omitted"),
        ({"payload": [], "omitted": "x"}, "one of payload, sidecar or omitted"),
        ({"sidecar": "../../etc/passwd", "sha256": "a" * 64}, "sidecar must be"),
        ({"sidecar": "{sid}.state", "sha256": "xyz"}, "sha256 must be"),
        ({"omitted": 3}, "omitted must be"),
    ],
)
def test_load_rejects_a_bad_framework_state(
    entry: dict[str, Any], message: str | None, handoff_dir: Path
) -> None:
    doc = _valid_doc(handoff_dir)
    entry = {
        k: v.format(sid=doc["session_id"]) if isinstance(v, str) else v for k, v in entry.items()
    }
    bad = _with_state(doc, **entry)
    if message is None:
        bad["extra"]["framework_state"] = ["not", "an", "object"]
        message = "must be an object"
    path = handoff_dir / "bad-state.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(HandoffError, match=f"extra.framework_state.*{message}"):
        Handoff.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    """Handoff.load and resume of a missing file raise HandoffError naming the path."""
    missing = tmp_path / "nope.json"
    with pytest.raises(HandoffError, match=r"nope\.json"):
        Handoff.load(missing)
    with pytest.raises(HandoffError, match=r"nope\.json"):
        SessionBudget.resume(missing)


@pytest.mark.parametrize("cut", [0, 1, 10, 0.5, -1])
def test_load_truncated_file(cut: float, handoff_dir: Path, tmp_path: Path) -> None:
    """A truncated handoff file raises HandoffError, not a raw JSON error."""
    _, exc = exhaust(handoff_dir)
    data = exc.handoff_path.read_bytes()  # type: ignore[union-attr]
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    bad = tmp_path / "cut.json"
    bad.write_bytes(data[:n])
    with pytest.raises(HandoffError, match=r"cut\.json"):
        Handoff.load(bad)
    with pytest.raises(HandoffError):
        SessionBudget.resume(bad)


def test_load_binary_garbage(tmp_path: Path) -> None:
    """A file that is not UTF-8 text raises HandoffError naming the path."""
    bad = tmp_path / "garbage.json"
    bad.write_bytes(b"\xff\xfe\x00{\x80\x81")
    with pytest.raises(HandoffError, match=r"garbage\.json"):
        Handoff.load(bad)
    with pytest.raises(HandoffError):
        SessionBudget.resume(bad)


def test_load_directory(tmp_path: Path) -> None:
    """Handoff.load of a directory raises HandoffError."""
    with pytest.raises(HandoffError):
        Handoff.load(tmp_path)


# --------------------------------------------------------------------------- resume
def test_resume_from_path_keeps_limits_and_links_parent(handoff_dir: Path) -> None:
    """resume(path) gives a fresh budget with the old limits, parent_session_id and resumed_from."""
    old, exc = exhaust(handoff_dir, max_steps=2, max_usd=3, max_tokens=500, name="researcher")
    new = SessionBudget.resume(exc.handoff_path)  # type: ignore[arg-type]
    assert new.session_id != old.session_id
    assert new.parent_session_id == old.session_id
    assert new.resumed_from == exc.handoff
    assert isinstance(new.resumed_from, Handoff)
    assert new.limits == old.limits
    assert new.limits.max_usd == Decimal(3)
    assert new.name == "researcher"
    with pytest.raises(BudgetExhausted) as info:
        run(new, 10)
    assert ran[-2:] == [0, 1]  # fresh counters: two more steps ran
    doc = json.loads(info.value.handoff_path.read_text())  # type: ignore[union-attr]
    assert doc["parent_session_id"] == old.session_id
    assert info.value.handoff_path.parent == handoff_dir  # type: ignore[union-attr]


def test_resume_from_handoff_object_with_overrides(handoff_dir: Path) -> None:
    """resume(Handoff, **overrides) applies overrides and keeps the other old limits."""
    old, exc = exhaust(handoff_dir, max_steps=2, max_tokens=100)
    new = SessionBudget.resume(exc.handoff, max_steps=5, handoff_dir=handoff_dir / "next")
    assert new.limits.max_steps == 5
    assert new.limits.max_tokens == 100
    assert new.resumed_from is exc.handoff
    with pytest.raises(BudgetExhausted) as info:
        run(new, 10)
    assert info.value.usage.steps == 5
    assert info.value.handoff.parent_session_id == old.session_id
    assert info.value.handoff_path.parent == handoff_dir / "next"  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_resume_async(handoff_dir: Path) -> None:
    """A resumed session works as `async with`."""

    @budget.step
    async def atool() -> None:
        pass

    _, exc = exhaust(handoff_dir, max_steps=1)
    async with SessionBudget.resume(exc.handoff_path, raise_on_exhausted=False) as s:  # type: ignore[arg-type]
        await atool()
        await atool()
    assert s.result is not None
    assert s.result.stop_reason == "max_steps"
    assert s.usage.steps == 1


def test_resume_chain(handoff_dir: Path) -> None:
    """Resuming a resumed session links each handoff to the one before."""
    first, exc1 = exhaust(handoff_dir, max_steps=1)
    second = SessionBudget.resume(exc1.handoff_path)  # type: ignore[arg-type]
    with pytest.raises(BudgetExhausted) as info:
        run(second)
    third = SessionBudget.resume(info.value.handoff_path)  # type: ignore[arg-type]
    assert third.parent_session_id == second.session_id
    assert third.resumed_from is not None
    assert third.resumed_from.parent_session_id == first.session_id


def test_resume_unknown_keyword(handoff_dir: Path) -> None:
    """resume() rejects unknown keywords with BudgetTypeError naming them."""
    _, exc = exhaust(handoff_dir)
    with pytest.raises(BudgetTypeError, match="max_stpes"):
        SessionBudget.resume(exc.handoff, max_stpes=3)


@pytest.mark.parametrize("value", [None, 42, b"path", ["a.json"]])
def test_resume_rejects_non_path(value: Any) -> None:
    """resume() of something that is neither a Handoff nor a path raises BudgetTypeError."""
    with pytest.raises(BudgetTypeError, match="Handoff or a path"):
        SessionBudget.resume(value)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_steps": -3},
        {"max_steps": "ten"},
        {"max_usd": "lots"},
        {"max_usd": [1]},
        {"max_usd": {"a": 1}},
        {"max_seconds": "NaN"},
    ],
)
def test_resume_rejects_bad_limits_in_file(
    limits: dict[str, Any], handoff_dir: Path, tmp_path: Path
) -> None:
    """A handoff file with invalid limits raises HandoffError on resume."""
    doc = _valid_doc(handoff_dir)
    doc["limits"].update(limits)
    bad = tmp_path / "limits.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(HandoffError, match="invalid limits"):
        SessionBudget.resume(bad)
