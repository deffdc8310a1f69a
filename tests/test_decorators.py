"""@budget.step on every call shape: functions, async, methods, generators; sync and async."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from budgetkit import BudgetExhausted, BudgetTypeError, SessionBudget, Usage, budget

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# --------------------------------------------------------------------------- shapes


@dataclass
class Shape:
    """A decorated callable, how to run it to completion, and what introspection says."""

    name: str
    target: Callable[..., Any]
    run: Callable[[Callable[..., Any], int], Any]
    kind: str  # "sync", "coroutine", "generator", "asyncgen"
    log: list[int]


async def _collect(agen: Any) -> list[Any]:
    return [item async for item in agen]


def _runner(kind: str) -> Callable[[Callable[..., Any], int], Any]:
    if kind == "sync":
        return lambda f, x: f(x)
    if kind == "coroutine":
        return lambda f, x: asyncio.run(f(x))
    if kind == "generator":
        return lambda f, x: list(f(x))
    return lambda f, x: asyncio.run(_collect(f(x)))


def build_shapes(deco: Callable[[Any], Any]) -> list[Shape]:
    """Every supported shape decorated with ``deco``; each body appends its argument to a log."""
    shapes: list[Shape] = []

    def add(name: str, kind: str, log: list[int], target: Any) -> None:
        shapes.append(Shape(name, target, _runner(kind), kind, log))

    log_f: list[int] = []

    @deco
    def f(x: int) -> int:
        log_f.append(x)
        return x * 2

    add("function", "sync", log_f, f)

    log_a: list[int] = []

    @deco
    async def af(x: int) -> int:
        log_a.append(x)
        await asyncio.sleep(0)
        return x * 2

    add("async function", "coroutine", log_a, af)

    log_g: list[int] = []

    @deco
    def gen(x: int):  # type: ignore[no-untyped-def]
        log_g.append(x)
        yield x
        yield x * 2

    add("generator", "generator", log_g, gen)

    log_ag: list[int] = []

    @deco
    async def agen(x: int):  # type: ignore[no-untyped-def]
        log_ag.append(x)
        yield x
        await asyncio.sleep(0)
        yield x * 2

    add("async generator", "asyncgen", log_ag, agen)

    logs: dict[str, list[int]] = {
        k: [] for k in ("m", "am", "cm", "acm", "sm", "asm", "gm", "agm", "gcm", "agsm")
    }

    class Agent:
        @deco
        def m(self, x: int) -> int:
            logs["m"].append(x)
            return x * 2

        @deco
        async def am(self, x: int) -> int:
            logs["am"].append(x)
            return x * 2

        @deco
        @classmethod
        def cm(cls, x: int) -> int:
            assert cls is Agent
            logs["cm"].append(x)
            return x * 2

        @deco
        @classmethod
        async def acm(cls, x: int) -> int:
            assert cls is Agent
            logs["acm"].append(x)
            return x * 2

        @deco
        @staticmethod
        def sm(x: int) -> int:
            logs["sm"].append(x)
            return x * 2

        @deco
        @staticmethod
        async def asm(x: int) -> int:
            logs["asm"].append(x)
            return x * 2

        @deco
        def gm(self, x: int):  # type: ignore[no-untyped-def]
            logs["gm"].append(x)
            yield x

        @deco
        async def agm(self, x: int):  # type: ignore[no-untyped-def]
            logs["agm"].append(x)
            yield x

        @deco
        @classmethod
        def gcm(cls, x: int):  # type: ignore[no-untyped-def]
            logs["gcm"].append(x)
            yield x

        @deco
        @staticmethod
        async def agsm(x: int):  # type: ignore[no-untyped-def]
            logs["agsm"].append(x)
            yield x

    obj = Agent()
    add("method", "sync", logs["m"], obj.m)
    add("async method", "coroutine", logs["am"], obj.am)
    add("classmethod via class", "sync", logs["cm"], Agent.cm)
    add("classmethod via instance", "sync", logs["cm"], obj.cm)
    add("async classmethod", "coroutine", logs["acm"], Agent.acm)
    add("staticmethod via class", "sync", logs["sm"], Agent.sm)
    add("staticmethod via instance", "sync", logs["sm"], obj.sm)
    add("async staticmethod", "coroutine", logs["asm"], Agent.asm)
    add("generator method", "generator", logs["gm"], obj.gm)
    add("async generator method", "asyncgen", logs["agm"], obj.agm)
    add("generator classmethod", "generator", logs["gcm"], Agent.gcm)
    add("async generator staticmethod", "asyncgen", logs["agsm"], Agent.agsm)
    return shapes


DECORATORS = {
    "bare": budget.step,
    "keywords": budget.step(name="custom_tool"),
}
SHAPE_NAMES = [s.name for s in build_shapes(budget.step)]


def shape_for(deco_name: str, shape_name: str) -> Shape:
    return next(s for s in build_shapes(DECORATORS[deco_name]) if s.name == shape_name)


@pytest.fixture(params=list(DECORATORS))
def deco_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=SHAPE_NAMES)
def shape(request: pytest.FixtureRequest, deco_name: str) -> Shape:
    return shape_for(deco_name, request.param)


# --------------------------------------------------------------------------- behaviour per shape
def test_pass_through_outside_session(shape: Shape) -> None:
    """Outside any session every shape runs unchanged and returns its normal result."""
    results = [shape.run(shape.target, i) for i in range(5)]
    assert shape.log == [0, 1, 2, 3, 4]
    expected = {
        "sync": [0, 2, 4, 6, 8],
        "coroutine": [0, 2, 4, 6, 8],
    }.get(shape.kind)
    if expected is not None:
        assert results == expected
    else:
        assert all(r and r[0] == i for i, r in enumerate(results))


def test_each_call_is_one_step_and_limit_refuses_before_body(shape: Shape, tmp_path: Path) -> None:
    """Each call counts one step; the call over max_steps raises BudgetExhausted before its body."""
    with SessionBudget(max_steps=2, handoff_dir=tmp_path) as s:
        shape.run(shape.target, 1)
        shape.run(shape.target, 2)
        assert s.usage.steps == 2
        with pytest.raises(BudgetExhausted) as info:
            shape.run(shape.target, 3)
    assert shape.log == [1, 2]
    assert info.value.reason == "max_steps"
    assert s.usage.steps == 2


def test_introspection_preserved(shape: Shape) -> None:
    """The wrapper keeps the shape's kind, name and signature visible to inspect."""
    t = shape.target
    assert inspect.iscoroutinefunction(t) == (shape.kind == "coroutine")
    assert inspect.isgeneratorfunction(t) == (shape.kind == "generator")
    assert inspect.isasyncgenfunction(t) == (shape.kind == "asyncgen")
    params = inspect.signature(t, eval_str=True).parameters
    assert list(params) == ["x"]  # no self / cls, no (*args, **kwargs)
    assert params["x"].annotation is int


