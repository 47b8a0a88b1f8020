"""Fuzz ``kvmsim run`` with mutated builtin scenarios (not a test: run it by hand).

    python benchmarks/fuzz_scenarios.py [-n 10000] [--seed 0] [--slow 10]

Draws N cases from the test suite's strategies
(``tests/scenario/test_scenario_fuzz.py``: a builtin scenario with values of
the wrong type, huge and negative numbers, unknown keys, deletions, deep
nesting, then maybe truncated or with binary junk; a strategy; maybe an
arch) and runs each as ``kvmsim run FILE --strategy S [--arch A]`` does,
in-process.  Reports how many ended in a verdict (exit 0/1), a clean error
(exit 2), an internal error (exit 3) or an escaping exception, and how many
took longer than ``--slow`` seconds; prints each bad case's scenario and
message.  Targets (issue 22): 0 tracebacks, 0 runs over 10 s.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "scenario"))
import test_scenario_fuzz as fuzz


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="cases to run (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slow", type=float, default=10.0, help="seconds that count as slow")
    args = ap.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    bad: list[str] = []
    slowest = [0.0, ""]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzzed.toml"

        @seed(args.seed)
        @settings(
            max_examples=args.n,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(fuzz.fuzz_runs)
        def one(case: Any) -> None:
            t0 = time.perf_counter()
            rc, err = fuzz.run_fuzzed(case, path)
            took = time.perf_counter() - t0
            kind = {0: "verdict", 1: "verdict", 2: "clean error", 3: "internal error"}.get(
                rc, "exception escaped"
            )
            counts[kind] += 1
            if took > slowest[0]:
                slowest[:] = [took, case[0][0]]
            if took > args.slow:
                counts["slow"] += 1
                bad.append(f"slow {took:.1f} s: {case[0][0]} {case[1]} {case[2]}")
            if rc not in (0, 1, 2):
                bad.append(f"{kind}: {case[0][0]} {case[1]} {case[2]}: {err.strip()[:300]}")
            if took > args.slow or rc not in (0, 1, 2):
                keep = Path(tempfile.gettempdir()) / f"kvmsim-fuzz-{args.seed}-{len(bad)}.toml"
                keep.write_bytes(case[0][1])
                bad[-1] += f" [{keep}]"

        one()
    kinds = ("verdict", "clean error", "internal error", "exception escaped")
    total = sum(counts[k] for k in kinds)
    print(f"{total} fuzzed runs in {time.perf_counter() - t_all:.0f} s (seed {args.seed})")
    for k in kinds:
        print(f"  {k:18} {counts[k]}")
    over = f"over {args.slow:g} s"
    print(f"  {over:18} {counts['slow']}  (slowest {slowest[0]:.2f} s: {slowest[1]})")
    for line in bad[:50]:
        print("  " + line)


if __name__ == "__main__":
    main()
