"""The stage-2 abort handler of Linux v4.16 for arm64: ``kvm_handle_guest_abort``
and ``user_mem_abort`` (virt/kvm/arm/mmu.c).  The v5.13 and v6.13
``user_mem_abort`` are in abort_later.py; ``kvm_handle_guest_abort`` is
shared (its decisions the model expresses did not change), except that
those versions turn -ENOEXEC into a prefetch abort for the guest.

Written only against kvmsim's public API: the ``Kvm`` attributes
(``memslots``, ``mm``, ``phys``, ``mmu_notifier_seq``, ``gfn_to_pfn_memslot``,
``fire_point``, ``hooks.create_pte``, ``tracer``), :mod:`kvmsim.kvm.pfn`
and the host model's ``Vma`` / ``PageTable`` / ``PhysMem`` methods.

Dirty logging (dirty.py): ``memslot_is_logging`` keeps a hugetlbfs vma
from a block and, for a non-device pfn, forces a page and maps a read
fault's page read-only; the mark and the block dissolve are
``create_pte``'s (mmu.py), under ``mmu_lock`` as in ``user_mem_abort``.

Not modelled: cache maintenance
(``clean_dcache_guest_page``, ``invalidate_icache_guest_page``), the
memory cache top-up (it cannot fail here), synchronous external aborts and
the cache-maintenance-instruction skip of ``kvm_handle_guest_abort``.

Read from: Linux 4.16.13 stable (mirror lizuobin/linux-4.16.13_tiny4412),
virt/kvm/arm/mmu.c ``kvm_handle_guest_abort`` / ``user_mem_abort``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim.cmodel import EAGAIN, EFAULT
from kvmsim.hooktypes import EFAULT as ACTION_EFAULT
from kvmsim.hooktypes import GUEST_FAULT, RESUME, SIGBUS, FaultResult
from kvmsim.kvm.pfn import (
    KVM_PFN_ERR_HWPOISON,
    gfn_to_hva_many,
    is_error_noslot_pfn,
    kvm_get_pfn,
    kvm_is_error_hva,
    kvm_is_reserved_pfn,
    kvm_release_pfn_clean,
    kvm_set_pfn_dirty,
    pfn_name,
)
from kvmsim_arm64 import abort_later, mmio, mmu
from kvmsim_arm64.desc import (
    EC_IABT_LOW,
    ESR_FSC_TYPE,
    ESR_WNR,
    FSC_ACCESS,
    FSC_FAULT,
    FSC_PERM,
    L2_SHIFT,
    PAGE_S2,
    PAGE_S2_DEVICE,
    PAGE_SHIFT,
    PMD_SIZE,
    describe,
    esr_describe,
    esr_ec,
    pfn_pte,
    pmd_mkhuge,
    s2_mkexec,
    s2_mkwrite,
)
from kvmsim_arm64.dirty import memslot_is_logging

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Fault
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot

PMD_MASK = ~(PMD_SIZE - 1)
PTRS_PER_PMD = 1 << (L2_SHIFT - PAGE_SHIFT)


def kvm_handle_guest_abort(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    """``kvm_handle_guest_abort``: classify the abort, find the memslot,
    send I/O to userspace (``io_mem_abort``: an MMIO exit, or ENOSYS /
    KVM_EXIT_ARM_NISV without a syndrome, mmio.py), fix an access flag
    fault in place, and hand a translation or permission fault to
    ``user_mem_abort``.  Its return 1 (resume the guest) is action
    ``resume``; a negative errno ends KVM_RUN."""
    tr = kvm.tracer
    esr = fault.code
    fault_status = esr & ESR_FSC_TYPE
    is_iabt = esr_ec(esr) == EC_IABT_LOW
    # HPFAR_EL2 reports the IPA's bits [47:12]; the page offset comes from FAR
    fault_ipa = fault.gpa & ~((1 << 12) - 1)
    if tr.enabled:
        tr.emit("kvm_guest_fault", ipa=hex(fault_ipa), esr=hex(esr), what=esr_describe(esr))
    if fault_status not in (FSC_FAULT, FSC_PERM, FSC_ACCESS):
        return FaultResult(action=ACTION_EFAULT, ret=-EFAULT, detail="unsupported FSC")
    gfn = fault_ipa >> PAGE_SHIFT
    memslot = kvm.memslots.gfn_to_memslot(gfn)
    # gfn_to_hva_memslot_prot: the hva for a read, and whether the slot is writable
    hva = gfn_to_hva_many(memslot, gfn, False, kvm.page_shift)
    writable = memslot is not None and not memslot.readonly
    write_fault = kvm_is_write_fault(esr)
    if kvm_is_error_hva(hva) or (write_fault and not writable):
        if is_iabt:
            # a prefetch abort on an I/O address is injected into the guest
            kvm.arch.pabt_injected += 1
            return FaultResult(action=GUEST_FAULT, ret=1, detail="kvm_inject_pabt")
        # the IPA's low 12 bits come from the faulting VA (HPFAR has [47:12]);
        # a stage-1 walk's abort (S1PTW) and cache maintenance are not modelled
        return mmio.io_mem_abort(kvm, esr, fault_ipa | (fault.ea & 0xFFF))
    if fault_status == FSC_ACCESS:
        handle_access_fault(kvm, fault_ipa)
        return FaultResult(action=RESUME, ret=1, detail="access flag set")
    assert memslot is not None  # a valid hva came from a slot
    if kvm.arch.handler == "v4.16":
        ret, detail = user_mem_abort(kvm, vcpu, fault_ipa, memslot, hva, fault_status, is_iabt, esr)
    else:
        ret, detail = abort_later.user_mem_abort(
            kvm, vcpu, fault_ipa, memslot, hva, fault_status, is_iabt, write_fault, esr
        )
        if ret == -abort_later.ENOEXEC:
            # v5.13 / v6.13: a fetch from a device pfn is a prefetch abort
            kvm.arch.pabt_injected += 1
            return FaultResult(action=GUEST_FAULT, ret=1, detail="kvm_inject_pabt (-ENOEXEC)")
    if detail == "hwpoison":
        return FaultResult(action=SIGBUS, ret=1, detail="SIGBUS BUS_MCEERR_AR")
    if ret == 0:
        return FaultResult(action=RESUME, ret=1, detail=detail)
    return FaultResult(action=ACTION_EFAULT, ret=ret, detail=detail or f"returned {ret}")


def kvm_is_write_fault(esr: int) -> bool:
    """``kvm_is_write_fault``: never for an instruction abort, else ESR.WnR
    (a stage-1 walk's write, S1PTW, is not modelled)."""
    if esr_ec(esr) == EC_IABT_LOW:
        return False
    return bool(esr & ESR_WNR)


def handle_access_fault(kvm: Kvm, fault_ipa: int) -> None:
    """``handle_access_fault``: set AF on the leaf under ``mmu_lock``, then
    ``kvm_set_pfn_accessed`` on its frame (v4.16, v5.13; not in v6.13)."""
    pfn = mmu.mkyoung(kvm, fault_ipa)
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvm_access_fault", ipa=hex(fault_ipa), pfn=None if pfn is None else hex(pfn)
        )
    if pfn is None or kvm.arch.handler == "v6.13":
        # v6.13 only sets AF (the pfn-based helpers are gone, E)
        return
    if kvm.arch.handler == "v5.13":
        abort_later.kvm_set_pfn_accessed_v5_6(kvm.phys, pfn)
    else:
        kvm_set_pfn_accessed(kvm, pfn)


