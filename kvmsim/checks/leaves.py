"""Every base page of a stage-2 leaf, judged at once.

The MMU-notifier invariant holds per base page: each base page a leaf
covers must be inside a memslot, must be the frame the host page table maps
at the matching hva, and must not have been invalidated after the fault that
installed the leaf read ``mmu_notifier_seq``.  A 2M or 1G leaf is judged on
all of its base pages, not on its first one.

Cost: a leaf is cut into its memslot segments (gpa runs with contiguous
hvas); each segment is compared with the host page table's entries in its
hva range run by run (a host huge leaf is one run, a gap with no entry is
one run), so a 1G leaf over a 1G host page costs a few operations, not one
lookup per base page.  Where host entries of different sizes overlap (a base
PTE under a huge leaf: the base PTE wins, as in ``__find_linux_pte``) the
segment falls back to the per-page walk, which is also what the property
test compares this against.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from attrs import define

from kvmsim.host.pte import pte_pfn, pte_present, pte_write

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Mapping
    from kvmsim.kvm.core import Kvm

# host_runs items: (hva_lo, hva_hi, pfn of hva_lo or None if not present)
Run = tuple[int, int, "int | None"]
FramesFn = Callable[[], "Intervals"]


class Intervals:
    """A set of ints as sorted, merged ``[lo, hi)`` intervals."""

    __slots__ = ("his", "los")

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        los: list[int] = []
        his: list[int] = []
        for lo, hi in sorted(spans):
            if hi <= lo:
                continue
            if his and lo <= his[-1]:
                his[-1] = max(his[-1], hi)
            else:
                los.append(lo)
                his.append(hi)
        self.los = los
        self.his = his

    def __contains__(self, x: int) -> bool:
        i = bisect_right(self.los, x) - 1
        return i >= 0 and x < self.his[i]

    def first_missing(self, lo: int, hi: int) -> int | None:
        """The least ``x`` in ``[lo, hi)`` not in the set, or None."""
        i = bisect_right(self.los, lo) - 1
        if i >= 0 and lo < self.his[i]:
            lo = self.his[i]
        return lo if lo < hi else None

    def next_start(self, x: int, default: int) -> int:
        """The start of the first interval above ``x``, else ``default``."""
        i = bisect_right(self.los, x)
        return self.los[i] if i < len(self.los) else default


def slot_frames(kvm: Kvm) -> Intervals:
    """Every frame the host maps (present) inside some memslot's hva range,
    from the host page table's entries (not one lookup per slot page)."""
    ps = kvm.page_shift
    spans: list[tuple[int, int]] = []
    for slot in kvm.memslots.slots:
        start = slot.userspace_addr
        for lo, hi, pfn in host_runs(kvm, start, start + (slot.npages << ps)):
            if pfn is not None:
                spans.append((pfn, pfn + ((hi - lo) >> ps)))
    return Intervals(spans)


def host_runs(kvm: Kvm, start: int, end: int) -> list[Run]:
    """The host page table over ``[start, end)`` (page aligned) as runs of
    base pages mapped to consecutive frames, ``pfn=None`` where no entry is
    present (no entry, or a migration/hwpoison/swap entry); ascending, gaps
    (no entry at all) left out."""
    pgt = kvm.mm.pgtable
    ps = kvm.page_shift
    base = pgt.ptes_in(start, end)
    huge = pgt.huge_in(start, end) if pgt.shifts else []
    if not huge:
        return [(h, h + (1 << ps), pte_pfn(p) if pte_present(p) else None) for h, p in base]
    huge.sort()
    if base or any(huge[i][0] + (1 << huge[i][1]) > huge[i + 1][0] for i in range(len(huge) - 1)):
        return _runs_per_page(kvm, start, end)
    runs: list[Run] = []
    for h, shift, e in huge:
        lo, hi = max(h, start), min(h + (1 << shift), end)
        pfn = pte_pfn(e) + ((lo - h) >> ps) if pte_present(e) else None
        runs.append((lo, hi, pfn))
    return runs


def _runs_per_page(kvm: Kvm, start: int, end: int) -> list[Run]:
    """:func:`host_runs` one base page at a time (mixed entry sizes)."""
    pgt = kvm.mm.pgtable
    ps = kvm.page_shift
    runs: list[Run] = []
    for hva in range(start, end, 1 << ps):
        pte, shift = pgt.find_linux_pte(hva)
        if pte is None:
            continue
        pfn = pte_pfn(pte) + ((hva & ((1 << shift) - 1)) >> ps) if pte_present(pte) else None
        runs.append((hva, hva + (1 << ps), pfn))
    return runs


def host_frame(kvm: Kvm, hva: int) -> tuple[int | None, bool]:
    """The frame the host page table maps at ``hva`` (None if no present
    entry) and whether that entry is writable."""
    pte, shift = kvm.mm.pgtable.find_linux_pte(hva)
    if pte is None or not pte_present(pte):
        return None, False
    ps = kvm.page_shift
    return pte_pfn(pte) + ((hva & ((1 << shift) - 1)) >> ps), pte_write(pte)


