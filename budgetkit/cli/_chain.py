"""``budgetkit chain DIR``: the chains of a handoff directory, their usage and their state."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from .._chainfiles import ChainView, scan
from .._lineage import usage_to_dict
from . import EXIT_INVALID, EXIT_OK
from ._output import fmt_usd

if TYPE_CHECKING:
    import argparse


def add_parser(sub: Any) -> None:
    """Register ``chain``."""
    parser = sub.add_parser(
        "chain",
        help="show the chains of sessions in a handoff directory",
        description="Shows each chain of a handoff directory: its sessions, its cumulative "
        "usage against its chain caps, and whether it is finished, pending (a handoff waits "
        "to be resumed), running (its newest handoff is claimed, no result yet) or over caps.",
        epilog="exit codes: 0 every file was read; 1 the directory is missing, or a file is "
        "unreadable or contradicts its parent (another chain, a cycle); 2 usage error.",
    )
    parser.add_argument("directory", metavar="DIR", help="a handoff directory")
    parser.add_argument("--json", action="store_true", help="print the chains as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print every chain, then any problem (on stderr, exit 1)."""
    found = scan(args.directory)
    if args.json:
        doc = {
            "directory": args.directory,
            "chains": [_chain_doc(view) for view in found.chains],
            "problems": found.problems,
            "unreadable": [{"file": str(path), "error": why} for path, why in found.unreadable],
        }
        print(json.dumps(doc, indent=2))
    else:
        if not found.chains and not found.problems:
            print(f"no chains in {args.directory}")
        for i, view in enumerate(found.chains):
            if i:
                print()
            _print_chain(view)
    for problem in found.problems:
        print(f"budgetkit chain: error: {problem}", file=sys.stderr)
    return EXIT_INVALID if found.problems else EXIT_OK


def _status(view: ChainView) -> str:
    over = view.over_caps
    return view.status if over is None else f"{view.status} ({over[0]}: {over[1]})"


def _print_chain(view: ChainView) -> None:
    count = len(view.sessions)
    print(f"chain {view.root_session_id}: {_status(view)}, {count} session(s) on file")
    width = max(len(s.session_id) for s in view.sessions)
    for s in view.sessions:
        state = ""
        if s.handoff is not None:
            state = f"resumed by {s.claimed_by or '?'}" if s.claimed else "not resumed"
        print(
            f"  {s.lineage.attempt:>3}  {s.session_id.ljust(width)}  {s.stop_reason:<22}  "
            f"{s.usage['steps']:>6} steps  {fmt_usd(s.usage['cost_usd'])}  {state}".rstrip()
        )
    total, caps = view.cumulative_usage, view.caps
    steps = f"{total['steps']} steps"
    if caps.max_total_steps is not None:
        steps += f" of {caps.max_total_steps}"
    cost = fmt_usd(total["cost_usd"])
    if caps.max_total_usd is not None:
        cost += f" of {fmt_usd(caps.max_total_usd)}"
    sessions = f"{view.newest.lineage.attempt} session(s)"
    if caps.max_sessions is not None:
        sessions += f" of {caps.max_sessions}"
    print(f"  total: {steps}, {cost}, {total['llm_calls']} LLM calls, {sessions}")


def _chain_doc(view: ChainView) -> dict[str, Any]:
    over = view.over_caps
    return {
        "root_session_id": view.root_session_id,
        "status": view.status,
        "over_caps": None if over is None else {"cap": over[0], "detail": over[1]},
        "caps": view.caps.as_dict(),
        "cumulative_usage": usage_to_dict(view.cumulative_usage),
        "sessions": [
            {
                "attempt": s.lineage.attempt,
                "session_id": s.session_id,
                "stop_reason": s.stop_reason,
                "file": str(s.path),
                "claimed": s.claimed,
                "claimed_by": s.claimed_by,
                "created_at": s.created_at,
                "usage": usage_to_dict(s.usage),
            }
            for s in view.sessions
        ],
    }