def kvm_set_pfn_accessed(kvm: Kvm, pfn: int) -> None:
    """``kvm_set_pfn_accessed``: ``mark_page_accessed`` unless reserved."""
    if not kvm_is_reserved_pfn(kvm.phys, pfn):
        kvm.phys.mark_page_accessed(pfn)


def vma_kernel_pagesize(vma: object) -> int:
    """``vma_kernel_pagesize``: the hugetlbfs page size, else PAGE_SIZE."""
    if vma.is_hugetlb() and vma.huge_shift:  # type: ignore[attr-defined]
        return 1 << vma.huge_shift  # type: ignore[attr-defined,no-any-return]
    return 1 << PAGE_SHIFT


def page_trans_compound_map(kvm: Kvm, pfn: int, hva: int) -> bool:
    """``PageTransCompoundMap(pfn_to_page(pfn))``: part of a compound page
    (``PageTransCompound`` is ``PageCompound`` with THP built in, so a
    hugetlbfs page counts too) whose subpage is mapped by no PTE
    (``_mapcount < 0``), i.e. the host maps it with a huge leaf.

    v4.16 calls it on device pfns too (``pfn_to_page`` of a frame with no
    struct page); the model answers false for them."""
    phys = kvm.phys
    if not phys.pfn_valid(pfn) or not phys.PageCompound(pfn):
        return False
    _pte, shift = kvm.mm.pgtable.find_linux_pte(hva)
    return shift != 0


