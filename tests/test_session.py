"""SessionBudget: counters, limits, latching, results, charge(), sync and async."""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import pickle
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import budgetkit
from budgetkit import BudgetError, BudgetExhausted, SessionBudget, budget

if TYPE_CHECKING:
    from pathlib import Path

# --------------------------------------------------------------------------- helpers
ran: list[int] = []


@budget.step
def tool(i: int = 0) -> int:
    ran.append(i)
    return i


@budget.step
async def atool(i: int = 0) -> int:
    ran.append(i)
    return i


@budget.step
def failing(exc: BaseException) -> None:
    raise exc


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    ran.clear()


# --------------------------------------------------------------------------- basics
def test_defaults_are_unlimited(handoff_dir: Path) -> None:
    """A SessionBudget with no limits runs any number of steps and reports no remaining limits."""
    with SessionBudget(handoff_dir=handoff_dir) as s:
        for i in range(500):
            tool(i)
        s.charge(usd=10**6, input_tokens=10**9)
        tool()
    assert s.usage.steps == 501
    assert s.remaining == budgetkit.Remaining()
    assert s.result is not None
    assert s.result.stop_reason == "completed"
    assert not handoff_dir.exists()


def test_session_ids_are_fresh_and_overridable() -> None:
    """Each session gets a fresh id unless session_id= is given."""
    a, b = SessionBudget(handoff_dir=None), SessionBudget(handoff_dir=None)
    assert a.session_id != b.session_id
    assert len(a.session_id) >= 16
    assert SessionBudget(session_id="run-1", handoff_dir=None).session_id == "run-1"


def test_with_returns_session_and_sets_current() -> None:
    """`with` yields the session, budget.current() returns it inside and None after."""
    assert budget.current() is None
    with SessionBudget(handoff_dir=None) as s:
        assert budget.current() is s
    assert budget.current() is None


@pytest.mark.asyncio
async def test_async_with_returns_session_and_sets_current() -> None:
    """`async with` yields the session, budget.current() returns it inside and None after."""
    assert budget.current() is None
    async with SessionBudget(handoff_dir=None) as s:
        assert budget.current() is s
        assert await atool(3) == 3
    assert budget.current() is None
    assert s.usage.steps == 1


def test_session_cannot_be_entered_twice() -> None:
    """A session runs once: entering it again raises BudgetError."""
    s = SessionBudget(handoff_dir=None)
    with s:
        pass
    with pytest.raises(BudgetError, match="already entered"), s:
        pass


def test_usage_is_a_frozen_snapshot(clock) -> None:
    """session.usage is a frozen snapshot that later calls do not change."""
    with SessionBudget(handoff_dir=None) as s:
        tool()
        snap = s.usage
        tool()
        clock.advance(2.5)
        assert s.usage.steps == 2
        assert s.usage.elapsed_seconds == 2.5
    assert snap.steps == 1
    assert snap.elapsed_seconds == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.steps = 7  # type: ignore[misc]


def test_usage_fields_after_charges() -> None:
    """charge() adds exact Decimal USD and tokens; total_tokens is input plus output."""
    with SessionBudget(handoff_dir=None) as s:
        s.charge(usd=0.1, input_tokens=3)
        s.charge(usd=Decimal("0.2"), output_tokens=4)
        s.charge(usd=1, input_tokens=1, output_tokens=1)
        s.charge(input_tokens=2)
    u = s.usage
    assert u.cost_usd == Decimal("1.3")
    assert isinstance(u.cost_usd, Decimal)
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (6, 5, 11)
    assert (u.steps, u.llm_calls, u.unpriced_calls, u.unmeasured_calls) == (0, 0, 0, 0)


def test_elapsed_freezes_at_exit(clock) -> None:
    """elapsed_seconds stops counting when the session exits."""
    with SessionBudget(handoff_dir=None) as s:
        clock.advance(4)
    clock.advance(100)
    assert s.usage.elapsed_seconds == 4
    assert s.result is not None
    assert s.result.usage.elapsed_seconds == 4


