"""Account windows: which window a moment falls in, when it began and when it resets.

Pure time arithmetic on Unix timestamps (seconds); no I/O. A ledger keeps an account's counters
per *bucket* (an int id): a fixed window is one bucket, a rolling window is the sum of its
last :data:`ROLLING_BUCKETS` buckets.

- Fixed ``"hour"``, ``"day"``, ``"month"``: calendar windows in the account's timezone. A day
  resets at local midnight, a month at local midnight of its first day, an hour at the
  start of the local hour (so a day across a DST change is 23 or 25 hours long). The bucket
  id is the window's start as a Unix timestamp.
- Fixed ``timedelta``: windows of that length aligned to the Unix epoch (1970-01-01 00:00
  UTC); the timezone does not move them.
- Rolling: the window's length (``hour`` 1 h, ``day`` 24 h, ``month`` 30 days, or the
  ``timedelta``) is cut into :data:`ROLLING_BUCKETS` sub-buckets aligned to the epoch; usage
  is the sum of the current sub-bucket and the ones before it that fit in the window. A
  charge therefore counts for at least ``length - length / ROLLING_BUCKETS`` and at most
  ``length`` after it happens (it drops out with its sub-bucket), never longer.

A charge counts in the window (bucket) current when the ledger applies it: a session that
spans a reset is charged in the old window up to the reset and in the new one after it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .exceptions import BudgetConfigError, BudgetTypeError

__all__ = ["ROLLING_BUCKETS", "Buckets", "Window"]

#: Sub-buckets of a rolling window.
ROLLING_BUCKETS = 24

CALENDAR = {"hour": timedelta(hours=1), "day": timedelta(days=1), "month": timedelta(days=30)}

#: How long a fixed window's counters outlive its end in a server ledger, at most (for
#: reading it late): its own length, up to a day. So at most two fixed windows of an account
#: are kept, and a rolling window's sub-buckets only while a window counts them.
KEEP_AFTER = 86400


class Buckets(NamedTuple):
    """The buckets of the window current at one moment."""

    current: int
    """The bucket a charge made now goes to."""
    counted: tuple[int, ...]
    """The buckets whose sum is the window's usage (``current`` last)."""
    start: float
    """When the window (its oldest counted bucket) began."""
    resets_at: float
    """When the window resets (fixed), or its oldest bucket drops out (rolling)."""
    expire_at: int
    """When the current bucket's counters may be forgotten (after every window counting it)."""
    since: float
    """When the current bucket began: these buckets hold from then until ``resets_at``."""


