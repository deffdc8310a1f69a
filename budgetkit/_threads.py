"""Threads: calls that lost their session's context, and sessions whose threads inherit it.

A plain ``threading.Thread`` starts in an empty context, so a decorated call in it finds no
session and would run uncharged. budgetkit counts the sessions open in the process: a
decorated call that finds none in its context while one is open warns
(:class:`~budgetkit.UnbudgetedCallWarning`, once per call site). A session with
``threads="inherit"`` patches ``threading.Thread.start`` and
``concurrent.futures.ThreadPoolExecutor.submit`` (once per process; a no-op outside such a
session) so that threads started and work submitted inside its block run in a copy of the
block's context, and charge it.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any

from ._warnings import warn
from .exceptions import UnbudgetedCallWarning

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._boundary import Boundary
    from ._values import CallSpec

__all__ = ["OPEN", "install_inheritance", "unbudgeted"]


class _Open:
    """How many sessions are entered in this process right now (under its lock)."""

    __slots__ = ("count", "lock", "warned")

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.warned: set[tuple[str, int]] = set()

    def opened(self) -> None:
        with self.lock:
            self.count += 1

    def closed(self) -> None:
        with self.lock:
            self.count -= 1


OPEN = _Open()


def unbudgeted(spec: CallSpec) -> None:
    """A decorated call found no session in its context while one is open: warn once for
    its call site."""
    site = _call_site()
    with OPEN.lock:
        if site in OPEN.warned:
            return
        OPEN.warned.add(site)
    warn(
        f"budgetkit: {spec.kind} {spec.name!r} ran outside every session although a session "
        "is open in this process, so it was not charged: a plain threading.Thread does not "
        "copy the context. Start the thread's target with contextvars.copy_context().run, "
        "or open the session with threads='inherit'.",
        UnbudgetedCallWarning,
    )


def _call_site() -> tuple[str, int]:
    """(file, line) of the first frame outside budgetkit and wrapt."""
    from ._warnings import is_internal

    frame = inspect.currentframe()
    while frame is not None and is_internal(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:  # pragma: no cover - always called from user code
        return ("<unknown>", 0)
    return (frame.f_code.co_filename, frame.f_lineno)


# ---------------------------------------------------------------------------- inheritance
_installed = False
_install_lock = threading.Lock()


def _inheriting(b: Boundary | None) -> bool:
    return b is not None and any(s.budget.threads == "inherit" for s in b.chain)


def install_inheritance(active: contextvars.ContextVar[Boundary | None]) -> None:
    """Patch ``Thread.start`` and ``ThreadPoolExecutor.submit`` (once per process)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
    start = threading.Thread.start
    submit: Any = concurrent.futures.ThreadPoolExecutor.submit

    @functools.wraps(start)
    def inheriting_start(self: threading.Thread) -> None:
        target = getattr(self, "_target", None)  # an executor's own worker stays neutral
        worker = getattr(target, "__module__", "") == "concurrent.futures.thread"
        if not worker and _inheriting(active.get()):
            run, context = self.run, contextvars.copy_context()
            self.run = lambda: context.run(run)  # type: ignore[method-assign]
        start(self)

    @functools.wraps(submit)
    def inheriting_submit(
        self: concurrent.futures.ThreadPoolExecutor,
        fn: Callable[..., Any],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        if _inheriting(active.get()):
            fn = functools.partial(contextvars.copy_context().run, fn)
        future: concurrent.futures.Future[Any] = submit(self, fn, *args, **kwargs)
        return future

    threading.Thread.start = inheriting_start  # type: ignore[method-assign]
    concurrent.futures.ThreadPoolExecutor.submit = inheriting_submit  # type: ignore[method-assign,assignment]
