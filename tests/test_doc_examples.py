"""Every fenced Python block of README.md and docs/**/*.md runs, so no example rots.

A block runs in a fresh namespace, in a temporary working directory (handoffs land there),
with warnings as errors. HTML comments on the lines right above a block's fence change how
it runs; keep them rare:

- ``<!-- skip: REASON -->``: not run (needs a network service, say); the reason is shown.
- ``<!-- requires: NAME[, NAME] -->``: skipped while a dotted name (a module, or an attribute
  of one, e.g. ``budgetkit.SessionBudget.from_config``) does not resolve, then run. The name
  ``events`` stands for "the core emits budget events" (``capture_budget`` examples).
- ``<!-- run: continue -->``: run after the previous block of the same page, in its namespace.
- ``<!-- run: subprocess -->``: run in a fresh interpreter (for code that sets process-wide
  state, such as a global OpenTelemetry tracer provider).
- ``<!-- run: pytest -->``: a test module; run with pytest (budgetkit's plugin loaded) in a
  subprocess, and every test must pass.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import budgetkit
from budgetkit import _config

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*(?P<key>skip|requires|run)\s*:\s*(?P<value>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced Python block and how to run it."""

    path: Path
    line: int
    code: str
    skip: str | None = None
    requires: tuple[str, ...] = ()
    mode: str = "exec"
    before: tuple[Block, ...] = ()
    """The blocks this one continues (``run: continue``), first to last."""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def collect(path: Path) -> list[Block]:
    """The Python blocks of one markdown file, with their directives."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, ticks, lang = match["indent"], match["ticks"], match["lang"].lower()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not (
            lines[i].strip().startswith(ticks) and lines[i].strip().strip(ticks[0]) == ""
        ):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        if lang not in ("python", "py"):
            continue
        directives: dict[str, str] = {}
        j = start - 1
        while j >= 0 and (found := _DIRECTIVE.match(lines[j])):
            directives.setdefault(found["key"], found["value"])
            j -= 1
        mode = directives.get("run", "exec")
        assert mode in ("exec", "continue", "subprocess", "pytest"), f"{path}:{start + 1}: {mode}"
        before: tuple[Block, ...] = ()
        if mode == "continue":
            assert blocks, f"{path}:{start + 1}: 'run: continue' with no block before it"
            before, mode = (*blocks[-1].before, blocks[-1]), blocks[-1].mode
        requires = tuple(
            name.strip() for name in directives.get("requires", "").split(",") if name.strip()
        )
        blocks.append(
            Block(
                path,
                start + 1,
                textwrap.dedent("\n".join(body)),
                directives.get("skip"),
                requires,
                mode,
                before,
            )
        )
    return blocks


BLOCKS = [block for source in SOURCES if source.exists() for block in collect(source)]


def core_emits_events() -> bool:
    """Whether a session reports its start and steps to ``budgetkit._events`` listeners."""
    from budgetkit import SessionBudget, budget
    from budgetkit.testing import capture_budget

    @budget.step
    def probe() -> None:
        pass

    with capture_budget() as captured, SessionBudget(handoff_dir=None):
        probe()
    return bool(captured.events)


def resolves(name: str) -> bool:
    """Whether a dotted name imports (a module, or an attribute of one), or ``events`` holds."""
    if name == "events":
        return core_emits_events()
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_blocks_are_collected() -> None:
    """The collector finds the README's and the docs' examples (the count is in the report)."""
    pages = {block.path for block in BLOCKS}
    assert ROOT / "README.md" in pages
    assert len(pages) >= 10, sorted(str(p) for p in pages)
    skipped = [block.id for block in BLOCKS if block.skip]
    assert len(skipped) <= len(BLOCKS) // 10, f"too many skipped examples: {skipped}"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_example(
    block: Block,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pytester: pytest.Pytester,
) -> None:
    """The example runs to the end without an error or a warning."""
    if block.skip:
        pytest.skip(block.skip)
    missing = [name for name in block.requires if not resolves(name)]
    if missing:
        pytest.skip(f"not in this budgetkit yet: {', '.join(missing)}")
    parts = [*block.before, block]
    source = "\n".join(part.code for part in parts)
    if block.mode == "pytest":
        pytester.makeini(
            "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
        )
        pytester.makepyfile(test_example=source)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        assert result.ret == 0, result.stdout.str()
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BUDGETKIT_HANDOFF_DIR", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    if block.mode == "subprocess":
        script = tmp_path / "example.py"
        script.write_text(source, encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-W", "error", str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    namespace = {"__name__": "__doc_example__"}
    for part in parts:
        # Padded so that a traceback points at the line of the markdown file.
        code = compile("\n" * part.line + part.code, str(part.path), "exec")
        exec(code, namespace)
    # An example must leave the process as it found it.
    assert budgetkit.budget.current() is None, "the example left a session open"
    assert _config.clock is time.monotonic, "the example left a fake clock installed"
