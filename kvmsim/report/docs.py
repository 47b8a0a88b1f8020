"""Regenerate the documents that show the matrix (run from the repository root):

    python -m kvmsim.report.docs

rewrites docs/matrix-table.md and the generated section of
docs/strategies.md from one matrix run; tests/matrix/test_docs_agree.py fails
when either is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kvmsim.matrix import plan, run
from kvmsim.report import render
from kvmsim.report.text import SUMMARY_END, SUMMARY_START, strategy_summary


def regenerate(docs: Path) -> None:
    result = run(plan(), jobs=2)
    (docs / "matrix-table.md").write_text(render(result, "markdown"))
    path = docs / "strategies.md"
    text = path.read_text()
    start = text.index(SUMMARY_START)
    end = text.index(SUMMARY_END) + len(SUMMARY_END)
    path.write_text(text[:start] + strategy_summary(result) + text[end:])


if __name__ == "__main__":
    regenerate(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
