"""Every install line of the README and the docs works as written from a checkout.

budgetkit is not on a package registry yet, so each ``pip install`` line must install this
checkout (``.``), with extras that exist; installing ``budgetkit`` by name would fetch
something else, or nothing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PIP = re.compile(r"pip install\s+(?P<target>'[^']*'|\"[^\"]*\"|\S+)")


def _extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return set(project["optional-dependencies"])


def _install_targets() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for match in PIP.finditer(page.read_text(encoding="utf-8")):
            found.append((f"{page.relative_to(ROOT)}", match["target"].strip("'\"")))
    return found


def test_the_pages_have_install_lines() -> None:
    """The check below reads real lines (it would pass vacuously on none)."""
    assert len(_install_targets()) >= 10


def test_every_install_line_installs_this_checkout_with_extras_that_exist() -> None:
    """``pip install .`` or ``pip install '.[extra,...]'`` with known extras, nothing else."""
    extras = _extras()
    bad = []
    for page, target in _install_targets():
        match = re.fullmatch(r"\.(?:\[(?P<extras>[a-z0-9,\-]+)\])?", target)
        if match is None:
            bad.append(f"{page}: pip install {target}")
        elif match["extras"] and not set(match["extras"].split(",")) <= extras:
            bad.append(f"{page}: unknown extra in {target}")
    assert bad == []
