"""``refcount_leak`` and ``refcount_underflow``.

In the kernels modelled, stage-2 entries hold no page reference (MMU
notifiers keep them coherent), so once a step is over every reference on a
page belongs to the host: any reference more is a leak, any fewer (or a put
below zero, or a page freed while its driver still owns it) an underflow.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    phys = ctx.kvm.phys
    for pfn, delta in sorted(phys.others_refs().items()):
        if delta > 0:
            yield Finding(
                "refcount_leak",
                ("leak", pfn, delta),
                f"pfn {pfn:#x} has {delta} reference(s) nobody will drop",
            )
        elif delta < 0:
            yield Finding(
                "refcount_underflow",
                ("under", pfn, delta),
                f"pfn {pfn:#x} lost {-delta} reference(s) its owner still counts on",
            )
    for anomaly in phys.clear_anomalies():
        if anomaly.kind == "refcount_underflow":
            yield Finding(
                "refcount_underflow", ("anomaly", anomaly.pfn, anomaly.detail), anomaly.detail
            )
