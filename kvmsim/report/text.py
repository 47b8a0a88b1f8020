"""The terminal table (rich) and the Markdown table."""

from __future__ import annotations

import io

from kvmsim import registry
from kvmsim.matrix import Column, MatrixResult, plural
from kvmsim.report.symbols import STATUS_STYLE, cell_text, legend_items

#: The width used when the output is not a terminal and COLUMNS is unset.
DEFAULT_WIDTH = 120


def _blocks(result: MatrixResult, width: int, name_w: int) -> list[tuple[str | None, list[Column]]]:
    """The column groups to print, each fitting *width*: every column in one
    table when that fits; otherwise one table per arch, and an arch's
    strategies split over several tables when even they do not fit.  A
    header is one whole name, never broken."""
    cols = list(result.plan.columns)

    def col_w(c: Column, header: str) -> int:
        cells = [result.cell(sc.name, c) for sc in result.plan.scenarios]
        texts = [cell_text(x) for x in cells if x is not None]
        return max([len(header), 1, *map(len, texts)])

    def fits(ws: list[int]) -> bool:
        return name_w + sum(w + _GAP for w in ws) <= width

    if fits([col_w(c, max(c.arch, c.strategy, key=len)) for c in cols]):
        return [(None, cols)]
    out: list[tuple[str | None, list[Column]]] = []
    for arch in sorted({c.arch for c in cols}):
        chunk: list[Column] = []
        ws: list[int] = []
        for c in (c for c in cols if c.arch == arch):
            w = col_w(c, c.strategy)
            if chunk and not fits([*ws, w]):
                out.append((arch, chunk))
                chunk, ws = [], []
            chunk.append(c)
            ws.append(w)
        if chunk:
            out.append((arch, chunk))
    return out


_GAP = 2  # spaces between two columns


