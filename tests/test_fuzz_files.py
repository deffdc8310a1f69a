"""Fuzzing the readers of a handoff directory (issue #17).

Every reader of a file another process (or user) may have written is fed random bytes and
near-valid documents: a valid handoff, claim, failure record or completion record with one
field mutated (another type, a huge number, a lone surrogate, deep nesting, a long string,
a key removed), truncated or with bytes flipped. The targets:

- ``budgetkit._files.read_document`` and ``Handoff.load``: a value, or ``HandoffError``;
- the claim records (``_claims.read_record``, ``read_current``, ``read_failure``): a record
  or ``HandoffError``; ``claim_state`` never raises; ``SessionBudget.resume`` of the handoff
  gives a session or ``HandoffClaimedError``;
- the completion record loader (``_chainfiles._load_done``): a record or ``HandoffError``;
- ``pending_handoffs`` on a directory of fuzzed files: a list, and only ``BudgetWarning``;
- ``budgetkit show`` and ``budgetkit chain [--json]`` run in process: exit code 0, 1 or 2,
  no traceback, and ``--json`` output that parses.

Each input is bounded: it must take less than ``CPU_SECONDS`` of CPU time (asserted; the
biggest inputs take tens of milliseconds), finish within the hypothesis deadline of
``WALL_SECONDS`` (a hang fails even on a loaded machine), and allocate at most ``PEAK_BYTES``
at its peak (``tracemalloc``). The number of examples per target is fixed
(``BUDGETKIT_FUZZ_EXAMPLES``, default 300) so CI time is too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import tracemalloc
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetkit import (
    BudgetWarning,
    Handoff,
    HandoffClaimedError,
    HandoffError,
    SessionBudget,
    _chainfiles,
    _claims,
    pending_handoffs,
)
from budgetkit._files import read_document
from budgetkit.cli import main

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

#: Examples per target (CI runs the default; raise it locally to search longer).
EXAMPLES = int(os.environ.get("BUDGETKIT_FUZZ_EXAMPLES", "300"))
#: CPU time one input may take. The biggest take tens of milliseconds alone, but the process's
#: CPU time also counts its other threads and the collector, and CI once measured 0.57 s for a
#: `budgetkit chain` input: the bound is there to catch what the issue found (inputs that hung
#: for minutes or grew to gigabytes), not to time the readers.
CPU_SECONDS = 2.0
#: Wall-clock time one input may take, however loaded the machine: beyond it, a hang.
WALL_SECONDS = 5.0
#: Peak memory one input may allocate (inputs are at most ~300 KB; a reader that copies or
#: expands an input without bound would cross this).
PEAK_BYTES = 8 * 1024 * 1024

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=WALL_SECONDS),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HOLDER = "0123456789abcdef0123456789abcdef"
NEXT = "fedcba9876543210fedcba9876543210"
_RAW = "__budgetkit_fuzz_raw__"


# --------------------------------------------------------------------------- valid documents
def handoff_doc(session_id: str = "s1") -> dict[str, Any]:
    """A valid handoff, as budgetkit writes it."""
    usage = {
        "steps": 2,
        "llm_calls": 1,
        "input_tokens": 10,
        "output_tokens": 5,
        "total_tokens": 15,
        "cost_usd": "0.0001",
        "elapsed_seconds": 0.5,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "unpriced_calls": 0,
        "unmeasured_calls": 0,
    }
    return {
        "kind": "budgetkit.handoff",
        "session_id": session_id,
        "parent_session_id": None,
        "stopped_at_step": 2,
        "reason": "max_steps",
        "limits": {"max_steps": 2, "max_usd": "1.5", "max_seconds": None},
        "usage": usage,
        "pending_tasks": ["next", {"url": "https://example.com", "depth": [1, 2]}],
        "context_summary": "did two things",
        "resume_instructions": "resume it",
        "created_at": "2026-01-01T12:00:00.000+00:00",
        "name": "agent",
        "trace_id": "0" * 31 + "1",
        "span_id": "0" * 15 + "1",
        "extra": {
            "lineage": {
                "root_session_id": session_id,
                "attempt": 1,
                "session_ids": [session_id],
                "caps": {"max_total_usd": "2", "max_total_steps": 10, "max_sessions": 3},
                "cumulative_usage": dict(usage),
            },
            "framework_state": {
                "framework": "langchain",
                "format": 1,
                "bytes": 300_000,
                "sidecar": f"{session_id}.state",
                "sha256": "0" * 64,
            },
        },
        "schema_version": 1,
    }


def claim_doc(session_id: str = "s1", state: str = "held", holder: str = HOLDER) -> dict[str, Any]:
    """A valid claim record."""
    return {
        "kind": "budgetkit.claim",
        "session_id": session_id,
        "state": state,
        "holder": holder,
        "attempt": 1,
        "claimed_by": "worker-1",
        "claimed_at": "2026-01-01T12:00:00.000+00:00",
        "lease_seconds": 60.0,
        "outcome": None,
        "pid": 12345,
        "host": "host-a",
    }


def failed_doc(session_id: str = "s1") -> dict[str, Any]:
    """A valid failure record (of the claim above)."""
    return {
        "kind": "budgetkit.failed",
        "schema_version": 1,
        "session_id": session_id,
        "claimed_by": "worker-1",
        "holder": HOLDER,
        "attempt": 1,
        "error_type": "ValueError",
        "failed_at": "2026-01-01T12:00:00.000+00:00",
    }


def resumed_doc() -> dict[str, Any]:
    """A valid handoff of ``s2``, the session that resumed ``s1``."""
    doc = handoff_doc("s2")
    doc["parent_session_id"] = "s1"
    doc["extra"]["lineage"].update(root_session_id="s1", attempt=2, session_ids=["s1", "s2"])
    return doc


def done_doc() -> dict[str, Any]:
    """A valid completion record of ``d3``, the session that resumed ``s2``."""
    usage = handoff_doc()["usage"]
    return {
        "kind": "budgetkit.done",
        "schema_version": 1,
        "session_id": "d3",
        "parent_session_id": "s2",
        "stop_reason": "completed",
        "name": None,
        "usage": usage,
        "created_at": "2026-01-01T12:00:01.000+00:00",
        "extra": {
            "lineage": {
                "root_session_id": "s1",
                "attempt": 3,
                "session_ids": ["s1", "s2", "d3"],
                "caps": {},
                "cumulative_usage": usage,
            }
        },
    }


# --------------------------------------------------------------------------- mutations
def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


#: Raw JSON text no ``json.dumps`` writes: huge and odd numbers, bare non-finite values.
RAW_NUMBERS = st.sampled_from(
    [
        "1e999999",
        "-1e999999",
        "1E+200000000",
        "1e-400",
        "-0",
        "NaN",
        "Infinity",
        "-Infinity",
        "9" * 5000,  # past Python's int digit limit
        "9" * 400,
        "0." + "0" * 3000 + "1",
        "123456789012345678901234567890",
        "[" * 100_000 + "]" * 100_000,  # nesting deeper than any recursive parser goes
        '{"a":' * 50_000 + "1" + "}" * 50_000,
    ]
)

NASTY: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "\ud800",
            "a\udfffb",
            "\ud83d\ude00",
            "../../etc/passwd",
            "/abs/path",
            "a" * 200,
            "x\x00y",
            "\x1b[2J",
            "",
            "0" * 64,
            "max_steps",
            "completed",
            "held",
            "released",
            "ended",
        ]
    ),
    st.integers(min_value=10, max_value=100_000).map(lambda n: "s" * n),
    st.sampled_from([90, 99, 100, 101, 150, 400]).map(_nested),
    st.lists(st.integers(), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    RAW_NUMBERS.map(lambda raw: (_RAW, raw)),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of a document (object keys and list indexes)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


def _mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    """``doc`` with the value at ``path`` replaced (or removed, or beside an extra key)."""
    doc = json.loads(json.dumps(doc))  # a copy
    node = doc
    for key in path[:-1]:
        node = node[key]
    last = path[-1]
    if how == "remove" and isinstance(node, dict):
        del node[last]
    elif how == "extra" and isinstance(node, dict):
        node[f"{last}_extra"] = value
    else:
        node[last] = value
    return doc


def _encode(doc: Any, style: str) -> bytes:
    """JSON bytes of ``doc``: ASCII (surrogates escaped), or UTF-8 with surrogates passed
    through (not valid UTF-8); raw numbers spliced in for their placeholders."""
    raws: list[str] = []

    def placeholder(value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 2 and value[0] == _RAW:
            raws.append(value[1])
            return f"{_RAW}{len(raws) - 1}"
        if isinstance(value, dict):
            return {k: placeholder(v) for k, v in value.items()}
        if isinstance(value, list):
            return [placeholder(v) for v in value]
        return value

    text = json.dumps(placeholder(doc), ensure_ascii=style == "ascii", indent=1)
    for i, raw in enumerate(raws):
        text = text.replace(f'"{_RAW}{i}"', raw)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def near_valid(draw: st.DrawFn, base: Any) -> bytes:
    """A valid document with one (sometimes two) fields mutated, truncated or flipped."""
    doc = base
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["replace", "replace", "remove", "extra"]))
        doc = _mutate(doc, path, how, draw(NASTY))
    data = _encode(doc, draw(st.sampled_from(["ascii", "utf-8"])))
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(min_value=0, max_value=len(data) - 1))]
    elif damage == "flip" and data:
        i = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    return data


def documents(base: Any) -> st.SearchStrategy[bytes]:
    """Random bytes, the valid document, and near-valid ones."""
    return st.one_of(
        st.binary(max_size=2048),
        st.just(_encode(base, "ascii")),
        near_valid(base),
        near_valid(base),
        near_valid(base),
    )


# --------------------------------------------------------------------------- bounds
def bounded(fn: Callable[[], Any]) -> Any:
    """``fn()``, asserting it took less than CPU_SECONDS of CPU time and at most PEAK_BYTES
    at its peak (traced only while it runs, so generating the input costs nothing here)."""
    tracemalloc.start()
    start = time.process_time()
    try:
        return fn()
    finally:
        cpu = time.process_time() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert cpu < CPU_SECONDS, f"{cpu:.2f} s of CPU for one input"
        assert peak <= PEAK_BYTES, f"{peak / 2**20:.1f} MiB for one input"


@contextlib.contextmanager
def only_budget_warnings() -> Iterator[None]:
    """Warnings are allowed only as BudgetWarning (a bad file skipped, named)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    others = [w for w in caught if not issubclass(w.category, BudgetWarning)]
    assert not others, [str(w.message) for w in others]


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the whole module; each example empties and refills its own."""
    return tmp_path_factory.mktemp("fuzz")


def fresh(area: Path, name: str) -> Path:
    """An empty directory ``name`` in ``area`` (files of an earlier example removed)."""
    directory = area / name
    if directory.exists():
        for entry in directory.iterdir():
            entry.unlink()
    else:
        directory.mkdir()
    return directory


# --------------------------------------------------------------------------- readers
@FUZZ
@given(data=st.one_of(documents(handoff_doc()), documents(claim_doc())))
def test_read_document(area: Path, data: bytes) -> None:
    """read_document returns a decoded document or raises HandoffError, nothing else."""
    path = fresh(area, "read") / "x.json"
    path.write_bytes(data)
    with contextlib.suppress(HandoffError):
        bounded(lambda: read_document(path, "handoff"))


@FUZZ
@given(data=documents(handoff_doc()))
def test_handoff_load(area: Path, data: bytes) -> None:
    """Handoff.load returns a handoff that can be written back as UTF-8 JSON, or raises
    HandoffError."""
    path = fresh(area, "load") / "s1.json"
    path.write_bytes(data)
    try:
        handoff = bounded(lambda: Handoff.load(path))
    except HandoffError:
        return
    json.dumps(handoff.to_dict(), ensure_ascii=False, default=str).encode("utf-8")


@FUZZ
@given(
    head=documents(claim_doc()),
    following=st.none() | documents(claim_doc(state="released", holder=NEXT)),
    failed=st.none() | documents(failed_doc()),
)
def test_claim_readers(
    area: Path, head: bytes, following: bytes | None, failed: bytes | None
) -> None:
    """The claim and failure readers return a record or raise HandoffError; claim_state
    never raises; resume gives a session or HandoffClaimedError."""
    directory = fresh(area, "claims")
    handoff = directory / "s1.json"
    handoff.write_text(json.dumps(handoff_doc()))
    _claims.claim_path(handoff).write_bytes(head)
    if following is not None:
        _claims.next_path(handoff, HOLDER).write_bytes(following)
    if failed is not None:
        _claims.failed_path(handoff).write_bytes(failed)

    def read() -> None:
        for reader in (
            lambda: _claims.read_record(_claims.claim_path(handoff), "s1"),
            lambda: _claims.read_current(handoff, "s1"),
            lambda: _claims.read_failure(handoff, "s1"),
        ):
            with contextlib.suppress(HandoffError):
                reader()
        state = _claims.claim_state(handoff)
        assert state.state in {
            "unclaimed", "running", "stale", "retry", "failed", "ended", "released", "unreadable"
        }  # fmt: skip
        _claims.describe(state)
        json.dumps(_claims.as_json(state))

    bounded(read)

    def resume() -> None:
        try:
            session = SessionBudget.resume(handoff, handoff_dir=None)
        except HandoffClaimedError:
            return
        assert session.lease is not None

    with only_budget_warnings():
        bounded(resume)


@FUZZ
@given(data=documents(done_doc()))
def test_done_loader(area: Path, data: bytes) -> None:
    """A completion record loads or raises HandoffError."""
    path = fresh(area, "done") / "d3.done"
    path.write_bytes(data)
    with contextlib.suppress(HandoffError):
        bounded(lambda: _chainfiles._load_done(path))


#: What a fuzzed directory may hold: a name and the document its content is made from.
FILES = [
    ("s1.json", handoff_doc("s1")),
    ("s2.json", resumed_doc()),
    ("s1.claim", claim_doc("s1")),
    (f".s1.claim.{HOLDER}", claim_doc("s1", "released", NEXT)),
    ("s1.failed", failed_doc("s1")),
    ("d3.done", done_doc()),
    ("s3.json", handoff_doc("s3")),
]


@st.composite
def directories(draw: st.DrawFn) -> dict[str, bytes]:
    """Some of FILES, each valid, near-valid or random."""
    chosen = draw(
        st.lists(st.sampled_from(FILES), min_size=1, max_size=5, unique_by=lambda f: f[0])
    )
    return {name: draw(documents(doc)) for name, doc in chosen}


@FUZZ
@given(files=directories())
def test_pending_handoffs_on_a_fuzzed_directory(area: Path, files: dict[str, bytes]) -> None:
    """pending_handoffs returns a list (only handoffs it can resume), warning with a
    BudgetWarning about what it skipped; it never raises."""
    directory = fresh(area, "pending")
    for name, data in files.items():
        (directory / name).write_bytes(data)
    with only_budget_warnings():
        found = bounded(lambda: pending_handoffs(directory))
    assert all(isinstance(p.handoff, Handoff) and p.path.parent == directory for p in found)


# --------------------------------------------------------------------------- the CLI
def run_cli(*args: str) -> tuple[int, str, str]:
    """``budgetkit ARGS`` in process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@FUZZ
