"""A shared ledger on Redis (or Valkey): one session budget for many processes and machines.

Every operation is **one Lua script call**, so it is atomic on the server: a step is counted
only if it fits, N processes racing on ``max_steps=K`` admit exactly K, and a reservation is
admitted against ``spent + reserved + estimate <= max_usd`` in the same step.

Keys (all with the hash tag ``{session_id}``, so a cluster keeps one session on one slot):

- ``<prefix>{<id>}``: a hash with the limits, the counters, and the latched state
  (``reason``, ``tripped``, ``refused``, ``writer``);
- ``<prefix>{<id>}:res``: a hash, holder -> USD that holder has reserved;
- ``<prefix>{<id>}:lease``: a sorted set, holder -> deadline (server clock, ms), for holders
  that hold a reservation. When a deadline passes (a worker died mid-call), that holder's
  reservation is converted to spend at its estimate, never released (fail closed);
- ``<prefix>{<id>}:ops``: a hash of each holder's unacknowledged operations. A holder numbers
  its operations; each carries its number and the lowest number the holder still waits for
  (its low-water mark). A retried operation gets its stored answer back instead of being
  applied twice, for as long as the client retries; answers below the mark are deleted, and
  an operation older than the mark is stale and ignored. So memory is O(live workers + their
  operations in flight), never O(steps). An admit the client gave up on (a timeout) is undone
  by its next operation, or voided if it has not arrived yet.

Every script moves the session's keys' expiry to ``ttl`` from now (at most once per tenth of
``ttl``), so an abandoned session disappears between 0.9 and 1 ``ttl`` after its last operation.

USD is exact: amounts travel and are stored as decimal integer strings of 10^-18 USD
("atto-dollars"), added and compared in Lua with arbitrary-precision digit arithmetic (never a
float). An amount with more than 18 decimal places is rounded up (a charge is never lowered).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
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
    REPEATS,
    TIME,
    TOOL_CHECK,
    USD_CHECKS,
    Check,
    Counters,
)
from .._values import LLM, STEP
from ..exceptions import (
    BudgetConfigError,
    BudgetTypeError,
    LedgerError,
    LedgerUnavailableError,
    SessionNotFoundError,
)
from . import _allotment
from ._snapshot import LedgerSnapshot

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._usage import Counts

__all__ = ["RedisLedger", "RedisLedgerSession"]

# ---------------------------------------------------------------------------------- Lua
#: Exact arithmetic on non-negative decimal integer strings, in chunks of 14 digits (every
#: chunk sum stays far below 2^53, where Lua's doubles are exact).
LUA_BIGNUM = """
local CH, BASE = 14, 100000000000000
local function pad(a, n) return string.rep('0', n - #a) .. a end
local function width(a, b)
  local n = math.max(#a, #b)
  return n + (CH - n % CH) % CH
end
local function cmp(a, b)
  if #a < 16 and #b < 16 then  -- below 10^15 < 2^53 a double is exact
    local x, y = tonumber(a), tonumber(b)
    if x < y then return -1 elseif x > y then return 1 end
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

_LUA_COMMON_TEMPLATE = (
    LUA_BIGNUM
    + """
local S, R, L, O = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- Every script but create's takes the same six first arguments.
local H, SEQ, LW, AB, LEASE, TTL = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(v)
  if v then return tonumber(v) end
  return 0
end
%(RULES)s
local v, now, prior_lw = nil, 0, nil
-- Give back up to `amount` of what `holder` has reserved (never more than it holds).
local function give_back(holder, amount)
  local mine = redis.call('HGET', R, holder)
  if not mine then return end
  local take = min(mine, amount)
  local left = sub0(mine, take)
  if left == '0' then
    redis.call('HDEL', R, holder)
    redis.call('ZREM', L, holder)
  else
    redis.call('HSET', R, holder, left)
  end
  v['resv'] = sub0(v['resv'] or '0', take)
  redis.call('HSET', S, 'resv', v['resv'])
end
-- The reservations of holders whose lease ran out (a worker died mid-call) become spend
-- at their estimate: money may have been spent under them, so they are never released.
local function sweep()
  local dead = redis.call('ZRANGEBYSCORE', L, '-inf', now)
  if #dead == 0 then return end
  local resv, cost = v['resv'] or '0', v['cost'] or '0'
  for _, h in ipairs(dead) do
    local mine = redis.call('HGET', R, h)
    if mine then
      resv = sub0(resv, mine)
      cost = add(cost, mine)
    end
    redis.call('HDEL', R, h)
  end
  redis.call('ZREMRANGEBYSCORE', L, '-inf', now)
  v['resv'], v['cost'] = resv, cost
  redis.call('HSET', S, 'resv', resv, 'cost', cost)
  if not v['tripped'] then
    local reason = measured_refusal(v)
    if reason then
      v['tripped'] = reason
      redis.call('HSET', S, 'tripped', reason)
    end
  end
end
-- Admits the client gave up on (it raised, so the call never ran): one applied is undone,
-- one not yet applied is voided, so it is never applied when it arrives late.
local function cancel()
  for s in string.gmatch(AB, '[^,]+') do
    local field = H .. ':' .. s
    local done = redis.call('HGET', O, field)
    if done and string.sub(done, 1, 1) == 'A' then
      local _, kind, reserve = string.match(done, '^([^|]*)|([^|]*)|(.*)$')
      if kind == 'step' then
        v['steps'] = tostring(redis.call('HINCRBY', S, 'steps', -1))
      elseif kind == 'llm' then
        v['llm'] = tostring(redis.call('HINCRBY', S, 'llm', -1))
      end
      if reserve and reserve ~= '' and reserve ~= '0' then give_back(H, reserve) end
    end
    redis.call('HSET', O, field, 'V')
  end
end
-- An operation already applied answers as it did ('V': voided; 'D': older than what the
-- client still waits for, a stale duplicate); an unknown or expired session is 'U'.
local function begin()
  if SEQ ~= '' then
    local got = redis.call('HMGET', O, H .. ':' .. SEQ, H)
    if got[1] then return (string.match(got[1], '^[^|]*')) end
    prior_lw = tonumber(got[2] or '0')
    if tonumber(SEQ) < prior_lw then return 'D' end
  end
  v = state()
  if not v['start'] then return 'U' end
  now = now_ms()
  if AB ~= '' then cancel() end
  if (v['resv'] or '0') ~= '0' then sweep() end
  return nil
end
-- Keep this holder's reservations alive (only when it holds any); slide the keys' expiry
-- (amortised: at most once per tenth of the ttl); remember a sequenced operation's answer
-- until the client acknowledges it (its low-water mark passes it).
local function finish(result, detail)
  if (v['resv'] or '0') ~= '0' then redis.call('ZADD', L, 'XX', now + tonumber(LEASE), H) end
  local ttl = tonumber(TTL)
  if not v['exp'] or now + ttl - tonumber(v['exp']) > ttl / 10 then
    redis.call('HSET', S, 'exp', string.format('%.0f', now + ttl))
    for _, k in ipairs({S, R, L, O}) do redis.call('PEXPIRE', k, ttl) end
  end
  if SEQ ~= '' then
    local lw = tonumber(LW)
    if lw > prior_lw then
      local stale = {}
      for s = prior_lw, math.min(lw - 1, prior_lw + 999) do
        table.insert(stale, H .. ':' .. s)
      end
      redis.call('HDEL', O, unpack(stale))
    else
      lw = prior_lw
    end
    local added = redis.call('HSET', O, H .. ':' .. SEQ, result .. (detail or ''), H, lw)
    if added == 2 then redis.call('PEXPIRE', O, ttl) end
  end
  return result
end
"""
)

#: Where each counter of ``budgetkit._policy.Counters`` lives in the session's hash.
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


def lua_rules() -> str:
    """The policy's rules as Lua, generated from ``budgetkit._policy.CHECKS`` (the one
    order of reasons), so the server applies exactly what the in-process ledger does.

    Each function reads ``v``, the session's hash (:func:`state` in Lua), and returns the
    refusing reason or ``false``: ``time_refusal``, ``count_refusal`` (by call kind),
    ``reserve_refusal`` (spent + reserved + estimate), ``measured_refusal`` (after a
    charge), ``errors_refusal``; ``in_wrapup_reserve`` answers true or false.
    """
    fields = sorted({*COUNTER_FIELDS.values(), *LIMIT_FIELDS.values()})
    fields += ["reason", "tripped", "start", "keep", "exp", "lastc"]
    names = ", ".join(f"'{f}'" for f in fields)
    lines = [
        "local STATE_FIELDS = {" + names + "}",
        "local function state()",
        "  local got = redis.call('HMGET', S, unpack(STATE_FIELDS))",
        "  local v = {}",
        "  for i, name in ipairs(STATE_FIELDS) do v[name] = got[i] or nil end",
        "  return v",
        "end",
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

    time = [c for c in CHECKS if c.rule == TIME]
    function(
        "time_refusal",
        "v, now",
        [
            f"  if v['{LIMIT_FIELDS[c.reason]}'] and now - tonumber(v['start']) > "
            f"tonumber(v['{LIMIT_FIELDS[c.reason]}']) * 1000 then return '{c.reason}' end"
            for c in time
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
                f"  if v['{field}'] and now - tonumber(v['start']) > "
                f"tonumber(v['{field}']) * keep * 1000 then return true end"
            )
    function("in_wrapup_reserve", "kind, v, now", wrapup)
    return "\n".join(lines)


_LUA_COMMON = _LUA_COMMON_TEMPLATE.replace("%(RULES)s", lua_rules())

#: ARGV: ttl, then field/value pairs. 'E' when the id exists, else 'OK'.
_CREATE = (
    _LUA_COMMON
    + """
if redis.call('EXISTS', S) == 1 then return 'E' end
local t = now_ms()
redis.call('HSET', S, 'start', string.format('%.0f', t),
  'exp', string.format('%.0f', t + tonumber(ARGV[1])), unpack(ARGV, 2))
redis.call('PEXPIRE', S, ARGV[1])
return 'OK'
"""
)

#: The session's configuration (JSON), or 'U'.
_JOIN = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
return finish(redis.call('HGET', S, 'cfg'))
"""
)

#: ARGV 7..: kind ('step', 'llm' or ''), reserve ('' or units), name, wrapup ('1'/'0'),
#: tool cap ('' or calls), call digest ('' or the digest of a step, for max_repeats).
#: 'A' admitted ('AE' while a run of errors is counted), 'W' refused by the wrap-up reserve
#: (not latched), 'X<reason>' refused and latched, 'U' unknown.
_ADMIT = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
local kind, reserve, name = ARGV[7], ARGV[8], ARGV[9]
local result = 'A'
if v['reason'] then
  result = 'X' .. v['reason']
else
  local reason = v['tripped']
  if not reason then reason = time_refusal(v, now) end
  if not reason then reason = count_refusal(kind, v) end
  if not reason then reason = tool_refusal(kind, name, ARGV[11] or '') end
  if not reason and reserve ~= '' then
    reason = reserve_refusal(add(add(v['cost'] or '0', v['resv'] or '0'), reserve), v)
  end
  if reason then
    redis.call('HSET', S, 'reason', reason, 'refused', name)
    result = 'X' .. reason
  elseif v['keep'] and ARGV[10] ~= '1' and in_wrapup_reserve(kind, v, now) then
    result = 'W'
  else
    if kind == 'step' then
      redis.call('HINCRBY', S, 'steps', 1)
      if (ARGV[11] or '') ~= '' then redis.call('HINCRBY', S, 't:' .. name, 1) end
      local digest = ARGV[12] or ''
      if digest == '' then
        if v['lastc'] then
          redis.call('HSET', S, 'rep', 0)
          redis.call('HDEL', S, 'lastc', 'lastn')
        end
      else
        local rep = 1
        if v['lastc'] == digest then
          rep = num(v['rep']) + 1
          redis.call('HSET', S, 'rep', rep)
        else
          redis.call('HSET', S, 'rep', rep, 'lastc', digest, 'lastn', name)
        end
        local looping = repeats_refusal(rep, v)
        if looping and not v['tripped'] then redis.call('HSET', S, 'tripped', looping) end
      end
    elseif kind == 'llm' then
      redis.call('HINCRBY', S, 'llm', 1)
    end
    if reserve ~= '' and reserve ~= '0' then
      v['resv'] = add(v['resv'] or '0', reserve)
      redis.call('HSET', S, 'resv', v['resv'])
      redis.call('HSET', R, H, add(redis.call('HGET', R, H) or '0', reserve))
      redis.call('ZADD', L, now + tonumber(LEASE), H)
      redis.call('PEXPIRE', R, TTL)
      redis.call('PEXPIRE', L, TTL)
    end
    if num(v['errors']) > 0 then result = 'AE' end
  end
end
return finish(result, '|' .. kind .. '|' .. reserve)
"""
)

#: ARGV 7..: measured ('1'/'0'), input, output, cache read, cache write, reasoning,
#: priced ('1'/'0'), cost ('' or units), release ('' or units).
#: 'T<tripped reason or empty>', or 'U'. Token counts are added exactly (decimal strings),
#: so no count overflows: a huge one trips its limit.
_RECORD = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
local sets = {}
if ARGV[7] == '1' then
  local names = {'in', 'out', 'cr', 'cw', 'rs'}
  for i = 1, 5 do
    local n = ARGV[i + 7]
    if n ~= '0' then
      v[names[i]] = add(v[names[i]] or '0', n)
      table.insert(sets, names[i])
      table.insert(sets, v[names[i]])
    end
  end
  if ARGV[13] ~= '1' then redis.call('HINCRBY', S, 'unpriced', 1) end
else
  redis.call('HINCRBY', S, 'unmeasured', 1)
end
if ARGV[14] ~= '' then
  v['cost'] = add(v['cost'] or '0', ARGV[14])
  table.insert(sets, 'cost')
  table.insert(sets, v['cost'])
end
local tripped = v['tripped']
if not tripped then
  tripped = measured_refusal(v)
  if tripped then
    table.insert(sets, 'tripped')
    table.insert(sets, tripped)
  end
end
if #sets > 0 then redis.call('HSET', S, unpack(sets)) end
if ARGV[15] ~= '' then give_back(H, ARGV[15]) end
return finish('T' .. (tripped or ''))
"""
)

#: ARGV 7: units. 'OK' or 'U'.
_RELEASE = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
give_back(H, ARGV[7])
return finish('OK')
"""
)

#: Counts a failed call: 'T<tripped reason or empty>', or 'U'.
_FAIL = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
v['errors'] = tostring(redis.call('HINCRBY', S, 'errors', 1))
local tripped = v['tripped']
if not tripped then
  tripped = errors_refusal(v)
  if tripped then redis.call('HSET', S, 'tripped', tripped) end
end
return finish('T' .. (tripped or ''))
"""
)

#: Resets the run of errors (idempotent). 'OK' or 'U'.
_SUCCEED = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
redis.call('HSET', S, 'errors', 0)
return finish('OK')
"""
)

#: ARGV 7: reason. Marks a crossed limit, first wins (idempotent). 'OK' or 'U'.
_TRIP = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
redis.call('HSETNX', S, 'tripped', ARGV[7])
return finish('OK')
"""
)

#: ARGV 7, 8: reason, name. Latches, first wins (idempotent). 'X<latched reason>' or 'U'.
_LATCH = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
if redis.call('HSETNX', S, 'reason', ARGV[7]) == 1 then
  redis.call('HSET', S, 'refused', ARGV[8])
end
return finish('X' .. redis.call('HGET', S, 'reason'))
"""
)

