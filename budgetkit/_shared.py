"""Sessions whose counters live in a shared ledger (``budgetkit.ledgers``): the slow path.

A chain of nested sessions holds at most one ledger session (its *member*); the others are
in-process. At a boundary the in-process sessions are checked and counted under the process
lock first, then the ledger admits the call in one atomic operation; if the ledger refuses (or,
failing closed, cannot be reached) the in-process counts are taken back. Charges, releases and
error counts go to the ledger with an operation id; one that cannot be sent waits in the
session's outbox and is resent, with the same id, at the next boundary.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from . import _session
from ._events import emit
from ._events import listeners as _listeners
from ._money import from_units
from ._usage import Counts, Usage
from .exceptions import (
    BudgetConfigError,
    BudgetTypeError,
    LedgerError,
    LedgerUnavailableError,
    LedgerUnavailableWarning,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._session import SessionBudget, SessionUsage
    from .ledgers import Ledger, LedgerSession

#: The W3C baggage entry that carries a session id to other processes.
BAGGAGE_KEY = "budgetkit.session.id"

_LEDGERS: dict[str, Ledger] = {}
_LEDGERS_LOCK = threading.Lock()


# ------------------------------------------------------------------ configuration
def check_ledger(ledger: object) -> Ledger | None:
    """The ledger a session uses: the one given, else ``$BUDGETKIT_LEDGER_URL``'s, else none."""
    if ledger is None:
        return env_ledger()
    if not (hasattr(ledger, "create") and hasattr(ledger, "join")):
        raise BudgetTypeError(
            f"ledger must be a budgetkit ledger (e.g. budgetkit.ledgers.redis.RedisLedger) "
            f"or None, got {ledger!r}"
        )
    return ledger  # type: ignore[return-value]


def env_ledger() -> Ledger | None:
    """One ledger per process for ``$BUDGETKIT_LEDGER_URL`` (so one connection pool)."""
    import os

    from .ledgers import LEDGER_URL_ENV, ledger_from_env

    url = os.environ.get(LEDGER_URL_ENV)
    if not url:
        return None
    with _LEDGERS_LOCK:
        ledger = _LEDGERS.get(url)
        if ledger is None:
            ledger = _LEDGERS[url] = ledger_from_env()  # type: ignore[assignment]
    return ledger


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


def _handle(member: SessionBudget) -> LedgerSession:
    handle = member._shared
    assert handle is not None, "not a ledger session"
    return handle


