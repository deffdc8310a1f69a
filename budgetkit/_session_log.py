"""The session log: one JSON line per finished session, appended safely by many processes.

The log feeds ``budgetkit stats`` (calibration of limits). Each line is a JSON object built
by :func:`session_record`; :func:`append_record` appends it with a single ``write`` on a
descriptor opened with ``O_APPEND``, under an exclusive ``flock``, so that concurrent
writers never interleave. :func:`read_records` reports corrupt lines and skips them.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import BudgetError, BudgetTypeError, BudgetWarning

if TYPE_CHECKING:
    from ._session import SessionBudget

__all__ = [
    "KIND",
    "SCHEMA_VERSION",
    "SESSION_LOG_ENV",
    "CorruptRecordWarning",
    "SessionLogWarning",
    "append_record",
    "log_session",
    "read_records",
    "record_problem",
    "session_log_path",
    "session_record",
    "usage_decimal",
]

#: Environment variable naming the default session log.
SESSION_LOG_ENV = "BUDGETKIT_SESSION_LOG"
KIND = "budgetkit.session"
SCHEMA_VERSION = 1

#: The usage fields ``budgetkit stats`` reads; each must be a non-negative number.
USAGE_FIELDS = ("steps", "llm_calls", "total_tokens", "cost_usd", "elapsed_seconds")

#: Called with ``(path, line_number, problem)`` for each corrupt line.
OnCorrupt = Callable[[Path, int, str], None]

if sys.platform != "win32":
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

else:  # pragma: no cover - O_APPEND alone on Windows

    def _lock(fd: int) -> None:
        return None

    def _unlock(fd: int) -> None:
        return None


class SessionLogWarning(BudgetWarning):
    """The session log could not be written; the session itself is not affected."""


class CorruptRecordWarning(BudgetWarning):
    """A line of a session log is not a valid record; it was skipped."""


# ---------------------------------------------------------------------------- writing
def session_log_path(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Where a session's record goes: ``explicit``, else ``$BUDGETKIT_SESSION_LOG``, else nowhere.

    Args:
        explicit: a path given in code; wins over the environment.
        environ: the environment; default ``os.environ``.

    Returns:
        The log's path, or ``None`` when no log is configured (empty variable included).
    """
    if explicit is not None:
        if not isinstance(explicit, str | os.PathLike) or not str(explicit):
            raise BudgetTypeError(f"session log must be a file path or None, got {explicit!r}")
        return Path(explicit)
    env = os.environ if environ is None else environ
    value = env.get(SESSION_LOG_ENV, "").strip()
    return Path(value) if value else None


def append_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line, atomically with respect to other writers.

    The file (and its directory) is created if needed. The line is written with a single
    ``os.write`` on an ``O_APPEND`` descriptor while holding an exclusive ``flock``. If the
    file does not end with a newline (a writer died mid-line), a newline is written first,
    so that only the damaged line is lost. ``Decimal``, ``Path`` and ``datetime`` values are
    written as strings.

    Args:
        path: the log file.
        record: a JSON-serialisable mapping.

    Raises:
        BudgetTypeError: ``record`` is not a mapping or cannot be serialised.
        OSError: the file cannot be opened or written.
    """
    if not isinstance(record, Mapping):
        raise BudgetTypeError(f"record must be a mapping, got {type(record).__name__}")
    try:
        text = json.dumps(dict(record), default=str, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise BudgetTypeError(f"record cannot be written as JSON: {exc}") from None
    line = (text + "\n").encode("utf-8")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        _lock(fd)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            while written < len(line):  # short write (disk full ...): finish under the lock
                written += os.write(fd, line[written:])
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def session_record(session: SessionBudget, *, ended_at: datetime | None = None) -> dict[str, Any]:
    """The log record of a finished session.

    Args:
        session: a ``SessionBudget`` whose ``with`` block has exited.
        ended_at: when it ended (aware datetime); default now. ``started_at`` is
            ``ended_at`` minus the session's duration, unless the session has its own
            ``started_at`` / ``ended_at`` datetime attributes, which are used instead.

    Returns:
        ``kind``, ``schema_version``, ``session_id``, ``parent_session_id``, ``name``,
        ``limits``, ``usage``, ``stop_reason``, ``stopped_by``, ``handoff_path``,
        ``duration_seconds``, ``started_at`` and ``ended_at`` (ISO 8601, UTC).

    Raises:
        BudgetError: the session has not finished.
    """
    result = session.result
    if result is None:
        raise BudgetError(
            f"session {session.session_id!r} has not finished; "
            "session_record() needs a session whose block has exited"
        )
    usage = result.usage.to_dict()
    duration = float(result.usage.elapsed_seconds)
    end = _aware(getattr(session, "ended_at", None)) or _aware(ended_at) or datetime.now(UTC)
    start = _aware(getattr(session, "started_at", None)) or end - timedelta(seconds=duration)
    return {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "session_id": result.session_id,
        "parent_session_id": session.parent_session_id,
        "name": session.name,
        "limits": session.limits.as_dict(),
        "usage": usage,
        "stop_reason": result.stop_reason,
        "stopped_by": result.stopped_by,
        "handoff_path": None if result.handoff_path is None else str(result.handoff_path),
        "duration_seconds": usage["elapsed_seconds"],
        "started_at": _iso(start),
        "ended_at": _iso(end),
    }


def log_session(
    session: SessionBudget,
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Append a finished session's record to its log; never raises for I/O problems.

    Meant for ``SessionBudget.__exit__``: the log is resolved with :func:`session_log_path`;
    a write failure is reported as a :class:`SessionLogWarning` and does not affect the
    session.

    Args:
        session: a finished ``SessionBudget``.
        path: an explicit log path; default ``$BUDGETKIT_SESSION_LOG``.
        environ: the environment; default ``os.environ``.

    Returns:
        The path written to, or ``None`` (no log configured, or the write failed).
    """
    target = session_log_path(path, environ=environ)
    if target is None:
        return None
    try:
        append_record(target, session_record(session))
    except (OSError, BudgetTypeError) as exc:
        warnings.warn(
            f"budgetkit: could not append session {session.session_id!r} to the session log "
            f"{str(target)!r}: {exc}",
            SessionLogWarning,
            stacklevel=2,
        )
        return None
    return target


