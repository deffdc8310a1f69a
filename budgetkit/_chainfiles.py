"""The files of a chain in a handoff directory: handoffs, claims, completion records.

- ``<session_id>.json``: the handoff of a session that stopped (``_handoff.py``).
- ``<session_id>.claim`` (and the records that follow it, ``.<session_id>.claim.<holder>``):
  the lease of the worker that resumed the handoff from its path (``_claims.py``).
- ``<session_id>.failed``: the last attempt at resuming it ended with an exception.
- ``<session_id>.done``: written atomically when a *resumed* session completes, so its chain
  reads as finished.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ._claims import (
    DEFAULT_MAX_ATTEMPTS,
    ClaimState,
    check_shared_directory,
    claim_path,
    claim_state,
)
from ._files import check_session_id, read_document, remove_stale_temps, utc_now, write_atomic
from ._handoff import Handoff
from ._limits import LIMIT_NAMES, Limits
from ._lineage import CHAIN_CAPS, ChainCaps, Lineage, cap_reached, usage_from_dict
from .exceptions import BudgetConfigError, BudgetTypeError, ChainError, HandoffError

DONE_KIND = "budgetkit.done"

# --------------------------------------------------------------------------- lineage


def lineage_or_legacy(handoff: Handoff) -> Lineage:
    """The handoff's lineage; a handoff written without one starts a chain of its own."""
    lineage = handoff.lineage
    if lineage is not None:
        return lineage
    return Lineage(
        root_session_id=handoff.session_id,
        attempt=1,
        session_ids=(handoff.session_id,),
        caps=ChainCaps(),
        cumulative_usage=usage_from_dict(
            handoff.usage, f"handoff of session {handoff.session_id!r}"
        ),
    )


def link_error(child_id: str, child: Lineage, parent_id: str, parent: Lineage) -> str | None:
    """Why ``child`` cannot continue ``parent`` (whose file was found beside it), or ``None``."""
    if parent.session_ids == child.session_ids[:-1]:
        return None
    if child_id in parent.session_ids:
        return (
            f"session {child_id!r} continues {parent_id!r}, and {parent_id!r} continues "
            f"{child_id!r} ({' -> '.join(parent.session_ids)}): a cycle in the parent links"
        )
    return (
        f"session {child_id!r} claims to continue {parent_id!r} in chain "
        f"{child.root_session_id!r} ({' -> '.join(child.session_ids)}), but the handoff of "
        f"{parent_id!r} belongs to chain {parent.root_session_id!r} "
        f"({' -> '.join(parent.session_ids)})"
    )


def check_parent_link(handoff: Handoff, lineage: Lineage, directory: Path) -> None:
    """Raise :class:`ChainError` when the parent's handoff beside this one disagrees with it."""
    parent_id = handoff.parent_session_id
    if parent_id is None or handoff.lineage is None:
        return
    parent_path = directory / f"{parent_id}.json"
    if not parent_path.exists():
        return
    try:
        parent = lineage_or_legacy(Handoff.load(parent_path))
    except HandoffError:
        return  # an unreadable neighbour is reported by `budgetkit chain`, not here
    problem = link_error(handoff.session_id, lineage, parent_id, parent)
    if problem is not None:
        raise ChainError(f"cannot resume: {problem}")


# --------------------------------------------------------------------------- completion


def done_path(directory: Path, session_id: str) -> Path:
    """Where a resumed session that completed records it."""
    return directory / f"{session_id}.done"


def write_done(
    directory: Path,
    *,
    session_id: str,
    parent_session_id: str | None,
    name: str | None,
    usage: dict[str, Any],
    lineage: dict[str, Any],
) -> Path:
    """Record atomically that a resumed session completed (its chain is finished)."""
    path = done_path(directory, session_id)
    write_atomic(
        path,
        {
            "kind": DONE_KIND,
            "schema_version": 1,
            "session_id": session_id,
            "parent_session_id": parent_session_id,
            "stop_reason": "completed",
            "name": name,
            "usage": usage,
            "created_at": utc_now(),
            "extra": {"lineage": lineage},
        },
    )
    return path


# --------------------------------------------------------------------------- a directory


@dataclass(frozen=True, slots=True)
class ChainSession:
    """One session of a chain, as its file in the directory shows it."""

    session_id: str
    lineage: Lineage
    path: Path
    stop_reason: str
    """The limit that stopped it, or ``"completed"``."""
    usage: dict[str, Any]
    created_at: str
    handoff: Handoff | None = None
    """The handoff; ``None`` for a completion record."""
    claim: ClaimState | None = None
    """The claim on the handoff (``None`` for a completion record)."""

    @property
    def claimed_by(self) -> str | None:
        """The session that holds (or held) the current claim on the handoff."""
        return None if self.claim is None else self.claim.claimed_by

    @property
    def claimed(self) -> bool:
        """Whether a claim holds the handoff (live, stale, failed, ended or unreadable)."""
        return self.claim is not None and self.claim.state not in ("unclaimed", "released")


