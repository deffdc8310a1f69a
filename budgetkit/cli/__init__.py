"""The ``budgetkit`` command line: ``demo``, ``show``, ``run``, ``stats``, ``chain``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Subcommand modules; each has ``add_parser(subparsers)`` that sets ``func`` on its parser.
_COMMANDS = ("_demo", "_show", "_run", "_stats", "_chain")

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_EXHAUSTED = 3


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
    parser.add_argument("--version", action="version", version=f"budgetkit {__version__}")
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
    """Entry point of the ``budgetkit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    code: int = func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
