"""A framework's own state (its message history) in the handoff, and back on resume.

An adapter calls :func:`record` with a function that returns the conversation as JSON values;
it is called only when the handoff is written. Up to :data:`INLINE_BYTES` the state sits in
the handoff (``extra["framework_state"]["payload"]``); a larger one goes to the sidecar file
``<session_id>.state`` beside the handoff, written atomically before it, and the handoff
records its size and sha256, checked when it is read. Beyond :data:`MAX_STATE_BYTES` the state
is not stored (a warning says so, and resuming it raises :class:`HandoffError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, Final

from ._files import MAX_FILE_BYTES, document_problem, read_regular, write_atomic_bytes
from .exceptions import BudgetWarning, HandoffError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from ._handoff import Handoff
    from ._session import SessionBudget

__all__ = ["INLINE_BYTES", "MAX_STATE_BYTES", "attach", "check_entry", "load", "record"]

#: The largest state kept inside the handoff itself (its JSON, in bytes): 256 KiB.
INLINE_BYTES: Final = 256 * 1024
#: The largest state stored at all (in a sidecar file): 16 MiB, what budgetkit reads.
MAX_STATE_BYTES: Final = MAX_FILE_BYTES
#: The version of the entry's layout.
FORMAT: Final = 1
KEY: Final = "framework_state"
_FRAMEWORK = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def record(budget: SessionBudget, framework: str, dump: Callable[[], object]) -> None:
    """The session's latest framework state: ``dump()`` returns it as JSON values, and is
    called only if the session's handoff is written."""
    budget.handoff_notes.framework_state = (framework, dump)


def sidecar_name(session_id: str) -> str:
    return f"{session_id}.state"


def attach(budget: SessionBudget, handoff: Handoff, path: Path | None) -> None:
    """Put the recorded state in ``handoff`` (inline, or in a sidecar beside ``path``).

    Never raises: a state that cannot be stored is recorded as omitted, with a warning, so
    the budget error and its handoff still reach the user.
    """
    recorded = budget.handoff_notes.framework_state
    if recorded is None:
        return
    framework, dump = recorded
    entry: dict[str, Any] = {"framework": framework, "format": FORMAT}
    try:
        payload = dump()
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        entry["bytes"] = len(data)
        # The handoff nests the payload 3 levels deep (document, extra, entry).
        problem = document_problem([[[payload]]])
        if problem is not None:
            raise ValueError(f"the state is {problem}")
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"{len(data)} bytes, over the cap of {MAX_STATE_BYTES} bytes")
        if len(data) <= INLINE_BYTES or path is None:
            entry["payload"] = payload
        else:
            name = sidecar_name(budget.session_id)
            write_atomic_bytes(path.parent / name, data)
            entry["sidecar"] = name
            entry["sha256"] = hashlib.sha256(data).hexdigest()
    except Exception as exc:  # never hide the budget error behind a state that won't store
        entry.pop("payload", None)
        entry["omitted"] = f"{type(exc).__name__}: {exc}"[:500]
        from ._warnings import warn

        with contextlib.suppress(Warning):  # warnings as errors: the budget error comes first
            warn(
                f"budgetkit: the {framework} state of session {budget.session_id!r} is not in "
                f"its handoff ({entry['omitted']}); a resumed run starts without its history",
                BudgetWarning,
            )
    handoff.extra[KEY] = entry


def check_entry(entry: object, session_id: str, source: str) -> None:
    """Validate a handoff's ``extra["framework_state"]``; raises :class:`HandoffError`."""
    where = f"{source}: extra.{KEY}"
    if not isinstance(entry, dict):
        raise HandoffError(f"{where} must be an object, got {entry!r:.80}")
    framework = entry.get("framework")
    if not isinstance(framework, str) or not _FRAMEWORK.fullmatch(framework):
        raise HandoffError(f"{where}.framework must be a framework name, got {framework!r:.80}")
    for key in ("format", "bytes"):
        value = entry.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HandoffError(f"{where}.{key} must be a non-negative int, got {value!r:.80}")
    forms = [key for key in ("payload", "sidecar", "omitted") if key in entry]
    if len(forms) != 1:
        raise HandoffError(f"{where} must hold one of payload, sidecar or omitted, got {forms}")
    if "sidecar" in entry:
        expected = sidecar_name(session_id)
        if entry["sidecar"] != expected:  # a file name read from a file: only this one
            raise HandoffError(
                f"{where}.sidecar must be {expected!r}, got {entry['sidecar']!r:.80}"
            )
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise HandoffError(
                f"{where}.sha256 must be 64 lowercase hex digits, got {digest!r:.80}"
            )
    if "omitted" in entry and not isinstance(entry["omitted"], str):
        raise HandoffError(f"{where}.omitted must be a str, got {entry['omitted']!r:.80}")


def load(handoff: Handoff, directory: Path | None, framework: str) -> object:
    """The state ``framework``'s adapter stored in ``handoff``, as JSON values.

    ``directory`` is where the handoff file is (``None``: a handoff object not read from a
    file, whose sidecar cannot be found).

    Raises:
        HandoffError: no state of ``framework``, a state that was not stored, or a sidecar
            that is missing, unreadable, or not the one the handoff records (its sha256).
    """
    where = f"handoff of session {handoff.session_id!r}"
    entry = handoff.extra.get(KEY)
    if entry is None:
        raise HandoffError(
            f"{where} holds no framework state: it was written by a run without a budgetkit "
            f"{framework} adapter, or by an older budgetkit"
        )
    check_entry(entry, handoff.session_id, where)
    if entry["framework"] != framework:
        raise HandoffError(f"{where} holds {entry['framework']} state, not {framework} state")
    if entry.get("format") != FORMAT:
        raise HandoffError(f"{where} holds state in format {entry.get('format')}, not {FORMAT}")
    if "omitted" in entry:
        raise HandoffError(f"{where}: the {framework} state was not stored ({entry['omitted']})")
    if "payload" in entry:
        return entry["payload"]
    if directory is None:
        raise HandoffError(
            f"{where} keeps its {framework} state in the sidecar file {entry['sidecar']!r}: "
            "pass the handoff's path, or the session resumed from it"
        )
    path = directory / entry["sidecar"]
    try:
        data = read_regular(path, max_bytes=MAX_STATE_BYTES)
    except OSError as exc:
        raise HandoffError(
            f"cannot read the state sidecar {str(path)!r}: {exc.strerror or exc}"
        ) from exc
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise HandoffError(
            f"the state sidecar {str(path)!r} does not match the sha256 its handoff records: "
            "it was changed or replaced after the handoff was written"
        )
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # pragma: no cover - hashed
        raise HandoffError(f"the state sidecar {str(path)!r} is not JSON ({exc})") from None
    return payload
