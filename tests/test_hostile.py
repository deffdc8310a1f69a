"""Hostile inputs, crashed workers and stranded work (issue #17).

Every test here is bounded in time: code that used to hang runs in a child process with a
``timeout=``, or in a thread joined with a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from otel_fixtures import Otel, otel
from redis_fixtures import RedisServer, redis_server

from budgetkit import (
    BudgetWarning,
    Handoff,
    HandoffClaimedError,
    HandoffError,
    SessionBudget,
    budget,
    pending_handoffs,
)
from budgetkit._lineage import Lineage
from budgetkit.ledgers.redis import RedisLedger

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["otel", "redis_server"]  # fixtures, re-exported for pytest

T = TypeVar("T")

#: Seconds a child process may take before the test calls it a hang.
HANG = 30


def _env(**extra: str) -> dict[str, str]:
    """This environment without settings that change budgetkit's behaviour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BUDGETKIT_"))}
    return {**env, **extra}


def _python(code: str, *, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter; its stdout. Fails the test when it hangs or fails."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=cwd,
            env=env or _env(),
            capture_output=True,
            text=True,
            timeout=HANG,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {HANG} s (a hang):\n{textwrap.dedent(code)}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``budgetkit ARGS`` in a fresh process; fails the test when it hangs."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "budgetkit", *args],
            cwd=cwd,
            env=env or _env(),
            capture_output=True,
            text=True,
            timeout=HANG,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"budgetkit {' '.join(args)} still running after {HANG} s (a hang)")


# --------------------------------------------------------------------------- 1. magnitudes

_HUGE = "1E+200000000"
_TINY = "1E-200000000"


def test_usd_magnitudes_are_bounded_and_never_hang(tmp_path: Path) -> None:
    """Huge and tiny Decimal exponents: a clear error or a rounded amount, within seconds."""
    out = _python(
        f"""
        import json
        from decimal import Decimal
        from budgetkit import BudgetConfigError, SessionBudget, budget

        found = {{}}

        def attempt(label, make):
            try:
                value = make()
            except BudgetConfigError as exc:
                found[label] = ["BudgetConfigError", str(exc)]
            except Exception as exc:
                found[label] = [type(exc).__name__, str(exc)]
            else:
                found[label] = ["ok", str(value)]

        attempt("huge limit", lambda: SessionBudget(max_usd=Decimal("{_HUGE}"), handoff_dir=None))
        attempt("1e5000 limit", lambda: SessionBudget(max_usd=Decimal("1e5000"), handoff_dir=None))
        attempt("tiny limit", lambda: SessionBudget(max_usd=Decimal("{_TINY}"), handoff_dir=None))
        attempt(
            "huge chain cap",
            lambda: SessionBudget(max_total_usd=Decimal("{_HUGE}"), handoff_dir=None),
        )

        def charge(amount):
            with SessionBudget(max_usd=1, handoff_dir=None) as session:
                session.charge(usd=Decimal(amount))
                return session.usage.cost_usd

        attempt("tiny charge", lambda: charge("{_TINY}"))
        attempt("huge charge", lambda: charge("{_HUGE}"))

        def estimated(amount):
            @budget.llm_call(estimate=lambda: Decimal(amount))
            def ask():
                return None

            with SessionBudget(max_usd=1, handoff_dir=None, raise_on_exhausted=False) as s:
                ask()
            return s.usage.cost_usd

        attempt("tiny estimate", lambda: estimated("{_TINY}"))
        attempt("huge estimate", lambda: estimated("{_HUGE}"))
        print(json.dumps(found))
        """,
        cwd=tmp_path,
    )
    found = json.loads(out)
    for label in ("huge limit", "1e5000 limit", "huge chain cap", "huge charge", "huge estimate"):
        kind, message = found[label]
        assert kind == "BudgetConfigError", (label, found[label])
        assert "at most 1E+15" in message, (label, message)
    kind, message = found["tiny limit"]
    assert kind == "BudgetConfigError", found["tiny limit"]
    assert "at least 1E-30" in message
    # A charge finer than a unit is rounded up to one unit (10^-18 USD), as for any amount.
    assert found["tiny charge"] == ["ok", "1E-18"]
    # The estimate is admitted (a reservation of one unit, released: the call measured nothing).
    assert found["tiny estimate"][0] == "ok", found["tiny estimate"]


