"""The pytest plugin: registered through pytest11, inert unless a fixture is used."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A scratch project with warnings as errors, like a strict user suite."""
    pytester.makeini(INI)
    return pytester


def test_entry_point_names_the_plugin() -> None:
    """Installing budgetkit registers budgetkit.pytest_plugin under pytest11."""
    points = importlib.metadata.entry_points(group="pytest11")
    assert {p.name: p.value for p in points}.get("budgetkit") == "budgetkit.pytest_plugin"


def test_plugin_is_inert_unless_used(project: pytest.Pytester) -> None:
    """A suite that uses no fixture gets no session, no OpenTelemetry SDK, no listener."""
    project.makepyfile(
        """
        import time

        from budgetkit import _config, _events, budget


        def test_untouched():
            assert budget.current() is None
            assert _config.clock is time.monotonic
            assert _events.listeners == []
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    listed = project.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    listed.stdout.fnmatch_lines(["*budget_session*", "*budget_spans*"])


def test_plugin_import_loads_no_sdk() -> None:
    """Importing the plugin loads neither budgetkit.testing nor the OpenTelemetry SDK."""
    code = (
        "import sys, budgetkit.pytest_plugin; "
        "assert 'opentelemetry.sdk.trace' not in sys.modules; "
        "assert 'budgetkit.testing' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_budget_session_with_marker(project: pytest.Pytester) -> None:
    """The marker sets the limits, handoffs go under tmp_path, the session ends with the test."""
    project.makepyfile(
        """
        import pytest

        from budgetkit import BudgetExhausted, budget

        SEEN = []


        @budget.step
        def step():
            pass


        @pytest.mark.budget(max_steps=2, name="under-test")
        def test_limited(budget_session, tmp_path):
            SEEN.append(budget_session)
            assert budget.current() is budget_session
            assert budget_session.name == "under-test"
            step(); step()
            with pytest.raises(BudgetExhausted) as stopped:
                step()
            assert stopped.value.handoff_path.parent == tmp_path / "handoffs"


        def test_unlimited_and_closed(budget_session):
            assert SEEN[0].result.stop_reason == "max_steps"
            for _ in range(100):
                step()
            assert budget_session.usage.steps == 100
            assert budget_session.limits.limited() == {}


        @pytest.mark.budget(max_steps=1)
        class TestClass:
            @pytest.mark.budget(max_steps=3)
            def test_closest_marker_wins(self, budget_session):
                assert budget_session.limits.max_steps == 3


        @pytest.mark.budget(3)
        def test_positional_is_an_error(budget_session):
            pass
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*keyword arguments only*"])


def test_budget_session_in_async_tests(project: pytest.Pytester) -> None:
    """An async test (pytest-asyncio) runs in the fixture's session."""
    project.makepyfile(
        """
        import asyncio

        import pytest

        from budgetkit import BudgetExhausted, budget


        @budget.step
        async def fetch(i):
            return i


        @pytest.mark.asyncio
        @pytest.mark.budget(max_steps=5)
        async def test_gather(budget_session):
            results = await asyncio.gather(*(fetch(i) for i in range(8)), return_exceptions=True)
            assert sum(isinstance(r, BudgetExhausted) for r in results) == 3
            assert budget_session.usage.steps == 5
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_budget_spans_per_test(project: pytest.Pytester) -> None:
    """Each test sees only its own spans; the provider is installed once for the process."""
    project.makepyfile(
        """
        from opentelemetry import trace

        from budgetkit import SessionBudget, budget

        PROVIDERS = []


        @budget.step
        def search(q):
            return q


        def test_first(budget_spans):
            with SessionBudget(name="one", handoff_dir=None):
                search("a")
            assert budget_spans.tree() == "invoke_agent one\\n  execute_tool search"
            PROVIDERS.append(trace.get_tracer_provider())


        def test_second(budget_spans):
            with SessionBudget(name="two", handoff_dir=None):
                search("b")
                search("c")
            assert budget_spans.names() == [
                "execute_tool search", "execute_tool search", "invoke_agent two"
            ]
            assert trace.get_tracer_provider() is PROVIDERS[0]


        def test_user_configure_still_works(budget_spans):
            from budgetkit import otel

            with otel.configure(export=False):
                with SessionBudget(handoff_dir=None):
                    search("d")
            assert budget_spans.names() == ["execute_tool search", "budgetkit.session"]
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_budget_spans_joins_an_existing_provider(project: pytest.Pytester) -> None:
    """With the suite's own SDK provider installed, budget_spans adds itself to it."""
    project.makeconftest(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        PROVIDER = TracerProvider()
        trace.set_tracer_provider(PROVIDER)
        """
    )
    project.makepyfile(
        """
        from opentelemetry import trace

        from budgetkit import SessionBudget, budget
        from conftest import PROVIDER


        @budget.step
        def search(q):
            return q


        def test_spans(budget_spans):
            with SessionBudget(handoff_dir=None):
                search("a")
            assert trace.get_tracer_provider() is PROVIDER
            assert budget_spans.names() == ["execute_tool search", "budgetkit.session"]
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_budget_clock_and_events(project: pytest.Pytester) -> None:
    """budget_clock drives max_seconds; budget_events is a capture of the test."""
    project.makepyfile(
        """
        import pytest

        from budgetkit import BudgetExhausted, budget
        from budgetkit.testing import BudgetCapture


        @budget.step
        def poll():
            pass


        @pytest.mark.budget(max_seconds=60)
        def test_clock(budget_clock, budget_session, budget_events):
            poll()
            budget_clock.advance(61)
            with pytest.raises(BudgetExhausted, match="max_seconds"):
                poll()
            assert isinstance(budget_events, BudgetCapture)
        """
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_plugin_can_be_disabled_and_enabled_by_hand(project: pytest.Pytester) -> None:
    """-p no:budgetkit removes the fixtures; pytest_plugins brings them back."""
    project.makepyfile(
        test_a="""
        def test_uses(budget_session):
            pass
        """
    )
    off = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:budgetkit")
    off.assert_outcomes(errors=1)
    off.stdout.fnmatch_lines(["*fixture 'budget_session' not found*"])
    project.makeconftest('pytest_plugins = ["budgetkit.pytest_plugin"]')
    on = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:budgetkit")
    on.assert_outcomes(passed=1)
