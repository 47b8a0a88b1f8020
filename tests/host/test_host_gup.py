"""gup family: return conventions and references (kernel-semantics F.1-F.3, L.1)."""

from __future__ import annotations

from kvmsim.cmodel import EFAULT, EHWPOISON
from kvmsim.host import (
    Mm,
    RecordingNotifier,
    __get_user_pages_fast,
    get_user_pages,
    get_user_pages_fast,
    get_user_pages_unlocked,
    handle_mm_fault,
    map_backing,
    memory_failure,
    vm_insert_page,
)
from kvmsim.host.constants import (
    FAULT_FLAG_WRITE,
    FOLL_HWPOISON,
    FOLL_NOWAIT,
    FOLL_WRITE,
    PTE_SPECIAL,
    PTE_WRITE,
    VM_IO,
    VM_MIXEDMAP,
)
from kvmsim.host.pte import pte_pfn, pte_special, pte_write


def _read_fault(mm: Mm, hva: int, write: bool = False) -> int:
    vma = mm.find_vma(hva)
    assert vma is not None
    mm.mmap_sem.down_read(mm.current)
    try:
        return handle_mm_fault(mm, vma, hva, FAULT_FLAG_WRITE if write else 0)
    finally:
        mm.mmap_sem.up_read(mm.current)


def test_gup_fast_absent_returns_zero_but_gup_fast_returns_errno(mm: Mm) -> None:
    vma = mm.mmap(4 * mm.page_size, prot="rw", shared=False)
    pages: list[int] = []
    # Never negative, even with no vma at all.
    assert __get_user_pages_fast(mm, vma.start, 1, 1, pages) == 0
    assert __get_user_pages_fast(mm, 0x1000, 1, 0, pages) == 0
    assert pages == []
    # Nothing pinned by get_user_pages_fast: a negative errno, never 0.
    assert get_user_pages_fast(mm, 0x1000, 1, 0, pages) == -EFAULT
    assert not mm.mmap_sem.is_locked()


def test_gup_fast_partial_counts_what_was_pinned(mm: Mm) -> None:
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    _read_fault(mm, vma.start, write=True)
    pages: list[int] = []
    # The second page is past the vma (guard gap): slow path fails, result is 1.
    assert get_user_pages_fast(mm, vma.start, 2, 1, pages) == 1
    assert len(pages) == 1
    mm.phys.put_page(pages[0])
    assert mm.phys.others_refs() == {}


def test_gup_on_pfnmap_fails_efault(mm: Mm) -> None:
    vma = map_backing(
        mm,
        name="bar",
        size=2 * mm.page_size,
        backing="pfnmap_linear",
        prot="rw",
        shared=True,
        pfn_kind="ram",
    )
    pages: list[int] = []
    assert __get_user_pages_fast(mm, vma.start, 1, 0, pages) == 0  # special PTE
    mm.mmap_sem.down_read("qemu")
    assert get_user_pages(mm, vma.start, 1, 0, pages) == -EFAULT
    mm.mmap_sem.up_read("qemu")
    assert get_user_pages_fast(mm, vma.start, 1, 1, pages) == -EFAULT
    assert mm.phys.others_refs() == {}


def test_gup_fast_pins_normal_pte_in_io_mixedmap_vma(mm: Mm) -> None:
    vma = mm.mmap(
        mm.page_size, prot="rw", shared=True, extra_flags=VM_IO | VM_MIXEDMAP, ops=None, name="dev"
    )
    page = mm.phys.alloc_pages(0, owner="driver:dev", kind="driver")
    assert vm_insert_page(vma, vma.start, page) == 0
    pte = mm.pgtable.get_pte(vma.start)
    assert pte is not None and not pte_special(pte)
    pages: list[int] = []
    # gup-fast never looks at the vma ...
    assert __get_user_pages_fast(mm, vma.start, 1, 1, pages) == 1
    assert pages == [page]
    assert mm.phys.others_refs() == {page: 1}
    mm.phys.put_page(page)
    # ... while the slow path rejects VM_IO first.
    mm.mmap_sem.down_read("qemu")
    assert get_user_pages(mm, vma.start, 1, 0, []) == -EFAULT
    mm.mmap_sem.up_read("qemu")