def user_mem_abort(
    kvm: Kvm,
    vcpu: int,
    fault_ipa: int,
    memslot: Memslot,
    hva: int,
    fault_status: int,
    exec_fault: bool,
    esr: int,
) -> tuple[int, str]:
    """``user_mem_abort``, v4.16.  Returns (ret, detail); ``ret`` is 0 or a
    negative errno, ``detail`` ``"hwpoison"`` after the SIGBUS was sent."""
    tr = kvm.tracer
    mm = kvm.mm
    phys = kvm.phys
    task = mm.current
    write_fault = kvm_is_write_fault(esr)
    hugetlb = False
    force_pte = False
    logging_active = memslot_is_logging(kvm, memslot)
    gfn = fault_ipa >> PAGE_SHIFT
    if fault_status == FSC_PERM and not write_fault and not exec_fault:
        return -EFAULT, "Unexpected L2 read permission error"

    # hugetlbfs? (the vma is looked at under mmap_sem, then let go)
    mm.mmap_sem.down_read(task)
    vma = mm.find_vma_intersection(hva, hva + 1)
    if vma is None:
        mm.mmap_sem.up_read(task)
        return -EFAULT, f"Failed to find VMA for hva {hva:#x}"
    vma_pagesize = vma_kernel_pagesize(vma)
    if vma_pagesize == PMD_SIZE and not logging_active:
        hugetlb = True
        # v4.16 trusts the memslot to be 2M-aligned the same way in IPA and
        # hva space; it does not check (fixed in v4.20)
        gfn = (fault_ipa & PMD_MASK) >> PAGE_SHIFT
    elif (memslot.userspace_addr & ~PMD_MASK) != ((memslot.base_gfn << PAGE_SHIFT) & ~PMD_MASK):
        # a block would cover more than the THP behind it: map pages only
        force_pte = True
    mm.mmap_sem.up_read(task)

    mmu_seq = kvm.mmu_notifier_seq
    # gfn_to_pfn_prot(kvm, gfn, write_fault, &writable): the slot of the
    # (possibly rounded-down) gfn, not atomic, no async, a writable pointer
    slot = kvm.memslots.gfn_to_memslot(gfn)
    res = kvm.gfn_to_pfn_memslot(
        slot,  # type: ignore[arg-type]  # None gives KVM_PFN_NOSLOT, as in C
        gfn,
        vcpu=vcpu,
        atomic=False,
        async_=False,
        write_fault=write_fault,
        writable=True,
    )
    pfn = res.pfn
    writable = res.writable
    if tr.enabled:
        tr.emit(
            "gfn_to_pfn_prot",
            gfn=hex(gfn),
            pfn=pfn_name(pfn),
            status=res.status,
            writable=writable,
            hugetlb=hugetlb,
            force_pte=force_pte,
            mmu_notifier_seq=mmu_seq,
        )
    kvm.fire_point("after_hva_to_pfn")
    if pfn == KVM_PFN_ERR_HWPOISON:
        kvm_send_hwpoison_signal(kvm, hva, vma)
        return 0, "hwpoison"
    if is_error_noslot_pfn(pfn):
        return -EFAULT, f"gfn_to_pfn_prot: {pfn_name(pfn)}"

    mem_type = PAGE_S2
    if kvm_is_device_pfn(kvm, pfn):
        # Device-nGnRE, and KVM_S2PTE_FLAG_IS_IOMAP (implied by the MemAttr)
        mem_type = PAGE_S2_DEVICE
    elif logging_active:
        # no block while logging (KVM_S2_FLAG_LOGGING_ACTIVE: stage2_set_pte
        # dissolves one in the way), and a read fault maps the page read-only
        force_pte = True
        if not write_fault:
            writable = False

    kvm.fire_point("before_create_pte")
    # The kernel runs the THP adjustment under mmu_lock after the retry
    # check; here create_pte owns the lock and the check.  Running it first
    # changes nothing observable: the reference moves within one compound
    # page, and a THP split in between makes create_pte refuse either way.
    ipa = fault_ipa
    if not hugetlb and not force_pte:
        hugetlb, pfn, ipa = transparent_hugepage_adjust(kvm, pfn, ipa, hva)

    if hugetlb:
        desc = pmd_mkhuge(pfn_pte(pfn, mem_type))
        level = 1
    else:
        desc = pfn_pte(pfn, mem_type)
        level = 0
    if writable:
        desc = s2_mkwrite(desc)
    if exec_fault:
        desc = s2_mkexec(desc)
    elif fault_status == FSC_PERM and mmu.stage2_is_exec(kvm.arch, ipa):
        # keep execute permission a previous instruction fetch granted
        desc = s2_mkexec(desc)
    if tr.enabled:
        tr.emit("user_mem_abort", ipa=hex(ipa), pfn=hex(pfn), level=level, desc=describe(desc))
    ret = kvm.hooks.create_pte(kvm=kvm, gpa=ipa, pte=desc, level=level, mmu_seq=mmu_seq)
    if ret != -EAGAIN and writable:
        kvm_set_pfn_dirty(phys, pfn)
    if ret == -EAGAIN:
        ret = 0  # out_unlock with ret still 0: the guest faults again
    kvm_set_pfn_accessed(kvm, pfn)
    kvm_release_pfn_clean(phys, pfn)
    return ret, "mapped" if ret == 0 else "stage2_set_pte: I/O page over a valid entry"


