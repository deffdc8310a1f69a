"""``budgetkit accounts``: each account's spend in its current window against its limits."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ..exceptions import BudgetError
from ..ledgers import LEDGER_URL_ENV, ledger_for_url
from . import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from ._output import fmt_usd, print_table, shown

if TYPE_CHECKING:
    import argparse

    from .._account import AccountUsage


def add_parser(sub: Any) -> None:
    """Register ``accounts``."""
    parser = sub.add_parser(
        "accounts",
        help="show each account's spend per window against its limits",
        description="Reads the accounts of a shared ledger (Redis, or an embedded ledger's "
        "budgetkit+unix:// URL) and shows each one's usage in its current window, its limits "
        "and when the window resets.",
        epilog="exit codes: 0 shown; 1 the ledger is unreachable or failed; 2 usage error "
        "(no ledger given).",
    )
    parser.add_argument(
        "--ledger",
        metavar="URL",
        help=f"the ledger's URL (default: ${LEDGER_URL_ENV})",
    )
    parser.add_argument("--json", action="store_true", help="print the accounts as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print every account of the ledger, or a one-line error."""
    url = args.ledger or os.environ.get(LEDGER_URL_ENV)
    if not url:
        print(
            f"budgetkit accounts: error: no ledger: pass --ledger URL or set {LEDGER_URL_ENV} "
            "(an in-process account lives in its own process's memory)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        usages = sorted(ledger_for_url(url).account_usages(), key=lambda u: u.account_id)
    except BudgetError as exc:  # LedgerUnavailableError included
        print(f"budgetkit accounts: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps([u.to_dict() for u in usages], indent=2))
        return EXIT_OK
    if not usages:
        print("no accounts in this ledger")
        return EXIT_OK
    for index, usage in enumerate(usages):
        if index:
            print()
        print_table(f"account {printable(usage.account_id)}", rows(usage))
    return EXIT_OK


def rows(usage: AccountUsage) -> list[tuple[str, Any]]:
    """The window, then each dimension: used, of its limit (and the share) when it has one."""
    out: list[tuple[str, Any]] = [
        ("window", usage.window),
        ("started", usage.window_start.isoformat()),
        ("resets at", usage.resets_at.isoformat()),
    ]
    for label, limit in (
        ("usd", "max_usd"),
        ("steps", "max_steps"),
        ("llm calls", "max_llm_calls"),
        ("tokens", "max_tokens"),
    ):
        used = usage.used(limit)
        cap = usage.limits.get(limit)
        shown = fmt_usd(used) if limit == "max_usd" else str(used)
        if cap is None:
            out.append((label, f"{shown} (no limit)"))
            continue
        of = fmt_usd(cap) if limit == "max_usd" else str(cap)
        share = float(used) / float(cap) * 100
        out.append((label, f"{shown} of {of} ({share:.1f}%)"))
    if usage.reserved_usd:
        out.append(("in flight", f"{fmt_usd(usage.reserved_usd)} reserved"))
    return out


def printable(text: str) -> str:
    """``text`` quoted, its control (and other unprintable) characters escaped."""
    return f"'{shown(text)}'"
