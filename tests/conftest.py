"""Generic fixtures shared by the test suite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from budgetkit import _config

if TYPE_CHECKING:
    from pathlib import Path


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Replace the clock every session reads (``budgetkit._config.clock``)."""
    fake = FakeClock()
    monkeypatch.setattr(_config, "clock", fake)
    return fake


@pytest.fixture
def handoff_dir(tmp_path: Path) -> Path:
    """A not-yet-existing directory for handoff files."""
    return tmp_path / "handoffs"
