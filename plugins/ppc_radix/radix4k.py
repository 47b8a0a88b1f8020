"""``ppc_radix_4k``: the POWER9 radix arch with 4K base pages
(CONFIG_PPC_4K_PAGES: radix-4k.h, a 9-bit PTE index), everything else
shared with ``ppc_radix``.

Select it with ``--arch ppc_radix_4k`` (or ``arch = "ppc_radix_4k"`` in a
scenario).  The handler version comes from the strategy's ``ppc_radix_4k``
entry in ``StrategyInfo.handlers``, else its ``ppc_radix`` entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmsim_plugins.ppc_radix import (
    create_pte,
    dirty_log_caps,
    dirty_log_enable,
    dirty_log_sync,
    handle_page_fault,
    init_state,
    make_arch_info,
    notifier_age_gfn,
    notifier_invalidate,
    stage2_mappings,
    stage2_mappings_in,
    translate,
)

from kvmsim import hookimpl
from kvmsim.hooktypes import ArchInfo

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm

NAME = "ppc_radix_4k"
PAGE_SHIFT = 12

# The hot hooks are the very functions of ppc_radix, already marked.
__all__ = [
    "arch_info",
    "arch_init",
    "create_pte",
    "dirty_log_caps",
    "dirty_log_enable",
    "dirty_log_sync",
    "handle_page_fault",
    "notifier_age_gfn",
    "notifier_invalidate",
    "stage2_mappings",
    "stage2_mappings_in",
    "translate",
]


@hookimpl
def arch_info() -> ArchInfo:
    return make_arch_info(NAME, PAGE_SHIFT)


@hookimpl
def arch_init(kvm: Kvm) -> Any:
    return init_state(kvm, (NAME, "ppc_radix"))
