"""Local allotments of a Redis ledger session (``RedisLedger(url, allotment=...)``).

A worker leases a batch of steps (or LLM calls) in one round trip and admits from it without
one. A lease is a pre-admit: the server counts the leased units as admitted when it grants
them, so the leases outstanding never exceed what remains and the count limits stay exact.
A grant is at most ``room // (2 * live holders)`` (at least one), so leases shrink to one
near the limit; a holder that needs more while others hold unused units makes the server
*recall* them, and the holders give back what they have provably not used at their next
poll. So does an exact admit (a reservation, a capped tool, a repeat digest) refused by a
count limit while others hold unused units: it answers "ask again" instead of latching, and
the client asks until the units are back or its wait is over (``recall_timing``). A holder
gives back its unused units on exit; a dead holder's units stay counted (they may have been
admitted) and its lease entry expires after ``ttl``.

The server keeps, per holder, a field ``a:<holder>`` of the session's hash: the last lease
message it applied (a message numbered at or below it is stale, never applied twice or out of
order), the units granted so far and the units the holder said it had used (both cumulative,
per kind), and its deadline; ``al`` lists the holders. A give-back returns ``granted - used``:
units the holder no longer holds and never admitted.

Trips propagate by polling: a local admit is allowed only while the last successful read of
the session's state is younger than ``2 * poll`` seconds (a poller thread re-reads it every
``poll`` seconds while a lease is held), and every exact round trip that sees a trip stops
local admits at once.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._policy import CHECKS, COUNT
from .._values import LLM, STEP
from ..exceptions import BudgetConfigError, BudgetTypeError, LedgerError, SessionNotFoundError
from ._replies import text

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .redis import RedisLedger, RedisLedgerSession

__all__ = [
    "LUA_RECALL",
    "Allotment",
    "check_allotment",
    "lease_holders",
    "lua_ops",
    "url_options",
]

#: Bits of a lease reply's flags.
STOPPED, ERRORS, RECALL, NEW = 1, 2, 4, 8

#: The smallest and largest lease of ``allotment="auto"``.
AUTO_MIN, AUTO_MAX = 16, 1 << 16

#: The defaults of ``RedisLedger(allotment_poll=, allotment_ttl=)`` (seconds).
DEFAULT_POLL, DEFAULT_TTL = 0.05, 2.0

#: How long a recall made by a refused exact admit lasts (ms): longer than the pause between
#: the waiting client's asks (``Allotment.recall_pause``), which renew it.
RECALL_MS = 250

#: ``recall(kind, ms)``, a helper of the ledger's prelude (after ``more``, ``clock``, ``put``):
#: whether holders other than this one, alive (before their deadline), hold units of ``kind``
#: they had not used at their last message; if so, recall them for ``ms`` (each holder gives
#: back its unused units at its next poll). The lease op and a refused exact admit use it.
LUA_RECALL = """
local function recall(kind, ms)
  if v['al'] == nil then more({'al'}) end
  local fields = {}
  for h in string.gmatch(v['al'] or '', '[^,]+') do
    if h ~= H then fields[#fields + 1] = 'a:' .. h end
  end
  if #fields == 0 then return false end
  local got = redis.call('HMGET', S, unpack(fields))
  for i = 1, #fields do
    local r = got[i]
    if r then
      local _, b, c, d, e, dl = string.match(r, '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)$')
      local held = tonumber(b) - tonumber(d)
      if kind == 'llm' then held = tonumber(c) - tonumber(e) end
      if held > 0 and tonumber(dl) >= clock() then
        put('arc', int(clock() + ms))
        return true
      end
    end
  end
  return false
end
"""

# A[2..10]: message number, lease ttl (ms), steps used, LLM calls used, kind to give back
# ('step', 'llm', 'all' or ''), kind wanted ('step', 'llm', or '' to renew only), units
# wanted, poll (ms), drop ('1': the holder is done). Fields of S: 'al' the lease holders (ids
# joined by ','), 'a:<holder>' = "n|gs|gl|us|ul|deadline", 'arc' the end of a recall.
# Answer: '<granted>|<flags>|<ms left before a time limit, or empty>'; granted -1: wait (a
# recall is out); 'D' a stale message; 'U' an unknown session.
_LEASE_OP = """
local early = begin(STATE)
if early then return early end
local mseq, lttl = tonumber(A[2]), tonumber(A[3])
local us, ul = tonumber(A[4]), tonumber(A[5])
local now = clock()
more({'al', 'arc'})
-- Holders past their deadline (dead) are dropped: their units stay counted.
local keep, recs, changed = {}, {}, false
local ids = {}
for h in string.gmatch(v['al'] or '', '[^,]+') do ids[#ids + 1] = h end
if #ids > 0 then
  local fields = {}
  for i, h in ipairs(ids) do fields[i] = 'a:' .. h end
  local got = redis.call('HMGET', S, unpack(fields))
  local gone = {}
  for i, h in ipairs(ids) do
    local r = got[i]
    if r and tonumber(string.match(r, '|(%d+)$')) >= now then
      recs[h] = r
      keep[#keep + 1] = h
    else
      gone[#gone + 1] = fields[i]
    end
  end
  if #gone > 0 then
    redis.call('HDEL', S, unpack(gone))
    changed = true
  end
end
local rec = recs[H]
local n, gs, gl = 0, us, ul
local flags = 0
if rec then
  local a, b, c = string.match(rec, '^(%d+)|(%d+)|(%d+)|')
  n, gs, gl = tonumber(a), tonumber(b), tonumber(c)
  if mseq <= n then return finish('D') end
else
  flags = flags + 8
  keep[#keep + 1] = H
  changed = true
end
local give = A[6] or ''
if give ~= '' then
  if gs > us and give ~= 'llm' then
    put('steps', int(num(v['steps']) - (gs - us)))
    gs = us
  end
  if gl > ul and give ~= 'step' then
    put('llm', int(num(v['llm']) - (gl - ul)))
    gl = ul
  end
end
if (A[10] or '') == '1' then
  redis.call('HDEL', S, 'a:' .. H)
  local rest = {}
  for _, h in ipairs(keep) do
    if h ~= H then rest[#rest + 1] = h end
  end
  put('al', table.concat(rest, ','))
  return finish('0|0|')
end
if v['reason'] or v['tripped'] or time_refusal(v) then flags = flags + 1 end
if num(v['errors']) > 0 then flags = flags + 2 end
if num(v['arc']) > now then flags = flags + 4 end
local left = ''
%(TIME_LEFT)s
local kind, want, granted = A[7] or '', tonumber(A[8] or '0'), 0
if kind ~= '' and flags % 2 == 0 and not v['keep'] then
  local room = count_room(kind, v)
  if room == nil then
    granted = want
  elseif room > 0 then
    granted = math.max(1, math.min(want, math.floor(room / (2 * #keep))))
  elseif recall(kind, 2 * tonumber(A[9])) then
    granted = -1  -- others hold units they have not used: recalled; this holder waits
  end
  if granted > 0 then
    if kind == 'step' then
      put('steps', int(num(v['steps']) + granted))
      gs = gs + granted
    else
      put('llm', int(num(v['llm']) + granted))
      gl = gl + granted
    end
  end
end
put('a:' .. H, int(mseq) .. '|' .. int(gs) .. '|' .. int(gl) .. '|' .. int(us) .. '|' .. int(ul)
  .. '|' .. int(now + lttl))
if changed then put('al', table.concat(keep, ',')) end
return finish(int(granted) .. '|' .. flags .. '|' .. left)
"""


def lua_count_room(counters: Mapping[str, str], limits: Mapping[str, str]) -> str:
    """``count_room(kind, v)``: the units of ``kind`` the count limits leave (``nil`` when
    none applies), from ``budgetkit._policy.CHECKS``."""
    lines = ["local function count_room(kind, v)", "  local room = nil"]
    for c in CHECKS:
        if c.rule != COUNT:
            continue
        limit = f"v['{limits[c.reason]}']"
        used = " + ".join(f"num(v['{counters[name]}'])" for name in c.counters)
        lines += [
            f"  if kind == '{c.kind}' and {limit} then",
            f"    local r = tonumber({limit}) - ({used})",
            "    if room == nil or r < room then room = r end",
            "  end",
        ]
    lines += ["  return room", "end"]
    return "\n".join(lines)


def lua_time_left(limits: Mapping[str, str]) -> str:
    """Sets ``left`` to the ms before the session's time limit, if it has one."""
    field = limits["max_seconds"]
    return (
        f"if v['{field}'] then left = int(math.max(tonumber(v['{field}']) * 1000 "
        "- (now - tonumber(v['start'])), 0)) end"
    )


def lua_ops(counters: Mapping[str, str], limits: Mapping[str, str]) -> dict[str, str]:
    """The allotment operations, as bodies of the ledger's Lua library (``_OPS``)."""
    body = _LEASE_OP.replace("%(TIME_LEFT)s", lua_time_left(limits))
    return {"lease": lua_count_room(counters, limits) + "\n" + body}


def _seconds(value: object, name: str, high: float) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BudgetTypeError(f"{name} must be seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BudgetTypeError(f"{name} must be seconds, got {value!r}")
    if not 0 < value < high:
        raise BudgetConfigError(f"{name} must be in (0, {high:g}) seconds, got {value}")
    return float(value)


def check_allotment(
    size: object, poll: object, ttl: object
) -> tuple[int | None, float, float] | None:
    """``(fixed size or None for "auto", poll seconds, lease ttl seconds)``, or ``None``
    (exact mode)."""
    if size is None or size == 0:
        return None
    if isinstance(size, str):
        if size == "auto":
            size = None
        else:
            try:
                size = int(size)
            except ValueError:
                raise BudgetConfigError(
                    f'allotment must be a positive int or "auto", got {size!r}'
                ) from None
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise BudgetConfigError(f'allotment must be a positive int or "auto", got {size!r}')
    poll = _seconds(poll, "allotment_poll", 60)
    ttl = _seconds(ttl, "allotment_ttl", 86400)
    if ttl <= 2 * poll:
        raise BudgetConfigError(
            f"allotment_ttl ({ttl:g} s) must be longer than 2 * allotment_poll ({poll:g} s)"
        )
    return size, poll, ttl


def recall_timing(allotment: tuple[int | None, float, float] | None) -> tuple[float, float]:
    """``(pause, wait)`` of a client waiting for a recall: a pause between asks shorter
    than :data:`RECALL_MS`, and the wait of a lease request (``ttl + 2 * poll``: a live
    holder gives back within a poll, a dead one's entry expires after its ttl), with this
    ledger's allotment settings or their defaults (an exact-mode handle)."""
    poll, ttl = (DEFAULT_POLL, DEFAULT_TTL) if allotment is None else allotment[1:]
    return min(poll / 4, RECALL_MS / 5000), ttl + 2 * poll


class Allotment:
    """One handle's leases: units granted and not yet used, per kind, admitted locally."""

    def __init__(
        self, handle: RedisLedgerSession, size: int | None, poll: float, ttl: float
    ) -> None:
        self.handle = handle
        self.size = size
        self.poll = poll
        self.ttl = ttl
        #: A local admit needs a read of the session's state younger than this (seconds).
        self.bound = 2 * poll
        #: A holder's lease entry lives this long after its last message (ms).
        self.ttl_ms = int(ttl * 1000)
        self.reset()

    def reset(self) -> None:
        """No lease: the state of a new holder."""
        self.lock = threading.Lock()  # the local counters
        self.wire = threading.Lock()  # one lease message in flight at a time
        self.left = {STEP: 0, LLM: 0}
        self.used = {STEP: 0, LLM: 0}
        self.want = {STEP: self.size or AUTO_MIN, LLM: self.size or AUTO_MIN}
        self.granted_at = {STEP: 0.0, LLM: 0.0}
        self.seq = 0
        self.fresh_until = 0.0
        self.stopped = False
        self.errors = False
        self.recalled = False
        self.deadline = float("inf")
        self.entry = False  # the server holds an entry for this holder
        self.closed = False
        self.round_trips = 0
        self.wake = threading.Event()
        self.poller: threading.Thread | None = None

    # ------------------------------------------------------------------ admitting
    def take(self, kind: str) -> bool:
        """Admit one call of ``kind`` from the lease, if it holds one and is fresh."""
        now = time.monotonic()
        with self.lock:
            if (
                self.left[kind]
                and now < self.fresh_until
                and now < self.deadline
                and not self.stopped
            ):
                self.left[kind] -= 1
                self.used[kind] += 1
                return True
        return False

    def admit(self, kind: str) -> bool:
        """Admit one call of ``kind`` locally, leasing more when needed; ``False``: the exact
        path decides (a trip, a limit reached, a time limit). An outage raises
        ``LedgerUnavailableError``: nothing is admitted beyond a fresh lease."""
        if self.take(kind):
            return True
        waited_until = time.monotonic() + self.ttl_ms / 1000 + self.bound
        while not self.stopped and not self.closed:
            granted = self.exchange(kind if not self.left[kind] else "")
            if self.take(kind):
                return True
            if granted != -1 or time.monotonic() > waited_until:
                return False
            time.sleep(self.poll / 4)  # a recall is out: the holders give back at their poll
        return False

    def give_back(self, kind: str) -> None:
        """Before an exact admit of ``kind``: give back this holder's unused units of it,
        which would otherwise count against it."""
        if self.left[kind] and not self.closed:
            self.exchange("", give=kind)

    def unused(self) -> tuple[int, int]:
        with self.lock:
            return self.left[STEP], self.left[LLM]

    def stop(self) -> None:
        """A round trip saw the session tripped: no more local admits."""
        self.stopped = True

    def resume(self) -> None:
        """The latch was lifted (``extend``): leases may be used again."""
        self.stopped = False

    # ------------------------------------------------------------------ the wire
    def exchange(self, kind: str, *, drop: bool = False, give: str = "") -> int:
        """One lease message: renew (``kind`` empty) or lease ``kind``; give back what is
        unused of ``give`` (a kind), or of every kind when recalled or ``drop`` (the
        holder is done). Returns the units granted (-1: wait for a recall)."""
        handle = self.handle
        with self.wire:
            if self.closed and not drop:
                return 0  # the poller, racing close(): the entry is gone
            if drop or self.recalled:
                give = "all"
            with self.lock:
                for k in (STEP, LLM) if give == "all" else (give,) if give else ():
                    self.left[k] = 0
                used_s, used_l = self.used[STEP], self.used[LLM]
                self.seq += 1
                seq = self.seq
            want = self.want.get(kind, 0)
            sent = time.monotonic()
            led = handle.ledger
            self.round_trips += 1
            raw = led.run(
                "lease",
                led.keys(handle.session_id),
                [
                    led.header(handle.holder, "", 0, ""),
                    seq,
                    self.ttl_ms,
                    used_s,
                    used_l,
                    give,
                    kind,
                    want,
                    int(self.poll * 1000),
                    "1" if drop else "0",
                ],
            )
            answer = text(raw)
            if answer == "U":
                self.stopped = True
                raise led.unknown(handle.session_id)
            if answer == "D":  # an earlier copy was applied: what it granted is given back later
                return 0
            if give == "all":
                self.recalled = False
            if drop:
                self.entry = False
                return 0
            granted_s, flags_s, left_s = answer.split("|")
            granted, flags = int(granted_s), int(flags_s)
            with self.lock:
                if flags & NEW and self.entry:
                    # Our entry expired (we were stalled): its units stay counted there.
                    self.left = {STEP: 0, LLM: 0}
                self.entry = True
                if granted > 0:
                    self.left[kind] += granted
                    self.resize(kind, sent)
                self.stopped = bool(flags & STOPPED)
                self.errors = bool(flags & ERRORS)
                self.recalled = bool(flags & RECALL) and any(self.left.values())
                self.deadline = sent + int(left_s) / 1000 if left_s else float("inf")
                self.fresh_until = sent + self.bound
        if granted > 0 or self.recalled:
            self.ensure_poller()
        return granted

    def resize(self, kind: str, sent: float) -> None:
        """``"auto"``: double the next lease when this one came sooner than a poll after the
        last (the holder admits fast), halve it otherwise."""
        if self.size is not None:
            return
        quick = sent - self.granted_at[kind] < self.poll
        want = self.want[kind] * 2 if quick else self.want[kind] // 2
        self.want[kind] = min(max(want, AUTO_MIN), AUTO_MAX)
        self.granted_at[kind] = sent

    # ------------------------------------------------------------------ the poller
    def ensure_poller(self) -> None:
        if self.poller is not None and self.poller.is_alive():
            return
        self.poller = threading.Thread(
            target=self.poll_loop, name="budgetkit-allotment", daemon=True
        )
        self.poller.start()

    def poll_loop(self) -> None:
        """Every ``poll`` seconds while units are held: renew the entry, re-read the state
        (trips, recalls); give back at once when recalled. Ends when nothing is held."""
        idle = 0
        while not self.closed:
            if not self.recalled:
                self.wake.wait(self.poll)
            if self.closed:
                return
            if not any(self.left.values()):
                idle += 1
                if idle > 3:
                    return
            else:
                idle = 0
            try:
                self.exchange("")
            except SessionNotFoundError:
                return  # expired, or the server restarted empty: nothing to renew
            except LedgerError:
                continue
            except Exception:  # never kill the process from a daemon thread
                return

    def close(self) -> None:
        """Give back the unused units and drop the entry (best effort: a failure leaves them
        counted, and the entry expires)."""
        if self.closed:
            return
        self.closed = True
        self.wake.set()
        if self.entry:
            with contextlib.suppress(LedgerError):
                self.exchange("", drop=True)

    def after_fork(self) -> None:
        """In a forked child (a holder of its own): none of the parent's units, in place,
        since a session's boundary keeps a reference to this allotment."""
        self.reset()


def url_options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``allotment*`` query parameters, and them."""
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    keep, options = [], {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ("allotment", "allotment_poll", "allotment_ttl"):
            options[key] = value
        else:
            keep.append((key, value))
    if not options:
        return url, {}
    return urlunsplit(parts._replace(query=urlencode(keep))), options


def lease_holders(ledger: RedisLedger, session_id: str) -> list[str]:
    """The holders with a lease entry in a session (for tests and operators)."""
    raw = ledger.client.hget(ledger.keys(session_id)[0], "al") or b""
    return [h for h in text(raw).split(",") if h]
