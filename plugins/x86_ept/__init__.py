"""x86-64 with VMX and EPT under KVM (TDP): the 4-level EPT, and the
``tdp_page_fault`` handler of v4.16 with async page faults, hwpoison SIGBUS,
MMIO SPTEs, THP and hugetlbfs levels, and dirty logging by write protection;
handler versions v5.13 (``direct_page_fault``) and v6.13 (release rule) for
the strategies of those eras (see :mod:`.handler`).

See :mod:`.ept` (tables, SPTE bits, the hardware walk), :mod:`.handler`
(the fault path), :mod:`.apf` (async page faults), :mod:`.steps` (scenario
steps: ``swap_out``, ``async_pf``, ``apf_complete``, ``nx_huge_pages``; the
core ``age`` step reaches :func:`.ept.age_gfn_range`), :mod:`.dirty` (the core
``dirty_log`` step's x86 side: write protection, PML, the ring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmsim_plugins.x86_ept import dirty, ept, handler, steps

from kvmsim import hookimpl
from kvmsim.errors import PluginError
from kvmsim.hooktypes import ArchInfo, DirtyCaps, Stage2Mapping, StepResult
from kvmsim.sources import read_from

#: Everything this plugin's code does to shared state during a guest access
#: is seen by the footprint recorders (:mod:`kvmsim.footprint`): the
#: explorer's partial-order reduction may treat its segments as keyed.
FOOTPRINTS = True

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot
    from kvmsim.scenario.model import StepKind, StepSpec

NAME = "x86_ept"
PAGE_SHIFT = 12
VERSIONS = ("v4.16", "v5.13", "v6.13")


@hookimpl
def arch_info() -> ArchInfo:
    return ArchInfo(
        name=NAME,
        description="x86-64 VMX EPT (4-level, 4K/2M/1G), TDP fault handler v4.16, v5.13, v6.13",
        page_shift=PAGE_SHIFT,
        page_sizes=(1 << 12, 1 << 21, 1 << 30),
        handler_sources={v: read_from(m.__doc__) for v, m in handler.VERSIONS.items()},
    )


@hookimpl
def arch_init(kvm: Kvm) -> Any:
    version = kvm.handler or "v4.16"
    if version not in VERSIONS:
        raise PluginError(
            f"x86_ept has no fault handler version {version!r} "
            f"(strategy {kvm.strategy.name!r} asks for it); it has {', '.join(VERSIONS)}"
        )
    st = ept.EptState(version)
    st.dirty_bitmaps = kvm.dirty.bitmaps  # memslot->dirty_bitmap: the core's
    return st


# the walk itself is the hook implementation (no wrapper call per access)
translate = hookimpl(specname="translate")(ept.translate_access)


# the VM exit and the mapping under mmu_lock are the hook implementations
# themselves (same signatures): no wrapper call per fault
handle_page_fault = hookimpl(specname="handle_page_fault")(handler.page_fault)
create_pte = hookimpl(specname="create_pte")(handler.create_pte)


@hookimpl
def notifier_invalidate(kvm: Kvm, start: int, end: int) -> None:
    ept.unmap_hva_range(kvm, start, end)


@hookimpl
def notifier_age_gfn(kvm: Kvm, start: int, end: int, test: bool) -> bool:
    return ept.age_gfn_range(kvm, start, end, test)


@hookimpl
def stage2_mappings(kvm: Kvm) -> list[Stage2Mapping]:
    return ept.mappings(kvm)


@hookimpl
def stage2_mappings_in(kvm: Kvm, start: int, end: int) -> list[Stage2Mapping]:
    return ept.mappings_in(kvm, start, end)


@hookimpl
def step_kinds() -> list[StepKind]:
    return list(steps.STEP_KINDS)


@hookimpl
def arch_step(kvm: Kvm, vcpu: int, step: StepSpec) -> StepResult | None:
    return steps.arch_step(kvm, vcpu, step)


@hookimpl
def dirty_log_caps(kvm: Kvm) -> DirtyCaps:
    return dirty.caps(kvm)


@hookimpl
def dirty_log_enable(kvm: Kvm, slot: Memslot, enable: bool) -> bool:
    return dirty.enable(kvm, slot, enable)


@hookimpl
def dirty_log_sync(kvm: Kvm, slot: Memslot) -> bool:
    return dirty.sync(kvm, slot)


@hookimpl
def dirty_log_protect(kvm: Kvm, slot: Memslot, gfn_offset: int, mask: int) -> bool:
    return dirty.protect(kvm, slot, gfn_offset, mask)
