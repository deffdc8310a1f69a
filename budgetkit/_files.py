"""Reading the files of a handoff directory safely: regular files only, bounded in size.

A reader never blocks on a FIFO, never reads a device without end, and never loads more than
:data:`MAX_FILE_BYTES`; what it reads is strict UTF-8 JSON (see :func:`read_document`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import TYPE_CHECKING, Final

from .exceptions import HandoffError

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
