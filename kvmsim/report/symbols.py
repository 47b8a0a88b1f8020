"""Short symbols for matrix cells, and their legend."""

from __future__ import annotations

from typing import Final

from kvmsim.matrix import CellResult

#: Checker verdict -> symbol (two characters, so columns stay narrow).
VERDICT_SYMBOLS: Final = {
    "wrong_frame": "WF",
    "stale_mapping": "SM",
    "refcount_leak": "R+",
    "refcount_underflow": "R-",
    "lock_leak": "LK",
    "deadlock": "DL",
    "oops": "OP",
    "livelock": "LV",
    "write_to_readonly": "WR",
    "poison_mapped": "PM",
    "cache_attr_mismatch": "CA",
    "outside_memslot": "OM",
    "lost_dirty": "LD",
    "dirty_log_overflow": "DO",
}

#: A failed ``expect`` key with no checker verdict -> symbol.
MISMATCH_SYMBOLS: Final = {
    "outcome": "~o",
    "writable": "~w",
    "frame": "~f",
    "page_size": "~p",
    "verdicts": "~v",
    "value": "~d",  # the data a load returned
}

#: Status -> (marker, meaning, rich style).
STATUS_STYLE: Final = {
    "pass": ("✓", "every expectation held, no checker fired", "green"),
    "kfail": ("", "fails as the strategy's recorded known defect says", "yellow"),
    "fail": ("✗", "fails, matching no recorded defect: a regression", "bold red"),
    "xpass": ("✓!", "a recorded known defect did not reproduce", "bold magenta"),
    "error": ("ERR", "a plugin raised inside the cell", "bold white on red"),
}


def verdict_symbol(name: str) -> str:
    return VERDICT_SYMBOLS.get(name, name[:2].upper())


def cell_symbols(c: CellResult) -> str:
    """The verdicts (or, with none, the failed expect keys) of a cell."""
    syms = [verdict_symbol(v) for v in c.verdicts]
    if not syms:
        syms = [MISMATCH_SYMBOLS.get(k, "~" + k[:1]) for k in c.mismatch_keys()]
    return " ".join(syms)


def cell_text(c: CellResult) -> str:
    """What a table cell shows: ``✓``, the kfail's symbols, ``✗ WF``, ``✓!``, ``ERR``."""
    marker = STATUS_STYLE[c.status][0]
    if c.status in ("pass", "xpass", "error"):
        return marker
    syms = cell_symbols(c) or "?"
    return f"{marker} {syms}".strip()


def legend_items() -> list[tuple[str, str]]:
    """(symbol, meaning) for every symbol a cell may show."""
    items = [(m or "(symbols)", meaning) for m, meaning, _ in STATUS_STYLE.values()]
    items += [(s, v) for v, s in VERDICT_SYMBOLS.items()]
    items += [
        (s, f"expectation '{k}' failed (no checker fired)") for k, s in MISMATCH_SYMBOLS.items()
    ]
    return items
