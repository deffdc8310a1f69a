"""``budgetkit show HANDOFF``: pretty-print and validate a handoff file."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from .._handoff import Handoff
from ..exceptions import HandoffError
from . import EXIT_INVALID, EXIT_OK
from ._output import fancy, print_table

if TYPE_CHECKING:
    import argparse


def add_parser(sub: Any) -> None:
    """Register ``show``."""
    parser = sub.add_parser(
        "show",
        help="pretty-print and validate a handoff file",
        description="Shows why a session stopped, its usage against its limits, the pending "
        "tasks, the summary and how to resume. Exit code 1 when the file is not a valid handoff.",
    )
    parser.add_argument("handoff", metavar="HANDOFF", help="path to a handoff JSON file")
    parser.add_argument("--json", action="store_true", help="print the validated handoff as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the handoff, or a one-line error and exit 1."""
    try:
        handoff = Handoff.load(args.handoff)
    except HandoffError as exc:
        print(f"budgetkit show: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(handoff.to_dict(), indent=2))
        return EXIT_OK
    rows: list[tuple[str, Any]] = [
        ("session", handoff.session_id),
        ("resumed from", handoff.parent_session_id or "-"),
        ("stopped at step", handoff.stopped_at_step),
        ("reason", handoff.reason),
        ("created", handoff.created_at),
    ]
    for key, limit in handoff.limits.items():
        if limit is None:
            continue
        used_key = _USED.get(key)
        used = handoff.usage.get(used_key) if used_key else None
        rows.append((key, f"{used} of {limit}" if used is not None else limit))
    rows.append(("cost (USD)", handoff.usage.get("cost_usd", "-")))
    if handoff.trace_id:
        rows.append(("trace id", handoff.trace_id))
    print_table(f"handoff {args.handoff}", rows)
    print("\nPending tasks:" if handoff.pending_tasks else "\nPending tasks: none")
    for task in handoff.pending_tasks:
        print(f"  - {task}")
    if handoff.context_summary:
        print(f"\nSummary:\n  {handoff.context_summary}")
    print(f"\nTo resume:\n  {handoff.resume_instructions}")
    if fancy():
        sys.stdout.flush()
    return EXIT_OK


_USED = {
    "max_steps": "steps",
    "max_llm_calls": "llm_calls",
    "max_tokens": "total_tokens",
    "max_input_tokens": "input_tokens",
    "max_output_tokens": "output_tokens",
    "max_usd": "cost_usd",
    "max_seconds": "elapsed_seconds",
}
