"""The pure budget policy (``budgetkit._policy``), law by law, with no ledger around it.

Each test drives the decisions (``before_call``, ``in_wrapup_reserve``, ``crossed``,
``errors_crossed``) and the counting (``count``, ``record``) directly on a :class:`Counters`,
the way a ledger does under its lock.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from budgetkit import _attributes, _money, _policy
from budgetkit._limits import LIMIT_NAMES, Limits
from budgetkit._policy import (
    CHECKS,
    COUNT,
    DIMENSIONS,
    ERRORS,
    MEASURED,
    REPEATS,
    TIME,
    USD_CHECKS,
    Counters,
    Rules,
    before_call,
    count,
    crossed,
    errors_crossed,
    in_wrapup_reserve,
    record,
)
from budgetkit._values import LLM, STEP
from budgetkit.ledgers import redis as redis_ledger

KINDS = (STEP, LLM, None)
COUNT_LIMIT = {STEP: "max_steps", LLM: "max_llm_calls"}
REASONS = tuple(c.reason for c in CHECKS)

#: A USD amount with up to 20 decimal places (finer than a unit: limits round down).
usd = st.builds(
    lambda n, places: Decimal(n).scaleb(-places),
    st.integers(1, 10**6),
    st.integers(0, 20),
)
units = st.integers(0, 2 * 10**18)
reserves = st.none() | units


def drive(rules: Rules, c: Counters, kind: str | None, reserve: int | None = None) -> str | None:
    """One boundary as a ledger runs it: refuse (and latch), or count the call."""
    reason = before_call(rules, c, kind, reserve, 0.0)
    if reason is not None:
        if c.reason is None:
            c.reason = reason
        return reason
    count(c, kind, reserve)
    return None


def charge(
    rules: Rules, c: Counters, counts: Any, cost: int | None, release: int = 0
) -> str | None:
    """Record a call as a ledger does: add it, then trip the first limit it crosses."""
    record(c, counts, cost, release)
    if c.tripped is None:
        c.tripped = crossed(rules, c)
    return c.tripped


# ------------------------------------------------------------------ (a) count limits
@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from([STEP, LLM]), limit=st.integers(1, 300), check_other=st.booleans())
def test_count_limits_admit_exactly_n(kind: str, limit: int, check_other: bool) -> None:
    """``max_steps=N`` / ``max_llm_calls=N`` admits exactly N calls of that kind, then refuses
    the next with the limit's name; calls of the other kind are not counted against it."""
    rules = Rules.of(Limits.build(**{COUNT_LIMIT[kind]: limit}))
    other = LLM if kind == STEP else STEP
    c = Counters()
    admitted = 0
    while (reason := before_call(rules, c, kind, None, 0.0)) is None:
        count(c, kind, None)
        admitted += 1
        assert admitted <= limit
        if check_other:  # the other kind stays admitted all along
            assert before_call(rules, c, other, None, 0.0) is None
    assert admitted == limit
    assert reason == COUNT_LIMIT[kind]
    assert getattr(c, "steps" if kind == STEP else "llm_calls") == limit
    assert before_call(rules, c, other, None, 0.0) is None


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from([STEP, LLM]), limit=st.integers(1, 100))
def test_count_limits_are_the_fast_path_cap(kind: str, limit: int) -> None:
    """With plain count limits, the fast path's cap is the limit: admit while count < cap."""
    rules = Rules.of(Limits.build(**{COUNT_LIMIT[kind]: limit}))
    assert rules.plain
    assert rules.cap(kind) == limit


# ------------------------------------------------------------------ (b) measured limits
MEASURED_TOKENS = ("max_tokens", "max_input_tokens", "max_output_tokens")


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(MEASURED_TOKENS), limit=st.integers(1, 10**12), data=st.data())
def test_token_limits_are_strictly_greater(name: str, limit: int, data: st.DataObject) -> None:
    """A token limit is not crossed by usage equal to it; one more token crosses it."""
    rules = Rules.of(Limits.build(**{name: limit}))
    if name == "max_tokens":
        inp = data.draw(st.integers(0, limit), label="input")
        at_limit = (inp, limit - inp, 0, 0, 0)
        one_more = data.draw(st.sampled_from([(1, 0, 0, 0, 0), (0, 1, 0, 0, 0)]))
    elif name == "max_input_tokens":
        at_limit = (limit, data.draw(st.integers(0, 10**12), label="output"), 0, 0, 0)
        one_more = (1, 0, 0, 0, 0)
    else:
        at_limit = (data.draw(st.integers(0, 10**12), label="input"), limit, 0, 0, 0)
        one_more = (0, 1, 0, 0, 0)
    c = Counters()
    assert charge(rules, c, at_limit, None) is None
    assert before_call(rules, c, STEP, None, 0.0) is None
    assert charge(rules, c, one_more, None) == name
    assert before_call(rules, c, STEP, None, 0.0) == name


