"""``kvmppc_book3s_radix_page_fault`` as three kernel versions wrote it
(arch/powerpc/kvm/book3s_64_mmu_radix.c; kernel-notes §B.2, §B.3, §C.1).

The selected strategy names the version (``StrategyInfo.handlers``):
- ``v4.15``, ``v4.16``: the handler resolves the page itself (gup_fast, then
  the VM_PFNMAP branch under mmap_sem).  That block is what the strategy's
  ``hva_to_pfn`` answers; it returns ``pfn == 0`` for "nothing found"
  (the handler's ``if (!pfn) return -EFAULT``), ``page`` for the gup page it
  must put, ``prot`` for the vma's pgprot, or ``retry`` for the RFC's -EAGAIN.
- ``v4.17``: gup-fast for a writable page, else the generic
  ``__gfn_to_pfn_memslot`` (the strategy's generic ``hva_to_pfn``).
- ``v6.13``: ``kvmppc_book3s_instantiate_page`` after the 2024 rework
  (kernel-notes §E): ``__kvm_faultin_pfn`` for every fault, the host PTE
  for every pfn, and the release of exactly the page the strategy handed
  back (``set_page_dirty_lock`` + ``put_page`` of ``*refcounted_page``).

This module holds the prologue every version shares; the versions'
bodies are in :mod:`.handler_v4_15`, :mod:`.handler_v4_17` and
:mod:`.handler_v6_13`.

Read from: see the version modules (the prologue is the same in Linux
4.15.1, 4.16.13, 4.17.0 and the v6.13 series' base).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvmsim_plugins.ppc_radix.dsisr import (
    DSISR_BADACCESS,
    DSISR_ISSTORE,
    DSISR_PRTABLE_FAULT,
    DSISR_SET_RC,
    DSISR_UNSUPP_MMU,
    dsisr_names,
)
from kvmsim_plugins.ppc_radix.mmu import RadixState
from kvmsim_plugins.ppc_radix.tree import GPA_BITS

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
    shares (steps 1-4 of kernel-notes §B.2), then the selected version's body."""
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
    version = st.version
    body = _BODIES.get(version) or _body(version)
    if version == "v4.17" or version == "v6.13":
        return body(kvm, vcpu, st, dsisr, gpa, gfn, ea, slot)  # type: ignore[no-any-return]
    return body(kvm, vcpu, st, dsisr, gpa, gfn, slot)  # type: ignore[no-any-return]


_BODIES: dict[str, Callable[..., Any]] = {}
"""Each version's body, once imported (see :func:`_body`)."""


def _body(version: str) -> Callable[..., Any]:
    """The version's body, imported on first use (its module imports this
    one) and kept: an import statement per fault costs more than the rest
    of the prologue."""
    if version == "v4.17":
        from kvmsim_plugins.ppc_radix.handler_v4_17 import fault_v4_17

        body: Callable[..., Any] = fault_v4_17
    elif version == "v6.13":
        from kvmsim_plugins.ppc_radix.handler_v6_13 import fault_v6_13

        body = fault_v6_13
    else:
        from kvmsim_plugins.ppc_radix.handler_v4_15 import fault_v4_15_16

        body = fault_v4_15_16
    _BODIES[version] = body
    return body


# The host (process) page table on radix covers 52 bits of address like the
# partition-scoped one: pgd_index() is (ea >> PGDIR_SHIFT) & (PTRS_PER_PGD - 1)
# and every lower index is masked the same way, so a walk never looks at
# bits 52..63 (radix-{4k,64k}.h: 13 + 9 + 9 + 9|5 index bits + page shift).
HOST_PGTABLE_BITS = GPA_BITS
HOST_PGTABLE_MASK = (1 << HOST_PGTABLE_BITS) - 1


def find_linux_pte(kvm: Kvm, hva: int) -> tuple[int | None, int]:
    """``__find_linux_pte(vcpu->arch.pgdir, hva, NULL, &shift)`` (and
    ``find_current_mm_pte``): the host PTE mapping ``hva`` and its shift (0
    for a base page).  There is no check that ``hva`` is a user address: a
    kernel address such as ``KVM_HVA_ERR_RO_BAD`` (what ``gfn_to_hva_memslot``
    gives for a read-only memslot) walks the user table at the address whose
    bits above 51 are dropped, as the index macros do."""
    walked = hva & HOST_PGTABLE_MASK
    if walked != hva:
        tr = kvm.tracer
        if tr.enabled:
            tr.emit(
                "__find_linux_pte",
                hva=hex(hva),
                walked=hex(walked),
                why="pgd_index masks the address: a kernel hva aliases a user one",
            )
    return kvm.mm.pgtable.find_linux_pte(walked)


def _host_pte(kvm: Kvm, hva: int) -> int | None:
    """``find_current_mm_pte`` / ``__find_linux_pte`` on the host mm: the
    entry (possibly not present) or None."""
    pte, _shift = find_linux_pte(kvm, hva)
    return pte