def test_errors_count_for_every_shape(shape: Shape, tmp_path: Path) -> None:
    """An exception raised by any shape propagates unchanged and counts as a consecutive error."""

    class Boom(Exception):
        pass

    def make_failing() -> Any:
        if shape.kind == "sync":

            @budget.step
            def fail(x: int) -> None:
                raise Boom(x)

        elif shape.kind == "coroutine":

            @budget.step
            async def fail(x: int) -> None:
                raise Boom(x)

        elif shape.kind == "generator":

            @budget.step
            def fail(x: int):  # type: ignore[no-untyped-def]
                yield 1
                raise Boom(x)

        else:

            @budget.step
            async def fail(x: int):  # type: ignore[no-untyped-def]
                yield 1
                raise Boom(x)

        return fail

    fail = make_failing()
    with SessionBudget(max_consecutive_errors=2, handoff_dir=tmp_path):
        for i in range(2):
            with pytest.raises(Boom) as got:
                shape.run(fail, i)
            assert got.value.args == (i,)
        with pytest.raises(BudgetExhausted) as info:
            shape.run(shape.target, 9)
    assert info.value.reason == "max_consecutive_errors"
    assert shape.log == []


def test_keyword_form_keeps_function_name() -> None:
    """@budget.step(name=...) still exposes the wrapped function's __name__ and __doc__."""

    @budget.step(name="web_search")
    def search(q: str) -> str:
        """Search the web."""
        return q

    assert search.__name__ == "search"
    assert search.__doc__ == "Search the web."
    assert search("x") == "x"


