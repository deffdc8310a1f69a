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


def shown(value: object) -> str:
    """``value`` as text safe to print on a terminal: every character that is not printable
    (controls, escape sequences' introducers, line separators, bidirectional overrides) is
    written as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``). For values read from
    files, which anyone who can write the directory may have written."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_table(
    title: str, rows: Sequence[tuple[str, Any]], *, stream: TextIO | None = None
) -> None:
    """A two-column table: a rich table on a terminal, aligned ``key  value`` lines otherwise.
    Every cell is :func:`shown`, and rich gets it as text, never as markup."""
    stream = stream or sys.stdout
    cells = [(shown(key), shown(value)) for key, value in rows]
    if fancy(stream):
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # text, not markup: a "[red]" in an id or a summary is shown as written
        table = Table(title=Text(shown(title)), show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for key, value in cells:
            table.add_row(Text(key), Text(value))
        Console(file=stream).print(table)
        return
    width = max((len(k) for k, _ in cells), default=0)
    print(shown(title), file=stream)
    for key, value in cells:
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
