"""``budgetkit chain DIR``: the chains of a handoff directory, their usage and their state;
``--reclaim ID`` releases the claim on a handoff by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._chainfiles import ChainSession, ChainView, scan
from .._claims import (
    DEFAULT_MAX_ATTEMPTS,
    as_json,
    check_max_attempts,
    check_shared_directory,
    describe,
    release,
)
from .._files import check_session_id
from .._lineage import usage_to_dict
from ..exceptions import BudgetConfigError, BudgetTypeError, ChainError, HandoffError
from . import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from ._output import fmt_usd, shown

if TYPE_CHECKING:
    import argparse


def add_parser(sub: Any) -> None:
    """Register ``chain``."""
    parser = sub.add_parser(
        "chain",
        help="show the chains of sessions in a handoff directory",
        description="Shows each chain of a handoff directory: its sessions, its cumulative "
        "usage against its chain caps, and whether it is finished, pending (a handoff waits "
        "to be resumed, or to be retried after a failed attempt), running (its newest handoff "
        "is claimed and the claim's lease is live), stale (claimed, but the lease expired: the "
        "worker died; it is claimable again), failed (its attempts are used up), ended (resumed "
        "by a session that ended with its record elsewhere) or over caps. With --reclaim ID, "
        "releases the claim on the handoff of session ID instead, so it is pending again.",
        epilog="exit codes: 0 every file was read (or the claim was released); 1 the directory "
        "is missing, a file is unreadable or contradicts its parent (another chain, a cycle), "
        "or the claim was not released; 2 usage error.",
    )
    parser.add_argument("directory", metavar="DIR", help="a handoff directory")
    parser.add_argument("--json", action="store_true", help="print the chains as JSON")
    parser.add_argument(
        "--max-attempts",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        help=f"the retry cap the states are judged by (default {DEFAULT_MAX_ATTEMPTS})",
    )
    parser.add_argument(
        "--reclaim",
        metavar="ID",
        help="release the claim on the handoff of session ID (a stale or failed one; a live "
        "one only with --force); its attempts are counted from 1 again",
    )
    parser.add_argument(
        "--force", action="store_true", help="with --reclaim: release a live claim too"
    )
    parser.set_defaults(func=run)


def _usage_error(message: str) -> int:
    print(f"budgetkit chain: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Print every chain, then any problem (on stderr, exit 1); or release one claim."""
    try:
        max_attempts = check_max_attempts(args.max_attempts)
    except (BudgetConfigError, BudgetTypeError) as exc:
        return _usage_error(f"--max-attempts: {exc}")
    if args.force and args.reclaim is None:
        return _usage_error("--force goes with --reclaim ID")
    if args.reclaim is not None:
        return _reclaim(Path(args.directory), args.reclaim, force=args.force)
    found = scan(args.directory, max_attempts=max_attempts)
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
        print(f"budgetkit chain: error: {shown(problem)}", file=sys.stderr)
    return EXIT_INVALID if found.problems else EXIT_OK


def _reclaim(directory: Path, session_id: str, *, force: bool) -> int:
    """``--reclaim ID``: release the claim on one handoff."""
    try:
        check_session_id(session_id, "--reclaim")
    except (BudgetConfigError, BudgetTypeError) as exc:
        return _usage_error(f"{exc} (a session id)")
    path = directory / f"{session_id}.json"
    try:
        check_shared_directory(directory)
        if not path.is_file():
            raise HandoffError(f"no handoff of session {session_id!r} in {str(directory)!r}")
        _before, done = release(path, force=force)
    except (BudgetConfigError, HandoffError, ChainError) as exc:  # refused: a ChainError
        print(f"budgetkit chain: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{done}: the handoff of session {session_id} is pending again")
    return EXIT_OK


def _status(view: ChainView) -> str:
    over = view.over_caps
    if over is not None:
        return f"{view.status} ({over[0]}: {over[1]})"
    claim = view.newest.claim
    if view.status == "failed" and claim is not None:
        last = claim.last_error or "the last lease expired"
        return f"failed ({claim.attempts} of {claim.max_attempts} attempts; last: {last})"
    return view.status


def _state(s: ChainSession) -> str:
    if s.handoff is None or s.claim is None:
        return ""
    return describe(s.claim)


def _print_chain(view: ChainView) -> None:
    count = len(view.sessions)
    print(shown(f"chain {view.root_session_id}: {_status(view)}, {count} session(s) on file"))
    width = max(len(s.session_id) for s in view.sessions)
    for s in view.sessions:
        state = _state(s)
        line = (
            f"  {s.lineage.attempt:>3}  {s.session_id.ljust(width)}  {s.stop_reason:<22}  "
            f"{s.usage['steps']:>6} steps  {fmt_usd(s.usage['cost_usd'])}  {state}"
        )
        print(shown(line.rstrip()))
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
                "claim": None if s.claim is None else as_json(s.claim),
                "created_at": s.created_at,
                "usage": usage_to_dict(s.usage),
            }
            for s in view.sessions
        ],
    }