@dataclass(slots=True)
class ChainView:
    """A chain found in a directory: its sessions (first to newest) and its state."""

    root_session_id: str
    sessions: list[ChainSession] = field(default_factory=list)

    @property
    def newest(self) -> ChainSession:
        """The last session of the chain (highest attempt)."""
        return self.sessions[-1]

    @property
    def caps(self) -> ChainCaps:
        """The chain caps in force at its newest session."""
        return self.newest.lineage.caps

    @property
    def cumulative_usage(self) -> dict[str, Any]:
        """The chain's usage up to its newest session."""
        return self.newest.lineage.cumulative_usage

    @property
    def over_caps(self) -> tuple[str, str] | None:
        """``(cap, detail)`` when no further session may start, else ``None``."""
        newest = self.newest
        if newest.handoff is None:
            return None
        reached = cap_reached(self.caps, self.cumulative_usage, newest.lineage.attempt + 1)
        if reached is None and newest.stop_reason in CHAIN_CAPS:
            reached = (newest.stop_reason, f"session {newest.session_id!r} stopped on it")
        return reached

    @property
    def status(self) -> str:
        """``finished``; ``over caps``; for its newest handoff: ``pending`` (never claimed, or
        its last attempt failed or was released: claimable), ``running`` (claimed, lease live),
        ``stale`` (claimed, lease expired: claimable), ``failed`` (its attempts are used up)
        or ``ended`` (resumed, and that session ended with its record elsewhere)."""
        newest = self.newest
        if newest.handoff is None:
            return "finished"
        if self.over_caps is not None:
            return "over caps"
        state = "unclaimed" if newest.claim is None else newest.claim.state
        return _STATUS[state]


#: A chain's status from the state of its newest handoff's claim.
_STATUS = {
    "unclaimed": "pending",
    "released": "pending",
    "retry": "pending",
    "stale": "stale",
    "running": "running",
    "unreadable": "running",
    "failed": "failed",
    "ended": "ended",
}