# --------------------------------------------------------------------------- async-specific
@pytest.mark.asyncio
async def test_coroutine_charged_when_started_not_created(tmp_path: Path) -> None:
    """An async step is charged when its coroutine starts running, not when it is created."""
    log: list[int] = []

    @budget.step
    async def work(i: int) -> int:
        log.append(i)
        return i

    async with SessionBudget(max_steps=1, handoff_dir=tmp_path) as s:
        coros = [work(i) for i in range(3)]
        assert s.usage.steps == 0
        assert await coros[2] == 2
        assert s.usage.steps == 1
        for c in coros[:2]:
            with pytest.raises(BudgetExhausted):
                await c
    assert log == [2]


@pytest.mark.asyncio
async def test_async_shapes_under_async_with(tmp_path: Path) -> None:
    """Coroutines and async generators count under `async with` in the running loop."""
    log: list[int] = []

    @budget.step
    async def one(i: int) -> int:
        log.append(i)
        return i

    @budget.step
    async def many(i: int):  # type: ignore[no-untyped-def]
        log.append(i)
        for j in range(3):
            yield j

    async with SessionBudget(max_steps=3, handoff_dir=tmp_path) as s:
        assert await one(0) == 0
        assert [x async for x in many(1)] == [0, 1, 2]
        assert await one(2) == 2
        with pytest.raises(BudgetExhausted):
            await one(3)
    assert log == [0, 1, 2]
    assert s.usage.steps == 3


# --------------------------------------------------------------------------- generators
def test_generator_charged_on_first_iteration(tmp_path: Path) -> None:
    """A generator is charged when first iterated, not when created; one generator = one step."""
    log: list[int] = []

    @budget.step
    def items(n: int):  # type: ignore[no-untyped-def]
        log.append(n)
        yield from range(n)

    with SessionBudget(max_steps=1, handoff_dir=tmp_path) as s:
        g1, g2 = items(100), items(5)
        assert s.usage.steps == 0
        assert sum(g1) == sum(range(100))
        assert s.usage.steps == 1
        with pytest.raises(BudgetExhausted):
            next(g2)
    assert log == [100]


def test_generator_never_iterated_is_not_charged(tmp_path: Path) -> None:
    """A generator that is created but never iterated costs nothing."""

    @budget.step
    def items():  # type: ignore[no-untyped-def]
        yield 1

    with SessionBudget(max_steps=1, handoff_dir=tmp_path) as s:
        for _ in range(10):
            items()
        assert list(items()) == [1]
    assert s.usage.steps == 1


def test_generator_send_and_throw_forwarded() -> None:
    """send(), throw() and the return value pass through a wrapped generator."""
    seen: list[Any] = []

    @budget.step
    def echo():  # type: ignore[no-untyped-def]
        total = 0
        while True:
            try:
                got = yield total
            except KeyError as exc:
                seen.append(exc)
                got = 100
            if got is None:
                return total
            total += got

    with SessionBudget(handoff_dir=None) as s:
        g = echo()
        assert next(g) == 0
        assert g.send(5) == 5
        err = KeyError("k")
        assert g.throw(err) == 105
        assert seen == [err]
        with pytest.raises(StopIteration) as stop:
            g.send(None)
        assert stop.value.value == 105
    assert s.usage.steps == 1


def test_generator_close_counts_as_success(tmp_path: Path) -> None:
    """Closing a wrapped generator early runs its cleanup and is not a failed call."""
    cleaned: list[bool] = []

    @budget.step
    def items():  # type: ignore[no-untyped-def]
        try:
            yield 1
            yield 2
        finally:
            cleaned.append(True)

    with SessionBudget(max_consecutive_errors=1, handoff_dir=tmp_path) as s:
        g = items()
        assert next(g) == 1
        g.close()
        assert cleaned == [True]
        assert list(items()) == [1, 2]  # would raise if the close counted as an error
    assert s.result is not None
    assert s.result.stop_reason == "completed"


@pytest.mark.asyncio
async def test_async_generator_charged_on_first_iteration(tmp_path: Path) -> None:
    """An async generator is charged on its first __anext__; one generator = one step."""
    log: list[int] = []

    @budget.step
    async def items(n: int):  # type: ignore[no-untyped-def]
        log.append(n)
        for i in range(n):
            yield i

    async with SessionBudget(max_steps=1, handoff_dir=tmp_path) as s:
        a1, a2 = items(50), items(3)
        assert s.usage.steps == 0
        assert [x async for x in a1] == list(range(50))
        assert s.usage.steps == 1
        with pytest.raises(BudgetExhausted):
            await a2.__anext__()
    assert log == [50]


