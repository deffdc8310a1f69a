"""Claims on handoffs are leases: held while the resuming session runs, retried when it dies.

A handoff ``x.json`` is claimed by a chain of small, immutable claim records:

- ``x.claim``, the first, created with ``os.link`` (which fails when the name exists), so of
  two workers exactly one claims a fresh handoff;
- ``.x.claim.<holder>``, the record that follows the record whose holder id is ``<holder>``,
  created the same way. Whoever changes the state of a claim (re-claims an expired one, closes
  its own, releases one by hand) links the next record under that name: only one link can
  succeed, so two workers re-claiming one expired claim never both win, and a decision taken
  on a record that has since been followed loses. No record is ever renamed, rewritten or
  removed, so no worker can act on a file that changed under it.

The *current* claim is the last record of the chain. Its holder renews it by moving the
file's modification time (``os.utime``) from a daemon thread, every third of the lease; the
lease is over ``lease_seconds`` after the last renewal. A claim is:

- ``running``: held, its lease live (or written by a budgetkit without leases: held for good);
- ``stale``: held, its lease expired (the worker died or hung): claimable again;
- ``retry``: held, and ``x.failed`` says this attempt ended with an exception: claimable again;
- ``failed``: ``stale`` or ``retry`` on the last attempt allowed (``max_attempts``): not
  claimable until released by hand (``budgetkit chain DIR --reclaim x``);
- ``ended``: the resuming session ended (completed, or stopped and handed off) and its record
  is in the directory or in the closing record: never claimable again;
- ``released``: released by hand: claimable, attempts counted from 1 again;
- ``unreadable``: counts as a live claim (``--reclaim --force`` removes it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ._files import check_session_id, fsync_dir, read_document, utc_now, write_atomic, write_temp
from .exceptions import (
    BudgetConfigError,
    BudgetError,
    BudgetTypeError,
    BudgetWarning,
    HandoffClaimedError,
    HandoffError,
)

if TYPE_CHECKING:
    from pathlib import Path

    from ._values import SessionResult

CLAIM_KIND: Final = "budgetkit.claim"
FAILED_KIND: Final = "budgetkit.failed"

#: Seconds a claim lives after its last renewal unless ``lease_seconds=`` says otherwise.
DEFAULT_LEASE_SECONDS: Final = 60.0
#: Claims of one handoff (the first included) before it is reported ``failed``.
DEFAULT_MAX_ATTEMPTS: Final = 3
#: The largest claim or failure record read (they are a few hundred bytes).
MAX_RECORD_BYTES: Final = 256 * 1024
#: The longest chain of claim records followed (at most 16 MiB read); a longer one is
#: unreadable.
MAX_RECORDS: Final = 64
_MAX_LEASE: Final = 10_000_000.0  # about 115 days
_MAX_ATTEMPTS_CAP: Final = 1_000_000

_HOLDER = re.compile(r"[0-9a-f]{32}")
_ERROR_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}")
_OUTCOME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_STATES = ("held", "ended", "released")


# --------------------------------------------------------------------------- settings
def check_lease_settings(lease_seconds: object, max_attempts: object) -> tuple[float, int]:
    """``lease_seconds`` (a positive finite number) and ``max_attempts`` (a positive int),
    with their defaults for ``None``."""
    if lease_seconds is None:
        lease = DEFAULT_LEASE_SECONDS
    else:
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float):
            raise BudgetTypeError(
                f"lease_seconds must be a number of seconds, got {lease_seconds!r}"
            )
        lease = float(lease_seconds)
        if not math.isfinite(lease) or lease <= 0 or lease > _MAX_LEASE:
            raise BudgetConfigError(
                f"lease_seconds must be more than 0 and at most {_MAX_LEASE:g}, "
                f"got {lease_seconds!r}"
            )
    return lease, check_max_attempts(max_attempts)


def check_max_attempts(max_attempts: object) -> int:
    """``max_attempts`` (a positive int), or its default for ``None``."""
    if max_attempts is None:
        return DEFAULT_MAX_ATTEMPTS
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise BudgetTypeError(f"max_attempts must be an int, got {max_attempts!r}")
    if not 1 <= max_attempts <= _MAX_ATTEMPTS_CAP:
        raise BudgetConfigError(
            f"max_attempts must be between 1 and {_MAX_ATTEMPTS_CAP}, got {max_attempts!r}"
        )
    return max_attempts


def check_shared_directory(directory: Path) -> None:
    """Refuse to claim work from a directory anyone may write to that is not ours and has no
    sticky bit: any local user could plant, replace or remove its handoffs and claims.

    Raises:
        BudgetConfigError: naming the directory, its owner and the fixes.
    """
    if os.name != "posix":  # pragma: no cover - no owners or sticky bits to check
        return
    try:
        info = os.stat(directory)
    except OSError:
        return  # missing: the caller says so in its own words
    mode = info.st_mode
    if not mode & stat.S_IWOTH or mode & stat.S_ISVTX or info.st_uid == os.geteuid():
        return
    raise BudgetConfigError(
        f"handoff directory {str(directory)!r} is world-writable, has no sticky bit and "
        f"belongs to another user (uid {info.st_uid}): anyone could plant, replace or remove "
        "its handoffs and claims, so budgetkit does not claim work from it. Make it yours "
        "(chown), drop world write (chmod o-w) or set the sticky bit (chmod +t)"
    )


# --------------------------------------------------------------------------- paths
def claim_path(handoff_path: Path) -> Path:
    """``x.json`` is claimed first by ``x.claim`` beside it."""
    return handoff_path.with_name(handoff_path.name.removesuffix(".json") + ".claim")


def next_path(handoff_path: Path, holder: str) -> Path:
    """The claim record that follows the record of ``holder`` (a checked hex id)."""
    return handoff_path.with_name(f".{handoff_path.name.removesuffix('.json')}.claim.{holder}")


def failed_path(handoff_path: Path) -> Path:
    """``x.json``'s failed attempt is recorded in ``x.failed``."""
    return handoff_path.with_name(handoff_path.name.removesuffix(".json") + ".failed")


