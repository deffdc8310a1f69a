"""``budgetkit show`` and ``budgetkit chain`` print what a handoff directory holds, and a
handoff file may come from anyone who can write there: control characters and terminal
escape sequences in its values are printed escaped, and rich markup is printed as text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from budgetkit._files import write_atomic
from budgetkit.cli import EXIT_INVALID, EXIT_OK, _output, main

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

#: A screen clear, a window-title change, a hyperlink, a bidi override and a fake line.
HOSTILE = "A\x1b[2J\x1b]0;owned\x07\x1b]8;;http://x\x1b\\B\u202eC\rD\nfake: row\x9bE"
MARKUP = "[bold red]boss[/bold red] [link=http://x]here[/link]"


def _handoff(tmp_path: Path, **changes: Any) -> Path:
    doc: dict[str, Any] = {
        "kind": "budgetkit.handoff",
        "schema_version": 1,
        "session_id": "s1",
        "parent_session_id": None,
        "stopped_at_step": 8,
        "reason": "max_steps",
        "limits": {"max_steps": 8},
        "usage": {"steps": 8, "llm_calls": 0, "total_tokens": 0, "cost_usd": "0"},
        "pending_tasks": [HOSTILE, {"task": HOSTILE}],
        "context_summary": f"first\n{HOSTILE}",
        "resume_instructions": HOSTILE,
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "name": HOSTILE,
        "extra": {"framework_state": {"framework": "langchain", "omitted": HOSTILE}},
    }
    doc.update(changes)
    path = tmp_path / "s1.json"
    write_atomic(path, doc)
    return path


def assert_escaped(out: str) -> None:
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
        assert raw not in out, f"{raw!r} printed raw"
    assert "fake: row" not in out.splitlines()  # no forged line of its own
    assert "A\\x1b[2J\\x1b]0;owned\\x07" in out
    assert "\\u202eC\\rD\\nfake: row\\x9bE" in out


def test_show_escapes_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(_handoff(tmp_path))]) == EXIT_OK
    out = capsys.readouterr().out
    assert_escaped(out)
    assert out.count("A\\x1b[2J") == 5  # name, a task, summary, framework state, resume
    assert '{"task": "A\\u001b[2J' in out  # a task that is not a string is shown as JSON
    assert "Summary:\n  first\n  A\\x1b" in out  # the summary's own lines stay lines


def test_show_on_a_terminal_escapes_and_prints_markup_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_output, "fancy", lambda stream=None: True)  # the rich table
    assert main(["show", str(_handoff(tmp_path))]) == EXIT_OK
    assert_escaped(capsys.readouterr().out)
    assert main(["show", str(_handoff(tmp_path, name=MARKUP))]) == EXIT_OK
    out = capsys.readouterr().out
    assert "[bold red]boss[/bold red]" in out
    assert "[link=http://x]here[/link]" in out


def test_chain_escapes_file_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What ``chain`` prints of a claim or failure record is validated on reading (ids,
    host, error type); a hostile file name reaches only its error lines, escaped."""
    (tmp_path / f"{HOSTILE.replace('/', '')}.json").write_text("not json")
    assert main(["chain", str(tmp_path)]) == EXIT_INVALID  # the unreadable file is an error
    captured = capsys.readouterr()
    assert_escaped(captured.out + captured.err)
