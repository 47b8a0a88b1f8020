"""The v6.13 radix fault handler after the memslot lookup:
``kvmppc_book3s_radix_page_fault`` → ``kvmppc_book3s_instantiate_page`` after
the 2024 rework (kernel-notes §E; "KVM: PPC: Use __kvm_faultin_pfn() to
handle page faults on Book3s Radix", v13 61/85), on top of the 2018-2020
follow-ups (kernel-notes §C.2: the host PTE for every pfn, NULL or non-present → release
and retry; ``find_kvm_host_pte`` under ``mmu_lock`` with the notifier check).

The contract with the strategy (``follow_pfn_2024``): ``HvaToPfnResult.page``
is ``*refcounted_page``, the only page this handler may release.  None
releases nothing, whatever the pfn; the zero page is released like any
other page.  The page is never derived from the pfn any more.

Read from: Linux 6.13.7 (GitHub ChenRuiwei/linux-6.13.7, Makefile
6.13.7, the kvm files as imported in its initial commit)
arch/powerpc/kvm/book3s_64_mmu_radix.c: ``kvmppc_book3s_radix_page_fault``
and ``kvmppc_book3s_instantiate_page`` (mmu_seq, ``__kvm_faultin_pfn``,
``find_kvm_host_pte`` under ``mmu_lock``, non-present → ``put_page``,
``RESUME_GUEST``; the level tests; ``set_page_dirty_lock`` + ``put_page``)
read alike the model; first built from the v6.13 "Stop grabbing
references to PFNMAP'd pages" series (v13, kvm list 2024-10-10, patch
61/85) on the 2018-2020 follow-ups of kernel-notes §C.2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_radix.dsisr import (
    DSISR_BAD_FAULT_64S,
    DSISR_ISSTORE,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    DSISR_SET_RC,
)
from kvmsim_plugins.ppc_radix.handler import RESUME_GUEST, _ret, find_linux_pte
from kvmsim_plugins.ppc_radix.mmu import RadixState
from kvmsim_plugins.ppc_radix.tree import PMD_SHIFT, PMD_SIZE, PUD_SHIFT, PUD_SIZE

from kvmsim.cmodel import EAGAIN, EFAULT
from kvmsim.hooktypes import GUEST_FAULT, FaultResult
from kvmsim.host.constants import (
    PTE_DIRTY,
    PTE_EXEC,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_WRITE,
    PTE_YOUNG,
)
from kvmsim.kvm.pfn import gfn_to_hva_memslot, is_error_noslot_pfn, pfn_name

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot

KVM_MEM_LOG_DIRTY_PAGES = 0x1


def release_page(kvm: Kvm, page: int | None, dirty: bool) -> None:
    """How v6.13's radix handler drops ``*refcounted_page``: nothing for a
    NULL page; otherwise ``set_page_dirty_lock`` when the PTE it installed
    is writable, then ``put_page`` (E step 9).  Not
    ``kvm_release_faultin_page``: the radix handler still open-codes the
    release the pre-2024 code did on the page it derived."""
    if page is None:
        return
    phys = kvm.phys
    if dirty:
        phys.SetPageDirty(page)  # set_page_dirty_lock
    phys.put_page(page)


def find_kvm_host_pte(kvm: Kvm, mmu_seq: int, hva: int) -> tuple[int, int]:
    """``find_kvm_host_pte`` read under ``mmu_lock``: NULL (here a 0 entry)
    when an invalidation ran since ``mmu_seq`` was read, else the host PTE
    through ``__find_linux_pte(kvm->mm->pgd, hva)``; the handler then reads
    ``pte = ptep ? *ptep : __pte(0)``."""
    task = kvm.mm.current
    kvm.mmu_lock.lock(task)
    try:
        if kvm.mmu_notifier_retry(mmu_seq):
            return 0, 0
        pte, shift = find_linux_pte(kvm, hva)
        return (pte or 0), shift
    finally:
        kvm.mmu_lock.unlock(task)


def fault_v6_13(
    kvm: Kvm, vcpu: int, st: RadixState, dsisr: int, gpa: int, gfn: int, ea: int, slot: Memslot
) -> FaultResult:
    """``kvmppc_book3s_radix_page_fault`` (v6.13) from the read-only memslot
    test on, then ``kvmppc_book3s_instantiate_page``."""
    tr = kvm.tracer
    writing = bool(dsisr & DSISR_ISSTORE)
    if slot.readonly and writing:
        st.dsi_queued += 1
        return FaultResult(
            action=GUEST_FAULT, ret=RESUME_GUEST, detail="DSI (store to a read-only memslot)"
        )
    # (a read on a read-only slot: kvm_follow_pfn NULLs map_writable itself)
    if dsisr & DSISR_SET_RC:
        # kvmppc_hv_handle_set_rc under mmu_lock
        want = PTE_YOUNG | (PTE_DIRTY if writing else 0)
        task = kvm.mm.current
        kvm.mmu_lock.lock(task)
        table, idx, _shift = st.tree.find_pte(gpa)
        if table is not None:
            v = table.get(idx, 0)
            if isinstance(v, int) and v & PTE_PRESENT and (not writing or v & PTE_WRITE):
                st.tree.hits.pop(v, None)  # the leaf changes: its cached hit goes
                table[idx] = v | want
                dsisr &= ~DSISR_SET_RC
                if tr.enabled:
                    tr.emit("kvmppc_hv_handle_set_rc", gpa=hex(gpa), bits="R|C" if writing else "R")
        kvm.mmu_lock.unlock(task)
        if not dsisr & (DSISR_BAD_FAULT_64S | DSISR_NOHPTE | DSISR_PROTFAULT | DSISR_SET_RC):
            return _ret(RESUME_GUEST, "SET_RC")
    ret = instantiate_page(kvm, vcpu, gpa, gfn, slot, writing)
    if ret in (0, -EAGAIN):
        ret = RESUME_GUEST
    return _ret(ret)


def instantiate_page(kvm: Kvm, vcpu: int, gpa: int, gfn: int, slot: Memslot, writing: bool) -> int:
    """``kvmppc_book3s_instantiate_page`` (v6.13)."""
    tr = kvm.tracer
    ps = kvm.page_shift
    mmu_seq = kvm.mmu_notifier_seq
    # asks for write: KVM_HVA_ERR_RO_BAD on a read-only slot, used only for
    # the host PTE walk and the alignment tests below
    hva = gfn_to_hva_memslot(slot, gfn, ps)
    # __kvm_faultin_pfn(memslot, gfn, writing ? FOLL_WRITE : 0, &upgrade_write, &page)
    res = kvm.gfn_to_pfn_memslot(
        slot, gfn, vcpu=vcpu, atomic=False, async_=False, write_fault=writing, writable=True
    )
    pfn = res.pfn
    upgrade_write = res.writable
    page: int | None = res.page if isinstance(res.page, int) else None
    if tr.enabled:
        tr.emit(
            "__kvm_faultin_pfn",
            pfn=pfn_name(pfn),
            status=res.status,
            writable=upgrade_write,
            refcounted_page=None if page is None else hex(page),  # type: ignore[arg-type]
        )
    kvm.fire_point("after_hva_to_pfn")
    if is_error_noslot_pfn(pfn):
        return -EFAULT
    pte, shift = find_kvm_host_pte(kvm, mmu_seq, hva)
    if not pte & PTE_PRESENT:
        # THP collapse, an invalidation since mmu_seq, or nothing mapped at
        # the address walked: let the guest try again
        if tr.enabled:
            tr.emit("resume_guest", why="host PTE absent or not present", hva=hex(hva))
        release_page(kvm, page, False)
        return RESUME_GUEST
    large_enable = not slot.flags & KVM_MEM_LOG_DIRTY_PAGES
    level = 0
    if (
        large_enable
        and shift == PUD_SHIFT
        and (gpa & (PUD_SIZE - (1 << ps))) == (hva & (PUD_SIZE - (1 << ps)))
    ):
        level = 2
    elif (
        large_enable
        and shift == PMD_SHIFT
        and (gpa & (PMD_SIZE - (1 << ps))) == (hva & (PMD_SIZE - (1 << ps)))
    ):
        level = 1
    elif shift > ps:
        # a large host page mapped small: bring over the hva's page bits
        pte |= ((hva & ((1 << shift) - (1 << ps))) >> ps) << PTE_PFN_SHIFT
    pte |= PTE_EXEC | PTE_YOUNG
    if writing or upgrade_write:
        if pte & PTE_WRITE:
            pte |= PTE_DIRTY
    else:
        pte &= ~(PTE_WRITE | PTE_DIRTY)
    if tr.enabled:
        tr.emit(
            "radix_pte",
            pfn=hex(pte >> PTE_PFN_SHIFT),
            level=level,
            write=bool(pte & PTE_WRITE),
            from_host_pte=True,
        )
    kvm.fire_point("before_create_pte")
    ret = kvm.hooks.create_pte(kvm=kvm, gpa=gpa, pte=pte, level=level, mmu_seq=mmu_seq)
    release_page(kvm, page, ret == 0 and bool(pte & PTE_WRITE))
    return ret
