"""Schedules per second of one exhaustive exploration, with and without the
partial-order reduction, repeated in one process (not a test: run it by
hand; the figures go to docs/performance.md).

    python benchmarks/explore_rate.py [SCENARIO ARCH STRATEGY [BOUND [REPEAT]]]

Defaults: gen-base-munmap-first-touch x86_ept follow_pfn_2024, bound 2,
5 repeats after one warm-up exploration.
"""

from __future__ import annotations

import sys
import time

from kvmsim import matrix as mx
from kvmsim.explore.search import explore


def main(argv: list[str]) -> None:
    name, arch, strategy = (
        argv[:3] + ["gen-base-munmap-first-touch", "x86_ept", "follow_pfn_2024"][len(argv[:3]) :]
    )
    bound = int(argv[3]) if len(argv) > 3 else 2
    repeat = int(argv[4]) if len(argv) > 4 else 5
    (cell,) = mx.plan(scenarios=[name], arches=[arch], strategies=[strategy]).cells
    sc = mx.load_library_scenario(cell.path)
    for por in (False, True):
        explore(sc, arch, strategy, bound=bound, por=por)
        t = time.perf_counter()
        for _ in range(repeat):
            e = explore(sc, arch, strategy, bound=bound, por=por)
        dt = time.perf_counter() - t
        print(
            f"por={por}: {e.schedules} schedules ({e.redundant} redundant), "
            f"{repeat * e.schedules / dt:.0f} schedules/s"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