def test_remaining_reports_limited_dimensions(clock) -> None:
    """session.remaining gives what is left per limit, None where unlimited, never below zero."""
    with SessionBudget(
        max_steps=5, max_tokens=100, max_usd=1, max_seconds=10, handoff_dir=None
    ) as s:
        tool()
        tool()
        s.charge(usd=Decimal("0.25"), input_tokens=30, output_tokens=10)
        clock.advance(3)
        r = s.remaining
        assert r.steps == 3
        assert r.total_tokens == 60
        assert r.cost_usd == Decimal("0.75")
        assert r.elapsed_seconds == 7
        assert r.llm_calls is None
        assert r.input_tokens is None
        assert r.output_tokens is None
        s.charge(usd=5, input_tokens=1000)
        assert s.remaining.cost_usd == 0
        assert s.remaining.total_tokens == 0


def test_result_is_none_until_exit_then_completed() -> None:
    """session.result is None inside the block and stop_reason 'completed' after a clean exit."""
    with SessionBudget(handoff_dir=None) as s:
        tool()
        assert s.result is None
    assert s.result is not None
    assert s.result.stop_reason == "completed"
    assert s.result.session_id == s.session_id
    assert s.result.usage.steps == 1
    assert s.result.handoff_path is None


def test_result_error_when_block_raises() -> None:
    """An ordinary exception propagates and sets stop_reason 'error'."""
    err = RuntimeError("boom")
    with pytest.raises(RuntimeError) as info, SessionBudget(handoff_dir=None) as s:
        raise err
    assert info.value is err
    assert s.result is not None
    assert s.result.stop_reason == "error"


# --------------------------------------------------------------------------- count limits
@pytest.mark.parametrize("n", [1, 2, 50])
def test_max_steps_admits_exactly_n(n: int, handoff_dir: Path) -> None:
    """max_steps=N runs the first N steps; step N+1 raises before its body runs."""
    with SessionBudget(max_steps=n, handoff_dir=handoff_dir) as s:
        for i in range(n):
            tool(i)
        with pytest.raises(BudgetExhausted) as info:
            tool(n)
    assert ran == list(range(n))
    exc = info.value
    assert exc.reason == "max_steps"
    assert exc.session_id == s.session_id
    assert exc.usage.steps == n
    path = handoff_dir / f"{s.session_id}.json"
    assert str(exc) == (
        f"Session budget exhausted at step {n}. Reason: max_steps ({n} of {n} steps used). "
        f"Resumable: true: budgetkit.SessionBudget.resume({str(path)!r})."
    )
    assert exc.handoff.stopped_at_step == n
    assert s.result is not None
    assert s.result.stop_reason == "max_steps"
    assert s.result.stopped_by == s.session_id
    assert s.exhausted


@pytest.mark.asyncio
async def test_max_steps_admits_exactly_n_async(handoff_dir: Path) -> None:
    """Async steps: max_steps=N runs N bodies, the next raises before its body runs."""

    async def agent() -> None:
        async with SessionBudget(max_steps=3, handoff_dir=handoff_dir):
            for i in range(10):
                await atool(i)

    with pytest.raises(BudgetExhausted) as info:  # propagates out of `async with`
        await agent()
    assert ran == [0, 1, 2]
    assert info.value.reason == "max_steps"


def test_exhausted_message_is_exact(handoff_dir: Path) -> None:
    """BudgetExhausted's message has the documented form: what ran out (used of limit), the
    handoff path and the call that resumes it."""
    with SessionBudget(max_steps=50, handoff_dir=handoff_dir) as s:
        for _ in range(50):
            tool()
        with pytest.raises(BudgetExhausted) as info:
            tool()
    path = handoff_dir / f"{s.session_id}.json"
    assert str(info.value) == (
        "Session budget exhausted at step 50. Reason: max_steps (50 of 50 steps used). "
        f"Resumable: true: budgetkit.SessionBudget.resume({str(path)!r})."
    )


