"""``budgetkit stub --port N``: serve the offline OpenAI/Anthropic stand-in until stopped."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from . import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

    from ..testing import StubServer


def add_parser(sub: Any) -> None:
    """Register ``stub``."""
    parser = sub.add_parser(
        "stub",
        help="serve a local stand-in for the OpenAI and Anthropic APIs (offline, no API key)",
        description=(
            "Serves budgetkit.testing.StubServer until Ctrl-C or SIGTERM: OpenAI chat "
            "completions and responses, Anthropic messages, plain or streamed, with token "
            "usage estimated from the request size. Prints one line of environment "
            "variables (OPENAI_BASE_URL, OPENAI_API_KEY, ANTHROPIC_BASE_URL, "
            "ANTHROPIC_API_KEY) that point the openai and anthropic clients at it, e.g. "
            "for `budgetkit run --max-llm-calls 3 -- python my_agent.py` in another shell."
        ),
        epilog=(
            "exit codes: 0 stopped by Ctrl-C or SIGTERM; 2 usage error (bad port, or the "
            "address cannot be listened on)."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=0,
        metavar="N",
        help="the port to listen on (default: 0, a free port; the line printed names it)",
    )
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return value


def environment(server: StubServer) -> dict[str, str]:
    """The variables that point the openai and anthropic clients at ``server``."""
    return {
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": "stub",
        "ANTHROPIC_BASE_URL": server.anthropic_base_url,
        "ANTHROPIC_API_KEY": "stub",
    }


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; exit 0 then."""
    from ..testing import StubServer

    server = StubServer(host=args.host, port=args.port)
    try:
        server.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"budgetkit stub: error: cannot listen on {args.host} port {args.port}: {reason}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        with _stopped_by_sigterm():
            variables = environment(server).items()
            print(" ".join(f"{name}={shlex.quote(value)}" for name, value in variables), flush=True)
            print(
                f"budgetkit stub: serving the OpenAI and Anthropic APIs on {server.url} "
                "(any API key works); Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            while True:
                time.sleep(3600)
    except (KeyboardInterrupt, _SigtermError):
        pass
    finally:
        server.stop()
    count = len(server.requests)
    served = f"{count} request" + ("" if count == 1 else "s")
    print(f"budgetkit stub: stopped after {served}", file=sys.stderr)
    return EXIT_OK


class _SigtermError(Exception):
    """SIGTERM arrived."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _SigtermError


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`_SigtermError` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can handle signals
        return
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
