"""``budgetkit run [limits] -- python my_agent.py args``: budget a script without editing it.

The script runs in this interpreter. Its child processes charge the same budget: the
session lives in a ledger every process of the run can reach (the embedded one, served by
this process over a Unix socket in a private directory, or Redis with ``--redis URL``).
Forked children keep the script's session (their own connection to the ledger); new Python
interpreters (``subprocess``, ``multiprocessing`` spawn and forkserver) start with a
``sitecustomize`` that joins the session and instruments the SDKs before their code runs.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import runpy
import shlex
import sys
import time
import traceback
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._session import SessionBudget
from ..exceptions import BudgetError, BudgetExhausted
from . import EXIT_EXHAUSTED, EXIT_USAGE
from ._args import add_limit_arguments, add_pricing_arguments, limits_from_args, pricing_from_args
from ._output import fmt_usd

if TYPE_CHECKING:
    from .._values import SessionUsage

#: What names a Python interpreter: python, python3, python3.11, python.exe ...
_PYTHON = re.compile(r"python[0-9.]*(\.exe)?", re.IGNORECASE)
_USAGE = "usage: budgetkit run [limits] -- python SCRIPT [ARGS...]"

#: Set for the script's child processes: how to join the run's session (JSON).
RUN_ENV = "BUDGETKIT_RUN"

#: Seconds to wait for a handoff another process of the run is writing.
_HANDOFF_WAIT = 5.0

#: On the ``PYTHONPATH`` of the script's children: its ``sitecustomize`` joins the session.
_SITE = Path(__file__).resolve().parent / "_site"


def add_parser(sub: Any) -> None:
    """Register ``run``."""
    parser = sub.add_parser(
        "run",
        help="run a Python agent script under a budget, with openai/anthropic calls charged",
        usage="budgetkit run [-h] [limits] [--price MODEL=IN,OUT] [--on-unknown-cost "
        "{warn,error}] [--redis URL] [--handoff-dir DIR] [--name NAME] "
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
            "--max-usd. Chat completion streams are asked for their usage. Child processes "
            "charge the same budget: os.fork children, Python subprocesses and "
            "multiprocessing workers (spawn, forkserver, fork). A line on stderr sums up the "
            "spend when the script ends."
        ),
        epilog=(
            "exit codes: the script's own exit code; 3 the budget was exhausted (the "
            "handoff path is printed on stderr); 2 usage error (bad flag, limit or price, "
            "no such script, --redis unreachable)."
        ),
    )
    add_limit_arguments(parser, env_note=True)
    add_pricing_arguments(parser)
    parser.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="keep the session in Redis at URL (redis://, rediss://, unix://) instead of "
        "the ledger this process serves to the script's child processes",
    )
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
    """Run the script under a session shared with its children; map exhaustion to exit 3."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    target = _target(command)
    if isinstance(target, str):
        print(f"budgetkit run: error: {target}", file=sys.stderr)
        return EXIT_USAGE
    kind, name, argv = target
    with contextlib.ExitStack() as cleanup:
        try:
            limits = {**_limits_from_env(), **limits_from_args(args)}
            settings: dict[str, Any] = {"name": args.name, **pricing_from_args(args)}
            if args.handoff_dir is not None:
                settings["handoff_dir"] = args.handoff_dir
            url, ledger = _ledger(args.redis, cleanup)
            session = SessionBudget(**limits, **settings, ledger=ledger)
        except BudgetError as exc:
            print(f"budgetkit run: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not limits:
            print(
                "budgetkit run: warning: no limit set, so nothing stops the script; its spend "
                "is only counted. Set one with --max-usd, --max-llm-calls, --max-steps ... "
                "or BUDGETKIT_MAX_* variables.",
                file=sys.stderr,
            )
        shown = ["python", "-m", *argv] if kind == "module" else ["python", *argv]
        instructions = (
            "The script ran under budgetkit run, which stopped it at the budget; run it "
            f"again with a fresh budget: budgetkit run [limits] -- {shlex.join(shown)}"
        )
        session.update_handoff(resume_instructions=instructions)
        return _run_script(session, url, settings, instructions, kind, name, argv, cleanup)
    return EXIT_USAGE  # pragma: no cover - the block always returns


def _ledger(redis_url: str | None, cleanup: contextlib.ExitStack) -> tuple[str, Any]:
    """The URL of the run's ledger (what children join) and the ledger itself."""
    from ..ledgers import LEDGER_URL_ENV, ledger_for_url

    url = redis_url or os.environ.get(LEDGER_URL_ENV)
    if url:
        return url, ledger_for_url(url)
    from ..ledgers.embedded import EmbeddedLedger, EmbeddedLedgerServer

    server = cleanup.enter_context(EmbeddedLedgerServer())
    return server.url, EmbeddedLedger(server.url, server=server)


def _run_script(
    session: SessionBudget,
    url: str,
    settings: dict[str, Any],
    instructions: str,
    kind: str,
    name: str,
    argv: list[str],
    cleanup: contextlib.ExitStack,
) -> int:
    from .._instrument import instrument, uninstrument

    started = os.getpid()
    children = _ChildEnvironment(session, url, settings, instructions)
    instrument(session)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = argv
    code, entered = 0, False
    exhausted: BudgetExhausted | None = None
    try:
        with children, session:
            entered = True
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
        exhausted = exc
    except Exception as exc:
        if not entered:  # the ledger could not be reached: the script never ran
            print(f"budgetkit run: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        # The script failed: print its traceback without budgetkit's frames, like python does.
        _print_script_traceback()
        code = 1
    finally:
        sys.argv = old_argv
        sys.path[:] = old_path
        uninstrument()
    if os.getpid() != started:
        # A forked child of the script that returned here: the run's parent reports.
        cleanup.pop_all()
        return EXIT_EXHAUSTED if exhausted is not None else code
    result = session.result
    assert result is not None
    if exhausted is not None or session.exhausted:
        reason = exhausted.reason if exhausted is not None else result.stop_reason
        path = (exhausted.handoff_path if exhausted is not None else None) or result.handoff_path
        _report(f"budget exhausted ({reason})", result.usage, _handoff_path(session, path))
        return EXIT_EXHAUSTED
    failed = result.stop_reason == "error"  # the script raised: python's exit code 1
    outcome = (
        result.stop_reason if code == 0 or failed else f"{result.stop_reason}, exit code {code}"
    )
    _report(f"finished ({outcome})", result.usage)
    return code


class _ChildEnvironment:
    """While entered: the environment that makes the script's Python children join the
    session (budgetkit's ``sitecustomize`` first on ``PYTHONPATH``, and :data:`RUN_ENV`)."""

    def __init__(
        self, session: SessionBudget, url: str, settings: dict[str, Any], instructions: str
    ) -> None:
        handoff_dir = session.handoff_dir
        try:  # the join token, where the ledger keeps a secret (Redis)
            headers: dict[str, str] | None = dict(session.inject({}))
        except BudgetError:  # the embedded ledger's socket is private (0700): ids suffice
            headers = None
        spec = {
            "ledger": url,
            "session_id": session.session_id,
            "headers": headers,
            "handoff_dir": None if handoff_dir is None else str(handoff_dir.resolve()),
            "prices": {m: [str(i), str(o)] for m, (i, o) in session.prices.items()},
            "on_unknown_cost": settings.get("on_unknown_cost"),
            "resume_instructions": instructions,
        }
        old = os.environ.get("PYTHONPATH")
        self.values = {
            "PYTHONPATH": str(_SITE) + (os.pathsep + old if old else ""),
            RUN_ENV: json.dumps(spec),
        }
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def join_from_environment() -> None:
    """In a Python child of ``budgetkit run`` (from its ``sitecustomize``): join the run's
    session, charge the SDKs' calls to it, and leave it when the process exits.

    A child that cannot join (the ledger is gone or unreachable) does not run unbudgeted:
    it exits with code 1 and says why.
    """
    raw = os.environ.get(RUN_ENV)
    if not raw:
        return
    try:
        from ..ledgers import ledger_for_url

        spec = json.loads(raw)
        settings: dict[str, Any] = {"handoff_dir": spec.get("handoff_dir")}
        if spec.get("prices"):
            settings["prices"] = {
                model: (Decimal(i), Decimal(o)) for model, (i, o) in spec["prices"].items()
            }
        if spec.get("on_unknown_cost"):
            settings["on_unknown_cost"] = spec["on_unknown_cost"]
        headers = spec.get("headers")
        session = SessionBudget.join(
            headers or spec["session_id"],
            ledger=ledger_for_url(spec["ledger"]),
            trust_id=headers is None,  # the run's own children, through its private socket
            **settings,
        )
        if spec.get("resume_instructions"):
            session.update_handoff(resume_instructions=spec["resume_instructions"])
        session.__enter__()
    except Exception as exc:
        sys.stderr.write(
            f"budgetkit run: this process cannot join the run's budget, so it does not run "
            f"({type(exc).__name__}: {exc})\n"
        )
        sys.stderr.flush()
        os._exit(1)  # raising here would be a fatal error of the interpreter's start-up
    from .._instrument import instrument

    instrument(session)
    atexit.register(_leave, session)


def _leave(session: SessionBudget) -> None:
    with contextlib.suppress(Exception):
        session.__exit__(None, None, None)


def _handoff_path(session: SessionBudget, known: Path | None) -> Path | None:
    """Where the session's handoff is: this process's, or the one another process of the
    run writes (waited for a little while its writer is known)."""
    if known is not None or session.handoff_dir is None:
        return known
    path = session.handoff_dir / f"{session.session_id}.json"
    deadline = time.monotonic() + _HANDOFF_WAIT
    while not path.exists():
        writer = session.boundary.snapshot().handoff_writer
        if writer is None or time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    return path


def _report(what: str, usage: SessionUsage, handoff_path: Path | None = None) -> None:
    """The one line that sums up the run on stderr."""
    parts = [
        f"{usage.steps} steps",
        f"{usage.llm_calls} LLM calls",
        f"{usage.total_tokens} tokens",
        fmt_usd(usage.cost_usd),
    ]
    if usage.unpriced_calls:
        parts.append(f"{usage.unpriced_calls} calls of unknown cost (not in the USD)")
    if usage.unmeasured_calls:
        parts.append(f"{usage.unmeasured_calls} calls without usage")
    line = f"budgetkit: {what} after {', '.join(parts)}"
    if what.startswith("budget exhausted"):
        where = str(handoff_path) if handoff_path is not None else "(no handoff file written)"
        line += f"; handoff: {where}"
    print(line, file=sys.stderr)


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
