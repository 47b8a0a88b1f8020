"""Transparent huge pages in the shmem page cache (kernel-notes §S): the
expectations come from mm/shmem.c, mm/memory.c and mm/huge_memory.c of
v4.16 (and 5.7.14 / 6.13.7 where they differ), not from the model's output."""

from __future__ import annotations

from typing import Any

import pytest

from kvmsim.cmodel import EAGAIN, EBUSY
from kvmsim.host import Mm, RecordingNotifier, host_read, host_write, map_backing
from kvmsim.host import madvise as mad
from kvmsim.host.constants import PTE_PRESENT, PTE_WRITE, THP_SHIFT, VM_HUGEPAGE
from kvmsim.host.events import memory_failure, migrate_page, split_thp
from kvmsim.host.pte import pte_pfn
from kvmsim.host.vma import Vma

PMD = 1 << THP_SHIFT
PUNCH = mad.FALLOC_FL_PUNCH_HOLE | mad.FALLOC_FL_KEEP_SIZE


def shmem(mm: Mm, *, size: int = 4 << 20, shared: bool = True, **kw: Any) -> Vma:
    return map_backing(
        mm, name="ram", size=size, backing="shmem", prot="rw", shared=shared, huge_shift=21, **kw
    )


def nr(mm: Mm) -> int:
    return 1 << (THP_SHIFT - mm.page_shift)


def leaf(mm: Mm, hva: int) -> tuple[int | None, int]:
    """(pfn of the entry mapping hva, its shift) or (None, 0)."""
    e, shift = mm.pgtable.find_linux_pte(hva)
    if e is None or not e & PTE_PRESENT:
        return None, 0
    return pte_pfn(e), shift


def test_a_write_fault_allocates_a_compound_page_cache_page_mapped_by_a_pmd(mm: Mm) -> None:
    vma = shmem(mm)
    hva = vma.start + PMD + 3 * mm.page_size
    host_write(mm, hva, 0x11)
    head, shift = leaf(mm, hva)
    assert shift == THP_SHIFT and head is not None
    phys = mm.phys
    # shmem_alloc_hugepage: PMD order, PageTransCompound, not PageAnon
    assert phys.compound_order(head) == THP_SHIFT - mm.page_shift
    assert phys.PageTransHuge(head) and not phys.PageAnon(head)
    # shmem_add_to_page_cache: every index of the 2M range, subpage by subpage
    base = PMD >> mm.page_shift
    f = vma.file
    assert f is not None
    assert [f.cache[base + i] for i in range(nr(mm))] == [head + i for i in range(nr(mm))]
    # one reference per cache entry, one for the PMD (do_set_pmd keeps the fault's)
    assert phys.page_count(head) == nr(mm) + 1
    assert phys.others_refs() == {}
    # the shared writable mapping: the PMD is writable
    assert (mm.pgtable.find_linux_pte(hva)[0] or 0) & PTE_WRITE


def test_a_read_elsewhere_in_the_thp_reuses_the_pmd(mm: Mm) -> None:
    vma = shmem(mm)
    host_write(mm, vma.start + 8, 0x22)
    head, _ = leaf(mm, vma.start)
    _, value = host_read(mm, vma.start + PMD - 8)
    assert value == 0 and leaf(mm, vma.start + PMD - 8) == (head, THP_SHIFT)
    assert mm.phys.page_count(head or 0) == nr(mm) + 1  # no second mapping reference


def test_a_cached_page_in_the_2m_range_means_small_pages(mm: Mm) -> None:
    # shmem_alloc_hugepage's gang lookup finds an entry: alloc_nohuge
    vma = map_backing(mm, name="a", size=4 << 20, backing="shmem", prot="rw", shared=True)
    host_write(mm, vma.start, 1)  # a small page at index 0, no VM_HUGEPAGE yet
    vma.flags |= VM_HUGEPAGE  # madvise(MADV_HUGEPAGE) afterwards
    host_write(mm, vma.start + mm.page_size, 2)
    pfn, shift = leaf(mm, vma.start + mm.page_size)
    assert shift == 0 and not mm.phys.PageCompound(pfn or 0)