@pytest.mark.parametrize("value", [_HUGE, _TINY])
def test_cli_and_environment_usd_bounded(value: str, tmp_path: Path) -> None:
    """``budgetkit run --max-usd`` and ``BUDGETKIT_MAX_USD`` with a huge or tiny exponent."""
    script = tmp_path / "agent.py"
    script.write_text("print('ran')\n")
    flag = _cli("run", "--max-usd", value, "--", str(script), cwd=tmp_path)
    assert flag.returncode == 2, flag
    assert "ran" not in flag.stdout
    assert "1E+15" in flag.stderr or "1E-30" in flag.stderr, flag.stderr
    env = _cli("run", "--", str(script), cwd=tmp_path, env=_env(BUDGETKIT_MAX_USD=value))
    assert env.returncode == 2, env
    assert f"BUDGETKIT_MAX_USD={value!r}" in env.stderr, env.stderr
    assert "1E+15" in env.stderr or "1E-30" in env.stderr, env.stderr


def test_tier_file_usd_bounded(tmp_path: Path) -> None:
    """A tier file's ``max_usd`` is held to the same bound, naming file, tier and key."""
    (tmp_path / "budgetkit.toml").write_text("[tiers.big]\nmax_usd = 1e300\n")
    out = _python(
        """
        from budgetkit import BudgetConfigError
        from budgetkit._tiers import load_tier
        try:
            load_tier("big", environ={})
        except BudgetConfigError as exc:
            print(exc)
        """,
        cwd=tmp_path,
    )
    assert "max_usd" in out
    assert "big" in out
    assert "1E+15" in out


def _handoff_doc(session_id: str = "s1", **changes: object) -> dict[str, object]:
    """A valid handoff document, as budgetkit writes it, with ``changes`` applied."""
    usage = {
        "steps": 2,
        "llm_calls": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "cost_usd": "0",
        "elapsed_seconds": 0.5,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "unpriced_calls": 0,
        "unmeasured_calls": 0,
    }
    doc: dict[str, object] = {
        "kind": "budgetkit.handoff",
        "session_id": session_id,
        "parent_session_id": None,
        "stopped_at_step": 2,
        "reason": "max_steps",
        "limits": {
            "max_steps": 2,
            "max_llm_calls": None,
            "max_tokens": None,
            "max_input_tokens": None,
            "max_output_tokens": None,
            "max_usd": "1.5",
            "max_seconds": None,
            "max_consecutive_errors": None,
        },
        "usage": usage,
        "pending_tasks": ["next"],
        "context_summary": "did two things",
        "resume_instructions": "resume it",
        "created_at": "2026-01-01T12:00:00.000+00:00",
        "name": "agent",
        "trace_id": None,
        "span_id": None,
        "extra": {
            "lineage": {
                "root_session_id": session_id,
                "attempt": 1,
                "session_ids": [session_id],
                "caps": {"max_total_usd": None, "max_total_steps": None, "max_sessions": None},
                "cumulative_usage": dict(usage),
            }
        },
        "schema_version": 1,
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("limits.max_usd", _HUGE),
        ("limits.max_usd", _TINY),
        ("usage.cost_usd", _HUGE),
        ("usage.cost_usd", _TINY),
        ("caps.max_total_usd", _HUGE),
        ("cumulative.cost_usd", _TINY),
    ],
)
def test_crafted_handoff_usd_bounded(where: str, value: str, tmp_path: Path) -> None:
    """A handoff with a huge or tiny USD amount: ``HandoffError`` naming the bound, no hang."""
    doc = _handoff_doc()
    lineage = doc["extra"]["lineage"]  # type: ignore[index]
    if where == "limits.max_usd":
        doc["limits"]["max_usd"] = value  # type: ignore[index]
    elif where == "usage.cost_usd":
        doc["usage"]["cost_usd"] = value  # type: ignore[index]
    elif where == "caps.max_total_usd":
        lineage["caps"]["max_total_usd"] = value
    else:
        lineage["cumulative_usage"]["cost_usd"] = value
        lineage["caps"]["max_total_usd"] = "5"
    path = tmp_path / "s1.json"
    path.write_text(json.dumps(doc))
    out = _python(
        f"""
        from budgetkit import HandoffError, SessionBudget
        try:
            with SessionBudget.resume({str(path)!r}, session_id="s2") as session:
                print("resumed", session.remaining.cost_usd)
        except HandoffError as exc:
            print("HandoffError", exc)
        """,
        cwd=tmp_path,
    )
    assert out.startswith("HandoffError"), out
    assert "1E+15" in out or "1E-30" in out or "18 decimal places" in out, out
    assert not (tmp_path / "s1.claim").exists()


# --------------------------------------------------------------------------- 2. special files