@pytest.mark.asyncio
async def test_async_generator_asend_athrow_forwarded() -> None:
    """asend() and athrow() pass through a wrapped async generator."""
    seen: list[Any] = []

    @budget.step
    async def echo():  # type: ignore[no-untyped-def]
        total = 0
        while True:
            try:
                got = yield total
            except KeyError as exc:
                seen.append(exc)
                got = 100
            if got is None:
                return
            total += got

    async with SessionBudget(handoff_dir=None) as s:
        g = echo()
        assert await g.__anext__() == 0
        assert await g.asend(5) == 5
        err = KeyError("k")
        assert await g.athrow(err) == 105
        assert seen == [err]
        with pytest.raises(StopAsyncIteration):
            await g.asend(None)
    assert s.usage.steps == 1


@pytest.mark.asyncio
async def test_async_generator_athrow_unhandled_propagates(tmp_path: Path) -> None:
    """An exception thrown into a wrapped async generator and not handled propagates unchanged."""

    @budget.step
    async def items():  # type: ignore[no-untyped-def]
        yield 1
        yield 2

    async with SessionBudget(handoff_dir=tmp_path):
        g = items()
        assert await g.__anext__() == 1
        err = ValueError("stop")
        with pytest.raises(ValueError) as info:
            await g.athrow(err)
        assert info.value is err


@pytest.mark.asyncio
async def test_async_generator_aclose_runs_cleanup() -> None:
    """aclose() on a wrapped async generator closes the inner one (its finally runs)."""
    cleaned: list[bool] = []

    @budget.step
    async def items():  # type: ignore[no-untyped-def]
        try:
            yield 1
            yield 2
        finally:
            cleaned.append(True)

    async with SessionBudget(handoff_dir=None):
        g = items()
        assert await g.__anext__() == 1
        await g.aclose()
    assert cleaned == [True]


# --------------------------------------------------------------------------- bad use
@pytest.mark.parametrize("value", [42, "tool"])
def test_step_rejects_non_callable(value: Any) -> None:
    """@budget.step on something that is not callable raises BudgetTypeError naming it."""
    with pytest.raises(BudgetTypeError, match=repr(value)):
        budget.step(value)


@pytest.mark.parametrize("name", ["", 5, b"x"])
def test_step_rejects_bad_name(name: Any) -> None:
    """budget.step(name=...) must be a non-empty str."""
    with pytest.raises(BudgetTypeError, match="name"):
        budget.step(name=name)


# --------------------------------------------------------------------------- llm_call counting
def _usage(result: Any) -> Usage:
    return Usage(input_tokens=3, output_tokens=2, model="gpt-4o-mini")


LLM_DECORATORS = {
    "bare-usage": budget.llm_call(usage=_usage),
    "keywords": budget.llm_call(name="chat", model="gpt-4o-mini", usage=_usage),
}
CALL_SHAPES = [s.name for s in build_shapes(budget.step) if s.kind in ("sync", "coroutine")]


@pytest.mark.parametrize("deco", list(LLM_DECORATORS))
@pytest.mark.parametrize("shape_name", CALL_SHAPES)
def test_llm_call_counts_each_shape(deco: str, shape_name: str, tmp_path: Path) -> None:
    """@budget.llm_call on functions, async, methods, class/staticmethods: N calls, N+1 refused."""
    shape = next(s for s in build_shapes(LLM_DECORATORS[deco]) if s.name == shape_name)
    assert inspect.iscoroutinefunction(shape.target) == (shape.kind == "coroutine")
    assert list(inspect.signature(shape.target).parameters) == ["x"]
    assert shape.run(shape.target, 0) == 0  # pass-through outside a session
    with SessionBudget(max_llm_calls=2, handoff_dir=tmp_path) as s:
        assert shape.run(shape.target, 1) == 2
        assert shape.run(shape.target, 2) == 4
        with pytest.raises(BudgetExhausted) as info:
            shape.run(shape.target, 3)

    assert shape.log == [0, 1, 2]
    assert info.value.reason == "max_llm_calls"
    assert (s.usage.llm_calls, s.usage.steps, s.usage.total_tokens) == (2, 0, 10)
