"""The v4.17 radix fault handler after the memslot lookup (kernel-notes
§C.1): gup-fast for a writable page, else the generic ``__gfn_to_pfn_memslot``
which calls the selected strategy's ``hva_to_pfn``.

Read from: Linux 4.17.0 release tree, arch/powerpc/kvm/book3s_64_mmu_radix.c
(31c8b0d0694a and its v4.17 neighbours; kernel-notes §C.1, L).
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
from kvmsim_plugins.ppc_radix.handler import _PTE_BASE, RESUME_GUEST, _ret, find_linux_pte
from kvmsim_plugins.ppc_radix.mmu import RadixState
from kvmsim_plugins.ppc_radix.tree import PMD_SHIFT, PMD_SIZE, PUD_SHIFT, PUD_SIZE

from kvmsim.cmodel import EAGAIN, EFAULT, KernelOops
from kvmsim.hooktypes import GUEST_FAULT, FaultResult
from kvmsim.host import gup
from kvmsim.host.constants import (
    PTE_DIRTY,
    PTE_EXEC,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_READ,
    PTE_WRITE,
    PTE_YOUNG,
)
from kvmsim.kvm.pfn import gfn_to_hva_memslot, is_error_noslot_pfn, pfn_name

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot


def fault_v4_17(
    kvm: Kvm, vcpu: int, st: RadixState, dsisr: int, gpa: int, gfn: int, ea: int, slot: Memslot
) -> FaultResult:
    """C.1: the handler after 31c8b0d0694a and its v4.17 neighbours."""
    tr = kvm.tracer
    phys = kvm.phys
    ps = kvm.page_shift
    writing = bool(dsisr & DSISR_ISSTORE)
    upgrade_ok = True  # upgrade_p != NULL
    if slot.readonly:
        if writing:
            st.dsi_queued += 1
            return FaultResult(
                action=GUEST_FAULT, ret=RESUME_GUEST, detail="DSI (store to a read-only memslot)"
            )
        upgrade_ok = False
    if dsisr & DSISR_SET_RC:
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
    mmu_seq = kvm.mmu_notifier_seq
    hva = gfn_to_hva_memslot(slot, gfn, ps)
    upgrade_write = False
    pages: list[int] = []
    if upgrade_ok and gup.__get_user_pages_fast(kvm.mm, hva, 1, 1, pages) == 1:
        page: int | None = pages[0]
        pfn = pages[0]
        upgrade_write = True
        if tr.enabled:
            tr.emit("__get_user_pages_fast", hva=hex(hva), ret=1, pfn=hex(pfn))
    else:
        res = kvm.gfn_to_pfn_memslot(
            slot,
            gfn,
            vcpu=vcpu,
            atomic=False,
            async_=False,
            write_fault=writing,
            writable=upgrade_ok,
        )
        pfn = res.pfn
        if upgrade_ok:
            upgrade_write = res.writable
        if tr.enabled:
            tr.emit(
                "__gfn_to_pfn_memslot", pfn=pfn_name(pfn), status=res.status, writable=res.writable
            )
        if is_error_noslot_pfn(pfn):
            kvm.fire_point("after_hva_to_pfn")
            return _ret(-EFAULT, f"__gfn_to_pfn_memslot: {pfn_name(pfn)}")
        page = pfn if phys.pfn_valid(pfn) and not phys.PageReserved(pfn) else None
    kvm.fire_point("after_hva_to_pfn")
    level = 0
    if page is not None and phys.PageCompound(page):
        pte_size = (1 << ps) << phys.compound_order(phys.compound_head(page))
        if pte_size >= PUD_SIZE and (gpa & (PUD_SIZE - (1 << ps))) == (
            hva & (PUD_SIZE - (1 << ps))
        ):
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
        # __find_linux_pte(vcpu->arch.pgdir, hva): on a read-only memslot hva
        # is KVM_HVA_ERR_RO_BAD, and the walk lands on its user alias
        hpte, shift = find_linux_pte(kvm, hva)
        if hpte is None:
            raise KernelOops(
                "pte = *ptep with __find_linux_pte() == NULL "
                "(host PTE gone under the fault; fixed by 6579804c4317)",
                "null_deref",
            )
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
        tr.emit(
            "radix_pte",
            pfn=hex(pte >> PTE_PFN_SHIFT),
            level=level,
            write=bool(pte & PTE_WRITE),
            from_host_pte=page is None,
        )
    kvm.fire_point("before_create_pte")
    ret = kvm.hooks.create_pte(kvm=kvm, gpa=gpa, pte=pte, level=level, mmu_seq=mmu_seq)
    if page is not None:
        if ret == 0 and pte & PTE_WRITE:
            phys.set_page_dirty_lock(page)
        phys.put_page(page)
    if ret in (0, -EAGAIN):
        ret = RESUME_GUEST
    return _ret(ret)
