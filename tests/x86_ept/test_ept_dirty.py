"""x86 dirty logging per handler version (kernel-notes §N.1, §N.2): manual
protect, INITIALLY_SET, the ring, PML's full log, and the concurrent bases."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsim_plugins.x86_ept.ept import EPT_D, EPT_W, PML_ENTITY_NUM

from kvmsim.runner import RunReport, Simulation
from kvmsim.scenario import builtin_scenarios
from kvmsim.testing import build_sim

LIB = {p.stem: p for p in builtin_scenarios()}
V5 = ("refcount_guarded", "follow_pfn_2024")  # the v5.13 and v6.13 handlers


def _run(name: str, strategy: str) -> tuple[Simulation, RunReport]:
    sim = build_sim(LIB[name], strategy=strategy)
    report = sim.run()
    assert report.passed and not report.verdicts, report.to_json()
    return sim, report


def _events(report: RunReport, name: str) -> list[dict[str, Any]]:
    return [e for e in report.events if e["event"] == name]


@pytest.mark.parametrize("strategy", V5)
def test_manual_protect_get_leaves_the_page_writable(strategy: str) -> None:
    sim, report = _run("ept-dirty-log-manual", strategy)
    # the store after the first get hit the 4K SPTE (no fault): get did not
    # re-protect it; the store after the clear faulted again
    faults = {e["step"] for e in _events(report, "kvm_page_fault") if e.get("ph") == "B"}
    assert 4 not in faults and 9 in faults
    assert [g for _, _, g in sim.kvm.dirty.reports] == [
        (0x201000,),
        (0x201000,),
        (0x202000,),
        (0x201000, 0x202000),
    ]


@pytest.mark.parametrize("strategy", V5)
def test_initially_set_protects_large_leaves_at_enable_or_at_the_clear(strategy: str) -> None:
    sim, report = _run("ept-dirty-log-initially-set", strategy)
    first = sim.kvm.dirty.reports[0][2]
    assert len(first) == 1024  # every page of the 4M slot starts dirty
    enabled = _events(report, "kvm_mmu_slot_remove_write_access")
    if strategy == "refcount_guarded":
        # v5.11: only SPTEs of 2M and up lose W at enable: the two 2M leaves
        # the stores before logging mapped (THP)
        assert [e["changed"] for e in enabled] == [2]
    else:
        # v5.14+: nothing at enable; the clear of the 2M region's words
        # write-protects the large leaf
        assert enabled == []
        masked = _events(report, "kvm_mmu_write_protect_pt_masked")
        assert sum(e["changed"] for e in masked) >= 2  # both 2M leaves


@pytest.mark.parametrize("strategy", V5)
def test_the_ring_reaps_what_each_vcpu_pushed(strategy: str) -> None:
    sim, report = _run("ept-dirty-log-ring", strategy)
    pushes = [(e["vcpu"], e["offset"]) for e in _events(report, "kvm_dirty_ring_push")]
    assert pushes == [(0, 1), (1, 2), (0, 1)]
    assert [g for _, _, g in sim.kvm.dirty.reports] == [(0x1000, 0x2000), (0x1000,), ()]


@pytest.mark.parametrize("strategy", ["generic_v4_16", *V5])
def test_a_full_pml_log_exits_and_loses_nothing(strategy: str) -> None:
    # 600 stores through 4K SPTEs whose D bits the enable cleared: the 513th
    # exits (PML full) before its D bit is set, the log is flushed, the
    # store repeats; the get reports all 600
    text = """
