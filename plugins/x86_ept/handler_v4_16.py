"""The v4.16 x86 TDP fault handler (arch/x86/kvm/mmu.c, vmx.c;
kernel-notes §H, §L.1, §L.5): ``handle_ept_violation`` /
``handle_ept_misconfig`` → ``kvm_mmu_page_fault`` → ``tdp_page_fault``.

``tdp_page_fault``: level from the host mapping (``mapping_level``), the
lockless ``fast_page_fault``, ``mmu_notifier_seq``, ``try_async_pf`` (the
strategy's ``hva_to_pfn`` with a non-NULL ``async``), ``handle_abnormal_pfn``,
then under ``mmu_lock`` the part the ``create_pte`` hook models
(:func:`map_locked`): ``mmu_notifier_retry``, ``transparent_hugepage_adjust``
and ``__direct_map`` → ``mmu_set_spte`` → ``set_spte``, ending with
``kvm_release_pfn_clean``, then ``direct_pte_prefetch``.  References are
released by pfn, so the zero page's gup reference leaks (kernel-notes §L.1).

Read from: Linux 4.16.13 stable (mirror lizuobin/linux-4.16.13_tiny4412),
arch/x86/kvm/mmu.c and vmx.c (kernel-notes §H, §L.1, §L.5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.x86_ept.common import (
    LPAGE_LEVEL,
    PFERR_WRITE_MASK,
    REQ_FORCE_PT_LEVEL,
    REQ_MAP_WRITABLE,
    REQ_PREFAULT,
    REQ_WRITE_FAULT,
    RET_PF_RETRY,
    _async_not_present,
    _request_flags,
    direct_map,
    fast_page_fault,
    handle_abnormal_pfn,
    lpage_disallowed,
    notifier_retry,
    try_async_pf,
)
from kvmsim_plugins.x86_ept.ept import (
    LEVEL_SHIFT,
    PT_DIRECTORY_LEVEL,
    PT_MAX_HUGEPAGE_LEVEL,
    PT_PAGE_TABLE_LEVEL,
    SPTE_PFN_SHIFT,
    EptState,
    pages_per_hpage,
)

from kvmsim.cmodel import EAGAIN
from kvmsim.host.constants import PTE_PFN_SHIFT, PTE_PRESENT, THP_SHIFT, VM_HUGETLB
from kvmsim.kvm.memslot import KVM_MEMSLOT_INVALID, PAGE_OFFSET
from kvmsim.kvm.pfn import (
    KVM_PFN_ERR_NOSLOT_MASK,
    gfn_to_hva_memslot,
    kvm_get_pfn,
    kvm_is_reserved_pfn,
    kvm_release_pfn_clean,
)

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot


def tdp_page_fault(
    kvm: Kvm, vcpu: int, gpa: int, error_code: int, prefault: bool
) -> tuple[int, str | None, str]:
    """``tdp_page_fault`` (H): returns the RET_PF_* value or a negative errno,
    an event for the vcpu loop (``sigbus``, ``not_present``) and a detail.
    ``mmu_set_spte`` releases a mapped pfn, ``out_unlock`` a retried one."""
    st: EptState = kvm.arch
    tr = kvm.tracer
    gfn = gpa >> 12
    write = bool(error_code & PFERR_WRITE_MASK)
    # page_fault_handle_page_track: no gfn is write-tracked (no shadow paging
    # and no GVT-g); mmu_topup_memory_caches cannot fail here.
    # check_hugepage_cache_consistency: the guest MTRRs are uniform.
    level, force_pt_level = mapping_level(kvm, gfn)
    if not force_pt_level:
        gfn &= ~((1 << (LEVEL_SHIFT[level] - 12)) - 1)  # KVM_PAGES_PER_HPAGE(level) - 1
    if tr.enabled:
        tr.emit(
            "tdp_page_fault",
            gpa=hex(gpa),
            error_code=hex(error_code),
            level=level,
            force_pt_level=force_pt_level,
            prefault=prefault,
        )
    if fast_page_fault(kvm, vcpu, gpa, level, error_code):
        return RET_PF_RETRY, None, "fast_page_fault"
    mmu_seq = kvm.mmu_notifier_seq
    handled, res = try_async_pf(kvm, vcpu, prefault, gfn, gpa, write)
    mm = kvm.mm
    if mm.race_points or mm.sched is not None:  # kvm.fire_point, inline (one call less)
        mm.fire_point("after_hva_to_pfn")
    if handled:
        return _async_not_present(st, vcpu)
    assert res is not None
    pfn = res.pfn
    map_writable = res.writable
    if pfn & KVM_PFN_ERR_NOSLOT_MASK:  # is_error_noslot_pfn: else nothing is abnormal
        bad = handle_abnormal_pfn(kvm, vcpu, gfn, pfn)
        if bad is not None:
            return bad
    flags = _request_flags(write, map_writable, prefault)
    if force_pt_level:
        flags |= REQ_FORCE_PT_LEVEL
    if mm.race_points or mm.sched is not None:
        mm.fire_point("before_create_pte")
    r = kvm.hooks.create_pte(
        kvm=kvm,
        gpa=gfn << 12,
        pte=(pfn << SPTE_PFN_SHIFT) | flags,
        level=level - 1,
        mmu_seq=mmu_seq,
    )
    if r == -EAGAIN:
        # out_unlock: spin_unlock, then kvm_release_pfn_clean(pfn)
        kvm_release_pfn_clean(kvm.phys, pfn)
        return RET_PF_RETRY, None, "mmu_notifier_retry"
    return r, None, ""


def kvm_host_page_size(kvm: Kvm, gfn: int, slot: Memslot | None = None) -> int:
    """``kvm_host_page_size``: ``vma_kernel_pagesize`` of the vma at
    ``gfn_to_hva(gfn)`` under ``mmap_sem``.  ``gfn_to_hva`` asks for write,
    so a read-only memslot gives an error hva and PAGE_SIZE (kernel-notes §A.1).
    ``slot``: the gfn's memslot when the caller already looked it up (the
    lookup has no side effect, so the result is the same)."""
    if slot is None:
        slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        return 4096
    addr = gfn_to_hva_memslot(slot, gfn, 12)
    if addr >= PAGE_OFFSET:  # kvm_is_error_hva
        return 4096
    mm = kvm.mm
    task = mm.current
    mm.mmap_sem.down_read(task)
    try:
        vma = mm.find_vma(addr)
        if vma is None:
            return 4096
        if vma.flags & VM_HUGETLB:
            return 1 << vma.huge_shift
        return 4096
    finally:
        mm.mmap_sem.up_read(task)


def mapping_level(kvm: Kvm, gfn: int) -> tuple[int, bool]:
    """``mapping_level`` (with ``host_mapping_level``): 4K and
    ``force_pt_level`` for no slot, an invalid slot or a slot with a dirty
    bitmap (kernel-notes §L.5); else the hugetlbfs page size, capped by the CPU's largest
    EPT page and the slot's ``disallow_lpage``.  THP is found later, by
    ``transparent_hugepage_adjust``."""
    st: EptState = kvm.arch
    slot = kvm.memslots.gfn_to_memslot(gfn)
    # memslot_valid_for_gpte(slot, no_dirty_log = true)
    if slot is None or slot.flags & KVM_MEMSLOT_INVALID or slot.id in st.dirty_bitmaps:
        return PT_PAGE_TABLE_LEVEL, True
    # host_mapping_level → kvm_host_page_size looks the same gfn's slot up
    # again (gfn_to_hva): the same slot, so it is handed over
    page_size = kvm_host_page_size(kvm, gfn, slot)
    host_level = 0
    for i in range(PT_PAGE_TABLE_LEVEL, PT_MAX_HUGEPAGE_LEVEL + 1):
        if page_size >= 1 << LEVEL_SHIFT[i]:
            host_level = i
        else:
            break
    if host_level == PT_PAGE_TABLE_LEVEL:
        return host_level, False
    max_level = min(LPAGE_LEVEL, host_level)
    level = PT_DIRECTORY_LEVEL
    while level <= max_level:
        if lpage_disallowed(slot, gfn, level):
            break
        level += 1
    return level - 1, False


def map_locked(kvm: Kvm, gfn: int, pfn: int, flags: int, kvm_level: int, mmu_seq: int) -> int:
    """The tail of ``tdp_page_fault`` under ``mmu_lock``: ``mmu_notifier_retry``
    (→ ``-EAGAIN``; the caller releases the pfn after unlocking),
    ``transparent_hugepage_adjust`` unless ``REQ_FORCE_PT_LEVEL``, then
    ``__direct_map``."""
    retry = kvm.mmu_notifier_retry(mmu_seq)
    if retry and notifier_retry(kvm, gfn, mmu_seq, retry):
        return -EAGAIN
    # make_mmu_pages_available: there is always room
    if not flags & REQ_FORCE_PT_LEVEL:
        gfn, pfn, kvm_level = transparent_hugepage_adjust(kvm, gfn, pfn, kvm_level)
    return direct_map(
        kvm,
        bool(flags & REQ_WRITE_FAULT),
        bool(flags & REQ_MAP_WRITABLE),
        kvm_level,
        gfn,
        pfn,
        bool(flags & REQ_PREFAULT),
        mmu_seq,
    )


def page_trans_compound_map(kvm: Kvm, pfn: int, gfn: int) -> bool:
    """``PageTransCompoundMap``: part of a THP that the host maps only with
    a huge PMD (``_mapcount < 0``).  With one mm, the host mapping at the
    gfn's hva tells."""
    phys = kvm.phys
    if not phys.PageTransCompound(pfn):
        return False
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        return False
    hva = gfn_to_hva_memslot(slot, gfn, 12)
    e, shift = kvm.mm.pgtable.find_linux_pte(hva)
    return (
        e is not None
        and shift == THP_SHIFT
        and bool(e & PTE_PRESENT)
        and e >> PTE_PFN_SHIFT == phys.compound_head(pfn)
    )