def moved_on(directory: Path, session_id: str | None) -> bool:
    """Whether session ``session_id`` left its handoff or completion record in ``directory``
    (the chain went on from the handoff it claimed)."""
    if session_id is None:
        return False
    return any(
        os.path.lexists(directory / f"{session_id}{suffix}") for suffix in (".json", ".done")
    )


# --------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """One checked claim record."""

    path: Path
    doc: dict[str, Any]
    """The record as written."""
    state: str
    """``held``, ``ended`` or ``released``."""
    holder: str
    attempt: int
    claimed_by: str | None
    lease_seconds: float | None
    """``None``: written by a budgetkit without leases (held for good)."""
    renewed: float
    """The file's modification time: when the holder last renewed it."""
    pid: int | None = None
    host: str | None = None
    outcome: str | None = None


def _record_problem(doc: object, session_id: str) -> str | None:
    """Why a decoded claim record is not one (``None``: it is)."""
    if not isinstance(doc, dict) or doc.get("kind") != CLAIM_KIND:
        return f'not a budgetkit claim (no "kind": "{CLAIM_KIND}")'
    try:
        check_session_id(doc.get("session_id"), "session_id")
        if doc.get("claimed_by") is not None:
            check_session_id(doc["claimed_by"], "claimed_by")
    except (BudgetConfigError, BudgetTypeError) as exc:
        return str(exc)
    if doc["session_id"] != session_id:
        return f"it claims the handoff of session {doc['session_id']!r}, not {session_id!r}"
    if "holder" not in doc:
        return None  # a claim written before leases: only the ids are known
    checks: tuple[tuple[str, bool], ...] = (
        ("holder", isinstance(doc["holder"], str) and bool(_HOLDER.fullmatch(doc["holder"]))),
        ("state", doc.get("state") in _STATES),
        ("attempt", _is_int(doc.get("attempt"), 0, _MAX_ATTEMPTS_CAP)),
        (
            "lease_seconds",
            _is_seconds(doc.get("lease_seconds"))
            or (doc.get("state") != "held" and doc.get("lease_seconds") is None),
        ),
        ("pid", doc.get("pid") is None or _is_int(doc.get("pid"), 0, 2**63)),
        ("host", doc.get("host") is None or _is_text(doc.get("host"), 255)),
        ("claimed_at", doc.get("claimed_at") is None or _is_text(doc.get("claimed_at"), 64)),
        (
            "outcome",
            doc.get("outcome") is None
            or (isinstance(doc["outcome"], str) and bool(_OUTCOME.fullmatch(doc["outcome"]))),
        ),
    )
    for key, ok in checks:
        if not ok:
            return f"{key} is not valid: {_short(doc.get(key))}"
    if doc["state"] == "held" and (doc.get("claimed_by") is None or doc["attempt"] < 1):
        return "a held claim names no claimed_by session, or no attempt"
    return None


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= _MAX_LEASE
    )