@dataclass(frozen=True, slots=True)
class Window:
    """An account's window: ``unit`` (``"hour"``, ``"day"``, ``"month"``, ``None`` for a
    timedelta), its ``length``, timezone and whether it rolls."""

    unit: str | None
    length: timedelta
    tz: tzinfo
    rolling: bool = False

    @classmethod
    def build(cls, window: object, tz: object, rolling: object) -> Window:
        """Validate ``Account(window=, tz=, rolling=)``."""
        if not isinstance(rolling, bool):
            raise BudgetTypeError(f"rolling must be a bool, got {rolling!r}")
        zone = _zone(tz)
        if isinstance(window, str):
            if window not in CALENDAR:
                raise BudgetConfigError(
                    f"window must be 'hour', 'day', 'month' or a timedelta, got {window!r}"
                )
            return cls(window, CALENDAR[window], zone, rolling)
        if isinstance(window, timedelta):
            if window < timedelta(seconds=1) or window.total_seconds() % 1:
                raise BudgetConfigError(
                    f"a window timedelta must be a whole number of seconds, at least 1, "
                    f"got {window!r}"
                )
            return cls(None, window, zone, rolling)
        raise BudgetTypeError(
            f"window must be 'hour', 'day', 'month' or a timedelta, got {window!r}"
        )

    # ------------------------------------------------------------------ naming
    @property
    def label(self) -> str:
        """``day (Europe/Paris)``, ``rolling day``, ``0:15:00``."""
        name = self.unit or str(self.length)
        if self.rolling:
            return f"rolling {name}"
        return f"{name} ({_tz_name(self.tz)})" if self.unit is not None else name

    def spec(self) -> dict[str, Any]:
        """The JSON form a server ledger stores (``from_spec`` reads it back)."""
        return {
            "window": self.unit or int(self.length.total_seconds()),
            "tz": _tz_name(self.tz),
            "rolling": self.rolling,
        }

    @classmethod
    def from_spec(cls, spec: object) -> Window:
        """A window from :meth:`spec`'s form."""
        if not isinstance(spec, dict):
            raise BudgetConfigError(f"an account window must be an object, got {spec!r}")
        window = spec.get("window")
        if isinstance(window, int) and not isinstance(window, bool):
            window = timedelta(seconds=window)
        return cls.build(window, spec.get("tz", "UTC"), spec.get("rolling", False))

    # ------------------------------------------------------------------ arithmetic
    def buckets(self, now: float) -> Buckets:
        """The window current at Unix time ``now``."""
        length = int(self.length.total_seconds())
        if self.rolling:
            step = length / ROLLING_BUCKETS
            current = math.floor(now / step)
            first = current - ROLLING_BUCKETS + 1
            return Buckets(
                current,
                tuple(range(first, current + 1)),
                first * step,
                (current + 1) * step,
                math.ceil((current + ROLLING_BUCKETS + 1) * step),
                current * step,
            )
        start: float
        end: float
        if self.unit is None:
            start = math.floor(now / length) * length
            end = start + length
        else:
            start, end = self._calendar(now)
        bucket = math.floor(start)
        keep = min(math.ceil(end - start), KEEP_AFTER)
        return Buckets(bucket, (bucket,), start, end, math.ceil(end) + keep, start)

    def _calendar(self, now: float) -> tuple[float, float]:
        local = datetime.fromtimestamp(now, self.tz)
        if self.unit == "hour":
            begin = local.replace(minute=0, second=0, microsecond=0)
            start = begin.timestamp()
            return start, start + 3600
        if self.unit == "day":
            first, after = local.date(), local.date() + timedelta(days=1)
        else:  # month
            first = local.date().replace(day=1)
            after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return self._midnight(first), self._midnight(after)

    def _midnight(self, day: date) -> float:
        return datetime.combine(day, time(0), tzinfo=self.tz).timestamp()

    def at(self, timestamp: float) -> datetime:
        """``timestamp`` as an aware datetime in the window's timezone."""
        return datetime.fromtimestamp(timestamp, self.tz)


def _zone(tz: object) -> tzinfo:
    if tz is None:
        return UTC
    if isinstance(tz, tzinfo):
        _tz_name(tz)  # can be stored
        return tz
    if isinstance(tz, str):
        if tz.upper() == "UTC":
            return UTC
        offset = _OFFSET.fullmatch(tz)
        if offset is not None:
            sign = -1 if offset[1] == "-" else 1
            return timezone(sign * timedelta(hours=int(offset[2]), minutes=int(offset[3])))
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise BudgetConfigError(f"tz {tz!r} is not a known timezone ({exc})") from None
    raise BudgetTypeError(f"tz must be a tzinfo or a timezone name, got {tz!r}")


_OFFSET = re.compile(r"([+-])(\d\d):(\d\d)")


def _tz_name(tz: tzinfo) -> str:
    """The name :func:`_zone` reads back: ``UTC``, a zone key, or a fixed ``+05:30``."""
    key = getattr(tz, "key", None)  # a ZoneInfo
    if isinstance(key, str):
        return key
    if isinstance(tz, timezone):
        offset = tz.utcoffset(None)
        if not offset:
            return "UTC"
        minutes = int(abs(offset.total_seconds()) // 60)
        sign = "-" if offset < timedelta(0) else "+"
        return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    raise BudgetConfigError(
        f"tz {tz!r} is neither a zoneinfo.ZoneInfo nor a datetime.timezone: pass one of "
        "those, or a zone name such as 'Europe/Paris'"
    )
