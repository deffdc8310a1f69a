"""Files: atomic writes, temporary files, directory fsync, ids, and safe reads.

Generic file work shared by handoffs, claims, completion records and the Redis ledger.
A reader never blocks on a FIFO, never reads a device without end, and never loads more than
:data:`MAX_FILE_BYTES`; what it reads is strict UTF-8 JSON (see :func:`read_document`).
A writer's temporary file is named for its host and process, so the temporary files of a
writer killed mid-write are removed later (see :func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import stat
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from .exceptions import BudgetConfigError, BudgetTypeError, HandoffError

if TYPE_CHECKING:
    from pathlib import Path

#: The largest file budgetkit reads from a handoff directory (handoffs, claims, records).
MAX_FILE_BYTES: Final = 16 * 1024 * 1024
_CAP_TEXT: Final = "16 MiB"
#: How deeply a document read from a handoff directory may nest objects and arrays.
MAX_DEPTH: Final = 100

_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO with no writer opens at once instead of blocking
    | getattr(os, "O_NOCTTY", 0)  # a terminal device never becomes ours
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for an error message."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "of an unknown type")


def read_regular(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Opened without blocking (``O_NONBLOCK``), then checked with ``fstat``: a FIFO, a device,
    a socket or a directory is refused without reading it.

    Raises:
        OSError: the file cannot be opened or read (``FileNotFoundError`` when it is missing),
            is not a regular file, or is larger than ``max_bytes`` (``strerror`` says which).
    """
    fd = os.open(path, _FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            raise OSError(code, f"not a regular file: {_kind(mode)}", os.fspath(path))
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                cap = _CAP_TEXT if max_bytes == MAX_FILE_BYTES else f"{max_bytes} bytes"
                raise OSError(
                    errno.EFBIG, f"larger than the {cap} budgetkit reads", os.fspath(path)
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_document(path: Path, what: str, *, max_bytes: int = MAX_FILE_BYTES) -> object:
    """The JSON of a handoff directory's file (``what``: handoff, claim ...), read safely.

    Only a regular file of at most ``max_bytes`` (16 MiB) is read, opened without blocking (a
    FIFO or a device is refused, never waited on). Raises :class:`HandoffError` naming the file
    and the fault.
    """
    try:
        data = read_regular(path, max_bytes=max_bytes)
    except OSError as exc:
        raise HandoffError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HandoffError(f"{what} {str(path)!r} is not UTF-8 text ({exc})") from None
    import json

    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise HandoffError(f"{what} {str(path)!r} is not valid JSON ({exc})") from None
    except RecursionError:
        doc = None
        problem: str | None = _NESTED
    else:
        problem = document_problem(doc)
    if problem is not None:
        raise HandoffError(f"{what} {str(path)!r} is {problem}")
    return doc


_NESTED: Final = f"nested more than {MAX_DEPTH} levels deep (objects and arrays)"
#: A UTF-16 surrogate code point: in decoded JSON, only a lone one (a "\ud800" escape that
#: does not pair) can remain, and it is not text (it cannot be encoded, printed or written).
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def document_problem(doc: object) -> str | None:
    """Why a decoded JSON document is refused, or ``None``: nested more than
    :data:`MAX_DEPTH` levels, or a string (a key or a value) holding a lone surrogate.
    Iterative, so it is safe on any document."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            found = _SURROGATE.search(node)
            if found is not None:
                return (
                    f"not valid Unicode text: a string holds the lone surrogate "
                    f"{found.group()!r} ({node[:40]!r})"
                )
        elif isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                return _NESTED
            if isinstance(node, dict):
                stack.extend((key, depth) for key in node)
                stack.extend((value, depth + 1) for value in node.values())
            else:
                stack.extend((item, depth + 1) for item in node)
    return None


# --------------------------------------------------------------------------- temporary files

#: A temporary file of a writer of this host whose process is gone is removed once it is this
#: many seconds old (a live write takes milliseconds; the margin covers pid namespaces).
STALE_TEMP_SECONDS: Final = 30.0


@functools.cache
def _host() -> str:
    """This host, as it appears in temporary file names (letters, digits and ``-`` only)."""
    import socket  # on first use: it costs `import budgetkit` milliseconds

    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


#: ``.<target name>.<host>.<pid>.<random>.tmp``
_TEMP_NAME: Final = re.compile(
    r"\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]{1,10})\.[a-z0-9_]+\.tmp"
)


def temp_prefix(target: Path) -> str:
    """The start of the name of a temporary file written for ``target``: it names the target,
    this host and this process, so a later cleaner can tell when its writer is gone."""
    return f".{target.name}.{_host()}.{os.getpid()}."


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (a process of another user does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: someone else's; anything odd: assume alive
        return True
    return True


def _path(name: str) -> Path:
    from pathlib import Path

    return Path(name)


def remove_stale_temps(
    directory: str | os.PathLike[str], *, older_than: float = STALE_TEMP_SECONDS
) -> list[Path]:
    """Remove the temporary files that writers of this host left in ``directory`` when they
    died mid-write (killed, crashed): the writer's process is gone and the file is older than
    ``older_than`` seconds. Files of other hosts, of live processes, and anything else are
    left alone. Returns what was removed; never raises for an unreadable directory.
    """
    if os.name != "posix":  # pragma: no cover - os.kill(pid, 0) is not a probe elsewhere
        return []
    removed: list[Path] = []
    now = time.time()
    try:
        entries = os.scandir(directory)
    except OSError:
        return removed
    with entries:
        for entry in entries:
            match = _TEMP_NAME.fullmatch(entry.name)
            if match is None or match["host"] != _host():
                continue
            pid = int(match["pid"])
            if pid <= 0 or pid == os.getpid() or _alive(pid):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < older_than:
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(_path(entry.path))
    return removed


# --------------------------------------------------------------------------- writing
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

    write_atomic_bytes(
        path, json.dumps(doc, indent=2, sort_keys=False, default=str).encode("utf-8")
    )


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file, or the whole new one
    (see :func:`write_atomic`)."""
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
    name) and removes it when that fails. Its name, ``.<name>.<host>.<pid>.<random>.tmp``,
    lets a later write or scan remove it if this process dies first.
    """
    import tempfile

    remove_stale_temps(path.parent)  # those of writers killed mid-write
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
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
