"""Instructions per whole run of a builtin scenario (callgrind), for the
installed tree: a loop of 3N runs minus a loop of N, so start-up, imports and
the first run cancel out (not a test: run it by hand; needs valgrind).  Run
it under two installs for an A/B figure that the machine's load does not
move, as docs/performance.md does.

    python benchmarks/runs_instructions.py [N] [SCENARIO] [ARCH] [STRATEGY]
"""

from __future__ import annotations

import re
import subprocess
import sys

LOOP = """
import sys
from kvmsim import matrix as mx
from kvmsim.runner import Simulation
n, name, arch, strategy = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
cell = mx.plan(arches=[arch], strategies=[strategy], scenarios=[name]).cells[0]
sc = mx.load_library_scenario(cell.path)
for _ in range(n):
    Simulation(sc, arch=arch, strategy=strategy).run()
"""


VALGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")


def _collected(n: int, args: list[str]) -> int:
    out = subprocess.run(
        [*VALGRIND, sys.executable, "-c", LOOP, str(n), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    m = re.search(r"Collected : (\d+)", out)
    if m is None:
        raise SystemExit(f"no callgrind total in:\n{out[-2000:]}")
    return int(m.group(1))


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 100
    defaults = ["gen-race-munmap-before-create-pte", "x86_ept", "generic_v4_16"]
    args = (argv[1:] + defaults[len(argv[1:]) :])[:3]
    per_run = (_collected(3 * n, args) - _collected(n, args)) / (2 * n)
    print(f"{per_run:,.0f} instructions per run ({' '.join(args)})")


if __name__ == "__main__":
    main(sys.argv[1:])
