"""Writes ``docs/tables.md``: every committed results table (``benchmarks/results/*.md``, ``results/**/*.md``) included
through pymdownx.snippets, so the docs show the files themselves and no number is typed by hand.

Run from the repository root: ``python docs/gen_tables.py`` (``tests/test_docs.py`` checks the page is current).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "tables.md"


def tables() -> list[Path]:
    """The committed Markdown tables, benchmarks first, each folder's files in name order."""
    return sorted((REPO / "benchmarks" / "results").glob("*.md")) + sorted(
        p for p in (REPO / "results").rglob("*.md") if "runs" not in p.relative_to(REPO / "results").parts)


def render() -> str:
    """The page's text."""
    out = ["# Committed tables", "",
           "Every table below is the committed file itself, included when the site is built (`docs/gen_tables.py`",
           "lists them); the commands that made each one are in its first lines. The prose around them is on the",
           "[benchmarks](benchmarks.md) and [results](results.md) pages.", ""]
    for section, files in (("Benchmarks", [p for p in tables() if p.parts[-3] == "benchmarks"]),
                           ("Results", [p for p in tables() if p.parts[-3] != "benchmarks"])):
        out += [f"## {section}", ""]
        for path in files:
            rel = path.relative_to(REPO).as_posix()
            anchor = rel.removesuffix(".md").replace("/", "-").replace("_", "-").replace(".", "-")
            anchor = anchor.removeprefix("benchmarks-results-")
            out += [f"### `{rel}` {{#{anchor}}}", "", f'--8<-- "{rel}"', ""]
    return "\n".join(out)


if __name__ == "__main__":
    text = render()
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if PAGE.read_text() == text else f"{PAGE} is stale: run python docs/gen_tables.py")
    PAGE.write_text(text)
