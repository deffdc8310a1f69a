"""A small research agent that exports its spans with ``budgetkit.otel.configure()``.

Run as a script by the end-to-end tests (a fresh process, so the test process's global
tracer provider is untouched). Prints a JSON summary on stdout.
"""

from __future__ import annotations

import json

from budgetkit import SessionBudget, Usage, budget, otel


@budget.step
def search(query: str) -> str:
    return f"results for {query}"


@budget.llm_call(model="gpt-4o-mini", provider="openai")
def summarise(messages: list[dict[str, str]]) -> Usage:
    return Usage(input_tokens=1000, output_tokens=200, model="gpt-4o-mini-2024-07-18")


def main() -> None:
    telemetry = otel.configure(service_name="budgetkit-e2e")
    try:
        with SessionBudget(
            name="researcher", max_steps=3, max_usd=1, raise_on_exhausted=False, handoff_dir=None
        ) as session:
            for topic in ("otel", "jaeger", "phoenix", "budgets"):
                found = search(topic)
                summarise(messages=[{"role": "user", "content": found}])
    finally:
        telemetry()  # flush: a short run must still export its spans
    result = session.result
    assert result is not None
    print(
        json.dumps(
            {
                "session_id": session.session_id,
                "trace_id": otel.trace_id_of(session),
                "stop_reason": result.stop_reason,
                "steps": result.usage.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
