"""Counters shared across asyncio tasks and copied-context threads; exact admission under races."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from budgetkit import (
    BudgetExhausted,
    SessionBudget,
    UnbudgetedCallWarning,
    _config,
    _exhaustion,
    budget,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _fast_thread_switching() -> Iterator[None]:
    """Switch threads as often as possible so that unguarded counter updates would race."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def write_count(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every handoff write the sessions make."""
    calls: list[Path] = []
    real = _exhaustion.write_atomic

    def counting(path: Path, doc: dict[str, Any]) -> None:
        calls.append(path)
        real(path, doc)

    monkeypatch.setattr(_exhaustion, "write_atomic", counting)
    return calls


@budget.step
async def yielding_step(i: int) -> int:
    """One step that lets other tasks run before it returns."""
    await asyncio.sleep(0)
    return i


@pytest.mark.asyncio
async def test_gather_1000_under_max_steps_250(handoff_dir: Path, write_count: list[Path]) -> None:
    """asyncio.gather of 1,000 async steps under max_steps=250 runs exactly 250 bodies."""
    bodies: list[int] = []

    @budget.step
    async def tool(i: int) -> int:
        bodies.append(i)
        await asyncio.sleep(0)
        return i

    async with SessionBudget(max_steps=250, handoff_dir=handoff_dir, raise_on_exhausted=False) as s:
        results = await asyncio.gather(*(tool(i) for i in range(1000)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(bodies) == 250
    assert len(errors) == 750
    assert all(isinstance(e, BudgetExhausted) and e.reason == "max_steps" for e in errors)
    assert sorted(r for r in results if isinstance(r, int)) == sorted(bodies)
    assert s.usage.steps == 250
    assert write_count == [handoff_dir / f"{s.session_id}.json"]


@pytest.mark.asyncio
async def test_gather_without_return_exceptions_raises(handoff_dir: Path) -> None:
    """Plain asyncio.gather under a step limit propagates BudgetExhausted out of the session."""
    with pytest.raises(BudgetExhausted):
        async with SessionBudget(max_steps=10, handoff_dir=handoff_dir):
            await asyncio.gather(*(yielding_step(i) for i in range(100)))


@pytest.mark.asyncio
async def test_create_task_children_share_counters(handoff_dir: Path) -> None:
    """Tasks created inside the session charge the same counters as the parent."""
    bodies: list[int] = []

    @budget.step
    async def tool(i: int) -> None:
        bodies.append(i)
        await asyncio.sleep(0)

    async with SessionBudget(max_steps=100, handoff_dir=handoff_dir) as s:

        async def worker(w: int) -> int:
            done = 0
            for i in range(40):
                try:
                    await tool(w * 100 + i)
                except BudgetExhausted:
                    break
                done += 1
            return done

        tasks = [asyncio.create_task(worker(w)) for w in range(10)]
        done = await asyncio.gather(*tasks)
        assert sum(done) == 100
        assert s.usage.steps == 100
        assert s.exhausted
    assert len(bodies) == 100


def test_64_threads_in_copied_context(handoff_dir: Path, write_count: list[Path]) -> None:
    """64 threads running in copied contexts race on max_steps=N; exactly N bodies run."""
    n = 300
    bodies: list[int] = []
    lock = threading.Lock()

    @budget.step
    def tool(i: int) -> None:
        with lock:
            bodies.append(i)

    barrier = threading.Barrier(64)
    refused: list[BudgetExhausted] = []

    def worker(w: int) -> None:
        barrier.wait()
        for i in range(10):
            try:
                tool(w * 10 + i)
            except BudgetExhausted as exc:
                with lock:
                    refused.append(exc)

    with SessionBudget(max_steps=n, handoff_dir=handoff_dir, raise_on_exhausted=False) as s:
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(worker, w))
            for w in range(64)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(bodies) == n
    assert len(refused) == 640 - n
    assert s.usage.steps == n
    assert len(write_count) == 1
    paths = {e.handoff_path for e in refused}
    assert paths == {handoff_dir / f"{s.session_id}.json"}


def test_threads_without_copied_context_are_not_charged(handoff_dir: Path) -> None:
    """A plain thread does not inherit the session: its steps are pass-through, and say so
    (UnbudgetedCallWarning, once for the call site)."""

    @budget.step
    def tool() -> None:
        pass

    s = SessionBudget(max_steps=1, handoff_dir=handoff_dir)

    def run() -> None:
        with s:
            t = threading.Thread(target=lambda: [tool() for _ in range(5)])
            t.start()
            t.join()
            tool()

    with pytest.warns(UnbudgetedCallWarning) as warned:
        run()
    assert s.usage.steps == 1
    assert len([w for w in warned if w.category is UnbudgetedCallWarning]) == 1


@pytest.mark.asyncio
async def test_to_thread_shares_counters(handoff_dir: Path) -> None:
    """asyncio.to_thread runs sync steps against the same session counters."""
    bodies: list[int] = []
    lock = threading.Lock()

    @budget.step
    def tool(i: int) -> int:
        with lock:
            bodies.append(i)
        return i

    async with SessionBudget(max_steps=20, handoff_dir=handoff_dir, raise_on_exhausted=False) as s:
        results = await asyncio.gather(
            *(asyncio.to_thread(tool, i) for i in range(50)), return_exceptions=True
        )
    assert len(bodies) == 20
    assert sum(isinstance(r, BudgetExhausted) for r in results) == 30
    assert s.usage.steps == 20


def test_charges_from_threads_sum_exactly(handoff_dir: Path) -> None:
    """Concurrent charge() calls from many threads add up exactly (Decimal)."""
    with SessionBudget(handoff_dir=handoff_dir) as s:

        def worker() -> None:
            for _ in range(200):
                s.charge(usd=Decimal("0.001"), input_tokens=1, output_tokens=2)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert s.usage.cost_usd == Decimal("3.2")
    assert (s.usage.input_tokens, s.usage.output_tokens) == (3200, 6400)


@pytest.mark.asyncio
async def test_exhaustion_latches_across_tasks(handoff_dir: Path, write_count: list[Path]) -> None:
    """Once one task exhausts the session, other tasks' later steps raise the same exhaustion."""

    @budget.step
    async def tool() -> None:
        await asyncio.sleep(0)

    async with SessionBudget(max_tokens=10, handoff_dir=handoff_dir) as s:
        await tool()
        s.charge(input_tokens=11)

        async def child() -> str:
            try:
                await tool()
            except BudgetExhausted as exc:
                return exc.reason
            return "ran"

        reasons = await asyncio.gather(*(asyncio.create_task(child()) for _ in range(20)))
    assert reasons == ["max_tokens"] * 20
    assert len(write_count) == 1
    assert s.usage.steps == 1


def test_threads_nested_sessions_exact(handoff_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads racing inside a nested session respect the outer session's step limit exactly."""
    real_clock = _config.clock

    def yielding_clock() -> float:
        time.sleep(0)  # let other threads run between checking the outer and counting
        return real_clock()

    monkeypatch.setattr(_config, "clock", yielding_clock)
    bodies: list[int] = []
    lock = threading.Lock()

    @budget.step
    def tool(i: int) -> None:
        with lock:
            bodies.append(i)

    stopped_by: list[str] = []

    def worker(w: int) -> None:
        for i in range(1000):  # until refused
            try:
                tool(w * 1000 + i)
            except BudgetExhausted as exc:
                with lock:
                    stopped_by.append(exc.session_id)
                return

    with (
        SessionBudget(max_steps=100, handoff_dir=handoff_dir) as outer,
        SessionBudget(max_steps=10_000, max_seconds=3600, handoff_dir=handoff_dir) as inner,
    ):
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(worker, w))
            for w in range(32)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert len(bodies) == 100
    assert stopped_by == [outer.session_id] * 32
    assert outer.usage.steps == inner.usage.steps == 100
    assert not inner.exhausted


@pytest.mark.asyncio
async def test_task_group_exhaustion_is_swallowed_with_raise_on_exhausted_false(
    handoff_dir: Path,
) -> None:
    """A TaskGroup wraps BudgetExhausted in an ExceptionGroup; raise_on_exhausted=False still
    ends the block quietly when the group holds nothing but this session's exhaustion."""

    session = SessionBudget(max_steps=3, handoff_dir=handoff_dir, raise_on_exhausted=False)
    async with session as s, asyncio.TaskGroup() as group:
        for i in range(10):
            group.create_task(yielding_step(i))
    assert s.result is not None
    assert s.result.stop_reason == "max_steps"
    assert s.usage.steps == 3


@pytest.mark.asyncio
async def test_task_group_with_another_error_is_not_swallowed(handoff_dir: Path) -> None:
    async def broken() -> None:
        raise ValueError("boom")

    async def run() -> None:
        session = SessionBudget(max_steps=1, handoff_dir=handoff_dir, raise_on_exhausted=False)
        async with session, asyncio.TaskGroup() as group:
            group.create_task(yielding_step(0))
            group.create_task(yielding_step(1))
            group.create_task(broken())

    with pytest.raises(ExceptionGroup) as caught:
        await run()
    kinds = {type(e) for e in caught.value.exceptions}
    assert ValueError in kinds


@pytest.mark.asyncio
async def test_task_group_exhaustion_of_an_outer_session_reaches_it(handoff_dir: Path) -> None:
    """An inner session does not swallow the outer session's exhaustion; the outer one does."""

    outer = SessionBudget(max_steps=2, handoff_dir=handoff_dir, raise_on_exhausted=False)
    inner = SessionBudget(handoff_dir=handoff_dir, raise_on_exhausted=False)
    async with outer as o, inner, asyncio.TaskGroup() as group:
        for i in range(5):
            group.create_task(yielding_step(i))
    assert inner.result is not None
    assert inner.result.stop_reason == "max_steps"
    assert inner.result.stopped_by == o.session_id
    assert o.result is not None
    assert o.result.stop_reason == "max_steps"
