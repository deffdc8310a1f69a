"""``budgetkit run [limits] -- python my_agent.py args``: budget a script without editing it."""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

from .._session import SessionBudget
from ..exceptions import BudgetError, BudgetExhausted
from . import EXIT_EXHAUSTED, EXIT_USAGE
from ._args import add_limit_arguments, limits_from_args
from ._output import fmt_usd

#: What names a Python interpreter: python, python3, python3.11, python.exe ...
_PYTHON = re.compile(r"python[0-9.]*(\.exe)?", re.IGNORECASE)
_USAGE = "usage: budgetkit run [limits] -- python SCRIPT [ARGS...]"


def add_parser(sub: Any) -> None:
    """Register ``run``."""
    parser = sub.add_parser(
        "run",
        help="run a Python agent script under a budget, with openai/anthropic calls charged",
        usage="budgetkit run [-h] [limits] [--handoff-dir DIR] [--name NAME] "
        "-- python SCRIPT [ARGS...] | -- python -m MODULE [ARGS...]",
        description=(
            "Runs `python SCRIPT ARGS` (or `python -m MODULE ARGS`) in this interpreter "
            "under a session whose limits come from the flags or BUDGETKIT_MAX_* variables "
            "(BUDGETKIT_MAX_STEPS, BUDGETKIT_MAX_USD ...). Every request of the openai and "
            "anthropic clients (create, parse, stream, raw responses, beta; sync, async, "
            "streaming) is charged without the script importing budgetkit: model calls are "
            "priced from their usage, reads, token counting, files and stored state are free, "
            "other paid requests count as calls budgetkit cannot price. A request that names "
            "max_tokens (max_completion_tokens, max_output_tokens) or a stored Responses "
            "conversation reserves its worst-case cost first, so spend does not pass "
            "--max-usd. Chat completion streams are asked for their usage."
        ),
        epilog=(
            "exit codes: the script's own exit code; 3 the budget was exhausted (the "
            "handoff path is printed on stderr); 2 usage error (bad flag or limit, no such "
            "script)."
        ),
    )
    add_limit_arguments(parser, env_note=True)
    parser.add_argument(
        "--handoff-dir",
        default=None,
        metavar="DIR",
        help="where the handoff is written (default: $BUDGETKIT_HANDOFF_DIR or ./handoffs)",
    )
    parser.add_argument("--name", default=None, help="the agent's name (span names, handoff)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


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
    shown = ["python", "-m", *argv] if kind == "module" else ["python", *argv]
    session.update_handoff(
        resume_instructions="The script ran under budgetkit run, which stopped it at the "
        f"budget; run it again with a fresh budget: budgetkit run [limits] -- {shlex.join(shown)}"
    )
    from .._instrument import instrument, uninstrument

    instrument(session)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = argv
    code = 0
    try:
        with session:
            try:
                if kind == "module":
                    sys.path.insert(0, os.getcwd())  # like python -m
                    runpy.run_module(name, run_name="__main__", alter_sys=True)
                else:
                    sys.path.insert(0, str(Path(name).resolve().parent))  # like python SCRIPT
                    runpy.run_path(name, run_name="__main__")
            except SystemExit as exc:
                code = _exit_code(exc)
    except BudgetExhausted as exc:
        _report(exc.reason, exc.usage, exc.handoff_path)
        return EXIT_EXHAUSTED
    except Exception:
        # The script failed: print its traceback without budgetkit's frames, like python does.
        _print_script_traceback()
        return 1
    finally:
        sys.argv = old_argv
        sys.path[:] = old_path
        uninstrument()
    result = session.result
    if result is not None and session.exhausted:  # the script caught BudgetExhausted itself
        _report(result.stop_reason, result.usage, result.handoff_path)
        return EXIT_EXHAUSTED
    return code


def _report(reason: str, usage: Any, handoff_path: Path | None) -> None:
    where = str(handoff_path) if handoff_path is not None else "(no handoff file written)"
    print(
        f"budgetkit: budget exhausted ({reason}) after {usage.steps} steps, "
        f"{usage.llm_calls} LLM calls, {usage.total_tokens} tokens, {fmt_usd(usage.cost_usd)}; "
        f"handoff: {where}",
        file=sys.stderr,
    )


def _print_script_traceback() -> None:
    _, exc, tb = sys.exc_info()
    # Skip the frames of this module and runpy, down to the script's own.
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in (__file__, runpy.__file__)
        or tb.tb_frame.f_globals.get("__name__") == "runpy"
    ):
        tb = tb.tb_next
    if exc is not None:
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def _target(command: list[str]) -> tuple[str, str, list[str]] | str:
    """``("script", path, argv)`` or ``("module", name, argv)``, or an error message."""
    if command and _PYTHON.fullmatch(Path(command[0]).name):
        command = command[1:]
        if command[:1] == ["-m"]:
            if len(command) < 2:
                return f"-m needs a module name; {_USAGE}"
            return "module", command[1], [command[1], *command[2:]]
    if not command:
        return f"no script given; {_USAGE}"
    script = command[0]
    if script.startswith("-"):
        return f"unsupported option {script!r} (only a script or -m MODULE); {_USAGE}"
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
    from .._tiers import limits_from_env

    return limits_from_env(os.environ)
