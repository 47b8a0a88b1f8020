"""A fingerprint of every matrix cell with its full trace (not a test: run it
by hand), to show that a performance change changed no decision.

    python benchmarks/matrix_fingerprint.py before.json   # on the old tree
    python benchmarks/matrix_fingerprint.py after.json    # on the new tree
    cmp before.json after.json

Each cell's full JSON (status, verdicts, outcomes, steps, every trace event;
not its wall time) is hashed with SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import sys

from kvmsim import matrix


def main(out: str) -> None:
    prints = {}
    for spec in matrix.plan().cells:
        cell = matrix.run_cell(spec, trace=True, trace_cap=sys.maxsize).to_json(full=True)
        cell.pop("seconds", None)
        blob = json.dumps(cell, sort_keys=True, default=str).encode()
        prints[f"{spec.scenario}|{spec.arch}|{spec.strategy}"] = hashlib.sha256(blob).hexdigest()
    with open(out, "w", encoding="utf-8") as f:
        json.dump(prints, f, indent=0, sort_keys=True)
    print(f"{len(prints)} cells -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/matrix_fingerprint.py OUT.json")
    main(sys.argv[1])
