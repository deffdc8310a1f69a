"""``budgetkit demo``: a research agent under a budget that trips, then ``--resume`` finishes."""

from __future__ import annotations

import contextlib
import os
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .._session import SessionBudget
from ..exceptions import BudgetError, BudgetExhausted
from . import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from ._args import add_limit_arguments, limits_from_args
from ._output import fancy, fmt_usd, print_table

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator


def add_parser(sub: Any) -> None:
    """Register ``demo``."""
    parser = sub.add_parser(
        "demo",
        help="run a small research agent offline under a budget that trips, then resume it",
        description=(
            "Runs a research agent (plan, search, read, summarise) whose LLM calls go through "
            "the real openai client to a local stub server on 127.0.0.1: no network, no API "
            "key; calls are priced as gpt-4o-mini. The default budget trips, the handoff is "
            "written; --resume HANDOFF finishes the work with a fresh budget. Spans go to "
            "$OTEL_EXPORTER_OTLP_ENDPOINT when it is set, else stay in this process."
        ),
        epilog=(
            "exit codes: 0 the agent stopped cleanly at the budget (handoff written) or "
            "finished; 1 the --resume file is not a valid handoff; 2 usage error."
        ),
    )
    add_limit_arguments(parser, max_steps=8, max_usd=Decimal("0.05"))
    parser.add_argument(
        "--resume", metavar="HANDOFF", help="continue from a handoff file with a fresh budget"
    )
    parser.add_argument(
        "--handoff-dir",
        default=None,
        metavar="DIR",
        help="where handoffs go (default: $BUDGETKIT_HANDOFF_DIR or ./handoffs; "
        "with --resume: next to HANDOFF)",
    )
    parser.add_argument(
        "--delay",
        type=_seconds,
        default=None,
        metavar="S",
        help="seconds each call takes (default: 0.15 on a terminal, else 0)",
    )
    parser.set_defaults(func=run)


