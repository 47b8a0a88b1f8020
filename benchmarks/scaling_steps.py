"""Cost of a run as its step count grows (not a test: run it by hand).

    python benchmarks/scaling_steps.py [--arch ppc_radix] [--strategy generic_v4_16]
                                       [--steps 250,500,1000,2000,4000] [--repeat 3]

One scenario per step count: an anonymous vma and a memslot of that many
base pages, then one write access per distinct page (each a stage-2 fault
and a new leaf).  Reports wall time of the run (set-up excluded, tracing
off, checkers on: what ``kvmsim run`` does; the best of ``--repeat`` runs)
and the cost per step; the target (issue 22) is 4,000 steps under 2 s and
the cost per step within 1.5x from 250 to 4,000 steps.
"""

from __future__ import annotations

import argparse
import time

from kvmsim.registry import build_manager
from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario


def scenario(steps: int, page: int, arch: str) -> str:
    lines = [
        'name = "scaling"',
        f'arch = "{arch}"',
        "[[vma]]",
        'name = "ram"',
        f"size = {steps * page}",
        'backing = "anon"',
        "[[memslot]]",
        "gpa = 0",
        'vma = "ram"',
    ]
    for i in range(steps):
        lines += ["[[step]]", 'do = "access"', f"gpa = {i * page:#x}", 'op = "write"']
    return "\n".join(lines) + "\n"


def measure(steps: int, arch: str, strategy: str) -> float:
    _, info, _ = build_manager(arch=arch, strategy=strategy, devices=[])
    sc = parse_scenario(scenario(steps, 1 << info.page_shift, arch), "<scaling>")
    sim = Simulation(sc, strategy=strategy)
    t0 = time.perf_counter()
    report = sim.run()
    seconds = time.perf_counter() - t0
    assert report.passed and not report.verdicts, report.unexpected
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ppc_radix")
    ap.add_argument("--strategy", default="generic_v4_16")
    ap.add_argument("--steps", default="250,500,1000,2000,4000")
    ap.add_argument("--repeat", type=int, default=3, help="runs per count; the best is kept")
    args = ap.parse_args()
    counts = [int(n) for n in args.steps.split(",")]
    per: dict[int, float] = {}
    print(f"{args.arch} / {args.strategy}")
    print(f"{'steps':>6} {'seconds':>8} {'us/step':>8}")
    for n in counts:
        s = min(measure(n, args.arch, args.strategy) for _ in range(args.repeat))
        per[n] = s / n
        print(f"{n:>6} {s:>8.3f} {per[n] * 1e6:>8.1f}")
    lo, hi = per[counts[0]], per[counts[-1]]
    print(f"cost per step {counts[-1]} / {counts[0]}: {hi / lo:.2f}x")


if __name__ == "__main__":
    main()
