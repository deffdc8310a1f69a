"""The budget policy: one table of limits and the decisions made from it, as pure functions.

No I/O, no locks, no OpenTelemetry. A ledger keeps the counters (:class:`Counters`) and applies
these decisions atomically: the in-process ledger calls them under its lock, the Redis ledger
runs Lua generated from the same table (:data:`CHECKS`). Every other list of limits in
budgetkit (span attributes, the agent's view, the status line, the Redis fields) is derived
from :data:`DIMENSIONS`.

The rules, by *when* they run:

- :func:`before_call`, at a boundary: latched, then a tripped measured limit, then time, then
  the count limits of the call's kind (count limits admit exactly N), then a reservation
  against the USD limits (spent + reserved + estimate must fit).
- :func:`in_wrapup_reserve`, at a boundary of an ordinary call: the last part of each limit is
  kept for calls marked ``wrapup=True`` (a refusal that does not latch).
- :func:`crossed`, after recording a call: a measured limit is crossed when usage is strictly
  greater than it (usage equal to a limit is within budget).
- :func:`errors_crossed`, after a failed call.
- :func:`account_refusal`, at a boundary, after the session's own rules: the limits of the
  session's account (:data:`ACCOUNT_CHECKS`) against the usage of its current window
  (:class:`Tally`); :func:`account_over`, before a new session of the account is created.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, localcontext
from typing import TYPE_CHECKING, Any, NamedTuple

from ._money import to_float, to_units_floor
from ._values import LLM, STEP, Remaining, SessionUsage

if TYPE_CHECKING:
    from ._limits import Limits
    from ._usage import Counts

__all__ = [
    "ACCOUNT_CHECKS",
    "CHECKS",
    "DIMENSIONS",
    "RECORDED",
    "RECORDED_TOKENS",
    "TOOL_CHECK",
    "WRAPUP_RESERVE",
    "Check",
    "Counters",
    "Dimension",
    "Rules",
    "Tally",
    "account_over",
    "account_refusal",
    "before_call",
    "crossed",
    "in_wrapup_reserve",
]

#: Rules: a count limit admits exactly N calls (refused when used >= limit); a measured one is
#: crossed when used > limit; time when elapsed > limit; errors when the run reaches the limit.
COUNT = "count"
MEASURED = "measured"
TIME = "time"
ERRORS = "errors"
#: The same step called with equal arguments ``limit`` times in a row trips
#: :data:`LOOP_DETECTED` (the one limit whose stop reason is not its keyword).
REPEATS = "repeats"
LOOP_DETECTED = "loop_detected"

#: The refusal of an ordinary call by the wrap-up reserve: not latched, no handoff.
WRAPUP_RESERVE = "wrapup_reserve"


class Dimension(NamedTuple):
    """One limit of a session and every name it goes by."""

    limit: str
    """The keyword and ``Limits`` field (``max_steps``); also the stop reason."""
    usage: str | None
    """The :class:`SessionUsage` field it is judged on (``None``: not in the usage)."""
    attribute: str
    """The span attribute stem: ``budgetkit.<attribute>.limit`` / ``.used`` / ``.remaining``."""
    label: str | None
    """How the status line names a count of it (``None``: USD, seconds and errors)."""
    rule: str
    """:data:`COUNT`, :data:`MEASURED`, :data:`TIME`, :data:`ERRORS` or :data:`REPEATS`."""
    counters: tuple[str, ...]
    """The :class:`Counters` fields whose sum it is judged on (empty: elapsed time)."""
    kind: str | None = None
    """For a count limit, the kind of call it counts."""


#: Every limit of a session, in the order the measured ones are checked.
DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("max_steps", "steps", "steps", "steps", COUNT, ("steps",), STEP),
    Dimension("max_llm_calls", "llm_calls", "llm_calls", "LLM calls", COUNT, ("llm_calls",), LLM),
    Dimension(
        "max_tokens",
        "total_tokens",
        "tokens",
        "tokens",
        MEASURED,
        ("input_tokens", "output_tokens"),
    ),
    Dimension(
        "max_input_tokens",
        "input_tokens",
        "input_tokens",
        "input tokens",
        MEASURED,
        ("input_tokens",),
    ),
    Dimension(
        "max_output_tokens",
        "output_tokens",
        "output_tokens",
        "output tokens",
        MEASURED,
        ("output_tokens",),
    ),
    Dimension("max_usd", "cost_usd", "usd", None, MEASURED, ("cost",)),
    Dimension("max_seconds", "elapsed_seconds", "seconds", None, TIME, ()),
    Dimension(
        "max_consecutive_errors", None, "consecutive_errors", None, ERRORS, ("errors_in_a_row",)
    ),
    Dimension("max_repeats", None, "repeats", None, REPEATS, ("repeats",)),
)

DIMENSION = {d.limit: d for d in DIMENSIONS}


class Check(NamedTuple):
    """One rule a ledger applies, in the order of :data:`CHECKS`."""

    reason: str
    """The stop reason (a limit or chain-cap name)."""
    rule: str
    counters: tuple[str, ...]
    kind: str | None = None
    chain: bool = False
    """A chain cap (``max_total_*``): never part of the wrap-up reserve."""
    account: bool = False
    """An account's limit (``account_max_*``): judged on the account's window, not the session."""


#: The rules in the order they are checked: chain caps before the session's own limits.
CHECKS: tuple[Check, ...] = (
    Check("max_total_steps", COUNT, ("steps",), STEP, chain=True),
    Check("max_total_usd", MEASURED, ("cost",), chain=True),
    *(Check(d.limit, d.rule, d.counters, d.kind) for d in DIMENSIONS),
)

#: A per-tool cap (``@budget.step(max_calls=N)``): the limit comes with the call, the count
#: lives in the ledger session per tool name (:attr:`Counters.tool_calls`). Checked after the
#: session's count limits of steps and before the USD reservation; it latches like any limit,
#: and the tool it refused is the snapshot's ``refused``.
TOOL_CHECK = Check("max_tool_calls", COUNT, ("tool_calls",), STEP)

#: An account's limits (``budgetkit.Account(max_usd=...)``), checked after the session's own
#: rules against the account's current window: count limits admit exactly N calls of their
#: kind per window; measured ones stop every session of the account at its next boundary once
#: the window's usage is strictly over; a USD reservation must fit (window spend + the
#: account's open reservations + this one). The reason is the check's name; the limit keyword
#: is the name without ``account_``. Never part of the wrap-up reserve, never extended by a
#: grant.
ACCOUNT_CHECKS: tuple[Check, ...] = (
    Check("account_max_steps", COUNT, ("steps",), STEP, account=True),
    Check("account_max_llm_calls", COUNT, ("llm_calls",), LLM, account=True),
    Check("account_max_tokens", MEASURED, ("input_tokens", "output_tokens"), account=True),
    Check("account_max_usd", MEASURED, ("cost",), account=True),
)

#: Account limit keyword -> its check (``max_usd`` -> ``account_max_usd``).
ACCOUNT_LIMIT = {c.reason.removeprefix("account_"): c for c in ACCOUNT_CHECKS}

#: The checks whose counter is spent USD: a reservation must fit each of them.
USD_CHECKS = tuple(c.reason for c in CHECKS if c.counters == ("cost",))


@dataclass(slots=True)
class Counters:
    """What a session has counted; the state every decision reads. USD is in integer units."""

    steps: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: int = 0
    """Known costs, in units of 10^-18 USD."""
    reserved: int = 0
    """USD held by open reservations, in units."""
    unpriced_calls: int = 0
    unmeasured_calls: int = 0
    errors_in_a_row: int = 0
    repeats: int = 0
    """Steps in a row with the same call digest (``last_call``), this one included."""
    last_call: str | None = None
    """The digest of the last step admitted with one (``None``: none, or a step without)."""
    last_step: str | None = None
    """The name of that step."""
    tripped: str | None = None
    """A measured limit was crossed: the next boundary latches it."""
    reason: str | None = None
    """Latched: the session is exhausted for this reason."""
    refused: str | None = None
    """The call refused when the session latched."""
    tool_calls: dict[str, int] = field(default_factory=dict)
    """Admitted calls of each tool that has a per-tool cap, by tool name."""


@dataclass(slots=True)
class Tally:
    """What an account has counted in one bucket of its window (or a window's sum)."""

    steps: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: int = 0
    """Known costs, in units of 10^-18 USD."""

    def __iadd__(self, other: Tally) -> Tally:
        self.steps += other.steps
        self.llm_calls += other.llm_calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost += other.cost
        return self


#: (reason, counter fields, limit) of one set limit.
_Set = tuple[str, tuple[str, ...], int]


@dataclass(frozen=True, slots=True)
class Rules:
    """The limits of one session (and what its chain's caps leave it), ready to check.

    USD limits are in units, rounded down, so ``spent > limit`` reads the same in units as in
    USD. Build with :meth:`of`.
    """

    limits: dict[str, int | float] = field(default_factory=dict)
    """Every set limit by reason; USD in units, seconds a float."""
    keep: float | None = None
    """``1 - reserve_for_wrapup``: the part of each limit ordinary calls may use."""
    counts: dict[str, tuple[_Set, ...]] = field(default_factory=dict)
    measured: tuple[_Set, ...] = ()
    reserves: tuple[tuple[str, int], ...] = ()
    seconds: float | None = None
    errors: int | None = None
    repeats: int | None = None

    @classmethod
    def of(
        cls,
        limits: Limits,
        *,
        step_room: int | None = None,
        usd_room: Decimal | None = None,
        reserve_for_wrapup: float | None = None,
    ) -> Rules:
        """The rules of ``limits``, with what the chain caps leave (``*_room``)."""
        values: dict[str, Any] = {d.limit: getattr(limits, d.limit) for d in DIMENSIONS}
        values["max_total_steps"] = None if step_room is None else max(step_room, 0)
        values["max_total_usd"] = None if usd_room is None else max(usd_room, Decimal(0))
        set_: dict[str, int | float] = {}
        for check in CHECKS:
            value = values[check.reason]
            if value is None:
                continue
            set_[check.reason] = to_units_floor(value) if check.reason in USD_CHECKS else value
        return cls(
            limits=set_,
            keep=None if reserve_for_wrapup is None else 1 - reserve_for_wrapup,
            counts={
                kind: tuple(
                    (c.reason, c.counters, int(set_[c.reason]))
                    for c in CHECKS
                    if c.rule == COUNT and c.kind == kind and c.reason in set_
                )
                for kind in (STEP, LLM)
            },
            measured=tuple(
                (c.reason, c.counters, int(set_[c.reason]))
                for c in CHECKS
                if c.rule == MEASURED and c.reason in set_
            ),
            reserves=tuple((r, int(set_[r])) for r in USD_CHECKS if r in set_),
            seconds=_float(set_.get("max_seconds")),
            errors=_int(set_.get("max_consecutive_errors")),
            repeats=_int(set_.get("max_repeats")),
        )

    @property
    def plain(self) -> bool:
        """Only count limits of the session's own: the boundary may take its fast path."""
        return (
            self.seconds is None
            and self.repeats is None
            and self.keep is None
            and "max_total_steps" not in self.limits
            and "max_total_usd" not in self.limits
        )

    def cap(self, kind: str) -> int:
        """The fast path's cap for ``kind``: admit while the count is below it (-1: never)."""
        if not self.plain:
            return -1
        caps = [limit for _, _, limit in self.counts[kind]]
        return min(caps) if caps else _UNLIMITED


_UNLIMITED = 2**63 - 1


def _float(value: int | float | None) -> float | None:
    return None if value is None else float(value)


def _int(value: int | float | None) -> int | None:
    return None if value is None else int(value)


def used(c: Counters | Tally, fields: tuple[str, ...]) -> int:
    """The sum of ``fields`` of ``c``."""
    if len(fields) == 1:
        value: int = getattr(c, fields[0])
        return value
    return sum(getattr(c, name) for name in fields)


# ----------------------------------------------------------------------------- decisions
def before_call(
    rules: Rules,
    c: Counters,
    kind: str | None,
    reserve: int | None,
    elapsed: float,
    tool: tuple[str, int] | None = None,
) -> str | None:
    """Why a call of ``kind`` (reserving ``reserve`` units) is refused now, or ``None``.

    The order is the rule: latched, tripped, time, count limits (chain cap first), the
    per-tool cap ``tool`` (``(name, max_calls)``) of a step, then whether the reservation
    fits every USD limit. The wrap-up reserve is asked separately.
    """
    if c.reason is not None:
        return c.reason
    if c.tripped is not None:
        return c.tripped
    if rules.seconds is not None and elapsed > rules.seconds:
        return "max_seconds"
    if kind is not None:
        for reason, fields, limit in rules.counts[kind]:
            if used(c, fields) >= limit:
                return reason
    if tool is not None and kind == STEP and c.tool_calls.get(tool[0], 0) >= tool[1]:
        return TOOL_CHECK.reason
    if reserve is not None and rules.reserves:
        wanted = c.cost + c.reserved + reserve
        for reason, limit in rules.reserves:
            if wanted > limit:
                return reason
    return None


def in_wrapup_reserve(rules: Rules, c: Counters, kind: str | None, elapsed: float) -> bool:
    """Whether an ordinary call of ``kind`` now would use the wrap-up reserve.

    Count limits of the call's kind keep ``floor(limit * keep)`` calls for ordinary ones;
    measured limits and time are in the reserve once usage exceeds ``limit * keep``. Chain
    caps have no reserve.
    """
    keep = rules.keep
    if keep is None:
        return False
    limits = rules.limits
    for check in CHECKS:
        if check.chain or check.rule in (ERRORS, REPEATS):
            continue
        limit = limits.get(check.reason)
        if limit is None:
            continue
        if check.rule == COUNT:
            if check.kind == kind and used(c, check.counters) >= math.floor(limit * keep):
                return True
        elif check.rule == MEASURED:
            if float(used(c, check.counters)) > float(limit) * keep:
                return True
        elif elapsed > limit * keep:  # TIME
            return True
    return False


def crossed(rules: Rules, c: Counters) -> str | None:
    """The first measured limit that recorded usage is strictly over, or ``None``."""
    for reason, fields, limit in rules.measured:
        if used(c, fields) > limit:
            return reason
    return None


def repeated(rules: Rules, c: Counters) -> bool:
    """Whether the run of equal steps has reached ``max_repeats`` (trips ``loop_detected``)."""
    return rules.repeats is not None and c.repeats >= rules.repeats


def errors_crossed(rules: Rules, errors_in_a_row: int) -> bool:
    """Whether a run of ``errors_in_a_row`` failed calls reaches ``max_consecutive_errors``."""
    return rules.errors is not None and errors_in_a_row >= rules.errors


def account_refusal(
    limits: dict[str, int], t: Tally, reserved: int, kind: str | None, reserve: int | None
) -> str | None:
    """Why an account refuses a call of ``kind`` (reserving ``reserve`` units) now, or ``None``.

    ``limits``: the account's set limits by reason (USD in units, rounded down); ``t``: its
    current window's usage; ``reserved``: what its sessions' open reservations hold.
    """
    for check in ACCOUNT_CHECKS:
        limit = limits.get(check.reason)
        if limit is None:
            continue
        if check.rule == COUNT:
            if check.kind == kind and used(t, check.counters) >= limit:
                return check.reason
        elif used(t, check.counters) > limit:
            return check.reason
    usd = limits.get("account_max_usd")
    if reserve and usd is not None and t.cost + reserved + reserve > usd:
        return "account_max_usd"
    return None


def account_over(limits: dict[str, int], t: Tally) -> str | None:
    """The account limit its window has used up (a count reached, a measured limit strictly
    over), refusing a new session up front; ``None`` when there is room."""
    for check in ACCOUNT_CHECKS:
        limit = limits.get(check.reason)
        if limit is None:
            continue
        value = used(t, check.counters)
        if value > limit or (check.rule == COUNT and value >= limit):
            return check.reason
    return None


def tally_count(t: Tally, kind: str | None) -> None:
    """Count one admitted call of ``kind`` in an account's bucket."""
    if kind == STEP:
        t.steps += 1
    elif kind == LLM:
        t.llm_calls += 1


def tally_record(t: Tally, counts: Counts | None, cost: int | None) -> None:
    """Add one call's tokens and known cost to an account's bucket."""
    if counts is not None:
        t.input_tokens += counts[0]
        t.output_tokens += counts[1]
    if cost is not None:
        t.cost += cost


# ----------------------------------------------------------------------------- counting
def count(
    c: Counters,
    kind: str | None,
    reserve: int | None,
    tool: tuple[str, int] | None = None,
    call: tuple[str, str] | None = None,
) -> None:
    """Count one admitted call (and hold its reservation; a capped tool's call by name; a
    step's ``call`` = ``(name, digest)`` in the run of repeats: a step without one, or with
    another digest, starts the run again)."""
    if kind == STEP:
        c.steps += 1
        if tool is not None:
            c.tool_calls[tool[0]] = c.tool_calls.get(tool[0], 0) + 1
        if call is None:
            if c.last_call is not None:
                c.repeats, c.last_call, c.last_step = 0, None, None
        elif c.last_call == call[1]:
            c.repeats += 1
        else:
            c.repeats, c.last_call, c.last_step = 1, call[1], call[0]
    elif kind == LLM:
        c.llm_calls += 1
    if reserve:
        c.reserved += reserve


def uncount(
    c: Counters, kind: str | None, reserve: int | None, tool: tuple[str, int] | None = None
) -> None:
    """Take back what :func:`count` counted (another ledger of the chain refused the call)."""
    if kind == STEP:
        c.steps -= 1
        if tool is not None:
            c.tool_calls[tool[0]] = c.tool_calls.get(tool[0], 0) - 1
    elif kind == LLM:
        c.llm_calls -= 1
    if reserve:
        c.reserved -= reserve


#: The :class:`Counters` fields :func:`record` adds a call's :data:`Counts` to, in order.
RECORDED_TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
#: Every :class:`Counters` field :func:`record` may change.
RECORDED = (*RECORDED_TOKENS, "unmeasured_calls", "unpriced_calls", "cost", "reserved")


def record(c: Counters, counts: Counts | None, cost: int | None, release: int) -> None:
    """Add one call: its token counts (``None``: unmeasured) and cost in units (``None``:
    unpriced), and give back ``release`` of its reservation. The one recording rule."""
    if counts is None:
        c.unmeasured_calls += 1
    else:
        inp, out, cache_read, cache_write, reasoning = counts
        c.input_tokens += inp
        c.output_tokens += out
        if cache_read:
            c.cache_read_tokens += cache_read
        if cache_write:
            c.cache_write_tokens += cache_write
        if reasoning:
            c.reasoning_tokens += reasoning
    if cost is None:
        if counts is not None:
            c.unpriced_calls += 1
    else:
        c.cost += cost
    if release:
        c.reserved -= min(release, c.reserved)


# ----------------------------------------------------------------------------- views
def remaining(
    limits: Limits, used: SessionUsage, *, step_room: int | None, usd_room: Decimal | None
) -> Remaining:
    """What is left of each limited dimension (``None`` where unlimited), never below zero;
    the chain's caps (``*_room``) lower steps and USD."""
    left: dict[str, Any] = {}
    with localcontext(_EXACT):
        for d in DIMENSIONS:
            limit = getattr(limits, d.limit)
            if d.usage is None or limit is None:
                continue
            value = getattr(used, d.usage)
            left[d.usage] = max(limit - value, type(limit)(0))
        if step_room is not None:
            chain = max(step_room - used.steps, 0)
            left["steps"] = min(left.get("steps", chain), chain)
        if usd_room is not None:
            chain_usd = max(usd_room - used.cost_usd, Decimal(0))
            left["cost_usd"] = min(left.get("cost_usd", chain_usd), chain_usd)
    return Remaining(**left)


#: USD arithmetic is exact, whatever precision the caller's decimal context has.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def fractions(limits: Limits, used: SessionUsage) -> dict[str, float]:
    """Fraction of each *limited* dimension used so far (may exceed 1), by attribute stem."""
    out: dict[str, float] = {}
    for d in DIMENSIONS:
        limit = getattr(limits, d.limit)
        if limit is not None and d.usage is not None:
            out[d.attribute] = float(getattr(used, d.usage)) / float(limit)
    return out


def live_value(d: Dimension, c: Counters, elapsed: float) -> int | float:
    """The current value of dimension ``d`` (USD as a float) for span attributes."""
    if d.rule == TIME:
        return elapsed
    value = used(c, d.counters)
    return to_float(value) if d.counters == ("cost",) else value