def kvm_is_device_pfn(kvm: Kvm, pfn: int) -> bool:
    """``kvm_is_device_pfn`` (v4.16 arm): ``!pfn_valid(pfn)``."""
    return not kvm.phys.pfn_valid(pfn)


def transparent_hugepage_adjust(kvm: Kvm, pfn: int, ipa: int, hva: int) -> tuple[bool, int, int]:
    """``transparent_hugepage_adjust``: if the frame is a PMD-mapped compound
    page, map the 2M block: move the reference from the subpage to the
    head (``kvm_release_pfn_clean`` then ``kvm_get_pfn``) and round the IPA
    and pfn down.  Returns (block?, pfn, ipa)."""
    if not page_trans_compound_map(kvm, pfn, hva):
        return False, pfn, ipa
    mask = PTRS_PER_PMD - 1
    if pfn & mask:
        ipa &= PMD_MASK
        kvm_release_pfn_clean(kvm.phys, pfn)
        pfn &= ~mask
        kvm_get_pfn(kvm.phys, pfn)
    if kvm.tracer.enabled:
        kvm.tracer.emit("transparent_hugepage_adjust", pfn=hex(pfn), ipa=hex(ipa))
    return True, pfn, ipa


def kvm_send_hwpoison_signal(kvm: Kvm, hva: int, vma: object) -> None:
    """``kvm_send_hwpoison_signal``: SIGBUS with BUS_MCEERR_AR to the vcpu
    thread; ``si_addr_lsb`` is the hugetlbfs page shift or PAGE_SHIFT."""
    lsb = vma_kernel_pagesize(vma).bit_length() - 1
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_send_hwpoison_signal", addr=hex(hva), si_addr_lsb=lsb)