@settings(max_examples=300, deadline=None)
@given(limit=usd, split=st.integers(0, 100))
def test_usd_limit_is_strictly_greater(limit: Decimal, split: int) -> None:
    """Spend equal to ``max_usd`` (in units, the limit rounded down) is within budget; one
    unit more crosses it, however the spend is split between calls."""
    rules = Rules.of(Limits.build(max_usd=limit))
    at_limit = _money.to_units_floor(limit)
    assert rules.limits["max_usd"] == at_limit
    assert _money.from_units(at_limit) <= limit < _money.from_units(at_limit + 1)
    first = at_limit * split // 100
    c = Counters()
    assert charge(rules, c, (0, 0, 0, 0, 0), first) is None
    assert charge(rules, c, (0, 0, 0, 0, 0), at_limit - first) is None
    assert c.cost == at_limit
    assert before_call(rules, c, LLM, None, 0.0) is None
    assert charge(rules, c, None, 1) == "max_usd"
    assert before_call(rules, c, LLM, None, 0.0) == "max_usd"


@settings(max_examples=100, deadline=None)
@given(limit=st.floats(0.001, 1e6, allow_nan=False, allow_infinity=False))
def test_time_limit_is_strictly_greater(limit: float) -> None:
    """Elapsed time equal to ``max_seconds`` is within budget; any more refuses the call."""
    rules = Rules.of(Limits.build(max_seconds=limit))
    c = Counters()
    assert before_call(rules, c, STEP, None, limit) is None
    later = limit + max(limit * 1e-9, 1e-9)
    assert later > limit
    assert before_call(rules, c, STEP, None, later) == "max_seconds"


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 50))
def test_consecutive_errors_trip_when_the_run_reaches_the_limit(limit: int) -> None:
    """``max_consecutive_errors=N``: a run of N - 1 failed calls is allowed, N trips it."""
    rules = Rules.of(Limits.build(max_consecutive_errors=limit))
    assert not errors_crossed(rules, limit - 1)
    assert errors_crossed(rules, limit)
    assert not errors_crossed(Rules.of(Limits()), limit)


# ------------------------------------------------------------------ (c) latching
limits_strategy = st.builds(
    Limits.build,
    max_steps=st.none() | st.integers(1, 20),
    max_llm_calls=st.none() | st.integers(1, 20),
    max_tokens=st.none() | st.integers(1, 1000),
    max_input_tokens=st.none() | st.integers(1, 1000),
    max_output_tokens=st.none() | st.integers(1, 1000),
    max_usd=st.none() | usd,
    max_seconds=st.none() | st.floats(1.0, 100.0),
    max_consecutive_errors=st.none() | st.integers(1, 5),
)
rules_strategy = st.builds(
    Rules.of,
    limits_strategy,
    step_room=st.none() | st.integers(-2, 20),
    usd_room=st.none() | usd,
    reserve_for_wrapup=st.none() | st.sampled_from([0.2, 0.5]),
)
counters_strategy = st.builds(
    Counters,
    steps=st.integers(0, 30),
    llm_calls=st.integers(0, 30),
    input_tokens=st.integers(0, 2000),
    output_tokens=st.integers(0, 2000),
    cost=units,
    reserved=units,
    errors_in_a_row=st.integers(0, 10),
    tripped=st.none() | st.sampled_from(REASONS),
)


