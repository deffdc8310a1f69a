"""Framework adapters: charge a framework's own LLM and tool calls to the current session.

Each adapter lives in its own module and imports its framework only when that module is
imported, so ``import budgetkit`` never loads a framework. Install the matching extra:

* :mod:`budgetkit.integrations.langchain`: ``install budgetkit's [langchain] extra``
  (LangChain and LangGraph, ``BudgetCallbackHandler``);
* :mod:`budgetkit.integrations.openai_agents`: ``install budgetkit's [openai-agents] extra``
  (OpenAI Agents SDK, ``BudgetRunHooks``);
* :mod:`budgetkit.integrations.pydantic_ai`: ``install budgetkit's [pydantic-ai] extra``
  (Pydantic AI, ``BudgetCapability``).

Every adapter charges a framework LLM call like ``@budget.llm_call`` (admitted before the
request, charged with the usage the framework reports, priced when the model is known) and a
tool call like ``@budget.step``; on exhaustion the framework's run stops with
:class:`~budgetkit.BudgetExhausted` and the handoff is written, holding the framework's own
conversation, which the adapter's ``resume_messages`` / ``resume_input`` give back to a
resumed session.
"""

from __future__ import annotations

__all__: list[str] = []
