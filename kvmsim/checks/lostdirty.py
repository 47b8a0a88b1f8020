"""``lost_dirty`` and ``dirty_log_overflow``.

``lost_dirty``: a guest store to a base page (after the page was last
harvested) that the next harvest did not report: live migration would copy
that page before the store, or never, and the destination would run with
stale data.  The core records every completed guest store per base page,
whatever the stage-2 leaf size and whatever the arch's mechanism, and each
harvest is judged against that record (:mod:`kvmsim.kvm.ledger`, which says
when a store made during a harvest may wait for the next one).  Pages a
harvest reports that nobody stored to are only counted in the trace.

``dirty_log_overflow``: a dirty ring (or a hardware log buffer) dropped an
entry because it was full.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    kvm = ctx.kvm
    d = kvm.dirty
    shift = kvm.page_shift
    for lost in d.ledger.lost:
        slot = kvm.memslots.by_id(lost.slot)
        gpa = ((0 if slot is None else slot.base_gfn) + lost.rel) << shift
        yield Finding(
            "lost_dirty",
            (lost.slot, lost.rel, lost.harvest),
            f"the guest stored to gpa {gpa:#x} (memslot {lost.slot}) since the page "
            f"was last harvested, and {lost.what} (harvest {lost.harvest}) did not "
            "report it",
        )
    for i, what in enumerate(d.overflows):
        yield Finding("dirty_log_overflow", i, what)
