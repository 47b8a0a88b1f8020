"""Mm, rwsem, notifiers, physmem accounting, host events."""

from __future__ import annotations

import pytest

from kvmsim.cmodel import EAGAIN, KernelOops
from kvmsim.host import (
    Deadlock,
    Mm,
    PhysMem,
    RecordingNotifier,
    RwSem,
    __get_user_pages_fast,
    get_user_pages_fast,
    host_write,
    map_backing,
    migrate_page,
    split_thp,
)
from kvmsim.host.constants import PG_HWPOISON, PTE_HWPOISON, PTE_WRITE
from kvmsim.host.events import memory_failure
from kvmsim.host.pte import pte_pfn, pte_write


def test_find_vma_semantics(mm: Mm) -> None:
    a = mm.mmap(mm.page_size, prot="rw", shared=False)
    b = mm.mmap(mm.page_size, prot="rw", shared=False)
    assert mm.find_vma(a.start) is a
    assert mm.find_vma(a.end) is b  # may start above addr
    assert mm.find_vma_intersection(a.end, a.end + 1) is None
    assert mm.find_extend_vma(a.end) is None
    assert mm.find_vma(b.end) is None
    assert b.start > a.end  # never touching


def test_munmap_one_pair_over_whole_range(mm: Mm, rec: RecordingNotifier) -> None:
    phys = mm.phys
    ps = mm.page_size
    vma = mm.mmap(8 * ps, prot="rw", shared=False)
    for i in range(8):
        host_write(mm, vma.start + i * ps)
    rec.calls.clear()
    pfn2 = pte_pfn(mm.pgtable.get_pte(vma.start + 2 * ps) or 0)
    assert mm.munmap(vma.start + 2 * ps, 4 * ps) == 0
    assert rec.calls == [
        ("start", vma.start + 2 * ps, vma.start + 6 * ps),
        ("end", vma.start + 2 * ps, vma.start + 6 * ps),
    ]
    assert pfn2 in phys.freed
    assert len(mm.vmas) == 2
    assert mm.find_vma(vma.start + 2 * ps) is not None
    right = mm.find_vma(vma.start + 2 * ps)
    assert right is not None and right.start == vma.start + 6 * ps
    assert not mm.mmap_sem.is_locked()
    assert phys.others_refs() == {}
    # munmap over two vmas: still one pair
    rec.calls.clear()
    assert mm.munmap(vma.start, 8 * ps) == 0
    assert [c[0] for c in rec.calls] == ["start", "end"]
    assert mm.vmas == []


def test_munmap_under_leaked_read_hold_deadlocks(mm: Mm) -> None:
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    mm.mmap_sem.down_read("vcpu0")  # leaked
    with pytest.raises(Deadlock) as exc:
        mm.munmap(vma.start, mm.page_size)
    assert exc.value.holders == {"vcpu0": "read"}
    assert exc.value.task == "qemu" and exc.value.lock == "mmap_sem"


def test_rwsem_rules() -> None:
    s = RwSem("mmap_sem")
    s.down_read("a")
    s.down_read("b")
    with pytest.raises(Deadlock):
        s.down_write("c")
    with pytest.raises(KernelOops):
        s.up_read("c")
    s.up_read("a")
    s.up_read("b")
    s.down_write("c")
    assert s.held_by() == {"c": "write"} and s.writer == "c"
    with pytest.raises(Deadlock):
        s.down_read("a")
    with pytest.raises(KernelOops):
        s.up_write("a")
    s.up_write("c")
    assert s.held_by() == {}


def test_mprotect_notifies_only_if_mapped_and_clears_write(mm: Mm, rec: RecordingNotifier) -> None:
    ps = mm.page_size
    empty = mm.mmap(4 * ps, prot="rw", shared=False)
    assert mm.mprotect(empty.start, 4 * ps, "r") == 0
    assert rec.calls == []
    vma = mm.mmap(4 * ps, prot="rw", shared=False)
    host_write(mm, vma.start + ps)
    rec.calls.clear()
    assert mm.mprotect(vma.start, 4 * ps, "r") == 0
    assert [c[0] for c in rec.calls] == ["start", "end"]
    pte = mm.pgtable.get_pte(vma.start + ps)
    assert pte is not None and not pte_write(pte)
    # writing again needs the write permission back, then a write fault reuses the page
    assert mm.mprotect(vma.start, 4 * ps, "rw") == 0
    pte2 = mm.pgtable.get_pte(vma.start + ps)
    assert pte2 is not None and not pte_write(pte2)  # private: write comes from the fault
    host_write(mm, vma.start + ps)
    pte3 = mm.pgtable.get_pte(vma.start + ps)
    assert pte3 is not None and pte3 & PTE_WRITE and pte_pfn(pte3) == pte_pfn(pte)