def test_zero_page_read_fault_then_gup_then_cow(mm: Mm, rec: RecordingNotifier) -> None:
    phys = mm.phys
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    assert _read_fault(mm, vma.start) == 0
    pte = mm.pgtable.get_pte(vma.start)
    assert pte is not None
    assert pte_pfn(pte) == phys.zero_pfn
    assert pte_special(pte) and not pte_write(pte)
    assert phys.PageReserved(phys.zero_pfn)
    # gup-fast refuses the special PTE, even for a read.
    assert __get_user_pages_fast(mm, vma.start, 1, 0, []) == 0
    # Slow gup takes a reference on the zero page (follow_page_pte, L.1).
    pages: list[int] = []
    mm.mmap_sem.down_read("qemu")
    assert get_user_pages(mm, vma.start, 1, 0, pages) == 1
    mm.mmap_sem.up_read("qemu")
    assert pages == [phys.zero_pfn]
    assert phys.others_refs() == {phys.zero_pfn: 1}
    phys.put_page(phys.zero_pfn)
    assert phys.others_refs() == {}
    # A write COWs it into a new page, firing start, change_pte, end.
    assert _read_fault(mm, vma.start, write=True) & 0x0008  # VM_FAULT_WRITE
    new = mm.pgtable.get_pte(vma.start)
    assert new is not None and pte_pfn(new) != phys.zero_pfn
    assert pte_write(new) and not new & PTE_SPECIAL
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["start", "change_pte", "end"]
    assert phys.page_count(pte_pfn(new)) == 1


def test_write_gup_on_untouched_anon_gets_new_page(mm: Mm) -> None:
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    pages: list[int] = []
    assert get_user_pages_fast(mm, vma.start, 1, 1, pages) == 1
    pfn = pages[0]
    assert pfn != mm.phys.zero_pfn
    assert mm.phys.page_count(pfn) == 2  # mapping + gup
    assert mm.phys.others_refs() == {pfn: 1}
    # The fast path now succeeds on the writable PTE.
    assert __get_user_pages_fast(mm, vma.start, 1, 1, pages) == 1
    mm.phys.put_page(pfn)
    mm.phys.put_page(pfn)
    assert mm.phys.others_refs() == {}


def test_foll_hwpoison(mm: Mm) -> None:
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    _read_fault(mm, vma.start, write=True)
    pte = mm.pgtable.get_pte(vma.start)
    assert pte is not None
    assert memory_failure(mm, pte_pfn(pte)) == 0
    mm.mmap_sem.down_read("qemu")
    assert get_user_pages(mm, vma.start, 1, FOLL_HWPOISON | FOLL_WRITE, None) == -EHWPOISON
    assert get_user_pages(mm, vma.start, 1, FOLL_WRITE, []) == -EFAULT
    mm.mmap_sem.up_read("qemu")
    # get_user_pages_fast never passes FOLL_HWPOISON.
    assert get_user_pages_fast(mm, vma.start, 1, 1, []) == -EFAULT


def test_foll_nowait_on_page_needing_io(mm: Mm) -> None:
    vma = map_backing(mm, name="disk", size=2 * mm.page_size, backing="file", prot="r", shared=True)
    assert vma.file is not None
    vma.file.needs_io.add(0)
    mm.mmap_sem.down_read("qemu")
    assert get_user_pages(mm, vma.start, 1, FOLL_NOWAIT, []) == 0
    # mmap_sem was not dropped.
    assert mm.mmap_sem.held_by() == {"qemu": "read"}
    # A blocking gup (no FOLL_NOWAIT, no retry allowed) reads the page in.
    pages: list[int] = []
    assert get_user_pages(mm, vma.start, 1, 0, pages) == 1
    mm.mmap_sem.up_read("qemu")
    mm.phys.put_page(pages[0])
    assert mm.phys.others_refs() == {}


def test_foll_nowait_on_swapped_anon_page(mm: Mm) -> None:
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    _read_fault(mm, vma.start, write=True)
    mm.mark_swapped(vma.start)
    mm.mmap_sem.down_read("qemu")
    assert get_user_pages(mm, vma.start, 1, FOLL_NOWAIT | FOLL_WRITE, []) == 0
    assert mm.mmap_sem.held_by() == {"qemu": "read"}
    mm.mmap_sem.up_read("qemu")
    # get_user_pages_unlocked allows retry: drops the lock, waits, retries.
    fired: list[str] = []
    mm.race_points["mmap_sem_dropped"] = lambda: fired.append(str(mm.mmap_sem.held_by()))
    pages: list[int] = []
    assert get_user_pages_unlocked(mm, vma.start, 1, pages, FOLL_WRITE) == 1
    assert fired == ["{}"]
    assert not mm.mmap_sem.is_locked()
    mm.phys.put_page(pages[0])
    assert mm.phys.others_refs() == {}


def test_gup_unlocked_retries_file_fault(mm: Mm) -> None:
    vma = map_backing(
        mm, name="f", size=mm.page_size, backing="shmem", prot="rw", shared=True, fault_retry=2
    )
    pages: list[int] = []
    assert get_user_pages_unlocked(mm, vma.start, 1, pages, FOLL_WRITE) == 1
    assert not mm.mmap_sem.is_locked()
    pte = mm.pgtable.get_pte(vma.start)
    assert pte is not None and pte & PTE_WRITE
    mm.phys.put_page(pages[0])
    assert mm.phys.others_refs() == {}