def test_exhausted_is_picklable(handoff_dir: Path) -> None:
    """BudgetExhausted survives a pickle round trip with its attributes."""
    with SessionBudget(max_steps=1, handoff_dir=handoff_dir):
        tool()
        with pytest.raises(BudgetExhausted) as info:
            tool()
    exc = info.value
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is BudgetExhausted
    assert str(copy) == str(exc)
    assert copy.reason == exc.reason
    assert copy.session_id == exc.session_id
    assert copy.usage == exc.usage
    assert copy.handoff == exc.handoff
    assert copy.handoff_path == exc.handoff_path


def test_exhausted_keeps_its_handoff_error_through_pickle(tmp_path: Path) -> None:
    """The error that prevented the handoff write travels with a pickled BudgetExhausted
    (to another process of a pool, say)."""
    blocked = tmp_path / "not-a-dir"
    with SessionBudget(max_steps=1, handoff_dir=blocked):
        blocked.write_text("a file where the handoff directory should be")  # after the start
        tool()
        with pytest.raises(BudgetExhausted) as info:
            tool()
    assert info.value.handoff_error is not None
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy.handoff_error) is type(info.value.handoff_error)
    assert str(copy.handoff_error) == str(info.value.handoff_error)
    assert copy.handoff_path is None


def test_budget_exhausted_is_a_budget_error() -> None:
    """BudgetExhausted derives from BudgetError."""
    assert issubclass(BudgetExhausted, BudgetError)
    assert issubclass(BudgetError, Exception)


# --------------------------------------------------------------------------- measured limits
MEASURED = [
    ("max_tokens", {"input_tokens": 60, "output_tokens": 40}, {"input_tokens": 1}),
    ("max_input_tokens", {"input_tokens": 100}, {"input_tokens": 1}),
    ("max_output_tokens", {"output_tokens": 100}, {"output_tokens": 1}),
    ("max_usd", {"usd": Decimal("100")}, {"usd": Decimal("0.000001")}),
]


@pytest.mark.parametrize(("limit", "to_limit", "over"), MEASURED)
def test_measured_limit_equal_is_within_budget(limit, to_limit, over, handoff_dir: Path) -> None:
    """Usage equal to a measured limit is still within budget; steps keep running."""
    with SessionBudget(**{limit: 100}, handoff_dir=handoff_dir) as s:
        s.charge(**to_limit)
        for i in range(3):
            tool(i)
    assert ran == [0, 1, 2]
    assert s.result is not None
    assert s.result.stop_reason == "completed"
    assert not handoff_dir.exists()


@pytest.mark.parametrize(("limit", "to_limit", "over"), MEASURED)
def test_measured_limit_crossing_call_completes_next_boundary_raises(
    limit, to_limit, over, handoff_dir: Path
) -> None:
    """The step whose charge crosses a measured limit returns normally; the next one raises."""

    @budget.step
    def spend(kw: dict) -> str:
        budget.current().charge(**kw)  # type: ignore[union-attr]
        return "done"

    with SessionBudget(**{limit: 100}, handoff_dir=handoff_dir) as s:
        assert spend(to_limit) == "done"
        assert spend(over) == "done"  # crosses: completes and returns normally
        assert not handoff_dir.exists()  # nothing written until the next boundary
        with pytest.raises(BudgetExhausted) as info:
            tool(99)
    assert ran == []
    assert info.value.reason == limit
    assert (handoff_dir / f"{s.session_id}.json").exists()
    assert s.result is not None
    assert s.result.stop_reason == limit


@pytest.mark.parametrize(("limit", "to_limit", "over"), MEASURED)
@pytest.mark.asyncio
async def test_measured_limit_async(limit, to_limit, over, handoff_dir: Path) -> None:
    """Async: a charge over a measured limit does not raise; the next async step does."""
    async with SessionBudget(**{limit: 100}, handoff_dir=handoff_dir) as s:
        s.charge(**to_limit)
        await atool(1)
        s.charge(**over)
        with pytest.raises(BudgetExhausted) as info:
            await atool(2)
    assert ran == [1]
    assert info.value.reason == limit