#: ARGV 7..: configuration (JSON), then limit field/value pairs. The latch is lifted and a
#: measured limit still crossed trips again: 'T<tripped reason or empty>', or 'U'.
_EXTEND = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
redis.call('HSET', S, 'cfg', unpack(ARGV, 7))
redis.call('HDEL', S, 'reason', 'tripped', 'refused')
local tripped = measured_refusal(state())
if tripped then redis.call('HSET', S, 'tripped', tripped) end
return finish('T' .. (tripped or ''))
"""
)

#: '1' when this holder is (or already was) the handoff writer.
_CLAIM = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
redis.call('HSETNX', S, 'writer', H)
local won = '0'
if redis.call('HGET', S, 'writer') == H then won = '1' end
return finish(won)
"""
)

#: This holder is done: forget its operations (older ones arriving late are stale).
_BYE = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
local last = tonumber(ARGV[7])
local lw = tonumber(redis.call('HGET', O, H) or '0')
local stale = {}
for s = lw, math.min(last, lw + 999) do table.insert(stale, H .. ':' .. s) end
redis.call('HDEL', O, unpack(stale))
redis.call('HSET', O, H, last + 1)
return finish('OK')
"""
)

#: The state hash as a flat field/value list plus 'now', or 'U'.
_SNAPSHOT = (
    _LUA_COMMON
    + """
