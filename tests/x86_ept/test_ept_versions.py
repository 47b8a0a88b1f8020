"""The x86 handler versions a strategy selects for its era: v5.13
(``direct_page_fault`` with v5.6's ``kvm_is_reserved_pfn``) for
refcount_guarded, v6.13 (release only ``refcounted_page``) for
follow_pfn_2024.  Each asserts what that kernel's code does."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsim_plugins.x86_ept import common, ept, handler_v5_13

from kvmsim.kvm.memslot import KVM_MEMSLOT_INVALID
from kvmsim.kvm.pfn import kvm_is_reserved_pfn
from kvmsim.scenario import builtin_scenarios
from tests.x86_ept.test_ept_paths import HEAD, _events

LIB = {p.stem: p for p in builtin_scenarios()}


def test_each_strategy_selects_its_eras_x86_handler(make_sim: Any) -> None:
    versions = {
        s: make_sim(HEAD, strategy=s).kvm.arch.version
        for s in ("generic_v4_16", "refcount_guarded", "follow_pfn_2024")
    }
    assert versions == {
        "generic_v4_16": "v4.16",
        "refcount_guarded": "v5.13",
        "follow_pfn_2024": "v6.13",
    }


def test_v5_6_kvm_is_reserved_pfn_excludes_only_the_zero_page(make_sim: Any) -> None:
    sim = make_sim(HEAD, strategy="refcount_guarded")
    phys = sim.phys
    zero = phys.zero_pfn
    mmio = phys.alloc_mmio(1)
    # L.1 / 7df003c85218: the PG_reserved zero page stops counting as
    # reserved; a pfn with no struct page still does.
    assert kvm_is_reserved_pfn(phys, zero)
    assert not ept.kvm_is_reserved_pfn_v5_6(phys, zero)
    assert ept.kvm_is_reserved_pfn_v5_6(phys, mmio)


def test_v5_13_releases_the_zero_page_reference(make_sim: Any) -> None:
    sim = make_sim(LIB["ept-anon-read-zero-page"], strategy="refcount_guarded")
    report = sim.run()
    s0 = report.steps[0]
    # L.1: slow gup took a reference on the zero page; direct_page_fault's
    # kvm_release_pfn_clean (v5.6 rule) drops it: no leak, unlike v4.16.
    assert (s0.outcome, s0.writable, s0.pfn) == ("mapped", False, sim.phys.zero_pfn)
    assert report.passed, report.to_json()
    assert sim.phys.others_refs() == {}
    # the level is chosen under mmu_lock by kvm_mmu_hugepage_adjust, not by
    # v4.16's mapping_level (which took mmap_sem for vma_kernel_pagesize)
    assert _events(report, "kvm_mmu_hugepage_adjust", step=0)
    assert not _events(report, "tdp_page_fault")


def test_v5_13_levels_come_from_the_host_page_tables(make_sim: Any) -> None:
    # kvm_mmu_hugepage_adjust → host_pfn_mapping_level: a THP the host maps
    # with a PMD gives 2M, a 1G hugetlbfs page 1G; dirty logging forces 4K
    # (gfn_to_memslot_dirty_bitmap).  No reference moves between tail and
    # head, and the one release of the faulting pfn balances gup's.
    for name in ("ept-thp-2m", "ept-hugetlbfs-1g", "ept-dirty-log"):
        sim = make_sim(LIB[name], strategy="refcount_guarded")
        report = sim.run()
        assert report.passed, (name, report.to_json())
        assert sim.phys.others_refs() == {}, name


def test_v5_13_read_only_pfnmap_store_is_emulated(make_sim: Any) -> None:
    sim = make_sim(LIB["ept-readonly-pfnmap-store"], strategy="refcount_guarded")
    report = sim.run()
    assert report.passed, report.to_json()
    # bd2fae8da794: the store's write fault on a read-only PTE gives
    # KVM_PFN_ERR_RO_FAULT; kvm_handle_bad_page emulates it (RET_PF_EMULATE,
    # an MMIO exit on x86, H step 6) instead of failing KVM_RUN.
    (bad,) = _events(report, "kvm_handle_bad_page", step=1)
    assert (bad["pfn"], bad["ret"]) == ("KVM_PFN_ERR_RO_FAULT", "RET_PF_EMULATE")


def test_v5_13_retries_a_fault_on_a_memslot_being_moved(make_sim: Any) -> None:
    sim = make_sim(HEAD, strategy="refcount_guarded")
    slot = sim.kvm.memslots.gfn_to_memslot(0x10)
    assert slot is not None
    object.__setattr__(slot, "flags", slot.flags | KVM_MEMSLOT_INVALID)
    # try_async_pf (5.13): KVM_MEMSLOT_INVALID → RET_PF_RETRY, before any
    # hva_to_pfn and without an MMIO SPTE for the gfn
    r, event, _ = handler_v5_13.direct_page_fault(
        sim.kvm, 0, 0x10000, common.PFERR_USER_MASK, False
    )
    assert (r, event) == (common.RET_PF_RETRY, None)
    assert not sim.kvm.arch.root


def test_v6_13_follow_pfn_2024_balances_every_reference(make_sim: Any) -> None:
    for name in ("ept-anon-read-zero-page", "ept-pfnmap-linear", "gen-unrefcounted-pfnmap"):
        sim = make_sim(LIB[name], arch="x86_ept", strategy="follow_pfn_2024")
        report = sim.run()
        # E.9: only refcounted_page is released: the zero page's reference is
        # dropped, PFNMAP pfns carry none and are not put (no underflow)
        assert report.passed, (name, report.to_json())
        assert sim.phys.others_refs() == {}, name


def _leaf_sizes(make_sim: Any, scenario: str, strategy: str) -> list[int]:
    sim = make_sim(LIB[scenario], arch="x86_ept", strategy=strategy)
    sim.run()
    return sorted({m.size for m in ept.mappings(sim.kvm)})


def test_v5_13_0_maps_a_1g_page_whole_past_a_partial_memslot(make_sim: Any) -> None:
    # v5.13.0: kvm_mmu_max_mapping_level returns the host's 1G unclamped by the
    # slot's disallow_lpage; v4.16's mapping_level and the ec607a564f70 clamp
    # (v6.13) stop at 2M because the 512M slot ends inside the 1G page.
    name = "ept-hugetlb-1g-partial-memslot"
    assert _leaf_sizes(make_sim, name, "refcount_guarded") == [1 << 30]
    assert _leaf_sizes(make_sim, name, "generic_v4_16") == [1 << 21]
    assert _leaf_sizes(make_sim, name, "follow_pfn_2024") == [1 << 21]


def test_v5_13_0_maps_the_wrong_frames_on_a_misaligned_memslot(make_sim: Any) -> None:
    # gpa and hva agree modulo 2M but not 1G: 1G is disallowed everywhere, the
    # host level 1G wins in v5.13.0, and the pfn is aligned down to the host
    # page's head while the gfn is aligned down to its own 1G boundary.
    sim = make_sim(LIB["gen-hugetlb-1g-misaligned"], arch="x86_ept", strategy="refcount_guarded")
    report = sim.run()
    assert {v.name for v in report.verdicts} == {"wrong_frame"}
    assert _leaf_sizes(make_sim, "gen-hugetlb-1g-misaligned", "generic_v4_16") == [1 << 21]


def test_v6_13_sizes_leaves_from_the_host_page_tables(make_sim: Any) -> None:
    # v6.13 kvm_mmu_hugepage_adjust: the host leaf's level under mmu_lock
    # (host_pfn_mapping_level), not v4.16's vma page size + THP adjustment
    sim = make_sim(LIB["ept-thp-2m"], arch="x86_ept", strategy="follow_pfn_2024")
    report = sim.run()
    assert report.passed, report.to_json()
    names = {e["event"] for e in report.events}
    assert "kvm_mmu_hugepage_adjust" in names
    assert not names & {"tdp_page_fault", "transparent_hugepage_adjust"}
    assert {m.size for m in ept.mappings(sim.kvm)} == {1 << 21}


@pytest.mark.parametrize("strategy", ["refcount_guarded", "follow_pfn_2024"])
def test_nx_huge_pages_maps_huge_leaves_nx_and_fetches_4k(make_sim: Any, strategy: str) -> None:
    sim = make_sim(LIB["ept-nx-huge-pages-exec"], arch="x86_ept", strategy=strategy)
    report = sim.run()
    assert report.passed, report.to_json()
    leaves = {(m.gpa, m.size) for m in ept.mappings(sim.kvm)}
    # the 2M leaf the read installed gave way to a table for the fetch; the
    # legacy MMU (v5.13) then prefetches the run before it in its group of 8
    # (direct_pte_prefetch), the v6.13 TDP MMU does not
    first = 0x20_0000 if strategy == "refcount_guarded" else 0x20_3000
    assert leaves == {(gpa, 4096) for gpa in range(first, 0x20_4000, 0x1000)}
    adjust = [e for e in report.events if e["event"] == "kvm_mmu_hugepage_adjust"]
    assert [e["level"] for e in adjust] == [2, 1]


def test_nx_huge_pages_step_is_a_no_op_before_v5_4(make_sim: Any) -> None:
    sim = make_sim(LIB["ept-nx-huge-pages-exec"], arch="x86_ept", strategy="generic_v4_16")
    report = sim.run()
    assert not sim.kvm.arch.nx_huge_pages
    assert report.steps[3].page_size == 1 << 21


PREFETCH = (
    HEAD
    + "".join(
        f'[[step]]\ndo = "host_write"\nvma = "ram"\noffset = {o:#x}\n'
        for o in range(0, 0x8000, 0x1000)
    )
    + '[[step]]\ndo = "access"\ngpa = 0x5000\nop = "read"\n'
)


@pytest.mark.parametrize(
    ("strategy", "gpas"),
    [
        # the run before the faulting SPTE in its group of 8 is filled; the
        # run after it reaches the group's end and is not (__direct_pte_prefetch)
        ("generic_v4_16", list(range(0, 0x6000, 0x1000))),
        ("refcount_guarded", list(range(0, 0x6000, 0x1000))),
        ("follow_pfn_2024", [0x5000]),  # the TDP MMU prefetches nothing
    ],
)
def test_direct_pte_prefetch(make_sim: Any, strategy: str, gpas: list[int]) -> None:
    sim = make_sim(PREFETCH, strategy=strategy)
    report = sim.run()
    assert report.passed, report.to_json()
    maps = sorted(ept.mappings(sim.kvm), key=lambda m: m.gpa)
    assert [m.gpa for m in maps] == gpas
    # gfn_to_page_many_atomic's references are dropped again: the EPT holds none
    assert sim.phys.others_refs() == {}
