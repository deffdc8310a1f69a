"""Price one LLM call in USD.

Order: the cost the provider or gateway reported, then the user's price table,
then genai-prices. genai-prices (and with it pydantic and httpx2) is imported
lazily on the first call that needs it, so ``import budgetkit`` stays light.

Each call is priced on its own, because tiered prices depend on the size of the
request. An unknown model is ``None`` (cost unknown), never zero; so is a
reported cost of zero for a call that used tokens of a model no table knows.

genai-prices' ``calc_price`` re-validates its price table on every call, which
costs tens of microseconds. The model lookup is cached here per
``(provider, model)``, and for the common price shapes (flat or tiered input,
output, cache-read, cache-write and 1-hour cache-write rates, web searches) the
price is computed directly with exactly genai-prices' arithmetic; every other
shape goes through ``calc_price``, with every count the call reported.

All decimal arithmetic runs in budgetkit's own context (:data:`CONTEXT`), never
the caller's: a program that lowers ``decimal.getcontext().prec`` or traps
``Inexact`` gets the same prices as any other.
"""

from __future__ import annotations

import decimal
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Final, NamedTuple

from ._money import UNITS_PER_USD, to_units
from ._usage import Counts, Usage
from .exceptions import BudgetConfigError, BudgetTypeError

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, ModelPrice, Provider

__all__ = [
    "CONTEXT",
    "context_window",
    "price_estimate",
    "price_units",
    "price_usage",
    "validate_prices",
]

CONTEXT: Final = decimal.Context(
    prec=60,
    rounding=decimal.ROUND_CEILING,
    Emin=decimal.MIN_EMIN,
    Emax=decimal.MAX_EMAX,
    capitals=1,
    clamp=0,
    flags=[],
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
"""The decimal context of every price: 60 digits, enough for any price times any count to
be exact (so prices equal genai-prices' digit for digit), rounding up should a result ever
need more, so a charge is never lowered."""

_PER_MILLION: Final = 1_000_000
_ESTIMATE_KEYS: Final = frozenset(
    {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"}
)

# Price keys the direct computation handles, with the usage key each one prices.
# Storage searches are never reported by the shapes budgetkit reads: they price a
# count of zero, exactly as in genai-prices.
_DIRECT_PRICE_KEYS: Final = {
    "input_mtok": "input_tokens",
    "output_mtok": "output_tokens",
    "cache_read_mtok": "cache_read_tokens",
    "cache_write_mtok": "cache_write_tokens",
    "cache_write_1h_mtok": "cache_write_1h_tokens",
    "web_searches_kcount": "web_searches",
    "storage_searches_kcount": "storage_searches",
}
_COUNTED_USAGE_KEYS: Final = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "web_searches",
    }
)
# The counts of ``Counts`` (what ``price_units`` is given), by usage key.
_UNIT_RATE_KEYS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
)
# budgetkit's own fields, by genai-prices usage key: ``details`` never overrides them.
_MAIN_USAGE_KEYS: Final = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_reasoning_tokens",
    }
)


class _Term(NamedTuple):
    """One priced unit: ``price * count / per``, as genai-prices computes it."""

    usage_key: str
    price: object  # a Decimal, or a genai-prices TieredPrices
    per: int


class _UnitRates(NamedTuple):
    """A flat price in whole units (10^-18 USD) per token: integer arithmetic, exact."""

    input: int
    output: int
    cache_read: int
    cache_write: int
    prices_cache_read: bool
    prices_cache_write: bool


