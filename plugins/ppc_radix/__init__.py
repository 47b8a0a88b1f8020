"""POWER9 radix (partition-scoped) MMU under KVM HV, with the fault handler
of v4.15, v4.16, v4.17 or v6.13 as the selected strategy names.

Two arch entry points share this code: ``ppc_radix`` (64K base pages, as
ppc64 distributions build) and ``ppc_radix_4k`` (:mod:`.radix4k`, 4K base
pages).  Stage-2 leaves: the base page, 2M (PMD) and 1G (PUD; v4.17 only);
a 52-bit guest real address space.  Dirty logging (the core ``dirty_log``
step, mode ``dirty_bit``): the partition-scoped C bits, :mod:`.dirty`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvmsim_plugins.ppc_radix import dirty, handler, mmu
from kvmsim_plugins.ppc_radix.tree import GPA_BITS, PMD_SIZE, PUD_SIZE

from kvmsim import hookimpl
from kvmsim.hooktypes import ArchInfo, DirtyCaps, Stage2Mapping
from kvmsim.sources import read_from

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot

NAME = "ppc_radix"
PAGE_SHIFT = 16  # ppc64 distributions build with 64K pages
VERSIONS = ("v4.15", "v4.16", "v4.17", "v6.13")
DEFAULT_VERSION = "v4.17"
# the module holding each version's body
VERSION_MODULES = {
    "v4.15": "handler_v4_15",
    "v4.16": "handler_v4_15",
    "v4.17": "handler_v4_17",
    "v6.13": "handler_v6_13",
}


def make_arch_info(name: str, page_shift: int) -> ArchInfo:
    """The identity card of a radix arch entry point with this base page size."""
    kb = (1 << page_shift) >> 10
    return ArchInfo(
        name=name,
        description=(
            f"POWER9 radix partition-scoped MMU (KVM HV), {kb}K base pages, "
            f"{GPA_BITS}-bit guest real addresses; fault handler v4.15/v4.16/v4.17/v6.13"
        ),
        page_shift=page_shift,
        page_sizes=(1 << page_shift, PMD_SIZE, PUD_SIZE),
        # powerpc never defines __KVM_HAVE_READONLY_MEM: the handlers' read-only
        # slot branches exist in the source but userspace cannot reach them
        readonly_memslots=False,
        handler_sources={
            v: read_from(importlib.import_module(f"{__name__}.{m}").__doc__)
            for v, m in VERSION_MODULES.items()
        },
    )


def init_state(kvm: Kvm, names: tuple[str, ...]) -> mmu.RadixState:
    """``kvmppc_init_vm_radix``: an empty tree, and the handler version the
    strategy selects under the first of ``names`` it lists (else its default)."""
    handlers = kvm.strategy.handlers
    version = next((handlers[n] for n in names if handlers.get(n)), "") or kvm.handler
    version = version or DEFAULT_VERSION
    if version not in VERSIONS:
        from kvmsim.errors import PluginError

        raise PluginError(
            f"{names[0]} has no fault handler version {version!r} "
            f"(strategy {kvm.strategy.name!r}); it has {', '.join(VERSIONS)}"
        )
    kvm.handler = version
    return mmu.RadixState(kvm.page_shift, version)


@hookimpl
def arch_info() -> ArchInfo:
    return make_arch_info(NAME, PAGE_SHIFT)


@hookimpl
def arch_init(kvm: Kvm) -> Any:
    return init_state(kvm, (NAME,))


# the walk itself is the hook implementation (no wrapper call per access)
translate = hookimpl(specname="translate")(mmu.translate_access)


# the fault entry and kvmppc_create_pte are the hook implementations
# themselves (same signatures): no wrapper call per fault
handle_page_fault = hookimpl(specname="handle_page_fault")(handler.page_fault)
create_pte = hookimpl(specname="create_pte")(mmu.create_pte)


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


@hookimpl
def dirty_log_caps(kvm: Kvm) -> DirtyCaps:
    return dirty.CAPS


@hookimpl
def dirty_log_enable(kvm: Kvm, slot: Memslot, enable: bool) -> bool:
    return dirty.enable(kvm, slot, enable)


@hookimpl
def dirty_log_sync(kvm: Kvm, slot: Memslot) -> bool:
    return dirty.sync(kvm, slot)