def test_charge_over_limit_does_not_raise_itself(handoff_dir: Path) -> None:
    """charge() never raises for exhaustion; only a boundary does. With no boundary after
    it, the session still ends exhausted for the limit (no exception)."""
    with SessionBudget(max_usd=1, handoff_dir=handoff_dir) as s:
        s.charge(usd=5)
        s.charge(usd=5)
        assert s.usage.cost_usd == 10
    assert s.result is not None
    assert s.result.stop_reason == "max_usd"
    assert s.result.exhausted


def test_max_seconds_judged_at_boundary(clock, handoff_dir: Path) -> None:
    """max_seconds: elapsed equal to the limit is fine; strictly greater raises at the next step."""
    with SessionBudget(max_seconds=10, handoff_dir=handoff_dir):
        clock.advance(10)
        tool(1)
        clock.advance(0.001)
        with pytest.raises(BudgetExhausted) as info:
            tool(2)
    assert ran == [1]
    assert info.value.reason == "max_seconds"


@pytest.mark.asyncio
async def test_max_seconds_async(clock, handoff_dir: Path) -> None:
    """max_seconds trips an async step boundary once the fake clock passes the limit."""
    async with SessionBudget(max_seconds=5, handoff_dir=handoff_dir):
        await atool(1)
        clock.advance(6)
        with pytest.raises(BudgetExhausted) as info:
            await atool(2)
    assert ran == [1]
    assert info.value.reason == "max_seconds"


def test_max_seconds_accepts_timedelta(clock) -> None:
    """max_seconds accepts a timedelta."""
    from datetime import timedelta

    with SessionBudget(max_seconds=timedelta(seconds=2), handoff_dir=None):
        clock.advance(2.5)
        with pytest.raises(BudgetExhausted):
            tool()
    assert ran == []


# --------------------------------------------------------------------------- consecutive errors
def test_consecutive_errors_trip_and_propagate_unchanged(handoff_dir: Path) -> None:
    """N decorated calls raising in a row trip max_consecutive_errors; errors propagate as is."""
    with SessionBudget(max_consecutive_errors=3, handoff_dir=handoff_dir) as s:
        for i in range(3):
            err = ValueError(i)
            with pytest.raises(ValueError) as info:
                failing(err)
            assert info.value is err
        with pytest.raises(BudgetExhausted) as ex:
            tool(1)
    assert ran == []
    assert ex.value.reason == "max_consecutive_errors"
    assert s.result is not None
    assert s.result.stop_reason == "max_consecutive_errors"


def test_success_resets_consecutive_errors(handoff_dir: Path) -> None:
    """A successful decorated call resets the consecutive-error count."""
    with SessionBudget(max_consecutive_errors=2, handoff_dir=handoff_dir) as s:
        for _ in range(5):
            with pytest.raises(KeyError):
                failing(KeyError("x"))
            tool()
    assert s.result is not None
    assert s.result.stop_reason == "completed"
    assert len(ran) == 5


@pytest.mark.asyncio
async def test_consecutive_errors_async(handoff_dir: Path) -> None:
    """Async steps that raise count as consecutive errors and propagate unchanged."""

    @budget.step
    async def afail(e: Exception) -> None:
        raise e

    async with SessionBudget(max_consecutive_errors=2, handoff_dir=handoff_dir):
        for _ in range(2):
            err = OSError("net")
            with pytest.raises(OSError) as got:
                await afail(err)
            assert got.value is err
        with pytest.raises(BudgetExhausted) as info:
            await atool(1)
    assert ran == []
    assert info.value.reason == "max_consecutive_errors"


# --------------------------------------------------------------------------- latching
def test_exhaustion_latches_even_if_caught(handoff_dir: Path) -> None:
    """After exhaustion every later step raises at once even when the agent catches the error."""
    with SessionBudget(max_steps=1, handoff_dir=handoff_dir) as s:
        tool(0)
        with pytest.raises(BudgetExhausted):
            tool(1)
        path = handoff_dir / f"{s.session_id}.json"
        st1 = path.stat()
        content = path.read_bytes()
        for i in range(2, 5):
            with pytest.raises(BudgetExhausted) as info:
                tool(i)
            assert info.value.reason == "max_steps"
            assert info.value.handoff_path == path
        st2 = path.stat()
    assert ran == [0]
    assert (st2.st_ino, st2.st_mtime_ns) == (st1.st_ino, st1.st_mtime_ns)
    assert path.read_bytes() == content
    assert sorted(p.name for p in handoff_dir.iterdir()) == [path.name]
    assert s.result is not None
    assert s.result.stop_reason == "max_steps"


