"""follow_pfn, fixup_user_fault, remap_pfn_range, vm_insert_pfn (F.4-F.8)."""

from __future__ import annotations

import pytest

from kvmsim.cmodel import EBUSY, EFAULT, EINVAL, ENOMEM, KernelOops, OutParam
from kvmsim.host import (
    FollowPfnmapArgs,
    Mm,
    RecordingNotifier,
    fixup_user_fault,
    follow_pfn,
    follow_pfnmap_end,
    follow_pfnmap_start,
    map_backing,
    memory_failure,
    remap_pfn_range,
    unmap_mapping_range,
    vm_insert_pfn,
    vmf_insert_pfn,
)
from kvmsim.host.constants import (
    FAULT_FLAG_WRITE,
    PTE_NONCACHED,
    VM_FAULT_NOPAGE,
    VM_FAULT_OOM,
    VM_FAULT_SIGBUS,
    VM_IO,
    VM_PFNMAP,
)
from kvmsim.host.pte import pte_pfn, pte_special, pte_write
from kvmsim.host.vma import VmFault, VmOps


def test_remap_pfn_range_vm_pgoff_shared_vs_private(mm: Mm) -> None:
    shared = map_backing(
        mm,
        name="s",
        size=2 * mm.page_size,
        backing="pfnmap_linear",
        prot="rw",
        shared=True,
        pgoff=7,
    )
    private = map_backing(
        mm,
        name="p",
        size=2 * mm.page_size,
        backing="pfnmap_linear",
        prot="rw",
        shared=False,
        pgoff=7,
    )
    assert shared.pgoff == 7
    sdrv, pdrv = shared.private_data, private.private_data
    assert private.pgoff == pdrv.base
    assert shared.flags & (VM_IO | VM_PFNMAP) == VM_IO | VM_PFNMAP
    pte = mm.pgtable.get_pte(shared.start + mm.page_size)
    assert pte is not None and pte_special(pte) and pte_pfn(pte) == sdrv.base + 1
    assert pte & PTE_NONCACHED  # mmio
    assert pte_write(pte)  # shared writable PFNMAP: no write-notify
    ppte = mm.pgtable.get_pte(private.start)
    assert ppte is not None and not pte_write(ppte)  # private: COW on write


def test_remap_pfn_range_cow_partial_is_einval(mm: Mm) -> None:
    vma = mm.mmap(4 * mm.page_size, prot="rw", shared=False, ops=VmOps(None, "drv"))
    base = mm.phys.alloc_mmio(4)
    assert remap_pfn_range(mm, vma, vma.start, base, mm.page_size, vma.page_prot) == -EINVAL
    assert vma.pgoff == 0 and not vma.flags & VM_PFNMAP
    shared = mm.mmap(4 * mm.page_size, prot="rw", shared=True, ops=VmOps(None, "drv"))
    assert (
        remap_pfn_range(
            mm, shared, shared.start + mm.page_size, base, mm.page_size, shared.page_prot
        )
        == 0
    )


def test_follow_pfn_ignores_write_and_einval_when_absent(mm: Mm) -> None:
    ro = map_backing(
        mm, name="ro", size=mm.page_size, backing="pfnmap_linear", prot="r", shared=True
    )
    pte = mm.pgtable.get_pte(ro.start)
    assert pte is not None and not pte_write(pte)
    out = OutParam("pfn")
    assert follow_pfn(ro, ro.start, out) == 0
    assert out.value == ro.private_data.base
    lazy = map_backing(
        mm, name="lazy", size=mm.page_size, backing="pfnmap_fault", prot="rw", shared=True
    )
    out2 = OutParam("pfn")
    assert follow_pfn(lazy, lazy.start, out2) == -EINVAL
    anon = mm.mmap(mm.page_size, prot="rw", shared=False)
    assert follow_pfn(anon, anon.start, OutParam("pfn")) == -EINVAL
    assert mm.phys.others_refs() == {}


def test_fixup_user_fault_runs_handler_then_follow_pfn(mm: Mm) -> None:
    vma = map_backing(
        mm,
        name="dev",
        size=2 * mm.page_size,
        backing="pfnmap_fault",
        prot="rw",
        shared=True,
        pgoff=4,
    )
    drv = vma.private_data
    mm.mmap_sem.down_read("qemu")
    unlocked = OutParam("unlocked", False)
    assert fixup_user_fault(mm, vma.start + mm.page_size, FAULT_FLAG_WRITE, unlocked) == 0
    assert unlocked.value is False
    out = OutParam("pfn")
    assert follow_pfn(vma, vma.start + mm.page_size, out) == 0
    assert out.value == drv.base + 1  # base + pgoff - vm_pgoff
    assert mm.mmap_sem.held_by() == {"qemu": "read"}
    mm.mmap_sem.up_read("qemu")