def _is_text(value: object, longest: int) -> bool:
    return isinstance(value, str) and len(value) <= longest and value.isprintable()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_record(path: Path, session_id: str) -> ClaimRecord | None:
    """The claim record at ``path``, ``None`` when there is none.

    Raises:
        HandoffError: the file cannot be read or is not a claim record of ``session_id``.
    """
    try:
        doc = read_document(path, "claim", max_bytes=MAX_RECORD_BYTES)
    except HandoffError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
    problem = _record_problem(doc, session_id)
    if problem is not None:
        raise HandoffError(f"claim {str(path)!r}: {problem}")
    assert isinstance(doc, dict)
    try:
        renewed = os.stat(path).st_mtime
    except FileNotFoundError:
        return None  # removed by hand since it was read
    except OSError as exc:
        raise HandoffError(f"cannot read claim {str(path)!r}: {exc.strerror or exc}") from None
    if "holder" not in doc:  # before leases: held for good, named by its content
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
        return ClaimRecord(path, doc, "held", digest, 1, doc.get("claimed_by"), None, renewed)
    return ClaimRecord(
        path=path,
        doc=doc,
        state=doc["state"],
        holder=doc["holder"],
        attempt=doc["attempt"],
        claimed_by=doc.get("claimed_by"),
        lease_seconds=None if doc.get("lease_seconds") is None else float(doc["lease_seconds"]),
        renewed=renewed,
        pid=doc.get("pid"),
        host=doc.get("host"),
        outcome=doc.get("outcome"),
    )


def read_current(handoff_path: Path, session_id: str) -> ClaimRecord | None:
    """The last record of the handoff's claim chain; ``None`` when it was never claimed.

    Raises:
        HandoffError: a record of the chain is unreadable, or the chain is too long.
    """
    current = read_record(claim_path(handoff_path), session_id)
    if current is None:
        return None
    seen = {current.holder}
    for _ in range(MAX_RECORDS):
        following = read_record(next_path(handoff_path, current.holder), session_id)
        if following is None:
            return current
        if following.holder in seen:
            raise HandoffError(
                f"claim record {str(following.path)!r} names holder {following.holder!r} "
                "again: the claim records form a cycle"
            )
        seen.add(following.holder)
        current = following
    raise HandoffError(
        f"claim {str(claim_path(handoff_path))!r} is followed by more than {MAX_RECORDS} "
        "claim records"
    )


@dataclass(frozen=True, slots=True)
class Failure:
    """A checked ``<id>.failed`` record: an attempt that ended with an exception."""

    doc: dict[str, Any]
    holder: str
    attempt: int
    error_type: str
    claimed_by: str | None


