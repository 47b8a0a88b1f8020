"""The generic shmem THP library scenarios, version by version (kernel-notes
§S.3): what a re-touch after a discard finds."""

from __future__ import annotations

import pytest

from kvmsim.runner import RunReport, Simulation
from kvmsim.scenario import builtin_scenarios
from kvmsim.testing import build_sim

LIB = {p.stem: p for p in builtin_scenarios()}


def run(name: str, strategy: str) -> tuple[Simulation, RunReport]:
    sim = build_sim(LIB[name], strategy=strategy, arch="x86_ept")
    return sim, sim.run()


@pytest.mark.parametrize(
    ("strategy", "same", "size"),
    [
        ("generic_v4_16", True, 2 << 20),
        ("refcount_guarded", False, 4096),
        ("follow_pfn_2024", False, 4096),
    ],
)
def test_a_partial_hole_keeps_the_thp_in_v4_16_and_splits_it_from_v5_7(
    strategy: str, same: bool, size: int
) -> None:
    sim, report = run("gen-punch-hole-shmem-thp", strategy)
    assert report.passed, report.to_json()
    before, after = report.steps[0], report.steps[3]
    # v4.16 shmem_undo_range zeroes the subpage and keeps the compound page:
    # the reload maps the same frame by a 2M leaf; v5.7+ split it and the
    # hole's subpages left the cache: a new 4K page
    assert (after.pfn == before.pfn) is same and after.page_size == size
    assert after.value == 0 and report.steps[4].value == 0x55
    assert sim.phys.others_refs() == {}


@pytest.mark.parametrize("strategy", ["generic_v4_16", "refcount_guarded", "follow_pfn_2024"])
def test_dontneed_keeps_the_page_cache_thp_in_every_version(strategy: str) -> None:
    _, report = run("gen-madvise-dontneed-shmem-thp", strategy)
    assert report.passed, report.to_json()
    first, again = report.steps[0], report.steps[3]
    assert again.pfn == first.pfn and again.page_size == first.page_size == 2 << 20
