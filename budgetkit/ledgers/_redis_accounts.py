"""Accounts on the Redis ledger: the keys of an account's windows, the Lua that checks and
charges them inside the session's own script, and reading them back.

Keys (``<p>`` the ledger's key prefix, ``<t>`` a digest of the account id, ``<w>`` the window
spec, ``<b>`` a bucket id, see ``budgetkit._windows``), all with the hash tag ``{a:<t>}`` so
one slot of a cluster holds the account and **the sessions of the account** (their keys are
tagged by the account too, ``<p>{a:<t>}:s:<session id>``; a script touches one slot):

- ``<p>{a:<t>}:w:<w>:<b>``: one bucket of a window, a hash: ``s`` steps, ``l`` LLM calls,
  ``i`` / ``o`` input / output tokens, ``c`` cost in units (decimal strings, exact). A fixed
  window's bucket expires one window length (at most a day) after its end, a rolling
  window's when no window counts it: O(1) memory per window (a fixed window is one bucket,
  a rolling one 24).
- ``<p>{a:<t>}:resv``: USD held by the open reservations of the account's sessions (a
  decimal string of units), expiring with the ledger's ``ttl`` after its last change.
- ``<p>{a:<t>}:cfg:<w>``: the account (id, limits, window), for ``budgetkit accounts``, and
  the set ``<p>accounts`` naming those keys (written when a session is created).
- ``<p>{<session id>}:acct``: where a session of an account lives (its account, as JSON), for
  :meth:`RedisLedger.join`, which knows only the session id; it expires with the session's
  ``ttl`` and is renewed by the handles' operations.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .._policy import ACCOUNT_CHECKS, COUNT, Tally
from .._terms import AccountTerms
from ._replies import text

if TYPE_CHECKING:
    from .._terms import AccountUsage
    from .._windows import Buckets

__all__ = ["ACCOUNT_FIELDS", "LUA_ACCOUNT", "RedisAccount"]

#: Where each counter of a :class:`~budgetkit._policy.Tally` lives in a bucket's hash.
ACCOUNT_FIELDS = {
    "steps": "s",
    "llm_calls": "l",
    "input_tokens": "i",
    "output_tokens": "o",
    "cost": "c",
}


def lua_account() -> str:
    """Lua helpers for an account, generated from ``ACCOUNT_CHECKS`` (the one order of
    reasons). They use the bignum functions (``add``, ``sub0``, ``min``, ``cmp``) and take
    the account as a table made by ``acct_open(keys, packed, first, ttl)``: ``keys[first]``
    the reservations key, ``keys[first + 1]`` the current bucket, ``keys[first + 1 ..]``
    every bucket counted; ``packed`` the limits and the bucket's expiry,
    ``steps|llm|tokens|usd|expire_at`` (empty: no limit; :meth:`RedisAccount.arg`)."""
    fields = list(ACCOUNT_FIELDS.values())
    n = len(ACCOUNT_CHECKS)  # the packed argument: each check's limit, then the expiry
    pattern = "^" + "|".join(["([^|]*)"] * (n + 1)) + "$"
    lim = ", ".join(f"{c.reason} = p[{i}]" for i, c in enumerate(ACCOUNT_CHECKS, 1))
    lines = [
        "local function acct_open(keys, packed, first, ttl)",
        "  if #keys <= first or not packed or packed == '' then return nil end",
        f"  local p = {{string.match(packed, '{pattern}')}}",
        "  return {resv = keys[first], cur = keys[first + 1], first = first + 1, keys = keys,",
        f"    lim = {{{lim}}}, ex = p[{n + 1}], ttl = ttl}}",
        "end",
        "-- The window's usage: the sum of its buckets, exact (one bucket: read as is).",
        "local function acct_window(A)",
        f"  local names = {{{', '.join(repr(f) for f in fields)}}}",
        "  local w = {}",
        "  if #A.keys == A.first then",
        "    local got = redis.call('HMGET', A.cur, unpack(names))",
        "    for i, f in ipairs(names) do w[f] = got[i] or '0' end",
        "    return w",
        "  end",
        "  for _, f in ipairs(names) do w[f] = '0' end",
        "  for k = A.first, #A.keys do",
        "    local got = redis.call('HMGET', A.keys[k], unpack(names))",
        "    for i, f in ipairs(names) do",
        "      if got[i] then w[f] = add(w[f], got[i]) end",
        "    end",
        "  end",
        "  return w",
        "end",
    ]
    lines += [
        "-- Why the account refuses a call of `kind` reserving `reserve` now, or false.",
        "local function acct_refusal(A, kind, reserve)",
        "  local w = acct_window(A)",
        "  local lim = A.lim",
    ]
    for check in ACCOUNT_CHECKS:
        used = [f"w.{ACCOUNT_FIELDS[c]}" for c in check.counters]
        value = used[0] if len(used) == 1 else f"add({used[0]}, {used[1]})"
        limit = f"lim.{check.reason}"
        if check.rule == COUNT:
            lines.append(
                f"  if kind == '{check.kind}' and {limit} ~= '' and cmp({value}, {limit}) >= 0 "
                f"then return '{check.reason}' end"
            )
        else:
            lines.append(
                f"  if {limit} ~= '' and cmp({value}, {limit}) > 0 then return '{check.reason}' end"
            )
    lines += [
        "  if reserve ~= '' and reserve ~= '0' and lim.account_max_usd ~= '' and",
        "      cmp(add(add(w.c, redis.call('GET', A.resv) or '0'), reserve),",
        "        lim.account_max_usd) > 0 then",
        "    return 'account_max_usd'",
        "  end",
        "  return false",
        "end",
        "-- Add `amount` (a decimal string) to a field of the current bucket; the bucket's",
        "-- expiry is set when a field is new (a few times per bucket).",
        "local function acct_add(A, field, amount)",
        "  if amount == '' or amount == '0' then return end",
        "  local new = redis.call('HSET', A.cur, field,",
        "    add(redis.call('HGET', A.cur, field) or '0', amount))",
        "  if new == 1 then redis.call('EXPIREAT', A.cur, A.ex) end",
        "end",
        "local function acct_hold(A, amount)",
        "  if amount == '' or amount == '0' then return end",
        "  redis.call('SET', A.resv, add(redis.call('GET', A.resv) or '0', amount), 'PX', A.ttl)",
        "end",
        "-- Give back `amount` of the account's reservations (never below zero).",
        "local function acct_release(A, amount)",
        "  if amount == '' or amount == '0' then return end",
        "  local held = redis.call('GET', A.resv)",
        "  if not held then return end",
        "  local left = sub0(held, min(held, amount))",
        "  if left == '0' then redis.call('DEL', A.resv)",
        "  else redis.call('SET', A.resv, left, 'PX', A.ttl) end",
        "end",
        "-- Count an admitted call; hold its reservation.",
        "local function acct_count(A, kind, reserve)",
        "  local field = nil",
        "  if kind == 'step' then field = 's' elseif kind == 'llm' then field = 'l' end",
        "  if field and redis.call('HINCRBY', A.cur, field, 1) == 1 then",
        "    redis.call('EXPIREAT', A.cur, A.ex)",
        "  end",
        "  acct_hold(A, reserve)",
        "end",
        "-- Take back an admitted call the client gave up on (its reservation is given back",
        "-- with the session's).",
        "local function acct_uncount(A, kind)",
        "  local field = nil",
        "  if kind == 'step' then field = 's' elseif kind == 'llm' then field = 'l' end",
        "  if not field then return end",
        "  local n = redis.call('HGET', A.cur, field)",
        "  if n then redis.call('HSET', A.cur, field, sub0(n, '1')) end",
        "end",
        "-- Charge one call's tokens and cost (decimal strings; '' or '0': none).",
        "local function acct_record(A, inp, out, cost)",
        "  acct_add(A, 'i', inp)",
        "  acct_add(A, 'o', out)",
        "  acct_add(A, 'c', cost)",
        "end",
    ]
    return "\n".join(lines)


LUA_ACCOUNT = lua_account()


class RedisAccount:
    """An account's keys and arguments in one Redis ledger (prefix)."""

    __slots__ = ("base", "prefix", "terms")

    def __init__(self, prefix: str, terms: AccountTerms) -> None:
        self.prefix = prefix
        self.terms = terms
        self.base = f"{prefix}{{a:{terms.tag}}}"

    def session_keys(self, session_id: str) -> list[str]:
        """A session of the account: its keys, in the account's slot."""
        base = f"{self.base}:s:{session_id}"
        return [base, f"{base}:lease"]

    def pointer(self, session_id: str) -> str:
        """Where :meth:`RedisLedger.join` finds that a session belongs to this account."""
        return pointer_key(self.prefix, session_id)

    def bucket(self, b: int) -> str:
        spec = self.terms.window.spec()
        rolling = "r" if spec["rolling"] else "f"
        return f"{self.base}:w:{rolling}{spec['window']}@{spec['tz']}:{b}"

    def keys(self, buckets: Buckets) -> list[str]:
        """The reservations key, the current bucket, then the other buckets counted."""
        others = [self.bucket(b) for b in buckets.counted if b != buckets.current]
        return [f"{self.base}:resv", self.bucket(buckets.current), *others]

    def arg(self, buckets: Buckets) -> str:
        """The packed last argument: limits by check, then the current bucket's expiry."""
        rules = self.terms.rules
        limits = [str(rules.get(c.reason, "")) for c in ACCOUNT_CHECKS]
        return "|".join([*limits, str(buckets.expire_at)])

    # ------------------------------------------------------------------ reading
    def read(self, client: Any, buckets: Buckets) -> tuple[Tally, int]:
        """The window's usage and the open reservations (one pipeline, one slot)."""
        keys = self.keys(buckets)
        pipe = client.pipeline(transaction=False)
        pipe.get(keys[0])
        for key in keys[1:]:
            pipe.hmget(key, *ACCOUNT_FIELDS.values())
        got = pipe.execute()
        tally = Tally()
        for row in got[1:]:
            for name, value in zip(ACCOUNT_FIELDS, row, strict=True):
                if value is not None:
                    setattr(tally, name, getattr(tally, name) + int(value))
        return tally, int(got[0] or 0)

    def register(self, client: Any, buckets: Buckets) -> None:
        """Record the account for ``budgetkit accounts``: its config (one per window), kept
        as long as its current window's counters, named in the set of accounts."""
        cfg = f"{self.base}:cfg:{self.terms.key.partition(':')[2]}"
        client.set(cfg, json.dumps(self.terms.spec()), exat=buckets.expire_at)
        client.sadd(f"{self.prefix}accounts", cfg)


def pointer_key(prefix: str, session_id: str) -> str:
    """The key naming the account of a session (absent: the session has none)."""
    return f"{prefix}{{{session_id}}}:acct"


def account_usages(client: Any, prefix: str) -> list[AccountUsage]:
    """Every account registered under ``prefix``, in its current window; accounts whose
    config expired are dropped from the set."""
    out = []
    for raw in sorted(client.smembers(f"{prefix}accounts")):
        key = text(raw)
        cfg = client.get(key)
        if cfg is None:
            client.srem(f"{prefix}accounts", key)
            continue
        terms = AccountTerms.from_spec(json.loads(cfg))
        buckets = terms.buckets()
        tally, reserved = RedisAccount(prefix, terms).read(client, buckets)
        out.append(terms.usage_of(buckets, tally, reserved))
    return out