def read_failure(handoff_path: Path, session_id: str) -> Failure | None:
    """The handoff's failure record; ``None`` when there is none.

    Raises:
        HandoffError: the file cannot be read or is not a failure record of ``session_id``.
    """
    path = failed_path(handoff_path)
    try:
        doc = read_document(path, "failure record", max_bytes=MAX_RECORD_BYTES)
    except HandoffError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
    problem = _failure_problem(doc, session_id)
    if problem is not None:
        raise HandoffError(f"failure record {str(path)!r}: {problem}")
    assert isinstance(doc, dict)
    return Failure(doc, doc["holder"], doc["attempt"], doc["error_type"], doc.get("claimed_by"))


def _failure_problem(doc: object, session_id: str) -> str | None:
    if not isinstance(doc, dict) or doc.get("kind") != FAILED_KIND:
        return f'not a budgetkit failure record (no "kind": "{FAILED_KIND}")'
    try:
        check_session_id(doc.get("session_id"), "session_id")
        if doc.get("claimed_by") is not None:
            check_session_id(doc["claimed_by"], "claimed_by")
    except (BudgetConfigError, BudgetTypeError) as exc:
        return str(exc)
    if doc["session_id"] != session_id:
        return f"it records a failure of session {doc['session_id']!r}, not {session_id!r}"
    checks = (
        ("holder", isinstance(doc.get("holder"), str) and bool(_HOLDER.fullmatch(doc["holder"]))),
        ("attempt", _is_int(doc.get("attempt"), 1, _MAX_ATTEMPTS_CAP)),
        (
            "error_type",
            isinstance(doc.get("error_type"), str)
            and bool(_ERROR_TYPE.fullmatch(doc["error_type"])),
        ),
    )
    for key, ok in checks:
        if not ok:
            return f"{key} is not valid: {_short(doc.get(key))}"
    return None


# --------------------------------------------------------------------------- state
@dataclass(frozen=True, slots=True)
class ClaimState:
    """What the claim of one handoff says now (see the module's docstring for the states)."""

    state: str
    """``unclaimed``, ``running``, ``stale``, ``retry``, ``failed``, ``ended``, ``released``
    or ``unreadable``."""
    attempts: int
    """Claims used so far (the current one included); 0 when unclaimed or released."""
    max_attempts: int
    record: ClaimRecord | None = None
    expires_in: float | None = None
    """Seconds until the lease expires (negative: since it expired); ``None`` without one."""
    last_error: str | None = None
    """The exception type that ended the current attempt (``retry``, ``failed``)."""
    problem: str | None = None
    """Why the claim is unreadable (it then counts as a live claim)."""
    failure_problem: str | None = None
    """Why the failure record is unreadable (it is then ignored)."""
    notes: list[str] = field(default_factory=list)

    @property
    def claimable(self) -> bool:
        """Whether a worker may claim the handoff now."""
        return self.state in ("unclaimed", "stale", "retry", "released")

    @property
    def doc(self) -> dict[str, Any] | None:
        """The current claim record as written."""
        return None if self.record is None else self.record.doc

    @property
    def claimed_by(self) -> str | None:
        """The session that holds (or held) the current claim."""
        return None if self.record is None else self.record.claimed_by


