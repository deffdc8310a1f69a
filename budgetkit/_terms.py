"""What a ledger knows of an account: its id, limits, window and clock (:class:`AccountTerms`),
and its usage in a window (:class:`AccountUsage`). No ledger imports: ledgers import this.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._limits import positive_int, to_usd
from ._money import from_units, to_units_floor
from ._policy import ACCOUNT_LIMIT
from ._windows import Window
from .exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from ._policy import Tally
    from ._windows import Buckets
    from .ledgers import Ledger

__all__ = ["AccountTerms", "AccountUsage"]

#: The longest account id.
MAX_ID = 256


def check_account_id(value: object) -> str:
    """An account id is any non-empty str of at most :data:`MAX_ID` characters."""
    if not isinstance(value, str):
        raise BudgetTypeError(f"account_id must be a str, got {value!r}")
    if not 1 <= len(value) <= MAX_ID:
        raise BudgetConfigError(f"account_id must be 1-{MAX_ID} characters, got {value!r}")
    return value


def account_tag(account_id: str) -> str:
    """A short, key-safe digest of an account id (Redis keys and hash tags use it)."""
    return hashlib.sha256(account_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def check_limits(**values: Any) -> dict[str, Any]:
    """The set account limits by keyword, validated (``max_usd`` a ``Decimal``)."""
    limits: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name == "max_usd":
            limits[name] = to_usd(value, name, limit=True)
        else:
            limits[name] = positive_int(value, name)
    return limits


@dataclass(frozen=True, slots=True)
class AccountTerms:
    """An account as a ledger applies it: id, limits by keyword, window, clock."""

    account_id: str
    limits: dict[str, Any]
    window: Window
    clock: Callable[[], float] = time.time
    last: list[Buckets] = field(default_factory=list, compare=False, repr=False)
    """The last window computed (every admission asks; it changes once per bucket)."""

    @property
    def tag(self) -> str:
        """The id's digest (key-safe)."""
        return account_tag(self.account_id)

    @property
    def rules(self) -> dict[str, int]:
        """The limits by check reason (``account_max_usd``), USD in units rounded down."""
        return {
            ACCOUNT_LIMIT[name].reason: to_units_floor(value) if name == "max_usd" else value
            for name, value in self.limits.items()
        }

    @property
    def key(self) -> str:
        """Which counters: the account and its window (one id with two windows counts twice)."""
        spec = self.window.spec()
        rolling = "r" if spec["rolling"] else "f"
        return f"{self.tag}:{rolling}{spec['window']}@{spec['tz']}"

    def spec(self) -> dict[str, Any]:
        """The JSON form a server ledger stores with a session (``from_spec`` reads it)."""
        return {
            "id": self.account_id,
            "limits": {k: str(v) if isinstance(v, Decimal) else v for k, v in self.limits.items()},
            "window": self.window.spec(),
        }

    @classmethod
    def from_spec(cls, spec: object) -> AccountTerms:
        """Terms from :meth:`spec`'s form (the clock is ``time.time``)."""
        if not isinstance(spec, dict):
            raise BudgetConfigError(f"an account must be an object, got {spec!r}")
        limits = spec.get("limits") or {}
        if not isinstance(limits, dict) or set(limits) - set(ACCOUNT_LIMIT):
            raise BudgetConfigError(f"account limits must be {sorted(ACCOUNT_LIMIT)}: {limits!r}")
        usd = limits.get("max_usd")
        return cls(
            check_account_id(spec.get("id")),
            check_limits(**{**limits, "max_usd": None if usd is None else Decimal(usd)}),
            Window.from_spec(spec.get("window")),
        )

    def buckets(self) -> Buckets:
        """The window current now (by :attr:`clock`)."""
        now = self.clock()
        last = self.last
        if last and last[0].since <= now < last[0].resets_at:
            return last[0]
        found = self.window.buckets(now)
        last[:] = [found]
        return found

    def usage_in(self, ledger: Ledger) -> AccountUsage:
        """The current window's usage, read from ``ledger``."""
        buckets = self.buckets()
        return self.usage_of(buckets, *ledger.account_usage(self, buckets))

    def usage_of(self, buckets: Buckets, tally: Tally, reserved: int) -> AccountUsage:
        """An :class:`AccountUsage` of counters a ledger read."""
        return AccountUsage(
            account_id=self.account_id,
            window=self.window.label,
            window_start=self.window.at(buckets.start),
            resets_at=self.window.at(buckets.resets_at),
            steps=tally.steps,
            llm_calls=tally.llm_calls,
            input_tokens=tally.input_tokens,
            output_tokens=tally.output_tokens,
            total_tokens=tally.input_tokens + tally.output_tokens,
            cost_usd=from_units(tally.cost),
            reserved_usd=from_units(reserved),
            limits=dict(self.limits),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountUsage:
    """An account's usage in its current window.

    .. versionadded:: 0.1.0
    """

    account_id: str
    window: str
    """The window's description (``day (UTC)``, ``rolling hour`` ...)."""
    window_start: datetime
    """When the current window began (rolling: its oldest counted sub-bucket)."""
    resets_at: datetime
    """When it resets (rolling: when its oldest sub-bucket drops out), in its timezone."""
    steps: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    reserved_usd: Decimal = Decimal(0)
    """USD held by calls in flight of the account's sessions (not yet spent)."""
    limits: dict[str, Any] = field(default_factory=dict)
    """The account's limits by keyword."""

    def used(self, limit: str) -> int | Decimal:
        """The usage a limit keyword (``max_usd``) is judged on."""
        values: dict[str, int | Decimal] = {
            "max_usd": self.cost_usd,
            "max_steps": self.steps,
            "max_llm_calls": self.llm_calls,
            "max_tokens": self.total_tokens,
        }
        return values[limit]

    def describe(self, reason: str) -> str:
        """``$5.01 of $5 spent``, ``100 of 100 steps used``."""
        name = reason.removeprefix("account_")
        limit, used = self.limits.get(name), self.used(name)
        if name == "max_usd":
            return f"${used} of ${limit} spent"
        return f"{used} of {limit} {name.removeprefix('max_').replace('_', ' ')} used"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (USD as strings, times in ISO 8601)."""
        return {
            "account_id": self.account_id,
            "window": self.window,
            "window_start": self.window_start.isoformat(),
            "resets_at": self.resets_at.isoformat(),
            "steps": self.steps,
            "llm_calls": self.llm_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": str(self.cost_usd),
            "reserved_usd": str(self.reserved_usd),
            "limits": {k: str(v) if isinstance(v, Decimal) else v for k, v in self.limits.items()},
        }
