"""The x86 handler versions a strategy selects for its era: v5.13
(``direct_page_fault`` with v5.6's ``kvm_is_reserved_pfn``) for
refcount_guarded, v6.13 (release only ``refcounted_page``) for
follow_pfn_2024.  Each asserts what that kernel's code does."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsim_plugins.x86_ept import common, ept, handler_v5_13

from kvmsim.host.constants import PTE_PRESENT
from kvmsim.host.pte import pte_pfn
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


def test_v5_13_nx_huge_pages_fetch_drops_the_2m_leaf(make_sim: Any) -> None:
    sim = make_sim(LIB["ept-nx-huge-pages-exec"], arch="x86_ept", strategy="refcount_guarded")
    report = sim.run()
    assert report.passed, report.to_json()
    # the 2M leaf the read installed gave way to a table for the fetch
    # (__direct_map's drop_large_spte, x86 mmu.c of 5.12.9 = 5.13); the legacy
    # MMU then prefetched the run before it in its group of 8
    # (direct_pte_prefetch); the later load at 0x205000 wanted 2M, found the
    # fetch's table and went down a level (disallowed_hugepage_adjust), and
    # prefetched 0x204000 before it
    leaves = {(m.gpa, m.size) for m in ept.mappings(sim.kvm)}
    assert leaves == {(gpa, 4096) for gpa in range(0x20_0000, 0x20_6000, 0x1000)}
    adjust = [e for e in report.events if e["event"] == "kvm_mmu_hugepage_adjust"]
    assert [e["level"] for e in adjust] == [2, 1, 2]
    (down,) = _events(report, "disallowed_hugepage_adjust")
    assert (down["step"], down["level"]) == (4, 1)
    # the second fetch hits the 4K leaf the first one left
    assert not _events(report, "kvm_tdp_page_fault", step=5)


def test_v6_13_nx_huge_pages_fetch_splits_the_2m_leaf(make_sim: Any) -> None:
    sim = make_sim(LIB["ept-nx-huge-pages-exec"], arch="x86_ept", strategy="follow_pfn_2024")
    report = sim.run()
    assert report.passed, report.to_json()
    # kvm_tdp_mmu_map (6.13.7 tdp_mmu.c): the present 2M leaf in the way of
    # the fetch's 4K goal is split in place (tdp_mmu_split_huge_page): 512
    # 4K leaves on the 2M page's frames, executable again (make_small_spte
    # with the NX workaround on); the later load and fetch hit them
    (split,) = _events(report, "kvm_mmu_split_huge_page")
    assert (split["step"], split["level"]) == (3, 2)
    maps = {m.gpa: m for m in ept.mappings(sim.kvm)}
    assert sorted(maps) == list(range(0x20_0000, 0x40_0000, 0x1000))
    assert all(m.size == 4096 and m.pfn == m.gpa >> 12 for m in maps.values())
    table, idx, _lvl = sim.kvm.arch.find_spte(0x20_5000)
    assert table is not None and table[idx] & ept.EPT_X
    assert not _events(report, "kvm_tdp_page_fault", step=4)
    assert not _events(report, "kvm_tdp_page_fault", step=5)


def _nx_on_thp(make_sim: Any, strategy: str) -> Any:
    """nx_huge_pages on, a 2M THP the host maps, nothing mapped in the EPT."""
    text = (
        HEAD.replace('backing = "anon"', 'backing = "anon"\nhuge = "2M"')
        + '[[step]]\ndo = "host_write"\nvma = "ram"\noffset = 0x200000\n'
        + '[[step]]\ndo = "nx_huge_pages"\nenabled = true\n'
    )
    sim = make_sim(text, strategy=strategy)
    assert sim.run().passed
    return sim


@pytest.mark.parametrize(
    ("strategy", "size"), [("refcount_guarded", 4096), ("follow_pfn_2024", 1 << 21)]
)
def test_disallowed_hugepage_adjust_needs_an_nx_table_in_v6_13(
    make_sim: Any, strategy: str, size: int
) -> None:
    sim = _nx_on_thp(make_sim, strategy)
    kvm = sim.kvm
    e, _shift = kvm.mm.pgtable.find_linux_pte(
        kvm.memslots.gfn_to_memslot(0x200).userspace_addr + 0x200000
    )
    head = pte_pfn(e)
    # a 4K leaf linked by a fault that was not an NX-refused fetch (a load
    # while the host still mapped 4K, say): its table is not
    # nx_huge_page_disallowed
    common.direct_map(
        kvm, False, True, 1, 0x201, head + 1, False, kvm.mmu_notifier_seq, fault_gfn=0x201
    )
    # a load at 0x205000 wants 2M: v5.13's disallowed_hugepage_adjust goes
    # down for any table there, v6.13's only for one an NX-refused fault
    # linked (sp->nx_huge_page_disallowed), so v6.13 maps the 2M leaf over it
    ret = common.direct_map(
        kvm, False, True, 2, 0x200, head, False, kvm.mmu_notifier_seq, fault_gfn=0x205
    )
    assert ret == common.RET_PF_RETRY
    sizes = {m.gpa: m.size for m in ept.mappings(kvm)}
    assert sizes[0x205000 if size == 4096 else 0x200000] == size


def test_v6_13_eager_split_on_enabling_dirty_logging(make_sim: Any) -> None:
    sim = make_sim(LIB["kvm-dirty-log-thp"], strategy="follow_pfn_2024")
    report = sim.run()
    assert report.passed, report.to_json()
    # kvm_mmu_slot_apply_flags (6.13.7 x86.c): eager_page_split splits the
    # 2M leaf into 512 4K leaves before write-protecting them, so the store
    # at 0x201000 is fixed by fast_page_fault, with no slow fault
    (split,) = _events(report, "kvm_mmu_split_huge_page")
    assert split["step"] == 1
    fast = _events(report, "fast_page_fault", step=2)
    assert fast and fast[0]["handled"] is True
    assert not _events(report, "kvm_mmu_hugepage_adjust", step=2)


@pytest.mark.parametrize(
    ("strategy", "fixed"), [("refcount_guarded", False), ("follow_pfn_2024", True)]
)
def test_fast_page_fault_fixes_a_large_spte_in_v6_13(
    make_sim: Any, strategy: str, fixed: bool
) -> None:
    sim = make_sim(LIB["ept-thp-2m"], strategy=strategy)
    assert sim.run().passed
    kvm = sim.kvm
    table, idx, level = kvm.arch.find_spte(0x20_0000)
    assert level == 2 and table is not None
    # a write-protected (MMU-writable) 2M SPTE in a slot that logs nothing:
    # 5.13 leaves it to the slow path; 6.13 sets W locklessly unless the
    # slot is dirty-tracked (fast_page_fault, 6.13.7 mmu.c)
    table[idx] &= ~ept.EPT_W
    handled = common.fast_page_fault(
        kvm, 0, 0x20_3000, 1, common.PFERR_WRITE_MASK | common.PFERR_PRESENT_MASK
    )
    assert handled is fixed
    assert bool(table[idx] & ept.EPT_W) is fixed


def test_v6_13_host_level_stops_at_a_non_present_huge_entry(make_sim: Any) -> None:
    sim = _nx_on_thp(make_sim, "follow_pfn_2024")
    kvm = sim.kvm
    slot = kvm.memslots.gfn_to_memslot(0x200)
    pgtable = kvm.mm.pgtable
    e, shift = pgtable.find_linux_pte(slot.userspace_addr + 0x200000)
    assert shift == 21
    # a PMD migration entry: 6.13's walk stops at a non-present PMD (4K);
    # 5.13's lookup_address_in_mm returns it with its level (2M)
    hva = slot.userspace_addr + 0x200000
    pgtable.huge[21][hva >> 21] = e & ~PTE_PRESENT
    pfn = pte_pfn(e)
    assert handler_v5_13.host_pfn_mapping_level(kvm, 0x200, pfn, slot, compound=False) == 1
    assert handler_v5_13.host_pfn_mapping_level(kvm, 0x200, pfn, slot, compound=True) == 2


def test_v5_13_spurious_map_skips_the_prefetch(make_sim: Any) -> None:
    sim = make_sim(PREFETCH, strategy="refcount_guarded")
    assert sim.run().passed
    kvm = sim.kvm
    table, idx, _level = kvm.arch.find_spte(0x4000)
    assert table is not None
    ept.drop_spte(kvm, table, idx, 0x4000, 1)
    table5, idx5, _ = kvm.arch.find_spte(0x5000)
    assert table5 is not None
    spte = table5[idx5]
    # the same fault again: set_spte makes the very SPTE that is there
    # (SET_SPTE_SPURIOUS → RET_PF_SPURIOUS), and __direct_map returns before
    # direct_pte_prefetch: the dropped neighbour stays unmapped
    common.direct_map(
        kvm, False, True, 1, 0x5, ept.spte_to_pfn(spte), False, kvm.mmu_notifier_seq, fault_gfn=0x5
    )
    assert table5[idx5] == spte
    assert 0x4000 not in {m.gpa for m in ept.mappings(kvm)}


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
