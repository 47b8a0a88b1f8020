"""kvmsim-arm64: an out-of-tree kvmsim arch plugin for Arm64 KVM (Linux v4.16).

Stage-2 MMU as KVM v4.16 programs it (VTCR_EL2.T0SZ = 24: a 40-bit IPA
space; SL0 = 1 with the 4K granule: levels 1 to 3), with 2M and 1G blocks,
S2AP permissions, MemAttr (Normal write-back or Device-nGnRE), the access
flag, and faults reported as ESR_EL2 instruction/data aborts; and the
fault handler ``kvm_handle_guest_abort`` → ``user_mem_abort`` of
virt/kvm/arm/mmu.c, which resolves frames with ``gfn_to_pfn_prot`` (the
selected strategy's ``hva_to_pfn``).

Installed with ``pip install ./examples/kvmsim-arm64``, it is found through
its ``kvmsim.arch`` entry point ``arm64``; it imports only kvmsim's public API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmsim import hookimpl
from kvmsim.errors import PluginError, ScenarioError
from kvmsim.hooktypes import (
    ArchInfo,
    DirtyCaps,
    FaultResult,
    Stage2Mapping,
    StepResult,
    Translation,
)
from kvmsim.scenario import StepKind
from kvmsim.sources import read_from
from kvmsim_arm64 import abort, abort_later, dirty, mmio, mmu
from kvmsim_arm64.desc import IPA_BITS, PAGE_SHIFT, PMD_SIZE, PUD_SIZE

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Fault
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot
    from kvmsim.scenario import StepSpec

__version__ = "0.1.0"
NAME = "arm64"
HANDLERS = ("v4.16", "v5.13", "v6.13")
"""The fault-handler versions this plugin models (``StrategyInfo.handlers``):
v4.16 (abort.py), and the ``user_mem_abort`` of 5.13 and 6.13 (abort_later.py)."""


@hookimpl
def arch_info() -> ArchInfo:
    return ArchInfo(
        name=NAME,
        description=(
            f"Arm64 stage-2 MMU (4K granule, {IPA_BITS}-bit IPA, levels 1-3), "
            "ESR_EL2 aborts; user_mem_abort of v4.16 (also v5.13, v6.13)"
        ),
        page_shift=PAGE_SHIFT,
        page_sizes=(1 << PAGE_SHIFT, PMD_SIZE, PUD_SIZE),
        handler_sources={
            "v4.16": read_from(abort.__doc__),
            "v5.13": read_from(abort_later.__doc__),
            "v6.13": read_from(abort_later.__doc__),
        },
    )


@hookimpl
def arch_init(kvm: Kvm) -> Any:
    """``kvm_arch_init_vm`` → ``kvm_alloc_stage2_pgd``: empty tables.  The
    strategy picks the handler version (``HANDLERS``); none selected is v4.16."""
    version = kvm.handler or HANDLERS[0]
    if version not in HANDLERS:
        raise PluginError(
            f"arch {NAME!r} models the fault handler of {', '.join(HANDLERS)} only; "
            f"strategy {kvm.strategy.name!r} selects {version!r}"
        )
    kvm.handler = version
    return mmu.Stage2(version)


@hookimpl
def translate(kvm: Kvm, vcpu: int, gpa: int, ea: int, op: str) -> Translation:
    return mmu.translate(kvm, gpa, ea, op, vcpu)


@hookimpl
def handle_page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    return abort.kvm_handle_guest_abort(kvm, vcpu, fault)


@hookimpl
def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    return mmu.create_pte(kvm, gpa, pte, level, mmu_seq)


@hookimpl
def notifier_invalidate(kvm: Kvm, start: int, end: int) -> None:
    mmu.unmap_hva_range(kvm, start, end)


@hookimpl
def notifier_age_gfn(kvm: Kvm, start: int, end: int, test: bool) -> bool:
    return mmu.age_gfn_range(kvm, start, end, test)


@hookimpl
def stage2_mappings(kvm: Kvm) -> list[Stage2Mapping]:
    return mmu.mappings(kvm)


@hookimpl
def stage2_mappings_in(kvm: Kvm, start: int, end: int) -> list[Stage2Mapping]:
    return mmu.mappings_in(kvm, start, end)


#: What the plugin adds to scenarios: ``isv`` on the core access step (false:
#: the instruction gives no syndrome, ESR_EL2.ISV = 0, e.g. a load/store pair
#: or a writeback form), and ``enable_cap`` (KVM_ENABLE_CAP on the VM fd;
#: ``chunk_size`` is the argument of ``arm_eager_split_chunk_size``).
STEP_KINDS = (
    StepKind("access", {"isv": bool}),
    StepKind("enable_cap", {"cap": str, "chunk_size": int}, required=("cap",)),
)


@hookimpl
def step_kinds() -> list[StepKind]:
    return list(STEP_KINDS)


@hookimpl
def outcomes() -> dict[str, str]:
    """``enosys`` and ``arm_nisv`` (a data abort without syndrome, mmio.py),
    ``einval`` (a failed ``enable_cap``)."""
    return dict(mmio.OUTCOMES)


@hookimpl
def arch_step(kvm: Kvm, vcpu: int, step: StepSpec) -> StepResult | None:
    if step.do != "enable_cap":
        return None
    st: mmu.Stage2 = kvm.arch
    if step.params.get("cap") == dirty.EAGER_SPLIT:
        res = dirty.enable_eager_split(kvm, step)
    elif "chunk_size" in step.params:
        raise ScenarioError(
            f"chunk_size belongs to cap {dirty.EAGER_SPLIT!r}",
            key=f"step[{step.index}].chunk_size",
            expected="no chunk_size",
            got=step.params["chunk_size"],
        )
    else:
        res = mmio.enable_cap(kvm, step)
    if step.index == st.cap_steps:
        st.cap_steps += 1  # still before the VMM's memslots
    return res


# ------------------------------------------------------------ dirty logging


@hookimpl
def dirty_log_caps(kvm: Kvm) -> DirtyCaps:
    return dirty.caps(kvm)


@hookimpl
def dirty_log_enable(kvm: Kvm, slot: Memslot, enable: bool) -> bool:
    return dirty.enable(kvm, slot, enable)


@hookimpl
def dirty_log_protect(kvm: Kvm, slot: Memslot, gfn_offset: int, mask: int) -> bool:
    return dirty.protect(kvm, slot, gfn_offset, mask)
