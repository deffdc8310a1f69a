"""``budgetkit stats SESSION_LOG``: percentiles, stop reasons and recommended limits."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO

from .. import _stats
from .._session_log import read_records, session_log_path
from . import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from ._output import fancy

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from pathlib import Path

    from .._stats import DimensionStats, Number, Stats

PROG = "budgetkit stats"

#: Corrupt lines reported one by one; the rest are counted.
MAX_REPORTED = 20

#: A dimension whose limit stopped more than this share of sessions gets a warning note.
CENSORED_SHARE = 0.05

_HEADERS = ("dimension", "p50", "p95", "max", "limit", "stopped", "recommended")


def add_parser(subparsers: Any) -> None:
    """Add the ``stats`` subcommand to the ``budgetkit`` parser."""
    parser = subparsers.add_parser(
        "stats",
        help="summarise a session log and recommend limits",
        description=(
            "Summarise a session log (one JSON record per finished session): p50, p95 and "
            "max of steps, LLM calls, tokens, cost and seconds (nearest-rank percentiles), "
            "how often each limit stopped a session, and a recommended limit per dimension "
            "(p95 + 20%, rounded up; USD to the cent). Corrupt lines are reported on stderr "
            "and skipped."
        ),
    )
    parser.add_argument(
        "session_log",
        metavar="SESSION_LOG",
        nargs="?",
        help="the session log (JSON lines); default $BUDGETKIT_SESSION_LOG",
    )
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        help="also draw one histogram per dimension, limits marked, to this PNG "
        "(needs budgetkit[stats])",
    )
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``budgetkit stats``; returns the exit code."""
    path = session_log_path(args.session_log) if args.session_log else session_log_path()
    if path is None:
        print(
            f"{PROG}: no SESSION_LOG given and $BUDGETKIT_SESSION_LOG is not set", file=sys.stderr
        )
        return EXIT_USAGE
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                f"{PROG}: --plot needs matplotlib; install budgetkit's [stats] extra",
                file=sys.stderr,
            )
            return EXIT_USAGE

    corrupt = 0

    def on_corrupt(source: Path, number: int, problem: str) -> None:
        nonlocal corrupt
        corrupt += 1
        if corrupt <= MAX_REPORTED:
            print(f"{PROG}: {source}:{number}: corrupt record skipped: {problem}", file=sys.stderr)

    try:
        records = [record for _, record in read_records(path, on_corrupt=on_corrupt)]
    except OSError as exc:
        print(f"{PROG}: cannot read {str(path)!r}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    if corrupt > MAX_REPORTED:
        print(
            f"{PROG}: ... {corrupt - MAX_REPORTED} more corrupt records skipped ({corrupt} in all)",
            file=sys.stderr,
        )
    if not records:
        print(f"{PROG}: {path}: no valid session records", file=sys.stderr)
        return EXIT_INVALID

    stats = _stats.compute_stats(records)
    if args.json:
        doc = stats.to_dict()
        doc["source"] = str(path)
        doc["corrupt_records"] = corrupt
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_report(stats, path, sys.stdout)

    if args.plot:
        try:
            plot_stats(stats, args.plot)
        except OSError as exc:
            print(f"{PROG}: cannot write {args.plot!r}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_INVALID
        print(f"{PROG}: wrote {args.plot}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------- table
def _fmt(dimension: str, value: Number | None) -> str:
    if value is None:
        return "-"
    if dimension == "cost_usd":
        amount = Decimal(str(value))
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and exponent > -2:
            amount = amount.quantize(Decimal("0.01"))  # at least cents: $0.50, not $0.5
        return f"${amount}"
    if dimension == "elapsed_seconds":
        return f"{value:,}s" if isinstance(value, int) else f"{float(value):,.1f}s"
    return f"{int(value):,}"


def _fmt_limits(dim: DimensionStats) -> str:
    if not dim.limits:
        return "-"
    if len(dim.limits) <= 3:
        return ", ".join(_fmt(dim.name, v) for v in dim.limits)
    return f"{_fmt(dim.name, dim.limits[0])}..{_fmt(dim.name, dim.limits[-1])}"


def _rows(stats: Stats) -> list[tuple[str, ...]]:
    return [
        (
            dim.name,
            _fmt(dim.name, dim.p50),
            _fmt(dim.name, dim.p95),
            _fmt(dim.name, dim.max),
            _fmt_limits(dim),
            f"{dim.stopped:,}",
            _fmt(dim.name, dim.recommended),
        )
        for dim in stats.dimensions
    ]


def _notes(stats: Stats) -> list[str]:
    notes = []
    for dim in stats.dimensions:
        if dim.stopped and dim.stopped > CENSORED_SHARE * stats.sessions:
            notes.append(
                f"{dim.stopped} sessions were stopped by {dim.limit_name}; they needed more, "
                f"so the recommended {dim.limit_name} is a lower bound."
            )
    if stats.unpriced_sessions:
        notes.append(
            f"{stats.unpriced_sessions} sessions made LLM calls of unknown cost; "
            "their cost_usd is a lower bound."
        )
    return notes


def _print_report(stats: Stats, path: Path, out: TextIO) -> None:
    title = f"{stats.sessions:,} sessions in {path} (nearest-rank percentiles)"
    rows = _rows(stats)
    reasons = [(reason, f"{count:,}") for reason, count in stats.stop_reasons.items()]
    if fancy(out):
        _print_rich(title, rows, reasons, _notes(stats), out)
        return
    print(title, file=out)
    print(file=out)
    _print_plain(_HEADERS, rows, out)
    print(file=out)
    _print_plain(("stop reason", "sessions"), reasons, out)
    for note in _notes(stats):
        print(f"note: {note}", file=out)


def _print_plain(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    for line in (headers, *rows):
        cells = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)


def _print_rich(
    title: str,
    rows: Sequence[Sequence[str]],
    reasons: Sequence[Sequence[str]],
    notes: Sequence[str],
    out: TextIO,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out)
    table = Table(title=title)
    for index, header in enumerate(_HEADERS):
        table.add_column(header, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    reason_table = Table(title="stop reasons")
    reason_table.add_column("stop reason")
    reason_table.add_column("sessions", justify="right")
    for row in reasons:
        reason_table.add_row(*row)
    console.print(reason_table)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


# ---------------------------------------------------------------------------- plot
def plot_stats(stats: Stats, path: str | Path) -> None:
    """Draw one histogram per dimension to a PNG, with configured limits marked.

    Configured limits are red dashed lines, the p95 a grey dotted line and the recommended
    limit a green dash-dot line. matplotlib is imported here (``budgetkit[stats]``) and used
    without ``pyplot``, so no GUI backend or global state is involved.

    Raises:
        ImportError: matplotlib is not installed.
        OSError: the file cannot be written.
    """
    from matplotlib.figure import Figure

    dims = [d for d in stats.dimensions if d.count]
    fig = Figure(figsize=(9, 2.8 * max(len(dims), 1)), layout="constrained")
    axes = fig.subplots(nrows=max(len(dims), 1), ncols=1, squeeze=False)[:, 0]
    for ax, dim in zip(axes, dims, strict=False):
        values = [float(v) for v in dim.values]
        bins = max(1, min(40, len(set(values))))
        ax.hist(values, bins=bins, color="#4C72B0", alpha=0.85)
        for limit in dim.limits:
            ax.axvline(
                float(limit),
                color="#C44E52",
                linestyle="--",
                linewidth=1.5,
                label=f"{dim.limit_name} = {_fmt(dim.name, limit)}",
            )
        if dim.p95 is not None:
            ax.axvline(float(dim.p95), color="0.4", linestyle=":", label="p95")
        if dim.recommended is not None:
            ax.axvline(
                float(dim.recommended),
                color="#55A868",
                linestyle="-.",
                label=f"recommended = {_fmt(dim.name, dim.recommended)}",
            )
        ax.set_title(
            f"{dim.name}: n={dim.count}, p50={_fmt(dim.name, dim.p50)}, "
            f"p95={_fmt(dim.name, dim.p95)}, max={_fmt(dim.name, dim.max)}",
            fontsize=10,
        )
        ax.set_ylabel("sessions")
        ax.legend(fontsize=8, loc="best")
    if not dims:
        axes[0].set_title("no sessions")
    fig.suptitle(f"budgetkit: {stats.sessions} sessions")
    fig.savefig(path, format="png", dpi=100)
