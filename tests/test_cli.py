"""The ``budgetkit`` command line: ``demo``, ``show``, ``run``, ``stub``; exit codes, bad input."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from budgetkit import Handoff, __version__
from budgetkit._files import write_atomic
from budgetkit.cli import EXIT_EXHAUSTED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, main
from budgetkit.testing import StubServer

if TYPE_CHECKING:
    from collections.abc import Iterator

ANSI = re.compile(r"\x1b\[")


def _env(**extra: str) -> dict[str, str]:
    """This environment without settings that change the CLI's behaviour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "BUDGETKIT_")) and k not in ("NO_COLOR", "CI")
    }
    return {**env, **extra}


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``budgetkit ARGS`` in a fresh process; its stdout and stderr are pipes."""
    return subprocess.run(
        [sys.executable, "-m", "budgetkit", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _rows(stdout: str) -> dict[str, str]:
    """The ``key  value`` lines of a plain-text table."""
    rows = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"  (\S.*?)\s{2,}(\S.*)", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


# ---------------------------------------------------------------------------- demo
def test_demo_trips_writes_the_handoff_and_resume_finishes(tmp_path: Path) -> None:
    first = _cli("demo", cwd=tmp_path)
    assert first.returncode == EXIT_OK, first.stderr
    assert not ANSI.search(first.stdout + first.stderr)  # a pipe: plain text
    assert "Traceback" not in first.stderr
    rows = _rows(first.stdout)
    assert rows["steps"] == "8 of 8"
    assert rows["stop reason"] == "max_steps"
    assert int(rows["LLM calls"]) == 5
    tokens = re.fullmatch(r"([\d,]+) \(([\d,]+) in, ([\d,]+) out\)", rows["tokens"])
    assert tokens is not None
    # Realistic: pages of a few thousand tokens, priced as gpt-4o-mini, well within $0.05.
    assert int(tokens.group(2).replace(",", "")) > 10_000
    cost = re.fullmatch(r"\$(\d+\.\d{4,}) of \$0\.0500", rows["cost"])
    assert cost is not None
    assert Decimal("0.001") < Decimal(cost.group(1)) < Decimal("0.05")
    assert re.fullmatch(r"[0-9a-f]{32}", rows["trace id"])
    # The live display printed one plain line per event, each with every limit.
    # Small amounts keep three significant digits ($0.000116, not $0.0001).
    assert "[steps   1/8 | LLM calls     1 | $0.000116/$0.0500] searched:" in first.stdout

    path = tmp_path / rows["handoff"]
    assert path.parent == tmp_path / "handoffs"
    handoff = Handoff.load(path)
    assert handoff.reason == "max_steps"
    assert handoff.trace_id == rows["trace id"]
    assert handoff.pending_tasks == ["Which signals tell an agent to wrap up early?"]
    assert abs(Decimal(handoff.usage["cost_usd"]) - Decimal(cost.group(1))) <= Decimal("0.00005")
    assert f"budgetkit demo --resume {rows['handoff']}" in first.stdout
    assert "budgetkit demo --resume" in handoff.resume_instructions

    second = _cli("demo", "--resume", str(path), cwd=tmp_path)
    assert second.returncode == EXIT_OK, second.stderr
    assert not ANSI.search(second.stdout)
    rows2 = _rows(second.stdout)
    assert rows2["stop reason"] == "completed"
    assert rows2["resumed from"] == handoff.session_id
    assert rows2["handoff"] == "-"
    assert rows2["steps"] == "2 of 8"  # only the pending question was researched
    assert "resumed: 1 pending, 4 done" in second.stdout
    assert "wrote the final report" in second.stdout
    assert "Report: " in second.stdout
    # No second handoff: the resume claimed the first and recorded that it completed.
    names = sorted(p.name for p in (tmp_path / "handoffs").iterdir())
    assert [n for n in names if n.endswith(".json")] == [path.name]
    assert f"{handoff.session_id}.claim" in names
    assert len([n for n in names if n.endswith(".done")]) == 1


def test_demo_rejects_a_corrupt_resume_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["demo", "--resume", str(bad)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("budgetkit demo: error: handoff")


# ---------------------------------------------------------------------------- show
def _handoff(tmp_path: Path, **changes: Any) -> Path:
    doc: dict[str, Any] = {
        "kind": "budgetkit.handoff",
        "schema_version": 1,
        "session_id": "s1",
        "parent_session_id": None,
        "stopped_at_step": 8,
        "reason": "max_usd",
        "limits": {"max_steps": 10, "max_usd": "0.05", "max_llm_calls": None},
        "usage": {"steps": 8, "llm_calls": 5, "total_tokens": 1234, "cost_usd": "0.0512"},
        "pending_tasks": ["read page 3", {"id": 4}],
        "context_summary": "Goal: x\n- found y",
        "resume_instructions": "budgetkit demo --resume handoffs/s1.json",
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "trace_id": "ab" * 16,
    }
    doc.update(changes)
    path = tmp_path / "s1.json"
    write_atomic(path, doc)
    return path


def test_show_prints_a_handoff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _handoff(tmp_path)
    assert main(["show", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    rows = _rows(out)
    assert rows["stop reason"] == "max_usd"
    assert rows["steps"] == "8 of 10"
    assert rows["LLM calls"] == "5"
    assert rows["cost"] == "$0.0512 of $0.0500  <- tripped"
    assert rows["trace id"] == "ab" * 16
    assert "  - read page 3\n" in out
    assert '  - {"id": 4}\n' in out
    assert "Summary:\n  Goal: x\n  - found y\n" in out
    assert "To resume:\n  budgetkit demo --resume handoffs/s1.json" in out


def test_show_says_where_the_framework_state_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {"framework": "langchain", "format": 1, "bytes": 300_000, "sidecar": "s1.state"}
    path = _handoff(tmp_path, extra={"framework_state": {**state, "sha256": "0" * 64}})
    assert main(["show", str(path)]) == EXIT_OK
    assert _rows(capsys.readouterr().out)["framework state"] == "langchain, 293.0 KiB, in s1.state"
    path = _handoff(
        tmp_path, extra={"framework_state": {"framework": "pydantic_ai", "payload": []}}
    )
    assert main(["show", str(path)]) == EXIT_OK
    assert _rows(capsys.readouterr().out)["framework state"] == "pydantic_ai, 0.0 KiB, inline"


def test_show_prints_the_chain_of_a_resumed_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from budgetkit import BudgetExhausted, SessionBudget, budget

    @budget.step
    def tool() -> None:
        return None

    def run_out(session: SessionBudget) -> Path:
        def run() -> None:
            with session:
                while True:
                    tool()

        with pytest.raises(BudgetExhausted) as caught:
            run()
        path = caught.value.handoff_path
        assert path is not None
        return path

    first = SessionBudget(max_steps=2, max_total_steps=5, max_sessions=3, handoff_dir=tmp_path)
    second = SessionBudget.resume(run_out(first))
    assert main(["show", str(run_out(second))]) == EXIT_OK
    rows = _rows(capsys.readouterr().out)
    assert rows["chain"] == f"session 2 of chain {first.session_id}"
    assert rows["chain steps"] == "4 of 5"
    assert rows["chain sessions"] == "2 of 3"
    assert rows["chain cost"] == "$0.0000"


def test_show_leaves_out_the_chain_of_a_lone_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(_handoff(tmp_path))]) == EXIT_OK
    assert "chain" not in _rows(capsys.readouterr().out)


def test_show_json_is_the_validated_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _handoff(tmp_path)
    assert main(["show", str(path), "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert Handoff.from_dict(doc) == Handoff.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{truncated", "is not valid JSON"),
        ('{"some": "other tool"}', "is not a budgetkit handoff"),
        ("[1, 2]", "is not a budgetkit handoff"),
        (None, "cannot read handoff"),
    ],
)
def test_show_rejects_corrupt_foreign_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "h.json"
    if content is not None:
        path.write_text(content)
    assert main(["show", str(path)]) == EXIT_INVALID
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("budgetkit show: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1


def test_show_rejects_a_handoff_with_a_wrong_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _handoff(tmp_path, stopped_at_step="eight")
    assert main(["show", str(path)]) == EXIT_INVALID
    assert "stopped_at_step must be int" in capsys.readouterr().err


def test_a_closed_output_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    path = _handoff(tmp_path, pending_tasks=[f"task {i} " + "x" * 100 for i in range(3000)])
    out = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m budgetkit show "{path}" --json | head -1'],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stdout == "{\n"
    assert out.stderr == ""


# ---------------------------------------------------------------------------- help, version
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"budgetkit {__version__}\n"


@pytest.mark.parametrize(
    "command", [[], ["demo"], ["show"], ["run"], ["stats"], ["chain"], ["stub"]]
)
def test_help_on_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: budgetkit")
    if command == ["demo"]:
        assert "exit codes: 0" in out
        assert "(default: 8)" in out
    if command == ["run"]:
        assert "exit codes:" in out
        assert "BUDGETKIT_MAX_" in out
    if command == ["stub"]:
        assert "exit codes: 0" in out
        assert "--port N" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert "demo" in capsys.readouterr().out


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--bogus", "--", "python", "x.py"], "unrecognized arguments: --bogus"),
        (["run", "--max-usd", "ten", "--", "python", "x.py"], "expected an amount in US dollars"),
        (["run", "--max-steps", "2.5", "--", "python", "x.py"], "expected a positive whole"),
        (["run", "--max-usd", "-1", "--", "python", "x.py"], "expected a positive amount"),
        (["run", "--max-usd", "nan", "--", "python", "x.py"], "expected a positive amount"),
        (["run", "--price", "acme", "--", "python", "x.py"], "expected MODEL=IN,OUT"),
        (["run", "--price", "acme=1", "--", "python", "x.py"], "expected MODEL=IN,OUT"),
        (["run", "--price", "=1,2", "--", "python", "x.py"], "expected MODEL=IN,OUT"),
        (["run", "--price", "acme=one,2", "--", "python", "x.py"], "expected MODEL=IN,OUT"),
        (["run", "--price", "acme=1,-2", "--", "python", "x.py"], "must be non-negative"),
        (["run", "--price", "acme=nan,2", "--", "python", "x.py"], "must be non-negative"),
        (["run", "--on-unknown-cost", "maybe", "--", "python", "x.py"], "invalid choice"),
        (["demo", "--max-steps", "many"], "expected a positive whole number"),
        (["demo", "--delay", "-1"], "expected zero or more seconds"),
        (["show"], "the following arguments are required: HANDOFF"),
        (["frobnicate"], "invalid choice"),
        (["stub", "--port", "70000"], "expected a port number from 0 to 65535, got '70000'"),
        (["stub", "--port", "-1"], "expected a port number from 0 to 65535"),
        (["stub", "--port", "http"], "expected a port number from 0 to 65535, got 'http'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--max-usd", "1", "--", "python", "missing.py"], "script not found: missing.py"),
        (["run", "--max-usd", "1"], "no script given"),
        (["run", "--", "python"], "no script given"),
        (["run", "--", "python", "-c", "print(1)"], "unsupported option '-c'"),
        (["run", "--", "python", "-m"], "-m needs a module name"),
    ],
)
def test_run_without_a_script_exits_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("budgetkit run: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_run_rejects_a_bad_environment_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "s.py"
    script.write_text("")
    monkeypatch.setenv("BUDGETKIT_MAX_USD", "lots")
    assert main(["run", "--", "python", str(script)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "BUDGETKIT_MAX_USD='lots'" in err
    assert err.count("\n") == 1


# ---------------------------------------------------------------------------- run
def _full_output(body: dict[str, Any]) -> tuple[int, int]:
    """Input tokens from the request's size; the model writes up to its output cap."""
    cap = body.get("max_tokens") or body.get("max_output_tokens") or 300
    return math.ceil(len(json.dumps(body)) / 4), int(cap)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer(usage=_full_output) as server:
        yield server


