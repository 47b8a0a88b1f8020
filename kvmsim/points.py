"""Yield points: the places in the modelled kernel where another CPU may act.

A point is named where the modelled code reaches it (``kvm.fire_point(name)``
or ``mm.fire_point(name)``).  A sequential scenario uses a point as a race
placement (``at = "before_create_pte"``: a host event runs there, in one
piece); a concurrent one (``concurrent = true``) lets the scheduler switch
to another actor there (:mod:`kvmsim.explore`).  Plugins may reach further
points of their own; the names below are the ones the core and the builtin
handlers reach.  ``kvmsim points`` lists them.
"""

from __future__ import annotations

from typing import Final

#: name -> where it is reached and what has happened there.
POINTS: Final = {
    "after_hva_to_pfn": (
        "arch fault handler, right after hva_to_pfn returned (the frame is resolved, "
        "its reference held, mmu_lock not yet taken)"
    ),
    "before_create_pte": (
        "arch fault handler, just before it takes mmu_lock to check mmu_notifier_retry "
        "and install the stage-2 entry"
    ),
    "mmap_sem_dropped": (
        "host fault handler: VM_FAULT_RETRY dropped mmap_sem (lock_page_or_retry), "
        "before the fault is retried"
    ),
    "hva_to_pfn": (
        "KVM core __gfn_to_pfn_memslot, before the strategy resolves the pfn (after the "
        "handler read mmu_notifier_seq, in handlers that read it first)"
    ),
    "mmu_lock": "before a task takes kvm->mmu_lock (fault path or notifier)",
    "mmu_lock_released": (
        "after a task released kvm->mmu_lock: a fault path has installed (or given up on) "
        "the entry and not yet dropped its page reference (kvm_release_pfn_*)"
    ),
    "mmap_sem": "before a task takes mmap_sem, for read or for write",
    "gup_pinned": "gup took a reference on a page for its caller",
    "invalidate_range_start": (
        "host event: KVM's invalidate_range_start ran (mmu_notifier_count raised, "
        "stage-2 entries of the range zapped); the host page table is not changed yet"
    ),
    "host_pte_changed": (
        "host event: the host page-table entries of the range were changed (cleared, "
        "write-protected, replaced), inside the notifier pair"
    ),
    "invalidate_range_end": (
        "host event: KVM's invalidate_range_end ran (mmu_notifier_seq bumped, count dropped)"
    ),
    "tlb_flush": (
        "host event: the host TLB was flushed for the changed entries (munmap, DONTNEED and "
        "hole punching after invalidate_range_end, or inside it for a dirty page-cache page; "
        "mprotect after the pairs; migration and hugetlb mprotect inside)"
    ),
    "page_freed": (
        "host event: the references the unmapped entries held were dropped after the flush "
        "(tlb_finish_mmu), or a migrated page's old frame released; a page nobody else "
        "holds is free"
    ),
    "handle_userfault": (
        "host fault handler on a userfaultfd range: the page is missing (or, MINOR, "
        "only in the page cache); the fault message is not queued yet and the page "
        "table not checked again (mmap_sem held for read)"
    ),
    "uffd_install": (
        "userfaultfd ioctl (UFFDIO_COPY, ZEROPAGE, CONTINUE): the page is ready, the "
        "page table lock not yet taken to install it"
    ),
}

#: The points a sequential scenario's ``at`` could name before concurrency
#: existed; every point in :data:`POINTS` is accepted now.
LEGACY_POINTS: Final = ("after_hva_to_pfn", "before_create_pte", "mmap_sem_dropped")

#: ``at`` placements that are not a single point: name -> what happens.
PLACEMENTS: Final = {
    "across_create_pte": (
        "sequential placement: the event's invalidate_range_start and page-table change "
        "run at before_create_pte, its invalidate_range_end after the fault returned"
    ),
}

__all__ = ["LEGACY_POINTS", "PLACEMENTS", "POINTS"]
