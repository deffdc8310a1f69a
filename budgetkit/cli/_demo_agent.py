"""The demo's research agent: plan, search, read, summarise — through the real ``openai`` client.

It talks to a local OpenAI-compatible stub server, so it runs offline with no API key. The
stub reports the tokens each request really carries (about four characters a token: the
pages the agent reads are a few thousand tokens long) and answer sizes typical of
``gpt-4o-mini``; genai-prices prices them like real calls.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import budget

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._session import SessionBudget

GOAL = "How do production teams stop AI agents from looping forever and overspending?"
MODEL = "gpt-4o-mini"
#: The cap every request sends; with it each call reserves its worst-case cost first.
MAX_OUTPUT_TOKENS = 800

SUBQUESTIONS = [
    "Which limits do agent frameworks enforce by default?",
    "How do teams price LLM calls per request?",
    "What happens to in-flight work when a cap trips?",
    "How can a stopped agent resume without redoing work?",
    "Which signals tell an agent to wrap up early?",
]

_CORPUS = {q: f"https://example.org/notes/{i}" for i, q in enumerate(SUBQUESTIONS, start=1)}

_PARAGRAPHS = (
    "Agent loops fail in two ways: they never decide they are done, or they retry a failing "
    "tool until someone notices the bill. Teams that run agents in production put a hard "
    "ceiling on steps and on dollars, checked before every tool and model call.",
    "Each request is priced from the token counts the provider returns, using the model's "
    "published price per million input and output tokens; cached input is cheaper, and "
    "reasoning tokens are billed as output.",
    "When a limit trips, the call in flight is allowed to finish so that no paid work is "
    "thrown away. The next boundary refuses to start new work and writes a handoff: what "
    "was done, what is pending, and how to continue.",
    "A resumed run starts with a fresh budget, reads the handoff, and picks up the pending "
    "tasks; its trace links to the trace of the run it continues.",
)

#: What each tool takes, in seconds, on top of ``--delay``: a search API and a page fetch are
#: tens of milliseconds, so their spans have a visible bar in a trace viewer.
TOOL_LATENCY = {"web_search": 0.03, "read_page": 0.06}

#: Output tokens of each kind of answer: a short plan, a summary, a longer report.
_OUTPUT_TOKENS = {"PLAN": 180, "SUMMARISE": 420, "REPORT": 760}


def _prompt(request: dict[str, Any]) -> str:
    messages = request.get("messages") or []
    return str(messages[-1].get("content", "")) if messages else ""


def stub_reply(request: dict[str, Any]) -> str:
    """Canned, deterministic answers for the stub server, keyed on the prompt's first word."""
    prompt = _prompt(request)
    if prompt.startswith("PLAN"):
        return json.dumps(SUBQUESTIONS)
    if prompt.startswith("SUMMARISE"):
        topic = prompt.split("\n", 1)[0].removeprefix("SUMMARISE ").strip()
        return f"{topic} Bounded loops plus priced, resumable checkpoints."
    return (
        "Cap steps and dollars per run, price every call from its reported usage, let the "
        "call in flight finish, then hand off the pending work and resume with a fresh budget."
    )


def stub_usage(request: dict[str, Any]) -> tuple[int, int]:
    """Input tokens from the request's size; output tokens typical of each kind of answer."""
    input_tokens = max(1, math.ceil(len(json.dumps(request.get("messages"))) / 4))
    kind = _prompt(request).split(" ", 1)[0].split("\n", 1)[0]
    return input_tokens, _OUTPUT_TOKENS.get(kind, 300)


def _estimate(prompt: str) -> dict[str, int]:
    """An upper bound of one request: two characters a token, plus the output cap."""
    return {"input_tokens": len(prompt) // 2 + 100, "output_tokens": MAX_OUTPUT_TOKENS}


@dataclass
class Notes:
    """What the agent has learnt so far; also what goes into the handoff."""

    pending: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    report: str | None = None

    def summary(self) -> str:
        """The handoff's ``context_summary``: readable, and parsed back on resume."""
        lines = [f"Goal: {GOAL}", f"Findings so far ({len(self.findings)}):"]
        lines += [f"- {finding}" for finding in self.findings]
        return "\n".join(lines)


class ResearchAgent:
    """A small, realistic agent loop with every tool and LLM call budgeted."""

    def __init__(self, client: Any, *, delay: float = 0.0, on_event: Callable[[str], None]) -> None:
        self.client = client
        self.delay = delay
        self.on_event = on_event

    @budget.llm_call(name="chat", model=MODEL, provider="openai", estimate=_estimate)
    def ask(self, prompt: str) -> Any:
        """One chat completion through the real OpenAI client."""
        time.sleep(self.delay)
        return self.client.chat.completions.create(
            model=MODEL,
            max_tokens=MAX_OUTPUT_TOKENS,
            messages=[
                {"role": "system", "content": "You are a careful research assistant."},
                {"role": "user", "content": prompt},
            ],
        )

    @budget.step(name="web_search")
    def search(self, question: str) -> str:
        """Find a source for a question (a canned corpus, offline)."""
        time.sleep(self.delay + TOOL_LATENCY["web_search"])
        return _CORPUS.get(question, "https://example.org/notes/0")

    @budget.step(name="read_page")
    def read(self, url: str) -> str:
        """Read a source: a page of a few thousand tokens."""
        time.sleep(self.delay + TOOL_LATENCY["read_page"])
        return f"Contents of {url}:\n" + "\n\n".join(_PARAGRAPHS * 18)

    def run(self, session: SessionBudget, notes: Notes) -> Notes:
        """Plan (unless resuming), then research each pending question, then report."""
        if not notes.pending and not notes.findings:
            plan = self.ask(f"PLAN research questions for: {GOAL}")
            notes.pending = json.loads(plan.choices[0].message.content)
            self.on_event(f"planned {len(notes.pending)} questions")
        else:
            self.on_event(f"resumed: {len(notes.pending)} pending, {len(notes.findings)} done")
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
        session.update_handoff(pending_tasks=list(notes.pending), context_summary=notes.summary())


def notes_from_handoff(session: SessionBudget) -> Notes:
    """Pick up pending questions and findings from the handoff this session resumed."""
    handoff = session.resumed_from
    if handoff is None:
        return Notes()
    findings = [
        line[2:] for line in (handoff.context_summary or "").splitlines() if line.startswith("- ")
    ]
    return Notes(pending=[str(t) for t in handoff.pending_tasks], findings=findings)
