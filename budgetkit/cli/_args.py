"""Command-line flags for session limits, shared by ``demo`` and ``run``."""

from __future__ import annotations

import argparse
import math
from decimal import Decimal, InvalidOperation
from typing import Any

#: flag name -> (SessionBudget keyword, parser of the flag's text)
_INT_LIMITS = ("max_steps", "max_llm_calls", "max_tokens", "max_consecutive_errors")


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
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_limit_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add ``--max-steps``, ``--max-usd`` ... with the given defaults (``None``: unlimited)."""
    for name in _INT_LIMITS:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=_positive_int,
            default=defaults.get(name),
            metavar="N",
        )
    parser.add_argument(
        "--max-usd",
        dest="max_usd",
        type=_positive_usd,
        default=defaults.get("max_usd"),
        metavar="USD",
    )
    parser.add_argument(
        "--max-seconds",
        dest="max_seconds",
        type=_positive_seconds,
        default=defaults.get("max_seconds"),
        metavar="S",
    )


def limits_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line, as ``SessionBudget`` keywords (set ones only)."""
    names = (*_INT_LIMITS, "max_usd", "max_seconds")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