def test_shared_file_write_notify(mm: Mm) -> None:
    vma = map_backing(
        mm, name="f", size=mm.page_size, backing="file", prot="rw", shared=True, populate=True
    )
    pte = mm.pgtable.get_pte(vma.start)
    assert pte is not None and not pte_write(pte)  # read-only until a write fault
    host_write(mm, vma.start)
    pte2 = mm.pgtable.get_pte(vma.start)
    assert pte2 is not None and pte_write(pte2) and pte_pfn(pte2) == pte_pfn(pte)
    assert mm.phys.PageDirty(pte_pfn(pte))
    shm = map_backing(
        mm, name="s", size=mm.page_size, backing="shmem", prot="rw", shared=True, populate=True
    )
    spte = mm.pgtable.get_pte(shm.start)
    assert spte is not None and pte_write(spte)


def test_private_file_write_cows(mm: Mm, rec: RecordingNotifier) -> None:
    vma = map_backing(mm, name="f", size=mm.page_size, backing="file", prot="rw", shared=False)
    assert vma.file is not None and vma.file.readonly
    pages: list[int] = []
    assert get_user_pages_fast(mm, vma.start, 1, 0, pages) == 1
    cache_pfn = vma.file.cache[0]
    assert pages == [cache_pfn]
    mm.phys.put_page(cache_pfn)
    host_write(mm, vma.start)
    pte = mm.pgtable.get_pte(vma.start)
    assert pte is not None and pte_pfn(pte) != cache_pfn and pte_write(pte)
    assert [c[0] for c in rec.calls] == ["start", "change_pte", "end"]
    assert mm.phys.page_count(cache_pfn) == 1  # the page cache's own reference
    assert mm.phys.others_refs() == {}


def test_put_page_below_zero_is_recorded(phys: PhysMem) -> None:
    pfn = phys.alloc_pages(0, owner="anon")
    phys.host_put(pfn)
    assert pfn in phys.freed
    assert phys.anomalies == []
    phys.put_page(pfn)
    assert [a.kind for a in phys.anomalies] == ["refcount_underflow"]
    assert phys.others_refs() == {pfn: -1}


def test_unrefcounted_tail_get_put_frees_owned_page(phys: PhysMem) -> None:
    base = phys.alloc_unrefcounted(4, owner="driver:x")
    tail = base + 2
    assert phys.page_count(base) == 1 and phys.page_count(tail) == 0
    assert phys.compound_head(tail) == tail
    assert not phys.get_page_unless_zero(tail)
    phys.get_page(tail)  # kvm_get_pfn: 0 -> 1
    assert [a.kind for a in phys.anomalies] == ["get_page_zero"]
    phys.put_page(tail)  # 1 -> 0: freed while the driver owns it
    kinds = [a.kind for a in phys.clear_anomalies()]
    assert kinds == ["get_page_zero", "refcount_underflow"]
    assert tail in phys.freed
    assert phys.others_refs() == {}


def test_others_refs_balanced_and_unbalanced(mm: Mm) -> None:
    phys = mm.phys
    vma = mm.mmap(2 * mm.page_size, prot="rw", shared=False)
    pages: list[int] = []
    assert get_user_pages_fast(mm, vma.start, 1, 1, pages) == 1
    phys.put_page(pages[0])
    assert phys.others_refs() == {}
    assert get_user_pages_fast(mm, vma.start, 1, 1, pages) == 1
    assert phys.others_refs() == {pages[0]: 1}


def test_zero_and_kernel_pages_baseline(phys: PhysMem) -> None:
    assert phys.PageReserved(phys.zero_pfn) and phys.is_zero_pfn(phys.zero_pfn)
    assert phys.pfn_valid(phys.zero_pfn) and phys.page_count(phys.zero_pfn) == 1
    assert phys.others_refs() == {}
    mmio = phys.alloc_mmio(2)
    assert not phys.pfn_valid(mmio) and mmio >= phys.ram_pages
    head = phys.alloc_pages(9, owner="thp", kind="thp")
    assert head % 512 == 0 and phys.compound_head(head + 511) == head
    assert phys.PageTransCompound(head + 3) and not phys.PageHuge(head + 3)