def transparent_hugepage_adjust(kvm: Kvm, gfn: int, pfn: int, level: int) -> tuple[int, int, int]:
    """``transparent_hugepage_adjust`` (H step 8): a 4K decision on a THP the
    host maps with a PMD becomes 2M; in v4.16 the reference moves from the
    tail pfn to the head (``kvm_release_pfn_clean`` + ``kvm_get_pfn``)."""
    phys = kvm.phys
    if (
        not pfn & KVM_PFN_ERR_NOSLOT_MASK  # is_error_noslot_pfn
        and not kvm_is_reserved_pfn(phys, pfn)
        and level == PT_PAGE_TABLE_LEVEL
        and page_trans_compound_map(kvm, pfn, gfn)
        and not lpage_disallowed(kvm.memslots.gfn_to_memslot(gfn), gfn, PT_DIRECTORY_LEVEL)
    ):
        level = PT_DIRECTORY_LEVEL
        mask = pages_per_hpage(level) - 1
        # VM_BUG_ON((gfn & mask) != (pfn & mask)): compiled out (no DEBUG_VM)
        moved = bool(pfn & mask)
        if pfn & mask:
            gfn &= ~mask
            kvm_release_pfn_clean(phys, pfn)
            pfn &= ~mask
            kvm_get_pfn(phys, pfn)
        if kvm.tracer.enabled:
            kvm.tracer.emit(
                "transparent_hugepage_adjust", gfn=hex(gfn), pfn=hex(pfn), ref_moved=moved
            )
    return gfn, pfn, level