class _DirectPrice(NamedTuple):
    """A genai-prices ``ModelPrice`` whose arithmetic budgetkit reproduces exactly."""

    terms: tuple[_Term, ...]
    """The prices of the units budgetkit counts (input, output, cache read, cache write,
    1-hour cache write, web searches)."""
    zero: Decimal
    """``Decimal(0)`` plus the zero terms of the units budgetkit never counts (storage
    searches): they change only the exponent of genai-prices' result, and adding them
    keeps the result identical, digit for digit."""
    prices_cache_read: bool
    prices_cache_write: bool
    prices_cache_write_1h: bool
    units: _UnitRates | None
    """The same price in integers, when every rate is flat and a whole number of units."""

    def price(self, usage: Usage) -> Decimal | None:
        """Price ``usage`` (in :data:`CONTEXT`); ``None`` when genai-prices would reject it
        (it then decides).

        As genai-prices' ``compute_leaf_values``: each priced unit is charged for the
        count it reports less its priced parts (1-hour writes are part of the cache
        writes, cache reads and writes part of the input); a part without a price of
        its own stays in its parent.
        """
        details = usage.details
        write_1h = details.get("cache_write_1h_tokens", 0) if details else 0
        input_leaf, write_leaf = usage.input_tokens, usage.cache_write_tokens
        if self.prices_cache_read:
            input_leaf -= usage.cache_read_tokens
        if self.prices_cache_write:
            input_leaf -= write_leaf
            if self.prices_cache_write_1h:
                write_leaf -= write_1h
        if input_leaf < 0 or write_leaf < 0 or usage.reasoning_tokens > usage.output_tokens:
            return None
        counts = {
            "input_tokens": input_leaf,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": write_leaf,
            "cache_write_1h_tokens": write_1h,
            "web_searches": details.get("web_searches", 0) if details else 0,
        }
        total = self.zero
        for term in self.terms:
            price = term.price
            if not isinstance(price, Decimal):
                price = _tier_price(price, usage.input_tokens)
            total += price * Decimal(counts.get(term.usage_key, 0)) / term.per
        return total


class _Found(NamedTuple):
    """A cached model lookup."""

    provider: Provider
    model: ModelInfo
    direct: _DirectPrice | None
    """Set when the model has one fixed price that budgetkit can compute directly."""


_lock = threading.Lock()
_cache: dict[tuple[str | None, str], _Found | None] = {}
_unit_cache: dict[tuple[str | None, str], _UnitRates] = {}  # the models of _cache with them
_cache_snapshot: object = None
_direct_cache: dict[int, tuple[ModelPrice, _DirectPrice | None]] = {}
_get_snapshot: Callable[[], DataSnapshot] | None = None


def price_usage(
    usage: Usage,
    *,
    prices: Mapping[str, tuple[Decimal, Decimal]] | None = None,
    when: datetime | None = None,
) -> Decimal | None:
    """Return the USD cost of one call, or ``None`` when it cannot be priced.

    A cost the provider or gateway reported wins, except a reported cost of zero for a
    call that used tokens: that is priced from the tables like an unreported one, and is
    unknown (``None``) when no table knows the model.

    Args:
        usage: the call's usage; ``usage.model`` names the model.
        prices: a validated user price table (see :func:`validate_prices`):
            model name to ``(input, output)`` USD per million tokens. Cache
            tokens are priced as input tokens.
        when: the time of the request, for date-dependent prices; now by default.

    Returns:
        The cost as a ``Decimal``, or ``None`` when the model is unknown.
    """
    reported = usage.reported_cost_usd
    if reported is not None and (reported or not _used_anything(usage)):
        return reported
    model = usage.model
    if not model:
        return None
    with localcontext(CONTEXT):
        if prices is not None and (rates := prices.get(model)) is not None:
            return _price_with_rates(usage, rates)
        return _price_with_genai_prices(usage, model, when)


def _used_anything(usage: Usage) -> bool:
    return bool(usage.input_tokens or usage.output_tokens or any(usage.details.values()))


def price_units(
    model: str | None,
    provider: str | None,
    counts: Counts,
    prices: Mapping[str, tuple[Decimal, Decimal]] | None = None,
) -> int | None:
    """The cost of one call in units (see ``budgetkit._money``), or ``None`` when unknown.

    Exactly :func:`price_usage` rounded up to a unit. For a model with a flat genai-prices
    price in whole units per token (most models) it is integer arithmetic, which is why
    every recorded call comes here.
    """
    if not model:
        return None
    if not (prices and model in prices):
        get_snapshot = _get_snapshot  # the hot path: a cached model with integer rates
        rates = (
            _unit_cache.get((provider, model))
            if get_snapshot is not None and get_snapshot() is _cache_snapshot
            else None
        )
        if rates is None:
            try:
                found = _lookup(provider, model)
            except (LookupError, ValueError, TypeError):
                return None
            if found is None:
                return None
            rates = None if found.direct is None else found.direct.units
        if rates is not None:
            inp, out, cache_read, cache_write, reasoning = counts
            input_rate, output_rate, read_rate, write_rate, prices_read, prices_write = rates
            if prices_read:
                inp -= cache_read
            if prices_write:
                inp -= cache_write
            if inp >= 0 and reasoning <= out:  # else genai-prices decides, below
                return (
                    inp * input_rate
                    + out * output_rate
                    + cache_read * read_rate
                    + cache_write * write_rate
                )
    usd = price_usage(Usage(*counts, model=model, provider=provider), prices=prices)
    return None if usd is None else to_units(usd)


