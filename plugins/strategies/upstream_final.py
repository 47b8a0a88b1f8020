"""``upstream_final``: what the PPC HV fault handlers became once the thread's
discussion was merged: they call the generic ``__gfn_to_pfn_memslot``
(kernel-notes §C.1, §C.2, §L.1, §L.3).

Radix: commit 31c8b0d0694a "KVM: PPC: Book3S HV: Use __gfn_to_pfn_memslot()
in page fault handler" (Paul Mackerras, 2018-03-01, merged for v4.17), with
its v4.17 neighbours (1G pages, streamlined SET_RC).  The handler first tries
``__get_user_pages_fast`` for a writable page itself, then calls
``__gfn_to_pfn_memslot(memslot, gfn, false, NULL, writing, upgrade_p)``: the
whole generic v4.17 ``hva_to_pfn`` (identical to v4.16's: no fast path for a
sync caller, ``get_user_pages_unlocked`` with FOLL_HWPOISON, read-fault write
upgrade, hwpoison check, ``hva_to_pfn_remapped`` with a340b3e229b2's
unconditional ``*writable = true``).  Cache attributes then come from the
host PTE, dirtying is ``set_page_dirty_lock``, release is ``put_page`` on
``pfn_valid && !PageReserved`` (so a zero-page reference leaks, kernel-notes §L.1).

HPT converted later than radix: Paul Mackerras's "Use __gfn_to_pfn_memslot in
HPT page fault handler", merged as cd758a9b57ee in v5.7 (v5.6 still has the
``vm_pgoff`` code), so on ``ppc_hpt`` this strategy selects the v5.7 handler.
The generic ``hva_to_pfn`` it reaches is modelled as v4.17's: on that path
v5.7 differs only by v4.19's gup-fast attempt for synchronous callers
("KVM: try __get_user_pages_fast even if not in atomic context"), which
repeats, for the v5.7 HPT handler, the gup-fast attempt the handler itself
made just before (not modelled: the same page table gives the same
answer), until bd2fae8da794 (v5.12; see ``refcount_guarded``); the v5.6
zero-page fix of ``kvm_is_reserved_pfn`` does not matter to PPC, which
tests ``PageReserved`` itself (kernel-notes §L.1).

Read from: commit 31c8b0d0694a (Linux 4.17.0 release tree) for radix and
cd758a9b57ee with ae49dedaa92b as Linux 5.7.14 has them
(a5221985/linux-5.7.14) for HPT; virt/kvm/kvm_main.c of Linux 4.16.13 for
the generic resolution (kernel-notes §C).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.strategies.generic import generic_request

from kvmsim import hookimpl
from kvmsim.hooktypes import HvaToPfnRequest, HvaToPfnResult, StrategyInfo
from kvmsim.sources import read_from

#: Everything this plugin's code does to shared state during a guest access
#: is seen by the footprint recorders (:mod:`kvmsim.footprint`): the
#: explorer's partial-order reduction may treat its segments as keyed.
FOOTPRINTS = True

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm


@hookimpl
def strategy_info() -> StrategyInfo:
    return StrategyInfo(
        name="upstream_final",
        description="merged PPC handlers calling __gfn_to_pfn_memslot (radix v4.17, HPT v5.7)",
        arches=("ppc_radix", "ppc_radix_4k", "ppc_hpt"),
        handlers={"ppc_radix": "v4.17", "ppc_hpt": "v5.7"},
        kernel="v4.17 (31c8b0d0694a); HPT v5.7 (cd758a9b57ee)",
        linux={"ppc_hpt": "v5.7", "*": "v4.17"},
        source=read_from(__doc__),
    )


@hookimpl
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    return generic_request(kvm, request)
