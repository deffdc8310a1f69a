"""The files of a handoff directory, read safely and kept tidy.

A reader never blocks on a FIFO, never reads a device without end, and never loads more than
:data:`MAX_FILE_BYTES`; what it reads is strict UTF-8 JSON (see :func:`read_document`).
A writer's temporary file is named for its host and process, so the temporary files of a
writer killed mid-write are removed later (see :func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Final

from .exceptions import HandoffError

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


def read_document(path: Path, what: str) -> object:
    """The JSON of a handoff directory's file (``what``: handoff, claim ...), read safely.

    Only a regular file of at most 16 MiB is read, opened without blocking (a FIFO or a device
    is refused, never waited on). Raises :class:`HandoffError` naming the file and the fault.
    """
    try:
        data = read_regular(path)
    except OSError as exc:
        raise HandoffError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HandoffError(f"{what} {str(path)!r} is not UTF-8 text ({exc})") from None
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
#: This host, as it appears in temporary file names (letters, digits and ``-`` only).
_HOST: Final = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
#: ``.<target name>.<host>.<pid>.<random>.tmp``
_TEMP_NAME: Final = re.compile(
    r"\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]{1,10})\.[a-z0-9_]+\.tmp"
)


def temp_prefix(target: Path) -> str:
    """The start of the name of a temporary file written for ``target``: it names the target,
    this host and this process, so a later cleaner can tell when its writer is gone."""
    return f".{target.name}.{_HOST}.{os.getpid()}."


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (a process of another user does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: someone else's; anything odd: assume alive
        return True
    return True


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
            if match is None or match["host"] != _HOST:
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
                removed.append(Path(entry.path))
    return removed
