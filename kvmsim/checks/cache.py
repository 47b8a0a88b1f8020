"""``cache_attr_mismatch``: an I/O frame (no struct page) mapped cacheable,
or RAM mapped cache-inhibited.  Either breaks the device or coherency."""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    phys = ctx.kvm.phys
    for m in ctx.mappings:
        io = not phys.pfn_valid(m.pfn)
        if io and not m.noncached:
            yield Finding(
                "cache_attr_mismatch",
                (m.gpa, m.pfn, "io"),
                f"I/O pfn {m.pfn:#x} mapped cacheable at gpa {m.gpa:#x}",
            )
        elif not io and m.noncached:
            yield Finding(
                "cache_attr_mismatch",
                (m.gpa, m.pfn, "ram"),
                f"RAM pfn {m.pfn:#x} mapped cache-inhibited at gpa {m.gpa:#x}",
            )
