"""POWER9 radix (partition-scoped) MMU under KVM HV, with the fault handler
of v4.15, v4.16 or v4.17 as the selected strategy names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmsim_plugins.ppc_radix import handler, mmu
from kvmsim_plugins.ppc_radix.tree import PMD_SIZE, PUD_SIZE

from kvmsim import hookimpl
from kvmsim.hooktypes import ArchInfo, FaultResult, Stage2Mapping, Translation

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Fault
    from kvmsim.kvm.core import Kvm

NAME = "ppc_radix"
PAGE_SHIFT = 16  # ppc64 distributions build with 64K pages
VERSIONS = ("v4.15", "v4.16", "v4.17")


@hookimpl
def arch_info() -> ArchInfo:
    return ArchInfo(
        name=NAME,
        description="POWER9 radix partition-scoped MMU (KVM HV), fault handler v4.15/v4.16/v4.17",
        page_shift=PAGE_SHIFT,
        page_sizes=(1 << PAGE_SHIFT, PMD_SIZE, PUD_SIZE),
    )


@hookimpl
def arch_init(kvm: Kvm) -> Any:
    version = kvm.handler or "v4.17"
    if version not in VERSIONS:
        raise ValueError(f"ppc_radix has no fault handler version {version!r}; it has {VERSIONS}")
    return mmu.RadixState(kvm.page_shift, version)


@hookimpl
def translate(kvm: Kvm, vcpu: int, gpa: int, ea: int, op: str) -> Translation:
    return mmu.translate(kvm, gpa, ea, op)


@hookimpl
def handle_page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    return handler.page_fault(kvm, vcpu, fault)


@hookimpl
def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    return mmu.create_pte(kvm, gpa, pte, level, mmu_seq)


@hookimpl
def notifier_invalidate(kvm: Kvm, start: int, end: int) -> None:
    mmu.unmap_hva_range(kvm, start, end)


@hookimpl
def stage2_mappings(kvm: Kvm) -> list[Stage2Mapping]:
    return mmu.mappings(kvm)