# ------------------------------------------------------------------ failures
class Outbox:
    """Operations the ledger did not confirm, resent in order with their original ids."""

    __slots__ = ("items", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[Callable[[], object]] = []


def _unavailable(member: SessionBudget, exc: LedgerUnavailableError) -> None:
    """Fail closed (raise) or open (warn and go on), as the ledger session says."""
    if member.on_ledger_error == "closed":
        raise exc
    warnings.warn(
        f"budgetkit: {exc}; on_ledger_error='open' lets the call run unchecked "
        f"(session {member.session_id!r}); unsent charges are sent when it is back",
        LedgerUnavailableWarning,
        stacklevel=5,
    )


def _send(member: SessionBudget, operation: Callable[[], object]) -> None:
    """Run one idempotent ledger operation now, or keep it for the next boundary (which
    raises or warns); a call that already ran never fails on its charge."""
    outbox: Outbox = member._outbox
    if not outbox.items:
        try:
            operation()
            return
        except LedgerError:
            pass
    with outbox.lock:
        outbox.items.append(operation)


def flush(member: SessionBudget) -> None:
    """Resend what the ledger has not confirmed; an outage raises or warns (policy), any
    other ledger error (an expired session) raises."""
    outbox: Outbox = member._outbox
    if not outbox.items:
        return
    with outbox.lock:
        while outbox.items:
            try:
                outbox.items[0]()
            except LedgerUnavailableError as exc:
                error = exc
                break
            outbox.items.pop(0)
        else:
            return
    _unavailable(member, error)


# ------------------------------------------------------------------ boundary
def admit(
    session: SessionBudget, kind: str | None, name: str, reserve: int | None, wrapup: bool
) -> None:
    """``SessionBudget._admit`` for a chain that holds a ledger session."""
    member = session._ledger_member
    assert member is not None
    handle = _handle(member)
    flush(member)
    local = session._local_members
    tripped, refused_by = _session.check_and_count(local, kind, name, reserve, wrapup)
    if tripped is not None:
        tripped._raise_exhausted()
    if refused_by is not None:
        raise refused_by._refusal("wrapup_reserve")
    try:
        usd = None if reserve is None else from_units(reserve)
        reason = handle.admit(kind, usd, name=name, wrapup=wrapup)
    except LedgerUnavailableError as exc:
        if member.on_ledger_error == "closed":
            _session.uncount(local, kind, reserve)
        _unavailable(member, exc)
        reason = None
    except BaseException:
        _session.uncount(local, kind, reserve)
        raise
    if reason is not None:
        _session.uncount(local, kind, reserve)
        if reason == "wrapup_reserve":
            raise member._refusal("wrapup_reserve")
        with _session._LOCK:
            if member._reason is None:
                member._reason, member._refused = reason, name
        member._raise_exhausted()
    if handle.errors_seen:  # a success of this call should reset the run of errors
        with _session._LOCK:
            member._errors_pending = session._errors_pending = True
    if _listeners and kind == _session.STEP:
        emit("step", session, name=name)
    session._notify_chain()


def record(
    session: SessionBudget, counts: Counts | None, cost: int | None, release: int | None
) -> None:
    """Charge the in-process sessions of the chain, then the ledger session (USD in units)."""
    member = session._ledger_member
    assert member is not None
    _session.record_in(session._local_members, counts, cost, release)
    handle = _handle(member)
    op_id = handle.new_op_id()
    usage = None if counts is None else Usage(*counts)
    usd = None if cost is None else from_units(cost)
    released = from_units(release) if release else None
    _send(
        member,
        lambda: handle.record(usage, usd, priced=cost is not None, release=released, op_id=op_id),
    )


def release(session: SessionBudget, amount: int) -> None:
    member = session._ledger_member
    assert member is not None
    _session.release_in(session._local_members, amount)
    handle = _handle(member)
    op_id = handle.new_op_id()
    usd = from_units(amount)
    _send(member, lambda: handle.release(usd, op_id=op_id))


def failed(member: SessionBudget) -> None:
    """Count a failed call in the ledger's run of consecutive errors."""
    handle = _handle(member)
    op_id = handle.new_op_id()
    _send(member, lambda: handle.fail(op_id=op_id))


def succeeded(member: SessionBudget) -> None:
    """Reset the ledger's run of consecutive errors (idempotent)."""
    _send(member, _handle(member).succeed)


def trip(member: SessionBudget, reason: str) -> None:
    """Mark a limit as crossed in the ledger (first wins; idempotent)."""
    handle = _handle(member)
    _send(member, lambda: handle.trip(reason))


# ------------------------------------------------------------------ state
def snapshot(member: SessionBudget, *, strict: bool) -> SessionUsage:
    """The ledger session's usage; on an outage, the last one read, or zeros (``strict``
    raises instead)."""
    from ._session import SessionUsage

    try:
        snap = _handle(member).snapshot()
    except LedgerError:  # unreachable, or the session expired
        if strict:
            raise
        last: SessionUsage | None = member._last_usage
        return SessionUsage() if last is None else last
    usage = SessionUsage(
        steps=snap.steps,
        llm_calls=snap.llm_calls,
        input_tokens=snap.input_tokens,
        output_tokens=snap.output_tokens,
        total_tokens=snap.input_tokens + snap.output_tokens,
        cost_usd=snap.cost_usd,
        elapsed_seconds=snap.elapsed_seconds,
        cache_read_tokens=snap.cache_read_tokens,
        cache_write_tokens=snap.cache_write_tokens,
        reasoning_tokens=snap.reasoning_tokens,
        unpriced_calls=snap.unpriced_calls,
        unmeasured_calls=snap.unmeasured_calls,
    )
    member._last_usage = usage
    if snap.reason is not None:
        with _session._LOCK:
            if member._reason is None:
                member._reason, member._refused = snap.reason, snap.refused
    return usage


def claim_handoff(member: SessionBudget) -> bool:
    """Whether this worker writes the handoff (exactly one of the session's workers does)."""
    try:
        return _handle(member).claim_handoff_writer()
    except LedgerUnavailableError:
        return False  # another worker may have claimed it; never write two


def warn_not_created(session: SessionBudget, exc: LedgerUnavailableError) -> None:
    """``on_ledger_error='open'``: the session could not be created in the ledger."""
    warnings.warn(
        f"budgetkit: {exc}; on_ledger_error='open' runs session {session.session_id!r} "
        "in this process only",
        LedgerUnavailableWarning,
        stacklevel=4,
    )
