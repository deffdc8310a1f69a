"""Holding Ctrl-C back while a reserved call's books are changed, so none is half-done.

A ``KeyboardInterrupt`` lands between any two bytecodes of the main thread. Landing between
"the reservation is held" and "the call is charged" it would leave the call recorded at $0 and
its reservation held for good. :func:`deferred` takes SIGINT while the block runs and delivers
it (to the handler that was installed before) when the block is done: the book-keeping is
whole, then the interrupt goes on. Only the main thread receives SIGINT, so elsewhere it is a
no-op; costs two ``signal.signal`` calls, so only reserved calls use it.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["deferred"]

_MAIN = threading.main_thread()


@contextmanager
def deferred() -> Iterator[None]:
    """Run the block with SIGINT held back; deliver it afterwards."""
    if threading.current_thread() is not _MAIN:
        yield
        return
    pending: list[Any] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(frame)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            _deliver(previous, pending[0])


def _deliver(handler: Any, frame: Any) -> None:
    if callable(handler):
        handler(signal.SIGINT, frame)  # default_int_handler raises KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGINT)
