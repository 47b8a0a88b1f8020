"""``poison_mapped``: a hardware-poisoned page reachable by the guest."""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    phys = ctx.kvm.phys
    page = 1 << ctx.kvm.page_shift
    for m in ctx.mappings:
        for i in range(max(1, m.size // page)):
            pfn = m.pfn + i
            if phys.pfn_valid(pfn) and phys.PageHWPoison(pfn):
                yield Finding(
                    "poison_mapped",
                    (m.gpa, pfn),
                    f"stage-2 maps poisoned pfn {pfn:#x} at gpa {m.gpa + i * page:#x}",
                )
                break
