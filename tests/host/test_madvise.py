"""madvise(MADV_DONTNEED / MADV_FREE / MADV_REMOVE) and fallocate(PUNCH_HOLE)
on the host model, against v4.16's semantics (kernel-notes §M)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from kvmsim.cmodel import EINVAL, ENOMEM
from kvmsim.host import Mm, RecordingNotifier, host_write, map_backing
from kvmsim.host import madvise as mad
from kvmsim.host.constants import (
    FAULT_FLAG_USER,
    PG_LAZYFREE,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_YOUNG,
    THP_SHIFT,
)
from kvmsim.host.fault import handle_mm_fault
from kvmsim.host.pte import pte_pfn
from kvmsim.host.vma import Vma
from kvmsim.scenario import discard

PUNCH = mad.FALLOC_FL_PUNCH_HOLE | mad.FALLOC_FL_KEEP_SIZE


def vma_of(
    mm: Mm, backing: str, *, shared: bool = False, prot: str = "rw", size: int = 0, **kw: Any
) -> Vma:
    return map_backing(
        mm,
        name=backing,
        size=size or 16 * mm.page_size,
        backing=backing,
        prot=prot,
        shared=shared,
        **kw,
    )


def frame(mm: Mm, hva: int) -> int | None:
    e, _ = mm.pgtable.find_linux_pte(hva)
    return None if e is None or not e & PTE_PRESENT else pte_pfn(e)


def read_fault(mm: Mm, hva: int) -> int:
    vma = mm.find_vma(hva)
    assert vma is not None
    mm.mmap_sem.down_read(mm.current)
    try:
        return handle_mm_fault(mm, vma, hva, FAULT_FLAG_USER)
    finally:
        mm.mmap_sem.up_read(mm.current)


# ---- MADV_DONTNEED -----------------------------------------------------


def test_dontneed_anon_one_pair_frees_pages_and_keeps_the_vma(
    mm: Mm, rec: RecordingNotifier
) -> None:
    ps = mm.page_size
    vma = vma_of(mm, "anon")
    for i in range(4):
        host_write(mm, vma.start + i * ps, 0x40 + i)
    pfns = [frame(mm, vma.start + i * ps) for i in range(4)]
    rec.calls.clear()
    assert mad.sys_madvise(mm, vma.start + ps, 2 * ps, mad.MADV_DONTNEED) == 0
    rng = (vma.start + ps, vma.start + 3 * ps)
    assert rec.calls == [("start", *rng), ("end", *rng)]
    assert frame(mm, vma.start + ps) is None and frame(mm, vma.start + 2 * ps) is None
    assert pfns[1] in mm.phys.freed and pfns[2] in mm.phys.freed
    assert frame(mm, vma.start) == pfns[0] and frame(mm, vma.start + 3 * ps) == pfns[3]
    assert mm.find_vma(vma.start + ps) is vma  # the vma stays, whole
    assert not mm.mmap_sem.is_locked()
    assert mm.phys.others_refs() == {}
    # a read of private anonymous memory with no page: the zero page
    assert read_fault(mm, vma.start + ps) == 0
    assert frame(mm, vma.start + ps) == mm.phys.zero_pfn


def test_dontneed_shmem_keeps_the_page_cache_page(mm: Mm) -> None:
    vma = vma_of(mm, "shmem", shared=True)
    host_write(mm, vma.start, 7)
    pfn = frame(mm, vma.start)
    assert pfn is not None and mm.phys.page_count(pfn) == 2  # cache + mapping
    assert mad.sys_madvise(mm, vma.start, mm.page_size, mad.MADV_DONTNEED) == 0
    assert frame(mm, vma.start) is None
    assert mm.phys.page_count(pfn) == 1 and pfn not in mm.phys.freed
    assert read_fault(mm, vma.start) == 0
    assert frame(mm, vma.start) == pfn
    assert mm.phys.read_word(pfn, 0) == 7


@pytest.mark.parametrize("backing", ["hugetlbfs", "pfnmap_linear", "pfnmap_fault"])
@pytest.mark.parametrize("behavior", [mad.MADV_DONTNEED, mad.MADV_FREE])
def test_dontneed_and_free_refuse_hugetlb_and_pfnmap(
    mm: Mm, rec: RecordingNotifier, backing: str, behavior: int
) -> None:
    kw: dict[str, Any] = {}
    if backing == "hugetlbfs":
        kw = {"huge_shift": 21, "size": 2 << 20, "shared": True}
    vma = vma_of(mm, backing, **kw)
    rec.calls.clear()
    assert mad.sys_madvise(mm, vma.start, mm.page_size, behavior) == -EINVAL
    assert rec.calls == []
    assert not mm.mmap_sem.is_locked()


def test_a_hole_in_the_range_is_enomem_after_the_vmas_are_done(mm: Mm) -> None:
    ps = mm.page_size
    a = vma_of(mm, "anon")
    b = vma_of(mm, "anon")
    host_write(mm, a.start)
    host_write(mm, b.start)
    assert b.start > a.end  # a guard gap between them
    assert mad.sys_madvise(mm, a.start, b.start + ps - a.start, mad.MADV_DONTNEED) == -ENOMEM
    assert frame(mm, a.start) is None and frame(mm, b.start) is None
    assert mad.sys_madvise(mm, a.start + 1, ps, mad.MADV_DONTNEED) == -EINVAL


def test_dontneed_over_part_of_a_thp_splits_its_pmd_first(mm: Mm, rec: RecordingNotifier) -> None:
    ps = mm.page_size
    vma = vma_of(mm, "anon", size=4 << 20, thp=True)
    haddr = (vma.start + (1 << THP_SHIFT) - 1) & ~((1 << THP_SHIFT) - 1)
    host_write(mm, haddr + 5 * ps, 9)
    head = mm.phys.compound_head(frame(mm, haddr) or 0)
    assert mm.phys.compound_order(head) == THP_SHIFT - mm.page_shift
    rec.calls.clear()
    assert mad.sys_madvise(mm, haddr, ps, mad.MADV_DONTNEED) == 0
    # the pair over the range, with the split's own pair (over 2M) inside it
    two_m = (haddr, haddr + (1 << THP_SHIFT))
    assert rec.calls == [
        ("start", haddr, haddr + ps),
        ("start", *two_m),
        ("end", *two_m),
        ("end", haddr, haddr + ps),
    ]
    assert frame(mm, haddr) is None
    assert frame(mm, haddr + 5 * ps) == head + 5  # a PTE to the subpage now
    assert mm.pgtable.get_huge(haddr) is None
    assert mm.phys.others_refs() == {}
    assert head not in mm.phys.freed  # the other subpages still map it


def test_dontneed_over_a_whole_thp_drops_it(mm: Mm) -> None:
    vma = vma_of(mm, "anon", size=4 << 20, thp=True)
    haddr = (vma.start + (1 << THP_SHIFT) - 1) & ~((1 << THP_SHIFT) - 1)
    host_write(mm, haddr)
    head = frame(mm, haddr)
    assert mad.sys_madvise(mm, haddr, 1 << THP_SHIFT, mad.MADV_DONTNEED) == 0
    assert head in mm.phys.freed
    assert mm.phys.others_refs() == {}


# ---- MADV_FREE -----------------------------------------------------------


def test_free_keeps_pages_mapped_clean_old_and_lazy(mm: Mm, rec: RecordingNotifier) -> None:
    ps = mm.page_size
    vma = vma_of(mm, "anon")
    host_write(mm, vma.start, 5)
    pfn = frame(mm, vma.start)
    assert pfn is not None
    mm.phys.SetPageDirty(pfn)
    rec.calls.clear()
    assert mad.sys_madvise(mm, vma.start, 4 * ps, mad.MADV_FREE) == 0
    assert rec.calls == [
        ("start", vma.start, vma.start + 4 * ps),
        ("end", vma.start, vma.start + 4 * ps),
    ]
    pte = mm.pgtable.get_pte(vma.start) or 0
    assert pte_pfn(pte) == pfn and pte & PTE_PRESENT
    assert not pte & (PTE_YOUNG | PTE_DIRTY)
    assert not mm.phys.PageDirty(pfn)
    assert mm.phys.flags[pfn] & PG_LAZYFREE
    assert mm.phys.read_word(pfn, 0) == 5  # nothing lost until reclaim


def test_reclaim_discards_a_clean_lazy_page_and_keeps_a_redirtied_one(
    mm: Mm, rec: RecordingNotifier
) -> None:
    ps = mm.page_size
    vma = vma_of(mm, "anon")
    host_write(mm, vma.start, 1)
    host_write(mm, vma.start + ps, 2)
    a, b = frame(mm, vma.start), frame(mm, vma.start + ps)
    assert a is not None and b is not None
    assert mad.sys_madvise(mm, vma.start, 2 * ps, mad.MADV_FREE) == 0
    host_write(mm, vma.start + ps, 3)  # a store through the PTE dirties it
    rec.calls.clear()
    mm.mark_swapped(vma.start)
    mm.mark_swapped(vma.start + ps)
    # each in a pair, as try_to_unmap_one
    assert [c[0] for c in rec.calls] == ["start", "end", "start", "end"]
    assert mm.pgtable.get_pte(vma.start) is None and a in mm.phys.freed
    assert frame(mm, vma.start + ps) == b and not mm.phys.flags[b] & PG_LAZYFREE
    assert read_fault(mm, vma.start) == 0 and frame(mm, vma.start) == mm.phys.zero_pfn
    assert mm.phys.others_refs() == {}


def test_free_clears_a_swap_entry_instead_of_reading_it_back(mm: Mm) -> None:
    vma = vma_of(mm, "anon")
    host_write(mm, vma.start, 0x55)
    mm.mark_swapped(vma.start)
    assert mm.pgtable.get_pte(vma.start) == PTE_SWAP
    assert mad.sys_madvise(mm, vma.start, mm.page_size, mad.MADV_FREE) == 0
    assert mm.pgtable.get_pte(vma.start) is None
    assert (vma.start >> mm.page_shift) not in mm.swap_slots
    assert read_fault(mm, vma.start) == 0 and frame(mm, vma.start) == mm.phys.zero_pfn


def test_free_over_part_of_a_thp_splits_the_page(mm: Mm) -> None:
    ps = mm.page_size
    vma = vma_of(mm, "anon", size=4 << 20, thp=True)
    haddr = (vma.start + (1 << THP_SHIFT) - 1) & ~((1 << THP_SHIFT) - 1)
    host_write(mm, haddr)
    head = frame(mm, haddr) or 0
    assert mad.sys_madvise(mm, haddr, ps, mad.MADV_FREE) == 0
    assert mm.phys.compound_order(head) == 0  # split_huge_page
    assert mm.phys.flags[head] & PG_LAZYFREE
    assert not mm.phys.flags[head + 1] & PG_LAZYFREE
    assert mm.phys.others_refs() == {}


def test_free_on_a_thp_someone_holds_leaves_that_pmd(mm: Mm) -> None:
    ps = mm.page_size
    vma = vma_of(mm, "anon", size=4 << 20, thp=True)
    haddr = (vma.start + (1 << THP_SHIFT) - 1) & ~((1 << THP_SHIFT) - 1)
    host_write(mm, haddr)
    head = frame(mm, haddr) or 0
    mm.phys.get_page(head)  # KVM's gup reference
    assert mad.sys_madvise(mm, haddr, ps, mad.MADV_FREE) == 0
    assert mm.phys.compound_order(head) == THP_SHIFT - mm.page_shift  # not split
    assert not mm.phys.flags[head] & PG_LAZYFREE
    mm.phys.put_page(head)
    assert mm.phys.others_refs() == {}


@pytest.mark.parametrize(("backing", "shared"), [("anon", True), ("shmem", False), ("file", False)])
def test_free_refuses_what_is_not_private_anonymous(mm: Mm, backing: str, shared: bool) -> None:
    vma = vma_of(mm, backing, shared=shared)
    assert mad.sys_madvise(mm, vma.start, mm.page_size, mad.MADV_FREE) == -EINVAL


# ---- MADV_REMOVE and punch_hole on shmem ---------------------------------


def test_remove_punches_a_hole_in_shmem(mm: Mm, rec: RecordingNotifier) -> None:
    ps = mm.page_size
    vma = vma_of(mm, "shmem", shared=True)
    host_write(mm, vma.start + ps, 0x66)
    pfn = frame(mm, vma.start + ps)
    rec.calls.clear()
    assert mad.sys_madvise(mm, vma.start, 4 * ps, mad.MADV_REMOVE) == 0
    # unmap_mapping_range: a pair over the vma's part of the hole
    assert rec.calls == [
        ("start", vma.start, vma.start + 4 * ps),
        ("end", vma.start, vma.start + 4 * ps),
    ]
    assert pfn in mm.phys.freed
    assert vma.file is not None and 1 not in vma.file.cache
    assert not mm.mmap_sem.is_locked()
    assert read_fault(mm, vma.start + ps) == 0
    new = frame(mm, vma.start + ps)
    assert new not in (pfn, mm.phys.zero_pfn) and mm.phys.read_word(new or 0, 0) == 0
    assert mm.phys.others_refs() == {}


@pytest.mark.parametrize(
    ("backing", "shared", "prot", "err"),
    [
        ("anon", False, "rw", -EINVAL),
        ("shmem", False, "rw", -mad.EACCES),
        ("shmem", True, "r", -mad.EACCES),
        ("pfnmap_fault", True, "rw", -mad.ENODEV),
    ],
)
def test_remove_refusals(mm: Mm, backing: str, shared: bool, prot: str, err: int) -> None:
    vma = vma_of(mm, backing, shared=shared, prot=prot)
    assert mad.sys_madvise(mm, vma.start, mm.page_size, mad.MADV_REMOVE) == err


def test_punch_hole_unmaps_every_mapping_but_keeps_private_cows(mm: Mm) -> None:
    ps = mm.page_size
    shared = vma_of(mm, "shmem", shared=True)
    f = shared.file
    assert f is not None
    private = mm.mmap(16 * ps, prot="rw", shared=False, file=f, name="private")
    host_write(mm, shared.start, 1)
    host_write(mm, shared.start + ps, 2)
    cache0, cache1 = f.cache[0], f.cache[1]
    assert read_fault(mm, private.start) == 0  # maps the cache page read-only
    host_write(mm, private.start + ps, 3)  # COW: an anonymous copy
    cow = frame(mm, private.start + ps)
    assert cow not in (cache0, cache1)
    assert mad.punch_hole(mm, shared, 0, 2 * ps) == 0
    assert frame(mm, shared.start) is None and frame(mm, private.start) is None
    assert frame(mm, private.start + ps) == cow  # even_cows = 0
    assert cache0 in mm.phys.freed and cache1 in mm.phys.freed
    assert f.cache == {}
    assert mm.phys.others_refs() == {}


def test_punch_hole_on_a_page_kvm_holds_frees_it_only_at_the_put(mm: Mm) -> None:
    vma = vma_of(mm, "shmem", shared=True)
    host_write(mm, vma.start)
    pfn = frame(mm, vma.start) or 0
    mm.phys.get_page(pfn)  # a reference KVM took through gup
    assert mad.punch_hole(mm, vma, 0, mm.page_size) == 0
    assert pfn not in mm.phys.freed and mm.phys.page_count(pfn) == 1
    assert mm.phys.others_refs() == {pfn: 1}
    mm.phys.put_page(pfn)
    assert pfn in mm.phys.freed and mm.phys.others_refs() == {}
    assert not mm.phys.anomalies


def test_punch_hole_part_of_a_page_zeroes_it_in_place(mm: Mm, rec: RecordingNotifier) -> None:
    ps = mm.page_size
    vma = vma_of(mm, "shmem", shared=True)
    host_write(mm, vma.start, 0x11)
    pfn = frame(mm, vma.start) or 0
    mm.phys.write_word(pfn, ps - 8, 0x22)
    rec.calls.clear()
    # the second half of the page: no whole page, no unmap, no notifier
    assert mad.punch_hole(mm, vma, ps // 2, ps // 2) == 0
    assert rec.calls == []
    assert frame(mm, vma.start) == pfn
    assert mm.phys.read_word(pfn, 0) == 0x11 and mm.phys.read_word(pfn, ps - 8) == 0


def test_punch_hole_refusals(mm: Mm) -> None:
    anon = vma_of(mm, "anon")
    assert mad.punch_hole(mm, anon, 0, mm.page_size) == -mad.EOPNOTSUPP
    ro = vma_of(mm, "file", prot="r")
    assert mad.punch_hole(mm, ro, 0, mm.page_size) == -mad.EBADF
    dev = vma_of(mm, "mixedmap", shared=True)
    assert mad.punch_hole(mm, dev, 0, mm.page_size) == -mad.ENODEV
    disk = vma_of(mm, "file", shared=True)
    assert mad.punch_hole(mm, disk, 0, mm.page_size) == mad.NOT_MODELLED


# ---- hugetlbfs -------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False])
def test_hugetlbfs_hole_rounds_inward_then_frees_whole_pages(
    mm: Mm, rec: RecordingNotifier, shared: bool
) -> None:
    huge = 1 << 21
    vma = vma_of(mm, "hugetlbfs", shared=shared, size=4 * huge, huge_shift=21)
    host_write(mm, vma.start + huge + 0x1000, 0x33)
    page = mm.phys.compound_head(frame(mm, vma.start + huge) or 0)
    rec.calls.clear()
    assert mad.punch_hole(mm, vma, huge, huge // 2) == 0  # half a huge page: nothing
    assert rec.calls == [] and page not in mm.phys.freed
    assert mad.punch_hole(mm, vma, huge // 2, 2 * huge) == 0  # rounds to [huge, 2*huge)
    assert ("start", vma.start + huge, vma.start + 2 * huge) in rec.calls
    assert page in mm.phys.freed
    assert vma.file is not None and vma.file.cache == {}
    assert mm.phys.others_refs() == {}
    host_write(mm, vma.start + huge)
    assert mm.phys.read_word(frame(mm, vma.start + huge + 0x1000) or 0, 0) == 0


def test_hugetlbfs_empty_pair_on_the_vma_at_the_hole_end(mm: Mm, rec: RecordingNotifier) -> None:
    # v4.16's interval search takes the hole's end as inclusive (kernel-notes §M.4)
    huge = 1 << 21
    left = vma_of(mm, "hugetlbfs", shared=True, size=2 * huge, huge_shift=21)
    f = left.file
    assert f is not None
    right = mm.mmap(
        2 * huge, prot="rw", shared=True, file=f, pgoff=(2 * huge) >> mm.page_shift, huge_shift=21
    )
    rec.calls.clear()
    assert mad.punch_hole(mm, left, 0, 2 * huge) == 0
    assert rec.calls == [
        ("start", left.start, left.end),
        ("end", left.start, left.end),
        ("start", right.start, right.start),
        ("end", right.start, right.start),
    ]


# ---- the loader's refusals are the host's --------------------------------

BACKINGS = ("anon", "shmem", "file", "hugetlbfs", "pfnmap_linear", "pfnmap_fault", "mixedmap")


@pytest.mark.parametrize(
    ("backing", "shared", "prot"),
    list(itertools.product(BACKINGS, (False, True), ("r", "rw", "none"))),
)
def test_the_loaders_static_refusals_agree_with_the_host_model(
    mm: Mm, backing: str, shared: bool, prot: str
) -> None:
    """Brute force: for every backing, sharing and protection, the errno the
    loader predicts (kvmsim.scenario.discard) is the one the host model's
    step returns, and None exactly when it succeeds."""
    kw: dict[str, Any] = {"huge_shift": 21, "size": 2 << 20} if backing == "hugetlbfs" else {}
    try:
        vma = vma_of(mm, backing, shared=shared, prot=prot, **kw)
    except PermissionError:
        return  # a shared writable mapping of a read-only file: no such vma
    names = {**mad.ERRNO_NAMES, -mad.NOT_MODELLED: discard.NOT_MODELLED}
    for advice, behavior in mad.ADVICE.items():
        want = discard.refusal("madvise", advice, backing, shared, prot)
        got = mad.sys_madvise(mm, vma.start, mm.page_size, behavior)
        assert (want is None) == (got == 0), (advice, want, got)
        if want is not None:
            assert want[0] == names[-got], (advice, want, got)
    want = discard.refusal("punch_hole", None, backing, shared, prot)
    got = mad.punch_hole(mm, vma, 0, mm.page_size)
    assert (want is None) == (got == 0), ("punch_hole", want, got)
    if want is not None:
        assert want[0] == names[-got]