@settings(max_examples=300, deadline=None)
@given(
    rules=rules_strategy,
    c=counters_strategy,
    reason=st.sampled_from(REASONS) | st.text(min_size=1, max_size=10),
    elapsed=st.floats(0.0, 1000.0),
    calls=st.lists(st.tuples(st.sampled_from(KINDS), reserves), min_size=1, max_size=10),
)
def test_latched_session_refuses_every_call_with_its_reason(
    rules: Rules,
    c: Counters,
    reason: str,
    elapsed: float,
    calls: list[tuple[str | None, int | None]],
) -> None:
    """Once ``c.reason`` is set, every call of every kind, with or without a reservation and
    whatever the counters say, is refused with that reason, and nothing is counted."""
    c.reason = reason
    before = dataclasses.replace(c)
    for kind, reserve in calls:
        assert before_call(rules, c, kind, reserve, elapsed) == reason
        assert drive(rules, c, kind, reserve) == reason
    assert c == before


@settings(max_examples=200, deadline=None)
@given(
    rules=rules_strategy,
    c=counters_strategy,
    tripped=st.sampled_from(REASONS),
    calls=st.lists(st.tuples(st.sampled_from(KINDS), reserves), min_size=1, max_size=10),
)
def test_a_tripped_limit_latches_at_the_next_boundary(
    rules: Rules, c: Counters, tripped: str, calls: list[tuple[str | None, int | None]]
) -> None:
    """A tripped measured limit refuses the next call of any kind with its name; the ledger
    latches it, and every later call gets the same answer."""
    c.tripped, c.reason = tripped, None
    for kind, reserve in calls:
        assert drive(rules, c, kind, reserve) == tripped
        assert c.reason == tripped


# ------------------------------------------------------------------ (d) reservations
reservation_ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.sampled_from(KINDS), units),
        st.tuples(st.just("record"), st.none() | units, st.integers(0, 100)),
        st.tuples(st.just("release"), st.integers(0, 100)),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(
    max_usd=st.none() | usd,
    usd_room=st.none() | usd,
    ops=reservation_ops,
)
def test_admitted_reservations_fit_every_usd_limit(
    max_usd: Decimal | None, usd_room: Decimal | None, ops: list[tuple[Any, ...]]
) -> None:
    """At the moment a reservation is admitted, spent + reserved (its own included) is at most
    every USD limit (``max_usd`` and the chain's ``max_total_usd``); one that does not fit is
    refused with the first USD limit it overflows (chain first), and latches.

    Recorded cost is not bounded by the reservation: a call may cost more than it reserved,
    so spent may exceed the limit; that trips the limit, and the next boundary refuses.
    """
    rules = Rules.of(Limits.build(max_usd=max_usd), usd_room=usd_room)
    caps = dict(rules.reserves)
    c = Counters()
    held: list[int] = []
    for op in ops:
        if op[0] == "reserve":
            _, kind, amount = op
            overflows = [r for r, cap in rules.reserves if c.cost + c.reserved + amount > cap]
            was_latched, was_tripped = c.reason, c.tripped
            reason = drive(rules, c, kind, amount)
            if reason is None:
                assert was_latched is None
                assert was_tripped is None
                assert not overflows
                assert all(c.cost + c.reserved <= limit for limit in caps.values())
                held.append(amount)
            elif was_latched is None and was_tripped is None:
                assert overflows
                assert reason == overflows[0]
                assert c.reason == reason
        elif op[0] == "record":
            _, cost, pct = op
            release = held.pop() * pct // 100 if held else 0
            charge(rules, c, (0, 0, 0, 0, 0), cost, release)
            if any(c.cost > limit for limit in caps.values()):
                assert c.tripped is not None
                assert before_call(rules, c, None, 0, 0.0) is not None
        else:
            _, pct = op
            amount = c.reserved * pct // 100
            c.reserved -= min(amount, c.reserved)
        assert c.reserved >= 0


