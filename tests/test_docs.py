"""The documentation site's sources (mkdocs.yml, docs/): every page in the navigation exists, the committed-tables
page includes every committed results table and is current, and every snippet it includes exists. The strict build
itself (``mkdocs build --strict``) runs in CI (.ci/run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _nav_pages() -> list[str]:
    return re.findall(r":\s+([\w/.-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), flags=re.M)


def test_every_navigation_page_exists_and_every_page_is_in_the_navigation() -> None:
    pages = _nav_pages()
    assert len(pages) == len(set(pages)) >= 19
    for page in pages:
        assert (DOCS / page).is_file(), page
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "notes" not in p.parts}
    assert written == set(pages)


def test_tables_page_is_current_and_includes_every_committed_table() -> None:
    done = subprocess.run([sys.executable, str(DOCS / "gen_tables.py"), "--check"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    included = set(re.findall(r'^--8<-- "([^"]+)"$', (DOCS / "tables.md").read_text(), flags=re.M))
    committed = {p.relative_to(REPO).as_posix() for p in (REPO / "benchmarks" / "results").glob("*.md")}
    committed |= {p.relative_to(REPO).as_posix() for p in (REPO / "results").rglob("*.md")
                  if "runs" not in p.relative_to(REPO / "results").parts}  # a study's run folders are not committed
    assert committed and included == committed


@pytest.mark.parametrize("page", sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")))
def test_snippets_exist(page: str) -> None:
    for target in re.findall(r'^--8<-- "([^"]+)"$', (DOCS / page).read_text(), flags=re.M):
        assert (REPO / target).is_file(), f"{page} includes {target}, which does not exist"