local early = begin()
if early then return early end
finish('')
local all = redis.call('HGETALL', S)
table.insert(all, 'now')
table.insert(all, string.format('%.0f', now))
return all
"""
)

_SCRIPTS = {
    "create": _CREATE,
    "join": _JOIN,
    "admit": _ADMIT,
    "record": _RECORD,
    "release": _RELEASE,
    "fail": _FAIL,
    "succeed": _SUCCEED,
    "trip": _TRIP,
    "latch": _LATCH,
    "extend": _EXTEND,
    "claim": _CLAIM,
    "bye": _BYE,
    "snapshot": _SNAPSHOT,
    **_allotment.lua_scripts(_LUA_COMMON, COUNTER_FIELDS, LIMIT_FIELDS),
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
    .. versionchanged:: 0.2.0
       ``allotment``, ``allotment_poll`` and ``allotment_ttl``.
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
        allotment_poll: float = 0.05,
        allotment_ttl: float = 2.0,
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
        self._scripts = {name: self.client.register_script(src) for name, src in _SCRIPTS.items()}
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
        base = f"{self.key_prefix}{{{session_id}}}"
        return [base, f"{base}:res", f"{base}:lease", f"{base}:ops"]

    def allot_keys(self, session_id: str) -> list[str]:
        """The allotments' keys: holder -> lease state, and holder -> deadline."""
        base = f"{self.key_prefix}{{{session_id}}}"
        return [f"{base}:al", f"{base}:ald"]

    def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One script call; connection trouble becomes ``LedgerUnavailableError``."""
        try:
            return self._scripts[script](keys=keys, args=args, client=self.client)
        except self._errors as exc:
            raise LedgerUnavailableError(
                f"budgetkit: the Redis ledger at {self.url} is unavailable "
                f"({type(exc).__name__}: {exc})",
                url=self.url,
            ) from exc
        except self._response_error as exc:
            raise LedgerError(f"budgetkit: the Redis ledger at {self.url} failed: {exc}") from exc

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
    ) -> RedisLedgerSession:
        """Store a new session with its limits and return a handle on it.

        ``step_room`` and ``usd_room`` are what a chain's caps (``max_total_steps``,
        ``max_total_usd``) leave for this session; ``extra`` is JSON kept for joiners.

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
        answer = _text(self.run("create", self.keys(session_id), [self.ttl_ms, *fields]))
        if answer == "E":
            raise BudgetConfigError(
                f"session {session_id!r} already exists in the Redis ledger at {self.url}; "
                "enter it with SessionBudget.join()"
            )
        return RedisLedgerSession(self, session_id, config)

    def join(self, session_id: str) -> RedisLedgerSession:
        """A handle on a session another process created.

        Raises:
            SessionNotFoundError: the session is unknown or expired.
            LedgerUnavailableError: the server is unreachable or timed out.
        """
        check_session_id(session_id)
        answer = _text(
            self.run("join", self.keys(session_id), ["", "", 0, "", self.lease_ms, self.ttl_ms])
        )
        if answer == "U":
            raise self.unknown(session_id)
        return RedisLedgerSession(self, session_id, json.loads(answer))


