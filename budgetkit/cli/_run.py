"""``budgetkit run [limits] -- python my_agent.py args``: budget a script without editing it."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Any

from .._session import SessionBudget
from ..exceptions import BudgetError, BudgetExhausted
from . import EXIT_EXHAUSTED, EXIT_USAGE
from ._args import add_limit_arguments, limits_from_args


def add_parser(sub: Any) -> None:
    """Register ``run``."""
    parser = sub.add_parser(
        "run",
        help="run a Python agent script under a budget, with openai/anthropic calls charged",
        description=(
            "Runs `python SCRIPT ARGS` (or `python -m MODULE ARGS`) in this process under a "
            "session whose limits come from the flags or BUDGETKIT_* variables. Every openai "
            "and anthropic create call is charged without the script importing budgetkit; a "
            "request that names max_tokens reserves its cost first. Exit code 3 when the "
            "budget is exhausted (handoff path on stderr), the script's own code otherwise."
        ),
    )
    add_limit_arguments(parser)
    parser.add_argument("--handoff-dir", default=None, help="where the handoff is written")
    parser.add_argument("--name", default=None, help="the agent's name (span names, handoff)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- python SCRIPT [ARGS...]")
    parser.set_defaults(func=run, parser=parser)


def run(args: argparse.Namespace) -> int:
    """Run the script under a session; map exhaustion to exit code 3."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    target = _target(command)
    if isinstance(target, str):
        print(f"budgetkit run: error: {target}", file=sys.stderr)
        return EXIT_USAGE
    kind, name, argv = target
    try:
        limits = {**_limits_from_env(), **limits_from_args(args)}
        extra: dict[str, Any] = {"name": args.name}
        if args.handoff_dir is not None:
            extra["handoff_dir"] = args.handoff_dir
        session = SessionBudget(**limits, **extra)
    except BudgetError as exc:
        print(f"budgetkit run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from .._instrument import instrument, uninstrument

    instrument(session)
    old_argv = sys.argv
    sys.argv = argv
    code = 0
    try:
        with session:
            try:
                if kind == "module":
                    runpy.run_module(name, run_name="__main__", alter_sys=True)
                else:
                    sys.path.insert(0, str(Path(name).resolve().parent))
                    runpy.run_path(name, run_name="__main__")
            except SystemExit as exc:
                code = _exit_code(exc)
    except BudgetExhausted as exc:
        where = exc.handoff_path or "(no handoff file)"
        print(
            f"budgetkit: budget exhausted ({exc.reason}) at step {exc.usage.steps}, "
            f"{exc.usage.llm_calls} LLM calls, ${exc.usage.cost_usd}; handoff: {where}",
            file=sys.stderr,
        )
        return EXIT_EXHAUSTED
    finally:
        sys.argv = old_argv
        uninstrument()
    return code


def _target(command: list[str]) -> tuple[str, str, list[str]] | str:
    """``("script", path, argv)`` or ``("module", name, argv)``, or an error message."""
    if command and Path(command[0]).name.startswith("python"):
        command = command[1:]
        if command[:1] == ["-m"]:
            if len(command) < 2:
                return "-m needs a module name"
            return "module", command[1], [command[1], *command[2:]]
    if not command:
        return "no script given; usage: budgetkit run [limits] -- python SCRIPT [ARGS...]"
    script = command[0]
    if script.startswith("-"):
        return f"budgetkit run runs a Python script or -m module, got option {script!r}"
    if not Path(script).is_file():
        return f"script not found: {script}"
    return "script", script, command


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _limits_from_env() -> dict[str, Any]:
    """``BUDGETKIT_MAX_*`` variables, parsed like the flags."""
    try:
        from .._tiers import limits_from_env
    except ImportError:  # pragma: no cover - before the configuration module lands
        return {}
    return limits_from_env(os.environ)
