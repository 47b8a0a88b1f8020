"""``cedric_reviewed``: the RFC with the thread's review applied, still on
the v4.15 radix handler (kernel-notes §I.1, §J.2-J.4, §J.8):

- Ben: "Just export it" -- the handler calls the exported generic v4.15
  ``hva_to_pfn_remapped`` (with ``async == NULL``; no ``writable`` in v4.15)
  instead of a copy;
- Ben: "I don't think the else case is useful" -- the dead ``vm_pgoff``
  branch is gone;
- Paolo: "Maybe the outer check should be for VM_IO|VM_PFNMAP?" -- so a
  VM_IO-only vma (a VM_MIXEDMAP|VM_IO driver mapping) now reaches
  ``hva_to_pfn_remapped`` instead of -EFAULT (kernel-notes §J.2).

Nobody in the thread mentioned the handler's ``if (ret == -EAGAIN) return
RESUME_GUEST;`` sitting before ``up_read``, so the reviewed version keeps
it: the mmap_sem read hold ``fixup_user_fault`` re-took is still leaked
(kernel-notes §J.3; our reading, since the review is only described in words).  Nor the
missing release of the ``kvm_get_pfn`` reference: the page stays NULL and a
refcounted remapped pfn still leaks one reference per fault (kernel-notes §J.4).
Radix only, like the RFC.

Read from: the RFC mail and its review in reference/kvm-ppc-thread-2018-02.txt,
on Linux 4.15.1's book3s_64_mmu_radix.c blob 58618f644c56 and v4.15's
virt/kvm/kvm_main.c ``hva_to_pfn_remapped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.strategies.generic import hva_to_pfn_remapped
from kvmsim_plugins.strategies.ppc_v4_15 import BranchAnswer, inline_hva_to_pfn

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
        name="cedric_reviewed",
        description="the RFC after review: VM_IO|VM_PFNMAP outer test, exported generic helper",
        arches=("ppc_radix", "ppc_radix_4k"),
        handlers={"ppc_radix": "v4.15"},
        kernel="v4.15 + RFC with Ben's and Paolo's review",
        linux={"*": "v4.15"},
        source=read_from(__doc__),
    )


def pfnmap_branch(kvm: Kvm, vma: Vma, request: HvaToPfnRequest) -> BranchAnswer:
    """The reviewed branch: the exported helper, no else."""
    pfn = OutParam("pfn", 0)
    ret = hva_to_pfn_remapped(
        kvm, vma, request.hva, OutParam.null("async"), request.write_fault, None, pfn
    )
    if ret == -EAGAIN:
        return BranchAnswer(pfn=0, retry=True, ret=ret, how="hva_to_pfn_remapped (exported)")
    value = pfn.get()
    assert isinstance(value, int)
    return BranchAnswer(pfn=value, ret=ret, how="hva_to_pfn_remapped (exported)")


@hookimpl
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    return inline_hva_to_pfn(kvm, request, outer_flags=VM_IO | VM_PFNMAP, branch=pfnmap_branch)