def test_fixup_user_fault_reports_unlocked_and_relocks(mm: Mm) -> None:
    vma = map_backing(
        mm,
        name="dev",
        size=mm.page_size,
        backing="pfnmap_fault",
        prot="rw",
        shared=True,
        fault_retry=1,
    )
    seen: list[dict[str, str]] = []
    mm.race_points["mmap_sem_dropped"] = lambda: seen.append(mm.mmap_sem.held_by())
    mm.mmap_sem.down_read("qemu")
    unlocked = OutParam("unlocked", False)
    assert fixup_user_fault(mm, vma.start, 0, unlocked) == 0
    assert unlocked.value is True
    assert seen == [{}]  # the lock really was dropped while the point fired
    assert mm.mmap_sem.held_by() == {"qemu": "read"}
    assert mm.pgtable.get_pte(vma.start) is not None
    mm.mmap_sem.up_read("qemu")


def test_fixup_user_fault_without_unlocked_never_retries(mm: Mm) -> None:
    vma = map_backing(
        mm,
        name="dev",
        size=mm.page_size,
        backing="pfnmap_fault",
        prot="rw",
        shared=True,
        fault_retry=3,
    )
    mm.mmap_sem.down_read("qemu")
    assert fixup_user_fault(mm, vma.start, 0, None) == 0
    assert mm.mmap_sem.held_by() == {"qemu": "read"}
    mm.mmap_sem.up_read("qemu")


def test_fixup_user_fault_errors_are_only_efault_or_enomem(mm: Mm) -> None:
    ro = map_backing(
        mm, name="ro", size=mm.page_size, backing="pfnmap_fault", prot="r", shared=True
    )
    anon = mm.mmap(mm.page_size, prot="rw", shared=False)
    nofault = mm.mmap(
        mm.page_size,
        prot="rw",
        shared=True,
        extra_flags=VM_IO | VM_PFNMAP,
        ops=VmOps(None, "nofault"),
    )
    sigbus = mm.mmap(
        mm.page_size,
        prot="rw",
        shared=True,
        extra_flags=VM_IO | VM_PFNMAP,
        ops=VmOps(lambda vmf: VM_FAULT_SIGBUS, "sigbus"),
    )
    oom = mm.mmap(
        mm.page_size,
        prot="rw",
        shared=True,
        extra_flags=VM_IO | VM_PFNMAP,
        ops=VmOps(lambda vmf: VM_FAULT_OOM, "oom"),
    )
    mm.mmap_sem.down_read("qemu")
    # write to a vma without VM_WRITE: vma_permits_fault
    assert fixup_user_fault(mm, ro.start, FAULT_FLAG_WRITE, None) == -EFAULT
    assert fixup_user_fault(mm, 0x1000, 0, None) == -EFAULT  # no vma
    assert fixup_user_fault(mm, nofault.start, 0, None) == -EFAULT  # no ->fault: SIGBUS
    assert fixup_user_fault(mm, sigbus.start, 0, None) == -EFAULT
    assert fixup_user_fault(mm, oom.start, 0, None) == -ENOMEM
    # hwpoison gives -EFAULT, never -EHWPOISON
    assert fixup_user_fault(mm, anon.start, FAULT_FLAG_WRITE, None) == 0
    pte = mm.pgtable.get_pte(anon.start)
    assert pte is not None
    mm.mmap_sem.up_read("qemu")
    assert memory_failure(mm, pte_pfn(pte)) == 0
    mm.mmap_sem.down_read("qemu")
    assert fixup_user_fault(mm, anon.start, FAULT_FLAG_WRITE, None) == -EFAULT
    assert mm.mmap_sem.held_by() == {"qemu": "read"}
    mm.mmap_sem.up_read("qemu")


def test_vm_insert_pfn_busy_and_vmf(mm: Mm) -> None:
    vma = mm.mmap(
        2 * mm.page_size,
        prot="rw",
        shared=True,
        extra_flags=VM_IO | VM_PFNMAP,
        ops=VmOps(None, "d"),
    )
    base = mm.phys.alloc_mmio(2)
    assert vm_insert_pfn(vma, vma.start, base) == 0
    pte = mm.pgtable.get_pte(vma.start)
    assert pte is not None and pte_special(pte) and not pte & 0x010  # not dirty
    assert vm_insert_pfn(vma, vma.start, base + 1) == -EBUSY
    assert vmf_insert_pfn(vma, vma.start, base + 1) == VM_FAULT_NOPAGE
    assert vm_insert_pfn(vma, vma.end, base) == -EFAULT
    assert vmf_insert_pfn(vma, vma.end, base) == VM_FAULT_SIGBUS
    cow = mm.mmap(
        mm.page_size, prot="rw", shared=False, extra_flags=VM_IO | VM_PFNMAP, ops=VmOps(None, "d")
    )
    with pytest.raises(KernelOops):
        vm_insert_pfn(cow, cow.start, base)


