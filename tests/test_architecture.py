"""The package's shape: no import cycle among budgetkit's modules, one home for each name.

Imports are read from the source (``ast``), so the test sees what would run: module-level
imports and the lazy ones inside functions alike. Only imports under ``if TYPE_CHECKING:``
are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import budgetkit

PACKAGE = Path(budgetkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(path: Path) -> set[str]:
    """The budgetkit modules ``path`` imports when it runs (lazily or not)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("budgetkit"))
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (node.module or "") if node.level == 0 else base
            if node.level and node.module:
                target = f"{base}.{node.module}"
            if not target.startswith("budgetkit"):
                continue
            # ``from . import _otel`` imports the module _otel; ``from . import __version__``
            # reads the package itself.
            modules = {f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")}
            found.update(modules)
            if len(modules) < len(node.names):
                found.add(target)
    found.discard(name)
    return found


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (
        PACKAGE / relative / "__init__.py"
    ).exists()


def import_graph() -> dict[str, set[str]]:
    """budgetkit module -> the budgetkit modules it imports at run time."""
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check below can fail: a two-module cycle and a three-module one are found."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_among_budgetkit_modules() -> None:
    """No budgetkit module imports (at run time, lazily or not) one that imports it back."""
    graph = import_graph()
    assert "budgetkit._session" in graph
    assert "budgetkit._policy" in graph["budgetkit.ledgers.inprocess"]
    assert cycles(graph) == []


def test_the_policy_is_pure() -> None:
    """The policy imports no I/O, no locks and no OpenTelemetry: only value modules."""
    allowed = {"budgetkit._money", "budgetkit._values", "budgetkit._limits", "budgetkit._usage"}
    assert import_graph()["budgetkit._policy"] <= allowed
    source = (PACKAGE / "_policy.py").read_text(encoding="utf-8")
    for forbidden in ("opentelemetry", "threading", "import os", "open("):
        assert forbidden not in source
