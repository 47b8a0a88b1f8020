"""A range walk over stage-2 tables kept as nested dicts.

Several arches keep their stage-2 tables as ``dict[index, int | dict]``: an
``int`` is a leaf (present or not), a ``dict`` the next level's table.
:func:`leaves_in` visits only the populated slots that overlap a guest
physical range, so asking for the leaves around one address costs a few
dict lookups whatever the guest's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


def leaves_in(
    table: dict[int, Any], shifts: Sequence[int], start: int, end: int
) -> Iterator[tuple[int, int, int]]:
    """Every int entry overlapping ``[start, end)`` as ``(gpa, shift, value)``,
    in gpa order.  ``shifts[k]`` is the size shift of one slot at depth
    ``k`` (the top table first); a slot's index is ``(gpa >> shift)`` within
    its parent's span."""
    return _walk(table, shifts, 0, start, end, 0, None)


def _walk(
    table: dict[int, Any],
    shifts: Sequence[int],
    depth: int,
    start: int,
    end: int,
    base: int,
    span: int | None,
) -> Iterator[tuple[int, int, int]]:
    shift = shifts[depth]
    lo = max(start, base)
    hi = end if span is None else min(end, base + span)
    if lo >= hi:
        return
    first = (lo - base) >> shift
    last = (hi - 1 - base) >> shift
    if last - first + 1 > len(table):
        keys: Any = sorted(k for k in table if first <= k <= last)
    else:
        keys = [k for k in range(first, last + 1) if k in table]
    for i in keys:
        e = table[i]
        gpa = base + (i << shift)
        if e.__class__ is dict:
            yield from _walk(e, shifts, depth + 1, start, end, gpa, 1 << shift)
        else:
            yield gpa, shift, e
