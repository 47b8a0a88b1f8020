"""Sizes as scenario files write them: ``65536``, ``"64K"``, ``"2M"``, ``"1G"``."""

from __future__ import annotations

import re
from typing import Final

from kvmsim.errors import ScenarioError

#: The base page size every scenario address and size is aligned to.  Archs
#: with 64K base pages (ppc radix) still get 4K-granular scenarios, so that a
#: scenario can place a 4K-aligned hole inside a 64K page and watch them fail.
PAGE_SIZE: Final = 4096

_UNITS: Final = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# Digits, then at most one unit letter.  No "T", no "KiB", no decimals, no
# spaces: one spelling per size keeps scenario files greppable.
_SIZE_RE: Final = re.compile(r"([0-9]+)([KMG]?)", re.IGNORECASE)

SIZE_EXPECTED: Final = "a size: bytes as an integer, or a string like '64K', '2M', '1G'"


def parse_size(
    value: object,
    key: str,
    *,
    file: str | None = None,
    align: int = PAGE_SIZE,
) -> int:
    """Return the size *value* in bytes: a positive multiple of *align*.

    :param value: an ``int`` (bytes) or a string of digits with an optional
        unit ``K``, ``M`` or ``G`` (powers of 1024, either case).
    :param key: the key path reported if *value* is bad.
    :param file: the file name reported if *value* is bad.
    :param align: the alignment required (a page, by default).
    :raises ScenarioError: *value* is not a size, not positive or not aligned.
    """
    # bool is an int subclass; ``size = true`` is a typo, never 1 byte.
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if m is None:
            raise ScenarioError("not a size", file=file, key=key, expected=SIZE_EXPECTED, got=value)
        n = int(m.group(1)) * _UNITS.get(m.group(2).upper(), 1)
    else:
        raise ScenarioError("not a size", file=file, key=key, expected=SIZE_EXPECTED, got=value)
    if n <= 0:
        raise ScenarioError(
            "size must be positive", file=file, key=key, expected=SIZE_EXPECTED, got=value
        )
    if n % align:
        raise ScenarioError(
            f"size is not a multiple of {format_size(align)}",
            file=file,
            key=key,
            expected=f"a multiple of {format_size(align)}",
            got=value,
        )
    return n


def format_size(n: int) -> str:
    """Spell *n* bytes with the largest exact unit: ``"64K"``, ``"2M"``, ``"1G"``.

    Anything that is not a whole number of KiB (including 0 and negative
    numbers) is spelled as plain bytes, ``"1536"``.
    """
    if n > 0:
        for unit in ("G", "M", "K"):
            if n % _UNITS[unit] == 0:
                return f"{n // _UNITS[unit]}{unit}"
    return str(n)
