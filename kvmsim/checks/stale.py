"""``stale_mapping`` (and ``wrong_frame`` where the host maps nothing).

A leaf resolved before an invalidation of its hva range completed (its
``mmu_seq`` is older than the sequence number that invalidation ended with)
is stale: ``mmu_notifier_retry`` exists to forbid exactly that.  A leaf over
an hva the host does not map, with no such invalidation, maps a frame the
host never put there: a wrong frame, and one outside the memslots too when
no memslot's host mapping has that frame.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    kvm = ctx.kvm
    invalidations = kvm.invalidations
    for m in ctx.mappings:
        hva = ctx.gpa_to_hva(m.gpa)
        if hva is None:
            continue
        end = hva + m.size
        stale = next(
            ((seq, s, e) for seq, s, e in invalidations if seq > m.mmu_seq and s < end and hva < e),
            None,
        )
        if stale is not None:
            yield Finding(
                "stale_mapping",
                (m.gpa, m.pfn, m.mmu_seq),
                f"stage-2 leaf at gpa {m.gpa:#x} (pfn {m.pfn:#x}) was resolved at "
                f"mmu_notifier_seq {m.mmu_seq} and survived the invalidation of "
                f"[{stale[1]:#x}, {stale[2]:#x}) that ended at seq {stale[0]}",
            )
            continue
        host_pfn, _ = ctx.host_frame(hva)
        if host_pfn is None:
            yield Finding(
                "wrong_frame",
                (m.gpa, m.pfn),
                f"stage-2 maps gpa {m.gpa:#x} to pfn {m.pfn:#x} "
                f"but the host maps nothing at hva {hva:#x}",
            )
            if m.pfn not in ctx.memslot_frames():
                yield Finding(
                    "outside_memslot",
                    ("frame", m.gpa, m.pfn),
                    f"pfn {m.pfn:#x} mapped at gpa {m.gpa:#x} backs no memslot",
                )