def _aware(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------- reading
def read_records(
    path: str | os.PathLike[str],
    *,
    on_corrupt: OnCorrupt | None = None,
    validate: bool = True,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each valid line of a session log.

    Blank lines are ignored. A corrupt line (not UTF-8, not JSON, not an object, or, with
    ``validate``, not a session record: see :func:`record_problem`) is reported and skipped;
    it never stops the iteration.

    Args:
        path: the log file.
        on_corrupt: called with ``(path, line_number, problem)`` for each corrupt line;
            by default a :class:`CorruptRecordWarning` is emitted.
        validate: check that each object has the fields ``budgetkit stats`` needs.

    Raises:
        OSError: the file cannot be opened or read (raised on the first iteration).
    """
    source = Path(path)
    report = on_corrupt or _warn_corrupt
    with source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                report(source, number, "not UTF-8 text")
                continue
            except ValueError as exc:
                report(source, number, f"not valid JSON ({exc})")
                continue
            if not isinstance(doc, dict):
                report(source, number, f"not a JSON object (got {type(doc).__name__})")
                continue
            problem = record_problem(doc) if validate else None
            if problem is not None:
                report(source, number, problem)
                continue
            yield number, doc


def record_problem(record: Mapping[str, Any]) -> str | None:
    """What makes ``record`` unusable as a session record, or ``None`` when it is fine.

    A record needs a ``stop_reason`` string and a ``usage`` object whose ``steps``,
    ``llm_calls``, ``total_tokens`` (non-negative ints), ``cost_usd`` (a non-negative
    decimal string or number) and ``elapsed_seconds`` (a non-negative number) are valid.
    ``limits``, when present, must be an object.
    """
    if not isinstance(record.get("stop_reason"), str):
        return "stop_reason is missing or not a string"
    usage = record.get("usage")
    if not isinstance(usage, dict):
        return "usage is missing or not an object"
    for field in USAGE_FIELDS:
        if field not in usage:
            return f"usage.{field} is missing"
        value = usage[field]
        if field == "cost_usd":
            ok = usage_decimal(value) is not None
        elif field == "elapsed_seconds":
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and 0 <= value < float("inf")
            )
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if not ok:
            return f"usage.{field} is not a non-negative number: {value!r}"
    limits = record.get("limits")
    if limits is not None and not isinstance(limits, dict):
        return "limits is not an object"
    return None


def usage_decimal(value: object) -> Decimal | None:
    """A non-negative finite USD amount from a record (string or number), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return amount


def _warn_corrupt(path: Path, number: int, problem: str) -> None:
    warnings.warn(
        f"budgetkit: {path}:{number}: corrupt session record skipped: {problem}",
        CorruptRecordWarning,
        stacklevel=3,
    )
