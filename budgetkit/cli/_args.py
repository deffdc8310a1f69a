"""Command-line flags for session limits, shared by ``demo`` and ``run``."""

from __future__ import annotations

import argparse
import math
from decimal import Decimal, InvalidOperation
from typing import Any

from .._limits import to_usd
from ..exceptions import BudgetError

#: Whole-number limits: SessionBudget keyword -> help text.
_INT_LIMITS = {
    "max_steps": "stop before step N+1 (@budget.step calls)",
    "max_llm_calls": "stop before LLM call N+1",
    "max_tokens": "stop once more than N tokens (input + output) were used",
    "max_input_tokens": "stop once more than N input tokens were used",
    "max_output_tokens": "stop once more than N output tokens were used",
    "max_consecutive_errors": "stop after N calls in a row that raised",
    "max_repeats": "stop after the same step is called with equal arguments N times in a row",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _positive_usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"expected an amount in US dollars, got {text!r}"
        ) from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive amount in US dollars, got {text!r}")
    try:
        return to_usd(value, "--max-usd", limit=True)
    except BudgetError as exc:  # out of bounds: at most 1E+15, at least 1E-30
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_limit_arguments(
    parser: argparse.ArgumentParser, *, env_note: bool = False, **defaults: Any
) -> None:
    """Add ``--max-steps``, ``--max-usd`` ... with the given defaults (``None``: unlimited)."""
    group = parser.add_argument_group(
        "limits",
        "Unset limits are unlimited."
        + (" Each flag overrides its BUDGETKIT_MAX_* variable." if env_note else ""),
    )

    def note(name: str, text: str) -> str:
        default = defaults.get(name)
        return text + (f" (default: {default})" if default is not None else "")

    for name, text in _INT_LIMITS.items():
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=_positive_int,
            default=defaults.get(name),
            metavar="N",
            help=note(name, text),
        )
    group.add_argument(
        "--max-usd",
        dest="max_usd",
        type=_positive_usd,
        default=defaults.get("max_usd"),
        metavar="USD",
        help=note("max_usd", "stop before spend passes USD dollars"),
    )
    group.add_argument(
        "--max-seconds",
        dest="max_seconds",
        type=_positive_seconds,
        default=defaults.get("max_seconds"),
        metavar="S",
        help=note("max_seconds", "stop at the first boundary after S seconds"),
    )


def limits_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line, as ``SessionBudget`` keywords (set ones only)."""
    names = (*_INT_LIMITS, "max_usd", "max_seconds")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _price(text: str) -> tuple[str, tuple[Decimal, Decimal]]:
    """``MODEL=IN,OUT``: a model's USD per million input and output tokens."""
    model, equals, rates = text.rpartition("=")
    parts = rates.split(",")
    try:
        if not equals or not model.strip() or len(parts) != 2:
            raise InvalidOperation
        pair = (Decimal(parts[0].strip()), Decimal(parts[1].strip()))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"expected MODEL=IN,OUT (USD per million input and output tokens, e.g. "
            f"my-model=0.15,0.60), got {text!r}"
        ) from None
    if not all(p.is_finite() and p >= 0 for p in pair):
        raise argparse.ArgumentTypeError(
            f"prices must be non-negative amounts in US dollars per million tokens, got {text!r}"
        )
    return model.strip(), pair


def add_pricing_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--price MODEL=IN,OUT`` (repeatable) and ``--on-unknown-cost {warn,error}``."""
    group = parser.add_argument_group("pricing")
    group.add_argument(
        "--price",
        dest="prices",
        type=_price,
        action="append",
        default=[],
        metavar="MODEL=IN,OUT",
        help="USD per million input and output tokens of MODEL, over the bundled price "
        "table (for private or new models); repeatable",
    )
    group.add_argument(
        "--on-unknown-cost",
        dest="on_unknown_cost",
        choices=("warn", "error"),
        default=None,
        help="with a USD limit, what a call whose cost is unknown does: warn (a "
        "CostUnknownWarning), or error (stop at the next call, reason cost_unknown); "
        "default: as SessionBudget",
    )


def pricing_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``prices`` and ``on_unknown_cost`` as ``SessionBudget`` keywords (given ones only)."""
    found: dict[str, Any] = {}
    if args.prices:
        found["prices"] = dict(args.prices)
    if args.on_unknown_cost is not None:
        found["on_unknown_cost"] = args.on_unknown_cost
    return found