def test_unmap_mapping_range_pair_per_vma(mm: Mm, rec: RecordingNotifier) -> None:
    vma = map_backing(
        mm,
        name="esb",
        size=8 * mm.page_size,
        backing="pfnmap_fault",
        prot="rw",
        shared=True,
        pgoff=4,
    )
    ps = mm.page_size
    mm.mmap_sem.down_read("qemu")
    for i in range(8):
        assert fixup_user_fault(mm, vma.start + i * ps, 0, None) == 0
    mm.mmap_sem.up_read("qemu")
    assert vma.file is not None
    # unmap file pages 6..7 (irq 1 of a XIVE-like layout)
    unmap_mapping_range(vma.file, 6 * ps, 2 * ps, True)
    assert rec.calls == [
        ("start", vma.start + 2 * ps, vma.start + 4 * ps),
        ("end", vma.start + 2 * ps, vma.start + 4 * ps),
    ]
    assert mm.pgtable.get_pte(vma.start + 2 * ps) is None
    assert mm.pgtable.get_pte(vma.start + 4 * ps) is not None
    # the handler repopulates on the next fault
    mm.mmap_sem.down_read("qemu")
    assert fixup_user_fault(mm, vma.start + 2 * ps, 0, None) == 0
    mm.mmap_sem.up_read("qemu")
    assert mm.pgtable.get_pte(vma.start + 2 * ps) is not None


def test_mixedmap_ram_is_normal_mmio_is_special(mm: Mm) -> None:
    from kvmsim.host import __get_user_pages_fast

    ram = map_backing(
        mm,
        name="mr",
        size=mm.page_size,
        backing="mixedmap",
        prot="rw",
        shared=True,
        pfn_kind="ram",
        populate=True,
    )
    pte = mm.pgtable.get_pte(ram.start)
    assert pte is not None and not pte_special(pte)
    drv = ram.private_data
    assert mm.phys.page_count(drv.base) == 2  # driver + mapping
    mmio = map_backing(
        mm,
        name="mm",
        size=mm.page_size,
        backing="mixedmap",
        prot="rw",
        shared=True,
        pfn_kind="mmio",
    )
    mm.mmap_sem.down_read("qemu")
    assert fixup_user_fault(mm, mmio.start, 0, None) == 0
    mm.mmap_sem.up_read("qemu")
    mpte = mm.pgtable.get_pte(mmio.start)
    assert mpte is not None and pte_special(mpte) and mpte & PTE_NONCACHED
    pages: list[int] = []
    assert __get_user_pages_fast(mm, ram.start, 1, 1, pages) == 1
    assert __get_user_pages_fast(mm, mmio.start, 1, 0, []) == 0
    mm.phys.put_page(pages[0])
    assert mm.phys.others_refs() == {}
    assert mm.phys.owner_of(drv.base) == "driver:mr"
    assert mm.phys.owner_of(mmio.private_data.base) == "driver:mm"


def test_follow_pfnmap_start_end(mm: Mm) -> None:
    vma = map_backing(
        mm, name="bar", size=2 * mm.page_size, backing="pfnmap_linear", prot="r", shared=True
    )
    args = FollowPfnmapArgs(vma=vma, address=vma.start + mm.page_size)
    assert follow_pfnmap_start(args) == 0
    assert args.pfn == vma.private_data.base + 1
    assert args.special and not args.writable and args.lock
    follow_pfnmap_end(args)
    assert not args.lock
    anon = mm.mmap(mm.page_size, prot="rw", shared=False)
    assert follow_pfnmap_start(FollowPfnmapArgs(vma=anon, address=anon.start)) == -EINVAL


def test_driver_handler_sees_pgoff(mm: Mm) -> None:
    seen: list[int] = []

    def fault(vmf: VmFault) -> int:
        seen.append(vmf.pgoff)
        return VM_FAULT_SIGBUS

    vma = mm.mmap(
        4 * mm.page_size,
        prot="rw",
        shared=True,
        pgoff=4,
        extra_flags=VM_IO | VM_PFNMAP,
        ops=VmOps(fault, "x"),
    )
    mm.mmap_sem.down_read("qemu")
    assert fixup_user_fault(mm, vma.start + 3 * mm.page_size, 0, None) == -EFAULT
    mm.mmap_sem.up_read("qemu")
    assert seen == [7]


def test_trace_events_use_kernel_vocabulary() -> None:
    from kvmsim.host import PhysMem, get_user_pages_fast
    from kvmsim.trace import Tracer

    tr = Tracer(True)
    mm = Mm(PhysMem(12, ram_pages=1 << 16), tracer=tr)
    vma = map_backing(
        mm, name="dev", size=4096, backing="pfnmap_fault", prot="rw", shared=True, fault_retry=1
    )
    assert get_user_pages_fast(mm, vma.start, 1, 1, []) == -EFAULT
    mm.mmap_sem.down_read("qemu")
    unlocked = OutParam("unlocked", False)
    assert fixup_user_fault(mm, vma.start, 0, unlocked) == 0
    assert follow_pfn(vma, vma.start, OutParam("pfn")) == 0
    mm.mmap_sem.up_read("qemu")
    names = [e["event"] for e in tr.events]
    for name in (
        "__get_user_pages_fast",
        "check_vma_flags",
        "get_user_pages_fast",
        "handle_mm_fault",
        "fixup_user_fault",
        "follow_pfn",
    ):
        assert name in names
    fx = next(e for e in tr.events if e["event"] == "fixup_user_fault")
    assert fx["unlocked"] is True and fx["ret"] == 0
    cv = next(e for e in tr.events if e["event"] == "check_vma_flags")
    assert cv["ret"] == -EFAULT
