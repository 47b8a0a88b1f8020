"""The ground truth of dirty logging: which base pages the guest stored to
since each was last harvested, kept by the core's vcpu loop whatever the
arch's mechanism, and judged against what each harvest reports.

A harvest is ``KVM_GET_DIRTY_LOG`` (fetch and clear: ``consume``), a
manual-protect ``KVM_GET_DIRTY_LOG`` (``peek``: the bitmap is read, not
cleared), ``KVM_CLEAR_DIRTY_LOG`` (``clear``: the pages userspace passes
are re-armed; it copies them afterwards) or a dirty-ring reap (collect and
``KVM_RESET_DIRTY_RINGS``: ``consume``).  Userspace copies a reported page
*after* the harvest returns, so a store is safe when:

- it completed before the harvest began and the harvest reports its page;
- it completed while the harvest ran (another vcpu, a concurrent run) and
  this harvest or the next one reports its page (the harvest may have read
  that page's bit before or after the store);
- with manual protect, a ``clear`` of its page follows it (the copy after
  the clear sees it).

A store that a harvest should have reported and did not is *lost*
(``lost_dirty``), once per store epoch: the page was copied before the store,
or never.  Pages reported that nobody stored to are *spurious*: they cost
bandwidth, not data, and are only counted.  Pages are relative gfns of a
memslot (host base pages, whatever the stage-2 leaf size).
"""

from __future__ import annotations

from collections.abc import Iterable

from attrs import define, field, frozen

__all__ = ["Judgement", "LostPage", "SlotLedger", "StoreLedger"]


@frozen
class LostPage:
    """A base page stored to and not reported by the harvest that should have.

    :param slot: the memslot id.
    :param rel: the page, relative to the slot's base gfn.
    :param harvest: the harvest's sequence number in the run (from 1).
    :param what: the harvest (``KVM_GET_DIRTY_LOG``, ``dirty ring reap``...).
    """

    slot: int
    rel: int
    harvest: int
    what: str


@frozen
class Judgement:
    """What one harvest of one slot was found to be: the pages lost and how
    many it reported that no store explains."""

    lost: tuple[int, ...]
    spurious: int


@define(slots=True)
class SlotLedger:
    """One logging slot's stores not yet accounted for.

    :ivar pending: pages stored to while no harvest of the slot ran: the next
        harvest must report them.
    :ivar during: pages stored to while a harvest ran: it or the next one
        must report them.
    :ivar active: harvests of the slot in progress.
    """

    pending: set[int] = field(factory=set)
    during: set[int] = field(factory=set)
    active: int = 0


class StoreLedger:
    """The guest stores of every logging slot (see the module docstring)."""

    __slots__ = ("harvests", "lost", "slots")

    def __init__(self) -> None:
        self.slots: dict[int, SlotLedger] = {}
        self.lost: list[LostPage] = []
        self.harvests = 0

    # -- what the vcpu loop and the logging ioctls tell it -----------------

    def start(self, slot: int) -> None:
        """``KVM_MEM_LOG_DIRTY_PAGES`` set on ``slot``: stores count from now."""
        self.slots.setdefault(slot, SlotLedger())

    def stop(self, slot: int) -> None:
        """Logging turned off: what was not harvested is no longer judged."""
        self.slots.pop(slot, None)

    def store(self, slot: int, rel: int) -> None:
        """A guest store to page ``rel`` of ``slot`` completed."""
        s = self.slots.get(slot)
        if s is not None:
            (s.during if s.active else s.pending).add(rel)

    def begin(self, slots: Iterable[int]) -> int:
        """A harvest of ``slots`` begins; returns its sequence number."""
        self.harvests += 1
        for sid in slots:
            s = self.slots.get(sid)
            if s is not None:
                s.active += 1
        return self.harvests

    def consume(self, slot: int, reported: Iterable[int], harvest: int, what: str) -> Judgement:
        """A fetch-and-clear harvest (non-manual get, ring reap) of ``slot``
        ended, reporting ``reported``."""
        s = self.slots.get(slot)
        rep = set(reported)
        if s is None:
            return Judgement((), len(rep))
        s.active = max(0, s.active - 1)
        lost = sorted(s.pending - rep)
        spurious = len(rep - s.pending - s.during)
        s.pending = s.during - rep
        s.during = set()
        self._record(slot, lost, harvest, what)
        return Judgement(tuple(lost), spurious)

    def peek(self, slot: int, reported: Iterable[int], harvest: int, what: str) -> Judgement:
        """A manual-protect get of ``slot`` ended: every page stored to since
        its last clear must be reported (it stays owed until cleared)."""
        s = self.slots.get(slot)
        rep = set(reported)
        if s is None:
            return Judgement((), len(rep))
        s.active = max(0, s.active - 1)
        lost = sorted(s.pending - rep)
        spurious = len(rep - s.pending - s.during)
        s.pending -= set(lost)  # reported once per store epoch
        s.pending |= s.during
        s.during = set()
        self._record(slot, lost, harvest, what)
        return Judgement(tuple(lost), spurious)

    def cleared(self, slot: int, passed: Iterable[int]) -> None:
        """A ``KVM_CLEAR_DIRTY_LOG`` of ``slot`` ended: userspace copies the
        pages it passed afterwards, so their stores so far are safe."""
        s = self.slots.get(slot)
        if s is None:
            return
        s.active = max(0, s.active - 1)
        done = set(passed)
        s.pending = (s.pending | s.during) - done
        s.during = set()

    def _record(self, slot: int, lost: list[int], harvest: int, what: str) -> None:
        self.lost.extend(LostPage(slot, rel, harvest, what) for rel in lost)
