"""ppc_radix throughput with tracing off: translate hits/s on mapped 64K
pages, and first-touch faults/s (translate → v4.17 handler → generic
hva_to_pfn → host fault → create_pte → translate again).

A plain script, not a test:  python benchmarks/radix_bench.py [--pages N]
"""

from __future__ import annotations

import argparse
import time

from kvmsim.kvm.vcpu import guest_access
from kvmsim.testing import build_sim

SCENARIO = """
name = "radix-bench"
description = "anonymous guest RAM for the benchmark"
arch = "ppc_radix"
[[vma]]
name = "ram"
size = {size}
backing = "anon"
prot = "rw"
[[memslot]]
gpa = 0
vma = "ram"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=4096, help="64K pages to touch")
    ap.add_argument("--hits", type=int, default=200_000, help="translate calls to time")
    ap.add_argument("--strategy", default="generic_v4_16")
    args = ap.parse_args()
    page = 1 << 16
    sim = build_sim(SCENARIO.format(size=args.pages * page), strategy=args.strategy, trace=False)
    kvm = sim.kvm
    sim.mm.current = "vcpu0"
    t0 = time.perf_counter()
    for i in range(args.pages):
        gpa = i * page
        r = guest_access(kvm, 0, gpa, gpa, "write")
        assert r.outcome == "mapped", r
    dt_fault = time.perf_counter() - t0
    translate = kvm.hooks.translate
    n = args.hits
    npages = args.pages
    t0 = time.perf_counter()
    for i in range(n):
        gpa = (i % npages) * page
        t = translate(kvm=kvm, vcpu=0, gpa=gpa, ea=gpa, op="read")
    dt_hit = time.perf_counter() - t0
    assert t.fault is None
    print(f"first-touch faults: {args.pages / dt_fault:12,.0f} /s  ({args.pages} pages, 64K)")
    print(f"translate hits:     {n / dt_hit:12,.0f} /s  ({n} calls)")


if __name__ == "__main__":
    main()
