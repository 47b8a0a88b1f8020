"""Page ageing as secondary MMUs see it: the mm's young notifier calls
(``include/linux/mmu_notifier.h`` and ``mm/mmu_notifier.c``, v4.16;
kernel-notes §L.8).

The host code that ages pages asks every secondary MMU (KVM) whether it
used a page since the last look: ``mmu_notifier_clear_young`` (idle-page
tracking and reclaim, through ``ptep_clear_young_notify`` /
``pmdp_clear_young_notify``) clears the secondary accessed bits and says
whether any was set; ``mmu_notifier_test_young`` (khugepaged's scan, one
address per PTE) only looks.  Here are those calls and nothing else: the
primary MMU's own accessed bit (``PTE_YOUNG`` in the host page table) is
the caller's business and is left as it is, so a fault after ageing finds
the host PTE as young as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm

__all__ = ["notify_clear_young", "notify_test_young"]


def notify_clear_young(mm: Mm, start: int, end: int) -> bool:
    """``mmu_notifier_clear_young(mm, start, end)``: one call over the whole
    range (a ``pmdp_clear_young_notify`` of a 2M THP is such a call); true
    if any subscriber found something young there, which it cleared."""
    young = mm.notifiers.clear_young(mm, start, end)
    if mm.tracer.enabled:
        mm.tracer.emit("mmu_notifier_clear_young", start=hex(start), end=hex(end), young=young)
    return young


def notify_test_young(mm: Mm, start: int, end: int) -> bool:
    """``mmu_notifier_test_young`` at each host page of ``[start, end)``, as
    khugepaged's scan asks it PTE by PTE; true if any page is young to a
    subscriber.  Nothing changes."""
    ps = mm.page_size
    young = False
    for address in range(start & ~(ps - 1), end, ps):
        hit = mm.notifiers.test_young(mm, address)
        if mm.tracer.enabled:
            mm.tracer.emit("mmu_notifier_test_young", address=hex(address), young=hit)
        young |= hit
    return young
