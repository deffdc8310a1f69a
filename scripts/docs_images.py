"""Regenerate the pictures of the documentation (docs/img/), from real budgetkit runs.

    .venv/bin/python scripts/docs_images.py

- ``span-tree.svg``: the spans of the demo agent stopped by its budget, drawn as a trace
  viewer shows them (one bar per span on a time axis, nested by parent).
- ``stats-plot.png``: ``budgetkit stats --plot`` on a log of 1,000 simulated sessions.
- ``phoenix-trace.png``: a screenshot of the demo's trace in a real Arize Phoenix UI, taken by
  headless Chromium. Needs ``chromium`` (Debian: ``apt-get install chromium``) and an
  interpreter with ``arize-phoenix`` (``$BUDGETKIT_PHOENIX_PYTHON``, e.g. ``.venv-phoenix/bin/
  python``, which ``scripts/test.sh`` sets up); skipped with a note when either is missing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any

import openai

from budgetkit import BudgetExhausted, SessionBudget, budget
from budgetkit._session_log import log_session
from budgetkit.cli._demo_agent import Notes, ResearchAgent, stub_reply
from budgetkit.testing import FakeClock, StubServer, fake_usage, record_spans

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def span_tree(out: Path) -> None:
    """Run the demo agent under its default budget and draw its spans."""
    with (
        record_spans() as spans,
        StubServer(reply=stub_reply) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        client = openai.OpenAI(base_url=server.base_url, api_key="demo", max_retries=0)
        agent = ResearchAgent(client, delay=0.02, on_event=lambda _: None)
        try:
            with SessionBudget(
                max_steps=8, max_usd=0.05, name="research-agent", handoff_dir=tmp
            ) as session:
                agent.run(session, Notes())
        except BudgetExhausted:
            pass
    finished = spans.spans
    root = next(s for s in finished if s.parent is None)
    rows: list[tuple[int, Any]] = [(0, root)]
    rows += [(1, child) for child in spans.children(root)]
    t0, t1 = root.start_time or 0, root.end_time or 1
    width, label_w, row_h, top = 980, 330, 26, 46
    scale = (width - label_w - 20) / (t1 - t0)
    height = top + row_h * len(rows) + 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="12" y="24" font-size="15" font-weight="bold">Trace of `budgetkit demo` '
        f"(max_steps=8, max_usd=0.05): {len(finished)} spans</text>",
    ]
    colours = {"invoke_agent": "#4C72B0", "execute_tool": "#55A868", "chat": "#DD8452"}
    for i, (depth, span) in enumerate(rows):
        y = top + i * row_h
        if i % 2 == 0:
            parts.append(
                f'<rect x="0" y="{y - 4}" width="{width}" height="{row_h}" fill="#f4f6f8"/>'
            )
        colour = colours.get(span.name.split(" ")[0], "#8172B3")
        x = label_w + ((span.start_time or t0) - t0) * scale
        w = max(((span.end_time or t1) - (span.start_time or t0)) * scale, 2)
        ms = ((span.end_time or t1) - (span.start_time or t0)) / 1e6
        parts.append(
            f'<text x="{12 + depth * 18}" y="{y + 13}">{escape(span.name)}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="16" rx="2" fill="{colour}"/>'
            f'<text x="{min(x + w + 4, width - 60):.1f}" y="{y + 13}" fill="#555" '
            f'font-size="11">{ms:.0f} ms</text>'
        )
        for event in span.events:
            ex = label_w + (event.timestamp - t0) * scale
            parts.append(f'<path d="M{ex:.1f} {y - 2} l6 10 l-6 10 l-6 -10 z" fill="#C44E52"/>')
    attrs = dict(root.attributes or {})
    note_y = top + row_h * len(rows) + 16
    reason = attrs.get("budgetkit.stop_reason") or attrs.get("budgetkit.session.stop_reason")
    summary = (
        f"session span: status {root.status.status_code.name}, stop reason {reason}; "
        "red diamond = budgetkit.budget.exhausted event"
    )
    parts.append(f'<text x="12" y="{note_y}" fill="#333">{escape(summary)}</text>')
    legend = (
        "blue = session (invoke_agent), green = tool steps (execute_tool), "
        "orange = LLM calls (chat gpt-4o-mini)"
    )
    parts.append(f'<text x="12" y="{note_y + 20}" fill="#333">{escape(legend)}</text>')
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")


@budget.step
def _tool() -> None:
    pass


@budget.llm_call
def _model(tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return fake_usage("gpt-4o-mini", tokens_in, tokens_out)


def stats_plot(out: Path) -> None:
    """Log 1,000 simulated sessions of a research agent, then plot them with the CLI."""
    rng = random.Random(10)  # noqa: S311 - a reproducible simulation
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sessions.jsonl"
        with FakeClock() as clock:
            for _ in range(1000):
                wanted = max(2, int(rng.lognormvariate(2.6, 0.45)))
                session = SessionBudget(
                    max_steps=25,
                    max_usd=Decimal("0.50"),
                    handoff_dir=tmp,
                    raise_on_exhausted=False,
                )
                with session:
                    for _ in range(wanted):
                        _tool()
                        _model(rng.randint(2_000, 9_000), rng.randint(150, 900))
                        clock.advance(rng.uniform(0.5, 4.0))
                log_session(session, log)
        subprocess.run(
            [sys.executable, "-m", "budgetkit", "stats", str(log), "--plot", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        return json.load(response)


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310
        return bool(response.status == 200)


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def _demo(endpoint: str, *args: str) -> None:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
        "NO_COLOR": "1",
    }
    subprocess.run(
        [sys.executable, "-m", "budgetkit", "demo", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )


#: Where Phoenix puts an LLM span's first input message (from ``gen_ai.input.messages``).
_PROMPT = "llm.input_messages.0.message.content"


def phoenix_trace(out: Path, phoenix_python: str, chromium: str) -> None:
    """Export the demo and its resume to a local Phoenix; screenshot the stopped run's trace."""
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        env = {
            **os.environ,
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(_free_port()),
            "PHOENIX_WORKING_DIR": str(Path(tmp) / "phoenix"),
        }
        url = f"http://127.0.0.1:{port}"
        with (Path(tmp) / "phoenix.log").open("w") as log:
            server = subprocess.Popen(
                [phoenix_python, "-m", "phoenix.server.main", "serve"],
                env=env,
                stdout=log,
                stderr=log,
            )
            try:
                _wait(lambda: server.poll() is None and _healthy(url), 120, "phoenix serve")
                handoffs = Path(tmp) / "handoffs"
                _demo(url, "--handoff-dir", str(handoffs))
                [handoff] = handoffs.glob("*.json")
                _demo(url, "--resume", str(handoff))
                spans_url = f"{url}/v1/projects/default/spans?limit=1000"

                def both() -> list[dict[str, Any]]:
                    data: list[dict[str, Any]] = _get_json(spans_url)["data"]
                    return data if sum(s["parent_id"] is None for s in data) >= 2 else []

                spans = _wait(both, 60, "the demo's spans in Phoenix")
                time.sleep(1)
                first = min(
                    (s for s in spans if s["parent_id"] is None), key=lambda s: s["start_time"]
                )
                trace_id = first["context"]["trace_id"]
                summary = next(
                    s
                    for s in spans
                    if s["context"]["trace_id"] == trace_id
                    and s["span_kind"] == "LLM"
                    and str(s["attributes"].get(_PROMPT, "")).startswith("SUMMARISE")
                )
                page = f"{url}/redirects/spans/{summary['context']['span_id']}"
                subprocess.run(
                    [
                        chromium,
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--hide-scrollbars",
                        "--window-size=1440,900",
                        "--virtual-time-budget=20000",
                        f"--screenshot={out}",
                        page,
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=120,
                )
            finally:
                server.terminate()
                server.wait(30)


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    span_tree(IMG / "span-tree.svg")
    stats_plot(IMG / "stats-plot.png")
    print(f"wrote {IMG / 'span-tree.svg'} and {IMG / 'stats-plot.png'}")
    phoenix = os.environ.get("BUDGETKIT_PHOENIX_PYTHON")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if phoenix and chromium:
        phoenix_trace(IMG / "phoenix-trace.png", phoenix, chromium)
        print(f"wrote {IMG / 'phoenix-trace.png'}")
    else:
        print("phoenix-trace.png not redrawn: needs $BUDGETKIT_PHOENIX_PYTHON and chromium")


if __name__ == "__main__":
    main()