def test_split_thp_pair_over_2m(mm: Mm, rec: RecordingNotifier) -> None:
    phys = mm.phys
    vma = map_backing(
        mm, name="thp", size=4 << 20, backing="anon", prot="rw", shared=False, thp=True
    )
    hva = vma.start + (2 << 20) + 5 * mm.page_size
    host_write(mm, hva)
    e, shift = mm.pgtable.find_linux_pte(hva)
    assert shift == 21 and e is not None
    head = pte_pfn(e)
    rec.calls.clear()
    assert split_thp(mm, hva)
    base = vma.start + (2 << 20)
    assert rec.calls == [("start", base, base + (2 << 20)), ("end", base, base + (2 << 20))]
    pte, shift2 = mm.pgtable.find_linux_pte(hva)
    assert shift2 == 0 and pte is not None and pte_pfn(pte) == head + 5
    n = 1 << (21 - mm.page_shift)
    assert phys.page_count(head) == n and phys.others_refs() == {}
    pages: list[int] = []
    assert __get_user_pages_fast(mm, hva, 1, 1, pages) == 1 and pages == [head + 5]
    phys.put_page(head + 5)
    assert mm.munmap(vma.start, 4 << 20) == 0
    assert head in phys.freed and phys.others_refs() == {}


def test_memory_failure_unmaps_with_pair_and_hwpoison_entry(mm: Mm, rec: RecordingNotifier) -> None:
    phys = mm.phys
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    host_write(mm, vma.start)
    pfn = pte_pfn(mm.pgtable.get_pte(vma.start) or 0)
    rec.calls.clear()
    assert memory_failure(mm, pfn) == 0
    assert [c[0] for c in rec.calls] == ["start", "end"]
    entry = mm.pgtable.get_pte(vma.start)
    assert entry is not None and entry & PTE_HWPOISON and phys.PageHWPoison(pfn)
    assert phys.flags[pfn] & PG_HWPOISON
    assert host_write(mm, vma.start) & 0x0010  # VM_FAULT_HWPOISON


def test_memory_failure_hugetlb(mm: Mm) -> None:
    phys = mm.phys
    vma = map_backing(
        mm,
        name="h",
        size=2 << 20,
        backing="hugetlbfs",
        prot="rw",
        shared=False,
        huge_shift=21,
        populate=True,
    )
    e, _ = mm.pgtable.find_linux_pte(vma.start)
    assert e is not None
    head = pte_pfn(e)
    assert memory_failure(mm, head + 7) == 0
    assert phys.PageHWPoison(head + 3)
    e2, shift = mm.pgtable.find_linux_pte(vma.start)
    assert e2 is not None and e2 & PTE_HWPOISON and shift == 21


def test_migrate_page(mm: Mm, rec: RecordingNotifier) -> None:
    phys = mm.phys
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    host_write(mm, vma.start)
    old = pte_pfn(mm.pgtable.get_pte(vma.start) or 0)
    rec.calls.clear()
    assert migrate_page(mm, vma.start) == 0
    new_pte = mm.pgtable.get_pte(vma.start)
    assert new_pte is not None and pte_pfn(new_pte) != old and pte_write(new_pte)
    assert [c[0] for c in rec.calls] == ["start", "end"]  # no notifier for the new PTE
    assert old in phys.freed and phys.others_refs() == {}
    # With someone holding a reference, the kernel's migration fails.
    pages: list[int] = []
    assert __get_user_pages_fast(mm, vma.start, 1, 1, pages) == 1
    assert migrate_page(mm, vma.start) == -EAGAIN
    assert mm.pgtable.get_pte(vma.start) == new_pte
    # ... unless asked to move it anyway: the old frame lingers until put.
    assert migrate_page(mm, vma.start, strict_refcount=False) == 0
    assert pages[0] not in phys.freed
    phys.put_page(pages[0])
    assert pages[0] in phys.freed and phys.others_refs() == {}


