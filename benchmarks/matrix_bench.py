"""Time the whole matrix with --jobs 1 and --jobs 2 (not a test: run it by hand).

    python benchmarks/matrix_bench.py

The target on the 2-core machine: the full matrix in under 60 s, and
--jobs 2 faster than --jobs 1.
"""

from __future__ import annotations

import time

from kvmsim.matrix import plan, run


def main() -> None:
    p = plan()
    print(f"{len(p.cells)} cells ({len(p.scenarios)} scenarios x {len(p.columns)} columns)")
    times = {}
    for jobs in (1, 2):
        t0 = time.perf_counter()
        res = run(p, jobs=jobs)
        times[jobs] = time.perf_counter() - t0
        print(f"--jobs {jobs}: {times[jobs]:.2f} s  {res.summary_line()}")
    print(
        f"speed-up with 2 jobs: {times[1] / times[2]:.2f}x; under 60 s: {max(times.values()) < 60}"
    )


if __name__ == "__main__":
    main()
