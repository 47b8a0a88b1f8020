"""Per-mm host page tables.

Base-page leaves live in a :class:`PteMap` (a ``dict[vpn, pte]`` interface
over one compact array of 512 entries per PTE-table-sized region, as the
kernel's PTE pages are: ~8 bytes per touched page instead of a dict entry's
~100); huge leaves (PMD, PUD, hugepd) in one dict per shift, keyed by
``hva >> shift``.  Entries are ints (:mod:`kvmsim.host.pte`); a non-present
swap-type entry (migration, hwpoison, swap) is kept as its int.  A missing
key is ``pte_none``.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

__all__ = ["PageTable", "PteMap"]

_REGION_SHIFT = 9  # 512 entries per array, a PTE page's worth
_REGION_MASK = (1 << _REGION_SHIFT) - 1
_ZEROS = bytes(8 << _REGION_SHIFT)
_STORABLE = (1 << 64) - 1  # an array slot holds pte + 1 (0 = no entry) below this
_MISSING = object()


class PteMap:
    """``dict[vpn, pte]`` for base-page leaves, stored compactly.

    One ``array('Q')`` of 512 slots per region of 512 consecutive vpns that
    has (or had) an entry; a slot holds ``pte + 1``, 0 meaning no entry, so
    a stored 0 stays distinct from an absent key as in a dict.  An entry
    that does not fit (negative or >= 2**64 - 1) goes to a side dict.  A
    region's array is freed when its last entry goes.  Iteration is in vpn
    order (callers that care sort anyway).
    """

    __slots__ = ("_big", "_counts", "_lazy", "_regions", "touched")

    def __init__(self) -> None:
        self._regions: dict[int, array[int]] = {}
        self._counts: dict[int, int] = {}
        self._big: dict[int, int] = {}
        self._lazy: dict[int, tuple[int, int, int, int]] = {}
        """region → (first slot, end slot, pte + 1 at the first, stride):
        entries :meth:`fill_linear` set that no access has needed yet."""
        self.touched: set[int] | None = None
        """vpns written or cleared since a checker last looked (None: not recorded)."""

    def get(self, vpn: int, default: int | None = None) -> int | None:
        r = self._regions.get(vpn >> _REGION_SHIFT)
        if r is None and self._lazy:
            r = self._materialize(vpn >> _REGION_SHIFT)
        if r is not None:
            v = r[vpn & _REGION_MASK]
            if v:
                return v - 1
        if self._big:
            return self._big.get(vpn, default)
        return default

    def __getitem__(self, vpn: int) -> int:
        v = self.get(vpn, _MISSING)  # type: ignore[arg-type]
        if v is _MISSING:
            raise KeyError(vpn)
        return v  # type: ignore[return-value]

    def __contains__(self, vpn: object) -> bool:
        return self.get(vpn, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def __setitem__(self, vpn: int, pte: int) -> None:
        t = self.touched
        if t is not None:
            t.add(vpn)
        ri = vpn >> _REGION_SHIFT
        r = self._regions.get(ri)
        if r is None and self._lazy:
            r = self._materialize(ri)
        if r is None:
            r = self._regions[ri] = array("Q", _ZEROS)
            self._counts[ri] = 0
        i = vpn & _REGION_MASK
        big = self._big
        if not r[i] and (not big or vpn not in big):
            self._counts[ri] += 1
        if 0 <= pte < _STORABLE:
            r[i] = pte + 1
            if big:
                big.pop(vpn, None)
        else:
            r[i] = 0
            big[vpn] = pte

    def pop(self, vpn: int, default: object = _MISSING) -> int | None:
        ri = vpn >> _REGION_SHIFT
        r = self._regions.get(ri)
        if r is None and self._lazy:
            r = self._materialize(ri)
        old: object = _MISSING
        if r is not None:
            i = vpn & _REGION_MASK
            v = r[i]
            if v:
                r[i] = 0
                old = v - 1
            elif self._big and vpn in self._big:
                old = self._big.pop(vpn)
            if old is not _MISSING:
                if self.touched is not None:
                    self.touched.add(vpn)
                n = self._counts[ri] - 1
                if n:
                    self._counts[ri] = n
                else:  # the region's last entry: free its array
                    del self._regions[ri]
                    del self._counts[ri]
        if old is _MISSING:
            if default is _MISSING:
                raise KeyError(vpn)
            return default  # type: ignore[return-value]
        return old  # type: ignore[return-value]

    def __len__(self) -> int:
        return sum(self._counts.values()) + sum(b - a for a, b, _, _ in self._lazy.values())

    def __bool__(self) -> bool:
        return bool(self._counts) or bool(self._lazy)

    def fill_linear(self, vpn: int, n: int, pte: int, stride: int) -> None:
        """Set ``n`` entries from ``vpn``: ``pte``, ``pte + stride``, ...
        (``remap_pfn_range``'s consecutive frames).  The entries exist at
        once for every reader, but each region's array is only built when
        something first reads or writes it, so a 16G linear mapping costs
        nothing until touched.  The range must hold no entry."""
        if pte < 0 or pte + n * stride >= _STORABLE:
            for i in range(n):
                self[vpn + i] = pte + i * stride
            return
        t = self.touched
        if t is not None:
            t.update(range(vpn, vpn + n))
        end = vpn + n
        while vpn < end:
            ri = vpn >> _REGION_SHIFT
            i0 = vpn & _REGION_MASK
            i1 = min(_REGION_MASK + 1, i0 + end - vpn)
            if ri in self._regions or ri in self._lazy:
                # the region has other entries: write these ones now
                for i in range(i1 - i0):
                    self[vpn + i] = pte + i * stride
            else:
                self._lazy[ri] = (i0, i1, pte + 1, stride)
            pte += (i1 - i0) * stride
            vpn += i1 - i0

    def _materialize(self, ri: int) -> array[int] | None:
        """Build region ``ri``'s array from its :meth:`fill_linear` record."""
        lz = self._lazy.pop(ri, None)
        if lz is None:
            return None
        i0, i1, first, stride = lz
        r = self._regions[ri] = array("Q", _ZEROS)
        r[i0:i1] = array("Q", range(first, first + (i1 - i0) * stride, stride))
        self._counts[ri] = i1 - i0
        return r

    def items(self) -> Iterator[tuple[int, int]]:
        """(vpn, pte) of every entry, in vpn order."""
        return self.items_in(0, -1)

    def items_in(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """(vpn, pte) of every entry with ``lo <= vpn < hi`` (``hi < 0``:
        no bound), in vpn order; visits only regions that have entries."""
        regions = self._regions
        big = self._big
        lazy = self._lazy
        if hi < 0:
            keys = sorted(regions.keys() | lazy.keys()) if lazy else sorted(regions)
        else:
            rlo, rhi = lo >> _REGION_SHIFT, (hi - 1) >> _REGION_SHIFT
            if rhi - rlo + 1 <= len(regions) + len(lazy):
                keys = [k for k in range(rlo, rhi + 1) if k in regions or k in lazy]
            else:
                keys = sorted(k for k in regions.keys() | lazy.keys() if rlo <= k <= rhi)
        for ri in keys:
            r = regions.get(ri)
            if r is None:
                r = self._materialize(ri)
                if r is None:  # written and emptied since the keys were taken
                    continue
            base = ri << _REGION_SHIFT
            i0, i1 = 0, _REGION_MASK + 1
            if hi >= 0:
                i0, i1 = max(lo - base, 0), min(hi - base, i1)
            for i, v in enumerate(r[i0:i1], i0):
                if v:
                    yield base + i, v - 1
                elif big and base + i in big:
                    yield base + i, big[base + i]

    def __iter__(self) -> Iterator[int]:
        return (vpn for vpn, _ in self.items())

    def keys(self) -> Iterator[int]:
        return iter(self)

    def values(self) -> Iterator[int]:
        return (pte for _, pte in self.items())


class PageTable:
    """``mm->pgd`` and everything below it."""

    __slots__ = ("huge", "huge_touched", "page_shift", "ptes", "shifts")

    def __init__(self, page_shift: int) -> None:
        self.page_shift = page_shift
        self.ptes = PteMap()
        """vpn (hva >> PAGE_SHIFT) → pte."""
        self.huge: dict[int, dict[int, int]] = {}
        """shift → (hva >> shift → leaf entry)."""
        self.shifts: list[int] = []
        """shifts with a huge dict, ascending."""
        self.huge_touched: set[tuple[int, int]] | None = None
        """``(shift, hva >> shift)`` of huge leaves written or cleared since a
        checker last looked (None: not recorded); base PTEs: ``ptes.touched``."""

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
        if self.huge_touched is not None:
            self.huge_touched.add((shift, hva >> shift))

    def clear_huge(self, hva: int, shift: int) -> int | None:
        """Clear the huge leaf at ``hva``; returns the old entry."""
        d = self.huge.get(shift)
        if d is None:
            return None
        if self.huge_touched is not None:
            self.huge_touched.add((shift, hva >> shift))
        return d.pop(hva >> shift, None)

    # -- walks -------------------------------------------------------------------

    def ptes_in(self, start: int, end: int) -> list[tuple[int, int]]:
        """(hva, pte) of every base entry in ``[start, end)``, ascending."""
        ps = self.page_shift
        lo, hi = start >> ps, (end + (1 << ps) - 1) >> ps
        if hi <= lo:
            return []
        return [(v << ps, p) for v, p in self.ptes.items_in(lo, hi)]

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