@pytest.mark.parametrize(("linux", "allocated"), [((4, 16), True), ((6, 13), False)])
def test_a_vma_that_cannot_map_it_by_a_pmd(mm: Mm, linux: tuple[int, int], allocated: bool) -> None:
    # pgoff 1: vm_start and the file offset differ modulo 2M, so do_set_pmd
    # falls back to a PTE (transhuge_vma_suitable); v4.16 still allocates the
    # THP, v6.13's shmem_suitable_orders does not
    mm.linux = linux
    vma = shmem(mm, pgoff=1)
    host_write(mm, vma.start + 4 * mm.page_size, 5)
    pfn, shift = leaf(mm, vma.start + 4 * mm.page_size)
    assert shift == 0 and pfn is not None
    assert mm.phys.PageTransCompound(pfn) is allocated
    if allocated:
        head = mm.phys.compound_head(pfn)
        assert pfn == head + 5  # file index 5 of the THP at index 0
        assert mm.phys.page_count(head) == nr(mm) + 1  # the PTE's reference on the head


def test_split_of_a_file_pmd_zaps_it_and_keeps_the_page_whole(
    mm: Mm, rec: RecordingNotifier
) -> None:
    vma = shmem(mm)
    host_write(mm, vma.start, 7)
    head, _ = leaf(mm, vma.start)
    rec.calls.clear()
    assert split_thp(mm, vma.start + mm.page_size)
    # __split_huge_pmd_locked on a !vma_is_anonymous vma: no PTEs, just gone
    assert rec.calls == [("start", vma.start, vma.start + PMD), ("end", vma.start, vma.start + PMD)]
    assert leaf(mm, vma.start) == (None, 0) and not mm.pgtable.ptes_in(vma.start, vma.start + PMD)
    assert mm.phys.compound_order(head or 0) == THP_SHIFT - mm.page_shift
    assert mm.phys.page_count(head or 0) == nr(mm)  # the cache's only
    assert host_read(mm, vma.start)[1] == 7 and leaf(mm, vma.start) == (head, THP_SHIFT)


def test_dontneed_over_part_zaps_the_pmd_and_the_cache_keeps_the_page(
    mm: Mm, rec: RecordingNotifier
) -> None:
    vma = shmem(mm)
    host_write(mm, vma.start + PMD + 16, 0x66)
    head, _ = leaf(mm, vma.start + PMD)
    rec.calls.clear()
    ps = mm.page_size
    assert mad.sys_madvise(mm, vma.start + PMD, 4 * ps, mad.MADV_DONTNEED) == 0
    two_m = (vma.start + PMD, vma.start + 2 * PMD)
    assert ("start", *two_m) in rec.calls and ("end", *two_m) in rec.calls
    assert not mm.pgtable.huge_in(*two_m) and not mm.pgtable.ptes_in(*two_m)
    # the re-touch finds the same compound page and maps it by a PMD again
    assert host_read(mm, vma.start + PMD + 16)[1] == 0x66
    assert leaf(mm, vma.start + PMD) == (head, THP_SHIFT)


def test_a_private_write_over_a_read_only_pmd_copies_one_subpage(mm: Mm) -> None:
    vma = shmem(mm, shared=False)
    hva = vma.start + 2 * mm.page_size
    assert host_read(mm, hva)[1] == 0
    head, shift = leaf(mm, hva)
    assert shift == THP_SHIFT and not (mm.pgtable.find_linux_pte(hva)[0] or 0) & PTE_WRITE
    host_write(mm, hva, 9)
    # wp_huge_pmd: no ->huge_fault, so __split_huge_pmd (a zap) and the PTE
    # level's do_cow_fault: an anonymous 4K copy; the cache THP untouched
    pfn, shift = leaf(mm, hva)
    assert shift == 0 and pfn is not None and mm.phys.PageAnon(pfn)
    assert mm.phys.compound_order(head or 0) == THP_SHIFT - mm.page_shift
    assert mm.phys.read_word(head + 2 if head is not None else 0, 0) == 0


