"""``kvmppc_book3s_radix_page_fault`` as three kernel versions wrote it
(arch/powerpc/kvm/book3s_64_mmu_radix.c; kernel-semantics B.2, B.3, C.1).

The selected strategy names the version (``StrategyInfo.handlers``):
- ``v4.15``, ``v4.16``: the handler resolves the page itself (gup_fast, then
  the VM_PFNMAP branch under mmap_sem).  That block is what the strategy's
  ``hva_to_pfn`` answers; it returns ``pfn == 0`` for "nothing found"
  (the handler's ``if (!pfn) return -EFAULT``), ``page`` for the gup page it
  must put, ``prot`` for the vma's pgprot, or ``retry`` for the RFC's -EAGAIN.
- ``v4.17``: gup-fast for a writable page, else the generic
  ``__gfn_to_pfn_memslot`` (the strategy's generic ``hva_to_pfn``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim.cmodel import EAGAIN, EBUSY, EFAULT, KernelOops
from kvmsim.hooktypes import EFAULT as A_EFAULT
from kvmsim.hooktypes import GUEST_FAULT, MMIO, RESUME, RETRY, FaultResult, HvaToPfnRequest
from kvmsim.host.constants import (
    PTE_DIRTY,
    PTE_EXEC,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_READ,
    PTE_WRITE,
    PTE_YOUNG,
)
from kvmsim.host import gup
from kvmsim.kvm.pfn import gfn_to_hva_memslot, is_error_noslot_pfn, pfn_name
from kvmsim_plugins.ppc_radix.dsisr import (
    DSISR_BAD_FAULT_64S,
    DSISR_BADACCESS,
    DSISR_ISSTORE,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    DSISR_PRTABLE_FAULT,
    DSISR_SET_RC,
    DSISR_UNSUPP_MMU,
    dsisr_names,
)
from kvmsim_plugins.ppc_radix.mmu import RadixState
from kvmsim_plugins.ppc_radix.tree import PMD_SHIFT, PMD_SIZE, PUD_SHIFT, PUD_SIZE

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Fault
    from kvmsim.kvm.core import Kvm

RESUME_GUEST = 0
_PTE_BASE = PTE_PRESENT | PTE_YOUNG  # _PAGE_PRESENT | _PAGE_PTE | _PAGE_ACCESSED (PTE_LEAF added by create_pte)


def _ret(ret: int, detail: str = "") -> FaultResult:
    """Map the handler's return value to what the vcpu loop does next."""
    if ret == RESUME_GUEST:
        return FaultResult(action=RESUME, ret=ret, detail=detail)
    return FaultResult(action=A_EFAULT, ret=ret, detail=detail or f"handler returned {ret}")


def page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    """Entry point: the prologue every version shares (steps 1-4 of B.2)."""
    st: RadixState = kvm.arch
    tr = kvm.tracer
    dsisr = fault.code
    ea = fault.ea
    if tr.enabled:
        tr.emit("kvmppc_book3s_radix_page_fault", handler=st.version, dsisr=dsisr_names(dsisr),
                gpa=hex(fault.gpa), ea=hex(ea))
    if dsisr & DSISR_UNSUPP_MMU:
        return FaultResult(action=A_EFAULT, ret=-EFAULT, detail="unsupported MMU fault")
    if dsisr & DSISR_BADACCESS:
        st.dsi_queued += 1
        return FaultResult(action=GUEST_FAULT, ret=RESUME_GUEST, detail="DSI (BADACCESS)")
    ps = kvm.page_shift
    gpa = fault.gpa & ~0xFFF & ~0xF000_0000_0000_0000
    gfn = gpa >> ps
    if not dsisr & DSISR_PRTABLE_FAULT:
        gpa |= ea & 0xFFF
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        if dsisr & (DSISR_PRTABLE_FAULT | DSISR_BADACCESS | DSISR_SET_RC):
            st.dsi_queued += 1
            return FaultResult(action=GUEST_FAULT, ret=RESUME_GUEST, detail="DSI (no memslot)")
        if tr.enabled:
            tr.emit("kvmppc_hv_emulate_mmio", gpa=hex(gpa), store=bool(dsisr & DSISR_ISSTORE))
        return FaultResult(action=MMIO, ret=RESUME_GUEST, detail="KVM_EXIT_MMIO")
    if st.version == "v4.17":
        return _v4_17(kvm, vcpu, st, dsisr, gpa, gfn, ea, slot)
    return _v4_15_16(kvm, vcpu, st, dsisr, gpa, gfn, slot)


