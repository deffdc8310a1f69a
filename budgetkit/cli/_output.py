"""Terminal output: ``rich`` on a terminal, plain text for pipes, CI and ``NO_COLOR``."""

from __future__ import annotations

import os
import sys
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Sequence


def fancy(stream: TextIO | None = None) -> bool:
    """Whether to draw rich output: a terminal, no ``NO_COLOR``/``CI``, ``rich`` installed."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(
    title: str, rows: Sequence[tuple[str, Any]], *, stream: TextIO | None = None
) -> None:
    """A two-column table: a rich table on a terminal, aligned ``key  value`` lines otherwise."""
    stream = stream or sys.stdout
    if fancy(stream):
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        # text, not markup: a "[red]" in an id or a summary is shown as written
        table = Table(title=escape(title), show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(escape(key), escape(str(value)))
        Console(file=stream).print(table)
        return
    width = max((len(k) for k, _ in rows), default=0)
    print(title, file=stream)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}", file=stream)


def fmt_usd(value: Any) -> str:
    """Dollars with enough digits for sub-cent LLM calls: four decimals, or three
    significant digits when smaller (``$0.0512``, ``$0.000123``); never ``$0.0000`` for a
    non-zero amount."""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite():
        return f"${amount}"
    places = 4
    if amount and abs(amount) < Decimal("0.01"):
        places = max(places, 2 - amount.adjusted())  # three significant digits
    text = f"{amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}"
    whole, _, decimals = text.partition(".")
    return f"${whole}.{decimals[:4]}{decimals[4:].rstrip('0')}"
