"""A data abort KVM cannot resolve to memory goes to userspace:
``io_mem_abort`` (virt/kvm/arm/mmio.c in v4.16, arch/arm64/kvm/mmio.c in
v5.13 and v6.13), and ``KVM_CAP_ARM_NISV_TO_USER``, which decides what an
abort without an instruction syndrome does.

KVM emulates an MMIO load or store from ESR_EL2's instruction syndrome
(access size, register, sign extension); when the hardware gives none
(ESR_EL2.ISV = 0: a load/store pair, a writeback addressing mode, an
exclusive or atomic access...), it cannot:

- v4.16: ``KVM_RUN`` fails with ENOSYS ("load/store instruction decoding
  not implemented");
- v5.13 and v6.13 (since c726200dd106, v5.5): the same ENOSYS unless
  userspace enabled ``KVM_CAP_ARM_NISV_TO_USER``, in which case ``KVM_RUN``
  returns with exit reason ``KVM_EXIT_ARM_NISV`` (the sanitised ISS and the
  fault IPA in ``kvm_run.arm_nisv``) for the VMM to handle, e.g. by
  injecting an external data abort.  v6.13 first sends a protected VM's
  abort back to the guest (not modelled: no pKVM here).

Neither is an MMIO exit; the outcomes are this plugin's own (``enosys``,
``arm_nisv``; declared with the ``outcomes`` hook).  ``KVM_ENABLE_CAP`` is
the plugin's ``enable_cap`` step: v5.13 and v6.13 accept
``KVM_CAP_ARM_NISV_TO_USER`` (``kvm_vm_ioctl_enable_cap``); v4.16 has no
arm ``KVM_ENABLE_CAP`` on the VM fd (``kvm_arch_vm_ioctl`` returns
-EINVAL for it), so the abort stays ENOSYS there.

Read from: io_mem_abort of Linux 4.16.13 (mirror
lizuobin/linux-4.16.13_tiny4412, virt/kvm/arm/mmio.c, and virt/kvm/arm/arm.c
for kvm_arch_vm_ioctl) and of 6.13.7 (mirror ChenRuiwei/linux-6.13.7,
arch/arm64/kvm/mmio.c, and arch/arm64/kvm/arm.c kvm_vm_ioctl_enable_cap);
for 5.13, arch/arm64/kvm/mmio.c of a 5.11-based tree
(kentjhall/vct-linux-hypsec-5.11) and the commits that changed the NISV
branch: c726200dd106 (v5.5, the capability and the exit) and the 2022
conversion of ``return_nisv_io_abort_to_user`` into a VM flag bit (v5.19),
between which 5.13's branch is the 5.11 one.  kvm_handle_guest_abort of
6.13.7 (arch/arm64/kvm/mmu.c) calls it as v4.16 does: a data abort outside
every memslot, or a write to a read-only one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import MMIO, FaultResult, StepResult
from kvmsim_arm64.desc import ESR_ISV

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.scenario import StepSpec

ENOSYS: Final = 38
EINVAL: Final = 22

#: The outcomes this plugin adds to the core's (the ``outcomes`` hook).
ENOSYS_OUTCOME: Final = "enosys"
NISV_OUTCOME: Final = "arm_nisv"
EINVAL_OUTCOME: Final = "einval"
OUTCOMES: Final = {
    ENOSYS_OUTCOME: "KVM_RUN failed with ENOSYS: a data abort to userspace without a syndrome",
    NISV_OUTCOME: "KVM_RUN returned with exit reason KVM_EXIT_ARM_NISV (v5.5+, when enabled)",
    EINVAL_OUTCOME: "the ioctl failed with EINVAL",
}

#: The capabilities the ``enable_cap`` step knows.
NISV_TO_USER: Final = "arm_nisv_to_user"


def io_mem_abort(kvm: Kvm, esr: int, ipa: int) -> FaultResult:
    """``io_mem_abort`` of the handler version: without a valid syndrome,
    ENOSYS or (v5.5+, enabled) KVM_EXIT_ARM_NISV; with one, the MMIO exit
    (in-kernel MMIO devices on the KVM bus are not modelled)."""
    tr = kvm.tracer
    if not esr & ESR_ISV:
        nisv = kvm.arch.handler != "v4.16" and kvm.arch.nisv_to_user
        if tr.enabled:
            tr.emit("io_mem_abort", ipa=hex(ipa), isv=False, to_user=nisv)
        if nisv:
            return FaultResult(action=NISV_OUTCOME, ret=0, detail="KVM_EXIT_ARM_NISV")
        detail = (
            "load/store instruction decoding not implemented"
            if kvm.arch.handler == "v4.16"
            else "data abort with no valid syndrome info"
        )
        return FaultResult(action=ENOSYS_OUTCOME, ret=-ENOSYS, detail=detail)
    if tr.enabled:
        tr.emit("io_mem_abort", ipa=hex(ipa), isv=True)
    return FaultResult(action=MMIO, ret=0, detail="KVM_EXIT_MMIO")


def enable_cap(kvm: Kvm, step: StepSpec) -> StepResult:
    """``KVM_ENABLE_CAP`` on the VM fd (the ``enable_cap`` step):
    ``kvm_vm_ioctl_enable_cap`` of v5.13 / v6.13 sets the NISV flag; v4.16
    has no arm VM ``KVM_ENABLE_CAP`` at all (-EINVAL)."""
    cap = step.params.get("cap")
    if cap != NISV_TO_USER:
        raise ScenarioError(
            "unknown capability",
            key=f"step[{step.index}].cap",
            expected=f"{NISV_TO_USER!r} or 'arm_eager_split_chunk_size'",
            got=cap,
        )
    if kvm.arch.handler == "v4.16":
        return StepResult(
            outcome=EINVAL_OUTCOME,
            detail="no KVM_ENABLE_CAP for arm VMs in v4.16 (KVM_CAP_ARM_NISV_TO_USER: v5.5)",
        )
    kvm.arch.nisv_to_user = True
    return StepResult(detail="KVM_CAP_ARM_NISV_TO_USER enabled")
