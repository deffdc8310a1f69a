"""The ``budgetkit`` command line: ``demo``, ``show``, ``run``, ``stats``, ``chain``, ``stub``,
``accounts``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import TYPE_CHECKING

from .._version import VERSION

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Subcommand modules; each has ``add_parser(subparsers)`` that sets ``func`` on its parser.
_COMMANDS = ("_demo", "_show", "_run", "_stats", "_chain", "_stub", "_accounts")

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_EXHAUSTED = 3
#: Like a tool killed by SIGPIPE (128 + 13): the reader of our output went away.
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every available subcommand."""
    parser = _Parser(
        prog="budgetkit",
        description="Hard, observable, resumable budgets for AI-agent code.",
    )
    parser.add_argument("--version", action="version", version=f"budgetkit {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # a command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``budgetkit`` console script.

    Exit codes: 0 success, 1 invalid input file, 2 usage error, 3 budget exhausted
    (``run``), 130 interrupted, 141 the output pipe was closed (``... | head``).
    """
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return EXIT_USAGE
        code: int = func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("budgetkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the final flush at exit does not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