def test_populate_and_hugetlb_free_on_munmap(mm: Mm) -> None:
    phys = mm.phys
    vma = map_backing(
        mm,
        name="h",
        size=4 << 20,
        backing="hugetlbfs",
        prot="rw",
        shared=False,
        huge_shift=21,
        populate=True,
    )
    heads = [pte_pfn(e) for _, _, e in mm.pgtable.huge_in(vma.start, vma.end)]
    assert len(heads) == 2
    assert mm.munmap(vma.start, 4 << 20) == 0
    assert all(h in phys.freed for h in heads)
    anon = map_backing(
        mm, name="a", size=4 * mm.page_size, backing="anon", prot="rw", shared=False, populate=True
    )
    assert len(mm.pgtable.ptes_in(anon.start, anon.end)) == 4
    assert all(pte_write(p) for _, p in mm.pgtable.ptes_in(anon.start, anon.end))
    assert not mm.mmap_sem.is_locked()


def test_partial_munmap_of_thp_splits_first(mm: Mm, rec: RecordingNotifier) -> None:
    vma = map_backing(
        mm, name="thp", size=2 << 20, backing="anon", prot="rw", shared=False, huge_shift=21
    )
    host_write(mm, vma.start)
    e, shift = mm.pgtable.find_linux_pte(vma.start)
    assert shift == 21 and e is not None
    rec.calls.clear()
    ps = mm.page_size
    assert mm.munmap(vma.start + 4 * ps, 4 * ps) == 0
    assert rec.calls == [
        ("start", vma.start, vma.start + (2 << 20)),  # __split_huge_pmd
        ("end", vma.start, vma.start + (2 << 20)),
        ("start", vma.start + 4 * ps, vma.start + 8 * ps),  # unmap_region
        ("end", vma.start + 4 * ps, vma.start + 8 * ps),
    ]
    assert mm.pgtable.get_pte(vma.start + 3 * ps) is not None
    assert mm.pgtable.get_pte(vma.start + 4 * ps) is None
    assert mm.phys.others_refs() == {}


def test_unmap_mapping_range_even_cows(mm: Mm) -> None:
    from kvmsim.host import unmap_mapping_range

    vma = map_backing(
        mm, name="f", size=2 * mm.page_size, backing="file", prot="rw", shared=False, populate=True
    )
    assert vma.file is not None
    cache = dict(vma.file.cache)
    p0 = mm.pgtable.get_pte(vma.start)
    assert p0 is not None and pte_pfn(p0) not in cache.values()  # populate COWed page 0
    unmap_mapping_range(vma.file, 0, 0, False)
    assert mm.pgtable.get_pte(vma.start) == p0  # the COWed anon page stays
    unmap_mapping_range(vma.file, 0, 0, True)
    assert mm.pgtable.get_pte(vma.start) is None
    assert mm.phys.others_refs() == {}


def test_exit_mmap_release_then_one_pair(mm: Mm, rec: RecordingNotifier) -> None:
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    host_write(mm, vma.start)
    pfn = pte_pfn(mm.pgtable.get_pte(vma.start) or 0)
    rec.calls.clear()
    mm.exit_mmap()
    assert rec.calls == [("release",), ("start", 0, (1 << 64) - 1), ("end", 0, (1 << 64) - 1)]
    assert pfn in mm.phys.freed and mm.vmas == []


def test_populate_skips_pfnmap_and_handles_retry(mm: Mm) -> None:
    lazy = map_backing(
        mm,
        name="d",
        size=2 * mm.page_size,
        backing="pfnmap_fault",
        prot="rw",
        shared=True,
        populate=True,
    )
    assert mm.pgtable.ptes_in(lazy.start, lazy.end) == []
    f = map_backing(
        mm,
        name="f",
        size=2 * mm.page_size,
        backing="shmem",
        prot="rw",
        shared=True,
        populate=True,
        fault_retry=2,
    )
    assert len(mm.pgtable.ptes_in(f.start, f.end)) == 2
    assert not mm.mmap_sem.is_locked()


def test_mprotect_partial_thp_splits(mm: Mm) -> None:
    vma = map_backing(
        mm, name="thp", size=2 << 20, backing="anon", prot="rw", shared=False, huge_shift=21
    )
    host_write(mm, vma.start)
    ps = mm.page_size
    assert mm.mprotect(vma.start, ps, "r") == 0
    p0, s0 = mm.pgtable.find_linux_pte(vma.start)
    p1, s1 = mm.pgtable.find_linux_pte(vma.start + ps)
    assert s0 == 0 and s1 == 0 and p0 is not None and p1 is not None
    assert not pte_write(p0) and pte_write(p1)
    assert len(mm.vmas) == 2
