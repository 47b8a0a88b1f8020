"""What a checker sees."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen

from kvmsim.checks import leaves
from kvmsim.checks.leaves import Intervals, LeafScan

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
    :param mappings: the stage-2 leaves to judge; None: every present leaf
        (an incremental check passes only the leaves whose inputs changed).
    :param slot_frames: the frames the host maps inside the memslots, if the
        caller already has them.
    """

    kvm: Kvm
    outcome: str | None = None
    detail: str = ""
    _mappings: list[Stage2Mapping] | None = None
    _slot_frames: Intervals | None = None
    _scans: dict[Stage2Mapping, LeafScan] = field(factory=dict)

    @property
    def mappings(self) -> list[Stage2Mapping]:
        """The leaves to judge, fetched once per step."""
        if self._mappings is None:
            self._mappings = list(self.kvm.hooks.hook.stage2_mappings(kvm=self.kvm) or ())
        return self._mappings

    def memslot_frames(self) -> Intervals:
        """Every frame the host maps inside some memslot's hva range (what the
        guest may legitimately reach), computed once per step and only when a
        checker needs it."""
        if self._slot_frames is None:
            self._slot_frames = leaves.slot_frames(self.kvm)
        return self._slot_frames

    def scan(self, m: Stage2Mapping) -> LeafScan:
        """Every base page of ``m`` judged (:func:`kvmsim.checks.leaves.scan_leaf`),
        once per step for the checkers that share it."""
        s = self._scans.get(m)
        if s is None:
            s = self._scans[m] = leaves.scan_leaf(self.kvm, m, self.memslot_frames)
        return s

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
        return leaves.host_frame(self.kvm, hva)
