"""Process-wide settings: the clock and environment lookups."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

#: The monotonic clock every session reads; ``budgetkit.testing.FakeClock`` swaps it.
clock: Callable[[], float] = time.monotonic

HANDOFF_DIR_ENV = "BUDGETKIT_HANDOFF_DIR"
DEFAULT_HANDOFF_DIR = "handoffs"


def default_handoff_dir() -> Path:
    """``$BUDGETKIT_HANDOFF_DIR`` when set, else ``./handoffs``."""
    return Path(os.environ.get(HANDOFF_DIR_ENV) or DEFAULT_HANDOFF_DIR)
