"""The v4.15 and v4.16 radix fault handler after the memslot lookup
(kernel-notes §B.2, §B.3): the handler resolves the page itself, and the
selected strategy answers that block through ``hva_to_pfn``.

Read from: Linux 4.15.1 release tarball (mirror Kent-Hu/linux-4.15.1),
arch/powerpc/kvm/book3s_64_mmu_radix.c blob 58618f644c56; the v4.16
differences from Linux 4.16.13 stable (mirror
lizuobin/linux-4.16.13_tiny4412), commit c3856aeb2940 (kernel-notes
§B.2, kernel-notes §B.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_radix.dsisr import (
    DSISR_ISSTORE,
    DSISR_SET_RC,
)
from kvmsim_plugins.ppc_radix.handler import _PTE_BASE, RESUME_GUEST, _host_pte, _ret
from kvmsim_plugins.ppc_radix.mmu import RadixState
from kvmsim_plugins.ppc_radix.tree import PMD_SIZE

from kvmsim.cmodel import EAGAIN, EBUSY, EFAULT
from kvmsim.hooktypes import RETRY, FaultResult, HvaToPfnRequest
from kvmsim.host.constants import (
    PTE_DIRTY,
    PTE_EXEC,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_READ,
    PTE_WRITE,
    PTE_YOUNG,
)
from kvmsim.kvm.pfn import gfn_to_hva_memslot

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm


def fault_v4_15_16(
    kvm: Kvm, vcpu: int, st: RadixState, dsisr: int, gpa: int, gfn: int, slot: object
) -> FaultResult:
    """B.2 (v4.15) and kernel-notes §B.3 (v4.16), after the memslot was found."""
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
                        st.tree.hits.pop(v, None)  # the leaf changes: its cached hit goes
                        table[idx] = v | want
                        if tr.enabled:
                            tr.emit("set_rc", gpa=hex(gpa), bits="R|C" if writing else "R")
                        return _ret(RESUME_GUEST, "SET_RC fast path")
            finally:
                kvm.mmu_lock.unlock(task)
    # steps 9-10: the strategy answers the gup_fast + VM_PFNMAP block
    req = HvaToPfnRequest(vcpu=vcpu, slot=slot, gfn=gfn, gpa=gpa, hva=hva, write_fault=writing)
    res = kvm.hva_to_pfn(req)
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
        tr.emit(
            "radix_pte",
            pfn=hex(pfn),
            level=level,
            write=bool(pgflags & PTE_WRITE),
            pte_size=pte_size,
        )
    kvm.fire_point("before_create_pte")
    ret = kvm.hooks.create_pte(
        kvm=kvm, gpa=gpa, pte=(pfn << PTE_PFN_SHIFT) | pgflags, level=level, mmu_seq=mmu_seq
    )
    if ret == -EBUSY:  # a page-table page is in the way; fall back to a small page
        level = 0
        pfn |= gfn & ((PMD_SIZE >> ps) - 1)
        ret = kvm.hooks.create_pte(
            kvm=kvm, gpa=gpa, pte=(pfn << PTE_PFN_SHIFT) | pgflags, level=level, mmu_seq=mmu_seq
        )
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
