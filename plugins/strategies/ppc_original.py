"""``ppc_original``: the PPC HV fault handlers the RFC was written against
(Linux 4.15.1; radix ``arch/powerpc/kvm/book3s_64_mmu_radix.c`` blob
58618f644c56 and the HPT ``book3s_64_mmu_hv.c`` of the same release;
kernel-notes §B.2, §B.5, §J.1, §J.7, §J.10).

The handlers resolve the page themselves: ``get_user_pages_fast``, and when
that fails (always, for VM_IO|VM_PFNMAP vmas) a vma that covers the hva and
has VM_PFNMAP gives ``pfn = vm_pgoff + offset`` with the vma's
``vm_page_prot`` as the stage-2 attributes.  The PTE is never consulted, so
the result is right only when the vma's creator made ``vm_pgoff`` a pfn (a
COW ``remap_pfn_range``, VFIO-PCI); for a fault-populated or shared device
mapping ``vm_pgoff`` is a file offset and the guest gets small host RAM
frames (kernel-notes §J.1) -- present PTE or not.  No reference is taken on that path.

The surrounding handler decisions are v4.15's (``handlers`` selects them):
PageHuge only (no THP), the 2M test that compares 2M bases so 2M leaves are
practically never made (kernel-notes §J.10), a read fault made writable only when the
host PTE is writable *and* dirty, no ``set_page_dirty``, ``put_page(pages[0])``;
the v4.15 radix handler ignores PROTFAULT, so a store to a read-only PFNMAP
vma livelocks (kernel-notes §J.7).  HPT additionally needs ``hva + psize <= vm_end``.

Read from: Linux 4.15.1 release tarball (mirror Kent-Hu/linux-4.15.1),
arch/powerpc/kvm/book3s_64_mmu_radix.c blob 58618f644c56 and
book3s_64_mmu_hv.c.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.strategies.ppc_v4_15 import BranchAnswer, inline_hva_to_pfn, pgoff_pfn

from kvmsim import hookimpl
from kvmsim.hooktypes import HvaToPfnRequest, HvaToPfnResult, StrategyInfo
from kvmsim.host.constants import VM_PFNMAP
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
        name="ppc_original",
        description="v4.15 PPC HV handlers: gup_fast, else VM_PFNMAP -> vm_pgoff + offset (no PTE)",
        arches=("ppc_radix", "ppc_radix_4k", "ppc_hpt"),
        handlers={"ppc_radix": "v4.15", "ppc_hpt": "v4.15"},
        kernel="v4.15 (radix blob 58618f644c56)",
        linux={"*": "v4.15"},
        source=read_from(__doc__),
    )


def pfnmap_branch(kvm: Kvm, vma: Vma, request: HvaToPfnRequest) -> BranchAnswer:
    """The v4.15 VM_PFNMAP branch: ``vm_pgoff`` arithmetic, no PTE, no reference."""
    return BranchAnswer(pfn=pgoff_pfn(kvm, vma, request.hva), how="vm_pgoff + offset")


@hookimpl
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    return inline_hva_to_pfn(kvm, request, outer_flags=VM_PFNMAP, branch=pfnmap_branch)