def _punch(mm: Mm, vma: Vma, offset: int, length: int) -> int:
    assert vma.file is not None
    return mad.vfs_fallocate(mm, vma.file, PUNCH, offset, length)


def test_v4_16_a_partial_hole_zeroes_subpages_and_keeps_the_thp(
    mm: Mm, rec: RecordingNotifier
) -> None:
    ps = mm.page_size
    vma = shmem(mm)
    keep = vma.start + 20 * ps
    host_write(mm, vma.start + 4 * ps, 0x44)
    host_write(mm, keep, 0x55)
    head, _ = leaf(mm, vma.start)
    rec.calls.clear()
    assert _punch(mm, vma, 4 * ps, 2 * ps) == 0
    # unmap_mapping_range's pair over the hole, the PMD split's over 2M
    assert ("start", vma.start, vma.start + PMD) in rec.calls
    assert leaf(mm, vma.start) == (None, 0)
    # shmem_undo_range: clear_highpage on the subpages, the THP stays cached
    assert mm.phys.compound_order(head or 0) == THP_SHIFT - mm.page_shift
    assert host_read(mm, vma.start + 4 * ps)[1] == 0
    assert host_read(mm, keep)[1] == 0x55
    assert leaf(mm, vma.start + 4 * ps) == (head, THP_SHIFT)


def test_v5_7_a_partial_hole_splits_the_thp_and_frees_the_subpages_in_it(mm: Mm) -> None:
    mm.linux = (5, 7)
    ps = mm.page_size
    vma = shmem(mm)
    keep = vma.start + 20 * ps
    host_write(mm, vma.start + 4 * ps, 0x44)
    host_write(mm, keep, 0x55)
    head, _ = leaf(mm, vma.start)
    assert head is not None
    assert _punch(mm, vma, 4 * ps, 2 * ps) == 0
    phys = mm.phys
    # shmem_punch_compound → split_huge_page: order-0 pages now
    assert not phys.PageCompound(head) and not phys.PageTransCompound(head + 4)
    f = vma.file
    assert f is not None
    assert 4 not in f.cache and 5 not in f.cache and f.cache[20] == head + 20
    assert {head + 4, head + 5} <= phys.freed
    assert phys.page_count(head + 20) == 1  # the cache's; nothing maps it now
    assert host_read(mm, keep)[1] == 0x55 and leaf(mm, keep) == (head + 20, 0)
    assert host_read(mm, vma.start + 4 * ps)[1] == 0
    assert leaf(mm, vma.start + 4 * ps)[0] not in (head + 4, None)
    assert phys.others_refs() == {}


def test_a_hole_over_the_whole_thp_frees_it(mm: Mm) -> None:
    vma = shmem(mm)
    host_write(mm, vma.start + PMD, 1)
    head, _ = leaf(mm, vma.start + PMD)
    assert _punch(mm, vma, PMD, PMD) == 0
    assert head in mm.phys.freed and mm.phys.page_count(head or 0) == 0
    f = vma.file
    assert f is not None and not any(
        PMD >> mm.page_shift <= i < 2 * PMD >> mm.page_shift for i in f.cache
    )


def test_migration_and_poison_refuse_a_shmem_thp(mm: Mm) -> None:
    vma = shmem(mm)
    host_write(mm, vma.start, 1)
    head, _ = leaf(mm, vma.start)
    # v4.16 try_to_unmap_one sets a PMD migration entry only for PageAnon
    assert migrate_page(mm, vma.start) == -EAGAIN
    assert leaf(mm, vma.start) == (head, THP_SHIFT)
    # memory_failure: "non anonymous thp", -EBUSY
    assert memory_failure(mm, (head or 0) + 1) == -EBUSY
    assert not mm.phys.PageHWPoison((head or 0) + 1)
