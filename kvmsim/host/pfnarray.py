"""Per-frame state in compact arrays indexed by pfn (issue 11).

A ``dict[int, int]`` costs ~70-100 bytes per touched page (the slot, the key
object, often the value object); an ``array`` slot costs its item size.  The
host allocator hands out RAM frames bottom-up and never reuses them, so an
array grown on demand up to the highest frame written covers exactly the
frames in use.  Frames outside RAM (MMIO pfns, which have no ``struct page``
and normally no state) fall back to a small dict, so nothing is lost.

The classes keep the subset of the ``dict`` interface the host model uses
(``get``, ``[]``, ``[]=``, ``pop``, ``del``, ``in``, ``items``).  A zero is
"no entry": every caller reads with a default of 0 (refcount, flags, host
references), which is what the kernel's zeroed ``struct page`` says too.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

__all__ = ["PfnArray", "PfnOwner"]

_MIN_GROW = 512


class PfnArray:
    """An ``int`` per pfn in ``[0, limit)`` (an ``array``), a dict beyond.

    :param typecode: the array type (``"i"``: signed 32-bit, for counts that
        may underflow; ``"I"`` for flag words).
    :param limit: one past the highest pfn kept in the array (``ram_pages``).
    """

    __slots__ = ("a", "extra", "limit")

    def __init__(self, typecode: str, limit: int) -> None:
        self.a = array(typecode)
        self.extra: dict[int, int] = {}
        self.limit = limit

    def _grow(self, pfn: int) -> None:
        a = self.a
        n = len(a)
        # geometric growth (x1.25) keeps appends amortised O(1) and the
        # unused tail small; capped at RAM's end
        new = min(self.limit, max(pfn + 1, n + (n >> 2), _MIN_GROW))
        a.frombytes(bytes((new - n) * a.itemsize))

    def fill(self, start: int, stop: int, value: int) -> None:
        """Set every pfn in ``[start, stop)`` (inside the array's limit) to
        ``value`` in one slice assignment."""
        if stop > len(self.a):
            self._grow(stop - 1)
        self.a[start:stop] = array(self.a.typecode, [value]) * (stop - start)

    def get(self, pfn: int, default: Any = None) -> Any:
        a = self.a
        if 0 <= pfn < len(a):
            v = a[pfn]
        else:
            v = self.extra.get(pfn, 0)
        return v if v else default

    def __getitem__(self, pfn: int) -> int:
        a = self.a
        if 0 <= pfn < len(a):
            return a[pfn]
        return self.extra.get(pfn, 0)

    def __setitem__(self, pfn: int, value: int) -> None:
        a = self.a
        if 0 <= pfn < len(a):
            a[pfn] = value
        elif 0 <= pfn < self.limit:
            self._grow(pfn)
            a[pfn] = value
        elif value:
            self.extra[pfn] = value
        else:
            self.extra.pop(pfn, None)

    def pop(self, pfn: int, default: Any = None) -> Any:
        v = self.get(pfn, default)
        self[pfn] = 0
        return v

    def __delitem__(self, pfn: int) -> None:
        self[pfn] = 0

    def __contains__(self, pfn: object) -> bool:
        return isinstance(pfn, int) and bool(self[pfn])

    def items(self) -> Iterator[tuple[int, int]]:
        """(pfn, value) of every non-zero entry, ascending in the array."""
        for pfn, v in enumerate(self.a):
            if v:
                yield pfn, v
        yield from sorted(self.extra.items())

    def __iter__(self) -> Iterator[int]:
        return (pfn for pfn, _ in self.items())

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def nbytes(self) -> int:
        """Bytes held by the array (for the memory benchmark)."""
        return len(self.a) * self.a.itemsize


class PfnOwner:
    """Who allocated each frame: a 16-bit index per pfn into a table of
    owner names (there are a handful: ``anon``, ``kernel``, drivers...)."""

    __slots__ = ("_ids", "_idx", "names")

    def __init__(self, limit: int) -> None:
        self._idx = PfnArray("H", limit)
        self.names: list[str] = [""]  # index 0: no owner
        self._ids: dict[str, int] = {}

    def get(self, pfn: int, default: Any = None) -> Any:
        i = self._idx[pfn]
        return self.names[i] if i else default

    def __getitem__(self, pfn: int) -> str:
        i = self._idx[pfn]
        if not i:
            raise KeyError(pfn)
        return self.names[i]

    def __setitem__(self, pfn: int, owner: str) -> None:
        i = self._ids.get(owner)
        if i is None:
            i = self._ids[owner] = len(self.names)
            self.names.append(owner)
        idx = self._idx
        a = idx.a
        if 0 <= pfn < len(a):
            a[pfn] = i  # PfnArray.__setitem__'s usual case, inline: one call less per allocation
        else:
            idx[pfn] = i

    def __contains__(self, pfn: object) -> bool:
        return pfn in self._idx

    def fill(self, start: int, stop: int, owner: str) -> None:
        """Give every pfn in ``[start, stop)`` the same owner."""
        self[start] = owner
        self._idx.fill(start, stop, self._idx[start])

    def pop(self, pfn: int, default: Any = None) -> Any:
        v = self.get(pfn, default)
        self._idx[pfn] = 0
        return v