def price_estimate(
    tokens: Mapping[str, int],
    model: str | None,
    provider: str | None = None,
    prices: Mapping[str, tuple[Decimal, Decimal]] | None = None,
    *,
    when: datetime | None = None,
) -> Decimal | None:
    """Price an estimate given as token counts, like a real response.

    Args:
        tokens: counts such as ``{"input_tokens": 1000, "output_tokens": 500}``;
            the keys are :class:`~budgetkit._usage.Usage` field names.
        model: the model to price for; ``None`` cannot be priced.
        provider: a genai-prices provider id hint.
        prices: a validated user price table.
        when: the time of the request; now by default.

    Returns:
        The estimated cost, or ``None`` when the model is unknown.

    Raises:
        BudgetTypeError: ``tokens`` is not a mapping or a count is not an integer.
        BudgetConfigError: an unknown key or a negative count.
    """
    counts = _validate_estimate(tokens)
    usage = Usage(
        input_tokens=counts.get("input_tokens", 0),
        output_tokens=counts.get("output_tokens", 0),
        cache_read_tokens=counts.get("cache_read_tokens", 0),
        cache_write_tokens=counts.get("cache_write_tokens", 0),
        reasoning_tokens=counts.get("reasoning_tokens", 0),
        model=model,
        provider=provider,
    )
    return price_usage(usage, prices=prices, when=when)


def context_window(model: str | None, provider: str | None = None) -> int | None:
    """The model's context window in tokens as genai-prices knows it, or ``None``."""
    if not model:
        return None
    try:
        found = _lookup(provider, model)
    except (LookupError, ValueError, TypeError):
        return None
    window = None if found is None else found.model.context_window
    return window if isinstance(window, int) and window > 0 else None


def validate_prices(prices: object) -> dict[str, tuple[Decimal, Decimal]]:
    """Validate a user price table and convert its rates to ``Decimal``.

    Args:
        prices: a mapping of model name to ``(input, output)`` USD per million
            tokens; each rate an ``int``, ``float`` or ``Decimal``.

    Returns:
        A new dict with ``Decimal`` rates.

    Raises:
        BudgetTypeError: ``prices`` is not a mapping, a key is not a string, a
            value is not a pair, or a rate is not a number (bools and strings
            are rejected).
        BudgetConfigError: a key is empty, a value does not have two rates, or a
            rate is negative, NaN or infinite.
    """
    if not isinstance(prices, Mapping):
        msg = (
            "prices must be a mapping of model name to (input, output) USD per million "
            f"tokens, got {type(prices).__name__}"
        )
        raise BudgetTypeError(msg)
    validated: dict[str, tuple[Decimal, Decimal]] = {}
    for key, value in prices.items():
        if not isinstance(key, str):
            msg = f"prices keys must be model names (str), got {key!r} ({type(key).__name__})"
            raise BudgetTypeError(msg)
        if not key:
            msg = "prices keys must be non-empty model names, got ''"
            raise BudgetConfigError(msg)
        validated[key] = _validate_rate_pair(key, value)
    return validated


def _validate_rate_pair(key: str, value: object) -> tuple[Decimal, Decimal]:
    if not isinstance(value, (tuple, list)):
        msg = (
            f"prices[{key!r}] must be an (input, output) pair of USD per million tokens, "
            f"got {value!r} ({type(value).__name__})"
        )
        raise BudgetTypeError(msg)
    if len(value) != 2:
        msg = f"prices[{key!r}] must have exactly two rates (input, output), got {value!r}"
        raise BudgetConfigError(msg)
    return (_validate_rate(key, 0, value[0]), _validate_rate(key, 1, value[1]))