def _seconds(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected zero or more seconds, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run or resume the demo agent; exit 0 when it stopped cleanly or finished."""
    try:
        import openai
    except ImportError:
        print(
            "budgetkit demo: error: needs the openai client: install budgetkit's [demo] extra",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from ..testing import StubServer
    from ._demo_agent import ResearchAgent, notes_from_handoff, stub_reply, stub_usage

    limits = limits_from_args(args)
    extra: dict[str, Any] = {"name": "research-agent"}
    if args.handoff_dir is not None:
        extra["handoff_dir"] = args.handoff_dir
    try:
        if args.resume:
            session = SessionBudget.resume(args.resume, **limits, **extra)
        else:
            session = SessionBudget(**limits, **extra)
    except BudgetError as exc:
        print(f"budgetkit demo: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if session.handoff_dir is not None:
        path = session.handoff_dir / f"{session.session_id}.json"
        session.update_handoff(
            resume_instructions=f"budgetkit demo --resume {path}  (a fresh budget; "
            "the pending questions and the findings so far are carried over)"
        )
    delay = args.delay if args.delay is not None else (0.15 if fancy() else 0.0)
    outcome: BudgetExhausted | None = None
    notes = None
    with (
        _tracing() as trace_id_of,
        StubServer(reply=stub_reply, usage=stub_usage) as server,
        openai.OpenAI(base_url=server.base_url, api_key="demo-key", max_retries=0) as client,
    ):
        with _progress(session) as on_event:
            agent = ResearchAgent(client, delay=delay, on_event=on_event)
            try:
                with session:
                    notes = agent.run(session, notes_from_handoff(session))
            except BudgetExhausted as exc:
                outcome = exc
        trace_id = trace_id_of(session)
    _summary(session, outcome, trace_id, notes.report if notes is not None else None)
    return EXIT_OK


def _summary(
    session: SessionBudget,
    outcome: BudgetExhausted | None,
    trace_id: str | None,
    report: str | None,
) -> None:
    result = session.result
    assert result is not None
    usage = result.usage
    lim = session.limits
    rows: list[tuple[str, Any]] = [
        ("session", session.session_id),
        ("steps", _against(usage.steps, lim.max_steps)),
        ("LLM calls", _against(usage.llm_calls, lim.max_llm_calls)),
        (
            "tokens",
            f"{usage.total_tokens:,} ({usage.input_tokens:,} in, {usage.output_tokens:,} out)",
        ),
        ("cost", fmt_usd(usage.cost_usd) + (f" of {fmt_usd(lim.max_usd)}" if lim.max_usd else "")),
        ("stop reason", result.stop_reason),
        ("handoff", str(result.handoff_path) if result.handoff_path else "-"),
        ("trace id", trace_id or "-"),
    ]
    if session.parent_session_id:
        rows.insert(1, ("resumed from", session.parent_session_id))
    print_table("budgetkit demo: summary", rows)
    if outcome is not None:
        if result.handoff_path is not None:
            print(
                "\nStopped cleanly at the budget boundary; the handoff holds the pending work. "
                f"Resume with:\n  budgetkit demo --resume {result.handoff_path}"
            )
        else:
            print("\nStopped cleanly at the budget boundary; no handoff file was written.")
    elif report:
        print(f"\nReport: {report}")


def _against(used: int, limit: int | None) -> str:
    return f"{used}" if limit is None else f"{used} of {limit}"


def _gauge(session: SessionBudget) -> str:
    """``steps 3/8 | LLM calls 4 | $0.0031/$0.0500``: each limit, for the plain display."""
    u, lim = session.usage, session.limits
    usd = fmt_usd(u.cost_usd) + (f"/{fmt_usd(lim.max_usd)}" if lim.max_usd else "")
    steps = f"{u.steps}/{lim.max_steps}" if lim.max_steps else f"{u.steps}"
    calls = f"{u.llm_calls}/{lim.max_llm_calls}" if lim.max_llm_calls else f"{u.llm_calls}"
    return f"steps {steps:>5} | LLM calls {calls:>5} | {usd}"


@contextlib.contextmanager
def _progress(session: SessionBudget) -> Iterator[Callable[[str], None]]:
    """A live bar per limit on a terminal; one plain line per event otherwise."""
    if not fancy():

        def plain(event: str) -> None:
            print(f"[{_gauge(session)}] {event}", flush=True)

        yield plain
        return
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.fields[label]}")
    )
    lim = session.limits
    bars = {}
    if lim.max_steps:
        bars["steps"] = progress.add_task("steps", total=lim.max_steps, label="")
    if lim.max_llm_calls:
        bars["llm"] = progress.add_task("LLM calls", total=lim.max_llm_calls, label="")
    if lim.max_usd:
        bars["usd"] = progress.add_task("USD", total=float(lim.max_usd), label="")
    if lim.max_tokens:
        bars["tokens"] = progress.add_task("tokens", total=lim.max_tokens, label="")

    def update(event: str) -> None:
        u = session.usage
        if "steps" in bars:
            progress.update(bars["steps"], completed=u.steps, label=f"{u.steps}/{lim.max_steps}")
        if "llm" in bars:
            progress.update(
                bars["llm"], completed=u.llm_calls, label=f"{u.llm_calls}/{lim.max_llm_calls}"
            )
        if "usd" in bars:
            progress.update(
                bars["usd"],
                completed=float(u.cost_usd),
                label=f"{fmt_usd(u.cost_usd)}/{fmt_usd(lim.max_usd)}",
            )
        if "tokens" in bars:
            progress.update(
                bars["tokens"],
                completed=u.total_tokens,
                label=f"{u.total_tokens:,}/{lim.max_tokens:,}",
            )
        progress.console.print(f"  {event}", markup=False, highlight=False)

    with Live(progress, console=progress.console, refresh_per_second=10, transient=False):
        update("started")
        yield update


@contextlib.contextmanager
def _tracing() -> Iterator[Callable[[SessionBudget], str | None]]:
    """Spans go to ``$OTEL_EXPORTER_OTLP_ENDPOINT`` when set, else stay in this process."""
    try:
        from .. import otel
    except ImportError:  # pragma: no cover - telemetry helper not available
        yield lambda _s: None
        return
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    try:
        telemetry = otel.configure(service_name="budgetkit-demo", export=bool(endpoint))
    except BudgetError as exc:  # no SDK, or the process has its own provider
        print(f"budgetkit demo: tracing off: {exc}", file=sys.stderr)
        yield lambda _s: None
        return
    try:
        yield otel.trace_id_of
    finally:
        flushed = telemetry.force_flush(10_000)
        telemetry.shutdown()
        if endpoint:
            status = "sent" if flushed else "could not all be sent"
            print(f"budgetkit demo: spans {status} to {endpoint} (OTLP)", file=sys.stderr)
