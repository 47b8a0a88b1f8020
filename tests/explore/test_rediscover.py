"""The explorer rediscovers every hand-placed race from its race-free base.

For each builtin base (a concurrent scenario with the ingredients of some
`*-race-*` scenarios and no placement), exploring every (arch, strategy)
must find every verdict the hand-placed scenarios record as known for that
column, and nothing that the library does not record for it (in the races,
the scenarios that pin what exploration found, the base's own file order,
or, for an order of steps alone, the first-touch scenario)."""

from __future__ import annotations

import os

import pytest

from kvmsim import matrix as mx
from kvmsim.explore.search import explore

BASES = {
    "gen-base-munmap-first-touch": [
        "gen-race-munmap-after-hva-to-pfn",
        "gen-race-munmap-before-create-pte",
    ],
    "gen-base-migrate-first-touch": [
        "gen-race-migrate-after-hva-to-pfn",
        "gen-race-migrate-before-create-pte",
    ],
    "gen-base-mprotect-write": ["gen-race-mprotect-before-create-pte"],
    "gen-base-madvise-dontneed": ["gen-race-dontneed-after-hva-to-pfn"],
    "gen-base-punch-hole-memfd": ["gen-race-punch-hole-before-create-pte"],
    "gen-base-munmap-pfnmap-retry": [
        "gen-race-munmap-mmap-sem-dropped",
        "gen-race-munmap-pfnmap-after-hva-to-pfn",
    ],
    "xive-base-reset-eoi": ["xive-esb-reset-race", "xive-esb-reset-after-hva-to-pfn"],
}
# a vcpu's access may run before QEMU's first write: a first touch
EXPLAINS_ORDER = ["gen-anon-write-first-touch"]

# bound 1 keeps the suite short; every known verdict is reached with one
# preemption.  docs/explore.md has the bound-2 run of the same check:
# KVMSIM_REDISCOVER_BOUND=2 python -m pytest tests/explore/test_rediscover.py
BOUND = int(os.environ.get("KVMSIM_REDISCOVER_BOUND", "1"))


def _known(name: str, arch: str, strategy: str) -> set[str]:
    cells = mx.plan(scenarios=[name], arches=[arch], strategies=[strategy]).cells
    if not cells:
        return set()
    sc = mx.load_library_scenario(cells[0].path)
    return {v for k in sc.known_for(strategy, arch)[:1] for v in k.verdicts}


CELLS = [(b, c.arch, c.strategy) for b in BASES for c in mx.plan(scenarios=[b]).cells]


@pytest.mark.parametrize(("base", "arch", "strategy"), CELLS)
def test_base_rediscovers_the_known_races(base: str, arch: str, strategy: str) -> None:
    (cell,) = mx.plan(scenarios=[base], arches=[arch], strategies=[strategy]).cells
    sc = mx.load_library_scenario(cell.path)
    found = explore(sc, arch, strategy, bound=BOUND)
    got = {v for c in found.classes for v in c.verdicts}
    placed = set().union(*(_known(r, arch, strategy) for r in BASES[base]))
    assert placed <= got, f"not rediscovered: {sorted(placed - got)}"
    explained = placed | _known(base, arch, strategy)
    for c in found.classes:
        if not c.best.preemptions:  # an order of steps alone
            explained |= set().union(*(_known(r, arch, strategy) for r in EXPLAINS_ORDER))
    assert got <= explained, f"found but recorded nowhere: {sorted(got - explained)}"