def _validate_rate(key: str, index: int, rate: object) -> Decimal:
    where = (
        f"prices[{key!r}][{index}] ({'input' if index == 0 else 'output'} USD per million tokens)"
    )
    if isinstance(rate, bool) or not isinstance(rate, (int, float, Decimal)):
        msg = f"{where} must be a number, got {rate!r} ({type(rate).__name__})"
        raise BudgetTypeError(msg)
    as_decimal = rate if isinstance(rate, Decimal) else Decimal(repr(rate))
    if not as_decimal.is_finite() or as_decimal < 0:
        msg = f"{where} must be a finite non-negative number, got {rate!r}"
        raise BudgetConfigError(msg)
    return as_decimal


def _validate_estimate(tokens: object) -> dict[str, int]:
    if not isinstance(tokens, Mapping):
        msg = f"estimate must return a number of USD or a mapping of token counts, got {tokens!r}"
        raise BudgetTypeError(msg)
    counts: dict[str, int] = {}
    for key, value in tokens.items():
        if key not in _ESTIMATE_KEYS:
            allowed = ", ".join(sorted(_ESTIMATE_KEYS))
            msg = f"estimate token mapping has an unknown key {key!r}; allowed keys: {allowed}"
            raise BudgetConfigError(msg)
        if isinstance(value, bool) or not isinstance(value, int):
            kind = type(value).__name__
            msg = f"estimate[{key!r}] must be an int token count, got {value!r} ({kind})"
            raise BudgetTypeError(msg)
        if value < 0:
            msg = f"estimate[{key!r}] must be a non-negative token count, got {value!r}"
            raise BudgetConfigError(msg)
        counts[key] = value
    return counts


def _price_with_rates(usage: Usage, rates: tuple[Decimal, Decimal]) -> Decimal:
    input_rate, output_rate = rates
    return (
        input_rate * Decimal(usage.input_tokens) + output_rate * Decimal(usage.output_tokens)
    ) / _PER_MILLION


def _price_with_genai_prices(usage: Usage, model: str, when: datetime | None) -> Decimal | None:
    try:
        found = _lookup(usage.provider, model)
        if found is None:
            return None
        direct = found.direct
        if direct is None:  # date-dependent prices: resolve them for this request
            when = when or datetime.now(tz=UTC)
            direct = _direct_price_for(found.model.get_prices(when))
        cost = direct.price(usage) if direct is not None else None
        return cost if cost is not None else _calc_price(found, usage, when)
    except (LookupError, ValueError, TypeError, ArithmeticError):
        # genai-prices: unknown model or provider, usage it rejects, or a price it cannot
        # apply. Unknown is None, never zero; pricing never breaks the caller's LLM call.
        return None


def _calc_price(found: _Found, usage: Usage, when: datetime | None) -> Decimal:
    from genai_prices import Usage as GenaiUsage
    from genai_prices.units import _get_registry  # not exported

    counts: dict[str, int] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_reasoning_tokens": usage.reasoning_tokens,
    }
    if usage.details:
        units = _get_registry().units
        counts.update(
            (key, count)
            for key, count in usage.details.items()
            if key in units and key not in _MAIN_USAGE_KEYS and key != "requests"
        )
    calculation = found.model.calc_price(
        GenaiUsage(**counts), found.provider, genai_request_timestamp=when
    )
    return calculation.total_price


def _lookup(provider: str | None, model: str) -> _Found | None:
    """Find the genai-prices model, cached per ``(provider, model)``; ``None`` if unknown."""
    global _get_snapshot, _cache_snapshot  # lazy import; one cache per snapshot
    if _get_snapshot is None:
        from genai_prices.data_snapshot import get_snapshot

        _get_snapshot = get_snapshot
    snapshot = _get_snapshot()  # changes when the user runs genai_prices.UpdatePrices
    key = (provider, model)
    if snapshot is _cache_snapshot:
        try:
            return _cache[key]
        except KeyError:
            pass
    with localcontext(CONTEXT):  # the cached rates are computed once, in budgetkit's context
        found = _find(snapshot, provider, model)
    with _lock:
        if snapshot is not _cache_snapshot:
            _cache.clear()
            _unit_cache.clear()
            _direct_cache.clear()
            _cache_snapshot = snapshot
        _cache[key] = found
        if found is not None and found.direct is not None and found.direct.units is not None:
            _unit_cache[key] = found.direct.units
    return found