def test_measured_trip_latches(handoff_dir: Path) -> None:
    """A measured limit, once tripped at a boundary, keeps every later boundary raising."""
    with SessionBudget(max_tokens=10, handoff_dir=handoff_dir) as s:
        s.charge(input_tokens=11)
        for _ in range(3):
            with pytest.raises(BudgetExhausted) as info:
                tool()
            assert info.value.reason == "max_tokens"
    assert ran == []


def test_latched_session_refuses_reserve(handoff_dir: Path) -> None:
    """A latched session also refuses a USD reservation (another boundary)."""
    with SessionBudget(max_steps=1, max_usd=10, handoff_dir=handoff_dir) as s:
        tool()
        with pytest.raises(BudgetExhausted):
            tool()
        with pytest.raises(BudgetExhausted) as info, s.reserve(usd=1):
            pass
    assert info.value.reason == "max_steps"


# --------------------------------------------------------------------------- raise_on_exhausted
def test_raise_on_exhausted_false_swallows_own(handoff_dir: Path) -> None:
    """raise_on_exhausted=False swallows the session's own BudgetExhausted; result says why."""
    with SessionBudget(max_steps=2, raise_on_exhausted=False, handoff_dir=handoff_dir) as s:
        for i in range(10):
            tool(i)
    assert ran == [0, 1]
    assert s.result is not None
    assert s.result.stop_reason == "max_steps"
    assert s.result.handoff_path == handoff_dir / f"{s.session_id}.json"
    assert s.result.handoff_path.exists()


@pytest.mark.asyncio
async def test_raise_on_exhausted_false_async(handoff_dir: Path) -> None:
    """async with + raise_on_exhausted=False swallows its own exhaustion."""
    async with SessionBudget(max_steps=1, raise_on_exhausted=False, handoff_dir=handoff_dir) as s:
        await atool(0)
        await atool(1)
    assert ran == [0]
    assert s.result is not None
    assert s.result.stop_reason == "max_steps"


def test_raise_on_exhausted_false_does_not_swallow_other_errors() -> None:
    """raise_on_exhausted=False never swallows ordinary exceptions."""
    with (
        pytest.raises(ZeroDivisionError),
        SessionBudget(max_steps=1, raise_on_exhausted=False, handoff_dir=None) as s,
    ):
        1 / 0  # noqa: B018
    assert s.result is not None
    assert s.result.stop_reason == "error"


def test_raise_on_exhausted_false_does_not_swallow_foreign_exhaustion(handoff_dir: Path) -> None:
    """raise_on_exhausted=False does not swallow a BudgetExhausted of another session."""
    with SessionBudget(max_steps=1, handoff_dir=handoff_dir) as other:
        tool()
        with pytest.raises(BudgetExhausted) as caught:
            tool()
    with (
        pytest.raises(BudgetExhausted) as info,
        SessionBudget(raise_on_exhausted=False, handoff_dir=handoff_dir),
    ):
        raise caught.value
    assert info.value.session_id == other.session_id


# --------------------------------------------------------------------------- outside a session
def test_steps_outside_session_are_pass_through() -> None:
    """Outside any session a decorated function just runs, however often."""
    for i in range(1000):
        assert tool(i) == i
    assert len(ran) == 1000


def test_after_exit_steps_are_pass_through(handoff_dir: Path) -> None:
    """After the with block exits, decorated calls no longer count against it."""
    with SessionBudget(max_steps=1, handoff_dir=handoff_dir) as s:
        tool()
    tool()
    tool()
    assert s.usage.steps == 1
    assert len(ran) == 3


