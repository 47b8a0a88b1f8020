"""Observables: what one step showed, on the real host or in the model.

Only what both sides can show is compared: the outcome class, the value a
load saw, the frame kind, the size of a newly created leaf, and the dirty
bitmap a ``KVM_GET_DIRTY_LOG`` returned.  ``None`` means "not observed".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attrs import define, field, frozen


@frozen
class Obs:
    """One step's observables.

    :param outcome: ``mapped``, ``mmio``, ``efault``, ``sigbus``, ``hang`` for
        an access (the model may also say ``oops``, ``livelock``...);
        ``done`` for a host event; ``error: ...`` for a run that broke.
    :param value: what a load returned.
    :param frame: the frame kind: ``zero``, ``thp new``, ``4k same@2``... (see
        :class:`FrameLabeller`).
    :param leaf: bytes of the stage-2 leaf the step created, if it created one.
    :param dirty: the gpas a dirty-log ``get`` reported, sorted.
    :param faulted: the access took a stage-2 fault (real: ``pf_taken`` rose).
    """

    outcome: str | None
    value: int | None = None
    frame: str | None = None
    leaf: int | None = None
    dirty: tuple[int, ...] | None = None
    faulted: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "value": self.value,
            "frame": self.frame,
            "leaf": self.leaf,
            "dirty": None if self.dirty is None else list(self.dirty),
        }

    def render(self) -> str:
        bits = [self.outcome or "-"]
        if self.value is not None:
            bits.append(f"v={self.value:#x}")
        if self.frame is not None:
            bits.append(self.frame)
        if self.leaf is not None:
            bits.append(
                f"leaf={self.leaf >> 10}K" if self.leaf < 1 << 20 else f"leaf={self.leaf >> 20}M"
            )
        if self.dirty is not None:
            bits.append("dirty=[" + ",".join(f"{g:#x}" for g in self.dirty) + "]")
        return " ".join(bits)


@define
class FrameLabeller:
    """Names frames so the real host's pfns and the model's can be compared.

    ``zero`` for the (huge) zero page; otherwise ``thp`` or ``4k``, then
    ``new`` for a frame no earlier step saw, or ``same@K`` for the frame step
    K saw first (a host write's frame included).
    """

    seen: dict[int, int] = field(factory=dict)  # pfn -> the step that saw it first

    def label(self, step: int, pfn: int | None, *, zero: bool, thp: bool) -> str | None:
        if pfn is None:
            return None
        if zero:
            return "zero"
        size = "thp" if thp else "4k"
        first = self.seen.setdefault(pfn, step)
        return f"{size} new" if first == step else f"{size} same@{first}"

    def forget(self, pfn: int) -> None:
        """The host freed the frame: if the allocator hands it out again it is
        a new page (the model never reuses a frame, so it would say new)."""
        self.seen.pop(pfn, None)


def bitmap_gpas(bitmap: bytes, base_gpa: int, page: int = 4096) -> tuple[int, ...]:
    """The gpas of the set bits of a ``KVM_GET_DIRTY_LOG`` bitmap (little-endian longs)."""
    out = []
    for byte_i, byte in enumerate(bitmap):
        while byte:
            bit = (byte & -byte).bit_length() - 1
            out.append(base_gpa + (byte_i * 8 + bit) * page)
            byte &= byte - 1
    return tuple(out)


def sorted_gpas(gpas: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(set(gpas)))
