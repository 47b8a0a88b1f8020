"""Per-mm host page tables.

Base-page leaves live in one ``dict[vpn, pte]``; huge leaves (PMD, PUD,
hugepd) in one dict per shift, keyed by ``hva >> shift``.  Entries are ints
(:mod:`kvmsim.host.pte`); a non-present swap-type entry (migration,
hwpoison, swap) is kept as its int.  A missing key is ``pte_none``.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["PageTable"]


class PageTable:
    """``mm->pgd`` and everything below it."""

    __slots__ = ("huge", "page_shift", "ptes", "shifts")

    def __init__(self, page_shift: int) -> None:
        self.page_shift = page_shift
        self.ptes: dict[int, int] = {}
        """vpn (hva >> PAGE_SHIFT) → pte."""
        self.huge: dict[int, dict[int, int]] = {}
        """shift → (hva >> shift → leaf entry)."""
        self.shifts: list[int] = []
        """shifts with a huge dict, ascending."""

    # -- lookups -----------------------------------------------------------------

    def find_linux_pte(self, hva: int) -> tuple[int | None, int]:
        """``__find_linux_pte(pgdir, ea, &is_thp, &hpage_shift)``.

        Returns the entry mapping ``hva`` and the huge page shift, which is 0
        for a base PTE, as in the kernel (callers then use PAGE_SHIFT).
        ``(None, 0)`` when no level has an entry.  A non-present entry
        (migration, hwpoison) is returned as its int.
        """
        pte = self.ptes.get(hva >> self.page_shift)
        if pte is not None:
            return pte, 0
        for shift in self.shifts:
            e = self.huge[shift].get(hva >> shift)
            if e is not None:
                return e, shift
        return None, 0

    def get_pte(self, hva: int) -> int | None:
        """The base PTE at ``hva`` or None."""
        return self.ptes.get(hva >> self.page_shift)

    def get_huge(self, hva: int) -> tuple[int, int] | None:
        """The huge leaf covering ``hva`` as (shift, entry), or None."""
        for shift in self.shifts:
            d = self.huge[shift]
            e = d.get(hva >> shift)
            if e is not None:
                return shift, e
        return None

    # -- updates -----------------------------------------------------------------

    def set_pte(self, hva: int, pte: int) -> None:
        """``set_pte_at``."""
        self.ptes[hva >> self.page_shift] = pte

    def clear_pte(self, hva: int) -> int | None:
        """``ptep_get_and_clear``: returns the old entry."""
        return self.ptes.pop(hva >> self.page_shift, None)

    def set_huge(self, hva: int, shift: int, entry: int) -> None:
        """``set_pmd_at`` / ``set_huge_pte_at``."""
        d = self.huge.get(shift)
        if d is None:
            d = self.huge[shift] = {}
            self.shifts.append(shift)
            self.shifts.sort()
        d[hva >> shift] = entry

    def clear_huge(self, hva: int, shift: int) -> int | None:
        """Clear the huge leaf at ``hva``; returns the old entry."""
        d = self.huge.get(shift)
        if d is None:
            return None
        return d.pop(hva >> shift, None)

    # -- walks -------------------------------------------------------------------

    def ptes_in(self, start: int, end: int) -> list[tuple[int, int]]:
        """(hva, pte) of every base entry in ``[start, end)``, ascending."""
        ps = self.page_shift
        lo, hi = start >> ps, (end + (1 << ps) - 1) >> ps
        ptes = self.ptes
        if hi - lo <= len(ptes):
            return [(v << ps, ptes[v]) for v in range(lo, hi) if v in ptes]
        return sorted((v << ps, p) for v, p in ptes.items() if lo <= v < hi)

    def huge_in(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """(hva, shift, entry) of every huge leaf overlapping ``[start, end)``."""
        out: list[tuple[int, int, int]] = []
        for shift in self.shifts:
            d = self.huge[shift]
            lo, hi = start >> shift, (end + (1 << shift) - 1) >> shift
            if hi - lo <= len(d):
                out.extend((i << shift, shift, d[i]) for i in range(lo, hi) if i in d)
            else:
                out.extend(sorted((i << shift, shift, e) for i, e in d.items() if lo <= i < hi))
        return out

    def any_in(self, start: int, end: int) -> bool:
        """Is anything (present or not) mapped in ``[start, end)``?"""
        return bool(self.ptes_in(start, end)) or bool(self.huge_in(start, end))

    def items(self) -> Iterator[tuple[int, int, int]]:
        """(hva, shift, entry) of every entry; shift 0 for base PTEs."""
        ps = self.page_shift
        for v, p in self.ptes.items():
            yield v << ps, 0, p
        for shift in self.shifts:
            for i, e in self.huge[shift].items():
                yield i << shift, shift, e
