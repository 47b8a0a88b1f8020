"""The x86 TDP fault handler's entry: the VM exit (``handle_ept_violation``
/ ``handle_ept_misconfig`` → ``kvm_mmu_page_fault``) and ``create_pte``
taking ``mmu_lock``; each version's body is its own module
(``StrategyInfo.handlers`` selects it):

- ``v4.16``: :mod:`.handler_v4_16` (``tdp_page_fault``);
- ``v5.13``: :mod:`.handler_v5_13` (``kvm_tdp_page_fault`` →
  ``direct_page_fault``);
- ``v6.13``: :mod:`.handler_v6_13`;

and what they share is :mod:`.common`.

The value handed to ``create_pte`` as ``pte`` is a fault request, not an
SPTE: ``pfn << 12`` with the ``REQ_*`` bits of :mod:`.common`;
``create_pte`` builds the SPTE (``set_spte``) under ``mmu_lock`` after the
retry check and the level adjustment, as the handlers order them.

Read from: Linux 4.16.13 stable (mirror lizuobin/linux-4.16.13_tiny4412),
arch/x86/kvm/vmx.c ``handle_ept_violation`` / ``handle_ept_misconfig`` for
the exit; each version module names the source of its body.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from kvmsim_plugins.x86_ept import apf, dirty, handler_v4_16, handler_v5_13, handler_v6_13
from kvmsim_plugins.x86_ept.common import (
    PFERR_FETCH_MASK,
    PFERR_GUEST_FINAL_MASK,
    PFERR_GUEST_PAGE_MASK,
    PFERR_PRESENT_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
    RET_PF_EMULATE,
    RET_PF_RETRY,
)
from kvmsim_plugins.x86_ept.ept import (
    EPT_VIOLATION_ACC_INSTR,
    EPT_VIOLATION_ACC_READ,
    EPT_VIOLATION_ACC_WRITE,
    EPT_VIOLATION_EXECUTABLE,
    EPT_VIOLATION_GVA_TRANSLATED,
    EPT_VIOLATION_READABLE,
    EPT_VIOLATION_WRITABLE,
    SPTE_PFN_SHIFT,
)

from kvmsim.cmodel import errno_name
from kvmsim.hooktypes import ASYNC_PF, MMIO, RESUME, SIGBUS, FaultResult
from kvmsim.hooktypes import EFAULT as A_EFAULT

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Fault
    from kvmsim.kvm.core import Kvm

VERSIONS: dict[str, ModuleType] = {
    "v4.16": handler_v4_16,
    "v5.13": handler_v5_13,
    "v6.13": handler_v6_13,
}


def page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    """The VM exit: ``handle_ept_violation`` or ``handle_ept_misconfig``,
    then ``kvm_mmu_page_fault``, and what ``vcpu_run`` does with its result
    (a pending SIGBUS, a pending APF halt, an emulation that exits to
    userspace)."""
    tr = kvm.tracer
    qual = fault.code
    if fault.kind == "pml_full":
        # vmx_handle_exit flushes the log first (vmx_flush_pml_buffer);
        # handle_pml_full then resumes the guest, which repeats the store
        n = dirty.vmx_flush_pml_buffer(kvm, vcpu)
        return FaultResult(action=RESUME, ret=1, detail=f"PML full: {n} gpas flushed")
    if fault.kind == "ept_misconfig":
        # handle_ept_misconfig → kvm_mmu_page_fault(gpa, PFERR_RSVD_MASK) →
        # handle_mmio_page_fault: a direct MMIO SPTE of the current
        # generation → RET_PF_EMULATE → the emulator exits with KVM_EXIT_MMIO.
        if tr.enabled:
            tr.emit("handle_mmio_page_fault", gpa=hex(fault.gpa), ret="RET_PF_EMULATE")
        return FaultResult(action=MMIO, ret=RET_PF_EMULATE, detail="MMIO SPTE: KVM_EXIT_MMIO")
    error_code = PFERR_USER_MASK if qual & EPT_VIOLATION_ACC_READ else 0
    if qual & EPT_VIOLATION_ACC_WRITE:
        error_code |= PFERR_WRITE_MASK
    if qual & EPT_VIOLATION_ACC_INSTR:
        error_code |= PFERR_FETCH_MASK
    if qual & (EPT_VIOLATION_READABLE | EPT_VIOLATION_WRITABLE | EPT_VIOLATION_EXECUTABLE):
        error_code |= PFERR_PRESENT_MASK
    error_code |= (
        PFERR_GUEST_FINAL_MASK if qual & EPT_VIOLATION_GVA_TRANSLATED else PFERR_GUEST_PAGE_MASK
    )
    if tr.enabled:
        tr.emit(
            "handle_ept_violation",
            gpa=hex(fault.gpa),
            exit_qualification=hex(qual),
            error_code=hex(error_code),
            handler=kvm.arch.version,
        )
    r, event, detail = mmu_page_fault(kvm, vcpu, fault.gpa, error_code, False)
    a: apf.ApfVcpu = kvm.arch.vcpu_apf(vcpu)
    if event == "sigbus":
        # RET_PF_RETRY, but the vcpu thread has SIGBUS pending: KVM_RUN
        # returns -EINTR and QEMU handles the signal (MCE for the guest).
        return FaultResult(action=SIGBUS, ret=r, detail=detail)
    if a.halt_requested:
        # KVM_REQ_APF_HALT: the vcpu halts until the page is present.
        apf.apf_halt(kvm, vcpu)
        return FaultResult(action=RESUME, ret=r, detail="async PF: vcpu halted until page ready")
    if event == "not_present":
        return FaultResult(action=ASYNC_PF, ret=r, detail=detail)
    if r == RET_PF_RETRY:
        return FaultResult(action=RESUME, ret=r, detail=detail)
    if r == RET_PF_EMULATE:
        return FaultResult(action=MMIO, ret=r, detail=detail or "RET_PF_EMULATE")
    return FaultResult(action=A_EFAULT, ret=r, detail=detail or f"KVM_RUN returns {errno_name(r)}")


def mmu_page_fault(
    kvm: Kvm, vcpu: int, gpa: int, error_code: int, prefault: bool
) -> tuple[int, str | None, str]:
    """``vcpu->arch.mmu->page_fault`` of the handler version."""
    if kvm.arch.version == "v5.13":
        return handler_v5_13.direct_page_fault(kvm, vcpu, gpa, error_code, prefault)
    # v4.16 tdp_page_fault; v6.13 kvm_tdp_page_fault (5.13's flow, its rules)
    return VERSIONS[kvm.arch.version].tdp_page_fault(kvm, vcpu, gpa, error_code, prefault)


def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    """Under ``mmu_lock``, the version's retry check, level adjustment and
    ``__direct_map``.  ``pte`` is a request (see the module docstring),
    ``level`` 0/1/2 for 4K/2M/1G.  Returns ``-EAGAIN``, ``RET_PF_EMULATE``
    (an MMIO SPTE was installed) or 0."""
    task = kvm.mm.current
    d = kvm.stage2_dirty
    if d is not None:  # kvm.stage2_changed(gpa), inline: whatever this installs covers gpa
        d.append(gpa)
    kvm.mmu_lock.lock(task)
    try:
        return VERSIONS[kvm.arch.version].map_locked(
            kvm,
            gpa >> 12,
            pte >> SPTE_PFN_SHIFT,
            pte & ((1 << SPTE_PFN_SHIFT) - 1),
            level + 1,
            mmu_seq,
        )
    finally:
        kvm.mmu_lock.unlock(task)


__all__ = [
    "RET_PF_EMULATE",
    "RET_PF_RETRY",
    "VERSIONS",
    "create_pte",
    "mmu_page_fault",
    "page_fault",
]
