"""Lineage: the chain a handoff belongs to, its chain-wide caps and its cumulative usage.

Stored in a handoff as ``extra["lineage"]``. Pure data and validation; no session logic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any

from ._limits import MAX_USD, positive_int, to_usd
from ._money import SCALE
from ._values import SessionUsage
from .exceptions import BudgetConfigError, BudgetTypeError, HandoffError

#: Chain-wide caps, kept across resumes. Also the ``reason`` when one stops a chain.
CHAIN_CAPS = ("max_total_usd", "max_total_steps", "max_sessions")

#: The additive integer fields of a usage mapping (``SessionUsage.to_dict()``).
_COUNTS = (
    "steps",
    "llm_calls",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "unpriced_calls",
    "unmeasured_calls",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainCaps:
    """Caps on a whole chain of sessions; ``None`` means uncapped."""

    max_total_usd: Decimal | None = None
    max_total_steps: int | None = None
    max_sessions: int | None = None

    @classmethod
    def build(cls, **values: Any) -> ChainCaps:
        """Validate raw keyword values (the same rules as the session limits)."""
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                checked[name] = None
            elif name == "max_total_usd":
                checked[name] = to_usd(value, name, limit=True)
            else:
                checked[name] = positive_int(value, name)
        return cls(**checked)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (USD as an exact string)."""
        usd = self.max_total_usd
        return {
            "max_total_usd": None if usd is None else str(usd),
            "max_total_steps": self.max_total_steps,
            "max_sessions": self.max_sessions,
        }

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


def usage_from_dict(doc: object, source: str) -> dict[str, Any]:
    """A usage mapping checked and normalised: ints, ``cost_usd`` a ``Decimal``, seconds a float.

    Missing fields count as zero; unknown ones are ignored. Raises :class:`HandoffError`.
    """
    if not isinstance(doc, dict):
        raise HandoffError(f"{source}: usage must be an object, got {doc!r}")
    out: dict[str, Any] = {}
    for key in _COUNTS:
        value = doc.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HandoffError(f"{source}: usage {key} must be a non-negative int, got {value!r}")
        out[key] = value
    cost = doc.get("cost_usd", "0")
    try:
        amount = Decimal(cost) if isinstance(cost, str | int) else None
    except InvalidOperation:
        amount = None
    if isinstance(cost, bool) or amount is None or not amount.is_finite() or amount < 0:
        raise HandoffError(f"{source}: usage cost_usd must be a decimal string, got {cost!r}")
    exponent = amount.as_tuple().exponent
    if amount > MAX_USD or (isinstance(exponent, int) and exponent < -SCALE):
        raise HandoffError(
            f"{source}: usage cost_usd must be at most 1E+15 US dollars with at most "
            f"{SCALE} decimal places, got {cost!r}"
        )
    out["cost_usd"] = amount
    seconds = doc.get("elapsed_seconds", 0.0)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or (isinstance(seconds, int) and seconds.bit_length() > 1000)  # float() overflows
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise HandoffError(
            f"{source}: usage elapsed_seconds must be a non-negative, finite number, "
            f"got {seconds!r}"
        )
    out["elapsed_seconds"] = float(seconds)
    return out


