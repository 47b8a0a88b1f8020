"""``stale_mapping`` (and ``wrong_frame`` where the host maps nothing).

A leaf resolved before an invalidation of one of its base pages' hvas
completed (its ``mmu_seq`` is older than the sequence number that
invalidation ended with) is stale: ``mmu_notifier_retry`` exists to forbid
exactly that.  A base page over an hva the host does not map, with no such
invalidation, maps a frame the host never put there: a wrong frame, and one
outside the memslots too when no memslot's host mapping has that frame.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding
from kvmsim.checks.frames import outside_frame


def check(ctx: CheckContext) -> Iterator[Finding]:
    for m in ctx.mappings:
        s = ctx.scan(m)
        if s.stale is not None:
            seq, start, end = s.stale
            yield Finding(
                "stale_mapping",
                (m.gpa, m.pfn, m.mmu_seq),
                f"stage-2 leaf at gpa {m.gpa:#x} (pfn {m.pfn:#x}) was resolved at "
                f"mmu_notifier_seq {m.mmu_seq} and survived the invalidation of "
                f"[{start:#x}, {end:#x}) that ended at seq {seq}",
            )
        if s.nothing is not None:
            gpa, s2pfn, hva = s.nothing
            yield Finding(
                "wrong_frame",
                (gpa, s2pfn),
                f"stage-2 maps gpa {gpa:#x} to pfn {s2pfn:#x} "
                f"but the host maps nothing at hva {hva:#x}",
            )
        if s.nothing_outside is not None:
            yield outside_frame(*s.nothing_outside)
