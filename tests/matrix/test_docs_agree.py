"""The matrix and the documents cannot drift apart: docs/matrix-table.md and
the generated section of docs/strategies.md are regenerated from one matrix
run and compared, and every verdict a strategy's known defects produce is
explained by name in that strategy's rows of docs/strategies.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmsim.matrix import MatrixResult, plan, run
from kvmsim.report import render
from kvmsim.report.text import SUMMARY_END, SUMMARY_START, strategy_summary

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def result() -> MatrixResult:
    return run(plan(), jobs=2)


def generated_section(text: str) -> str:
    start = text.index(SUMMARY_START)
    end = text.index(SUMMARY_END) + len(SUMMARY_END)
    return text[start:end]


def test_matrix_passes(result: MatrixResult) -> None:
    bad = [c for c in result.ordered() if c.status in ("fail", "xpass", "error")]
    assert not bad, [(c.scenario, c.arch, c.strategy, c.status, c.verdicts) for c in bad]


def test_markdown_table_in_docs_is_current(result: MatrixResult) -> None:
    doc = DOCS / "matrix-table.md"
    assert render(result, "markdown") == doc.read_text(), (
        "docs/matrix-table.md is out of date: regenerate it with "
        "kvmsim matrix --format markdown --output docs/matrix-table.md"
    )


def test_strategies_doc_summary_is_current(result: MatrixResult) -> None:
    text = (DOCS / "strategies.md").read_text()
    assert generated_section(text) == strategy_summary(result), (
        "the generated section of docs/strategies.md is out of date: "
        "python -m kvmsim.report.docs rewrites it"
    )


def test_every_verdict_is_explained_in_the_strategy_rows(result: MatrixResult) -> None:
    text = (DOCS / "strategies.md").read_text()
    start = text.index(SUMMARY_START)
    prose = text[:start] + text[text.index(SUMMARY_END) :]
    rows = [line for line in prose.splitlines() if line.startswith("| `")]
    seen: dict[str, set[str]] = {}
    for c in result.ordered():
        if c.status == "kfail":
            seen.setdefault(c.strategy, set()).update(c.verdicts)
    missing = []
    for strategy, verdicts in sorted(seen.items()):
        mine = " ".join(r for r in rows if f"`{strategy}`" in r.split("|")[1])
        assert mine, f"docs/strategies.md has no row for {strategy}"
        for v in sorted(verdicts):
            if not re.search(rf"\b{v}", mine):
                missing.append(f"{strategy}: {v}")
    assert not missing, f"verdicts the matrix shows but the strategy rows never name: {missing}"