@given(data=documents(handoff_doc()), as_json=st.booleans())
def test_cli_show(area: Path, data: bytes, as_json: bool) -> None:
    """`budgetkit show` of a fuzzed file: exit 0 or 1 (2 for usage), never a traceback."""
    path = fresh(area, "show") / "s1.json"
    path.write_bytes(data)
    args = ["show", str(path), *(["--json"] if as_json else [])]
    code, out, err = bounded(lambda: run_cli(*args))
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err
    if code == 0 and as_json:
        json.loads(out)
    if code == 1:
        assert err.startswith("budgetkit show: error: ")


@FUZZ
@given(files=directories(), as_json=st.booleans())
def test_cli_chain(area: Path, files: dict[str, bytes], as_json: bool) -> None:
    """`budgetkit chain` of a fuzzed directory: exit 0 or 1, never a traceback; --json
    output parses."""
    directory = fresh(area, "chain")
    for name, data in files.items():
        (directory / name).write_bytes(data)
    args = ["chain", str(directory), *(["--json"] if as_json else [])]
    with only_budget_warnings():
        code, out, err = bounded(lambda: run_cli(*args))
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err
    if as_json:
        doc = json.loads(out)
        assert {"chains", "problems", "unreadable"} <= set(doc)


def test_the_valid_documents_are_valid(area: Path) -> None:
    """The documents the mutations start from are accepted as they are (so a mutation is
    what makes a fuzzed one bad)."""
    directory = fresh(area, "valid")
    for name, doc in FILES:
        (directory / name).write_text(json.dumps(doc))
    handoff = directory / "s1.json"
    assert Handoff.load(handoff).session_id == "s1"
    assert _chainfiles._load_done(directory / "d3.done").session_id == "d3"
    record = _claims.read_record(_claims.claim_path(handoff), "s1")
    assert record is not None
    assert record.holder == HOLDER
    current = _claims.read_current(handoff, "s1")
    assert current is not None
    assert current.state == "released"
    failure = _claims.read_failure(handoff, "s1")
    assert failure is not None
    assert failure.error_type == "ValueError"
    code, out, err = run_cli("chain", str(directory), "--json")
    assert (code, err) == (0, ""), err
    chains = {c["root_session_id"]: c["status"] for c in json.loads(out)["chains"]}
    assert chains == {"s1": "finished", "s3": "pending"}