def _bounded(fn: Callable[[], T], *fifos: Path, timeout: float = 15) -> T:
    """``fn()`` in a thread joined with a timeout; a hang fails the test (and is released by
    opening each FIFO for writing, so the thread ends)."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(("value", fn()))
        except BaseException as exc:
            outcome.append(("error", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"{fn!r} still running after {timeout} s (a hang)")
    kind, value = outcome[0]  # type: ignore[misc]
    if kind == "error":
        raise value  # type: ignore[misc]
    return value  # type: ignore[no-any-return]


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    """A child process that reads /dev/zero whole fails fast instead of eating the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _stopped_handoff(directory: Path, session_id: str = "s1") -> Path:
    """A real handoff: a session that stopped at max_steps=1."""
    with SessionBudget(
        max_steps=1, session_id=session_id, handoff_dir=directory, raise_on_exhausted=False
    ) as session:
        session.update_handoff(pending_tasks=["b"], context_summary="did a")
        _work()
        _work()
    assert session.result is not None
    path = session.result.handoff_path
    assert path is not None
    return path


@budget.step
def _work() -> None:
    return None


def test_show_refuses_fifo_and_devices(tmp_path: Path) -> None:
    """``budgetkit show`` of a FIFO or /dev/zero: exit 1 at once, naming the file type."""
    fifo = tmp_path / "h.json"
    os.mkfifo(fifo)
    for target, kind in ((fifo, "FIFO"), (Path("/dev/zero"), "character device")):
        try:
            result = subprocess.run(
                [sys.executable, "-m", "budgetkit", "show", str(target)],
                cwd=tmp_path,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=HANG,
                check=False,
                preexec_fn=_limit_memory,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"budgetkit show {target} still running after {HANG} s (a hang)")
        assert result.returncode == 1, result
        assert "not a regular file" in result.stderr, result.stderr
        assert kind in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_load_and_resume_refuse_fifo(tmp_path: Path) -> None:
    """``Handoff.load`` and ``SessionBudget.resume`` of a FIFO raise ``HandoffError``."""
    fifo = tmp_path / "h.json"
    os.mkfifo(fifo)
    with pytest.raises(HandoffError, match="not a regular file"):
        _bounded(lambda: Handoff.load(fifo), fifo)
    with pytest.raises(HandoffError, match="not a regular file"):
        _bounded(lambda: SessionBudget.resume(fifo), fifo)


def test_fifo_claim_reads_as_claimed(tmp_path: Path) -> None:
    """A ``<id>.claim`` that is a FIFO: claimed (unreadable), never a hang, in every reader."""
    path = _stopped_handoff(tmp_path)
    fifo = tmp_path / "s1.claim"
    os.mkfifo(fifo)
    with pytest.warns(BudgetWarning, match=r"s1\.claim.*not a regular file: a FIFO"):
        assert _bounded(lambda: pending_handoffs(tmp_path), fifo) == []
    with pytest.raises(HandoffClaimedError):
        _bounded(lambda: SessionBudget.resume(path), fifo)
    result = _cli("chain", str(tmp_path), cwd=tmp_path)
    assert "running" in result.stdout, result
    assert "Traceback" not in result.stderr


def test_handoff_over_the_size_cap(tmp_path: Path) -> None:
    """A handoff larger than 16 MiB is a ``HandoffError`` naming the cap; one just under loads."""
    doc = _handoff_doc()
    big = tmp_path / "s1.json"
    doc["context_summary"] = "x" * (16 * 1024 * 1024)
    big.write_text(json.dumps(doc))
    with pytest.raises(HandoffError, match="16 MiB"):
        Handoff.load(big)
    doc["context_summary"] = "x" * (16 * 1024 * 1024 - 4096)
    big.write_text(json.dumps(doc))
    assert Handoff.load(big).session_id == "s1"


# --------------------------------------------------------------------------- 3. nesting


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [101, 100_000])
def test_deeply_nested_json_is_a_handoff_error(depth: int, tmp_path: Path) -> None:
    """Nesting past the documented 100 levels: ``HandoffError`` (never ``RecursionError``)."""
    text = json.dumps(_handoff_doc(pending_tasks=["PLACEHOLDER"]))
    path = tmp_path / "s1.json"
    path.write_text(text.replace('"PLACEHOLDER"', _nested(depth)))
    with pytest.raises(HandoffError, match="nested"):
        Handoff.load(path)
    with pytest.raises(HandoffError, match="nested"):
        SessionBudget.resume(path, session_id="s2")
    show = _cli("show", str(path), cwd=tmp_path)
    assert show.returncode == 1, show
    assert "nested" in show.stderr
    assert "Traceback" not in show.stderr
    chain = _cli("chain", str(tmp_path), cwd=tmp_path)
    assert chain.returncode == 1, chain
    assert "s1.json" in chain.stderr
    assert "Traceback" not in chain.stderr


