"""The mm's young notifier calls (mm/mmu_notifier.c v4.16; kernel-notes §L.8):
clear_young asks every subscriber and ORs, test_young stops at the first
young one; the age helpers call them as their host callers do and leave
the host PTEs alone."""

from __future__ import annotations

from kvmsim.host import Mm, RecordingNotifier, host_write
from kvmsim.host.ageing import notify_clear_young, notify_test_young


class Young(RecordingNotifier):
    """A subscriber for which everything is young."""

    def clear_young(self, mm: Mm, start: int, end: int) -> bool:
        super().clear_young(mm, start, end)
        return True

    def test_young(self, mm: Mm, address: int) -> bool:
        super().test_young(mm, address)
        return True


def test_clear_young_asks_every_subscriber_and_ors(mm: Mm, rec: RecordingNotifier) -> None:
    young = Young()
    last = RecordingNotifier()
    mm.notifiers.register(young)
    mm.notifiers.register(last)
    assert mm.notifiers.clear_young(mm, 0x1000, 0x3000) is True
    # __mmu_notifier_clear_young: no early exit, every subscriber clears
    assert rec.calls == young.calls == last.calls == [("clear_young", 0x1000, 0x3000)]


def test_test_young_stops_at_the_first_young_subscriber(mm: Mm, rec: RecordingNotifier) -> None:
    young = Young()
    last = RecordingNotifier()
    mm.notifiers.register(young)
    mm.notifiers.register(last)
    assert mm.notifiers.test_young(mm, 0x5000) is True
    assert rec.calls == young.calls == [("test_young", 0x5000)]
    assert last.calls == []  # __mmu_notifier_test_young breaks out of the walk
    mm.notifiers.unregister(young)
    assert mm.notifiers.test_young(mm, 0x5000) is False
    assert last.calls == [("test_young", 0x5000)]


def test_the_range_helpers_call_as_their_callers_do(mm: Mm, rec: RecordingNotifier) -> None:
    ps = mm.page_size
    vma = mm.mmap(4 * ps, prot="rw", shared=False)
    host_write(mm, vma.start + ps)
    ptes = sorted(mm.pgtable.items())
    rec.calls.clear()
    # one clear_young over the range; test_young page by page
    assert notify_clear_young(mm, vma.start, vma.end) is False
    assert notify_test_young(mm, vma.start + ps // 2, vma.start + 3 * ps) is False
    assert rec.calls == [
        ("clear_young", vma.start, vma.end),
        ("test_young", vma.start),
        ("test_young", vma.start + ps),
        ("test_young", vma.start + 2 * ps),
    ]
    # the host page table's own accessed bits are not the secondary MMU's
    assert sorted(mm.pgtable.items()) == ptes