def segments(kvm: Kvm, gpa: int, size: int) -> Iterator[tuple[int, int, int | None]]:
    """``[gpa, gpa + size)`` cut at memslot boundaries: ``(gpa, length,
    hva)`` in gpa order, ``hva`` None for a part no memslot covers."""
    ps = kvm.page_shift
    slots = kvm.memslots
    end = gpa + size
    while gpa < end:
        slot = slots.gfn_to_memslot(gpa >> ps)
        if slot is not None:
            slot_end = (slot.base_gfn + slot.npages) << ps
            n = min(end, slot_end) - gpa
            yield gpa, n, slot.userspace_addr + (gpa - (slot.base_gfn << ps))
        else:
            nxt = next((s.base_gfn << ps for s in slots.slots if s.base_gfn << ps > gpa), end)
            n = min(end, nxt) - gpa
            yield gpa, n, None
        gpa += n


@define
class LeafScan:
    """What :func:`scan_leaf` found, each the first base page (in gpa order)
    of its kind.

    :param noslot: ``(gpa, pfn)`` of the first page no memslot covers.
    :param other: ``(gpa, pfn, hva, host_pfn)`` of the first page whose hva
        the host maps to another frame.
    :param other_outside: ``(gpa, pfn)`` of the first such page whose frame
        backs no memslot.
    :param nothing: ``(gpa, pfn, hva)`` of the first page whose hva the host
        maps nothing at and that no later invalidation covered.
    :param nothing_outside: ``(gpa, pfn)`` of the first such page whose frame
        backs no memslot.
    :param stale: ``(seq, start, end)`` of the first invalidation (in the
        order they ended) that ended after the leaf's ``mmu_seq`` and
        covered one of its pages.
    """

    noslot: tuple[int, int] | None = None
    other: tuple[int, int, int, int] | None = None
    other_outside: tuple[int, int] | None = None
    nothing: tuple[int, int, int] | None = None
    nothing_outside: tuple[int, int] | None = None
    stale: tuple[int, int, int] | None = None


def later_invalidations(kvm: Kvm, mmu_seq: int) -> list[tuple[int, int, int]]:
    """The invalidations that ended after ``mmu_seq`` was read, in the
    order they ended (the list is in increasing seq order)."""
    inv = kvm.invalidations
    if not inv or inv[-1][0] <= mmu_seq:
        return []
    return inv[bisect_right(inv, (mmu_seq, 1 << 64, 1 << 64)) :]


def scan_leaf(kvm: Kvm, m: Stage2Mapping, frames: FramesFn) -> LeafScan:
    """Judge every base page of ``m``.  ``frames()`` gives the frames the
    host maps inside the memslots, asked only when a wrong page needs it."""
    ps = kvm.page_shift
    out = LeafScan()
    later = later_invalidations(kvm, m.mmu_seq)
    segs = list(segments(kvm, m.gpa, max(m.size, 1 << ps)))
    if later:
        for seq, s, e in later:
            if any(h is not None and s < h + n and h < e for _, n, h in segs):
                out.stale = (seq, s, e)
                break
    inval = Intervals((s, e) for _, s, e in later) if later else None
    for gpa, n, hva in segs:
        pfn0 = m.pfn + ((gpa - m.gpa) >> ps)
        if hva is None:
            if out.noslot is None:
                out.noslot = (gpa, pfn0)
            continue
        pos = hva
        for lo, hi, hpfn in host_runs(kvm, hva, hva + n):
            if pos < lo:  # no entry at all over [pos, lo)
                _nothing(out, kvm, m, hva, gpa, pos, lo, inval, frames)
                pos = lo
            if hpfn is None:
                _nothing(out, kvm, m, hva, gpa, lo, hi, inval, frames)
            else:
                want = pfn0 + ((lo - hva) >> ps)
                if hpfn != want:
                    if out.other is None:
                        out.other = (gpa + lo - hva, want, lo, hpfn)
                    if out.other_outside is None:
                        miss = frames().first_missing(want, want + ((hi - lo) >> ps))
                        if miss is not None:
                            out.other_outside = (gpa + lo - hva + ((miss - want) << ps), miss)
            pos = hi
        if pos < hva + n:
            _nothing(out, kvm, m, hva, gpa, pos, hva + n, inval, frames)
    return out


def _nothing(
    out: LeafScan,
    kvm: Kvm,
    m: Stage2Mapping,
    seg_hva: int,
    seg_gpa: int,
    lo: int,
    hi: int,
    inval: Intervals | None,
    frames: FramesFn,
) -> None:
    """Record the pages of ``[lo, hi)`` (hvas the host maps nothing at) that
    no later invalidation covered, chunk by chunk of such pages."""
    ps = kvm.page_shift
    pos = lo
    while pos < hi and (out.nothing is None or out.nothing_outside is None):
        if inval is not None:
            first = inval.first_missing(pos, hi)
            if first is None:
                return
            pos = first
            stop = min(hi, inval.next_start(pos, hi))
        else:
            stop = hi
        gpa = seg_gpa + pos - seg_hva
        pfn = m.pfn + ((gpa - m.gpa) >> ps)
        if out.nothing is None:
            out.nothing = (gpa, pfn, pos)
        if out.nothing_outside is None:
            miss = frames().first_missing(pfn, pfn + ((stop - pos) >> ps))
            if miss is not None:
                out.nothing_outside = (gpa + ((miss - pfn) << ps), miss)
        pos = stop