# --------------------------------------------------------------------------- ledger property
money = st.decimals(min_value=0, max_value=5, places=3, allow_nan=False, allow_infinity=False)
tokens = st.integers(min_value=0, max_value=50)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    charges=st.lists(st.tuples(money, tokens, tokens), max_size=25),
    max_usd=st.decimals(min_value="0.001", max_value=20, places=3),
    max_tokens=st.integers(min_value=1, max_value=400),
)
def test_ledger_property(charges, max_usd, max_tokens) -> None:
    """Usage equals the exact sum of charges; a boundary raises exactly when a limit is crossed."""
    total_usd, total_in, total_out = Decimal(0), 0, 0
    reason = None  # the limit crossed first (tokens are judged before USD)
    with SessionBudget(max_usd=max_usd, max_tokens=max_tokens, handoff_dir=None) as s:
        for usd, inp, out in charges:
            s.charge(usd=usd, input_tokens=inp, output_tokens=out)
            total_usd += usd
            total_in += inp
            total_out += out
            assert s.usage.cost_usd == total_usd
            assert (s.usage.input_tokens, s.usage.output_tokens) == (total_in, total_out)
            if reason is None and total_in + total_out > max_tokens:
                reason = "max_tokens"
            elif reason is None and total_usd > max_usd:
                reason = "max_usd"
            if reason is None:
                tool()  # never raises before a limit is crossed
            else:
                with pytest.raises(BudgetExhausted) as info:
                    tool()
                assert info.value.reason == reason
    assert s.exhausted == (reason is not None)


@settings(max_examples=100, deadline=None)
@given(
    charges=st.lists(
        st.decimals(min_value=0, max_value=10**12, allow_nan=False, places=18),
        min_size=1,
        max_size=10,
    )
)
def test_ledger_exact_for_high_precision_amounts(charges) -> None:
    """The USD ledger stays exact for amounts with more digits than Decimal's default precision
    (up to 30 digits here: 12 whole, 18 decimal places)."""
    with SessionBudget(handoff_dir=None) as s:
        for usd in charges:
            s.charge(usd=usd)
    exact = Decimal(0)
    for usd in charges:
        exact = exact.fma(1, usd, decimal.Context(prec=decimal.MAX_PREC))
    assert s.usage.cost_usd == exact


@settings(max_examples=100, deadline=None)
@given(
    charges=st.lists(
        st.decimals(min_value=0, max_value=10, allow_nan=False, allow_infinity=False, places=30),
        min_size=1,
        max_size=10,
    )
)
def test_ledger_rounds_each_charge_up_to_an_attodollar(charges) -> None:
    """Past 18 decimal places (10^-18 USD) each charge is rounded up: never under-counted."""
    with SessionBudget(handoff_dir=None) as s:
        for usd in charges:
            s.charge(usd=usd)
    exact = decimal.Context(prec=decimal.MAX_PREC)
    expected = Decimal(0)
    for usd in charges:
        rounded = usd.quantize(Decimal("1e-18"), rounding=decimal.ROUND_CEILING, context=exact)
        expected = expected.fma(1, rounded, exact)
    assert s.usage.cost_usd == expected
    assert s.usage.cost_usd >= sum(charges, Decimal(0))


def test_ledger_ignores_callers_decimal_context() -> None:
    """A low precision in the caller's decimal context does not round the ledger."""
    with SessionBudget(max_usd=Decimal("100.000001"), handoff_dir=None) as s:
        with decimal.localcontext(decimal.Context(prec=3)):
            s.charge(usd=Decimal("100.000001"))
            s.charge(usd=Decimal("0.000001"))
        assert s.usage.cost_usd == Decimal("100.000002")
        with pytest.raises(BudgetExhausted) as info:
            tool()
    assert info.value.reason == "max_usd"


# --------------------------------------------------------------------------- LLM call counting
def _response() -> dict:
    return {"usage": {"prompt_tokens": 10, "completion_tokens": 5}, "model": "gpt-4o-mini"}


@budget.llm_call
def chat(i: int = 0) -> dict:
    ran.append(i)
    return _response()


@budget.llm_call(name="achat", model="gpt-4o-mini")
async def achat(i: int = 0) -> dict:
    ran.append(i)
    return _response()


