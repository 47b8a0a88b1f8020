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

This module holds the prologue every version shares; the versions'
bodies are in :mod:`.handler_v4_15` and :mod:`.handler_v4_17`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_radix.dsisr import (
    DSISR_BADACCESS,
    DSISR_ISSTORE,
    DSISR_PRTABLE_FAULT,
    DSISR_SET_RC,
    DSISR_UNSUPP_MMU,
    dsisr_names,
)
from kvmsim_plugins.ppc_radix.mmu import RadixState

from kvmsim.cmodel import EFAULT
from kvmsim.hooktypes import EFAULT as A_EFAULT
from kvmsim.hooktypes import GUEST_FAULT, MMIO, RESUME, FaultResult
from kvmsim.host.constants import (
    PTE_PRESENT,
    PTE_YOUNG,
)

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Fault
    from kvmsim.kvm.core import Kvm

RESUME_GUEST = 0
_PTE_BASE = (
    PTE_PRESENT | PTE_YOUNG
)  # _PAGE_PRESENT | _PAGE_PTE | _PAGE_ACCESSED (PTE_LEAF added by create_pte)


def _ret(ret: int, detail: str = "") -> FaultResult:
    """Map the handler's return value to what the vcpu loop does next."""
    if ret == RESUME_GUEST:
        return FaultResult(action=RESUME, ret=ret, detail=detail)
    return FaultResult(action=A_EFAULT, ret=ret, detail=detail or f"handler returned {ret}")


def page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    """``kvmppc_book3s_radix_page_fault``, entry: the prologue every version
    shares (steps 1-4 of B.2), then the selected version's body."""
    st: RadixState = kvm.arch
    tr = kvm.tracer
    # kvmppc_handle_exit_hv: an HDSI passes the HDSISR on; an HISI
    # (H_INST_STORAGE) sets fault_dar = pc and fault_dsisr = 0, dropping the
    # HSRR1 cause (v4.15.1, v4.16.13, v4.17 book3s_hv.c).  So an instruction
    # fetch reaches the handler as a plain read miss: no SET_RC fast path.
    dsisr = 0 if fault.kind == "hisi" else fault.code
    ea = fault.ea
    if tr.enabled:
        tr.emit(
            "kvmppc_book3s_radix_page_fault",
            handler=st.version,
            dsisr=dsisr_names(dsisr),
            gpa=hex(fault.gpa),
            ea=hex(ea),
        )
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
        from kvmsim_plugins.ppc_radix.handler_v4_17 import fault_v4_17

        return fault_v4_17(kvm, vcpu, st, dsisr, gpa, gfn, ea, slot)
    from kvmsim_plugins.ppc_radix.handler_v4_15 import fault_v4_15_16

    return fault_v4_15_16(kvm, vcpu, st, dsisr, gpa, gfn, slot)


def _host_pte(kvm: Kvm, hva: int) -> int | None:
    """``find_current_mm_pte`` / ``__find_linux_pte`` on the host mm: the
    entry (possibly not present) or None."""
    pte, _shift = kvm.mm.pgtable.find_linux_pte(hva)
    return pte
