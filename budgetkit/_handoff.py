"""The handoff file: what was done, what is pending, how to resume. Written atomically."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._files import check_session_id
from ._lineage import Lineage, usage_from_dict
from .exceptions import BudgetConfigError, BudgetTypeError, HandoffError

if TYPE_CHECKING:
    import os

SCHEMA_VERSION = 1
KIND = "budgetkit.handoff"

_REQUIRED = (
    "schema_version",
    "session_id",
    "parent_session_id",
    "stopped_at_step",
    "reason",
    "limits",
    "usage",
    "pending_tasks",
    "context_summary",
    "resume_instructions",
    "created_at",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Handoff:
    """A stopped session's handoff, as written to ``handoff_dir/<session_id>.json``.

    Load one with :meth:`Handoff.load`; resume with ``SessionBudget.resume(handoff)``.

    .. versionadded:: 0.1.0
    """

    session_id: str
    """The session that stopped."""
    parent_session_id: str | None
    """The session this one resumed, if any."""
    stopped_at_step: int
    """How many steps had been admitted when the session stopped."""
    reason: str
    """Which limit stopped the session (``max_steps``, ``max_usd`` ...)."""
    limits: dict[str, Any]
    """The session's limits (``None`` = unlimited; USD as a string)."""
    usage: dict[str, Any]
    """What the session used (USD as a string)."""
    pending_tasks: list[Any] = field(default_factory=list)
    """What is left to do, as the agent last reported it with ``update_handoff``."""
    context_summary: str | None = None
    """The agent's summary of what was done so far."""
    resume_instructions: str = ""
    """How to continue."""
    created_at: str = ""
    """When the handoff was written (ISO 8601, UTC)."""
    name: str | None = None
    """The session's name, if it had one."""
    trace_id: str | None = None
    """The session span's trace id (32 hex digits), for linking the resumed session's trace."""
    span_id: str | None = None
    """The session span's id (16 hex digits)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further sections written by extensions (lineage ...)."""
    schema_version: int = SCHEMA_VERSION
    """Version of this file format."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``kind`` marks it as ours)."""
        doc: dict[str, Any] = {"kind": KIND}
        for f in fields(self):
            doc[f.name] = getattr(self, f.name)
        return doc

    @property
    def lineage(self) -> Lineage | None:
        """The chain this handoff belongs to (``extra["lineage"]``), or ``None`` for a handoff
        written before lineage was recorded."""
        return self._lineage(f"handoff of session {self.session_id!r}")

    def _lineage(self, source: str) -> Lineage | None:
        doc = self.extra.get("lineage")
        if doc is None:
            return None
        legacy = self.extra.get("grants")
        if isinstance(doc, dict) and "grants" not in doc and isinstance(legacy, list):
            # written before grants moved into the lineage: they were this session's
            doc = {**doc, "grants": [_with_session(g, self.session_id) for g in legacy]}
        return Lineage.from_dict(
            doc,
            session_id=self.session_id,
            parent_session_id=self.parent_session_id,
            source=source,
        )

    @classmethod
    def from_dict(cls, doc: object, *, source: str = "handoff") -> Handoff:
        """Validate a decoded document; raises :class:`HandoffError` naming what is wrong."""
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise HandoffError(f'{source} is not a budgetkit handoff (no "kind": "{KIND}")')
        from ._files import document_problem

        problem = document_problem(doc)
        if problem is not None:
            raise HandoffError(f"{source} is {problem}")
        missing = [key for key in _REQUIRED if key not in doc]
        if missing:
            raise HandoffError(f"{source} is missing {', '.join(missing)}")
        version = doc["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version != SCHEMA_VERSION:
            raise HandoffError(
                f"{source} has schema_version {doc['schema_version']!r}; "
                f"this budgetkit reads {SCHEMA_VERSION}"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        _expect(values, "session_id", str, source)
        _expect(values, "stopped_at_step", int, source)
        _expect(values, "reason", str, source)
        _expect(values, "limits", dict, source)
        _expect(values, "usage", dict, source)
        _expect(values, "pending_tasks", list, source)
        _expect(values, "resume_instructions", str, source)
        _expect(values, "created_at", str, source)
        for key in ("parent_session_id", "context_summary", "name"):
            if values.get(key) is not None:
                _expect(values, key, str, source)
        if "extra" in values:
            _expect(values, "extra", dict, source)
        try:
            check_session_id(values["session_id"])
            if values.get("parent_session_id") is not None:  # it names a file: ../ is refused
                check_session_id(values["parent_session_id"], "parent_session_id")
        except (BudgetConfigError, BudgetTypeError) as exc:
            raise HandoffError(f"{source}: {exc}") from None
        _check_fields(values, source)
        usage_from_dict(values["usage"], source)
        state = values.get("extra", {}).get("framework_state")
        if state is not None:
            from ._framework_state import check_entry

            check_entry(state, values["session_id"], source)
        handoff = cls(**values)
        handoff._lineage(source)  # checked now (a legacy extra["grants"] folded in)
        return handoff

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Handoff:
        """Read and validate a handoff file.

        Raises:
            HandoffError: the file is missing, unreadable, truncated, not JSON or not a handoff.
        """
        p = Path(path)
        from ._files import read_document

        return cls.from_dict(read_document(p, "handoff"), source=f"handoff {str(p)!r}")


_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HEX_IDS = {"trace_id": re.compile(r"[0-9a-fA-F]{32}"), "span_id": re.compile(r"[0-9a-fA-F]{16}")}


def _check_fields(values: dict[str, Any], source: str) -> None:
    """The values of the fields whose types ``from_dict`` has checked (see the schema in
    docs/concepts/handoff.md); raises :class:`HandoffError` naming the field."""
    step = values["stopped_at_step"]
    if step < 0:
        raise HandoffError(f"{source}: stopped_at_step must be a non-negative int, got {step!r}")
    reason = values["reason"]
    if not _REASON.fullmatch(reason):
        raise HandoffError(
            f"{source}: reason must be the name of a limit (such as 'max_steps'), got {reason!r}"
        )
    try:
        datetime.fromisoformat(values["created_at"])
    except ValueError:
        raise HandoffError(
            f"{source}: created_at must be an ISO 8601 timestamp, got {values['created_at']!r}"
        ) from None
    for key, pattern in _HEX_IDS.items():
        value = values.get(key)
        if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
            digits = 32 if key == "trace_id" else 16
            raise HandoffError(
                f"{source}: {key} must be {digits} hex digits or null, got {value!r}"
            )
    from ._limits import LIMIT_NAMES, Limits

    raw = {key: values["limits"].get(key) for key in LIMIT_NAMES}
    try:
        if isinstance(raw["max_usd"], str):  # written as an exact string
            raw["max_usd"] = Decimal(raw["max_usd"])
        Limits.build(**raw)
    except InvalidOperation:
        raise HandoffError(
            f"{source} has invalid limits: max_usd must be a decimal string, got {raw['max_usd']!r}"
        ) from None
    except (BudgetConfigError, BudgetTypeError) as exc:
        raise HandoffError(f"{source} has invalid limits: {exc}") from None


def _expect(values: dict[str, Any], key: str, kind: type, source: str) -> None:
    value = values[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HandoffError(f"{source}: {key} must be {kind.__name__}, got {value!r}")


def _with_session(record: object, session_id: str) -> object:
    """A legacy ``extra["grants"]`` record, named for the session that wrote it."""
    return {"session_id": session_id, **record} if isinstance(record, dict) else record
