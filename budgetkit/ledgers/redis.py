"""A shared ledger on Redis (or Valkey): one session budget for many processes and machines.

Every operation is **one call of a Redis Function** (one Lua library loaded per server; EVALSHA
scripts where Functions are missing), so it is atomic on the server: a step is counted only if
it fits, N processes racing on ``max_steps=K`` admit exactly K, and a reservation is admitted
against ``spent + reserved + estimate <= max_usd`` in the same step.

Keys (all with the hash tag ``{session_id}``, so a cluster keeps one session on one slot):

- ``<prefix>{<id>}``: a hash with the limits, the counters, and the latched state
  (``reason``, ``tripped``, ``refused``, ``writer``), and per holder (a handle):
  ``r:<holder>``, the USD it has reserved, and ``o:<holder>``, its operation record. A holder
  numbers its operations; each carries its number and the lowest number the holder still
  waits for (its low-water mark). The record keeps the mark and the answers of the
  operations above it: a retried operation gets its stored answer back instead of being
  applied twice, for as long as the client retries; an operation older than the mark is
  stale and ignored. So memory is O(live workers + their operations in flight), never
  O(steps). An admit the client gave up on (a timeout) is undone by its next operation, or
  voided if it has not arrived yet.
- ``<prefix>{<id>}:lease``: a sorted set, holder -> deadline (server clock, ms), for holders
  that hold a reservation. When a deadline passes (a worker died mid-call), that holder's
  reservation is converted to spend at its estimate, never released (fail closed).

A session of an account (``create(account=...)``) has the same keys tagged by its account
instead (``<prefix>{a:<digest of the account id>}:s:<id>``), next to the account's windows,
so each operation checks and charges the session and its account in one script, on one slot
of a cluster (``budgetkit.ledgers._redis_accounts``).

Every operation moves the session's keys' expiry to ``ttl`` from now (at most once per tenth of
``ttl``), so an abandoned session disappears between 0.9 and 1 ``ttl`` after its last operation.

USD is exact: amounts travel and are stored as decimal integer strings of 10^-18 USD
("atto-dollars"), added and compared in Lua with arbitrary-precision digit arithmetic (never a
float). An amount with more than 18 decimal places is rounded up (a charge is never lowered).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import weakref
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .. import _money
from .._files import check_session_id
from .._limits import LIMIT_NAMES, Limits
from .._policy import (
    CHECKS,
    COUNT,
    ERRORS,
    LOOP_DETECTED,
    MEASURED,
    RECORDED,
    RECORDED_TOKENS,
    REPEATS,
    TIME,
    TOOL_CHECK,
    USD_CHECKS,
    Check,
    Counters,
)
from .._terms import AccountTerms
from .._values import LLM, STEP
from ..exceptions import (
    BudgetConfigError,
    BudgetTypeError,
    LedgerError,
    LedgerUnavailableError,
    SessionNotFoundError,
)
from . import _allotment
from ._redis_accounts import LUA_ACCOUNT, RedisAccount, account_usages, pointer_key
from ._replies import text
from ._snapshot import LedgerSnapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .._policy import Tally
    from .._terms import AccountUsage
    from .._usage import Counts
    from .._windows import Buckets

__all__ = ["RedisLedger", "RedisLedgerSession"]

# ---------------------------------------------------------------------------------- Lua
# Layout: one Lua *library* (``_LIBRARY``), loaded once per server with FUNCTION LOAD under a
# name made from a hash of its text (``budgetkit_<hash>``, functions ``bk_<hash>_<op>``) and
# called with FCALL; on a server without Functions (< 7.0, or FCALL/FUNCTION renamed) the same
# text runs as one EVALSHA script per operation (``_SCRIPTS``). ``RedisLedger.run`` loads the
# library when the server answers "Function not found" (new server, restart, FUNCTION FLUSH)
# and retries once. The prelude (``_PRELUDE``: digit arithmetic, the per-call state, the rules
# and field lists generated from ``_policy.CHECKS``, begin/finish) is defined once at load;
# each operation is a body in ``_OPS``.
#
# KEYS: [1] S, the session's hash; [2] L, the sorted set of reservation leases; for a session
# of an account, [3..] the account's keys (``RedisAccount.keys``: its reservations, then the
# buckets of its window), and the header ends with "#<account>" (``RedisAccount.arg``: its
# limits and the bucket's expiry), which ``setup`` opens as ACC; the helpers charge ACC
# with the session (give_back, sweep, cancel; admit and record).
# ARGV: [1] the header "holder|seq|low|abandoned|lease_ms|ttl_ms|tick" (built by
# ``RedisLedger.header``; the prelude's ``setup`` splits it into H, SEQ, LW, AB, LEASE, TTL,
# TICK); the operation's own arguments are A[2], A[3], ... Trailing empty arguments are not
# sent (``RedisLedgerSession._call``), so read them as ``(A[i] or '')``.
#
# Porting recipe: how to add an operation ``foo``
#   1. Body: add ``"foo": """..."""`` to ``_OPS``. It runs as a Lua function without
#      parameters:
#          local early = begin(STATE)       -- one HMGET: this holder's op record and
#          if early then return early end   -- reservation, and the fields of STATE into v;
#                                           -- answers a retry, a stale op, 'U' (no session)
#          ... read v['field'] (false: absent) and A[2..]; write with put('field', 'text') ...
#          return finish('OK')              -- one HSET of every put (plus this op's answer,
#                                           -- kept for a retry of its number), expiry moved
#      Values given to put are strings: ``int(x)`` formats a number; amounts are decimal
#      strings (add, sub0, cmp, min). A write put cannot express (HDEL, HINCRBY of a field
#      not read, ZADD) is a plain redis.call. Time: ``clock()`` (the server's TIME in ms,
#      asked at most once per call); never ask TIME where a rule does not need it.
#   2. Registration: nothing more; _LIBRARY and _SCRIPTS are built from _OPS (the library's
#      name changes with its text, so a new version loads next to an old one).
#   3. Python: a method of RedisLedgerSession calling ``self._run("foo", [arg, ...],
#      op_id=...)`` (an op_id when a retry must not apply it twice; the header is added).
#   4. Fields: STATE (``state_fields``) is every field the rules read; a hot operation reads
#      fewer with a read spec of its own (``_lua_read(fields)`` emitted into the prelude, as
#      ADMIT[kind] and usual_record()). A field admit or record must read is derived in
#      ``admit_fields`` / ``record_fields`` from the policy table (``_policy.CHECKS``,
#      ``_policy.RECORDED``), never listed by hand in Lua; a field seldom set belongs in
#      ``gate_fields`` (read only when the ``gate`` field is set: put and create set it). A
#      field only some calls need is read later with ``more({'a', 'b'})``.
#   Per-holder data is a field of S named '<letter>:<holder>' ('o:' its op record, 'r:' its
#   reservation), never a key of its own: a session is one key (plus L while a
#   reservation is open).
#: Exact arithmetic on non-negative decimal integer strings, in chunks of 14 digits (every
#: chunk sum stays far below 2^53, where Lua's doubles are exact).
LUA_BIGNUM = """
local CH, BASE = 14, 100000000000000
local function pad(a, n) return string.rep('0', n - #a) .. a end
local function width(a, b)
  local n = math.max(#a, #b)
  return n + (CH - n % CH) % CH
end
-- A number of at most two chunks (28 digits) as two exact doubles: its high and low chunk.
local function split(a)
  local n = #a
  if n <= CH then return 0, tonumber(a) end
  return tonumber(string.sub(a, 1, n - CH)), tonumber(string.sub(a, n - CH + 1))
end
local function cmp(a, b)
  if #a < 16 and #b < 16 then  -- below 10^15 < 2^53 a double is exact
    local x, y = tonumber(a), tonumber(b)
    if x < y then return -1 elseif x > y then return 1 end
    return 0
  end
  if #a ~= #b and string.byte(a) ~= 48 and string.byte(b) ~= 48 then
    if #a < #b then return -1 end  -- no leading zero: the longer is larger
    return 1
  end
  if #a <= 2 * CH and #b <= 2 * CH then
    local ah, al = split(a)
    local bh, bl = split(b)
    if ah < bh then return -1 elseif ah > bh then return 1 end
    if al < bl then return -1 elseif al > bl then return 1 end
    return 0
  end
  local n = width(a, b)
  a, b = pad(a, n), pad(b, n)
  for i = 1, n, CH do
    local x = tonumber(string.sub(a, i, i + CH - 1))
    local y = tonumber(string.sub(b, i, i + CH - 1))
    if x ~= y then
      if x < y then return -1 end
      return 1
    end
  end
  return 0
end
local function op(a, b, sign)
  if #a <= 2 * CH and #b <= 2 * CH then  -- two chunks (every USD amount below $10^10)
    local ah, al = split(a)
    local bh, bl = split(b)
    local hi, lo = ah + sign * bh, al + sign * bl
    if lo >= BASE then
      hi, lo = hi + 1, lo - BASE
    elseif lo < 0 then
      hi, lo = hi - 1, lo + BASE
    end
    -- '%d' formats a C long (exact: each chunk stays below 2 * 10^14), faster than '%.0f'
    if hi == 0 then return string.format('%d', lo) end
    return string.format('%d%014d', hi, lo)
  end
  local n = width(a, b)
  a, b = pad(a, n), pad(b, n)
  local out, carry = {}, 0
  for i = n - CH + 1, 1, -CH do
    local d = tonumber(string.sub(a, i, i + CH - 1))
      + sign * tonumber(string.sub(b, i, i + CH - 1)) + carry
    carry = 0
    if d >= BASE then
      d, carry = d - BASE, 1
    elseif d < 0 then
      d, carry = d + BASE, -1
    end
    table.insert(out, 1, string.format('%014.0f', d))
  end
  if carry == 1 then table.insert(out, 1, '1') end
  local s = string.gsub(table.concat(out), '^0+', '')
  if s == '' then return '0' end
  return s
end
local function add(a, b) return op(a, b, 1) end
local function sub0(a, b)
  if cmp(a, b) <= 0 then return '0' end
  return op(a, b, -1)
end
local function min(a, b)
  if cmp(a, b) <= 0 then return a end
  return b
end
"""


#: The state of one call, set by ``setup`` from KEYS and ARGV; helpers on it.
_LUA_CALL = """
local S, L, A, H, SEQ, LW, AB, LEASE, TTL, TICK, ACC
local v, now, mine, rec, nl, ents, lw, rec_dirty, dirty, leased, OK, RK, seqn
local function setup(keys, args)
  S, L, A = keys[1], keys[2], args
  local account
  H, SEQ, LW, AB, LEASE, TTL, TICK, account = string.match(
    args[1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^#]*)#?(.*)$')
  ACC = acct_open(keys, account, 3, TTL)
  v, now, mine, rec, nl, ents, lw, seqn = nil, nil, nil, nil, nil, nil, 0, nil
  rec_dirty, dirty, leased = false, {}, false
end
-- The server's clock in ms: TIME, asked at most once per call and only by what needs it
-- (time limits, reservation leases), never on the plain admit path.
local function clock()
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end
local function num(x)
  if x then return tonumber(x) end
  return 0
end
local function int(x) return string.format('%.0f', x) end
-- Set a field of the session's hash; finish() writes every one in one HSET.
local function put(field, value)
  v[field] = value
  dirty[field] = value
end
-- Read more fields into v (those not already set in this call; false: absent).
local function more(names)
  local got = redis.call('HMGET', S, unpack(names))
  for i, name in ipairs(names) do
    if dirty[name] == nil then v[name] = got[i] end
  end
end
"""

COUNTER_FIELDS = {
    "steps": "steps",
    "llm_calls": "llm",
    "input_tokens": "in",
    "output_tokens": "out",
    "cache_read_tokens": "cr",
    "cache_write_tokens": "cw",
    "reasoning_tokens": "rs",
    "cost": "cost",
    "reserved": "resv",
    "unpriced_calls": "unpriced",
    "unmeasured_calls": "unmeasured",
    "errors_in_a_row": "errors",
    "repeats": "rep",
}

#: A capped tool's count of calls lives in the session's hash as ``t:<tool name>``.
TOOL_FIELD_PREFIX = "t:"

#: Where each limit of ``budgetkit._policy.CHECKS`` lives in the session's hash.
LIMIT_FIELDS = {
    "max_total_steps": "cs",
    "max_total_usd": "cu",
    "max_steps": "ms",
    "max_llm_calls": "ml",
    "max_tokens": "mt",
    "max_input_tokens": "mi",
    "max_output_tokens": "mo",
    "max_usd": "mu",
    "max_seconds": "msec",
    "max_consecutive_errors": "me",
    "max_repeats": "mr",
}


#: Fields every operation reads: the clock tick of the keys' last expiry move (``due``; present
#: once the session exists), and the USD held by reservations (a sweep is needed when not 0).
_BASE_FIELDS = ("due", "resv")


def _check_fields(check: Check) -> list[str]:
    return [LIMIT_FIELDS[check.reason], *(COUNTER_FIELDS[c] for c in check.counters)]


def state_fields() -> list[str]:
    """Every field the rules and the operations read (``STATE`` in Lua)."""
    fields = sorted({*COUNTER_FIELDS.values(), *LIMIT_FIELDS.values()})
    rest = [f for f in fields if f not in _BASE_FIELDS]
    return [*_BASE_FIELDS, *rest, "start", "reason", "tripped", "keep", "lastc", "writer"]


def gate_fields() -> list[str]:
    """Fields seldom set, which an admit reads only when the session's ``gate`` field is
    set: the latch, the crossed limit, the wrap-up reserve, the last call digest, the time
    limits and the chain caps. Every write of one of them sets ``gate`` too (``flush`` and
    ``create`` in Lua), so an admit of a session without them reads none."""
    fields = ["reason", "tripped", "keep", "lastc"]
    fields += [LIMIT_FIELDS[c.reason] for c in CHECKS if c.rule == TIME or c.chain]
    return fields


def admit_fields(kind: str, reserve: bool) -> list[str]:
    """The fields an admit of ``kind`` (``"step"``, ``"llm"`` or ``""``) reads, derived from
    :data:`CHECKS`: the count limits of its kind, the USD limits when it ``reserve``s, and the
    run of errors (the answer says it is counted), and ``gate``. On top, only when needed:
    :func:`gate_fields` (``gate`` set), the start of a time limit (one is set),
    :func:`repeats_fields` (a step with a digest), :func:`wrapup_fields` (the session keeps
    a wrap-up reserve)."""
    gated = gate_fields()
    fields = [*_BASE_FIELDS, "gate"]
    for check in CHECKS:
        if check.rule == ERRORS:
            fields += [COUNTER_FIELDS[c] for c in check.counters]
        elif (check.rule == COUNT and check.kind == kind) or (
            reserve and check.reason in USD_CHECKS
        ):
            fields += [f for f in _check_fields(check) if f not in gated]
    return list(dict.fromkeys(fields))


def optional_tokens() -> list[int]:
    """The positions in :data:`RECORDED_TOKENS` of the token counters no check judges (cache
    and reasoning tokens): a record adds to them only when the call has some."""
    judged = {c for check in CHECKS if check.rule == MEASURED for c in check.counters}
    return [i for i, c in enumerate(RECORDED_TOKENS) if c not in judged]


def record_fields(usual: bool = False) -> list[str]:
    """The fields a record reads, derived from the policy: the counters the recording rule
    (``_policy.record``) changes, every measured check's limit and counters (a charge may
    cross it), and ``tripped`` (the first crossing wins). ``usual``: for a measured, priced
    call without :func:`optional_tokens`, which leaves those counters and the counts of
    unpriced and unmeasured calls alone."""
    skip = set()
    if usual:
        skip = {COUNTER_FIELDS[RECORDED_TOKENS[i]] for i in optional_tokens()}
        skip |= {COUNTER_FIELDS["unpriced_calls"], COUNTER_FIELDS["unmeasured_calls"]}
    fields = [*_BASE_FIELDS, "tripped", *(COUNTER_FIELDS[c] for c in RECORDED)]
    for check in CHECKS:
        if check.rule == MEASURED:
            fields += _check_fields(check)
    return [f for f in dict.fromkeys(fields) if f not in skip]


def repeats_fields() -> list[str]:
    """The fields a step with a call digest reads on top (the run of repeats, its limit)."""
    return [f for c in CHECKS if c.rule == REPEATS for f in _check_fields(c)]


def wrapup_fields() -> list[str]:
    """The fields ``in_wrapup_reserve`` reads (every limit it keeps a part of)."""
    fields = ["start", "keep"]
    for check in CHECKS:
        if not check.chain and check.rule not in (ERRORS, REPEATS):
            fields += _check_fields(check)
    return list(dict.fromkeys(fields))


def _lua_list(fields: list[str]) -> str:
    return "{" + ", ".join(f"'{f}'" for f in fields) + "}"


def _lua_read(fields: list[str]) -> str:
    """A read spec for begin(): the field names, and a function building ``v`` from the
    HMGET reply (after this holder's two fields) in one table constructor."""
    build = ", ".join(f"['{f}'] = g[{i + 3}]" for i, f in enumerate(fields))
    return f"{{{_lua_list(fields)}, function(g) return {{{build}}} end}}"


def lua_rules() -> str:
    """The policy's rules as Lua, generated from ``budgetkit._policy.CHECKS`` (the one
    order of reasons), so the server applies exactly what the in-process ledger does; and
    the field lists operations read (``STATE``, ``ADMIT[kind]``, ``WRAPUP``).

    Each function reads ``v``, the fields of the session's hash read so far, and returns the
    refusing reason or ``false``: ``time_refusal``, ``count_refusal`` (by call kind),
    ``reserve_refusal`` (spent + reserved + estimate), ``measured_refusal`` (after a
    charge), ``errors_refusal``; ``in_wrapup_reserve`` answers true or false.
    """
    admit = ",\n  ".join(
        f"['{kind}{'+r' if reserve else ''}'] = {_lua_read(admit_fields(kind, reserve))}"
        for kind in (STEP, LLM, "")
        for reserve in (False, True)
    )
    lines = [
        f"local STATE = {_lua_read(state_fields())}",
        f"local ADMIT = {{\n  {admit}\n}}",
        f"local RECORD = {_lua_read(record_fields())}",
        f"local RECORD_USUAL = {_lua_read(record_fields(usual=True))}",
        f"local TOKENS = {_lua_list([COUNTER_FIELDS[c] for c in RECORDED_TOKENS])}",
        f"local WRAPUP = {_lua_list(wrapup_fields())}",
        f"local GATE = {_lua_list(gate_fields())}",
        "local GATED = {" + ", ".join(f"['{f}'] = true" for f in gate_fields()) + "}",
        f"local REPEATS = {_lua_list(repeats_fields())}",
    ]

    def exact(check: Check) -> str:
        """The counter as a decimal string (a sum of fields, added exactly)."""
        parts = [f"(v['{COUNTER_FIELDS[c]}'] or '0')" for c in check.counters]
        value = parts[0]
        for part in parts[1:]:
            value = f"add({value}, {part})"
        return value

    def approximate(check: Check) -> str:
        """The counter as a Lua number (for the wrap-up reserve's fractions)."""
        return " + ".join(f"num(v['{COUNTER_FIELDS[c]}'])" for c in check.counters)

    def over(check: Check, strict: bool, scale: str = "") -> str:
        """Whether the counter is over (or at) the limit: exact decimal-string arithmetic,
        as the in-process ledger's integers; a ``scale``d limit (the wrap-up reserve) is a
        fraction, compared as numbers there too (as Python floats in process)."""
        limit = f"v['{LIMIT_FIELDS[check.reason]}']"
        if not scale:
            op = "> 0" if strict else ">= 0"
            return f"{limit} and cmp({exact(check)}, {limit}) {op}"
        bound = f"tonumber({limit}){scale}"
        if check.rule == COUNT:
            bound = f"math.floor({bound})"
        return f"{limit} and {approximate(check)} {'>' if strict else '>='} {bound}"

    def function(name: str, params: str, body: list[str], default: str = "false") -> None:
        lines.append(f"local function {name}({params})")
        lines.extend(body)
        lines.append(f"  return {default}")
        lines.append("end")

    timed = [c for c in CHECKS if c.rule == TIME]
    # A record's arguments: A[2] measured, A[3..7] the token counts, A[8] priced.
    usual = " and ".join(
        ["A[2] == '1'", "A[8] == '1'", *(f"A[{i + 3}] == '0'" for i in optional_tokens())]
    )
    function("usual_record", "", [f"  if {usual} then return RECORD_USUAL end"], "RECORD")
    function(
        "time_refusal",
        "v",
        [
            line
            for c in timed
            for line in (
                f"  if v['{LIMIT_FIELDS[c.reason]}'] then",
                "    if v['start'] == nil then more({'start'}) end",
                f"    if clock() - tonumber(v['start']) > "
                f"tonumber(v['{LIMIT_FIELDS[c.reason]}']) * 1000 then return '{c.reason}' end",
                "  end",
            )
        ],
    )
    counts: list[str] = []
    for kind in (STEP, LLM):
        counts.append(f"  if kind == '{kind}' then")
        counts += [
            f"    if {over(c, strict=False)} then return '{c.reason}' end"
            for c in CHECKS
            if c.rule == COUNT and c.kind == kind
        ]
        counts.append("  end")
    function("count_refusal", "kind, v", counts)
    # The per-tool cap: the cap comes with the call, the count is the hash field 't:<name>'.
    function(
        "tool_refusal",
        "kind, name, cap",
        [
            f"  if kind == '{TOOL_CHECK.kind}' and cap ~= '' and "
            f"num(redis.call('HGET', S, '{TOOL_FIELD_PREFIX}' .. name)) >= tonumber(cap) "
            f"then return '{TOOL_CHECK.reason}' end"
        ],
    )
    function(
        "reserve_refusal",
        "wanted, v",
        [
            f"  if v['{LIMIT_FIELDS[r]}'] and cmp(wanted, v['{LIMIT_FIELDS[r]}']) > 0 "
            f"then return '{r}' end"
            for r in USD_CHECKS
        ],
    )
    function(
        "measured_refusal",
        "v",
        [
            f"  if {over(c, strict=True)} then return '{c.reason}' end"
            for c in CHECKS
            if c.rule == MEASURED
        ],
    )
    function(
        "errors_refusal",
        "v",
        [
            f"  if {over(c, strict=False)} then return '{c.reason}' end"
            for c in CHECKS
            if c.rule == ERRORS
        ],
    )
    # The run of repeats: `rep` equal steps in a row (this one included).
    function(
        "repeats_refusal",
        "rep, v",
        [
            f"  if v['{LIMIT_FIELDS[c.reason]}'] and "
            f"rep >= tonumber(v['{LIMIT_FIELDS[c.reason]}']) then return '{LOOP_DETECTED}' end"
            for c in CHECKS
            if c.rule == REPEATS
        ],
    )
    wrapup = ["  local keep = tonumber(v['keep'])"]
    for c in CHECKS:
        if c.chain or c.rule in (ERRORS, REPEATS):
            continue
        field = LIMIT_FIELDS[c.reason]
        if c.rule == COUNT:
            wrapup.append(
                f"  if kind == '{c.kind}' and {over(c, strict=False, scale=' * keep')} "
                "then return true end"
            )
        elif c.rule == MEASURED:
            wrapup.append(f"  if {over(c, strict=True, scale=' * keep')} then return true end")
        else:
            wrapup.append(
                f"  if v['{field}'] and clock() - tonumber(v['start']) > "
                f"tonumber(v['{field}']) * keep * 1000 then return true end"
            )
    function("in_wrapup_reserve", "kind, v", wrapup)
    return "\n".join(lines)


#: Reservations, op records, begin and finish (after the rules, which they use).
_LUA_HELPERS = """
-- Write every put in one HSET (with 'gate' when a gated field is among them).
local function flush()
  local args, gate = {}, false
  for f, x in pairs(dirty) do
    args[#args + 1] = f
    args[#args + 1] = x
    if GATED[f] then gate = true end
  end
  if gate then
    args[#args + 1] = 'gate'
    args[#args + 1] = '1'
  end
  if #args > 0 then redis.call('HSET', S, unpack(args)) end
  dirty = {}
end
-- Give back up to `amount` of what this holder has reserved (never more than it holds).
local function give_back(amount)
  if not mine then return end
  local take = min(mine, amount)
  if ACC then acct_release(ACC, take) end
  mine = sub0(mine, take)
  if mine == '0' then
    mine = nil
    dirty[RK] = nil
    redis.call('HDEL', S, RK)
    redis.call('ZREM', L, H)
  else
    dirty[RK] = mine
  end
  put('resv', sub0(v['resv'] or '0', take))
end
-- The reservations of holders whose lease ran out (a worker died mid-call) become spend
-- at their estimate: money may have been spent under them, so they are never released.
local function sweep()
  local dead = redis.call('ZRANGEBYSCORE', L, '-inf', clock())
  if #dead == 0 then return end
  more(STATE[1])
  local fields = {}
  for i, h in ipairs(dead) do fields[i] = 'r:' .. h end
  local held = redis.call('HMGET', S, unpack(fields))
  local resv, cost = v['resv'] or '0', v['cost'] or '0'
  for i, h in ipairs(dead) do
    local x = held[i]
    if h == H then
      x, mine = mine, nil
      dirty[RK] = nil
    end
    if x then
      resv = sub0(resv, x)
      cost = add(cost, x)
      if ACC then
        acct_release(ACC, x)
        acct_record(ACC, '', '', x)
      end
    end
  end
  redis.call('HDEL', S, unpack(fields))
  redis.call('ZREMRANGEBYSCORE', L, '-inf', clock())
  put('resv', resv)
  put('cost', cost)
  if not v['tripped'] then
    local reason = measured_refusal(v)
    if reason then put('tripped', reason) end
  end
end
-- This holder's op record, 'o:<holder>' = "<mark>" then "\\n<seq> <answer>" for each
-- operation not yet acknowledged (the mark is the lowest op number it still waits for),
-- parsed into ents (seq -> answer) only when more than the usual one line is there.
local function entries()
  if not ents then
    ents = {}
    if nl then
      for s, a in string.gmatch(string.sub(rec, nl), '\\n(%d+) ([^\\n]*)') do ents[s] = a end
    end
  end
  return ents
end
-- Admits the client gave up on (it raised, so the call never ran): one applied is undone,
-- one not yet applied is voided, so it is never applied when it arrives late.
local function cancel()
  more(STATE[1])
  local e = entries()
  for s in string.gmatch(AB, '[^,]+') do
    local done = e[s]
    if done and string.sub(done, 1, 1) == 'A' then
      local kind, reserve = string.match(done, '^[^|]*|([^|]*)|(.*)$')
      if kind == 'step' then
        put('steps', int(num(v['steps']) - 1))
      elseif kind == 'llm' then
        put('llm', int(num(v['llm']) - 1))
      end
      if ACC then acct_uncount(ACC, kind) end
      if reserve and reserve ~= '' and reserve ~= '0' then give_back(reserve) end
    end
    e[s] = 'V'
  end
  rec_dirty = true
end
-- Read this holder's op record and reservation ('r:<holder>') and the fields of `spec`
-- (STATE, ADMIT[kind], or a read spec of your own) into v. An operation already applied
-- answers as it did ('V': voided; 'D': older than the holder's mark, a stale duplicate); no
-- session answers 'U'. Then undoes abandoned admits and sweeps expired reservations.
local function begin(spec)
  OK, RK = 'o:' .. H, 'r:' .. H
  local got = redis.call('HMGET', S, OK, RK, unpack(spec[1]))
  rec = got[1]
  if rec then
    nl = string.find(rec, '\\n', 1, true)
    if nl then lw = tonumber(string.sub(rec, 1, nl - 1)) else lw = tonumber(rec) end
    if SEQ ~= '' then
      local at = nl and string.find(rec, '\\n' .. SEQ .. ' ', nl, true)
      if at then
        local from = at + #SEQ + 2
        local stop = string.find(rec, '[|\\n]', from)
        return string.sub(rec, from, (stop or 0) - 1)
      end
      seqn = tonumber(SEQ)
      if seqn < lw then return 'D' end
    end
  end
  v = spec[2](got)
  if not v['due'] then return 'U' end
  mine = got[2] or nil
  if AB ~= '' then cancel() end
  if (v['resv'] or '0') ~= '0' then sweep() end
  return nil
end
-- Remember a sequenced operation's answer until the client acknowledges it (its mark
-- passes it); keep this holder's reservation alive; write every put in one HSET; move the
-- keys' expiry when the client's clock tick changed (at most once per tenth of the ttl).
local function finish(result, detail)
  if SEQ ~= '' or rec_dirty then
    local low, mark
    if LW == SEQ and seqn then low, mark = seqn, LW else low, mark = tonumber(LW), LW end
    if low < lw then low, mark = lw, int(lw) end
    if not ents and nl then
      -- Usually one line, below the mark: dropped without parsing the record.
      local sp = string.find(rec, ' ', nl, true)
      if string.find(rec, '\\n', nl + 1, true) or tonumber(string.sub(rec, nl + 1, sp - 1)) >= low
      then
        entries()
      end
    end
    if ents then
      local out = {mark}
      for s, a in pairs(ents) do
        if s ~= SEQ and tonumber(s) >= low then out[#out + 1] = s .. ' ' .. a end
      end
      mark = table.concat(out, '\\n')
    end
    if SEQ ~= '' then mark = mark .. '\\n' .. SEQ .. ' ' .. result .. (detail or '') end
    put(OK, mark)
  end
  if mine and not leased then
    redis.call('ZADD', L, 'XX', clock() + tonumber(LEASE), H)
  end
  if v['due'] ~= TICK then
    put('due', TICK)
    flush()
    redis.call('PEXPIRE', S, TTL)
    redis.call('PEXPIRE', L, TTL)
  else
    flush()
  end
  return result
end
"""

#: The operations: name -> body of a Lua function without parameters (see the recipe above).
_OPS: dict[str, str] = {
    # A[2..]: field/value pairs. 'E' when the id exists, else 'OK'.
    "create": """
if redis.call('EXISTS', S) == 1 then return 'E' end
redis.call('HSET', S, 'start', int(clock()), 'due', TICK, unpack(A, 2))
for i = 2, #A, 2 do
  if GATED[A[i]] then
    redis.call('HSET', S, 'gate', '1')
    break
  end
end
redis.call('PEXPIRE', S, TTL)
return 'OK'
""",
    # The session's configuration (JSON), or 'U'.
    "join": """
local early = begin(STATE)
if early then return early end
return finish(redis.call('HGET', S, 'cfg'))
""",
    # A[2..8]: kind ('step', 'llm' or ''), reserve ('' or units), name, wrapup ('1'/''),
    # tool cap ('' or calls), call digest ('' or the digest of a step, for max_repeats),
    # final ('1': a count refusal latches even while others hold leased units unused).
    # 'A' admitted ('AE' while a run of errors is counted), 'W' refused by the wrap-up
    # reserve (not latched), 'R' refused for now (units recalled: ask again), 'X<reason>'
    # refused and latched, 'U' unknown.
    "admit": """
local kind, reserve, name = A[2] or '', A[3] or '', A[4] or ''
local wrapup, cap, digest = A[5] or '', A[6] or '', A[7] or ''
local early
if reserve == '' then early = begin(ADMIT[kind]) else early = begin(ADMIT[kind .. '+r']) end
if early then return early end
if v['gate'] then more(GATE) end
local result = 'A'
if v['reason'] then
  result = 'X' .. v['reason']
else
  local reason = v['tripped']
  if not reason then reason = time_refusal(v) end
  if not reason then
    reason = count_refusal(kind, v)
    -- Units other workers leased and have not used count as admitted: unless this ask is
    -- final, recall them and answer 'R' (the client asks again) rather than stop short.
    if reason and (A[8] or '') == '' and recall(kind, RECALL_MS) then return finish('R') end
  end
  if not reason then reason = tool_refusal(kind, name, cap) end
  if not reason and reserve ~= '' then
    reason = reserve_refusal(add(add(v['cost'] or '0', v['resv'] or '0'), reserve), v)
  end
  if not reason and ACC then reason = acct_refusal(ACC, kind, reserve) end
  local held = false
  if not reason and v['keep'] and wrapup ~= '1' then
    more(WRAPUP)
    held = in_wrapup_reserve(kind, v)
  end
  if reason then
    put('reason', reason)
    put('refused', name)
    result = 'X' .. reason
  elseif held then
    result = 'W'
  else
    if kind == 'step' then
      put('steps', int(num(v['steps']) + 1))
      if cap ~= '' then redis.call('HINCRBY', S, 't:' .. name, 1) end
      if digest == '' then
        if v['lastc'] then
          put('rep', '0')
          redis.call('HDEL', S, 'lastc', 'lastn')
        end
      else
        more(REPEATS)
        local rep = 1
        if v['lastc'] == digest then
          rep = num(v['rep']) + 1
          put('rep', int(rep))
        else
          put('rep', '1')
          put('lastc', digest)
          put('lastn', name)
        end
        local looping = repeats_refusal(rep, v)
        if looping and not v['tripped'] then put('tripped', looping) end
      end
    elseif kind == 'llm' then
      put('llm', int(num(v['llm']) + 1))
    end
    if reserve ~= '' and reserve ~= '0' then
      put('resv', add(v['resv'] or '0', reserve))
      mine = add(mine or '0', reserve)
      dirty[RK] = mine
      leased = true
      if redis.call('ZADD', L, clock() + tonumber(LEASE), H) == 1 then
        redis.call('PEXPIRE', L, TTL)
      end
    end
    if ACC then acct_count(ACC, kind, reserve) end
    if num(v['errors']) > 0 then result = 'AE' end
  end
end
return finish(result, '|' .. kind .. '|' .. reserve)
""",
    # A[2..10]: measured ('1'/'0'), input, output, cache read, cache write, reasoning,
    # priced ('1'/'0'), cost ('' or units), release ('' or units). 'T<tripped reason or
    # empty>', or 'U'. Token counts are added exactly (decimal strings): a huge one trips.
    "record": """
local early = begin(usual_record())
if early then return early end
if A[2] == '1' then
  for i, name in ipairs(TOKENS) do
    local n = A[i + 2]
    if n ~= '0' then put(name, add(v[name] or '0', n)) end
  end
  if A[8] ~= '1' then put('unpriced', int(num(v['unpriced']) + 1)) end
else
  put('unmeasured', int(num(v['unmeasured']) + 1))
end
if (A[9] or '') ~= '' then put('cost', add(v['cost'] or '0', A[9])) end
if ACC then
  if A[2] == '1' then acct_record(ACC, A[3], A[4], A[9] or '')
  else acct_record(ACC, '', '', A[9] or '') end
end
local tripped = v['tripped']
if not tripped then
  tripped = measured_refusal(v)
  if tripped then put('tripped', tripped) end
end
if (A[10] or '') ~= '' then give_back(A[10]) end
return finish('T' .. (tripped or ''))
""",
    # A[2]: units. 'OK' or 'U'.
    "release": """
local early = begin(STATE)
if early then return early end
give_back(A[2])
return finish('OK')
""",
    # Counts a failed call: 'T<tripped reason or empty>', or 'U'.
    "fail": """
local early = begin(STATE)
if early then return early end
put('errors', int(num(v['errors']) + 1))
local tripped = v['tripped']
if not tripped then
  tripped = errors_refusal(v)
  if tripped then put('tripped', tripped) end
end
return finish('T' .. (tripped or ''))
""",
    # Resets the run of errors (idempotent). 'OK' or 'U'.
    "succeed": """
local early = begin(STATE)
if early then return early end
if num(v['errors']) ~= 0 then put('errors', '0') end
return finish('OK')
""",
    # A[2]: reason. Marks a crossed limit, first wins (idempotent). 'OK' or 'U'.
    "trip": """
local early = begin(STATE)
if early then return early end
if not v['tripped'] then put('tripped', A[2]) end
return finish('OK')
""",
    # A[2], A[3]: reason, name. Latches, first wins (idempotent). 'X<latched reason>' or 'U'.
    "latch": """
local early = begin(STATE)
if early then return early end
if not v['reason'] then
  put('reason', A[2])
  put('refused', A[3] or '')
end
return finish('X' .. v['reason'])
""",
    # A[2..]: configuration (JSON), then limit field/value pairs. The latch is lifted and a
    # measured limit still crossed trips again: 'T<tripped reason or empty>', or 'U'.
    "extend": """
local early = begin(STATE)
if early then return early end
flush()
redis.call('HSET', S, 'cfg', unpack(A, 2))
for i = 3, #A, 2 do
  if GATED[A[i]] then
    redis.call('HSET', S, 'gate', '1')
    break
  end
end
redis.call('HDEL', S, 'reason', 'tripped', 'refused')
more(STATE[1])
local tripped = measured_refusal(v)
if tripped then put('tripped', tripped) end
return finish('T' .. (tripped or ''))
""",
    # '1' when this holder is (or already was) the handoff writer.
    "claim": """
local early = begin(STATE)
if early then return early end
if not v['writer'] then put('writer', H) end
local won = '0'
if v['writer'] == H then won = '1' end
return finish(won)
""",
    # A[2]: the holder's last op number. This holder is done: its record keeps only its
    # mark (an operation arriving late is stale).
    "bye": """
local early = begin(STATE)
if early then return early end
lw = math.max(lw, tonumber(A[2]) + 1)
rec_dirty = true
return finish('OK')
""",
    # The session's hash as a flat field/value list plus 'now', or 'U'.
    "snapshot": """
local early = begin(STATE)
if early then return early end
finish('')
local all = redis.call('HGETALL', S)
table.insert(all, 'now')
table.insert(all, int(clock()))
return all
""",
}

_OPS.update(_allotment.lua_ops(COUNTER_FIELDS, LIMIT_FIELDS))

_PRELUDE = (
    LUA_BIGNUM
    + LUA_ACCOUNT
    + "\n"
    + _LUA_CALL
    + lua_rules()
    + "\n"
    + _LUA_HELPERS
    + f"local RECALL_MS = {_allotment.RECALL_MS}\n"
    + _allotment.LUA_RECALL
)

#: The version of the Lua: the library and its functions are named after it, so every
#: version of budgetkit loads its own next to the others on one server.
LUA_VERSION = hashlib.sha256(
    (_PRELUDE + "".join(f"{k}\n{b}" for k, b in sorted(_OPS.items()))).encode()
).hexdigest()[:12]
LIBRARY_NAME = f"budgetkit_{LUA_VERSION}"
#: The FCALL name of each operation.
FUNCTIONS = {name: f"bk_{LUA_VERSION}_{name}" for name in _OPS}

_LIBRARY = (
    f"#!lua name={LIBRARY_NAME}\n"
    + _PRELUDE
    + "".join(
        f"redis.register_function('{FUNCTIONS[name]}', function(keys, args)\n"
        f"  setup(keys, args)\n{body}end)\n"
        for name, body in _OPS.items()
    )
)

#: The same operations as EVALSHA scripts (servers without Functions).
_SCRIPTS = {
    name: _PRELUDE + f"setup(KEYS, ARGV)\nlocal function body()\n{body}end\nreturn body()\n"
    for name, body in _OPS.items()
}


# ---------------------------------------------------------------------------------- USD
def to_units(amount: Decimal, *, limit: bool = False) -> str:
    """``amount`` USD as an integer of 10^-18 USD, as a string: rounded up past 18 places,
    or down for a ``limit`` (so ``spent > limit`` reads the same in units as in USD)."""
    if not amount.is_finite() or amount < 0:
        raise BudgetConfigError(f"a ledger amount must be a non-negative USD value, got {amount}")
    return str(_money.to_units_floor(amount) if limit else _money.to_units(amount))


def _check_count(n: int) -> int:
    """A token count, as the scripts take it: a non-negative int (of any size)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise BudgetTypeError(f"a token count must be a non-negative int, got {n!r}")
    return n


def _check_units(units: int) -> int:
    """A USD amount in units, as the scripts take it: a non-negative int."""
    if isinstance(units, bool) or not isinstance(units, int) or units < 0:
        raise BudgetTypeError(f"a ledger amount must be a non-negative int of units, got {units!r}")
    return units


def from_units(units: str | bytes | None) -> Decimal:
    """The exact Decimal of a units string, without trailing zeros (``"0.00036"``)."""
    if units is None:
        return Decimal(0)
    return _money.from_units(int(units))


# ---------------------------------------------------------------------------------- ledger
def _seconds(value: object, name: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BudgetTypeError(f"{name} must be a number of seconds, got {value!r}")
    if not value > 0 or value == float("inf"):
        raise BudgetConfigError(f"{name} must be a positive, finite number of seconds, got {value}")
    return float(value)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def redact(url: str) -> str:
    """``url`` without its password (``redis://user:***@host:6379/0``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _client_url(client: Any) -> str:
    """A URL naming where a redis-py client connects, for error messages."""
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:
        return repr(client)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _cluster_url(url: str) -> tuple[str, bool]:
    """``url`` for redis-py, and whether it names a Redis Cluster (``redis+cluster://`` or
    ``rediss+cluster://``: any node of the cluster)."""
    for scheme in ("redis+cluster://", "rediss+cluster://"):
        if url.startswith(scheme):
            return scheme.replace("+cluster", "") + url[len(scheme) :], True
    return url, False


def _secret(value: object) -> bytes | None:
    """A join secret as the ledger keeps it (64 hex digits), or ``None``."""
    if not isinstance(value, str) or len(value) != 64:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


class RedisLedger:
    """Sessions kept on a Redis (or Valkey) server, shared by every process that joins them.

    Args:
        url_or_client: a ``redis://`` / ``rediss://`` / ``unix://`` URL, a
            ``redis+cluster://host:port`` (or ``rediss+cluster://``) URL of any node of a Redis
            Cluster, or a ``redis.Redis`` / ``redis.cluster.RedisCluster`` client you
            configured yourself (its retries are safe: operations carry ids).
        key_prefix: prefix of every key budgetkit writes.
        ttl: seconds (or a ``timedelta``) a session's keys live after its last operation.
        reservation_ttl: seconds a reservation outlives its holder's last operation; the
            reservations of a worker that died are then converted to spend at their
            estimate (money may have been spent under them).
        op_ttl: ignored (kept for compatibility): an operation's answer is now kept until
            its client has the reply, however long it retries.
        socket_timeout: seconds to wait for the server (URL only); then the ledger is
            unavailable.
        retries: retries of a failed connection or timeout (URL only).
        allotment: ``None`` (exact mode: one round trip per admit), a number of steps / LLM
            calls, or ``"auto"``: each worker leases that many at a time and admits from its
            lease locally (see the Redis how-to). Also ``?allotment=`` in the URL.
        allotment_poll: seconds between a lease holder's reads of the session's state: a
            trip elsewhere stops its local admits within ``2 * allotment_poll``. Also
            ``?allotment_poll=`` in the URL.
        allotment_ttl: seconds a lease holder's entry outlives its last poll. A worker
            that died leaves its leased units counted (it may have used them); after this
            its entry is dropped, so others stop waiting for it to give them back. Also
            ``?allotment_ttl=`` in the URL.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        url_or_client: Any,
        *,
        key_prefix: str = "budgetkit:",
        ttl: float | timedelta = 86400.0,
        reservation_ttl: float | timedelta = 300.0,
        op_ttl: float | timedelta = 120.0,
        socket_timeout: float = 2.0,
        retries: int = 2,
        allotment: int | str | None = None,
        allotment_poll: float = _allotment.DEFAULT_POLL,
        allotment_ttl: float = _allotment.DEFAULT_TTL,
    ) -> None:
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError:  # pragma: no cover - the extra is installed in the tests
            raise BudgetConfigError(
                "RedisLedger needs redis-py: install budgetkit's [redis] extra"
            ) from None
        if not isinstance(key_prefix, str):
            raise BudgetTypeError(f"key_prefix must be a str, got {key_prefix!r}")
        self.key_prefix = key_prefix
        self.ttl = _seconds(ttl, "ttl")
        self.reservation_ttl = _seconds(reservation_ttl, "reservation_ttl")
        self.op_ttl = _seconds(op_ttl, "op_ttl")
        self.ttl_ms = _ms(self.ttl)
        self.lease_ms = _ms(self.reservation_ttl)
        self.op_ttl_ms = min(_ms(self.op_ttl), self.ttl_ms)  # never outlive the session
        #: The keys' expiry is moved when the client's clock enters a new tick: the largest
        #: power of ten of ms within a tenth of the ttl.
        self.tick_ms = 10 ** max(len(str(max(self.ttl_ms // 10, 1))) - 1, 0)
        poll: object = allotment_poll
        lease_ttl: object = allotment_ttl
        if isinstance(url_or_client, str):
            url_or_client, options = _allotment.url_options(url_or_client)
            allotment = options.get("allotment", allotment)
            poll = options.get("allotment_poll", allotment_poll)
            lease_ttl = options.get("allotment_ttl", allotment_ttl)
            self.url = redact(url_or_client)
            socket_timeout = _seconds(socket_timeout, "socket_timeout")
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise BudgetConfigError(f"retries must be a non-negative int, got {retries!r}")
            url, cluster = _cluster_url(url_or_client)
            retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries)
            try:
                if cluster:
                    from redis.cluster import RedisCluster

                    self.client: Any = RedisCluster.from_url(
                        url,
                        socket_timeout=socket_timeout,
                        socket_connect_timeout=socket_timeout,
                        retry=retry,
                    )
                else:
                    self.client = redis.Redis.from_url(
                        url,
                        socket_timeout=socket_timeout,
                        socket_connect_timeout=socket_timeout,
                        retry=retry,
                        health_check_interval=30,
                    )
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
                raise LedgerUnavailableError(
                    f"budgetkit: the Redis cluster at {self.url} is unavailable "
                    f"({type(exc).__name__}: {exc})",
                    url=self.url,
                ) from exc
            except ValueError as exc:
                raise BudgetConfigError(f"not a Redis URL: {self.url!r} ({exc})") from None
        elif hasattr(url_or_client, "register_script"):
            self.client = url_or_client
            self.url = _client_url(url_or_client)
        else:
            raise BudgetTypeError(
                f"RedisLedger takes a Redis URL or a redis.Redis client, got {url_or_client!r}"
            )
        #: ``(lease size or None for "auto", poll, lease ttl)``, or ``None``: exact mode.
        self.allotment = _allotment.check_allotment(allotment, poll, lease_ttl)
        #: A refused admit waiting for a recall (``"R"``): seconds between asks, and how long
        #: to ask before a refusal is final (as a lease request waits).
        self.recall_timing = _allotment.recall_timing(self.allotment)
        self._scripts = {name: self.client.register_script(src) for name, src in _SCRIPTS.items()}
        #: Operations run as FCALL of the library until the server turns out to have no
        #: Functions (then as EVALSHA scripts).
        self.functions = True
        self._no_such_function: type[BaseException] = redis.exceptions.ResponseError
        self._no_permission: type[BaseException] = redis.exceptions.NoPermissionError
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.RedisClusterException,
            OSError,
        )
        self._response_error: type[BaseException] = redis.exceptions.RedisError

    def __repr__(self) -> str:
        return f"<RedisLedger {self.url} prefix={self.key_prefix!r}>"

    # ------------------------------------------------------------------ plumbing
    def keys(self, session_id: str) -> list[str]:
        """The session's hash and its sorted set of reservation leases (one hash tag)."""
        base = f"{self.key_prefix}{{{session_id}}}"
        return [base, f"{base}:lease"]

    def run(self, op: str, keys: list[str], args: list[Any]) -> Any:
        """One operation (an FCALL, or an EVALSHA on a server without Functions);
        connection trouble becomes ``LedgerUnavailableError``."""
        return self.command(lambda: self._call_operation(op, keys, args))

    def _call_operation(self, op: str, keys: list[str], args: list[Any]) -> Any:
        if self.functions:
            try:
                return self.client.fcall(FUNCTIONS[op], len(keys), *keys, *args)
            except self._no_such_function as exc:
                self._recover(exc)  # loads the library, or falls back, or raises
            if self.functions:
                return self.client.fcall(FUNCTIONS[op], len(keys), *keys, *args)
        return self._scripts[op](keys=keys, args=args, client=self.client)

    def command(self, call: Callable[[], Any]) -> Any:
        """One call to Redis (an operation or a plain command); connection trouble becomes
        ``LedgerUnavailableError``, any other Redis error ``LedgerError``."""
        try:
            return call()
        except self._errors as exc:
            raise LedgerUnavailableError(
                f"budgetkit: the Redis ledger at {self.url} is unavailable "
                f"({type(exc).__name__}: {exc})",
                url=self.url,
            ) from exc
        except self._response_error as exc:
            raise LedgerError(f"budgetkit: the Redis ledger at {self.url} failed: {exc}") from exc

    def tick(self) -> str:
        """The client's clock in ticks (``tick_ms``): when it changes, an operation moves
        the keys' expiry (so the server asks no TIME for it)."""
        return str(time.time_ns() // 1_000_000 // self.tick_ms)

    def header(self, holder: str, seq: int | str, low: int, abandoned: str) -> str:
        """ARGV[1] of every operation (split by the Lua prelude's ``setup``)."""
        return f"{holder}|{seq}|{low}|{abandoned}|{self.lease_ms}|{self.ttl_ms}|{self.tick()}"

    def _recover(self, exc: BaseException) -> None:
        """After a failed FCALL: load the library (a new server, a restart or FUNCTION
        FLUSH), or fall back to EVALSHA scripts (no Functions: Redis < 7.0, or FCALL or
        FUNCTION renamed away, or FCALL not permitted); anything else is raised."""
        said = str(exc).lower()
        if "unknown command" in said or (isinstance(exc, self._no_permission) and "fcall" in said):
            self.functions = False
            return
        if "function not found" not in said:
            raise exc
        try:
            self.client.function_load(_LIBRARY, replace=True)  # a cluster: every primary
        except self._no_permission as denied:
            raise LedgerError(
                f"budgetkit: the Redis user of the ledger at {self.url} may call FCALL but "
                "not load the budgetkit function library: grant it FUNCTION LOAD "
                f"(ACL: +function|load), or load library {LIBRARY_NAME} once as another user "
                f"({denied})"
            ) from denied
        except self._no_such_function as load_error:
            message = str(load_error).lower()
            if "unknown command" not in message and "unknown subcommand" not in message:
                raise
            self.functions = False

    def unknown(self, session_id: str) -> SessionNotFoundError:
        return SessionNotFoundError(
            f"session {session_id!r} is not in the Redis ledger at {self.url} "
            f"(key prefix {self.key_prefix!r}): it was never created there, or it expired "
            f"(ttl={self.ttl:g}s after its last operation)"
        )

    # ------------------------------------------------------------------ sessions
    def create(
        self,
        session_id: str,
        limits: Limits,
        *,
        name: str | None = None,
        reserve_for_wrapup: float | None = None,
        parent_session_id: str | None = None,
        step_room: int | None = None,
        usd_room: Decimal | None = None,
        extra: Mapping[str, Any] | None = None,
        account: AccountTerms | None = None,
    ) -> RedisLedgerSession:
        """Store a new session with its limits and return a handle on it.

        ``step_room`` and ``usd_room`` are what a chain's caps (``max_total_steps``,
        ``max_total_usd``) leave for this session; ``extra`` is JSON kept for joiners.
        ``account``: every operation also checks and charges that account's window; the
        session's keys live in the account's slot (found by :meth:`join` through a pointer
        key).

        Raises:
            BudgetConfigError: a session with this id is already in the ledger.
            LedgerUnavailableError: the server is unreachable or timed out.
        """
        check_session_id(session_id)
        if not isinstance(limits, Limits):
            raise BudgetTypeError(f"limits must be a budgetkit Limits, got {limits!r}")
        config = {
            "limits": limits.as_dict(),
            "name": name,
            "reserve_for_wrapup": reserve_for_wrapup,
            "parent_session_id": parent_session_id,
            "extra": dict(extra or {}),
            # Joiners prove they were told the session (a token made from it), not that
            # they guessed its id; it never leaves the ledger and its handles.
            "join_secret": os.urandom(32).hex(),
        }
        fields: list[Any] = ["cfg", json.dumps(config)]
        if step_room is not None:
            fields += ["cs", str(max(step_room, 0))]
        if usd_room is not None:
            fields += ["cu", to_units(max(usd_room, Decimal(0)), limit=True)]
        for limit in LIMIT_NAMES:
            field, value = LIMIT_FIELDS[limit], getattr(limits, limit)
            if value is None:
                continue
            fields += [field, to_units(value, limit=True) if limit == "max_usd" else repr(value)]
        if reserve_for_wrapup is not None:
            fields += ["keep", repr(1 - reserve_for_wrapup)]
        acct = None if account is None else RedisAccount(self.key_prefix, account)
        keys = self.keys(session_id) if acct is None else acct.session_keys(session_id)
        header = f"||0|||{self.ttl_ms}|{self.tick()}"
        answer = text(self.run("create", keys, [header, *fields]))
        if answer == "E":
            raise BudgetConfigError(
                f"session {session_id!r} already exists in the Redis ledger at {self.url}; "
                "enter it with SessionBudget.join()"
            )
        if acct is not None:
            found = acct

            def remember() -> None:  # where joiners find the session; what CLIs list
                self.client.set(
                    pointer_key(self.key_prefix, session_id),
                    json.dumps(found.terms.spec()),
                    px=self.ttl_ms,
                )
                found.register(self.client, found.terms.buckets())

            self.command(remember)
        return RedisLedgerSession(self, session_id, config, acct)

    def join(self, session_id: str) -> RedisLedgerSession:
        """A handle on a session another process created.

        Raises:
            SessionNotFoundError: the session is unknown or expired.
            LedgerUnavailableError: the server is unreachable or timed out.
        """
        check_session_id(session_id)
        header = self.header("", "", 0, "")
        answer = text(self.run("join", self.keys(session_id), [header]))
        acct = None
        if answer == "U":  # a session of an account lives in the account's slot
            spec = self.command(lambda: self.client.get(pointer_key(self.key_prefix, session_id)))
            if spec is None:
                raise self.unknown(session_id)
            acct = RedisAccount(self.key_prefix, AccountTerms.from_spec(json.loads(spec)))
            buckets = acct.terms.buckets()
            keys = [*acct.session_keys(session_id), *acct.keys(buckets)]
            answer = text(self.run("join", keys, [f"{header}#{acct.arg(buckets)}"]))
            if answer == "U":
                raise self.unknown(session_id)
        return RedisLedgerSession(self, session_id, json.loads(answer), acct)

    # ------------------------------------------------------------------ accounts
    def account_usage(self, account: AccountTerms, buckets: Buckets) -> tuple[Tally, int]:
        """The usage of ``account`` in the window ``buckets`` and its open reservations."""
        acct = RedisAccount(self.key_prefix, account)
        result: tuple[Tally, int] = self.command(lambda: acct.read(self.client, buckets))
        return result

    def account_usages(self) -> list[AccountUsage]:
        """Every account with a session created under this key prefix, in its current
        window (while its window's counters live)."""
        result: list[AccountUsage] = self.command(
            lambda: account_usages(self.client, self.key_prefix)
        )
        return result


class RedisLedgerSession:
    """One process's handle on a session in a :class:`RedisLedger`.

    Each handle is a *holder*: its reservations are its own, and they are released when it
    stops operating for ``reservation_ttl`` seconds. Thread-safe (redis-py pools connections).
    """

    def __init__(
        self,
        ledger: RedisLedger,
        session_id: str,
        config: dict[str, Any],
        account: RedisAccount | None = None,
    ) -> None:
        self.ledger = ledger
        self.session_id = session_id
        self.url = ledger.url
        raw = config.get("limits") or {}
        values = {key: raw.get(key) for key in LIMIT_NAMES}
        if isinstance(values["max_usd"], str):
            values["max_usd"] = Decimal(values["max_usd"])
        self.limits = Limits.build(**values)
        self.name: str | None = config.get("name")
        self.reserve_for_wrapup: float | None = config.get("reserve_for_wrapup")
        self.parent_session_id: str | None = config.get("parent_session_id")
        #: What the creator stored for joiners (``create(extra=...)``).
        self.extra: dict[str, Any] = dict(config.get("extra") or {})
        #: The session's join secret (``None``: created before join tokens); joiners show a
        #: token made from it (``SessionBudget.join``).
        self.join_secret: bytes | None = _secret(config.get("join_secret"))
        self.config = dict(config)
        #: This handle's id as a reservation holder and handoff claimant.
        self.holder = f"{os.getpid()}-{os.urandom(8).hex()}"
        #: The session's account (its keys and limits are sent with every operation).
        self.account = account
        self.account_terms = None if account is None else account.terms
        self._keys = (
            ledger.keys(session_id) if account is None else account.session_keys(session_id)
        )
        #: When the account pointer's expiry is moved next (monotonic seconds).
        self._renew_at = 0.0
        self._lock = threading.Lock()
        self._seq = 0
        #: Operations sent or to be sent whose answer has not arrived (their ids).
        self._pending: set[int] = set()
        #: Admits given up on (the server may have applied them): undone at the next call.
        self._abandoned: set[int] = set()
        #: The last admission saw a run of consecutive errors (a success should reset it).
        self.errors_seen = False
        self._last = Counters()
        #: The local lease (``RedisLedger(allotment=...)``); none with a wrap-up reserve, nor
        #: for a session of an account (every admit must see the account's window).
        self.allot: _allotment.Allotment | None = None
        if ledger.allotment is not None and self.reserve_for_wrapup is None and account is None:
            self.allot = _allotment.Allotment(self, *ledger.allotment)
        _HANDLES.add(self)

    def __repr__(self) -> str:
        return f"<RedisLedgerSession {self.session_id} at {self.url}>"

    def after_fork_in_child(self) -> None:
        """In a forked child: a holder of its own, so its operation ids (and reservations)
        are never taken for the parent's (a repeated id is answered, not applied)."""
        self.holder = f"{os.getpid()}-{os.urandom(8).hex()}"
        self._lock = threading.Lock()
        self._pending = set()  # the parent's operations are the parent's to answer
        self._abandoned = set()
        if self.allot is not None:
            self.allot.after_fork()

    def new_op_id(self) -> str:
        """A fresh operation id. Pass it again to retry an operation without applying it
        twice: the server remembers its answer until this handle has its reply, however
        long that takes (there is no window)."""
        with self._lock:
            self._seq += 1
            self._pending.add(self._seq)
            return str(self._seq)

    def _call(
        self, script: str, args: list[Any], op_id: str | None = None, *, fresh: bool = False
    ) -> Any:
        """One script call with the holder's sequencing arguments (``fresh``: a new op id
        when none is given); an admit that fails on the way is *abandoned* (the server undoes
        or voids it at the next call)."""
        seq: int | None = None
        if op_id is not None:
            try:
                seq = int(op_id)
            except ValueError:
                raise BudgetTypeError(
                    f"op_id must come from new_op_id() of this handle, got {op_id!r}"
                ) from None
        with self._lock:
            if seq is None and fresh:
                self._seq = seq = self._seq + 1
                self._pending.add(seq)
            low = min(self._pending) if self._pending else self._seq + 1
            abandoned = sorted(self._abandoned) if self._abandoned else []
        led = self.ledger
        header = led.header(
            self.holder, "" if seq is None else seq, low, ",".join(map(str, abandoned))
        )
        while args and args[-1] == "":  # the scripts read a missing argument as ''
            args = args[:-1]
        keys = self._keys
        account = self.account
        if account is not None:
            buckets = account.terms.buckets()
            keys = [*keys, *account.keys(buckets)]
            header = f"{header}#{account.arg(buckets)}"
            self._renew(account)
        try:
            raw = led.run(script, keys, [header, *args])
        except LedgerUnavailableError:
            if script == "admit" and seq is not None:
                with self._lock:
                    self._abandoned.add(seq)
            raise
        answer = raw if isinstance(raw, list) else text(raw)
        if answer == "U":
            raise self.ledger.unknown(self.session_id)
        with self._lock:
            if seq is not None:
                self._pending.discard(seq)
            for done in abandoned:
                self._abandoned.discard(done)
                self._pending.discard(done)
        if answer in ("D", "V"):
            raise LedgerError(
                f"budgetkit: operation {seq} of session {self.session_id!r} at {self.url} "
                "is stale (this handle gave it up)"
            )
        return answer

    def _renew(self, account: RedisAccount) -> None:
        """Keep the pointer joiners find the session by alive as long as the session (moved
        at most once per tenth of the ledger's ttl; a failure here is left to the op)."""
        now = time.monotonic()
        if now < self._renew_at:
            return
        led = self.ledger
        self._renew_at = now + led.ttl / 10
        with contextlib.suppress(LedgerError):
            led.command(lambda: led.client.pexpire(account.pointer(self.session_id), led.ttl_ms))

    def _run(
        self, script: str, args: list[Any], *, op_id: str | None = None, fresh: bool = False
    ) -> str:
        return str(self._call(script, args, op_id, fresh=fresh))

    def admit(
        self,
        kind: str | None,
        reserve: int | None = None,
        *,
        name: str = "",
        wrapup: bool = False,
        op_id: str | None = None,
        tool_cap: int | None = None,
        digest: str | None = None,
    ) -> str | None:
        """Check every limit and count the call (``"step"``, ``"llm"``, or ``None`` for a
        reservation alone), holding ``reserve`` units of USD for it — one atomic operation.
        ``tool_cap``: a step of tool ``name`` may run that many times (``max_tool_calls``);
        ``digest``: the step's call digest, for ``max_repeats`` (``loop_detected``).

        Returns ``None`` when admitted, else the reason: a limit's name (the session is now
        latched as exhausted), or ``"wrapup_reserve"`` (refused, not latched). Every mutating
        operation takes an ``op_id`` (default: a fresh one): the same id is applied once.
        An admit that raises ``LedgerUnavailableError`` is given up: if the server applied
        it anyway (a paused server), the next operation of this handle undoes it.
        """
        allot = self.allot
        if (
            allot is not None
            and kind
            and reserve is None
            and tool_cap is None
            and digest is None
            and allot.admit(kind)
        ):
            self.errors_seen = allot.errors
            return None
        if allot is not None and kind:
            allot.give_back(kind)
        args = [
            kind or "",
            "" if reserve is None else str(_check_units(reserve)),
            name,
            "1" if wrapup else "",
            "" if tool_cap is None else str(int(tool_cap)),
            digest or "",
        ]
        answer = self._run("admit", args, op_id=op_id, fresh=True)
        if answer == "R":
            answer = self._await_recall(args)
        if answer[0] == "A":
            self.errors_seen = answer == "AE"
            return None
        if answer == "W":
            return "wrapup_reserve"
        if allot is not None:
            allot.stop()
        return answer[1:]

    def _await_recall(self, args: list[str]) -> str:
        """The admit was refused only because other workers hold leased units they have not
        used: the server recalled them. Ask again (each ask a new operation, renewing the
        recall) until admitted or refused for good; past the wait of a lease request the
        next refusal is final (latched), units still out or not."""
        poll, wait = self.ledger.recall_timing
        give_up = time.monotonic() + wait
        while True:
            time.sleep(poll)
            final = time.monotonic() > give_up
            answer = self._run("admit", [*args, "1" if final else ""], fresh=True)
            if answer != "R":
                return answer

    def record(
        self,
        counts: Counts | None,
        cost: int | None,
        *,
        release: int = 0,
        op_id: str | None = None,
    ) -> str | None:
        """Add one call's token counts (``None``: unmeasured) and cost in units (``None``:
        unpriced), give back ``release`` units of this holder's reservation, and trip a
        measured limit it crosses — atomically. Counts of any size are added exactly.

        Returns the tripped reason (set by this or an earlier charge), or ``None``.
        """
        measured = ["0"] * 5 if counts is None else [str(_check_count(n)) for n in counts]
        answer = self._run(
            "record",
            [
                "0" if counts is None else "1",
                *measured,
                "0" if cost is None else "1",
                "" if cost is None else str(_check_units(cost)),
                "" if not release else str(_check_units(release)),
            ],
            op_id=op_id,
            fresh=True,
        )
        return self._tripped(answer[1:] or None)

    def _tripped(self, reason: str | None) -> str | None:
        """A round trip saw the session tripped: local admits stop at once."""
        if reason is not None and self.allot is not None:
            self.allot.stop()
        return reason

    def release(self, amount: int, *, op_id: str | None = None) -> None:
        """Give back ``amount`` units of this holder's reservations (never more than it holds)."""
        if not amount:
            return
        self._run("release", [str(_check_units(amount))], op_id=op_id, fresh=True)

    def fail(self, *, op_id: str | None = None) -> str | None:
        """Count a failed call in the run of consecutive errors; return the tripped reason."""
        answer = self._run("fail", [], op_id=op_id, fresh=True)
        return self._tripped(answer[1:] or None)

    def succeed(self) -> None:
        """A call succeeded: the run of consecutive errors starts again at zero."""
        self._run("succeed", [])

    def trip(self, reason: str) -> None:
        """Mark ``reason`` as crossed unless a limit already is; the next boundary latches."""
        self._run("trip", [reason])
        self._tripped(reason)

    def latch(self, reason: str, name: str = "") -> str:
        """Latch the session as exhausted for ``reason`` unless it already is; return the
        reason it is latched for (the first one wins)."""
        return str(self._tripped(self._run("latch", [reason, name])[1:]))

    def extend(
        self, limits: Limits, *, step_room: int | None = None, usd_room: Decimal | None = None
    ) -> str | None:
        """Replace the session's limits by ``limits`` (a grant) and lift the latch, in one
        operation; a measured limit still crossed trips again (returned)."""
        config = {**self.config, "limits": limits.as_dict()}
        fields: list[Any] = []
        if step_room is not None:
            fields += ["cs", str(max(step_room, 0))]
        if usd_room is not None:
            fields += ["cu", to_units(max(usd_room, Decimal(0)), limit=True)]
        for limit in LIMIT_NAMES:
            field, value = LIMIT_FIELDS[limit], getattr(limits, limit)
            if value is not None:
                fields += [
                    field,
                    to_units(value, limit=True) if limit == "max_usd" else repr(value),
                ]
        answer = self._run("extend", [json.dumps(config), *fields])
        self.config, self.limits = config, limits
        if self.allot is not None:
            self.allot.resume()
        return self._tripped(answer[1:] or None)

    def claim_handoff_writer(self) -> bool:
        """Whether this handle writes the handoff: exactly one handle of the session wins."""
        return self._run("claim", []) == "1"

    def snapshot(self) -> LedgerSnapshot:
        """The session's counters and state, read in one operation (expired leases swept)."""
        raw = self._call("snapshot", [])
        if not isinstance(raw, list):
            raise self.ledger.unknown(self.session_id)
        it = iter(text(item) for item in raw)
        f = dict(zip(it, it, strict=True))
        if self.allot is not None:  # this holder's unused lease is not admitted
            for key, unused in zip(("steps", "llm"), self.allot.unused(), strict=True):
                f[key] = str(max(int(f.get(key, 0)) - unused, 0))

        def count(key: str) -> int:
            return int(f.get(key, 0))

        snap = LedgerSnapshot(
            steps=count("steps"),
            llm_calls=count("llm"),
            input_tokens=count("in"),
            output_tokens=count("out"),
            cache_read_tokens=count("cr"),
            cache_write_tokens=count("cw"),
            reasoning_tokens=count("rs"),
            cost_usd=from_units(f.get("cost")),
            reserved_usd=from_units(f.get("resv")),
            unpriced_calls=count("unpriced"),
            unmeasured_calls=count("unmeasured"),
            errors_in_a_row=count("errors"),
            reason=f.get("reason"),
            tripped=f.get("tripped"),
            refused=f.get("refused"),
            elapsed_seconds=max(int(f["now"]) - int(f["start"]), 0) / 1000,
            handoff_writer=f.get("writer"),
            repeats=count("rep"),
            last_step=f.get("lastn"),
            tool_calls=tuple(
                sorted(
                    (k[len(TOOL_FIELD_PREFIX) :], int(v))
                    for k, v in f.items()
                    if k.startswith(TOOL_FIELD_PREFIX)
                )
            ),
        )
        self._last = Counters(
            **{name: int(f.get(field, 0)) for name, field in COUNTER_FIELDS.items()},
            tripped=snap.tripped,
            reason=snap.reason,
            refused=snap.refused,
            tool_calls=dict(snap.tool_calls),
            last_call=f.get("lastc"),
            last_step=snap.last_step,
        )
        return snap

    def counters(self) -> Counters:
        """The counters of the last snapshot this handle read (no round trip)."""
        return self._last

    def close(self) -> None:
        """This handle is done: the server forgets its operations (one arriving late is
        stale) and undoes the admits it gave up on. Reservations are given back as calls
        settle; one still held expires as spend after ``reservation_ttl``."""
        if self.allot is not None:
            self.allot.close()
        with self._lock:
            last = self._seq
        with contextlib.suppress(LedgerError):
            self._run("bye", [last])


_HANDLES: weakref.WeakSet[RedisLedgerSession] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handle in list(_HANDLES):
        handle.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
