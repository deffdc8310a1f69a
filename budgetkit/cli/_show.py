"""``budgetkit show HANDOFF``: pretty-print and validate a handoff file."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from .._handoff import Handoff
from ..exceptions import HandoffError
from . import EXIT_INVALID, EXIT_OK
from ._output import fmt_usd, print_table, shown

if TYPE_CHECKING:
    import argparse


def add_parser(sub: Any) -> None:
    """Register ``show``."""
    parser = sub.add_parser(
        "show",
        help="pretty-print and validate a handoff file",
        description="Shows why a session stopped, its usage against its limits, the pending "
        "tasks, the summary and how to resume.",
        epilog="exit codes: 0 a valid handoff; 1 the file is missing, corrupt or not a "
        "budgetkit handoff; 2 usage error.",
    )
    parser.add_argument("handoff", metavar="HANDOFF", help="path to a handoff JSON file")
    parser.add_argument("--json", action="store_true", help="print the validated handoff as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the handoff, or a one-line error and exit 1."""
    try:
        handoff = Handoff.load(args.handoff)
    except HandoffError as exc:
        print(f"budgetkit show: error: {shown(exc)}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(handoff.to_dict(), indent=2, default=str))
        return EXIT_OK
    rows: list[tuple[str, Any]] = [
        ("session", handoff.session_id),
        ("name", handoff.name or "-"),
        ("resumed from", handoff.parent_session_id or "-"),
        ("stop reason", handoff.reason),
        ("stopped at step", handoff.stopped_at_step),
        ("created", handoff.created_at),
    ]
    rows += _usage_rows(handoff)
    rows += _lineage_rows(handoff)
    rows += _state_rows(handoff)
    if handoff.trace_id:
        rows.append(("trace id", handoff.trace_id))
    print_table(f"handoff {args.handoff}", rows)
    print("\nPending tasks:" if handoff.pending_tasks else "\nPending tasks: none")
    for task in handoff.pending_tasks:
        text = task if isinstance(task, str) else json.dumps(task, default=str)
        print(f"  - {shown(text)}")
    if handoff.context_summary:
        print("\nSummary:")
        for line in handoff.context_summary.splitlines():
            print(f"  {shown(line)}")
    print(f"\nTo resume:\n  {shown(handoff.resume_instructions or '-')}")
    return EXIT_OK


#: (row label, usage key, limit key, is USD)
_DIMENSIONS = (
    ("steps", "steps", "max_steps", False),
    ("LLM calls", "llm_calls", "max_llm_calls", False),
    ("tokens", "total_tokens", "max_tokens", False),
    ("input tokens", "input_tokens", "max_input_tokens", False),
    ("output tokens", "output_tokens", "max_output_tokens", False),
    ("cost", "cost_usd", "max_usd", True),
    ("seconds", "elapsed_seconds", "max_seconds", False),
)


def _usage_rows(handoff: Handoff) -> list[tuple[str, Any]]:
    """Usage against limits: every limited dimension, plus steps, LLM calls, tokens and cost."""
    rows: list[tuple[str, Any]] = []
    for label, used_key, limit_key, usd in _DIMENSIONS:
        used = handoff.usage.get(used_key)
        limit = handoff.limits.get(limit_key)
        if limit is None and label not in ("steps", "LLM calls", "tokens", "cost"):
            continue
        if used is None and limit is None:
            continue
        text = _fmt(used, usd) if used is not None else "?"
        if limit is not None:
            text += f" of {_fmt(limit, usd)}"
            if limit_key == handoff.reason:
                text += "  <- tripped"
        rows.append((label, text))
    errors = handoff.limits.get("max_consecutive_errors")
    if errors is not None:
        rows.append(("max errors in a row", errors))
    return rows


def _lineage_rows(handoff: Handoff) -> list[tuple[str, Any]]:
    """The chain: this session's place in it, its usage so far, and its caps."""
    lineage = handoff.lineage
    if lineage is None or (lineage.attempt == 1 and not lineage.caps):
        return []  # a first session without chain caps: the usage rows say it all
    used = lineage.cumulative_usage
    rows: list[tuple[str, Any]] = [
        ("chain", f"session {lineage.attempt} of chain {lineage.root_session_id}"),
        ("chain steps", _capped(used.get("steps"), lineage.caps.max_total_steps, usd=False)),
        ("chain cost", _capped(used.get("cost_usd"), lineage.caps.max_total_usd, usd=True)),
    ]
    if lineage.caps.max_sessions is not None:
        rows.append(("chain sessions", f"{lineage.attempt} of {lineage.caps.max_sessions}"))
    return rows


def _state_rows(handoff: Handoff) -> list[tuple[str, Any]]:
    """Where a framework adapter's conversation is (``extra.framework_state``), if any."""
    state = handoff.extra.get("framework_state")
    if not isinstance(state, dict):
        return []
    size = f"{state.get('bytes', 0) / 1024:.1f} KiB"
    if "sidecar" in state:
        where = f"in {state['sidecar']}"
    elif "omitted" in state:
        where = f"not stored: {state['omitted']}"
    else:
        where = "inline"
    return [("framework state", f"{state['framework']}, {size}, {where}")]


def _capped(used: Any, cap: Any, *, usd: bool) -> str:
    text = "?" if used is None else _fmt(used, usd)
    return text if cap is None else f"{text} of {_fmt(cap, usd)}"


def _fmt(value: Any, usd: bool) -> str:
    if usd:
        try:
            return fmt_usd(value)
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