def _host_pte(kvm: Kvm, hva: int) -> int | None:
    """``find_current_mm_pte`` / ``__find_linux_pte`` on the host mm: the
    entry (possibly not present) or None."""
    pte, _shift = kvm.mm.pgtable.find_linux_pte(hva)
    return pte


def _v4_15_16(kvm: Kvm, vcpu: int, st: RadixState, dsisr: int, gpa: int, gfn: int,
              slot: object) -> FaultResult:
    """B.2 (v4.15) and B.3 (v4.16), after the memslot was found."""
    tr = kvm.tracer
    phys = kvm.phys
    ps = kvm.page_shift
    v415 = st.version == "v4.15"
    mmu_seq = kvm.mmu_notifier_seq
    writing = bool(dsisr & DSISR_ISSTORE)
    hva = gfn_to_hva_memslot(slot, gfn, ps)  # type: ignore[arg-type]
    if dsisr & DSISR_SET_RC:
        # Only when the host PTE already has R (and C for a store) may the
        # stage-2 entry get them without going through gup.
        want = PTE_YOUNG | (PTE_DIRTY if writing else 0)
        hpte = _host_pte(kvm, hva)
        if hpte is not None and hpte & PTE_PRESENT and hpte & want == want:
            task = kvm.mm.current
            kvm.mmu_lock.lock(task)
            try:
                if kvm.mmu_notifier_retry(mmu_seq):
                    return _ret(RESUME_GUEST, "SET_RC: mmu_notifier_retry")
                table, idx, _shift = st.tree.find_pte(gpa)
                if table is not None:
                    v = table.get(idx, 0)
                    if isinstance(v, int) and v & PTE_PRESENT:
                        table[idx] = v | want
                        if tr.enabled:
                            tr.emit("set_rc", gpa=hex(gpa), bits="R|C" if writing else "R")
                        return _ret(RESUME_GUEST, "SET_RC fast path")
            finally:
                kvm.mmu_lock.unlock(task)
    # steps 9-10: the strategy answers the gup_fast + VM_PFNMAP block
    req = HvaToPfnRequest(vcpu=vcpu, slot=slot, gfn=gfn, gpa=gpa, hva=hva, write_fault=writing)
    res = kvm.hooks.hva_to_pfn(kvm=kvm, request=req)
    kvm.fire_point("after_hva_to_pfn")
    if res.status == RETRY:
        if tr.enabled:
            tr.emit("resume_guest", why="hva_to_pfn asked for a retry", ret=res.ret)
        return _ret(RESUME_GUEST, "retry after -EAGAIN")
    pfn = res.pfn
    page = res.page
    level = 0
    pte_size = 1 << ps
    if page is None:
        if not pfn:
            if tr.enabled:
                tr.emit("radix_fault_efault", why="pfn == 0 after the VM_PFNMAP test")
            return _ret(-EFAULT, "no page and no VM_PFNMAP pfn")
        pgflags = res.prot if res.prot is not None else (PTE_READ | PTE_EXEC)
    else:
        pgflags = PTE_READ | PTE_EXEC
        compound = phys.PageHuge(page) if v415 else phys.PageCompound(page)
        if compound:
            head = phys.compound_head(page)
            pte_size <<= phys.compound_order(head)
            if v415:
                # compares the 2M-aligned bases: practically never equal
                pmd_mask = ~(PMD_SIZE - 1) & ~((1 << ps) - 1)
                aligned = (gpa & pmd_mask) == (hva & pmd_mask)
            else:
                off_mask = PMD_SIZE - (1 << ps)
                aligned = (gpa & off_mask) == (hva & off_mask)
            if pte_size >= PMD_SIZE and aligned:
                level = 1
                pfn &= ~((PMD_SIZE >> ps) - 1)
        if writing:
            pgflags |= PTE_WRITE
        else:
            hpte = _host_pte(kvm, hva)
            if hpte is not None and hpte & PTE_WRITE and (not v415 or hpte & PTE_DIRTY):
                pgflags |= PTE_WRITE
    pgflags |= _PTE_BASE
    if pgflags & PTE_WRITE:
        pgflags |= PTE_DIRTY
    if tr.enabled:
        tr.emit("radix_pte", pfn=hex(pfn), level=level, write=bool(pgflags & PTE_WRITE),
                pte_size=pte_size)
    kvm.fire_point("before_create_pte")
    ret = kvm.hooks.create_pte(kvm=kvm, gpa=gpa, pte=(pfn << PTE_PFN_SHIFT) | pgflags, level=level, mmu_seq=mmu_seq)
    if ret == -EBUSY:  # a page-table page is in the way; fall back to a small page
        level = 0
        pfn |= gfn & ((PMD_SIZE >> ps) - 1)
        ret = kvm.hooks.create_pte(kvm=kvm, gpa=gpa, pte=(pfn << PTE_PFN_SHIFT) | pgflags, level=level, mmu_seq=mmu_seq)
    if v415:
        if ret in (0, -EAGAIN):
            ret = RESUME_GUEST
        if page is not None:
            phys.put_page(page)  # pages[0]: the tail gup referenced
    else:
        if page is not None:
            if ret == 0 and pgflags & PTE_WRITE:
                phys.set_page_dirty_lock(page)
            phys.put_page(page)
        if ret in (0, -EAGAIN):
            ret = RESUME_GUEST
    return _ret(ret)


