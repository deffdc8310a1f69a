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


def check_writable_directory(path: Path, name: str) -> None:
    """A directory budgetkit will write into later: it exists or can be created, and is
    writable; world-writable without the sticky bit, it warns (others could replace files).

    Raises:
        BudgetConfigError: naming the first part of ``path`` that is in the way.
    """
    import stat

    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise BudgetConfigError(
            f"{name}={str(path)!r} cannot be created: {str(probe)!r} is not a directory"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BudgetConfigError(
            f"{name}={str(path)!r} is not writable: {str(probe)!r} does not let this user "
            "create files"
        )
    if probe == path:
        mode = path.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            from ._warnings import warn
            from .exceptions import BudgetWarning

            warn(
                f"budgetkit: {name}={str(path)!r} is world-writable without the sticky bit: "
                "any local user can replace or remove its files",
                BudgetWarning,
            )
