"""The host Linux mm model (v4.16 semantics): frames and struct page, vmas,
page tables, the fault handler, the gup family, ``mmap_sem`` and MMU
notifiers, drivers' mappings and host events."""

from kvmsim.host.drivers import (
    Driver,
    map_backing,
    remap_pfn_range,
    unmap_mapping_range,
    vm_insert_mixed,
    vm_insert_page,
    vm_insert_pfn,
    vmf_insert_mixed,
    vmf_insert_pfn,
)
from kvmsim.host.events import (
    host_read,
    host_write,
    memory_failure,
    migrate_page,
    split_thp,
    swap_out,
)
from kvmsim.host.fault import handle_mm_fault
from kvmsim.host.gup import (
    FollowPfnmapArgs,
    __get_user_pages,
    __get_user_pages_fast,
    check_vma_flags,
    fixup_user_fault,
    follow_pfn,
    follow_pfnmap_end,
    follow_pfnmap_start,
    follow_pte,
    get_user_pages,
    get_user_pages_fast,
    get_user_pages_locked,
    get_user_pages_unlocked,
    vm_fault_to_errno,
)
from kvmsim.host.mm import Mm
from kvmsim.host.notifier import MmuNotifier, MmuNotifierChain, RecordingNotifier
from kvmsim.host.pgtable import PageTable
from kvmsim.host.physmem import Anomaly, PhysMem
from kvmsim.host.rwsem import Deadlock, RwSem
from kvmsim.host.vma import File, Vma, VmFault, VmOps, is_cow_mapping

__all__ = [
    "Anomaly",
    "Deadlock",
    "Driver",
    "File",
    "FollowPfnmapArgs",
    "Mm",
    "MmuNotifier",
    "MmuNotifierChain",
    "PageTable",
    "PhysMem",
    "RecordingNotifier",
    "RwSem",
    "VmFault",
    "VmOps",
    "Vma",
    "__get_user_pages",
    "__get_user_pages_fast",
    "check_vma_flags",
    "fixup_user_fault",
    "follow_pfn",
    "follow_pfnmap_end",
    "follow_pfnmap_start",
    "follow_pte",
    "get_user_pages",
    "get_user_pages_fast",
    "get_user_pages_locked",
    "get_user_pages_unlocked",
    "handle_mm_fault",
    "host_read",
    "host_write",
    "is_cow_mapping",
    "map_backing",
    "memory_failure",
    "migrate_page",
    "remap_pfn_range",
    "split_thp",
    "swap_out",
    "unmap_mapping_range",
    "vm_fault_to_errno",
    "vm_insert_mixed",
    "vm_insert_page",
    "vm_insert_pfn",
    "vmf_insert_mixed",
    "vmf_insert_pfn",
]