def _v4_17(kvm: Kvm, vcpu: int, st: RadixState, dsisr: int, gpa: int, gfn: int, ea: int,
           slot: object) -> FaultResult:
    """C.1: the handler after 31c8b0d0694a and its v4.17 neighbours."""
    tr = kvm.tracer
    phys = kvm.phys
    ps = kvm.page_shift
    writing = bool(dsisr & DSISR_ISSTORE)
    upgrade_ok = True  # upgrade_p != NULL
    if slot.readonly:  # type: ignore[attr-defined]
        if writing:
            st.dsi_queued += 1
            return FaultResult(action=GUEST_FAULT, ret=RESUME_GUEST,
                               detail="DSI (store to a read-only memslot)")
        upgrade_ok = False
    if dsisr & DSISR_SET_RC:
        want = PTE_YOUNG | (PTE_DIRTY if writing else 0)
        task = kvm.mm.current
        kvm.mmu_lock.lock(task)
        table, idx, _shift = st.tree.find_pte(gpa)
        if table is not None:
            v = table.get(idx, 0)
            if isinstance(v, int) and v & PTE_PRESENT and (not writing or v & PTE_WRITE):
                table[idx] = v | want
                dsisr &= ~DSISR_SET_RC
                if tr.enabled:
                    tr.emit("kvmppc_hv_handle_set_rc", gpa=hex(gpa),
                            bits="R|C" if writing else "R")
        kvm.mmu_lock.unlock(task)
        if not dsisr & (DSISR_BAD_FAULT_64S | DSISR_NOHPTE | DSISR_PROTFAULT | DSISR_SET_RC):
            return _ret(RESUME_GUEST, "SET_RC")
    mmu_seq = kvm.mmu_notifier_seq
    hva = gfn_to_hva_memslot(slot, gfn, ps)  # type: ignore[arg-type]
    upgrade_write = False
    pages: list[int] = []
    if upgrade_ok and gup.__get_user_pages_fast(kvm.mm, hva, 1, 1, pages) == 1:
        page: int | None = pages[0]
        pfn = pages[0]
        upgrade_write = True
        if tr.enabled:
            tr.emit("__get_user_pages_fast", hva=hex(hva), ret=1, pfn=hex(pfn))
    else:
        res = kvm.gfn_to_pfn_memslot(slot, gfn, vcpu=vcpu, atomic=False, async_=False,  # type: ignore[arg-type]
                                     write_fault=writing, writable=upgrade_ok)
        pfn = res.pfn
        if upgrade_ok:
            upgrade_write = res.writable
        if tr.enabled:
            tr.emit("__gfn_to_pfn_memslot", pfn=pfn_name(pfn), status=res.status,
                    writable=res.writable)
        if is_error_noslot_pfn(pfn):
            kvm.fire_point("after_hva_to_pfn")
            return _ret(-EFAULT, f"__gfn_to_pfn_memslot: {pfn_name(pfn)}")
        page = pfn if phys.pfn_valid(pfn) and not phys.PageReserved(pfn) else None
    kvm.fire_point("after_hva_to_pfn")
    level = 0
    if page is not None and phys.PageCompound(page):
        pte_size = (1 << ps) << phys.compound_order(phys.compound_head(page))
        if pte_size >= PUD_SIZE and (gpa & (PUD_SIZE - (1 << ps))) == (hva & (PUD_SIZE - (1 << ps))):
            level = 2
            pfn &= ~((PUD_SIZE >> ps) - 1)
        elif pte_size >= PMD_SIZE and (gpa & (PMD_SIZE - (1 << ps))) == (
            hva & (PMD_SIZE - (1 << ps))
        ):
            level = 1
            pfn &= ~((PMD_SIZE >> ps) - 1)
    if page is not None:
        pgflags = PTE_READ | PTE_EXEC | _PTE_BASE
        if writing or upgrade_write:
            pgflags |= PTE_WRITE | PTE_DIRTY
        pte = (pfn << PTE_PFN_SHIFT) | pgflags
    else:
        # copy the host PTE to get its attribute bits (cache-inhibited...)
        hpte, shift = kvm.mm.pgtable.find_linux_pte(hva)
        if hpte is None:
            raise KernelOops("pte = *ptep with __find_linux_pte() == NULL "
                             "(host PTE gone under the fault; fixed by 6579804c4317)",
                             "null_deref")
        pte = hpte
        if shift == PUD_SHIFT and (gpa & (PUD_SIZE - (1 << ps))) == (hva & (PUD_SIZE - (1 << ps))):
            level = 2
        elif shift == PMD_SHIFT and (gpa & (PMD_SIZE - (1 << ps))) == (
            hva & (PMD_SIZE - (1 << ps))
        ):
            level = 1
        elif shift and shift != ps:
            mask = (1 << shift) - (1 << ps)
            pte |= ((hva & mask) >> ps) << PTE_PFN_SHIFT
        if not (writing or upgrade_write):
            pte &= ~PTE_WRITE
        pte |= PTE_EXEC
    if tr.enabled:
        tr.emit("radix_pte", pfn=hex(pte >> PTE_PFN_SHIFT), level=level,
                write=bool(pte & PTE_WRITE), from_host_pte=page is None)
    kvm.fire_point("before_create_pte")
    ret = kvm.hooks.create_pte(kvm=kvm, gpa=gpa, pte=pte, level=level, mmu_seq=mmu_seq)
    if page is not None:
        if ret == 0 and pte & PTE_WRITE:
            phys.set_page_dirty_lock(page)
        phys.put_page(page)
    if ret in (0, -EAGAIN):
        ret = RESUME_GUEST
    return _ret(ret)
