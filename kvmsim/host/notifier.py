"""The MMU-notifier chain of an mm (``mm/mmu_notifier.c``, v4.16).

Subscribers (KVM) implement the callbacks of :class:`MmuNotifier`; the chain
calls every subscriber in registration order.  Which host events fire which
callbacks is in kernel-notes §L.4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm

__all__ = ["MmuNotifier", "MmuNotifierChain", "RecordingNotifier"]


class MmuNotifier(Protocol):
    """``struct mmu_notifier_ops`` as KVM implements it (kernel-notes §A.10)."""

    def invalidate_range_start(self, mm: Mm, start: int, end: int) -> None: ...

    def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None: ...

    def change_pte(self, mm: Mm, address: int, pte: int) -> None: ...

    def clear_young(self, mm: Mm, start: int, end: int) -> bool: ...

    def test_young(self, mm: Mm, address: int) -> bool: ...

    def release(self, mm: Mm) -> None: ...


class MmuNotifierChain:
    """``mm->mmu_notifier_mm``: the registered notifiers, called in order."""

    __slots__ = ("subscribers",)

    def __init__(self) -> None:
        self.subscribers: list[MmuNotifier] = []

    def register(self, sub: MmuNotifier) -> None:
        """``mmu_notifier_register``."""
        self.subscribers.append(sub)

    def unregister(self, sub: MmuNotifier) -> None:
        """``mmu_notifier_unregister`` (without the release callback)."""
        self.subscribers.remove(sub)

    def invalidate_range_start(self, mm: Mm, start: int, end: int) -> None:
        """``mmu_notifier_invalidate_range_start``."""
        for sub in self.subscribers:
            sub.invalidate_range_start(mm, start, end)

    def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        """``mmu_notifier_invalidate_range_end`` (also ``..._only_end``)."""
        for sub in self.subscribers:
            sub.invalidate_range_end(mm, start, end)

    def change_pte(self, mm: Mm, address: int, pte: int) -> None:
        """``mmu_notifier_change_pte`` (from ``set_pte_at_notify``)."""
        for sub in self.subscribers:
            sub.change_pte(mm, address, pte)

    def clear_young(self, mm: Mm, start: int, end: int) -> bool:
        """``mmu_notifier_clear_young``: true if any subscriber saw it young."""
        young = False
        for sub in self.subscribers:
            young |= bool(sub.clear_young(mm, start, end))
        return young

    def test_young(self, mm: Mm, address: int) -> bool:
        """``mmu_notifier_test_young``: one address; the first subscriber
        that says young ends the walk (nothing is cleared)."""
        for sub in self.subscribers:
            if sub.test_young(mm, address):
                return True
        return False

    def release(self, mm: Mm) -> None:
        """``mmu_notifier_release`` (process exit)."""
        for sub in self.subscribers:
            sub.release(mm)


class RecordingNotifier:
    """A subscriber that records every call as a tuple; for tests and checkers."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def invalidate_range_start(self, mm: Mm, start: int, end: int) -> None:
        self.calls.append(("start", start, end))

    def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        self.calls.append(("end", start, end))

    def change_pte(self, mm: Mm, address: int, pte: int) -> None:
        self.calls.append(("change_pte", address, pte))

    def clear_young(self, mm: Mm, start: int, end: int) -> bool:
        self.calls.append(("clear_young", start, end))
        return False

    def test_young(self, mm: Mm, address: int) -> bool:
        self.calls.append(("test_young", address))
        return False

    def release(self, mm: Mm) -> None:
        self.calls.append(("release",))