name = "pml-full"
arch = "x86_ept"
[dirty]
mode = "pml"
[[vma]]
name = "ram"
size = "4M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
"""
    stores = "".join(
        f'[[step]]\ndo = "access"\ngpa = {0x1000 * (i + 1):#x}\nop = "write"\n' for i in range(600)
    )
    enable = '[[step]]\ndo = "dirty_log"\nslot = 0\naction = "enable"\n'
    get = '[[step]]\ndo = "dirty_log"\nslot = 0\naction = "get"\n'
    sim = build_sim(text + stores + enable + stores + get, strategy=strategy)
    report = sim.run()
    assert not report.verdicts, report.to_json()
    full = [e for e in report.events if e["event"] == "vmx_flush_pml_buffer"]
    assert full[0]["entries"] == PML_ENTITY_NUM
    assert len(sim.kvm.dirty.reports[-1][2]) == 600
    st = sim.kvm.arch
    leaves = [v for _, level, v in st.leaves() if level == 1]
    assert all(v & EPT_W for v in leaves) and not any(v & EPT_D for v in leaves)


@pytest.mark.parametrize("name", ["ept-dirty-base-wp", "ept-dirty-base-ring"])
def test_the_concurrent_bases_pass_in_file_order(name: str) -> None:
    for strategy in V5 if name.endswith("ring") else ("generic_v4_16", *V5):
        sim, _ = _run(name, strategy)
        assert [g for _, _, g in sim.kvm.dirty.reports] == [(0x1000,), (0x1000,)]


_EAGER_CLEAR = """
name = "eager-split-on-clear"
arch = "x86_ept"
[dirty]
mode = "{mode}"
manual_protect = true
initially_set = true
[[vma]]
name = "ram"
size = "4M"
backing = "anon"
huge = "2M"
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "access"
gpa = 0x200000
op = "write"
expect = {{ outcome = "mapped", writable = true, page_size = "2M" }}
[[step]]
do = "dirty_log"
slot = 0
action = "enable"
[[step]]
do = "dirty_log"
slot = 0
action = "get"
[[step]]
do = "dirty_log"
slot = 0
action = "clear"
first = 512
num = 64
[[step]]
do = "access"
gpa = 0x201000
op = "write"
[[step]]
do = "access"
gpa = 0x250000
op = "write"
[[step]]
do = "dirty_log"
slot = 0
action = "get"
[[step]]
do = "dirty_log"
slot = 0
action = "clear"
[[step]]
do = "access"
gpa = 0x240000
op = "write"
[[step]]
do = "access"
gpa = 0x3ff000
op = "write"
[[step]]
do = "dirty_log"
slot = 0
action = "get"
expect_dirty = [0x240000, 0x3ff000]
"""


@pytest.mark.parametrize("mode", ["wp", "pml"])
def test_v6_13_clear_splits_the_huge_leaf_and_stores_are_tracked_per_4k_page(mode: str) -> None:
    """v6.13's ``kvm_arch_mmu_enable_log_dirty_pt_masked`` (6.13.7 mmu/mmu.c)
    with manual protect and initially-set: enable leaves the 2M leaf alone;
    the clear of pages [0x200, 0x240) first splits every huge leaf meeting
    them down to 4K (``kvm_mmu_try_split_huge_pages(start, end + 1)``, with
    eager_page_split on by default; children inherit the leaf's W and D),
    then protects only the cleared 4K pages (the 2M write protection finds
    no large leaf left).  Pages the clear did not cover stay writable and
    stay set in the bitmap, so the next get still reports them."""
    sim = build_sim(_EAGER_CLEAR.format(mode=mode), strategy="follow_pfn_2024")
    report = sim.run()
    assert report.passed and not report.verdicts, report.to_json()
    split = _events(report, "kvm_mmu_split_huge_page")
    assert [(e["step"], e["level"]) for e in split] == [(3, 2)]  # the clear, not the enable
    st = sim.kvm.arch
    # after the run the region is 512 4K leaves (none became 2M again)
    assert sorted(g for g, level, _ in st.leaves() if 0x200000 <= g < 0x400000 and level > 1) == []
    # the stores: the cleared page's SPTE was protected (wp: W off, so a
    # fault that fast_page_fault fixes and marks; pml: D off, logged by the
    # CPU); the uncleared page's SPTE was still writable and dirty: no fault
    faults = {e["step"] for e in _events(report, "kvm_page_fault") if e.get("ph") == "B"}
    if mode == "wp":
        assert 4 in faults
        (fast,) = [e for e in _events(report, "fast_page_fault") if e["step"] == 4]
        assert fast["handled"] is True
        assert not [e for e in _events(report, "kvm_mmu_hugepage_adjust") if e["step"] == 4]
    assert 5 not in faults
    slot_pages = {p << 12 for p in range(1024)}
    cleared = {p << 12 for p in range(0x200, 0x240)}
    first_get, second_get, third_get = [g for _, _, g in sim.kvm.dirty.reports]
    assert set(first_get) == slot_pages  # initially set: everything
    # the second get: every page not yet cleared, and of the cleared ones
    # exactly the one stored to since (0x250000 was never cleared)
    assert set(second_get) == (slot_pages - cleared) | {0x201000}
    # the full clear protected every 4K page: each later store is its page alone
    assert third_get == (0x240000, 0x3FF000)


def test_v5_13_clear_keeps_no_huge_leaf_either() -> None:
    """Without eager splitting (the v5.13 handler, 5.11 tree) enable
    write-protects the 2M leaf (initially-set spares only 4K SPTEs), the
    first store after the clear takes the slow path and is mapped 4K: the
    same reports, reached without a split."""
    sim = build_sim(_EAGER_CLEAR.format(mode="wp"), strategy="refcount_guarded")
    report = sim.run()
    assert report.passed and not report.verdicts, report.to_json()
    assert not _events(report, "kvm_mmu_split_huge_page")
    slot_pages = {p << 12 for p in range(1024)}
    cleared = {p << 12 for p in range(0x200, 0x240)}
    reports = [g for _, _, g in sim.kvm.dirty.reports]
    # 0x250000's store faulted (the 2M leaf was write-protected at enable)
    # and was mapped 4K; it was still set in the bitmap anyway
    assert set(reports[1]) == (slot_pages - cleared) | {0x201000}
    assert reports[2] == (0x240000, 0x3FF000)