@settings(max_examples=200, deadline=None)
@given(limit=usd, reserve=units)
def test_reservation_of_exactly_what_is_left_is_admitted(limit: Decimal, reserve: int) -> None:
    """A reservation of exactly what is left (limit - spent - reserved) is admitted; one unit
    more is refused with ``max_usd``."""
    rules = Rules.of(Limits.build(max_usd=limit))
    cap = rules.limits["max_usd"]
    c = Counters(cost=min(reserve, cap) // 2, reserved=min(reserve, cap) - min(reserve, cap) // 2)
    left = int(cap) - c.cost - c.reserved
    assert before_call(rules, c, LLM, left, 0.0) is None
    assert before_call(rules, c, LLM, left + 1, 0.0) == "max_usd"


# ------------------------------------------------------------------ (e) chain caps
@settings(max_examples=300, deadline=None)
@given(max_steps=st.integers(1, 50), step_room=st.integers(-3, 50))
def test_chain_step_cap_is_checked_before_the_sessions_own(max_steps: int, step_room: int) -> None:
    """With both ``max_total_steps`` (what the chain leaves) and ``max_steps``, steps stop at
    the smaller; on a tie the chain's cap is the reason (it is checked first)."""
    rules = Rules.of(Limits.build(max_steps=max_steps), step_room=step_room)
    c = Counters()
    admitted = 0
    while (reason := drive(rules, c, STEP)) is None:
        admitted += 1
    room = max(step_room, 0)
    assert admitted == min(room, max_steps)
    assert reason == ("max_total_steps" if room <= max_steps else "max_steps")


@settings(max_examples=300, deadline=None)
@given(max_usd=usd, usd_room=usd, cost=units, reserve=units)
def test_chain_usd_cap_is_checked_before_the_sessions_own(
    max_usd: Decimal, usd_room: Decimal, cost: int, reserve: int
) -> None:
    """``max_total_usd`` comes before ``max_usd``, for a reservation that does not fit and for
    recorded spend that crosses both."""
    rules = Rules.of(Limits.build(max_usd=max_usd), usd_room=usd_room)
    chain, own = rules.limits["max_total_usd"], rules.limits["max_usd"]
    assert [r for r, _ in rules.reserves] == ["max_total_usd", "max_usd"]
    wanted = before_call(rules, Counters(), None, reserve, 0.0)
    if reserve > chain:
        assert wanted == "max_total_usd"
    elif reserve > own:
        assert wanted == "max_usd"
    else:
        assert wanted is None
    c = Counters(cost=cost)
    if cost > chain:
        assert crossed(rules, c) == "max_total_usd"
    elif cost > own:
        assert crossed(rules, c) == "max_usd"
    else:
        assert crossed(rules, c) is None


@settings(max_examples=300, deadline=None)
@given(
    limits=limits_strategy,
    step_room=st.integers(-2, 20),
    usd_room=usd,
    reserve=st.sampled_from([0.1, 0.2, 0.5, 0.9]),
    c=counters_strategy,
    kind=st.sampled_from(KINDS),
    elapsed=st.floats(0.0, 200.0),
)
def test_wrapup_reserve_never_applies_to_chain_caps(
    limits: Limits,
    step_room: int,
    usd_room: Decimal,
    reserve: float,
    c: Counters,
    kind: str | None,
    elapsed: float,
) -> None:
    """Whether an ordinary call is in the wrap-up reserve does not depend on the chain's caps:
    the answer with caps equals the answer without them (and is never yes on caps alone)."""
    with_caps = Rules.of(limits, step_room=step_room, usd_room=usd_room, reserve_for_wrapup=reserve)
    without = Rules.of(limits, reserve_for_wrapup=reserve)
    assert in_wrapup_reserve(with_caps, c, kind, elapsed) == in_wrapup_reserve(
        without, c, kind, elapsed
    )
    caps_only = Rules.of(
        Limits(), step_room=step_room, usd_room=usd_room, reserve_for_wrapup=reserve
    )
    assert not in_wrapup_reserve(caps_only, c, kind, elapsed)


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 100), reserve=st.sampled_from([0.2, 0.5]))
def test_wrapup_reserve_keeps_the_last_part_of_a_count_limit(limit: int, reserve: float) -> None:
    """Ordinary steps stop at ``floor(limit * (1 - reserve))`` without latching; calls marked
    wrap-up go on to exactly ``limit``."""
    rules = Rules.of(Limits.build(max_steps=limit), reserve_for_wrapup=reserve)
    c = Counters()
    ordinary = 0
    while before_call(rules, c, STEP, None, 0.0) is None and not in_wrapup_reserve(
        rules, c, STEP, 0.0
    ):
        count(c, STEP, None)
        ordinary += 1
    assert ordinary == math.floor(limit * (1 - reserve))
    assert c.reason is None
    wrapup = 0
    while drive(rules, c, STEP) is None:
        wrapup += 1
    assert ordinary + wrapup == limit


