"""Segment footprints: what one actor's run between two yield points read
and wrote of the shared state, for the explorer's partial-order reduction
(:mod:`kvmsim.explore.search`).

Nothing here runs in a sequential run, nor in an explored run without the
reduction: :data:`REC` is None and the model's few explicit calls check it.
When a run records, :func:`kvmsim.explore.recorders.install` swaps the classes of the run's shared
objects for recording subclasses (same slots, no new state), so the host
page table, the struct pages, the locks say what they touch, and
:func:`~kvmsim.explore.recorders.uninstall` swaps them back.

Keys (coarse on purpose: a coarse key can only make two segments depend):

- ``("pt", vpn)``: the host base PTE of one page;
- ``("pmd", vpn >> 9)``: the huge leaves (any size) covering one region of
  512 base pages (a lookup reads its region's; a huge leaf writes every
  region it covers);
- ``("page", pfn)``: one struct page (refcount, flags, owner, contents); an
  operation on a page of a compound page also names its head;
- ``("alloc",)``: the frame allocator;
- ``("lock", name)``: ``mmu_lock``, ``mmap_sem`` (taken for read: a read);
- ``("s2", n)``: the stage-2 leaves of the 2M region ``n`` of guest
  physical space (the arch's translate writes their accessed/dirty bits);
- ``("s2",)``: the whole stage-2 structure (everything done under
  ``mmu_lock`` may change it); a one-element key covers every key of its
  kind.

A segment is **opaque** (depends on every other) when it did anything the
recorders do not describe: a host event, a host page fault, an MMU-notifier
call, a checker pass, async page faults, a device, dirty logging,
userfaultfd, a plugin that did not declare ``FOOTPRINTS = True``.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

Key = tuple[Any, ...]

S2: Key = ("s2",)
ALLOC: Key = ("alloc",)


@frozen
class Footprint:
    """One segment's reads and writes (``opaque``: it depends on everything)."""

    reads: frozenset[Key] = frozenset()
    writes: frozenset[Key] = frozenset()
    opaque: bool = False

    def independent(self, other: Footprint) -> bool:
        """Neither writes what the other reads or writes.  A one-element
        key ``(kind,)`` stands for every key of that kind (``("s2",)``: the
        whole stage-2 structure, ``("s2", n)``: the leaves of one region)."""
        if self.opaque or other.opaque:
            return False
        w, ow = self.writes, other.writes
        if not (w.isdisjoint(ow) and w.isdisjoint(other.reads) and ow.isdisjoint(self.reads)):
            return False
        return not (
            _whole_clash(w, ow, other.reads)
            or _whole_clash(ow, w, self.reads)
            or _whole_clash(self.reads, ow, frozenset())
            or _whole_clash(other.reads, w, frozenset())
        )


def _whole_clash(writes: frozenset[Key], other_w: frozenset[Key], other_r: frozenset[Key]) -> bool:
    """A whole-kind key of one side against any key of that kind of the other
    (writes against reads and writes; reads against writes)."""
    for k in writes:
        if len(k) == 1:
            kind = k[0]
            if any(o[0] == kind for o in other_w) or any(o[0] == kind for o in other_r):
                return True
    return False


OPAQUE = Footprint(opaque=True)
EMPTY = Footprint()


class Recorder:
    """The current segment's footprint, as the model reports it."""

    __slots__ = ("opaque", "reads", "writes")

    def __init__(self) -> None:
        self.reads: set[Key] = set()
        self.writes: set[Key] = set()
        self.opaque = False

    def r(self, key: Key) -> None:
        self.reads.add(key)

    def w(self, key: Key) -> None:
        self.writes.add(key)

    def all(self) -> None:
        """Something not described by keys: depends on everything."""
        self.opaque = True

    def take(self) -> Footprint:
        """The segment's footprint; starts the next one."""
        if self.opaque:
            fp = OPAQUE
        elif not self.reads and not self.writes:
            fp = EMPTY  # a segment that touched nothing (common between two points)
        else:
            fp = Footprint(frozenset(self.reads), frozenset(self.writes))
        self.reads = set()
        self.writes = set()
        self.opaque = False
        return fp


#: The recorder of the run in progress, or None (every sequential run).
REC: Recorder | None = None


def stage2(gpa: int, size: int, write: bool) -> None:
    """A leaf of ``size`` bytes covering ``gpa`` read (or written, e.g. its
    accessed/dirty bits): keys ``("s2", n)`` per 2M region it covers."""
    rec = REC
    if rec is None:
        return
    dest = rec.writes if write else rec.reads
    if size <= 1 << 21:
        dest.add(("s2", gpa >> 21))
    else:
        base = (gpa & ~(size - 1)) >> 21
        for n in range(base, base + (size >> 21)):
            dest.add(("s2", n))


def opaque() -> None:
    """Model code outside the recorders' reach: the segment depends on all."""
    rec = REC
    if rec is not None:
        rec.opaque = True


__all__ = ["ALLOC", "OPAQUE", "REC", "S2", "Footprint", "Key", "Recorder", "opaque", "stage2"]
