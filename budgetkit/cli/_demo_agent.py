"""The demo's research agent: plan, search, read, summarise — through the real ``openai`` client.

It talks to a local OpenAI-compatible stub server, so it runs offline with no API key; its
LLM calls are priced by genai-prices like real ones.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import budget

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._session import SessionBudget

GOAL = "How do production teams stop AI agents from looping forever and overspending?"
MODEL = "gpt-4o-mini"

SUBQUESTIONS = [
    "Which limits do agent frameworks enforce by default?",
    "How do teams price LLM calls per request?",
    "What happens to in-flight work when a cap trips?",
    "How can a stopped agent resume without redoing work?",
    "Which signals tell an agent to wrap up early?",
]

_CORPUS = {q: f"https://example.org/notes/{i}" for i, q in enumerate(SUBQUESTIONS, start=1)}


def stub_reply(request: dict[str, Any]) -> str:
    """Canned, deterministic answers for the stub server, keyed on the prompt's first word."""
    messages = request.get("messages") or []
    prompt = str(messages[-1].get("content", "")) if messages else ""
    if prompt.startswith("PLAN"):
        return json.dumps(SUBQUESTIONS)
    if prompt.startswith("SUMMARISE"):
        topic = prompt.split("\n", 1)[0].removeprefix("SUMMARISE ").strip()
        return f"Finding on '{topic}': bounded loops plus priced, resumable checkpoints."
    return "Final report: cap steps and dollars, let in-flight calls finish, hand off, resume."


@dataclass
class Notes:
    """What the agent has learnt so far; also what goes into the handoff."""

    pending: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    report: str | None = None


class ResearchAgent:
    """A small, realistic agent loop with every tool and LLM call budgeted."""

    def __init__(self, client: Any, *, delay: float = 0.0, on_event: Callable[[str], None]) -> None:
        self.client = client
        self.delay = delay
        self.on_event = on_event

    @budget.llm_call
    def ask(self, prompt: str) -> Any:
        """One chat completion through the real OpenAI client."""
        time.sleep(self.delay)
        return self.client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "You are a careful research assistant."},
                {"role": "user", "content": prompt},
            ],
        )

    @budget.step(name="web_search")
    def search(self, question: str) -> str:
        """Find a source for a question (a canned corpus, offline)."""
        time.sleep(self.delay)
        return _CORPUS.get(question, "https://example.org/notes/0")

    @budget.step(name="read_page")
    def read(self, url: str) -> str:
        """Read a source."""
        time.sleep(self.delay)
        return f"Contents of {url}: " + "agents need hard limits and clean handoffs. " * 20

    def run(self, session: SessionBudget, notes: Notes) -> Notes:
        """Plan (unless resuming), then research each pending question, then report."""
        if not notes.pending and not notes.findings:
            plan = self.ask(f"PLAN research questions for: {GOAL}")
            notes.pending = json.loads(plan.choices[0].message.content)
            self.on_event(f"planned {len(notes.pending)} questions")
        self._save(session, notes)
        while notes.pending:
            question = notes.pending[0]
            url = self.search(question)
            self.on_event(f"searched: {question}")
            page = self.read(url)
            self.on_event(f"read {url}")
            answer = self.ask(f"SUMMARISE {question}\n{page}")
            notes.findings.append(answer.choices[0].message.content)
            notes.pending.pop(0)
            self.on_event(f"summarised: {question}")
            self._save(session, notes)
        final = self.ask("REPORT\n" + "\n".join(notes.findings))
        notes.report = final.choices[0].message.content
        self.on_event("wrote the final report")
        return notes

    @staticmethod
    def _save(session: SessionBudget, notes: Notes) -> None:
        """Keep the handoff current, so a stop at any boundary loses nothing."""
        session.update_handoff(
            pending_tasks=list(notes.pending),
            context_summary=json.dumps({"goal": GOAL, "findings": notes.findings}),
        )


def notes_from_handoff(session: SessionBudget) -> Notes:
    """Pick up pending questions and findings from the handoff this session resumed."""
    handoff = session.resumed_from
    if handoff is None:
        return Notes()
    findings: list[str] = []
    if handoff.context_summary:
        findings = list(json.loads(handoff.context_summary).get("findings", []))
    return Notes(pending=[str(t) for t in handoff.pending_tasks], findings=findings)