def _find(snapshot: DataSnapshot, provider: str | None, model: str) -> _Found | None:
    from genai_prices.types import ModelPrice

    ref = model.removeprefix("models/")
    attempts = [provider]
    if provider is None and "/" in ref:
        attempts.append("litellm")  # "openai/gpt-4o": genai-prices splits the prefix off
    for provider_id in attempts:
        try:
            provider_info, model_info = snapshot.find_provider_model(ref, None, provider_id, None)
        except LookupError:
            continue
        fixed = model_info.prices if isinstance(model_info.prices, ModelPrice) else None
        direct = _direct_price_for(fixed) if fixed is not None else None
        return _Found(provider_info, model_info, direct)
    return None


def _direct_price_for(model_price: ModelPrice) -> _DirectPrice | None:
    """The direct computation of a price, or ``None`` when it needs genai-prices."""
    cached = _direct_cache.get(id(model_price))
    if cached is not None and cached[0] is model_price:
        return cached[1]
    direct = _build_direct_price(model_price)
    _direct_cache[id(model_price)] = (model_price, direct)
    return direct


def _build_direct_price(model_price: ModelPrice) -> _DirectPrice | None:
    from genai_prices.types import TieredPrices
    from genai_prices.units import _get_registry  # not exported

    registry = _get_registry()
    terms: list[_Term] = []
    zero = Decimal(0)
    for price_key, price in model_price.__dict__.items():
        if price_key.startswith("_") or price is None:
            continue
        if price_key not in _DIRECT_PRICE_KEYS or not _is_valid_price(price, TieredPrices):
            return None
        unit = registry.unit_for_price_key(price_key)
        if unit.usage_key != _DIRECT_PRICE_KEYS[price_key]:
            return None
        if unit.usage_key in _COUNTED_USAGE_KEYS or not isinstance(price, Decimal):
            terms.append(_Term(unit.usage_key, price, unit.per))
        else:  # a flat price of a unit budgetkit never counts: always a zero term
            zero += price * Decimal(0) / unit.per
    priced = {term.usage_key for term in terms}
    cache_read, cache_write = "cache_read_tokens" in priced, "cache_write_tokens" in priced
    cache_write_1h = "cache_write_1h_tokens" in priced
    if cache_write_1h and not cache_write:  # genai-prices rejects this price: let it say so
        return None
    return _DirectPrice(
        tuple(terms),
        zero,
        cache_read,
        cache_write,
        cache_write_1h,
        _unit_rates(terms, cache_read, cache_write),
    )


def _unit_rates(terms: list[_Term], cache_read: bool, cache_write: bool) -> _UnitRates | None:
    """Whole units per token for each term of :data:`Counts`, or ``None`` (a tier, or a
    finer rate). The other terms (1-hour writes, web searches) count zero in ``Counts``."""
    rates: dict[str, int] = {}
    for term in terms:
        if term.usage_key not in _UNIT_RATE_KEYS:
            continue
        if not isinstance(term.price, Decimal):
            return None
        per_token = term.price * UNITS_PER_USD / term.per
        if per_token != per_token.to_integral_value():
            return None
        rates[term.usage_key] = int(per_token)
    return _UnitRates(
        rates.get("input_tokens", 0),
        rates.get("output_tokens", 0),
        rates.get("cache_read_tokens", 0),
        rates.get("cache_write_tokens", 0),
        cache_read,
        cache_write,
    )


def _is_valid_price(price: object, tiered_type: type) -> bool:
    if isinstance(price, Decimal):
        return price.is_finite() and price >= 0
    if isinstance(price, tiered_type):
        tiers = getattr(price, "tiers", ())
        starts = [tier.start for tier in tiers]
        return (
            isinstance(getattr(price, "base", None), Decimal)
            and all(type(start) is int and start >= 0 for start in starts)
            and starts == sorted(starts)
            and all(isinstance(tier.price, Decimal) for tier in tiers)
        )
    return False


def _tier_price(tiered: object, input_tokens: int) -> Decimal:
    """genai-prices' cliff tiers: the highest tier whose start the request's input exceeds."""
    for tier in reversed(getattr(tiered, "tiers")):  # noqa: B009 - duck-typed TieredPrices
        if input_tokens > tier.start:
            tier_price: Decimal = tier.price
            return tier_price
    base: Decimal = getattr(tiered, "base")  # noqa: B009
    return base
