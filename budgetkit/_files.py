"""Files: atomic writes, temporary files, directory fsync, timestamps and id checks.

Generic file work shared by handoffs, claims, completion records and the Redis ledger.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from pathlib import Path

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_session_id(value: object, name: str = "session_id") -> str:
    """A session id is also a file name: letters, digits, ``_.-``; no separators, no ``..``."""
    if not isinstance(value, str):
        raise BudgetTypeError(f"{name} must be a str, got {value!r}")
    if not _SESSION_ID.fullmatch(value) or ".." in value:
        raise BudgetConfigError(
            f"{name} must be 1-128 characters of letters, digits, '_', '.' or '-', "
            f"start with a letter or digit and contain no '..', got {value!r}"
        )
    return value


def utc_now() -> str:
    """ISO 8601 timestamp in UTC."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write JSON to ``path`` so that a reader sees the old file, or the whole new one.

    Temporary file in the same directory (created 0600), fsync, rename, fsync the directory.
    """
    import json

    data = json.dumps(doc, indent=2, sort_keys=False, default=str).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_temp(path: Path, data: bytes) -> str:
    """Write ``data`` whole to a new 0600 temporary file beside ``path``, fsynced; its name.

    The caller moves it into place (``os.replace``, or ``os.link`` to refuse an existing
    name) and removes it when that fails.
    """
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