def claim_state(
    handoff_path: Path,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    now: float | None = None,
) -> ClaimState:
    """The state of the claim on ``handoff_path`` (never raises for a bad file: a claim
    that cannot be read is ``unreadable``, a failure record that cannot be read is ignored
    and named in ``failure_problem``)."""
    session_id = handoff_path.name.removesuffix(".json")
    try:
        record = read_current(handoff_path, session_id)
    except HandoffError as exc:
        return ClaimState("unreadable", 0, max_attempts, problem=str(exc))
    if record is None:
        return ClaimState("unclaimed", 0, max_attempts)
    if record.state == "released":
        return ClaimState("released", 0, max_attempts, record)
    attempts = record.attempt
    if record.state == "ended" or moved_on(handoff_path.parent, record.claimed_by):
        return ClaimState("ended", attempts, max_attempts, record)
    failure_problem = None
    try:
        failure = read_failure(handoff_path, session_id)
    except HandoffError as exc:
        failure, failure_problem = None, str(exc)
    last = max_attempts <= attempts
    if failure is not None and failure.holder == record.holder:
        return ClaimState(
            "failed" if last else "retry",
            attempts,
            max_attempts,
            record,
            last_error=failure.error_type,
            failure_problem=failure_problem,
        )
    if record.lease_seconds is None:  # before leases: held for good
        return ClaimState(
            "running", attempts, max_attempts, record, failure_problem=failure_problem
        )
    clock = time.time() if now is None else now
    expires_in = record.renewed + record.lease_seconds - clock
    return ClaimState(
        "running" if expires_in > 0 else "failed" if last else "stale",
        attempts,
        max_attempts,
        record,
        expires_in=expires_in,
        failure_problem=failure_problem,
    )


def describe(state: ClaimState) -> str:
    """One phrase for ``budgetkit chain``: who holds the claim, its lease and attempts."""
    record = state.record
    if state.state == "unclaimed":
        return "not resumed"
    if state.state == "unreadable" or record is None:
        return f"claimed (the claim cannot be read: {state.problem})"
    tries = f"attempt {state.attempts} of {state.max_attempts}"
    by = record.claimed_by or "?"
    where = ""
    if record.pid is not None or record.host is not None:
        where = f" (pid {record.pid if record.pid is not None else '?'} on {record.host or '?'})"
    if state.state == "released":
        return "claim released by hand: pending, attempts counted from 1"
    if state.state == "ended":
        again = f" (attempt {state.attempts})" if state.attempts > 1 else ""
        if record.outcome is None:  # the chain went on in this directory
            return f"resumed by {by}{again}"
        return f"resumed by {by}{again}: ended ({record.outcome}), its record elsewhere"
    if state.state == "running":
        if state.expires_in is None:
            return f"claimed by {by}{where}, no lease (an older budgetkit)"
        return f"claimed by {by}{where}, {tries}, lease expires in {state.expires_in:.1f} s"
    if state.state == "stale":
        ago = -(state.expires_in or 0.0)
        return f"claimed by {by}{where}, {tries}, lease expired {ago:.1f} s ago: claimable"
    if state.state == "retry":
        return f"{tries} failed ({state.last_error}): claimable"
    # failed
    why = state.last_error or "its lease expired"
    return (
        f"{state.attempts} of {state.max_attempts} attempts used, the last by {by} ({why}): "
        "not resumed again"
    )


def as_json(state: ClaimState) -> dict[str, Any]:
    """The claim's state for ``budgetkit chain --json``."""
    record = state.record
    return {
        "state": state.state,
        "claimable": state.claimable,
        "attempts": state.attempts,
        "max_attempts": state.max_attempts,
        "claimed_by": None if record is None else record.claimed_by,
        "pid": None if record is None else record.pid,
        "host": None if record is None else record.host,
        "lease_seconds": None if record is None else record.lease_seconds,
        "expires_in": None if state.expires_in is None else round(state.expires_in, 3),
        "outcome": None if record is None else record.outcome,
        "last_error": state.last_error,
        "problem": state.problem,
        "file": None if record is None else str(record.path),
    }


# --------------------------------------------------------------------------- claiming
def _link_new(target: Path, doc: dict[str, Any]) -> bool:
    """Create ``target`` holding ``doc`` whole, unless it exists (then ``False``)."""
    data = json.dumps(doc, indent=2).encode("utf-8")
    tmp = write_temp(target, data)
    try:
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError as exc:  # pragma: no cover - a file system without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if not _create_exclusive(target, data):
                return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(target.parent)
    return True


