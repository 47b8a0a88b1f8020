"""QEMU's own loads (``host_read``) and stores (``host_write``) through its
mapping: the user fault that populates the page (``handle_mm_fault``), then
the CPU's access to the frame the PTE maps (mm/memory.c of v4.16 for the
faults; a frame with no ``struct page`` is I/O, the device's)."""

from __future__ import annotations

from kvmsim.host import Mm, host_read, host_write, map_backing, memory_failure, swap_out
from kvmsim.host.constants import PTE_WRITE, VM_FAULT_NOPAGE, VM_FAULT_SIGSEGV
from kvmsim.host.pte import pte_pfn

VALUE = 0x1234_5678


def ram(mm: Mm, backing: str = "anon", **kw: object) -> int:
    kw.setdefault("shared", backing in ("shmem", "file"))
    size = 4 << 20 if backing == "hugetlbfs" else 16 * mm.page_size
    vma = map_backing(mm, name="ram", size=size, backing=backing, prot="rw", **kw)  # type: ignore[arg-type]
    return vma.start


def test_a_load_of_untouched_anon_memory_maps_the_zero_page(mm: Mm) -> None:
    hva = ram(mm) + 8
    allocated = mm.phys._next
    ret, value = host_read(mm, hva)
    # do_anonymous_page on a read fault: the zero page, read-only, nothing allocated
    assert (ret, value) == (0, 0)
    pte = mm.pgtable.get_pte(hva)
    assert pte is not None and pte_pfn(pte) == mm.phys.zero_pfn and not pte & PTE_WRITE
    assert mm.phys._next == allocated
    assert not mm.mmap_sem.is_locked()


def test_a_load_reads_what_a_store_left_in_the_frame(mm: Mm) -> None:
    for backing in ("anon", "shmem", "file", "hugetlbfs"):
        hva = ram(mm, backing, huge_shift=21 if backing == "hugetlbfs" else 0) + 0x18
        assert host_read(mm, hva)[1] == 0  # a fresh page (or the zero page) reads 0
        host_write(mm, hva, VALUE)  # COW of the zero page for anon
        assert host_read(mm, hva) == (0, VALUE)
        # 4 bytes stored at another address of the same page
        host_write(mm, hva + 8, 0xAB, 4)
        assert host_read(mm, hva + 8, 4)[1] == 0xAB


def test_a_swapped_page_reads_back_its_contents(mm: Mm) -> None:
    hva = ram(mm)
    host_write(mm, hva, VALUE)
    swap_out(mm, hva)
    # the read fault swaps the page in: do_swap_page reads the slot back
    assert host_read(mm, hva)[1] == VALUE


def test_a_load_that_faults_with_a_signal_reads_nothing(mm: Mm) -> None:
    none = map_backing(mm, name="n", size=mm.page_size, backing="anon", prot="none", shared=False)
    assert host_read(mm, none.start) == (VM_FAULT_SIGSEGV, None)
    hva = ram(mm)
    host_write(mm, hva, VALUE)
    e = mm.pgtable.get_pte(hva)
    assert e is not None
    memory_failure(mm, pte_pfn(e))
    ret, value = host_read(mm, hva)
    assert value is None and ret  # VM_FAULT_HWPOISON: SIGBUS
    assert host_read(mm, none.end + (1 << 30)) == (VM_FAULT_SIGSEGV, None)  # no vma


def test_io_frames_go_to_the_device_not_to_page_contents(mm: Mm) -> None:
    start = ram(mm, "pfnmap_linear", pfn_kind="mmio", shared=True)
    seen: list[tuple[int, int, str, int, int]] = []

    def io(pfn: int, offset: int, op: str, width: int, value: int) -> int | None:
        seen.append((pfn, offset, op, width, value))
        return 0x77 if op == "read" else None

    host_write(mm, start + mm.page_size + 0x10, 0x1FF, 1, io)
    e = mm.pgtable.get_pte(start + mm.page_size)
    assert e is not None
    pfn = pte_pfn(e)
    # the store, cut to its width, reached the device; no page contents changed
    assert seen == [(pfn, 0x10, "write", 1, 0xFF)]
    assert not mm.phys.contents
    assert host_read(mm, start + mm.page_size + 0x10, 2, io) == (0, 0x77)
    assert seen[-1] == (pfn, 0x10, "read", 2, 0)
    # no device answers: a load returns nothing
    assert host_read(mm, start + 0x20)[1] is None


def test_a_store_the_mapping_forbids_reaches_no_device(mm: Mm) -> None:
    calls: list[int] = []

    def io(pfn: int, offset: int, op: str, width: int, value: int) -> int | None:
        calls.append(pfn)
        return 0

    # a store through a read-only mapping is SIGSEGV before any fault handler runs
    ro = map_backing(
        mm, name="ro", size=mm.page_size, backing="pfnmap_fault", prot="r", shared=True
    )
    assert host_write(mm, ro.start, 1, 8, io) == VM_FAULT_SIGSEGV
    assert not calls
    # a load through it faults the frame in and reaches the device
    assert host_read(mm, ro.start, 8, io) == (VM_FAULT_NOPAGE, 0)
    assert len(calls) == 1
