"""``write_to_readonly``: a writable stage-2 leaf over a host page the host
maps read-only (the guest could write where QEMU cannot, e.g. the zero page
or a read-only PFNMAP)."""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    for m in ctx.mappings:
        if not m.writable:
            continue
        hva = ctx.gpa_to_hva(m.gpa)
        if hva is None:
            continue
        host_pfn, host_writable = ctx.host_frame(hva)
        if host_pfn is not None and not host_writable:
            yield Finding(
                "write_to_readonly",
                (m.gpa, m.pfn),
                f"stage-2 leaf at gpa {m.gpa:#x} is writable, "
                f"the host PTE at hva {hva:#x} is read-only",
            )