def test_max_llm_calls_admits_exactly_n(handoff_dir: Path) -> None:
    """max_llm_calls=N runs N LLM calls; call N+1 raises before its body runs."""
    with SessionBudget(max_llm_calls=3, handoff_dir=handoff_dir) as s:
        for i in range(3):
            assert chat(i) == _response()
        with pytest.raises(BudgetExhausted) as info:
            chat(3)
    assert ran == [0, 1, 2]
    assert info.value.reason == "max_llm_calls"
    assert s.usage.llm_calls == 3
    assert s.usage.steps == 0
    path = handoff_dir / f"{s.session_id}.json"
    assert str(info.value) == (
        "Session budget exhausted at step 0. Reason: max_llm_calls (3 of 3 LLM calls used). "
        f"Resumable: true: budgetkit.SessionBudget.resume({str(path)!r})."
    )


@pytest.mark.asyncio
async def test_max_llm_calls_async(handoff_dir: Path) -> None:
    """Async LLM calls: max_llm_calls=N runs N bodies, the rest raise."""
    async with SessionBudget(
        max_llm_calls=4, handoff_dir=handoff_dir, raise_on_exhausted=False
    ) as s:
        results = await asyncio.gather(*(achat(i) for i in range(20)), return_exceptions=True)
    assert len(ran) == 4
    assert sum(isinstance(r, BudgetExhausted) for r in results) == 16
    assert s.usage.llm_calls == 4
    assert s.result is not None
    assert s.result.stop_reason == "max_llm_calls"


def test_steps_and_llm_calls_counted_separately(handoff_dir: Path) -> None:
    """max_steps does not count LLM calls and max_llm_calls does not count steps."""
    with SessionBudget(max_steps=2, max_llm_calls=2, handoff_dir=handoff_dir) as s:
        tool(0)
        chat(1)
        tool(2)
        chat(3)
    assert (s.usage.steps, s.usage.llm_calls) == (2, 2)
    assert s.result is not None
    assert s.result.stop_reason == "completed"


@pytest.mark.parametrize("first", ["step", "llm"])
def test_exhaustion_latches_for_both_kinds(first: str, handoff_dir: Path) -> None:
    """Once a step or LLM limit trips, both steps and LLM calls are refused; file not rewritten."""
    with SessionBudget(max_steps=1, max_llm_calls=1, handoff_dir=handoff_dir) as s:
        trip = tool if first == "step" else chat
        trip(0)
        with pytest.raises(BudgetExhausted):
            trip(1)
        path = handoff_dir / f"{s.session_id}.json"
        before = (path.stat().st_mtime_ns, path.stat().st_ino, path.read_bytes())
        for other in (tool, chat):
            with pytest.raises(BudgetExhausted) as info:
                other(2)
            assert info.value.reason == ("max_steps" if first == "step" else "max_llm_calls")
        after = (path.stat().st_mtime_ns, path.stat().st_ino, path.read_bytes())
    assert ran == [0]
    assert before == after


def test_llm_call_usage_counts_toward_token_limit(handoff_dir: Path) -> None:
    """LLM call usage is recorded; the call crossing max_tokens returns, the next call raises."""
    with SessionBudget(max_tokens=30, handoff_dir=handoff_dir) as s:
        chat(0)
        chat(1)  # 30 tokens: equal, within budget
        assert chat(2) == _response()  # 45 tokens: crosses, still returns
        with pytest.raises(BudgetExhausted) as info:
            chat(3)
    assert ran == [0, 1, 2]
    assert info.value.reason == "max_tokens"
    assert s.usage.total_tokens == 45


def test_llm_call_errors_count_as_consecutive_errors(handoff_dir: Path) -> None:
    """A raising LLM call counts toward max_consecutive_errors and propagates unchanged."""
    err = ConnectionError("503")

    @budget.llm_call
    def flaky() -> dict:
        raise err

    with SessionBudget(max_consecutive_errors=2, handoff_dir=handoff_dir):
        for _ in range(2):
            with pytest.raises(ConnectionError) as got:
                flaky()
            assert got.value is err
        with pytest.raises(BudgetExhausted) as info:
            chat(0)

    assert info.value.reason == "max_consecutive_errors"
    assert ran == []
