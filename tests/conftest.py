"""Generic fixtures shared by the test suite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from budgetkit import _config
from budgetkit.ledgers.inprocess import DEFAULT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _no_in_process_accounts() -> Iterator[None]:
    """Every test starts without in-process account counters: accounts outlive sessions by
    design, so an example run twice in one process would find its account spent."""
    DEFAULT.books.clear()
    DEFAULT.known.clear()
    yield
    DEFAULT.books.clear()
    DEFAULT.known.clear()


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
