"""The documentation site reads well: code within the column, no external requests (issue #21)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]

#: Lines a reader types or copies stay this short; output blocks (``console``, ``text``,
#: ``json`` files shown as written) may be longer and wrap (docs/css/extra.css).
MAX_CODE_LINE = 100
OUTPUT_LANGUAGES = {"console", "text", "json", ""}
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")


def code_lines(page: Path) -> list[tuple[int, str, str]]:
    """(line number, language, line) of every line inside a fenced block of ``page``."""
    out, language, inside = [], "", False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if match:
            inside, language = (not inside), match.group(2)
            continue
        if inside:
            out.append((number, language, line))
    return out


def test_code_lines_fit_the_column() -> None:
    too_long = [
        f"{page.relative_to(ROOT)}:{number} ({len(line)} chars)"
        for page in PAGES
        for number, language, line in code_lines(page)
        if language not in OUTPUT_LANGUAGES and len(line) > MAX_CODE_LINE
    ]
    assert not too_long


def test_code_blocks_wrap_and_keep_clear_of_the_copy_button() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "- css/extra.css" in config
    css = (DOCS / "css" / "extra.css").read_text(encoding="utf-8")
    rule = re.search(r"\.md-typeset pre > code \{([^}]*)\}", css)
    assert rule is not None
    assert "white-space: pre-wrap" in rule.group(1)
    assert "padding-right" in rule.group(1)


#: Tags that make a browser fetch something when the page loads.
LOADS = re.compile(
    r"<(?:script[^>]*\ssrc|link[^>]*\shref|img[^>]*\ssrc|iframe[^>]*\ssrc)=\"(https?:)?//",
    re.IGNORECASE,
)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_built_site_makes_no_external_requests(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    pages = list(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not LOADS.search(html), page
        assert "fonts.googleapis.com" not in html, page
        assert "md-source" not in html, page  # the repository widget calls the GitHub API
    for css in site.rglob("*.css"):
        assert not re.search(r"url\((['\"]?)https?:", css.read_text(encoding="utf-8")), css
    shot = site / "img" / "phoenix-trace.png"
    viewing = (site / "how-to" / "viewing-traces" / "index.html").read_text(encoding="utf-8")
    assert shot.stat().st_size > 10_000  # the real screenshot, served from the site itself
    assert 'src="../../img/phoenix-trace.png"' in viewing
