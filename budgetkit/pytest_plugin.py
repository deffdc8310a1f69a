"""pytest fixtures for code that runs under budgetkit.

Registered through the ``pytest11`` entry point, so the fixtures are there as soon as
budgetkit is installed; nothing happens unless a test asks for one (no autouse fixture,
no OpenTelemetry import until ``budget_spans`` is used). Without the entry point (e.g.
``-p no:budgetkit``), enable it with ``pytest_plugins = ["budgetkit.pytest_plugin"]``.

- ``budget_session``: a :class:`~budgetkit.SessionBudget`, entered for the test, writing
  its handoffs under ``tmp_path``. Limits come from ``@pytest.mark.budget(max_steps=3, ...)``
  (any ``SessionBudget`` keyword); without the marker it is unlimited.
- ``budget_spans``: a :class:`~budgetkit.testing.SpanRecorder` with the spans that ended
  during the test (needs ``budgetkit[otel]``).
- ``budget_events``: a :class:`~budgetkit.testing.BudgetCapture` of the test's events.
- ``budget_clock``: a :class:`~budgetkit.testing.FakeClock` installed for the test.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from ._session import SessionBudget
    from .testing import BudgetCapture, FakeClock, SpanRecorder

__all__ = ["budget_clock", "budget_events", "budget_session", "budget_spans"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``budget`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        "budget(**limits): SessionBudget keyword arguments for the budget_session fixture",
    )


@pytest.fixture
def budget_session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionBudget]:
    """A ``SessionBudget`` entered for the test; handoffs go to ``tmp_path / "handoffs"``.

    Limits come from ``@pytest.mark.budget(...)`` on the test, class or module.
    """
    from ._session import SessionBudget

    kwargs: dict[str, object] = {}
    for marker in reversed(list(request.node.iter_markers("budget"))):
        if marker.args:
            raise pytest.UsageError(
                "@pytest.mark.budget takes keyword arguments only, e.g. budget(max_steps=3)"
            )
        kwargs.update(marker.kwargs)  # the closest marker wins
    kwargs.setdefault("handoff_dir", tmp_path / "handoffs")
    with SessionBudget(**kwargs) as session:  # type: ignore[arg-type]
        yield session


@pytest.fixture
def budget_spans() -> Iterator[SpanRecorder]:
    """The spans that end during the test, recorded in memory.

    Installs an OpenTelemetry SDK tracer provider when the process has none yet (the
    global provider can be set once per process; later tests reuse it).
    """
    from .testing import record_spans

    with record_spans() as recorder:
        yield recorder


@pytest.fixture
def budget_events() -> Iterator[BudgetCapture]:
    """Every budget event of the test (sessions, steps, charges, exhaustions)."""
    from .testing import capture_budget

    with capture_budget() as captured:
        yield captured


@pytest.fixture
def budget_clock() -> Iterator[FakeClock]:
    """A :class:`~budgetkit.testing.FakeClock` that every session reads during the test.

    Request it before ``budget_session`` so the session starts on the fake clock.
    """
    from .testing import FakeClock

    with FakeClock() as clock:
        yield clock
