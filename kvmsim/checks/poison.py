"""``poison_mapped``: a hardware-poisoned page reachable by the guest.

Poisoned frames are few: rather than asking every base page of every leaf
(262,144 of them in a 1G leaf of 4K pages), the checker asks only the
frames that can be poisoned (each frame ``SetPageHWPoison`` was called on,
and the pages of a poisoned hugetlb head) that fall inside the leaf.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    phys = ctx.kvm.phys
    if not phys.poisoned:
        return
    # every page of such a span is PageHWPoison: the frame itself, or a
    # page of a hugetlb page whose head is poisoned
    spans = []
    for p in sorted(phys.poisoned):
        huge = p in phys.order and phys.PageHuge(p)
        spans.append((p, p + (1 << phys.order[p] if huge else 1)))
    page = 1 << ctx.kvm.page_shift
    for m in ctx.mappings:
        lo, hi = m.pfn, m.pfn + max(1, m.size // page)
        for pfn in sorted(max(a, lo) for a, b in spans if a < hi and lo < b):
            if phys.pfn_valid(pfn) and phys.PageHWPoison(pfn):
                yield Finding(
                    "poison_mapped",
                    (m.gpa, pfn),
                    f"stage-2 maps poisoned pfn {pfn:#x} at gpa {m.gpa + (pfn - m.pfn) * page:#x}",
                )
                break