def usage_to_dict(usage: dict[str, Any]) -> dict[str, Any]:
    """A normalised usage mapping in its JSON form (the order of ``SessionUsage.to_dict``)."""
    return {
        **{key: usage[key] for key in _COUNTS[:5]},
        "cost_usd": str(usage["cost_usd"]),
        "elapsed_seconds": round(usage["elapsed_seconds"], 6),
        **{key: usage[key] for key in _COUNTS[5:]},
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Lineage:
    """Where a session sits in its chain, read from a handoff's ``extra["lineage"]``.

    .. versionadded:: 0.1.0
    """

    root_session_id: str
    """The chain's first session."""
    attempt: int
    """This session's place in the chain: 1 for the first session, 2 for its resume ..."""
    session_ids: tuple[str, ...]
    """The chain's sessions, first to this one."""
    caps: ChainCaps = field(default_factory=ChainCaps)
    """The chain-wide caps (``max_total_usd``, ``max_total_steps``, ``max_sessions``)."""
    cumulative_usage: dict[str, Any] = field(default_factory=dict)
    """The whole chain's usage up to and including this session (``cost_usd`` a ``Decimal``)."""
    grants: tuple[dict[str, Any], ...] = ()
    """The grants ``on_exhausted`` gave the chain's sessions, oldest first: each
    ``{"session_id", "reason", "grant", "at"}`` (``grant`` as ``Grant.to_dict()``)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written into the handoff."""
        return {
            "root_session_id": self.root_session_id,
            "attempt": self.attempt,
            "session_ids": list(self.session_ids),
            "caps": self.caps.as_dict(),
            "cumulative_usage": usage_to_dict(self.cumulative_usage),
            "grants": [dict(g) for g in self.grants],
        }

    @classmethod
    def from_dict(
        cls, doc: object, *, session_id: str, parent_session_id: str | None, source: str
    ) -> Lineage:
        """Validate a handoff's lineage section; raises :class:`HandoffError` naming the fault."""
        where = f"{source}: lineage"
        if not isinstance(doc, dict):
            raise HandoffError(f"{where} must be an object, got {doc!r}")
        root, attempt, ids = (doc.get(k) for k in ("root_session_id", "attempt", "session_ids"))
        if not isinstance(root, str):
            raise HandoffError(f"{where}: root_session_id must be a str, got {root!r}")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise HandoffError(f"{where}: attempt must be a positive int, got {attempt!r}")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HandoffError(f"{where}: session_ids must be a list of str, got {ids!r}")
        from ._files import check_session_id

        try:  # ids name files: each is checked like a session id
            check_session_id(root, "root_session_id")
            for i in ids:
                check_session_id(i, "each of session_ids")
        except (BudgetConfigError, BudgetTypeError) as exc:
            raise HandoffError(f"{where}: {exc}") from None
        chain = " -> ".join(ids)
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise HandoffError(
                f"{where} lists session {repeated[0]!r} twice ({chain}): "
                "the parent links form a cycle"
            )
        if not ids or ids[0] != root or ids[-1] != session_id or len(ids) != attempt:
            raise HandoffError(
                f"{where} is inconsistent: session {session_id!r}, root {root!r}, "
                f"attempt {attempt}, sessions {chain or '(none)'}"
            )
        expected_parent = ids[-2] if len(ids) > 1 else None
        if parent_session_id != expected_parent:
            raise HandoffError(
                f"{where} says session {session_id!r} continues {expected_parent!r}, "
                f"but its parent_session_id is {parent_session_id!r}"
            )
        caps = doc.get("caps", {})
        if not isinstance(caps, dict):
            raise HandoffError(f"{where}: caps must be an object, got {caps!r}")
        raw = {k: caps.get(k) for k in CHAIN_CAPS}
        try:
            if isinstance(raw["max_total_usd"], str):  # written as an exact string
                raw["max_total_usd"] = Decimal(raw["max_total_usd"])
            checked = ChainCaps.build(**raw)
        except InvalidOperation:
            raise HandoffError(
                f"{where}: max_total_usd must be a decimal string, got {raw['max_total_usd']!r}"
            ) from None
        except (BudgetConfigError, BudgetTypeError) as exc:
            raise HandoffError(f"{where}: {exc}") from None
        usage = usage_from_dict(doc.get("cumulative_usage"), f"{where} cumulative")
        grants = grants_from_list(doc.get("grants", []), tuple(ids), where)
        return cls(
            root_session_id=root,
            attempt=attempt,
            session_ids=tuple(ids),
            caps=checked,
            cumulative_usage=usage,
            grants=grants,
        )


def grants_from_list(
    doc: object, session_ids: tuple[str, ...], where: str
) -> tuple[dict[str, Any], ...]:
    """Grant records checked: each names a session of the chain, a limit a grant lifts, a
    valid grant and a time. Raises :class:`HandoffError` naming the fault."""
    from ._extend import EXTENDABLE, Grant

    if not isinstance(doc, list):
        raise HandoffError(f"{where}: grants must be a list, got {doc!r}")
    out = []
    for index, record in enumerate(doc):
        at = f"{where}: grants[{index}]"
        if not isinstance(record, dict):
            raise HandoffError(f"{at} must be an object, got {record!r}")
        session_id, reason = record.get("session_id"), record.get("reason")
        grant, when = record.get("grant"), record.get("at")
        if session_id not in session_ids:
            raise HandoffError(
                f"{at}: session_id must be a session of the chain, got {session_id!r}"
            )
        if reason not in EXTENDABLE:
            raise HandoffError(f"{at}: reason must be a limit a grant lifts, got {reason!r}")
        if not isinstance(when, str):
            raise HandoffError(f"{at}: at must be a str, got {when!r}")
        if not isinstance(grant, dict):
            raise HandoffError(f"{at}: grant must be an object, got {grant!r}")
        values = dict(grant)
        try:
            if isinstance(values.get("usd"), str):
                values["usd"] = Decimal(values["usd"])
            checked = Grant(**values)
        except (InvalidOperation, TypeError, BudgetConfigError, BudgetTypeError) as exc:
            raise HandoffError(f"{at}: grant {grant!r} is not valid ({exc})") from None
        out.append(
            {"session_id": session_id, "reason": reason, "grant": checked.to_dict(), "at": when}
        )
    return tuple(out)


def cap_reached(caps: ChainCaps, used: dict[str, Any], next_attempt: int) -> tuple[str, str] | None:
    """The chain cap that forbids starting session ``next_attempt`` after ``used``, if any.

    Returns ``(cap name, "what was used against what")``. Counts admit exactly N (a chain that
    used ``max_total_steps`` steps can take no more); USD is over when strictly greater.
    """
    if caps.max_sessions is not None and next_attempt > caps.max_sessions:
        return "max_sessions", (
            f"it has run {next_attempt - 1} of max_sessions={caps.max_sessions} sessions"
        )
    if caps.max_total_steps is not None and used["steps"] >= caps.max_total_steps:
        return "max_total_steps", (
            f"it has used {used['steps']} steps of max_total_steps={caps.max_total_steps}"
        )
    if caps.max_total_usd is not None and used["cost_usd"] > caps.max_total_usd:
        return "max_total_usd", (
            f"it has spent ${used['cost_usd']} of max_total_usd=${caps.max_total_usd}"
        )
    return None


@dataclass(slots=True, kw_only=True)
class Place:
    """Where a session sits in its chain: the chain's caps, its sessions so far (this one
    last) and the usage of the sessions before it."""

    caps: ChainCaps
    session_ids: tuple[str, ...]
    attempt: int = 1
    prior: SessionUsage = field(default_factory=SessionUsage)
    grants: list[dict[str, Any]] = field(default_factory=list)
    """The chain's grants so far (the sessions before this one's, then this one's)."""

    @property
    def root_session_id(self) -> str:
        """The chain's first session."""
        return self.session_ids[0]

    def lineage(self, usage: SessionUsage) -> Lineage:
        """The lineage a handoff of this session records after ``usage``."""
        return Lineage(
            root_session_id=self.root_session_id,
            attempt=self.attempt,
            session_ids=self.session_ids,
            caps=self.caps,
            cumulative_usage=asdict(self.prior + usage),
            grants=tuple(self.grants),
        )

    def room(self) -> tuple[int | None, Decimal | None]:
        """What the chain caps leave this session: (steps, USD); ``None`` where uncapped."""
        caps = self.caps
        steps = None if caps.max_total_steps is None else caps.max_total_steps - self.prior.steps
        usd = None
        if caps.max_total_usd is not None:
            from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context

            exact = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
            usd = exact.subtract(caps.max_total_usd, self.prior.cost_usd)
        return steps, usd

    def continued(self, parent: Lineage, session_id: str) -> Place:
        """This session placed after ``parent`` (a resumed handoff's lineage), or refused.

        Raises:
            ChainError: ``session_id`` is already in the chain (a cycle).
            ChainCapError: the chain is at or over one of :attr:`caps`.
        """
        from .exceptions import ChainCapError, ChainError

        ids = (*parent.session_ids, session_id)
        chain = " -> ".join(parent.session_ids)
        if session_id in parent.session_ids:
            raise ChainError(
                f"session {session_id!r} is already in chain {parent.root_session_id!r} "
                f"({chain}): resuming {parent.session_ids[-1]!r} "
                "under that id would make a cycle in the parent links"
            )
        reached = cap_reached(self.caps, parent.cumulative_usage, len(ids))
        if reached is not None:
            cap, detail = reached
            raise ChainCapError(
                f"cannot resume session {parent.session_ids[-1]!r} of chain "
                f"{parent.root_session_id!r} ({chain}): {detail}; "
                f"pass a larger {cap}= to resume() to continue",
                reason=cap,
                session_id=parent.session_ids[-1],
                root_session_id=parent.root_session_id,
            )
        return Place(
            caps=self.caps,
            session_ids=ids,
            attempt=len(ids),
            prior=SessionUsage.from_mapping(parent.cumulative_usage),
            grants=list(parent.grants),
        )
