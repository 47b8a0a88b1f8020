"""Incremental checking gives the verdicts of a full rescan.

Every builtin scenario runs in one of its matrix cells, once with the
checkers judging only
what each step changed and once judging every leaf after every step; the
reports (steps, outcomes, verdicts with their steps and details) must be
identical.  ``benchmarks/matrix_fingerprint.py`` does the same over every
cell with full traces.
"""

from __future__ import annotations

import pytest

from kvmsim import matrix
from kvmsim.checks.incremental import StepChecks
from kvmsim.runner import Simulation


def _cells() -> list[matrix.CellSpec]:
    """One cell per scenario, rotating through its columns so that every
    arch and many strategies occur."""
    per: dict[str, list[matrix.CellSpec]] = {}
    for spec in matrix.plan().cells:
        if spec.error is None:
            per.setdefault(spec.scenario, []).append(spec)
    out = []
    for i, specs in enumerate(per.values()):
        out.append(specs[(i * 7) % len(specs)])
    return out


CELLS = _cells()


def _run(spec: matrix.CellSpec, full: bool) -> dict[str, object]:
    sc = matrix.load_library_scenario(spec.path)
    sim = Simulation(sc, arch=spec.arch, strategy=spec.strategy)
    if full:
        sim._checks = StepChecks(sim.kvm, always_full=True)  # type: ignore[attr-defined]
    report = sim.run()
    out = report.to_json()
    out["verdict_details"] = [(v.name, v.step, v.detail) for v in report.verdicts]
    return out


@pytest.mark.parametrize("spec", CELLS, ids=lambda s: f"{s.scenario}-{s.arch}-{s.strategy}")
def test_incremental_checks_equal_full_rescans(spec: matrix.CellSpec) -> None:
    assert _run(spec, full=False) == _run(spec, full=True)
