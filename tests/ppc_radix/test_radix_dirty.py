"""POWER9 radix dirty logging per handler version (kernel-notes §N.3): the
C bit set by SET_RC and harvested, and what a dirty large leaf unmapped while
logging leaves in the bitmap."""

from __future__ import annotations

import pytest
from kvmsim_plugins.ppc_radix.dsisr import DSISR_SET_RC

from kvmsim.runner import RunReport, Simulation
from kvmsim.scenario import builtin_scenarios
from kvmsim.testing import build_sim

LIB = {p.stem: p for p in builtin_scenarios()}
PAGE = 0x10000


def _run(name: str, strategy: str, arch: str = "ppc_radix") -> tuple[Simulation, RunReport]:
    sim = build_sim(LIB[name], strategy=strategy, arch=arch)
    return sim, sim.run()


@pytest.mark.parametrize("strategy", ["ppc_original", "upstream_final", "follow_pfn_2024"])
def test_a_store_after_the_harvest_takes_set_rc(strategy: str) -> None:
    _sim, report = _run("radix-dirty-log", strategy)
    assert report.passed and not report.verdicts, report.to_json()
    # step 8 stores to 0x10000, whose C the first get cleared: an HDSI with
    # SET_RC (no new mapping), and the harvest finds C set again
    faults = [e for e in report.events if e["event"] == "kvm_page_fault" and e.get("ph") == "B"]
    assert [f["step"] for f in faults if f["gpa"] == "0x10000"] == [4, 8]
    assert int(next(f for f in faults if f["step"] == 8)["code"], 16) & DSISR_SET_RC
    harvests = [e for e in report.events if e["event"] == "kvmppc_hv_get_dirty_log_radix"]
    assert [h["pages"] for h in harvests] == [2, 0, 2]


def test_v4_15_marks_one_page_of_a_dirty_large_leaf() -> None:
    sim, report = _run("radix-dirty-log-large-unmap", "ppc_original")
    # a page count (32) passed where bytes are taken: one page marked
    assert sim.kvm.dirty.reports == [(4, 0, (0x10000000,))]
    assert [v.name for v in report.verdicts] == ["lost_dirty"]
    assert report.steps[4].verdicts == ["lost_dirty"]


def test_v4_17_marks_the_whole_leaf() -> None:
    sim, report = _run("radix-dirty-log-large-unmap", "upstream_final")
    assert not report.verdicts
    (_, _, gpas) = sim.kvm.dirty.reports[0]
    assert gpas == tuple(0x10000000 + i * PAGE for i in range(32))


@pytest.mark.parametrize(
    "strategy", ["generic_v4_16", "paolo_refactor", "upstream_final", "refcount_guarded"]
)
def test_v4_17_partial_invalidation_marks_from_its_first_gfn(strategy: str) -> None:
    """kernel-notes §N.5: MADV_DONTNEED of the leaf's second page.  The
    notifier's range starts there (zap_page_range's own pair, before the
    THP split), kvm_unmap_radix removes the whole 2M leaf and marks 2M
    worth of pages from that gfn: page 0 (the one stored to) is lost, the
    page past the leaf's end is marked although nobody stored to it."""
    sim, report = _run("radix-dirty-log-large-partial-unmap", strategy)
    assert report.steps[2].page_size == 1 << 21
    ((_, _, gpas),) = sim.kvm.dirty.reports
    assert gpas == tuple(0x10000000 + i * PAGE for i in range(1, 33))
    assert [v.name for v in report.verdicts] == ["lost_dirty"]
    assert report.steps[4].verdicts == ["lost_dirty"]
    unmaps = [e for e in report.events if e["event"] == "kvm_unmap_radix"]
    assert [(e["gpa"], e["size"]) for e in unmaps] == [("0x10000000", 1 << 21)]


def test_v6_13_partial_invalidation_finds_no_large_leaf() -> None:
    sim, report = _run("radix-dirty-log-large-partial-unmap", "follow_pfn_2024")
    assert report.passed and not report.verdicts, report.to_json()
    assert report.steps[2].page_size == PAGE
    assert sim.kvm.dirty.reports == [(4, 0, (0x10000000,))]


def test_v6_13_maps_base_pages_while_logging() -> None:
    sim, report = _run("radix-dirty-log-large-unmap", "follow_pfn_2024")
    assert not report.verdicts
    assert report.steps[2].page_size == PAGE
    assert sim.kvm.dirty.reports == [(4, 0, (0x10010000,))]


def test_v6_13_flushes_the_slot_when_logging_starts() -> None:
    text = LIB["radix-dirty-log"].read_text()
    # map the page before logging starts: the enable unmaps it (C kept)
    text = text.replace(
        '[[step]]\ndo = "dirty_log"\nslot = 0\naction = "enable"\n',
        '[[step]]\ndo = "access"\ngpa = 0x30000\nop = "write"\n\n'
        '[[step]]\ndo = "dirty_log"\nslot = 0\naction = "enable"\n',
        1,
    )
    sim = build_sim(text, strategy="follow_pfn_2024")
    report = sim.run()
    flush = [e for e in report.events if e["event"] == "kvmppc_radix_flush_memslot"]
    assert [e["unmapped"] for e in flush] == [1]
    # the unmapped page's C went to the bitmap: the first get reports it
    assert 0x30000 in sim.kvm.dirty.reports[0][2]


@pytest.mark.parametrize("arch", ["ppc_radix", "ppc_radix_4k"])
def test_the_concurrent_base_passes_in_file_order(arch: str) -> None:
    sim, report = _run("radix-dirty-base", "generic_v4_16", arch)
    assert report.passed and not report.verdicts, report.to_json()
    assert [g for _, _, g in sim.kvm.dirty.reports] == [(0x10000,), (0x10000,)]
