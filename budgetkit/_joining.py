"""Joining a session from another process: the W3C baggage entry and the ledger handle."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from . import _attributes as names
from ._files import check_session_id
from ._limits import LIMIT_NAMES
from ._lineage import Lineage, Place
from ._settings import SETTINGS
from ._values import SessionUsage
from .exceptions import BudgetConfigError, BudgetTypeError
from .ledgers import check_ledger

if TYPE_CHECKING:
    from .ledgers import Ledger, LedgerSession

#: The W3C baggage entry that carries a session id to other processes.
BAGGAGE_KEY = names.SESSION_ID

#: What ``join()`` accepts: the limits, the name and the chain come from the ledger.
JOIN_KEYWORDS = frozenset(SETTINGS) - {"name", "reserve_for_wrapup"}


def open_joined(
    session_id_or_headers: object, ledger: Ledger | None, overrides: Mapping[str, Any]
) -> tuple[Ledger, LedgerSession, dict[str, Any], Place | None]:
    """The ledger, the handle, the constructor keywords and the chain place of a session
    joined from another process (see ``SessionBudget.join``)."""
    unknown = sorted(set(overrides) - JOIN_KEYWORDS)
    if unknown:
        raise BudgetConfigError(
            "SessionBudget.join() takes the limits, name and chain from the ledger; it "
            "accepts only local settings, got "
            + ", ".join(f"{key}={overrides[key]!r}" for key in unknown)
        )
    found = check_ledger(ledger)
    if found is None:
        raise BudgetConfigError(
            "SessionBudget.join() needs a ledger: pass ledger=RedisLedger(url) or set "
            "$BUDGETKIT_LEDGER_URL"
        )
    session_id = check_session_id(session_id_from(session_id_or_headers))
    handle = found.join(session_id)
    kwargs: dict[str, Any] = {key: getattr(handle.limits, key) for key in LIMIT_NAMES}
    kwargs.update(
        session_id=session_id,
        name=handle.name,
        reserve_for_wrapup=handle.reserve_for_wrapup,
        **overrides,
    )
    place = None
    lineage = handle.extra.get("lineage")
    if lineage is not None:
        chain = Lineage.from_dict(
            lineage,
            session_id=session_id,
            parent_session_id=handle.parent_session_id,
            source=f"ledger session {session_id!r}",
        )
        place = Place(
            caps=chain.caps,
            session_ids=chain.session_ids,
            attempt=chain.attempt,
            prior=SessionUsage.from_mapping(chain.cumulative_usage),
        )
    return found, handle, kwargs, place


# ------------------------------------------------------------------ baggage
def inject(session_id: str, headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write ``budgetkit.session.id`` into the ``baggage`` header, keeping its other entries."""
    if not isinstance(headers, MutableMapping):
        raise BudgetTypeError(f"inject() takes a mutable mapping of headers, got {headers!r}")
    key = next((k for k in headers if isinstance(k, str) and k.lower() == "baggage"), "baggage")
    kept = [
        member.strip()
        for member in str(headers.get(key, "")).split(",")
        if member.strip() and member.split("=", 1)[0].strip() != BAGGAGE_KEY
    ]
    headers[key] = ",".join([*kept, f"{BAGGAGE_KEY}={quote(session_id, safe='')}"])
    return headers


def session_id_from(value: object) -> str:
    """A session id given as is, or read from a ``baggage`` header (``None``: OTel's context)."""
    if isinstance(value, str):
        return value
    if value is None:
        from opentelemetry import baggage

        found = baggage.get_baggage(BAGGAGE_KEY)
        if not isinstance(found, str):
            raise BudgetConfigError(
                f"join() was given no session id and the current OpenTelemetry baggage has no "
                f"{BAGGAGE_KEY!r} entry"
            )
        return found
    if isinstance(value, Mapping):
        header = next(
            (v for k, v in value.items() if isinstance(k, str) and k.lower() == "baggage"), None
        )
        for member in str(header or "").split(","):
            name, _, rest = member.partition("=")
            if name.strip() == BAGGAGE_KEY:
                return unquote(rest.split(";", 1)[0].strip())
        raise BudgetConfigError(
            f"the headers have no {BAGGAGE_KEY!r} baggage entry (got baggage={header!r}); "
            "write one with session.inject(headers)"
        )
    raise BudgetTypeError(
        f"join() takes a session id, a mapping of headers with a baggage entry, or None, "
        f"got {value!r}"
    )
