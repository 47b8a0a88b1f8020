"""Checking after each step only what the step could have changed.

Judging every stage-2 leaf after every step makes a run quadratic in its
length.  A leaf's verdicts depend on the leaf itself, on the host page table
at its hvas, on the invalidations that reached its hvas, and (for
``outside_memslot``) on which frames the host maps inside the memslots.  So
after a step the leaves judged are:

- those the arch reported installing or changing (``kvm.stage2_changed``);
- those over hvas whose host page-table entry was written or cleared
  (``PageTable``'s touched sets) or that an invalidation reached;
- when the host page table changed anywhere, those that had a wrong base
  page at their last check (their ``outside_memslot`` depends on the frames
  the host maps elsewhere).

Every leaf is judged after the first step, and after a step this cannot
follow (a plugin's own step kind, a device step, a poison), and always when
the arch does not implement ``stage2_mappings_in`` (it then does not report
its changes either).  A leaf nothing touched has the verdicts it had, all
already reported, so the verdicts are those of a full rescan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim.checks.context import CheckContext

if TYPE_CHECKING:
    from kvmsim.checks.leaves import Intervals
    from kvmsim.hooktypes import Stage2Mapping
    from kvmsim.kvm.core import Kvm

TRACKED_STEPS = frozenset(
    {"access", "munmap", "mprotect", "migrate", "split_thp", "host_write", "host_read"}
)
"""Step kinds whose every effect on the checkers' inputs is tracked; after
any other (``poison`` changes page flags, plugin steps change anything) the
next check judges every leaf."""


class StepChecks:
    """One simulation's incremental checking state.

    :param kvm: the VM; change recording starts now, so the first
        :meth:`context` judges every leaf.
    :param always_full: judge every leaf after every step (what the
        incremental checking is tested against).
    """

    __slots__ = ("_armed", "_frames", "_full", "_invalidations", "_ranged", "_watch", "kvm")

    def __init__(self, kvm: Kvm, *, always_full: bool = False) -> None:
        self.kvm = kvm
        self._full = True
        self._armed = False
        self._ranged: bool | None = False if always_full else None
        self._invalidations = 0
        self._watch: set[tuple[int, int]] = set()
        self._frames: Intervals | None = None
        kvm.stage2_dirty = []
        kvm.mm.pgtable.ptes.touched = set()
        kvm.mm.pgtable.huge_touched = set()

    def context(self, do: str, armed: bool, outcome: str | None, detail: str) -> CheckContext:
        """The context for the check after a step of kind ``do``; ``armed``:
        the step only armed a host event for a later fault (it then runs
        inside the next access, whose check must see its effects)."""
        if do not in TRACKED_STEPS:
            if armed:
                self._armed = True
            else:
                self._full = True
        elif do == "access" and self._armed:
            self._armed = False
            self._full = True
        leaves = self._changed()
        return CheckContext(self.kvm, outcome, detail, mappings=leaves, slot_frames=self._frames)

    def done(self, ctx: CheckContext) -> None:
        """After the checkers ran on ``ctx``: keep what the next step reuses."""
        self._frames = ctx.memslot_frames() if ctx.has_slot_frames else self._frames
        for m in ctx.mappings:
            s = ctx.scan(m)
            if s.other is not None or s.nothing is not None:
                self._watch.add((m.gpa, m.gpa + m.size))

    def _changed(self) -> list[Stage2Mapping] | None:
        """The leaves to judge now (None: every leaf); drains the records."""
        kvm = self.kvm
        pgt = kvm.mm.pgtable
        touched, htouched = pgt.ptes.touched, pgt.huge_touched
        assert touched is not None and htouched is not None and kvm.stage2_dirty is not None
        dirty = kvm.stage2_dirty
        inv = kvm.invalidations
        new_inv = inv[self._invalidations :]
        self._invalidations = len(inv)
        host_changed = bool(touched or htouched)
        if host_changed:
            self._frames = None
        if self._ranged is None:
            self._ranged = kvm.hooks.hook.stage2_mappings_in(kvm=kvm, start=0, end=0) is not None
        if self._full or not self._ranged:
            self._full = False
            touched.clear()
            htouched.clear()
            dirty.clear()
            self._watch.clear()
            return None
        ps = kvm.page_shift
        gpas: list[tuple[int, int]] = [(g, g + 1) for g in dirty]
        dirty.clear()
        hvas: list[tuple[int, int]] = [(s, e) for _, s, e in new_inv]
        hvas.extend((i << sh, (i + 1) << sh) for sh, i in htouched)
        htouched.clear()
        if touched:
            hvas.extend((lo << ps, hi << ps) for lo, hi in _runs(sorted(touched)))
            touched.clear()
        for s, e in hvas:
            for _slot, glo, ghi in kvm.memslots.hva_to_gfns(s, e):
                gpas.append((glo << ps, ghi << ps))
        if host_changed:
            gpas.extend(self._watch)
            self._watch.clear()
        if not gpas:
            return []
        found: dict[Stage2Mapping, None] = {}
        query = kvm.hooks.hook.stage2_mappings_in
        for lo, hi in _runs_of_spans(gpas):
            for m in query(kvm=kvm, start=lo, end=hi) or ():
                found[m] = None
        return sorted(found, key=lambda m: m.gpa)


def _runs(vpns: list[int]) -> list[tuple[int, int]]:
    """Sorted ints as ``[lo, hi)`` runs of consecutive values."""
    out: list[tuple[int, int]] = []
    for v in vpns:
        if out and out[-1][1] == v:
            out[-1] = (out[-1][0], v + 1)
        else:
            out.append((v, v + 1))
    return out


def _runs_of_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[lo, hi)`` spans merged where they overlap or touch, ascending."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out
