"""Reservations through the real openai client: concurrent reserved calls never overspend."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import openai
import pytest

from budgetkit import BudgetExhausted, SessionBudget, budget
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from pathlib import Path

# gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens.
PER_CALL = Decimal("0.00015") + Decimal("0.0003")  # 1,000 in + 500 out


@pytest.mark.asyncio
async def test_fifty_concurrent_reserved_calls_stay_within_max_usd(tmp_path: Path) -> None:
    """50 concurrent reserved calls: spend <= max_usd, and refused calls never reach the server."""
    with StubServer(usage=(1000, 500)) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)

        @budget.llm_call(estimate=lambda **kw: {"input_tokens": 1000, "output_tokens": 500})
        async def ask(**kwargs: Any) -> Any:
            await asyncio.sleep(0.01)  # keep many calls in flight at once
            return await client.chat.completions.create(**kwargs)

        reasons: list[str] = []

        async def one(i: int) -> bool:
            try:
                await ask(model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}])
            except BudgetExhausted as exc:
                reasons.append(exc.reason)
                return False
            return True

        async with SessionBudget(
            max_usd=Decimal("0.01"), handoff_dir=tmp_path, raise_on_exhausted=False
        ) as session:
            outcomes = await asyncio.gather(*(one(i) for i in range(50)))
        await client.close()

    admitted = sum(outcomes)
    assert set(reasons) == {"max_usd"}
    assert admitted == int(Decimal("0.01") // PER_CALL) == 22
    assert len(server.requests) == admitted == session.usage.llm_calls
    assert session.usage.cost_usd == admitted * PER_CALL <= Decimal("0.01")
    assert session.result is not None
    assert session.result.stop_reason == "max_usd"