# ------------------------------------------------------------------ (f) one table
def test_every_dimension_has_its_check() -> None:
    """Each limit in :data:`DIMENSIONS` is a session check of :data:`CHECKS` with the same
    rule, counters and kind; the only other checks are the chain caps, which come first."""
    checks = {c.reason: c for c in CHECKS}
    assert len(checks) == len(CHECKS)
    for d in DIMENSIONS:
        check = checks[d.limit]
        assert (check.rule, check.counters, check.kind, check.chain) == (
            d.rule,
            d.counters,
            d.kind,
            False,
        )
        assert (d.rule == COUNT) == (d.kind is not None)
    chain = [c.reason for c in CHECKS if c.chain]
    assert chain == ["max_total_steps", "max_total_usd"]
    assert [c.reason for c in CHECKS] == [*chain, *(d.limit for d in DIMENSIONS)]
    assert set(USD_CHECKS) == {"max_total_usd", "max_usd"}
    counter_fields = {f.name for f in dataclasses.fields(Counters)}
    for c in CHECKS:
        assert c.rule in (COUNT, MEASURED, TIME, ERRORS, REPEATS)
        assert set(c.counters) <= counter_fields
        assert (c.rule == TIME) == (not c.counters)


def test_derived_tables_cover_exactly_the_policys_names() -> None:
    """Every other list of limits names exactly the policy's: ``Limits`` fields, span
    attributes (``LIMIT_KEYS``, keyed by session limit), and the Redis hash fields
    (``LIMIT_FIELDS``, every check including the chain caps; ``COUNTER_FIELDS``, every counter)."""
    limits = [d.limit for d in DIMENSIONS]
    assert list(LIMIT_NAMES) == limits
    assert set(_attributes.LIMIT_KEYS) == set(limits)
    assert set(_attributes.USED_KEYS) == set(_attributes.REMAINING_KEYS) == set(limits)
    stems = dict(_attributes.DIMENSIONS)
    assert stems == {d.limit: d.attribute for d in DIMENSIONS}
    assert set(redis_ledger.LIMIT_FIELDS) == {c.reason for c in CHECKS}
    assert len(set(redis_ledger.LIMIT_FIELDS.values())) == len(redis_ledger.LIMIT_FIELDS)
    ints = {f.name for f in dataclasses.fields(Counters) if f.type in ("int", int)}
    assert set(redis_ledger.COUNTER_FIELDS) == ints
    for c in CHECKS:
        assert set(c.counters) <= set(redis_ledger.COUNTER_FIELDS)


ALLOWED_LOCAL = {"_money", "_values", "_limits", "_usage"}
#: Standard-library modules that would give the policy I/O, threads or clocks.
FORBIDDEN_STDLIB = {
    "asyncio",
    "io",
    "logging",
    "multiprocessing",
    "os",
    "pathlib",
    "shutil",
    "socket",
    "subprocess",
    "sys",
    "tempfile",
    "threading",
    "time",
    "warnings",
}


def test_policy_imports_only_pure_modules() -> None:
    """``budgetkit._policy`` imports the standard library (no I/O, threads or clocks) and
    ``budgetkit._money`` / ``_values`` / ``_limits`` / ``_usage`` only: never OpenTelemetry,
    a ledger, or the session. Read from its source (``sys.modules`` is shared by the suite)."""
    source = Path(_policy.__file__).read_text(encoding="utf-8")
    stdlib: set[str] = set()
    local: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            stdlib.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                top = node.module.split(".")[0]
                if top == "budgetkit":
                    local.add(node.module.split(".")[1])
                else:
                    stdlib.add(top)
            else:
                assert node.level == 1, ast.dump(node)
                if node.module is None:
                    local.update(alias.name for alias in node.names)
                else:
                    local.add(node.module.split(".")[0])
    assert local <= ALLOWED_LOCAL, local - ALLOWED_LOCAL
    assert stdlib <= set(sys.stdlib_module_names), stdlib - set(sys.stdlib_module_names)
    assert not stdlib & FORBIDDEN_STDLIB, stdlib & FORBIDDEN_STDLIB
