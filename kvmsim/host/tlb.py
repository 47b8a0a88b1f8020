"""``struct mmu_gather``: unmapped pages are freed after the TLB flush.

Models v4.16 mm/memory.c (``tlb_gather_mmu``, ``__tlb_remove_page_size``,
``tlb_flush_mmu``, ``tlb_finish_mmu``) as read in Kent-Hu/linux-4.15.1 and
lizuobin/linux-4.16.13_tiny4412.  ``zap_pte_range`` clears an entry and
drops the page's rmap at once, but only gathers the page's reference: the
reference goes when the TLB has been flushed, so that no CPU can still
reach the frame through a stale TLB entry once it is reused.  For
``munmap`` (``unmap_region``), ``zap_page_range`` (MADV_DONTNEED) and
``zap_page_range_single`` (hole punching) that is ``tlb_finish_mmu``, after
the MMU notifier pair has ended; ``zap_pte_range`` flushes early, inside the
pair, after a page table that held a dirty page-cache page (``force_flush``,
so writeback cannot miss a store through a stale TLB entry).  The batch is
assumed never to fill (the kernel allocates further batches with
GFP_NOWAIT; their failure would also flush early).

A sequential ``across_create_pte`` placement holds ``invalidate_range_end``
back until the fault returns, but not the flush and the free that follow
it, so there they come first (a limit of that placement, not of the
concurrent model).

Two yield points mark the phases: ``tlb_flush`` (the flush done, the
pages still referenced) and ``page_freed`` (the gathered references
dropped; a page nobody else holds is free).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define, field

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm

__all__ = ["MmuGather", "tlb_flush_mmu"]


@define(slots=True)
class MmuGather:
    """One ``mmu_gather``: the pages whose references wait for the flush.

    :param pages: gathered frames (a compound page once per mapping entry).
    :param flush_needed: some entry was cleared since the last flush
        (``tlb->end`` set by ``__tlb_adjust_range``), special ones included.
    """

    pages: list[int] = field(factory=list)
    flush_needed: bool = False


def tlb_flush_mmu(mm: Mm, tlb: MmuGather) -> None:
    """``tlb_flush_mmu``: flush if an entry was cleared (``tlb_flush_mmu_tlbonly``),
    then drop the gathered references (``tlb_flush_mmu_free``).
    ``tlb_finish_mmu`` is this once more at the end of the unmap."""
    if not tlb.flush_needed:
        return
    tlb.flush_needed = False
    points = bool(mm.race_points) or mm.sched is not None
    if mm.tracer.enabled:
        mm.tracer.emit("tlb_flush", pages=len(tlb.pages))
    if points:
        mm.fire_point("tlb_flush")
    if not tlb.pages:
        return
    pages, tlb.pages = tlb.pages, []
    put = mm.phys.host_put
    for pfn in pages:
        put(pfn)
    if points:
        mm.fire_point("page_freed")
