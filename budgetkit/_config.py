"""Process-wide settings: the clock and environment lookups."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

#: The monotonic clock every session reads; ``budgetkit.testing.FakeClock`` swaps it.
clock: Callable[[], float] = time.monotonic

HANDOFF_DIR_ENV = "BUDGETKIT_HANDOFF_DIR"
DEFAULT_HANDOFF_DIR = "handoffs"


def default_handoff_dir() -> Path:
    """``$BUDGETKIT_HANDOFF_DIR`` when set, else ``./handoffs``."""
    return Path(os.environ.get(HANDOFF_DIR_ENV) or DEFAULT_HANDOFF_DIR)


def session_log_env() -> str | None:
    """``$BUDGETKIT_SESSION_LOG`` when set and not empty."""
    return os.environ.get("BUDGETKIT_SESSION_LOG") or None
