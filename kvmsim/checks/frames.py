"""``wrong_frame`` and ``outside_memslot``.

A stage-2 leaf must map, for each base page it covers, the frame the host
page table maps at the corresponding hva, and each of its base pages must be
inside a memslot.  When a page maps something else, and that frame is not
mapped by the host anywhere inside the guest's memslots, the guest reached
memory outside its memslots as well.  Each kind is reported at the first
base page (in gpa order) of the leaf that shows it; pages the host maps
nothing at are :mod:`kvmsim.checks.stale`'s.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    for m in ctx.mappings:
        s = ctx.scan(m)
        if s.noslot is not None:
            gpa, s2pfn = s.noslot
            yield Finding(
                "outside_memslot",
                ("noslot", gpa, s2pfn),
                f"stage-2 maps gpa {gpa:#x} (pfn {s2pfn:#x}) that no memslot covers",
            )
        if s.other is not None:
            gpa, s2pfn, hva, host_pfn = s.other
            yield Finding(
                "wrong_frame",
                (gpa, s2pfn),
                f"stage-2 maps gpa {gpa:#x} to pfn {s2pfn:#x}, "
                f"the host maps hva {hva:#x} to pfn {host_pfn:#x}",
            )
        if s.other_outside is not None:
            yield outside_frame(*s.other_outside)


def outside_frame(gpa: int, s2pfn: int) -> Finding:
    """``outside_memslot`` for a frame no memslot's host mapping has."""
    return Finding(
        "outside_memslot",
        ("frame", gpa, s2pfn),
        f"pfn {s2pfn:#x} mapped at gpa {gpa:#x} backs no memslot",
    )