def _create_exclusive(target: Path, data: bytes) -> bool:  # pragma: no cover
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        os.fsync(handle.fileno())
    return True


def _record(session_id: str, state: str, attempt: int, **more: Any) -> dict[str, Any]:
    import socket

    return {
        "kind": CLAIM_KIND,
        "session_id": session_id,
        "state": state,
        "holder": os.urandom(16).hex(),
        "attempt": attempt,
        **more,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def claim(
    handoff_path: Path,
    session_id: str,
    claimed_by: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Lease:
    """Claim a handoff for session ``claimed_by``: a fresh one, or one whose last claim is
    over (expired, failed, released), within ``max_attempts``. Atomic: of workers claiming
    at once, exactly one wins.

    Raises:
        HandoffClaimedError: it is held by a live claim, its session ended, its attempts
            are used up, or another worker claimed it first.
    """
    # Absolute: the lease is renewed from another thread while the agent may change directory.
    handoff_path = handoff_path.absolute()
    for _ in range(8):  # each pass reads a newer state; losing a race more often is absurd
        state = claim_state(handoff_path, max_attempts=max_attempts)
        if not state.claimable:
            raise refusal(handoff_path, state)
        attempt = state.attempts + 1
        current = state.record
        target = (
            claim_path(handoff_path) if current is None else next_path(handoff_path, current.holder)
        )
        doc = _record(
            session_id,
            "held",
            attempt,
            claimed_by=claimed_by,
            claimed_at=utc_now(),
            lease_seconds=lease_seconds,
        )
        if _link_new(target, doc):
            return Lease(handoff_path, target, doc, lease_seconds, max_attempts)
    raise refusal(handoff_path, claim_state(handoff_path, max_attempts=max_attempts))


def refusal(handoff_path: Path, state: ClaimState) -> HandoffClaimedError:
    """Why the handoff cannot be claimed now, as the error ``resume`` raises."""
    session_id = handoff_path.name.removesuffix(".json")
    record = state.record
    by = None if record is None else record.claimed_by
    directory = str(handoff_path.parent)
    reclaim = f"`budgetkit chain {directory} --reclaim {session_id}`"
    if state.state == "unreadable" or record is None:
        text = (
            f"the handoff of session {session_id!r} is claimed: "
            f"{str(claim_path(handoff_path))!r} exists but cannot be read ({state.problem}); "
            f"{reclaim} --force removes it"
        )
    elif state.state == "failed":
        why = state.last_error or "the last attempt's lease expired"
        text = (
            f"the handoff of session {session_id!r} failed {state.attempts} times "
            f"(max_attempts={state.max_attempts}; last by session {by!r}: {why}); it is not "
            f"resumed again unless released by hand: {reclaim}"
        )
    elif state.state == "ended":
        if record.outcome is not None:
            how = "completed" if record.outcome == "completed" else f"stopped ({record.outcome})"
            text = (
                f"the handoff of session {session_id!r} was already resumed by session "
                f"{by!r}, which {how}; a handoff is resumed at most once"
            )
        else:
            text = (
                f"the handoff of session {session_id!r} was already resumed by session "
                f"{by!r}, and session {by!r} continues it (its file is in {directory!r}); a "
                "handoff is resumed at most once"
            )
    else:  # running
        when = record.doc.get("claimed_at")
        at = f" at {when}" if isinstance(when, str) else ""
        lease = (
            "it has no lease (an older budgetkit)"
            if state.expires_in is None
            else f"its lease is live for {state.expires_in:.1f} s more unless renewed"
        )
        text = (
            f"the handoff of session {session_id!r} was already resumed by session {by!r}{at} "
            f"(attempt {state.attempts}; {lease}); a handoff is resumed by one worker at a time"
        )
    return HandoffClaimedError(text, session_id=session_id, claimed_by=by)


# --------------------------------------------------------------------------- the lease
class Lease:
    """A claim held by this process: renewed while its session runs, closed when it ends."""

    def __init__(
        self,
        handoff_path: Path,
        path: Path,
        doc: dict[str, Any],
        lease_seconds: float,
        max_attempts: int,
    ) -> None:
        self.handoff_path = handoff_path
        self.path = path
        self.session_id: str = doc["session_id"]
        self.claimed_by: str = doc["claimed_by"]
        self.holder: str = doc["holder"]
        self.attempt: int = doc["attempt"]
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.inode = _inode(path)
        self.lost = False
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Lease {self.path} attempt {self.attempt} for {self.claimed_by}>"

    def held(self) -> bool:
        """Whether the claim is still this holder's: nothing follows its record."""
        if os.path.lexists(next_path(self.handoff_path, self.holder)):
            return False
        return _inode(self.path) == self.inode

    def check(self) -> None:
        """The session is being entered: raise if the claim was lost meanwhile (its lease
        expired before the session was entered, and another worker claimed it)."""
        if not self.held():
            state = claim_state(self.handoff_path, max_attempts=self.max_attempts)
            self.lost = True
            raise HandoffClaimedError(
                f"session {self.claimed_by!r} lost its claim on the handoff of session "
                f"{self.session_id!r} before it was entered (its lease of "
                f"{self.lease_seconds:g} s expired): {describe(state)}",
                session_id=self.session_id,
                claimed_by=state.claimed_by,
            )
        self.renew()

    def start(self) -> None:
        """Renew the lease every third of it, in a daemon thread, until :meth:`end`."""
        self.thread = threading.Thread(
            target=self._run, name=f"budgetkit-lease-{self.claimed_by}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        interval = self.lease_seconds / 3
        while not self.stop.wait(interval):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: S112 - never let a renewal end the thread early
                continue

    def renew(self) -> bool:
        """Move the claim's modification time to now; ``False`` once it is lost."""
        if not self.held():
            self.lost = True
            return False
        with contextlib.suppress(OSError):
            os.utime(self.path)
        return True

    def end(self, result: SessionResult | None, exc: BaseException | None) -> None:
        """The session exited: stop renewing, then close the claim (its session ended) or
        record the failed attempt (it raised), unless the claim was lost meanwhile."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        try:
            self._close(result, exc)
        except OSError as error:
            from ._warnings import warn

            warn(
                f"budgetkit: could not record the end of session {self.claimed_by!r}'s claim "
                f"on the handoff of session {self.session_id!r}: {error!r}; the claim lapses "
                f"in {self.lease_seconds:g} s and the handoff is then claimable again",
                BudgetWarning,
            )

    def _close(self, result: SessionResult | None, exc: BaseException | None) -> None:
        normal = result is not None and (
            result.stop_reason == "completed" or result.stopped_by == self.claimed_by
        )
        unwritten = getattr(exc, "handoff_error", None)  # it stopped, but its handoff is lost
        if isinstance(unwritten, BaseException):
            normal, exc = False, unwritten
        if not self.held():
            self._warn_lost()
            return
        if normal:
            assert result is not None
            if moved_on(self.handoff_path.parent, self.claimed_by):
                return  # its handoff or completion record says it: nothing to add
            doc = _record(
                self.session_id,
                "ended",
                self.attempt,
                claimed_by=self.claimed_by,
                outcome=result.stop_reason,
                ended_at=utc_now(),
                lease_seconds=self.lease_seconds,
            )
            if not _link_new(next_path(self.handoff_path, self.holder), doc):
                self._warn_lost()
            return
        error = exc if exc is not None else BudgetError("the session ended with an error")
        write_atomic(
            failed_path(self.handoff_path),
            {
                "kind": FAILED_KIND,
                "schema_version": 1,
                "session_id": self.session_id,
                "claimed_by": self.claimed_by,
                "holder": self.holder,
                "attempt": self.attempt,
                "error_type": error_type(error),
                "failed_at": utc_now(),
            },
        )

    def _warn_lost(self) -> None:
        from ._warnings import warn

        self.lost = True
        state = claim_state(self.handoff_path, max_attempts=self.max_attempts)
        warn(
            f"budgetkit: session {self.claimed_by!r} lost its claim on the handoff of session "
            f"{self.session_id!r} while it ran (released by hand, or its lease of "
            f"{self.lease_seconds:g} s expired): {describe(state)}; nothing was recorded "
            "over it",
            BudgetWarning,
        )


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def error_type(exc: BaseException) -> str:
    """The exception's type as a failure record names it: ``ValueError`` for a builtin,
    ``module.Qualified.Name`` otherwise (never its message: that may hold secrets)."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    return name if _ERROR_TYPE.fullmatch(name) else kind.__name__[:200] or "Exception"


# --------------------------------------------------------------------------- by hand
def release(handoff_path: Path, *, force: bool = False) -> tuple[ClaimState, str]:
    """Release the claim on ``handoff_path`` so the handoff is claimable again, its attempts
    counted from 1 (``budgetkit chain DIR --reclaim ID``); ``(state before, what was done)``.

    A live claim, an ended one, one without a lease and an unreadable one are refused unless
    ``force`` (an unreadable record is then removed).

    Raises:
        HandoffClaimedError: refused (the message says why, and about ``--force``), or the
            claim changed while it was being released.
        HandoffError: the handoff is not claimed.
    """
    session_id = handoff_path.name.removesuffix(".json")
    state = claim_state(handoff_path)
    if state.state == "unclaimed":
        raise HandoffError(f"the handoff of session {session_id!r} is not claimed")
    record = state.record
    if state.state == "unreadable" or record is None:
        if not force:
            raise _refuse_release(session_id, state, "its claim cannot be read")
        return state, _remove_unreadable(handoff_path, session_id)
    if state.state == "released":
        return state, "its claim was already released: it is pending"
    live = state.state == "running"
    if not force and (live or state.state == "ended"):
        if state.state == "ended":
            why = "its session ended: " + describe(state)
        elif state.expires_in is None:
            why = "its claim has no lease (an older budgetkit), so it may be live: " + describe(
                state
            )
        else:
            why = "its lease is live: " + describe(state)
        raise _refuse_release(session_id, state, why)
    doc = _record(session_id, "released", 0, claimed_by=None, released_at=utc_now())
    if not _link_new(next_path(handoff_path, record.holder), doc):
        raise HandoffClaimedError(
            f"the claim on the handoff of session {session_id!r} changed while it was being "
            "released; look again with `budgetkit chain`",
            session_id=session_id,
            claimed_by=record.claimed_by,
        )
    return state, f"released the claim of {record.claimed_by or '?'} ({state.state})"


def _refuse_release(session_id: str, state: ClaimState, why: str) -> HandoffClaimedError:
    return HandoffClaimedError(
        f"not releasing the claim on the handoff of session {session_id!r}: {why}. "
        "--force releases it anyway (a live holder is told when its session exits)",
        session_id=session_id,
        claimed_by=state.claimed_by,
    )


def _remove_unreadable(handoff_path: Path, session_id: str) -> str:
    """Remove the first unreadable record of the chain (``--force``)."""
    path = claim_path(handoff_path)
    for _ in range(MAX_RECORDS + 1):
        try:
            record = read_record(path, session_id)
        except HandoffError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            fsync_dir(path.parent)
            return f"removed the unreadable claim record {str(path)!r}"
        if record is None:
            break
        path = next_path(handoff_path, record.holder)
    with contextlib.suppress(FileNotFoundError):  # a chain too long: start it again
        os.unlink(claim_path(handoff_path))
    fsync_dir(handoff_path.parent)
    return f"removed the claim {str(claim_path(handoff_path))!r}"
