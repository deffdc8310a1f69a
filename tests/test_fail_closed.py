"""Fail closed: a budget that is set is a budget that holds (issue #16).

Each test names the hole it closes; each failed on the code before the fix.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import signal
import threading
import time
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from budgetkit import (
    BudgetExhausted,
    CostUnknownWarning,
    SessionBudget,
    UnbudgetedCallWarning,
    UnmeasuredUsageWarning,
    budget,
)
from budgetkit.testing import StubServer

PACKAGE = str(Path(budget.__file__).parent)


def _client(stub: StubServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0)


# ------------------------------------------------------------------ 1. unknown models
def test_an_unknown_model_under_max_usd_stops_the_session() -> None:
    """Calls to a model no price table knows: the first returns, the next boundary stops
    with reason cost_unknown, naming the model and both fixes (was: completed at $0)."""
    with StubServer() as stub:
        client = _client(stub)

        @budget.llm_call
        def ask(text: str) -> Any:
            return client.chat.completions.create(
                model="acme-llm-9000", messages=[{"role": "user", "content": text}]
            )

        answered: list[Any] = []

        def run() -> None:
            with SessionBudget(max_usd=0.01, handoff_dir=None):
                for i in range(3):
                    answered.append(ask(f"question {i}"))

        with pytest.raises(BudgetExhausted) as info:
            run()
    assert len(answered) == 1
    exc = info.value
    assert exc.reason == "cost_unknown"
    assert exc.usage.unpriced_calls == 1
    assert "'acme-llm-9000'" in str(exc)
    assert "prices=" in str(exc)
    assert "on_unknown_cost='warn'" in str(exc)
    assert "max_usd=0.01" in str(exc)


def test_on_unknown_cost_warn_is_the_opt_out_and_points_at_the_callers_line() -> None:
    """on_unknown_cost="warn": the session goes on, one CostUnknownWarning per model, and
    the warning names this file and line (was: budgetkit's own _calls.py)."""

    @budget.llm_call
    def ask() -> dict[str, Any]:
        return {"model": "acme-llm-9000", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SessionBudget(max_usd=0.01, on_unknown_cost="warn", handoff_dir=None) as s:
            line = _line_of_next_statement()
            ask()
            for _ in range(2):
                ask()
    unknown = [w for w in caught if w.category is CostUnknownWarning]
    assert len(unknown) == 1
    assert unknown[0].filename == __file__
    assert unknown[0].lineno == line
    assert s.result is not None
    assert s.result.stop_reason == "completed"
    assert s.usage.unpriced_calls == 3


def _line_of_next_statement() -> int:
    import inspect

    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + 1


def test_without_a_usd_limit_an_unknown_cost_is_only_counted() -> None:
    """No USD limit: an unpriced call is counted in unpriced_calls; nothing stops or warns."""

    @budget.llm_call
    def ask() -> dict[str, Any]:
        return {"model": "acme-llm-9000", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    with SessionBudget(max_steps=10, handoff_dir=None) as s:
        for _ in range(3):
            ask()
    assert s.usage.unpriced_calls == 3
    assert s.result is not None
    assert s.result.stop_reason == "completed"


def test_a_chains_max_total_usd_makes_an_unknown_cost_stop_too() -> None:
    """max_total_usd is a USD limit too: its unknown costs stop the session by default."""

    @budget.llm_call
    def ask() -> dict[str, Any]:
        return {"model": "acme-llm-9000", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    def run() -> None:
        with SessionBudget(max_total_usd=1, handoff_dir=None):
            ask()
            ask()

    with pytest.raises(BudgetExhausted) as info:
        run()
    assert info.value.reason == "cost_unknown"
    assert "max_total_usd=1" in str(info.value)


# ------------------------------------------------------------------ 2. unmeasured calls
MALFORMED: list[Any] = [
    {"model": "gpt-4o-mini", "usage": {"prompt_tokens": -5, "completion_tokens": 1}},
    {"model": "gpt-4o-mini", "usage": {"prompt_tokens": "12", "completion_tokens": 1}},
    {"model": "gpt-4o-mini", "usage": {"prompt_tokens": None, "completion_tokens": 1}},
    {"model": "gpt-4o-mini", "usage": {"prompt_tokens": math.nan, "completion_tokens": 1}},
    {"model": "gpt-4o-mini", "usage": {"prompt_tokens": True, "completion_tokens": 1}},
    {"model": "gpt-4o-mini"},
]


@pytest.mark.parametrize("response", MALFORMED)
def test_an_unmeasured_call_is_charged_its_reservation(response: Any) -> None:
    """Malformed or missing usage with a $0.01 estimate under max_usd=0.05: each call costs
    its reservation, so 5 calls run (was: 20 of 20, at $0)."""
    ran: list[int] = []

    @budget.llm_call(estimate=lambda i: Decimal("0.01"))
    def ask(i: int) -> Any:
        ran.append(i)
        return response

    s = SessionBudget(max_usd=0.05, handoff_dir=None)

    def run() -> None:
        with s:
            for i in range(20):
                ask(i)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnmeasuredUsageWarning)
        with pytest.raises(BudgetExhausted) as info:
            run()
    assert ran == [0, 1, 2, 3, 4]
    assert info.value.reason == "max_usd"
    assert s.usage.cost_usd == Decimal("0.05")
    assert s.usage.unmeasured_calls == 5


def test_an_unmeasured_call_without_a_reservation_is_an_unknown_cost() -> None:
    """No usage and no estimate under a USD limit: the cost is unknown, and the session stops
    at the next boundary (was: counted as $0 and went on)."""

    @budget.llm_call
    def ask() -> dict[str, Any]:
        return {"model": "gpt-4o-mini"}

    def run() -> None:
        with SessionBudget(max_usd=1, handoff_dir=None):
            ask()
            ask()

    with pytest.warns(UnmeasuredUsageWarning), pytest.raises(BudgetExhausted) as info:
        run()
    assert info.value.reason == "cost_unknown"
    assert info.value.usage.unmeasured_calls == 1


# ------------------------------------------------------------------ 7. threads
@budget.step
def _tool(i: int) -> int:
    return i


def _run_threads(s: SessionBudget, use_executor: bool) -> tuple[list[int], list[BaseException]]:
    done: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            _tool(i)
            with lock:
                done.append(i)
        except BudgetExhausted as exc:
            with lock:
                errors.append(exc)

    with s:
        if use_executor:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(work, range(10)))
        else:
            threads = [threading.Thread(target=work, args=(i,)) for i in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    return done, errors


@pytest.mark.parametrize("use_executor", [False, True])
def test_threads_inherit_joins_threads_and_executors_to_the_session(use_executor: bool) -> None:
    """threads="inherit": 10 threads (or executor tasks) under max_steps=5 run 5 steps and
    the other 5 are refused (was: 10 ran, none charged)."""
    s = SessionBudget(max_steps=5, threads="inherit", handoff_dir=None, raise_on_exhausted=False)
    done, errors = _run_threads(s, use_executor)
    assert len(done) == 5
    assert len(errors) == 5
    assert s.usage.steps == 5


def test_an_explicit_thread_warns_that_its_calls_are_not_charged() -> None:
    """The default: a plain thread's step runs uncharged, with UnbudgetedCallWarning."""
    s = SessionBudget(max_steps=5, handoff_dir=None)
    with pytest.warns(UnbudgetedCallWarning, match="threads='inherit'"):
        done, _ = _run_threads(s, use_executor=False)
    assert len(done) == 10
    assert s.usage.steps == 0


def test_no_warning_outside_every_session() -> None:
    """With no session open anywhere, a decorated call is a quiet pass-through."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = threading.Thread(target=_tool, args=(1,))
        t.start()
        t.join()


# ------------------------------------------------------------------ 8. the last call
def test_the_last_call_over_a_limit_ends_the_session_exhausted(tmp_path: Path) -> None:
    """The block's last call crosses max_usd and no boundary follows: no exception, but the
    result, the session log and the handoff say exhausted, and the threshold that call
    crossed fired (was: "completed")."""
    crossed: list[str] = []
    log = tmp_path / "sessions.jsonl"

    @budget.llm_call
    def ask() -> dict[str, Any]:
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 100_000, "completion_tokens": 0}}

    with SessionBudget(
        max_usd=0.01,
        thresholds=[0.8],
        on_threshold=lambda s, dim: crossed.append(dim),
        handoff_dir=tmp_path / "handoffs",
        session_log=log,
    ) as s:
        ask()  # $0.015: over the limit, and nothing after it
    assert s.result is not None
    assert s.result.exhausted
    assert s.result.stop_reason == "max_usd"
    assert s.result.handoff_path == tmp_path / "handoffs" / f"{s.session_id}.json"
    assert s.result.handoff_path.exists()
    assert crossed == ["usd"]
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["stop_reason"] == "max_usd"


# ------------------------------------------------------------------ 10. Ctrl-C
def test_a_sigint_storm_leaves_no_call_free_and_no_reservation_held() -> None:
    """KeyboardInterrupts landing inside budgetkit while reserved calls are admitted and
    settled: afterwards every admitted call is charged and nothing stays reserved (was: calls
    recorded at $0 and reservations held)."""
    interrupts = 0
    in_call = False

    def inside_budgetkit(signum: int, frame: Any) -> None:
        nonlocal interrupts
        while in_call and frame is not None:  # raise only inside budgetkit, during a call
            if frame.f_code.co_filename.startswith(PACKAGE):
                interrupts += 1
                raise KeyboardInterrupt
            frame = frame.f_back

    @budget.llm_call(estimate=lambda: Decimal("0.001"))
    def ask() -> dict[str, Any]:
        return {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 100, "completion_tokens": 10}}

    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.0002)

    limit = Decimal(1000)
    previous = signal.signal(signal.SIGINT, inside_budgetkit)
    sender = threading.Thread(target=storm)
    try:
        with SessionBudget(max_usd=limit, handoff_dir=None, on_unknown_cost="warn") as s:
            sender.start()
            deadline = time.monotonic() + 2
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                while time.monotonic() < deadline:
                    try:
                        in_call = True
                        ask()
                        in_call = False
                    except KeyboardInterrupt:
                        in_call = False
            stop.set()
            sender.join()
            usage = s.usage
            # Nothing is still reserved: the whole rest of the budget can be reserved.
            with s.reserve(usd=limit - usage.cost_usd):
                pass
    finally:
        stop.set()
        signal.signal(signal.SIGINT, previous)
    assert interrupts > 20
    measured = usage.input_tokens // 100
    assert usage.llm_calls <= measured + usage.unmeasured_calls