def _script(tmp_path: Path, body: str, name: str = "agent.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


_EXHAUSTED = re.compile(r"budgetkit: budget exhausted \((\w+)\) .*; handoff: (\S+)\n")


def _exhausted(result: subprocess.CompletedProcess[str], tmp_path: Path) -> Handoff:
    assert result.returncode == EXIT_EXHAUSTED, result.stderr
    match = _EXHAUSTED.search(result.stderr)
    assert match is not None, result.stderr
    handoff = Handoff.load(tmp_path / match.group(2))
    assert handoff.reason == match.group(1)
    return handoff


def test_run_stops_an_endless_openai_loop_within_max_usd(tmp_path: Path, stub: StubServer) -> None:
    script = _script(
        tmp_path,
        """
        import os, sys
        import openai

        client = openai.OpenAI(base_url=os.environ["STUB_URL"], api_key="k", max_retries=0)
        n = 0
        while True:  # an agent that never decides it is done
            client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=500,
                messages=[{"role": "user", "content": f"try again ({n}) " + sys.argv[1]}],
            )
            n += 1
        """,
    )
    limit = Decimal("0.002")
    result = _cli(
        "run", "--max-usd", str(limit), "--", "python", str(script), "please",
        cwd=tmp_path, env=_env(STUB_URL=stub.base_url),
    )  # fmt: skip
    handoff = _exhausted(result, tmp_path)
    assert handoff.reason == "max_usd"
    spent = Decimal(handoff.usage["cost_usd"])
    assert 0 < spent <= limit
    # Each call costs ~$0.0003 at most: it ran until the next reservation no longer fitted.
    assert spent > limit - Decimal("0.0004")
    assert handoff.usage["llm_calls"] >= 5
    assert handoff.limits["max_usd"] == str(limit)
    assert "budgetkit run [limits] -- python" in handoff.resume_instructions
    assert (tmp_path / "handoffs").is_dir()


def test_run_charges_an_anthropic_script(tmp_path: Path, stub: StubServer) -> None:
    script = _script(
        tmp_path,
        """
        import os
        import anthropic

        claude = anthropic.Anthropic(base_url=os.environ["STUB_URL"], api_key="k")
        while True:
            claude.messages.create(
                model="claude-haiku-4-5",
                max_tokens=200,
                messages=[{"role": "user", "content": "next step?"}],
            )
        """,
    )
    result = _cli(
        "run", "--max-llm-calls", "3", "--handoff-dir", "out", "--", "python", str(script),
        cwd=tmp_path, env=_env(STUB_URL=stub.anthropic_base_url),
    )  # fmt: skip
    handoff = _exhausted(result, tmp_path)
    assert handoff.reason == "max_llm_calls"
    assert handoff.usage["llm_calls"] == 3
    assert handoff.usage["output_tokens"] == 3 * 200
    assert Decimal(handoff.usage["cost_usd"]) > 0  # priced as claude-haiku-4-5
    assert handoff.usage["unpriced_calls"] == 0


def test_run_charges_an_async_streaming_openai_script(tmp_path: Path, stub: StubServer) -> None:
    script = _script(
        tmp_path,
        """
        import asyncio, os
        import openai

        async def main():
            async with openai.AsyncOpenAI(base_url=os.environ["STUB_URL"], api_key="k") as c:
                while True:
                    stream = await c.chat.completions.create(
                        model="gpt-4o-mini",
                        max_tokens=100,
                        messages=[{"role": "user", "content": "go"}],
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    async for _ in stream:
                        pass
                    await c.responses.create(model="gpt-4o-mini", input="go", max_output_tokens=50)

        asyncio.run(main())
        """,
    )
    result = _cli(
        "run", "--max-output-tokens", "400", "--", "python", str(script),
        cwd=tmp_path, env=_env(STUB_URL=stub.base_url),
    )  # fmt: skip
    handoff = _exhausted(result, tmp_path)
    assert handoff.reason == "max_output_tokens"
    # 100 + 50 per round: the third round's response crosses 400 (the stream reached it),
    # and the next call is refused before it is sent.
    assert handoff.usage["output_tokens"] == 450
    assert handoff.usage["llm_calls"] == 6
    assert handoff.usage["unmeasured_calls"] == 0
    assert Decimal(handoff.usage["cost_usd"]) > 0


def test_run_takes_limits_from_the_environment(tmp_path: Path) -> None:
    # No SDK at all: a script may also use budgetkit's own decorators.
    script = _script(
        tmp_path,
        """
        from budgetkit import budget

        @budget.step
        def work():
            pass

        while True:
            work()
        """,
    )
    env = _env(BUDGETKIT_MAX_STEPS="4", BUDGETKIT_HANDOFF_DIR=str(tmp_path / "h"))
    handoff = _exhausted(_cli("run", "--", "python", str(script), cwd=tmp_path, env=env), tmp_path)
    assert (handoff.reason, handoff.stopped_at_step) == ("max_steps", 4)
    # A flag wins over its variable.
    result = _cli("run", "--max-steps", "2", "--", "python", str(script), cwd=tmp_path, env=env)
    assert _exhausted(result, tmp_path).stopped_at_step == 2


def test_run_passes_the_script_exit_code_and_argv_through(tmp_path: Path) -> None:
    _script(
        tmp_path,
        """
        import sys
        from helper import CODE  # the script's directory is on sys.path, like python's
        print("argv", sys.argv[1:], flush=True)
        sys.exit(CODE + int(sys.argv[1]))
        """,
        name="exits.py",
    )
    _script(tmp_path, "CODE = 5\n", name="helper.py")
    _script(tmp_path, "import sys\nsys.exit(9)\n", name="mod.py")
    _script(tmp_path, "raise RuntimeError('agent broke')\n", name="fails.py")
    _script(tmp_path, "print('done')\n", name="ok.py")
    code = (
        "import sys\n"
        "from budgetkit.cli import main\n"
        "for argv in sys.argv[1:]:\n"
        "    print('exit', main(['run', '--max-steps', '5', '--', *argv.split()]), flush=True)\n"
    )
    runs = ["python exits.py 2", "python3 -m mod", "python fails.py", "ok.py"]
    result = subprocess.run(
        [sys.executable, "-c", code, *runs],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "argv ['2']",
        "exit 7",
        "exit 9",
        "exit 1",
        "done",
        "exit 0",
    ]
    assert "RuntimeError: agent broke" in result.stderr
    assert 'File "fails.py", line 1' in result.stderr or "fails.py" in result.stderr
    assert "runpy" not in result.stderr
    assert "_run.py" not in result.stderr


def test_run_reports_exhaustion_the_script_swallowed(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        from budgetkit import budget

        @budget.step
        def work():
            pass

        for _ in range(10):
            try:
                work()
            except Exception:
                pass  # a careless agent
        """,
    )
    result = _cli("run", "--max-steps", "3", "--", "python", str(script), cwd=tmp_path)
    assert _exhausted(result, tmp_path).reason == "max_steps"


# ---------------------------------------------------------------------------- stub
_STUB_VARIABLES = ["OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"]


@contextlib.contextmanager
def _stub_process(*args: str, cwd: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``budgetkit stub ARGS`` in a fresh process, and the variables of the line it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "budgetkit", "stub", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "budgetkit stub printed nothing in 30 s"
        line = proc.stdout.readline()
        assert line.endswith("\n"), line
        variables = dict(item.split("=", 1) for item in shlex.split(line))
        assert list(variables) == _STUB_VARIABLES, line
        yield proc, variables
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _stop(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    """Send ``signum``; the stub must exit 0 at once. Returns its remaining stdout and stderr."""
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == EXIT_OK, err
    return out, err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stub_serves_the_real_clients_until_stopped(tmp_path: Path, signum: int) -> None:
    import anthropic
    import openai

    with _stub_process("--port", "0", cwd=tmp_path) as (proc, variables):
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1", variables["OPENAI_BASE_URL"])
        assert match is not None, variables
        port = int(match.group(1))
        assert port > 0  # port 0 picked a free port and the line names it
        assert variables["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
        question = [{"role": "user", "content": "Is this offline?"}]
        with openai.OpenAI(
            base_url=variables["OPENAI_BASE_URL"],
            api_key=variables["OPENAI_API_KEY"],
            max_retries=0,
        ) as client:
            chat = client.chat.completions.create(model="gpt-4o-mini", messages=question)
            assert chat.choices[0].message.content == "Stub reply to: Is this offline?"
            assert chat.usage is not None
            assert chat.usage.prompt_tokens > 0
            response = client.responses.create(model="gpt-4o-mini", input="Is this offline?")
            assert response.output_text == "Stub reply to: Is this offline?"
        with anthropic.Anthropic(
            base_url=variables["ANTHROPIC_BASE_URL"],
            api_key=variables["ANTHROPIC_API_KEY"],
            max_retries=0,
        ) as claude:
            message = claude.messages.create(
                model="claude-haiku-4-5", max_tokens=100, messages=question
            )
            assert message.content[0].type == "text"
            assert message.content[0].text == "Stub reply to: Is this offline?"
            assert message.usage.output_tokens > 0
            with claude.messages.stream(
                model="claude-haiku-4-5", max_tokens=100, messages=question
            ) as stream:
                assert "".join(stream.text_stream) == "Stub reply to: Is this offline?"
        out, err = _stop(proc, signum)
    assert out == ""  # one line on stdout, nothing after it
    assert "Traceback" not in err
    assert err.splitlines() == [
        f"budgetkit stub: serving the OpenAI and Anthropic APIs on http://127.0.0.1:{port} "
        "(any API key works); Ctrl-C stops it",
        "budgetkit stub: stopped after 4 requests",
    ]


def _walkthrough_agent() -> str:
    """``my_agent.py`` of the testing guide's ``budgetkit stub`` walk-through."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "how-to" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    (agent,) = [block for block in blocks if "client = openai.OpenAI()" in block]
    return agent


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_stub_walkthrough_budgetkit_run_offline(tmp_path: Path) -> None:
    """The guide's walk-through: ``budgetkit stub --port N``, then ``budgetkit run`` against it."""
    port = _free_port()
    (tmp_path / "my_agent.py").write_text(_walkthrough_agent())
    with _stub_process("--port", str(port), cwd=tmp_path) as (proc, variables):
        assert variables["OPENAI_BASE_URL"] == f"http://127.0.0.1:{port}/v1"
        result = _cli(
            "run", "--max-llm-calls", "3", "--", "python", "my_agent.py",
            cwd=tmp_path, env=_env(**variables),
        )  # fmt: skip
        _, err = _stop(proc, signal.SIGTERM)
    handoff = _exhausted(result, tmp_path)
    assert handoff.reason == "max_llm_calls"
    assert handoff.usage["llm_calls"] == 3
    assert Decimal(handoff.usage["cost_usd"]) > 0  # the stub's usage, priced as gpt-4o-mini
    assert err.endswith("budgetkit stub: stopped after 3 requests\n")


def test_stub_on_a_taken_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["stub", "--port", str(port)]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"budgetkit stub: error: cannot listen on 127.0.0.1 port {port}")
    assert captured.err.count("\n") == 1


def _stub_script(tmp_path: Path, body: str, name: str = "agent.py") -> Path:
    """A script with an openai client on the stub (``$STUB_URL``) and ``ask(model)``."""
    head = """
    import os, sys
    import openai

    client = openai.OpenAI(base_url=os.environ["STUB_URL"], api_key="k", max_retries=0)

    def ask(model="gpt-4o-mini"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    """
    return _script(tmp_path, textwrap.dedent(head) + textwrap.dedent(body), name)


@pytest.fixture
def small_stub() -> Iterator[StubServer]:
    """Every answer: 100 input and 20 output tokens ($0.000027 with gpt-4o-mini)."""
    with StubServer(usage=(100, 20)) as server:
        yield server


_SUMMARY = re.compile(
    r"budgetkit: (.+) after (\d+) steps, (\d+) LLM calls, (\d+) tokens, (\S+?)[;\n]"
)


def test_run_sums_up_the_spend_on_every_exit(tmp_path: Path, small_stub: StubServer) -> None:
    # Before: a line only on exhaustion, and "$0.0000" for a spend of $0.000054.
    script = _stub_script(
        tmp_path,
        """
    ask()
    ask()
    if sys.argv[1] == "raise":
        raise RuntimeError("agent broke")
    sys.exit(int(sys.argv[1]))
    """,
    )
    env = _env(STUB_URL=small_stub.base_url)
    expected = {
        "0": (0, "finished (completed)"),
        "7": (7, "finished (completed, exit code 7)"),
        "raise": (1, "finished (error)"),
    }
    for arg, (code, what) in expected.items():
        result = _cli(
            "run", "--max-llm-calls", "9", "--", "python", str(script), arg, cwd=tmp_path, env=env
        )
        assert result.returncode == code, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("budgetkit:")]
        assert len(lines) == 1, result.stderr
        match = _SUMMARY.fullmatch(lines[0] + "\n")
        assert match is not None, lines[0]
        assert match.groups() == (what, "0", "2", "240", "$0.000054")
    # Exhausted: the same figures, then the handoff.
    script3 = _stub_script(tmp_path, "ask()\nask()\nask()\n", name="three.py")
    result = _cli(
        "run", "--max-llm-calls", "2", "--", "python", str(script3), cwd=tmp_path, env=env
    )
    handoff = _exhausted(result, tmp_path)
    match = _SUMMARY.search(result.stderr)
    assert match is not None, result.stderr
    assert match.groups() == ("budget exhausted (max_llm_calls)", "0", "2", "240", "$0.000054")
    assert handoff.usage["cost_usd"] == "0.000054"


