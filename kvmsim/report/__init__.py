"""Renderers for ``kvmsim matrix`` and ``kvmsim diff``.

:func:`render` turns a :class:`~kvmsim.matrix.MatrixResult` into text in one
of :data:`FORMATS`; :mod:`kvmsim.report.symbols` holds the cell symbols and
their legend; :mod:`kvmsim.report.diff` aligns two decision traces.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the CLI imports this package to build its parser: keep it light
    from kvmsim.matrix import MatrixResult

FORMATS: Final = ("table", "markdown", "json", "html")


def render(
    result: MatrixResult,
    fmt: str,
    *,
    color: bool = False,
    width: int | None = None,
    command: str | None = None,
) -> str:
    """*result* as ``table`` (rich, coloured when *color*), ``markdown``,
    ``json`` (the documented contract) or ``html`` (one self-contained page);
    *command* is the command line that made it (markdown names it)."""
    if fmt == "json":
        return json.dumps(result.to_json(), indent=1, sort_keys=True) + "\n"
    if fmt == "markdown":
        from kvmsim.report.text import markdown

        return markdown(result) if command is None else markdown(result, command=command)
    if fmt == "html":
        from kvmsim.report.html import html

        return html(result)
    from kvmsim.report.text import table

    return table(result, color=color, width=width)


__all__ = ["FORMATS", "render"]
