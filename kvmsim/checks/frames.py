"""``wrong_frame`` and ``outside_memslot``.

A stage-2 leaf must map, for each page it covers, the frame the host page
table maps at the corresponding hva.  When it maps something else, and that
frame is not mapped by the host anywhere inside the guest's memslots, the
guest reached memory outside its memslots as well.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding, sample_offsets


def check(ctx: CheckContext) -> Iterator[Finding]:
    kvm = ctx.kvm
    page = 1 << kvm.page_shift
    for m in ctx.mappings:
        for off in sample_offsets(m.size, page):
            gpa = m.gpa + off
            s2pfn = m.pfn + off // page
            hva = ctx.gpa_to_hva(gpa)
            if hva is None:
                yield Finding(
                    "outside_memslot",
                    ("noslot", gpa, s2pfn),
                    f"stage-2 maps gpa {gpa:#x} (pfn {s2pfn:#x}) that no memslot covers",
                )
                break
            host_pfn, _ = ctx.host_frame(hva)
            if host_pfn is None:
                continue  # the host maps nothing there: stale or wrong, see stale.py
            if host_pfn != s2pfn:
                yield Finding(
                    "wrong_frame",
                    (gpa, s2pfn),
                    f"stage-2 maps gpa {gpa:#x} to pfn {s2pfn:#x}, "
                    f"the host maps hva {hva:#x} to pfn {host_pfn:#x}",
                )
                if s2pfn not in ctx.memslot_frames():
                    yield Finding(
                        "outside_memslot",
                        ("frame", gpa, s2pfn),
                        f"pfn {s2pfn:#x} mapped at gpa {gpa:#x} backs no memslot",
                    )
                break
