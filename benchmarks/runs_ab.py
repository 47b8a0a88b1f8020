"""Whole runs per second of gen-race-munmap-before-create-pte (x86_ept,
generic_v4_16) through ``run_scenario``, which every tree since the first
has: run it under an old revision's install and the new one, in the same
minutes, for the ratio docs/performance.md states (not a test).

    python benchmarks/runs_ab.py N [trace]
"""

from __future__ import annotations

import sys
import time

from kvmsim.runner import run_scenario
from kvmsim.scenario import builtin_scenarios, load_scenario


def main(n: int, trace: bool) -> None:
    path = {p.stem: p for p in builtin_scenarios()}["gen-race-munmap-before-create-pte"]
    sc = load_scenario(path)
    for _ in range(20):  # warm-up: plugin loading, first-use imports
        run_scenario(sc, arch="x86_ept", strategy="generic_v4_16")
    t0 = time.perf_counter()
    for _ in range(n):
        run_scenario(sc, arch="x86_ept", strategy="generic_v4_16", trace=trace)
    dt = time.perf_counter() - t0
    print(f"{n / dt:.0f} runs/s ({dt / n * 1e3:.3f} ms/run){' traced' if trace else ''}")


if __name__ == "__main__":
    main(int(sys.argv[1]), len(sys.argv) > 2)
