"""``generic_v4_16``: virt/kvm's ``hva_to_pfn`` of early 2018 (Linux 4.16).

Fast gup only for atomic or async callers; ``get_user_pages_unlocked`` with
FOLL_HWPOISON; the read-fault write upgrade; the hwpoison check; and for
VM_IO|VM_PFNMAP vmas ``hva_to_pfn_remapped`` (follow_pfn, fixup_user_fault,
kvm_get_pfn, and a340b3e229b2's unconditional ``*writable = true``).

On ppc_radix it sits behind the v4.17 handler, the first PPC handler that
called the generic code; on x86 behind the v4.16 TDP fault handler.

Read from: Linux 4.16.13 stable (mirror lizuobin/linux-4.16.13_tiny4412),
virt/kvm/kvm_main.c (kernel-notes §A).
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
        name="generic_v4_16",
        description="virt/kvm hva_to_pfn of v4.16: slow gup, write upgrade, hwpoison, remapped",
        arches=("*",),
        handlers={"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "*": "v4.16"},
        kernel="v4.16",
        linux={"*": "v4.16"},
        source=read_from(__doc__),
    )


@hookimpl
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    return generic_request(kvm, request)