def table(result: MatrixResult, *, color: bool = False, width: int | None = None) -> str:
    """Rows scenarios, columns arch/strategy, coloured by status when *color*.

    The table fits *width* (default :data:`DEFAULT_WIDTH`): when every column
    does not fit side by side, the columns are grouped by arch (an arch's
    table lists only the scenarios that run on it), and split further when
    one arch's strategies are too many.  Names are never broken; the legend
    names only the symbols the table shows.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    width = width or DEFAULT_WIDTH
    scenarios = result.plan.scenarios
    name_w = max([len("scenario"), *(len(sc.name) for sc in scenarios)])
    buf = io.StringIO()
    console = Console(
        file=buf,
        force_terminal=color,
        no_color=not color,
        width=width,
        highlight=False,
        soft_wrap=False,
    )
    shown: set[str] = set()
    for i, (arch, cols) in enumerate(_blocks(result, width, name_w)):
        t = Table(show_lines=False, header_style="bold", pad_edge=False, box=None, padding=(0, 1))
        t.add_column("scenario", no_wrap=True, min_width=name_w)
        for c in cols:
            header = c.strategy if arch else f"{c.arch}\n{c.strategy}"
            t.add_column(header, justify="center", no_wrap=True)
        for sc in scenarios:
            cells = [result.cell(sc.name, c) for c in cols]
            if arch and all(x is None for x in cells):
                continue  # the scenario does not run on this arch
            row: list[Text] = [Text(sc.name)]
            for cell in cells:
                if cell is None:
                    row.append(Text("·", style="dim"))
                else:
                    text = cell_text(cell)
                    shown.update(text.split())
                    row.append(Text(text, style=STATUS_STYLE[cell.status][2]))
            t.add_row(*row)
        if arch:
            if i:
                console.print()
            console.print(Text(f"{arch}:", style="bold"))
        console.print(t)
    _legend(console, shown, width)
    for note in result.plan.notes:
        console.print(f"note: {note}")
    for r in result.ordered():
        if r.status in ("fail", "xpass", "error"):
            detail = r.message or "; ".join(r.failures[:3])
            console.print(
                Text(f"{r.status.upper()} {r.scenario} [{r.arch}/{r.strategy}]: ", style="bold")
                + Text(detail)
            )
    return buf.getvalue()


#: The status part of the terminal legend, short.
_SHORT_STATUS = (
    "✓ pass",
    "symbols: known defect (kfail)",
    "✗ fail (regression)",
    "✓! xpass",
    "ERR plugin error",
    "· not run on this arch",
)


def _wrap(items: list[str], width: int, lead: str) -> list[str]:
    """*items* joined by two spaces, wrapped at item boundaries to *width*."""
    lines: list[str] = []
    line, empty = lead, True
    for item in items:
        if not empty and len(line) + 2 + len(item) > width:
            lines.append(line)
            line, empty = " " * len(lead), True
        line = f"{line}{item}" if empty else f"{line}  {item}"
        empty = False
    lines.append(line)
    return lines


def _legend(console: object, shown: set[str], width: int) -> None:
    """Print the legend: statuses, then only the symbols *shown* in the table."""
    syms = [f"{sym} {meaning}" for sym, meaning in _symbol_meanings() if sym in shown]
    for line in _wrap(list(_SHORT_STATUS), width, "legend: ") + (
        _wrap(syms, width, "        ") if syms else []
    ):
        console.print(line, markup=False)  # type: ignore[attr-defined]


def _symbol_meanings() -> list[tuple[str, str]]:
    from kvmsim.report.symbols import MISMATCH_SYMBOLS, VERDICT_SYMBOLS

    out = [(sym, name) for name, sym in VERDICT_SYMBOLS.items()]
    out += [(sym, f"'{key}' not as expected") for key, sym in MISMATCH_SYMBOLS.items()]
    return out


def _md_cell(text: str, status: str) -> str:
    if status in ("fail", "xpass", "error"):
        return f"**{text}**"
    return text


DOCS_TABLE_COMMAND = "kvmsim matrix --format markdown --output docs/matrix-table.md"


def markdown(result: MatrixResult, *, command: str = DOCS_TABLE_COMMAND) -> str:
    """A deterministic Markdown table (no timings), headed by the *command*
    that generated it (by default, the one that writes docs/matrix-table.md)."""
    cols = result.plan.columns
    lines = [
        f"<!-- generated by: {command} -->",
        "",
        "| scenario | " + " | ".join(f"{c.arch}<br>{c.strategy}" for c in cols) + " |",
        "|---|" + "|".join(":-:" for _ in cols) + "|",
    ]
    for sc in result.plan.scenarios:
        cells = []
        for c in cols:
            cell = result.cell(sc.name, c)
            cells.append("·" if cell is None else _md_cell(cell_text(cell), cell.status))
        lines.append(f"| {sc.name} | " + " | ".join(cells) + " |")
    lines.append("")
    s = result.summary
    lines.append(
        f"{plural(len(result.cells), 'cell')}: " + ", ".join(f"{n} {k}" for k, n in s.items()) + "."
    )
    lines.append("")
    lines.append(
        "Legend: " + "; ".join(f"`{sym}` {m}" for sym, m in legend_items()) + "; "
        "`·` the scenario does not run on this arch."
    )
    return "\n".join(lines) + "\n"


SUMMARY_START = "<!-- matrix-summary:start (generated: do not edit; see tests/matrix) -->"
SUMMARY_END = "<!-- matrix-summary:end -->"


def strategy_summary(result: MatrixResult) -> str:
    """Per strategy and arch, the verdicts its known defects produce in the
    matrix (``kfail`` cells), for the generated section of docs/strategies.md.

    ``✓`` means every cell of that column passes; a ``**fail**`` marker would
    mean the matrix disagrees with what the records claim.
    """
    arches = sorted({c.arch for c in result.plan.columns})
    strategies = sorted({c.strategy for c in result.plan.columns})
    lines = [
        SUMMARY_START,
        "",
        "| strategy | " + " | ".join(arches) + " |",
        "|---|" + "|".join("---" for _ in arches) + "|",
    ]
    for s in strategies:
        row = []
        for a in arches:
            cells = [r for r in result.ordered() if r.strategy == s and r.arch == a]
            if not cells:
                row.append("·")
                continue
            bad = [r for r in cells if r.status in ("fail", "xpass", "error")]
            verdicts = sorted({v for r in cells if r.status == "kfail" for v in r.verdicts})
            other = sum(1 for r in cells if r.status == "kfail" and not r.verdicts)
            text = ", ".join(f"`{v}`" for v in verdicts)
            if other:
                text += (", " if text else "") + "outcome only"
            text = text or "✓"
            if bad:
                text += f" **{len(bad)} fail**"
            row.append(text)
        lines.append(f"| `{s}` | " + " | ".join(row) + " |")
    lines += ["", *sources_table(result), "", SUMMARY_END]
    return "\n".join(lines)


def sources_table(result: MatrixResult) -> list[str]:
    """Where each (arch, handler version) and each strategy of the plan was
    read: the ``Read from:`` paragraphs (:mod:`kvmsim.sources`) the plugins
    hand on in their info."""
    arches = sorted({c.arch for c in result.plan.columns})
    strategies = sorted({c.strategy for c in result.plan.columns})
    lines = ["| arch | handler | read from |", "|---|---|---|"]
    for a in arches:
        info = registry.info_of("arch", registry.load(registry.lookup("arch", a)))
        for version, source in sorted(info.handler_sources.items()):
            lines.append(f"| {a} | {version} | {source or '**none**'} |")
    lines += ["", "| strategy | read from |", "|---|---|"]
    for s in strategies:
        info = registry.info_of("strategy", registry.load(registry.lookup("strategy", s)))
        lines.append(f"| `{s}` | {info.source or '**none**'} |")
    return lines
