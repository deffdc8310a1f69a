"""Joining a session from another process: the W3C baggage entries and the ledger handle.

A shared ledger keeps a random secret with each session it creates. ``inject`` writes the
session id and a *join token*, HMAC-SHA256 of the id under that secret, and ``join`` requires
the token, so a client that only knows (or guesses) an id cannot enter the session, unless
the caller opts in with ``trust_id=True``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from . import _attributes as names
from ._files import check_session_id
from ._limits import LIMIT_NAMES
from ._lineage import Lineage, Place
from ._settings import SETTINGS
from ._values import SessionUsage
from .exceptions import BudgetConfigError, BudgetTypeError, JoinRefusedError
from .ledgers import check_ledger

if TYPE_CHECKING:
    from .ledgers import Ledger, LedgerSession

#: The W3C baggage entry that carries a session id to other processes.
BAGGAGE_KEY = names.SESSION_ID
#: The W3C baggage entry that carries the session's join token.
TOKEN_KEY = "budgetkit.join_token"  # noqa: S105 - the name of an entry, not a secret

#: What ``join()`` accepts: the limits, the name and the chain come from the ledger.
JOIN_KEYWORDS = frozenset(SETTINGS) - {"name", "reserve_for_wrapup"}


def open_joined(
    session_id_or_headers: object,
    ledger: Ledger | None,
    overrides: Mapping[str, Any],
    *,
    token: object = None,
    trust_id: object = False,
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
    if token is not None and not isinstance(token, str):
        raise BudgetTypeError(f"token must be a str (from session.inject()), got {token!r}")
    if not isinstance(trust_id, bool):
        raise BudgetTypeError(f"trust_id must be True or False, got {trust_id!r}")
    found = check_ledger(ledger)
    if found is None:
        raise BudgetConfigError(
            "SessionBudget.join() needs a ledger: pass ledger=RedisLedger(url) or set "
            "$BUDGETKIT_LEDGER_URL"
        )
    session_id = check_session_id(session_id_from(session_id_or_headers))
    if token is None:
        token = token_from(session_id_or_headers)
    handle = found.join(session_id)
    check_token(handle, session_id, token, trust_id=trust_id)
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
            grants=list(chain.grants),
        )
    return found, handle, kwargs, place


# ------------------------------------------------------------------ the token
def join_token(secret: bytes, session_id: str) -> str:
    """The token that lets a process join session ``session_id``: HMAC-SHA256 of the id
    under the session's secret, in hex."""
    return hmac.new(secret, session_id.encode("utf-8"), hashlib.sha256).hexdigest()


def token_of(handle: object) -> str | None:
    """The join token of the session behind a ledger handle; ``None`` without a secret (a
    session in this process, or created before join tokens)."""
    secret = getattr(handle, "join_secret", None)
    session_id = getattr(handle, "session_id", None)
    if not isinstance(secret, bytes) or not isinstance(session_id, str):
        return None
    return join_token(secret, session_id)


def check_token(handle: object, session_id: str, token: str | None, *, trust_id: bool) -> None:
    """Refuse a join whose token is missing (unless ``trust_id``) or wrong.

    Raises:
        JoinRefusedError: naming the session and what to pass instead.
    """
    if token is None:
        if trust_id:
            return
        raise JoinRefusedError(
            f"joining session {session_id!r} needs its join token: pass the headers that "
            "session.inject(headers) wrote (baggage entry "
            f"{TOKEN_KEY!r}), or token=...; SessionBudget.join(id, trust_id=True) joins "
            "by the id alone (anyone who knows or guesses the id can then spend its budget)"
        )
    expected = token_of(handle)
    if expected is None:
        raise JoinRefusedError(
            f"session {session_id!r} has no join secret (it was created by a budgetkit "
            "before join tokens), so its token cannot be checked; join it with "
            "trust_id=True and no token"
        )
    if not hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace")):
        raise JoinRefusedError(
            f"the join token given for session {session_id!r} does not match the session's; "
            "pass the headers (or the token) that this session's inject() wrote"
        )


# ------------------------------------------------------------------ baggage
def inject(
    session_id: str, headers: MutableMapping[str, str], token: str | None = None
) -> MutableMapping[str, str]:
    """Write ``budgetkit.session.id`` (and ``budgetkit.join_token``, when given) into the
    ``baggage`` header, keeping its other entries."""
    if not isinstance(headers, MutableMapping):
        raise BudgetTypeError(f"inject() takes a mutable mapping of headers, got {headers!r}")
    key = next((k for k in headers if isinstance(k, str) and k.lower() == "baggage"), "baggage")
    ours = (BAGGAGE_KEY, TOKEN_KEY)
    kept = [
        member.strip()
        for member in str(headers.get(key, "")).split(",")
        if member.strip() and member.split("=", 1)[0].strip() not in ours
    ]
    entries = [*kept, f"{BAGGAGE_KEY}={quote(session_id, safe='')}"]
    if token is not None:
        entries.append(f"{TOKEN_KEY}={token}")
    headers[key] = ",".join(entries)
    return headers


def _baggage_entry(value: object, name: str) -> str | None:
    """Entry ``name`` of the ``baggage`` header of a mapping of headers, or ``None``."""
    if not isinstance(value, Mapping):
        return None
    header = next(
        (v for k, v in value.items() if isinstance(k, str) and k.lower() == "baggage"), None
    )
    for member in str(header or "").split(","):
        key, _, rest = member.partition("=")
        if key.strip() == name:
            return unquote(rest.split(";", 1)[0].strip())
    return None


def token_from(value: object) -> str | None:
    """The join token carried with a session id: the headers' baggage entry, or the current
    OpenTelemetry baggage's (``value`` is ``None``); ``None`` for a plain id."""
    if isinstance(value, Mapping):
        return _baggage_entry(value, TOKEN_KEY)
    if value is None:
        from opentelemetry import baggage

        found = baggage.get_baggage(TOKEN_KEY)
        return found if isinstance(found, str) else None
    return None


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
        found = _baggage_entry(value, BAGGAGE_KEY)
        if found is not None:
            return found
        header = next(
            (v for k, v in value.items() if isinstance(k, str) and k.lower() == "baggage"), None
        )
        raise BudgetConfigError(
            f"the headers have no {BAGGAGE_KEY!r} baggage entry (got baggage={header!r}); "
            "write one with session.inject(headers)"
        )
    raise BudgetTypeError(
        f"join() takes a session id, a mapping of headers with a baggage entry, or None, "
        f"got {value!r}"
    )
