"""``cedric_rfc``: Cédric Le Goater's RFC "KVM: PPC: Book3S HV: add support
for page faults in VM_IO|VM_PFNMAP vmas" (2018-02-08) exactly as posted, on
the v4.15 radix handler (blob 58618f644c56; kernel-notes §I.1, §J.2-J.4,
§J.7, §J.8).  Radix only: the RFC does not touch the HPT handler.

Inside the handler's unchanged outer test (vma covers hva and has
VM_PFNMAP), an inner test on VM_IO|VM_PFNMAP -- always true there, so the old
``vm_pgoff`` else-branch is dead (kernel-notes §J.2) -- calls a static copy of generic
v4.15 ``hva_to_pfn_remapped`` (follow_pfn; on failure fixup_user_fault with
``unlocked``, -EAGAIN when the lock was dropped, follow_pfn again;
``kvm_get_pfn``).  ``-EAGAIN`` makes the handler ``return RESUME_GUEST``
*before* its ``up_read``: the read hold ``fixup_user_fault`` re-took is
leaked (kernel-notes §J.3; the result has status ``retry`` and mmap_sem is still held by
the vcpu task, which the lock checker reports and a later host
``down_write`` turns into a deadlock).  Other errors leave ``pfn == 0`` →
-EFAULT.  The page stays NULL, so the ``kvm_get_pfn`` reference on a
refcounted pfn is never dropped (kernel-notes §J.4).  A VM_IO-only vma fails the outer
test (kernel-notes §J.2).  The write bit of the PTE is never checked (kernel-notes §J.7).

The rest of the handler is v4.15's (see ``ppc_original``).

Read from: the RFC mail (kvm-ppc, 2018-02-08; reference/kvm-ppc-thread-2018-02.txt)
applied to Linux 4.15.1's book3s_64_mmu_radix.c blob 58618f644c56.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.strategies.generic import hva_to_pfn_remapped as generic_remapped
from kvmsim_plugins.strategies.ppc_v4_15 import BranchAnswer, inline_hva_to_pfn, pgoff_pfn

from kvmsim import hookimpl
from kvmsim.cmodel import EAGAIN, OutParam
from kvmsim.hooktypes import HvaToPfnRequest, HvaToPfnResult, StrategyInfo
from kvmsim.host.constants import VM_IO, VM_PFNMAP
from kvmsim.sources import read_from

#: Everything this plugin's code does to shared state during a guest access
#: is seen by the footprint recorders (:mod:`kvmsim.footprint`): the
#: explorer's partial-order reduction may treat its segments as keyed.
FOOTPRINTS = True

if TYPE_CHECKING:
    from kvmsim.host.vma import Vma
    from kvmsim.kvm.core import Kvm


@hookimpl
def strategy_info() -> StrategyInfo:
    return StrategyInfo(
        name="cedric_rfc",
        description="the RFC as posted: hva_to_pfn_remapped copied into the v4.15 radix handler",
        arches=("ppc_radix", "ppc_radix_4k"),
        handlers={"ppc_radix": "v4.15"},
        kernel="v4.15 + RFC 20180208160303.19016-1-clg@kaod.org",
        linux={"*": "v4.15"},
        source=read_from(__doc__),
    )


def rfc_hva_to_pfn_remapped(
    kvm: Kvm, vma: Vma, addr: int, write_fault: bool, p_pfn: OutParam
) -> int:
    """The RFC's static ``hva_to_pfn_remapped(vma, addr, write_fault, p_pfn)``:
    generic v4.15's body without the (unused) ``async`` argument, so the same
    code: no ``writable`` output, no PTE write check, ``kvm_get_pfn``."""
    return generic_remapped(kvm, vma, addr, OutParam.null("async"), write_fault, None, p_pfn)


def pfnmap_branch(kvm: Kvm, vma: Vma, request: HvaToPfnRequest) -> BranchAnswer:
    """The RFC's branch, entered under the outer VM_PFNMAP test."""
    if vma.flags & (VM_IO | VM_PFNMAP):  # always true here: VM_PFNMAP was just tested
        pfn = OutParam("pfn", 0)  # the handler's local, initialised to 0
        ret = rfc_hva_to_pfn_remapped(kvm, vma, request.hva, request.write_fault, pfn)
        if ret == -EAGAIN:
            return BranchAnswer(pfn=0, retry=True, ret=ret, how="hva_to_pfn_remapped")
        value = pfn.get()
        assert isinstance(value, int)
        return BranchAnswer(pfn=value, ret=ret, how="hva_to_pfn_remapped")
    return BranchAnswer(pfn=pgoff_pfn(kvm, vma, request.hva), how="vm_pgoff (unreachable)")


@hookimpl
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    return inline_hva_to_pfn(kvm, request, outer_flags=VM_PFNMAP, branch=pfnmap_branch)