def test_nesting_within_the_bound_loads(tmp_path: Path) -> None:
    """A pending task nested 90 levels deep is a valid handoff, shown by ``budgetkit show``."""
    text = json.dumps(_handoff_doc(pending_tasks=["PLACEHOLDER"]))
    path = tmp_path / "s1.json"
    path.write_text(text.replace('"PLACEHOLDER"', _nested(90)))
    assert Handoff.load(path).session_id == "s1"
    show = _cli("show", str(path), cwd=tmp_path)
    assert show.returncode == 0, show


def test_deeply_nested_claim_and_record(tmp_path: Path) -> None:
    """A nested claim counts as a claim; a nested completion record is a problem, not a crash."""
    _stopped_handoff(tmp_path)
    (tmp_path / "s1.claim").write_text(_nested(100_000))
    (tmp_path / "s9.done").write_text(_nested(100_000))
    with pytest.warns(BudgetWarning) as caught:
        assert _bounded(lambda: pending_handoffs(tmp_path)) == []
    assert sorted(str(w.message).count("levels deep") for w in caught) == [1, 1]
    chain = _cli("chain", str(tmp_path), cwd=tmp_path)
    assert chain.returncode == 1, chain
    assert "s9.done" in chain.stderr
    assert "running" in chain.stdout
    assert "Traceback" not in chain.stderr


# --------------------------------------------------------------------------- 4. bad files


