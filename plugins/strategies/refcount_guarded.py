"""``refcount_guarded``: the generic ``hva_to_pfn`` with the 2021 fixes to
``hva_to_pfn_remapped`` (kernel-notes §D, §L.3, §J.7):

- bd2fae8da794 "KVM: do not assume PTE is writable after follow_pfn" (v5.12):
  ``follow_pte`` instead of ``follow_pfn``; a write fault on a PTE without
  write gives ``KVM_PFN_ERR_RO_FAULT`` (returned with r = 0); otherwise
  ``*writable = pte_write(pte)`` instead of a340b3e229b2's unconditional true.
- f8be156be163 "KVM: do not allow mapping valid but non-reference-counted
  pages" (CVE-2021-22543, 5.13): ``kvm_try_get_pfn`` replaces ``kvm_get_pfn``;
  a valid non-reserved page whose count is 0 (``get_page_unless_zero`` fails,
  on the page itself, not its head) gives ``r = -EFAULT`` → ``KVM_PFN_ERR_FAULT``.

- "KVM: try __get_user_pages_fast even if not in atomic context" (Paolo
  Bonzini, v4.19): ``hva_to_pfn_fast`` runs for any caller that wants or
  allows a write, not only for atomic or async ones, so a writable present
  PTE is pinned by gup-fast without ``mmap_sem``.

Everything else on the path is modelled as v4.16's generic code (slow gup,
write upgrade, hwpoison check, the vma walk), which 5.13 keeps.
Deliberate simplification: ``kvm_is_reserved_pfn`` is v4.16's, so the zero
page counts as reserved (v5.6's 7df003c85218 excluded it); no PFNMAP vma maps
the zero page, so the remapped path's decisions are unaffected.  Handlers:
radix v4.17, HPT v5.7 (the PPC handlers of the time differ from those only in
ways this model does not express on this path), x86 v5.13 (whose release
helpers carry v5.6's zero-page fix), arm64 v5.13 when the out-of-tree example
is installed (likewise), others v4.16.

Read from: virt/kvm/kvm_main.c of Linux 5.14.2 (GitHub
Kingdo777/linux-5.14.2-faascale-host @ 21101b620, f8be156be163 applied)
and 5.12.9 (zhangyinjun/linux-5.12.9 @ d2af43753, bd2fae8da794 without
f8be156be163): ``hva_to_pfn``, ``hva_to_pfn_fast``, ``hva_to_pfn_slow``,
``hva_to_pfn_remapped``, ``kvm_try_get_pfn``; 5.13 lies between them
(f8be156be163 entered in 5.13-rc7); commits bd2fae8da794 and
f8be156be163 (kernel-notes §D, §L.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.strategies.generic import generic_request

from kvmsim import hookimpl
from kvmsim.cmodel import EAGAIN, EFAULT, OutParam
from kvmsim.hooktypes import HvaToPfnRequest, HvaToPfnResult, StrategyInfo
from kvmsim.host import gup
from kvmsim.host.constants import FAULT_FLAG_WRITE, PTE_PFN_SHIFT, PTE_WRITE
from kvmsim.kvm.pfn import KVM_PFN_ERR_RO_FAULT, kvm_try_get_pfn
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
        name="refcount_guarded",
        description="generic path + bd2fae8da794 (PTE write check) + f8be156be163 (CVE-2021-22543)",
        arches=("*",),
        # x86: 5.13's direct_page_fault, whose release helpers use v5.6's
        # kvm_is_reserved_pfn (the zero page is released, kernel-notes §L.1)
        handlers={
            "ppc_radix": "v4.17",
            "ppc_hpt": "v5.7",
            "x86_ept": "v5.13",
            "arm64": "v5.13",  # the out-of-tree example (examples/kvmsim-arm64)
            "*": "v4.16",
        },
        kernel="5.13 (f8be156be163 on bd2fae8da794)",
        linux={"*": "v5.13"},
        source=read_from(__doc__),
    )


def hva_to_pfn_remapped(
    kvm: Kvm,
    vma: Vma,
    addr: int,
    async_: OutParam,
    write_fault: bool,
    writable: OutParam | None,
    p_pfn: OutParam,
) -> int:
    """5.13-era ``hva_to_pfn_remapped`` (D): follow_pte, fixup_user_fault,
    follow_pte; RO_FAULT on a write to a read-only PTE; ``*writable =
    pte_write``; ``kvm_try_get_pfn`` or -EFAULT; ``*p_pfn`` written either way."""
    mm = kvm.mm
    tr = kvm.tracer
    r, pte = gup.follow_pte(mm, addr)
    if tr.enabled:
        tr.emit("follow_pte", addr=hex(addr), ret=r)
    if r:
        unlocked = OutParam("unlocked", False)
        r = gup.fixup_user_fault(mm, addr, FAULT_FLAG_WRITE if write_fault else 0, unlocked)
        if unlocked.get():
            return -EAGAIN
        if r:
            return r
        r, pte = gup.follow_pte(mm, addr)
        if tr.enabled:
            tr.emit("follow_pte", addr=hex(addr), ret=r, again=True)
        if r:
            return r
    assert pte is not None
    if write_fault and not pte & PTE_WRITE:
        if tr.enabled:
            tr.emit("hva_to_pfn_remapped", result="KVM_PFN_ERR_RO_FAULT", why="!pte_write")
        p_pfn.set(KVM_PFN_ERR_RO_FAULT)
        return 0
    if writable is not None and writable:
        writable.set(bool(pte & PTE_WRITE))
    pfn = pte >> PTE_PFN_SHIFT
    if not kvm_try_get_pfn(kvm.phys, pfn):
        if tr.enabled:
            tr.emit("kvm_try_get_pfn", pfn=hex(pfn), ok=False, why="page count is 0")
        r = -EFAULT
    p_pfn.set(pfn)
    return r


@hookimpl
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    return generic_request(kvm, request, remapped=hva_to_pfn_remapped, fast_any_caller=True)