def test_run_warns_when_no_limit_is_set(tmp_path: Path) -> None:
    script = _script(tmp_path, "print('done')\n")
    result = _cli("run", "--", "python", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "budgetkit run: warning: no limit set" in result.stderr
    assert "--max-usd" in result.stderr
    limited = _cli("run", "--max-usd", "1", "--", "python", str(script), cwd=tmp_path)
    assert "warning" not in limited.stderr
    from_env = _cli(
        "run", "--", "python", str(script), cwd=tmp_path, env=_env(BUDGETKIT_MAX_STEPS="3")
    )
    assert "warning" not in from_env.stderr


def test_run_prices_a_private_model_with_price(tmp_path: Path, small_stub: StubServer) -> None:
    # acme-7b is in no price table: $1 per million input tokens and $2 per million output
    # tokens make each call (100 in, 20 out) cost $0.00014.
    script = _stub_script(tmp_path, "for _ in range(10):\n    ask('acme-7b')\n")
    result = _cli(
        "run", "--max-usd", "0.0005", "--price", "acme-7b=1,2", "--price", "other=3,4",
        "--", "python", str(script), cwd=tmp_path, env=_env(STUB_URL=small_stub.base_url),
    )  # fmt: skip
    handoff = _exhausted(result, tmp_path)
    assert handoff.reason == "max_usd"
    assert handoff.usage["unpriced_calls"] == 0
    # Three calls ($0.00042); the fourth's worst case no longer fitted, or it crossed.
    assert Decimal(handoff.usage["cost_usd"]) == handoff.usage["llm_calls"] * Decimal("0.00014")
    assert Decimal(handoff.usage["cost_usd"]) <= Decimal("0.00056")
    assert handoff.usage["llm_calls"] >= 3


@pytest.mark.parametrize("choice", ["warn", "error"])
def test_run_on_unknown_cost(tmp_path: Path, small_stub: StubServer, choice: str) -> None:
    script = _stub_script(tmp_path, "for _ in range(3):\n    ask('acme-7b')\nprint('done')\n")
    result = _cli(
        "run", "--max-usd", "1", "--on-unknown-cost", choice, "--", "python", str(script),
        cwd=tmp_path, env=_env(STUB_URL=small_stub.base_url),
    )  # fmt: skip
    if choice == "warn":
        assert result.returncode == 0, result.stderr
        assert "done" in result.stdout
        assert "CostUnknownWarning" in result.stderr
        assert "3 calls of unknown cost" in result.stderr
    else:
        handoff = _exhausted(result, tmp_path)
        assert handoff.reason == "cost_unknown"
        assert handoff.usage["llm_calls"] == 1  # the next call after the unpriced one stops
        assert len(small_stub.requests) == 1


def test_run_with_an_unreachable_redis_exits_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = _script(tmp_path, "print('ran')\n")
    result = _cli(
        "run", "--max-steps", "3", "--redis", f"redis://127.0.0.1:{port}/0",
        "--", "python", str(script), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == EXIT_USAGE
    assert "ran" not in result.stdout
    assert result.stderr.startswith("budgetkit run: error: ")
    assert f"127.0.0.1:{port}" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