def test_bad_files_are_skipped_with_a_warning_naming_them(tmp_path: Path) -> None:
    """A malformed handoff, claim or record: skipped with a ``BudgetWarning`` naming it; every
    other chain of the directory is still found, and ``budgetkit chain`` lists it as unreadable."""
    _stopped_handoff(tmp_path, "good")
    _stopped_handoff(tmp_path, "claimed")
    (tmp_path / "claimed.claim").write_text("{not json")
    (tmp_path / "bad.json").write_text('{"kind": "budgetkit.handoff", "session_id": ')
    (tmp_path / "old.done").write_bytes(b"\xff\xfe garbage")
    os.mkfifo(tmp_path / "pipe.json")
    bad = ["bad.json", "claimed.claim", "old.done", "pipe.json"]
    with pytest.warns(BudgetWarning) as caught:
        found = _bounded(lambda: pending_handoffs(tmp_path), tmp_path / "pipe.json")
    assert [p.session_id for p in found] == ["good"]
    messages = [str(w.message) for w in caught if issubclass(w.category, BudgetWarning)]
    for name in bad:
        assert sum(name in m for m in messages) == 1, (name, messages)
    result = _cli("chain", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result
    assert "chain good: pending" in result.stdout
    assert "chain claimed: running" in result.stdout
    for name in bad:
        line = next(x for x in result.stderr.splitlines() if name in x)
        assert "unreadable" in line, line
    assert "Traceback" not in result.stderr
    doc = json.loads(_cli("chain", "--json", str(tmp_path), cwd=tmp_path).stdout)
    assert sorted(Path(u["file"]).name for u in doc["unreadable"]) == sorted(bad)


# --------------------------------------------------------------------------- 5. surrogates


@pytest.mark.parametrize(
    "change",
    [
        {"name": "agent \ud800"},
        {"pending_tasks": ["fine", "bad \udfff"]},
        {"pending_tasks": [{"key \ud83d": "value"}]},
    ],
    ids=["name", "pending_tasks", "key"],
)
def test_lone_surrogate_is_refused(change: dict[str, object], tmp_path: Path) -> None:
    """A lone surrogate anywhere in a handoff: ``HandoffError`` from load, resume and show."""
    path = tmp_path / "s1.json"
    path.write_text(json.dumps(_handoff_doc(**change)))  # ensure_ascii: written as \\ud800
    with pytest.raises(HandoffError, match="surrogate"):
        Handoff.load(path)
    with pytest.raises(HandoffError, match="surrogate"):
        SessionBudget.resume(path, session_id="s2")
    assert not (tmp_path / "s1.claim").exists()
    show = _cli("show", str(path), cwd=tmp_path)
    assert show.returncode == 1, show
    assert "surrogate" in show.stderr
    assert "Traceback" not in show.stderr


def test_paired_surrogates_are_text(tmp_path: Path) -> None:
    """A surrogate pair in JSON is one character (an emoji): accepted and shown."""
    path = tmp_path / "s1.json"
    path.write_text(json.dumps(_handoff_doc(name="agent \U0001f600")))
    assert Handoff.load(path).name == "agent \U0001f600"
    show = _cli("show", str(path), cwd=tmp_path, env=_env(PYTHONIOENCODING="utf-8"))
    assert show.returncode == 0, show
    assert "agent \U0001f600" in show.stdout


# --------------------------------------------------------------------------- 6. the schema


def _set(doc: dict[str, object], where: str, value: object) -> None:
    """``doc[a][b]... = value`` for ``where`` = ``"a.b..."``."""
    *parents, last = where.split(".")
    node: object = doc
    for key in parents:
        node = node[key]  # type: ignore[index]
    node[last] = value  # type: ignore[index]


BAD_FIELDS = [
    ("usage.cost_usd", "lots"),
    ("usage.cost_usd", "-1"),
    ("usage.input_tokens", -1),
    ("usage.llm_calls", 1.5),
    ("usage.elapsed_seconds", "soon"),
    ("limits.max_steps", "ten"),
    ("limits.max_steps", 0),
    ("limits.max_llm_calls", True),
    ("limits.max_usd", "lots"),
    ("limits.max_usd", -2),
    ("limits.max_seconds", -1),
    ("stopped_at_step", -1),
    ("stopped_at_step", True),
    ("schema_version", True),
    ("schema_version", 1.0),
    ("reason", ""),
    ("reason", "max steps; rm -rf"),
    ("created_at", "yesterday"),
    ("trace_id", "xyz"),
    ("trace_id", 5),
    ("span_id", "0123"),
    ("name", 7),
    ("context_summary", ["a"]),
    ("resume_instructions", None),
    ("pending_tasks", "a"),
    ("extra", []),
    ("extra.lineage.attempt", True),
    ("extra.lineage.cumulative_usage.steps", "many"),
    ("extra.lineage.cumulative_usage.cost_usd", "lots"),
    ("extra.lineage.caps.max_sessions", 0),
    ("extra.lineage.caps.max_total_usd", "lots"),
]


@pytest.mark.parametrize(("where", "value"), BAD_FIELDS, ids=[f"{w}={v!r}" for w, v in BAD_FIELDS])
def test_every_field_is_validated_on_load(where: str, value: object, tmp_path: Path) -> None:
    """A field of the wrong type or value: ``HandoffError`` naming it, from load and resume."""
    doc = _handoff_doc()
    _set(doc, where, value)
    path = tmp_path / "s1.json"
    path.write_text(json.dumps(doc))
    field = where.rsplit(".", 1)[-1]
    with pytest.raises(HandoffError, match=field):
        Handoff.load(path)
    with pytest.raises(HandoffError, match=field):
        SessionBudget.resume(path, session_id="s2")
    assert not (tmp_path / "s1.claim").exists()


def test_show_refuses_a_cost_of_lots(tmp_path: Path) -> None:
    """``budgetkit show`` of a handoff whose ``cost_usd`` is ``"lots"``: exit 1, naming it."""
    doc = _handoff_doc()
    _set(doc, "usage.cost_usd", "lots")
    path = tmp_path / "s1.json"
    path.write_text(json.dumps(doc))
    result = _cli("show", str(path), cwd=tmp_path)
    assert result.returncode == 1, result
    assert "cost_usd" in result.stderr


def test_the_valid_document_loads(tmp_path: Path) -> None:
    """The document the tests above spoil is valid, with or without the optional fields."""
    path = tmp_path / "s1.json"
    path.write_text(json.dumps(_handoff_doc(trace_id="0" * 31 + "a", span_id="0" * 15 + "b")))
    loaded = Handoff.load(path)
    assert loaded.trace_id == "0" * 31 + "a"
    doc = _handoff_doc()
    for key in ("name", "trace_id", "span_id", "extra"):
        del doc[key]
    path.write_text(json.dumps(doc))
    assert Handoff.load(path).lineage is None
    with SessionBudget.resume(path, session_id="s2") as session:
        assert session.limits.max_usd == Decimal("1.5")


# --------------------------------------------------------------------------- 7. ids in paths


def test_crafted_parent_id_never_opens_a_file_outside_the_directory(tmp_path: Path) -> None:
    """``parent_session_id="../evil_target"``: ``HandoffError`` before any path is built."""
    directory = tmp_path / "handoffs"
    directory.mkdir()
    # A handoff outside the directory, of another chain: resume would read it as the parent.
    (tmp_path / "evil_target.json").write_text(json.dumps(_handoff_doc("other")))
    doc = _handoff_doc("s1", parent_session_id="../evil_target")
    lineage = doc["extra"]["lineage"]  # type: ignore[index]
    lineage.update(
        root_session_id="../evil_target", attempt=2, session_ids=["../evil_target", "s1"]
    )
    path = directory / "s1.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(HandoffError, match="parent_session_id"):
        Handoff.load(path)
    with pytest.raises(HandoffError, match="parent_session_id"):
        SessionBudget.resume(path, session_id="s2")
    assert not (directory / "s1.claim").exists()


def test_lineage_ids_are_session_ids(tmp_path: Path) -> None:
    """Every id of a lineage is checked like a session id: the root and each of the chain."""
    doc = _handoff_doc()
    _set(doc, "extra.lineage.root_session_id", "../x")
    path = tmp_path / "s1.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(HandoffError, match="root_session_id must be 1-128 characters"):
        Handoff.load(path)
    lineage = {
        "root_session_id": "r",
        "attempt": 3,
        "session_ids": ["r", "a/b", "s1"],
        "caps": {},
        "cumulative_usage": {},
    }
    with pytest.raises(HandoffError, match="session_ids must be 1-128 characters"):
        Lineage.from_dict(lineage, session_id="s1", parent_session_id="a/b", source="test")


def test_ids_in_records_and_claims_are_session_ids(tmp_path: Path) -> None:
    """A completion record with a crafted parent id is unreadable; so is a claim's claimer."""
    handoff = _stopped_handoff(tmp_path)
    claim = {"kind": "budgetkit.claim", "session_id": "s1", "claimed_by": "../../x"}
    (tmp_path / "s1.claim").write_text(json.dumps(claim))
    record = {
        "kind": "budgetkit.done",
        "schema_version": 1,
        "session_id": "d2",
        "parent_session_id": "../d1",
        "stop_reason": "completed",
        "name": None,
        "usage": {},
        "created_at": "2026-01-01T12:00:00.000+00:00",
        "extra": {
            "lineage": {
                "root_session_id": "../d1",
                "attempt": 2,
                "session_ids": ["../d1", "d2"],
                "caps": {},
                "cumulative_usage": {},
            }
        },
    }
    (tmp_path / "d2.done").write_text(json.dumps(record))
    with pytest.warns(BudgetWarning) as caught:
        assert pending_handoffs(tmp_path) == []
    messages = " ".join(str(w.message) for w in caught)
    assert "d2.done" in messages
    assert "s1.claim" in messages
    with pytest.raises(HandoffClaimedError) as info:
        SessionBudget.resume(handoff)
    assert info.value.claimed_by is None


# --------------------------------------------------------------------------- 8. orphan temps

_KILLED_MID_WRITE = """
import os, sys, time
from pathlib import Path
from budgetkit import _files

def stall(fd):  # the data is written; the writer dies before it is renamed into place
    print("writing", flush=True)
    time.sleep(600)

os.fsync = stall
_files.write_atomic(Path(sys.argv[1]) / f"{sys.argv[2]}.json", {"kind": "budgetkit.handoff"})
"""


def _kill_mid_write(directory: Path, name: str) -> int:
    """A real writer killed with SIGKILL while its temporary file exists; its pid (reaped)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_WRITE, str(directory), name],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "writing\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(HANG)
        if child.stdout is not None:
            child.stdout.close()
    return child.pid


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _temps(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_temp_files_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    """Writers SIGKILLed mid-write leave temp files; the next write in the directory removes
    them once they are old enough, and keeps the rest."""
    pids = [_kill_mid_write(tmp_path, f"w{i}") for i in range(3)]
    orphans = _temps(tmp_path)
    assert len(orphans) == 3
    for orphan in orphans[:2]:
        _age(orphan, 3600)
    host = orphans[0].name.split(".")[-4]  # .w0.json.<host>.<pid>.<random>.tmp
    assert orphans[0].name.split(".")[-3] == str(pids[0])
    # However old: the temp file of a live writer, and one of another host, are kept.
    live = tmp_path / f".x.json.{host}.{os.getpid()}.abcdefgh.tmp"
    elsewhere = tmp_path / f".x.json.other-host.{pids[0]}.abcdefgh.tmp"
    for kept in (live, elsewhere):
        kept.write_text("{}")
        _age(kept, 3600)
    _stopped_handoff(tmp_path, "next")  # writes next.json
    # The orphan younger than 30 s stays for now: its writer might be in another pid namespace.
    assert _temps(tmp_path) == sorted([orphans[2], live, elsewhere])


def test_temp_files_of_killed_writers_are_removed_by_a_scan(tmp_path: Path) -> None:
    """``pending_handoffs`` (a scan of the directory) removes old temp files of dead writers."""
    _stopped_handoff(tmp_path, "s1")
    _kill_mid_write(tmp_path, "w0")
    (orphan,) = _temps(tmp_path)
    _age(orphan, 3600)
    assert [p.session_id for p in pending_handoffs(tmp_path)] == ["s1"]
    assert _temps(tmp_path) == []


# --------------------------------------------------------------------------- 11. shared dirs


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="giving a directory to another user needs root",
)
def test_no_claims_from_a_world_writable_directory_of_another_user(tmp_path: Path) -> None:
    """A world-writable directory that belongs to another user and has no sticky bit: any
    local user could plant or replace handoffs and claims there. pending_handoffs, resume
    from a path, run_chain and --reclaim refuse it with a clear error, claiming nothing; with
    the sticky bit, or owned by this user, it is used."""
    from budgetkit import BudgetConfigError, run_chain
    from budgetkit.cli import main

    shared = tmp_path / "shared"
    path = _stopped_handoff(shared)
    os.chown(shared, 65534, 65534)  # nobody
    os.chmod(shared, 0o777)
    calls = [
        lambda: pending_handoffs(shared),
        lambda: SessionBudget.resume(path),
        lambda: run_chain(lambda s: None, handoff=path, handoff_dir=shared),
    ]
    for call in calls:
        with pytest.raises(BudgetConfigError, match=r"world-writable.*another user.*chmod \+t"):
            call()
    assert main(["chain", str(shared), "--reclaim", "s1"]) == 1
    assert sorted(p.name for p in shared.iterdir()) == ["s1.json"]  # nothing claimed
    os.chmod(shared, 0o1777)  # sticky: others cannot replace or remove our files
    assert [p.session_id for p in pending_handoffs(shared)] == ["s1"]
    os.chmod(shared, 0o777)
    os.chown(shared, os.geteuid(), os.getegid())  # ours: we chose to share it
    with SessionBudget.resume(path, handoff_dir=tmp_path / "own"):
        _work()


# --------------------------------------------------------------------------- 12. join token


def _ledger(server: RedisServer) -> RedisLedger:
    """A ledger on the shared test server, with a key prefix of its own."""
    return RedisLedger(server.url, key_prefix=f"test-{os.urandom(4).hex()}:")


def _cfg(ledger: RedisLedger, session_id: str) -> dict[str, object]:
    """The session's configuration as the ledger keeps it."""
    doc = json.loads(ledger.client.hget(ledger.keys(session_id)[0], "cfg"))
    assert isinstance(doc, dict)
    return doc


def _one_step_in(session: SessionBudget) -> None:
    with session:
        _work()


def test_join_by_a_guessed_id_is_refused(redis_server: RedisServer) -> None:
    """Any client that can guess an id ("nightly-agent") used to join the session and spend
    its budget; now join needs the session's join token (or an explicit trust_id=True)."""
    from budgetkit import BudgetConfigError, JoinRefusedError

    ledger = _ledger(redis_server)
    with SessionBudget(
        max_steps=5, session_id="nightly-agent", ledger=ledger, handoff_dir=None
    ) as main:
        with pytest.raises(JoinRefusedError, match=r"join token.*inject.*trust_id=True"):
            SessionBudget.join("nightly-agent", ledger=ledger)
        with pytest.raises(JoinRefusedError, match="join token"):
            SessionBudget.join({"baggage": "budgetkit.session.id=nightly-agent"}, ledger=ledger)
        assert main.usage.steps == 0
    assert issubclass(JoinRefusedError, BudgetConfigError)


def test_join_with_a_wrong_token_is_refused(redis_server: RedisServer) -> None:
    """A token that is not this session's (made up, another session's, empty) is refused."""
    from budgetkit import JoinRefusedError

    ledger = _ledger(redis_server)
    with SessionBudget(ledger=ledger, handoff_dir=None) as other:
        theirs = other.inject({})["baggage"].split("budgetkit.join_token=")[1]
    with SessionBudget(ledger=ledger, handoff_dir=None) as main:
        for token in ("0" * 64, theirs, "", "é" * 10):
            with pytest.raises(JoinRefusedError, match="does not match"):
                SessionBudget.join(main.session_id, ledger=ledger, token=token)
            with pytest.raises(JoinRefusedError, match="does not match"):
                SessionBudget.join(main.session_id, ledger=ledger, token=token, trust_id=True)
        forged = {
            "baggage": f"budgetkit.session.id={main.session_id},budgetkit.join_token={theirs}"
        }
        with pytest.raises(JoinRefusedError, match="does not match"):
            SessionBudget.join(forged, ledger=ledger)


def test_inject_carries_a_join_token_that_join_accepts(redis_server: RedisServer) -> None:
    """inject() writes budgetkit.join_token beside the id; join() takes it from the headers,
    from token=, or does without it only with trust_id=True."""
    import hashlib
    import hmac

    ledger = _ledger(redis_server)
    with SessionBudget(max_steps=9, ledger=ledger, handoff_dir=None) as main:
        headers = main.inject({"baggage": "user=alice"})
        entries = dict(e.split("=", 1) for e in headers["baggage"].split(","))
        assert entries["user"] == "alice"
        assert entries["budgetkit.session.id"] == main.session_id
        token = entries["budgetkit.join_token"]
        secret = bytes.fromhex(str(_cfg(ledger, main.session_id)["join_secret"]))
        assert len(secret) == 32
        expected = hmac.new(secret, main.session_id.encode(), hashlib.sha256).hexdigest()
        assert token == expected
        joined = [
            SessionBudget.join(headers, ledger=ledger, handoff_dir=None),
            SessionBudget.join(main.session_id, ledger=ledger, token=token, handoff_dir=None),
            SessionBudget.join(main.session_id, ledger=ledger, trust_id=True, handoff_dir=None),
        ]
        for worker in joined:  # each in a thread of its own (a fresh context)
            _bounded(functools.partial(_one_step_in, worker))
        assert main.usage.steps == 3
        # A joined worker passes the same token on.
        again = joined[0].inject({})
        assert again["baggage"].endswith(f"budgetkit.join_token={token}")
        assert main.limits.max_steps == 9


def test_the_join_secret_never_leaves_the_ledger(
    redis_server: RedisServer, tmp_path: Path, otel: Otel
) -> None:
    """The secret is in the ledger's config only: not in the handoff, the spans, the snapshot
    or the session's repr and result."""
    ledger = _ledger(redis_server)
    session = SessionBudget(
        max_steps=1, ledger=ledger, handoff_dir=tmp_path, raise_on_exhausted=False
    )
    with session:
        session.inject({})
        _work()
        _work()
    assert session.result is not None
    assert session.result.stop_reason == "max_steps"
    secret = _cfg(ledger, session.session_id)["join_secret"]
    assert isinstance(secret, str)
    handoff = (tmp_path / f"{session.session_id}.json").read_text()
    assert session.session_id in handoff
    spans = otel.spans()
    assert spans
    seen = [
        handoff,
        repr(session),
        repr(session.result),
        repr(session.boundary.snapshot()),
        repr(session.boundary.handle),
        *(json.dumps(dict(s.attributes or {}), default=str) for s in spans),
        *(json.dumps([dict(e.attributes or {}) for e in s.events], default=str) for s in spans),
    ]
    for text in seen:
        assert secret not in text
        assert secret.upper() not in text


def test_a_session_without_a_secret_is_joined_only_by_trust(redis_server: RedisServer) -> None:
    """A session created by a budgetkit before join tokens has no secret: a token cannot be
    checked, so join needs trust_id=True (the message says so)."""
    from budgetkit import JoinRefusedError

    ledger = _ledger(redis_server)
    with SessionBudget(ledger=ledger, handoff_dir=None) as main:
        cfg = _cfg(ledger, main.session_id)
        del cfg["join_secret"]
        ledger.client.hset(ledger.keys(main.session_id)[0], "cfg", json.dumps(cfg))
        with pytest.raises(JoinRefusedError, match=r"no join secret.*trust_id=True"):
            SessionBudget.join(main.session_id, ledger=ledger, token="0" * 64)
        joined = SessionBudget.join(main.session_id, ledger=ledger, trust_id=True)
        assert joined.session_id == main.session_id


def test_join_token_arguments_are_checked(redis_server: RedisServer) -> None:
    """token= is a str, trust_id a bool; inject() of a shared session before it is entered
    (no secret yet) is a clear error."""
    from budgetkit import BudgetError, BudgetTypeError

    ledger = _ledger(redis_server)
    session = SessionBudget(ledger=ledger, handoff_dir=None)
    with pytest.raises(BudgetError, match="enter"):
        session.inject({})
    with session:
        with pytest.raises(BudgetTypeError, match="token"):
            SessionBudget.join(session.session_id, ledger=ledger, token=123)  # type: ignore[arg-type]
        with pytest.raises(BudgetTypeError, match="trust_id"):
            SessionBudget.join(session.session_id, ledger=ledger, trust_id="yes")  # type: ignore[arg-type]