def test_hugetlb_2m_subpage_ref_on_head(mm: Mm) -> None:
    phys = mm.phys
    vma = map_backing(
        mm, name="huge", size=4 << 20, backing="hugetlbfs", prot="rw", shared=False, huge_shift=21
    )
    hva = vma.start + (2 << 20) + 3 * mm.page_size
    pages: list[int] = []
    assert get_user_pages_fast(mm, hva, 1, 1, pages) == 1
    e, shift = mm.pgtable.find_linux_pte(hva)
    assert shift == 21 and e is not None
    head = pte_pfn(e)
    assert phys.PageHuge(head) and phys.compound_order(head) == 21 - mm.page_shift
    assert pages == [head + 3]
    assert phys.compound_head(head + 3) == head
    assert phys.others_refs() == {head: 1}
    # The fast path now pins two subpages, references on the head.
    more: list[int] = []
    assert __get_user_pages_fast(mm, hva, 2, 1, more) == 2
    assert more == [head + 3, head + 4]
    assert phys.others_refs() == {head: 3}
    for p in pages + more:
        phys.put_page(p)
    assert phys.others_refs() == {}


def test_hugetlb_1g_shared() -> None:
    from kvmsim.host import PhysMem

    mm = Mm(PhysMem(12, ram_pages=1 << 20))
    vma = map_backing(
        mm, name="g", size=1 << 30, backing="hugetlbfs", prot="rw", shared=True, huge_shift=30
    )
    pages: list[int] = []
    assert get_user_pages_fast(mm, vma.start + 5 * 4096, 1, 0, pages) == 1
    e, shift = mm.pgtable.find_linux_pte(vma.start)
    assert shift == 30 and e is not None and pte_write(e)  # shared writable hugetlb
    assert pages == [pte_pfn(e) + 5]


def test_thp_read_maps_huge_zero_page(mm: Mm) -> None:
    phys = mm.phys
    vma = map_backing(
        mm, name="thp", size=4 << 20, backing="anon", prot="rw", shared=False, thp=True
    )
    _read_fault(mm, vma.start + mm.page_size)
    e, shift = mm.pgtable.find_linux_pte(vma.start)
    assert shift == 21 and e is not None
    hz = pte_pfn(e)
    assert hz == phys.huge_zero_pfn
    assert not phys.PageReserved(hz) and phys.PageCompound(hz)
    pages: list[int] = []
    assert __get_user_pages_fast(mm, vma.start + mm.page_size, 1, 0, pages) == 1
    assert pages == [hz + 1]
    phys.put_page(pages[0])
    # A write replaces it by a THP.
    _read_fault(mm, vma.start, write=True)
    e2, _ = mm.pgtable.find_linux_pte(vma.start)
    assert e2 is not None and pte_pfn(e2) != hz and phys.PageTransCompound(pte_pfn(e2))
    assert phys.others_refs() == {}


def test_mark_needs_io_on_cached_file_page(mm: Mm, rec: RecordingNotifier) -> None:
    vma = map_backing(
        mm, name="f", size=mm.page_size, backing="file", prot="r", shared=True, populate=True
    )
    assert vma.file is not None
    old = vma.file.cache[0]
    mm.mark_needs_io(vma.start)
    assert [c[0] for c in rec.calls] == ["start", "end"]
    assert old in mm.phys.freed and 0 in vma.file.needs_io
    mm.mmap_sem.down_read("qemu")
    assert get_user_pages(mm, vma.start, 1, FOLL_NOWAIT, []) == 0
    mm.mmap_sem.up_read("qemu")
    pages: list[int] = []
    assert get_user_pages_fast(mm, vma.start, 1, 0, pages) == 1
    assert pages[0] != old and not vma.file.needs_io
    mm.phys.put_page(pages[0])
    assert mm.phys.others_refs() == {}


def test_nowait_retry_keeps_nonblocking_so_the_lock_is_dropped_once() -> None:
    """mm/gup.c v4.16 faultin_page: on VM_FAULT_RETRY, ``*nonblocking = 0``
    only without FAULT_FLAG_RETRY_NOWAIT (the fault kept mmap_sem).  A
    FOLL_NOWAIT get_user_pages_unlocked on a page needing I/O returns 0 and
    leaves mmap_sem unheld."""
    from kvmsim.host import Mm, PhysMem, gup
    from kvmsim.host.constants import FOLL_NOWAIT

    mm = Mm(PhysMem(12))
    vma = mm.mmap(1 << 20, prot="rw", shared=False, name="ram")
    mm.mark_needs_io(vma.start)
    pages: list[int] = []
    assert gup.get_user_pages_unlocked(mm, vma.start, 1, pages, FOLL_NOWAIT) == 0
    assert pages == []
    assert mm.mmap_sem.held_by() == {}
