"""The terminal matrix table fits the width and never breaks a name
(issue 22, item 6)."""

from __future__ import annotations

import re

import pytest

from kvmsim.cli import main
from kvmsim.matrix import MatrixResult, plan, run
from kvmsim.report import render

WIDTHS = (80, 120, 250)


@pytest.fixture(scope="module")
def result() -> MatrixResult:
    # every (arch, strategy) column, a few scenarios (some arch-specific)
    p = plan(scenarios=["gen-anon-*", "xive-tima", "ept-thp-2m", "hpt-ci-over-ram"])
    return run(p, jobs=1)


def _names(result: MatrixResult) -> set[str]:
    cols = result.plan.columns
    return {c.arch for c in cols} | {c.strategy for c in cols}


@pytest.mark.parametrize("width", WIDTHS)
def test_no_line_exceeds_the_width(result: MatrixResult, width: int) -> None:
    text = render(result, "table", width=width)
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, too_long[:3]


@pytest.mark.parametrize("width", WIDTHS)
def test_every_header_word_is_a_whole_name(result: MatrixResult, width: int) -> None:
    text = render(result, "table", width=width)
    names = _names(result)
    headers = [line for line in text.splitlines() if line.startswith("scenario ")]
    assert headers
    seen: set[str] = set()
    for line in headers:
        for word in line.split()[1:]:
            assert word in names, f"{word!r} is not a whole arch or strategy name"
            seen.add(word)
    # every column is shown under its whole strategy name
    assert {c.strategy for c in result.plan.columns} <= seen
    # scenario names whole too, each at the start of a row
    for sc in result.plan.scenarios:
        assert re.search(rf"^{re.escape(sc.name)} ", text, re.M), sc.name


def test_narrow_tables_are_grouped_by_arch_and_every_cell_is_shown(
    result: MatrixResult,
) -> None:
    text = render(result, "table", width=80)
    arches = sorted({c.arch for c in result.plan.columns})
    for arch in arches:
        assert re.search(rf"^{arch}:$", text, re.M)
    # as many cells in the grouped tables as the matrix has
    cells = sum(
        len(line.split()) - 1
        for line in text.splitlines()
        if any(line.startswith(sc.name + " ") for sc in result.plan.scenarios)
    )
    assert cells >= len(result.cells)


def test_wide_enough_is_one_table(result: MatrixResult) -> None:
    text = render(result, "table", width=2000)
    assert not re.search(r"^\w+:$", text, re.M)
    assert sum(1 for line in text.splitlines() if line.startswith("scenario")) == 1


def test_legend_is_short_and_names_only_symbols_shown(result: MatrixResult) -> None:
    text = render(result, "table", width=120)
    legend = text[text.index("legend:") :].split("\nnote:")[0]
    assert len(legend.splitlines()) <= 4
    assert "OP oops" in legend  # paolo_refactor oopses on these
    assert "PM poison_mapped" not in legend  # no such cell here


@pytest.mark.parametrize("width", WIDTHS)
def test_cli_honours_columns(
    width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    main(["matrix", "--scenario", "gen-anon-read-*", "--jobs", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= width
