"""What a checker sees."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import define, frozen

from kvmsim.host.pte import pte_pfn, pte_present, pte_write

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Mapping
    from kvmsim.kvm.core import Kvm


@frozen
class Finding:
    """One checker finding: the verdict name, what it is about, a sentence."""

    name: str
    key: Any
    detail: str


@define
class CheckContext:
    """The state after one step.

    :param kvm: the VM (host at ``kvm.mm``/``kvm.phys``, arch at ``kvm.arch``).
    :param outcome: the step's outcome (``oops``, ``deadlock``, ``livelock``...), if any.
    :param detail: the outcome's detail.
    """

    kvm: Kvm
    outcome: str | None = None
    detail: str = ""
    _mappings: list[Stage2Mapping] | None = None
    _slot_frames: set[int] | None = None

    @property
    def mappings(self) -> list[Stage2Mapping]:
        """Present stage-2 leaves, fetched once per step."""
        if self._mappings is None:
            self._mappings = list(self.kvm.hooks.hook.stage2_mappings(kvm=self.kvm) or ())
        return self._mappings

    def memslot_frames(self) -> set[int]:
        """Every frame the host maps inside some memslot's hva range (what the
        guest may legitimately reach), computed once per step and only when a
        checker needs it."""
        if self._slot_frames is None:
            kvm = self.kvm
            ps = kvm.page_shift
            frames: set[int] = set()
            for slot in kvm.memslots.slots:
                for i in range(slot.npages):
                    pfn, _ = self.host_frame(slot.userspace_addr + (i << ps))
                    if pfn is not None:
                        frames.add(pfn)
            self._slot_frames = frames
        return self._slot_frames

    def gpa_to_hva(self, gpa: int) -> int | None:
        """The hva a guest physical address maps to through the memslots."""
        kvm = self.kvm
        slot = kvm.memslots.gfn_to_memslot(gpa >> kvm.page_shift)
        if slot is None:
            return None
        return slot.userspace_addr + (gpa - (slot.base_gfn << kvm.page_shift))

    def host_frame(self, hva: int) -> tuple[int | None, bool]:
        """The frame the host page table maps at ``hva`` (None if no present
        entry) and whether that entry is writable."""
        pte, shift = self.kvm.mm.pgtable.find_linux_pte(hva)
        if pte is None or not pte_present(pte):
            return None, False
        ps = self.kvm.page_shift
        pfn = pte_pfn(pte) + ((hva & ((1 << shift) - 1)) >> ps)
        return pfn, pte_write(pte)


def sample_offsets(size: int, page_size: int) -> range | tuple[int, ...]:
    """Offsets of the base pages of a leaf to check: all of them for up to
    512 pages, else the first, middle and last."""
    n = size // page_size
    if n <= 512:
        return range(0, size, page_size)
    return (0, (n // 2) * page_size, (n - 1) * page_size)