class RedisLedgerSession:
    """One process's handle on a session in a :class:`RedisLedger`.

    Each handle is a *holder*: its reservations are its own, and they are released when it
    stops operating for ``reservation_ttl`` seconds. Thread-safe (redis-py pools connections).
    """

    def __init__(self, ledger: RedisLedger, session_id: str, config: dict[str, Any]) -> None:
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
        self._keys = ledger.keys(session_id)
        self._lock = threading.Lock()
        self._seq = 0
        #: Operations sent or to be sent whose answer has not arrived (their ids).
        self._pending: set[int] = set()
        #: Admits given up on (the server may have applied them): undone at the next call.
        self._abandoned: set[int] = set()
        #: The last admission saw a run of consecutive errors (a success should reset it).
        self.errors_seen = False
        self._last = Counters()
        #: The local lease (``RedisLedger(allotment=...)``); none with a wrap-up reserve.
        self.allot: _allotment.Allotment | None = None
        if ledger.allotment is not None and self.reserve_for_wrapup is None:
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

    def _call(self, script: str, args: list[Any], op_id: str | None = None) -> Any:
        """One script call with the holder's sequencing arguments; an admit that fails on
        the way is *abandoned* (the server undoes or voids it at the next call)."""
        seq: int | None = None
        if op_id is not None:
            try:
                seq = int(op_id)
            except ValueError:
                raise BudgetTypeError(
                    f"op_id must come from new_op_id() of this handle, got {op_id!r}"
                ) from None
        with self._lock:
            low = min(self._pending) if self._pending else self._seq + 1
            abandoned = sorted(self._abandoned)
        led = self.ledger
        prefix = [
            self.holder,
            "" if seq is None else str(seq),
            low,
            ",".join(map(str, abandoned)),
            led.lease_ms,
            led.ttl_ms,
        ]
        try:
            raw = led.run(script, self._keys, [*prefix, *args])
        except LedgerUnavailableError:
            if script == "admit" and seq is not None:
                with self._lock:
                    self._abandoned.add(seq)
            raise
        answer = raw if isinstance(raw, list) else _text(raw)
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
                f"budgetkit: operation {op_id} of session {self.session_id!r} at {self.url} "
                "is stale (this handle gave it up)"
            )
        return answer

    def _run(self, script: str, args: list[Any], *, op_id: str | None = None) -> str:
        return str(self._call(script, args, op_id))

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
        answer = self._run(
            "admit",
            [
                kind or "",
                "" if reserve is None else str(_check_units(reserve)),
                name,
                "1" if wrapup else "0",
                "" if tool_cap is None else str(int(tool_cap)),
                digest or "",
            ],
            op_id=op_id or self.new_op_id(),
        )
        if answer[0] == "A":
            self.errors_seen = answer == "AE"
            return None
        if answer == "W":
            return "wrapup_reserve"
        if allot is not None:
            allot.stop()
        return answer[1:]

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
            op_id=op_id or self.new_op_id(),
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
        self._run("release", [str(_check_units(amount))], op_id=op_id or self.new_op_id())

    def fail(self, *, op_id: str | None = None) -> str | None:
        """Count a failed call in the run of consecutive errors; return the tripped reason."""
        answer = self._run("fail", [], op_id=op_id or self.new_op_id())
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
        it = iter(_text(item) for item in raw)
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
