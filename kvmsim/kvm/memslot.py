"""Memslots: guest frames to host virtual addresses (include/linux/kvm_host.h)."""

from __future__ import annotations

from bisect import bisect_right

import attrs
from attrs import Factory, field, frozen

from kvmsim.errors import ScenarioError

KVM_MEM_LOG_DIRTY_PAGES = 0x1
KVM_MEM_READONLY = 0x2
KVM_MEMSLOT_INVALID = 1 << 16

# KVM_HVA_ERR_BAD is PAGE_OFFSET: any kernel address is an error hva.
PAGE_OFFSET = 0xC000_0000_0000_0000


@frozen(kw_only=True)
class Memslot:
    """``struct kvm_memory_slot``: ``npages`` guest frames from ``base_gfn``,
    backed by host memory from ``userspace_addr``.  Frames are host PAGE_SIZE."""

    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int = 0
    vma: str = ""
    readonly: bool = field(
        init=False,
        eq=False,
        repr=False,
        default=Factory(lambda self: bool(self.flags & KVM_MEM_READONLY), takes_self=True),
    )
    """``flags & KVM_MEM_READONLY``, computed once: the fault path asks it
    several times per fault and the slot is immutable."""

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.base_gfn + self.npages


class Memslots:
    """The VM's memslots, sorted by ``base_gfn``; overlaps are refused."""

    __slots__ = ("_bases", "page_shift", "slots")

    def __init__(self, page_shift: int) -> None:
        self.page_shift = page_shift
        self.slots: list[Memslot] = []
        self._bases: list[int] = []

    def add(self, slot: Memslot, *, key: str = "memslot") -> None:
        """``KVM_SET_USER_MEMORY_REGION`` for a new slot; -EEXIST on overlap
        becomes a scenario error naming both slots."""
        end = slot.base_gfn + slot.npages
        for other in self.slots:
            if slot.base_gfn < other.base_gfn + other.npages and other.base_gfn < end:
                raise ScenarioError(
                    f"memslot overlaps memslot {other.id} in guest physical space",
                    key=key,
                )
        i = bisect_right(self._bases, slot.base_gfn)
        self.slots.insert(i, slot)
        self._bases.insert(i, slot.base_gfn)

    def set_flags(self, slot: Memslot, flags: int) -> Memslot:
        """``KVM_SET_USER_MEMORY_REGION`` changing only a slot's flags
        (``KVM_MR_FLAGS_ONLY``): a new slot with the same id and range
        replaces it; returns the new slot."""
        new = attrs.evolve(slot, flags=flags)
        i = self.slots.index(slot)
        self.slots[i] = new
        return new

    def by_id(self, sid: int) -> Memslot | None:
        """``id_to_memslot``: the slot with id ``sid``, or None."""
        return next((s for s in self.slots if s.id == sid), None)

    def gfn_to_memslot(self, gfn: int) -> Memslot | None:
        """``gfn_to_memslot``: the slot holding ``gfn``, or None."""
        i = bisect_right(self._bases, gfn) - 1
        if i >= 0:
            s = self.slots[i]
            if gfn < s.base_gfn + s.npages:
                return s
        return None

    def hva_to_gfns(self, start: int, end: int) -> list[tuple[Memslot, int, int]]:
        """For an hva range, each overlapping slot with its gfn range
        ``[gfn_start, gfn_end)`` (as ``kvm_handle_hva_range`` computes it)."""
        shift = self.page_shift
        out = []
        for s in self.slots:
            s_start = s.userspace_addr
            s_end = s_start + (s.npages << shift)
            lo = max(start, s_start)
            hi = min(end, s_end)
            if lo >= hi:
                continue
            gfn_lo = s.base_gfn + ((lo - s_start) >> shift)
            gfn_hi = s.base_gfn + ((hi + (1 << shift) - 1 - s_start) >> shift)
            out.append((s, gfn_lo, gfn_hi))
        return out