@dataclass(slots=True)
class DirectoryScan:
    """Every chain of a handoff directory, and what could not be read or linked."""

    chains: list[ChainView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    """The files that could not be read, and why (also in ``problems``)."""

    def note_unreadable(self, path: Path, reason: str, *, consequence: str) -> None:
        """Record a file that could not be read, and what was done about it."""
        self.unreadable.append((path, reason))
        self.problems.append(f"unreadable file {consequence}: {reason}")


def _load_done(path: Path) -> ChainSession:
    source = f"completion record {str(path)!r}"
    doc = read_document(path, "completion record")
    if not isinstance(doc, dict) or doc.get("kind") != DONE_KIND:
        raise HandoffError(f'{source} is not a budgetkit record (no "kind": "{DONE_KIND}")')
    session_id, parent = doc.get("session_id"), doc.get("parent_session_id")
    try:
        check_session_id(session_id)
        if parent is not None:
            check_session_id(parent, "parent_session_id")
    except (BudgetConfigError, BudgetTypeError) as exc:
        raise HandoffError(f"{source}: {exc}") from None
    extra = doc.get("extra")
    lineage_doc = extra.get("lineage") if isinstance(extra, dict) else None
    assert isinstance(session_id, str)
    lineage = Lineage.from_dict(
        lineage_doc, session_id=session_id, parent_session_id=parent, source=source
    )
    created = doc.get("created_at")
    return ChainSession(
        session_id=session_id,
        lineage=lineage,
        path=path,
        stop_reason="completed",
        usage=usage_from_dict(doc.get("usage"), source),
        created_at=created if isinstance(created, str) else "",
    )


def _load_handoff(path: Path, max_attempts: int) -> ChainSession:
    handoff = Handoff.load(path)
    return ChainSession(
        session_id=handoff.session_id,
        lineage=lineage_or_legacy(handoff),
        path=path,
        stop_reason=handoff.reason,
        usage=usage_from_dict(handoff.usage, f"handoff {str(path)!r}"),
        created_at=handoff.created_at,
        handoff=handoff,
        claim=claim_state(path, max_attempts=max_attempts),
    )


def scan(
    directory: str | os.PathLike[str], *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> DirectoryScan:
    """Read every handoff and completion record of ``directory`` into chains, with the state
    of each handoff's claim (``max_attempts``: the retry cap the states are judged by).

    Files that cannot be read (also listed in ``unreadable``), and records whose parent's file
    contradicts them (another chain, a cycle), are left out of the chains and listed in
    ``problems``. An unreadable claim is listed too, and still counts as a live claim; an
    unreadable failure record is listed and ignored.
    """
    base = Path(directory)
    result = DirectoryScan()
    if not base.is_dir():
        result.problems.append(f"{str(base)!r} is not a directory")
        return result
    remove_stale_temps(base)  # those of writers killed mid-write
    records: list[ChainSession] = []
    for path in sorted(base.iterdir()):
        # Hidden files are temporary files of writers; anything else named like ours is read
        # (a FIFO or a directory among them is reported as unreadable, never opened to wait).
        if path.name.startswith(".") or path.suffix not in (".json", ".done"):
            continue
        try:
            if path.suffix == ".json":
                record = _load_handoff(path, max_attempts)
            else:
                record = _load_done(path)
        except HandoffError as exc:
            result.note_unreadable(path, str(exc), consequence="skipped")
            continue
        records.append(record)
        claim = record.claim
        if claim is not None and claim.problem is not None:
            result.note_unreadable(
                claim_path(path), claim.problem, consequence="counted as a claim"
            )
        if claim is not None and claim.failure_problem is not None:
            result.note_unreadable(
                path.with_suffix(".failed"), claim.failure_problem, consequence="ignored"
            )
    by_id = {r.session_id: r for r in records if r.handoff is not None}
    chains: dict[str, ChainView] = {}
    for record in records:
        parent_id = record.lineage.session_ids[-2] if record.lineage.attempt > 1 else None
        parent = by_id.get(parent_id) if parent_id is not None else None
        if parent is not None and parent_id is not None:
            problem = link_error(record.session_id, record.lineage, parent_id, parent.lineage)
            if problem is not None:
                result.problems.append(f"{str(record.path)!r}: {problem}")
                continue
        view = chains.setdefault(
            record.lineage.root_session_id, ChainView(record.lineage.root_session_id)
        )
        view.sessions.append(record)
    for view in chains.values():
        view.sessions.sort(key=lambda r: (r.lineage.attempt, r.created_at, r.session_id))
        attempts = [r.lineage.attempt for r in view.sessions]
        forks = sorted({a for a in attempts if attempts.count(a) > 1})
        for attempt in forks:
            ids = [r.session_id for r in view.sessions if r.lineage.attempt == attempt]
            result.problems.append(
                f"chain {view.root_session_id!r} forks at session {attempt}: "
                f"{', '.join(repr(i) for i in ids)} continue the same handoff"
            )
    result.chains = sorted(
        chains.values(), key=lambda v: (v.sessions[0].created_at, v.root_session_id)
    )
    return result


# --------------------------------------------------------------------------- resume
@dataclass(frozen=True, slots=True)
class ResumePlan:
    """A checked handoff to resume: the session keywords it carries, and where it lives."""

    handoff: Handoff
    lineage: Lineage
    path: Path | None
    kwargs: dict[str, Any]

    def check_own_file(self, handoff_dir: Path | None, session_id: str) -> None:
        """Refuse a new session whose own handoff file already exists (it would be lost)."""
        own = None if handoff_dir is None else handoff_dir / f"{session_id}.json"
        if own is not None and own.exists():
            raise ChainError(
                f"cannot resume session {self.handoff.session_id!r} as session "
                f"{session_id!r}: {str(own)!r} already exists and would be overwritten"
            )


def prepare_resume(handoff: object, *, chain: object) -> ResumePlan:
    """Load and check ``handoff`` (a :class:`Handoff` or a path) for ``SessionBudget.resume``.

    Raises:
        HandoffError: the file is missing, corrupt or not a handoff, or its limits are bad.
        BudgetConfigError: its directory is world-writable, not ours, without a sticky bit.
        ChainError: the handoff is of another chain than ``chain``, or its parent's handoff
            beside it belongs to another chain.
    """
    path: Path | None = None
    if isinstance(handoff, Handoff):
        loaded, directory = handoff, None
    elif isinstance(handoff, str | os.PathLike):
        path = Path(handoff)
        check_shared_directory(path.parent)  # before anything of it is read
        loaded, directory = Handoff.load(path), path.parent
    else:
        raise BudgetTypeError(
            f"resume() takes a Handoff or a path to a handoff file, got {handoff!r}"
        )
    if chain is not None and not isinstance(chain, str):
        raise BudgetTypeError(f"chain must be a root session id (str) or None, got {chain!r}")
    lineage = lineage_or_legacy(loaded)
    if chain is not None and lineage.root_session_id != chain:
        raise ChainError(
            f"handoff of session {loaded.session_id!r} belongs to chain "
            f"{lineage.root_session_id!r} ({' -> '.join(lineage.session_ids)}), "
            f"not to chain {chain!r}: it cannot continue it"
        )
    if directory is not None:
        check_parent_link(loaded, lineage, directory)
    kwargs: dict[str, Any] = {}
    try:
        for key in LIMIT_NAMES:
            value = loaded.limits.get(key)
            # USD is written as an exact string; anything else is left to Limits.build.
            if key == "max_usd" and isinstance(value, str):
                value = Decimal(value)
            kwargs[key] = value
        Limits.build(**kwargs)
    except (BudgetConfigError, BudgetTypeError, ArithmeticError) as exc:
        raise HandoffError(
            f"handoff of session {loaded.session_id!r} has invalid limits: {exc}"
        ) from None
    caps = lineage.caps
    kwargs["max_total_usd"] = caps.max_total_usd
    kwargs["max_total_steps"] = caps.max_total_steps
    kwargs["max_sessions"] = caps.max_sessions
    kwargs["name"] = loaded.name
    if directory is not None:
        kwargs["handoff_dir"] = directory
    return ResumePlan(loaded, lineage, path, kwargs)
