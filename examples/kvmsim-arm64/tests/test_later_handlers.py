"""The v5.13 and v6.13 ``user_mem_abort`` of the arm64 plugin (abort_later.py),
selected by the builtin strategies of those eras: ``refcount_guarded``
(``handlers["arm64"] = "v5.13"``) and ``follow_pfn_2024`` (``"v6.13"``).

Each expectation is what those kernels do, cited per test (sections
of kvmsim's docs/kernel-notes.md, and arch/arm64/kvm/mmu.c of 5.13 / 6.13).
"""

from __future__ import annotations

from typing import Any

from kvmsim_arm64.desc import MT_S2_DEVICE_nGnRE, memattr
from test_arm64 import access, leaf, ram

V5_13 = "refcount_guarded"
V6_13 = "follow_pfn_2024"


def zero_page_read(make_sim: Any, strategy: str) -> tuple[Any, Any]:
    sim = make_sim(ram(access(0x10000, "read")), arch="arm64", strategy=strategy)
    report = sim.run()
    return sim, report


def test_strategies_select_the_later_handlers(make_sim: Any) -> None:
    # StrategyInfo.handlers names the arch's entry point: arm64
    for strategy, version in ((V5_13, "v5.13"), (V6_13, "v6.13"), ("generic_v4_16", "v4.16")):
        sim = make_sim(ram(access(0x10000, "write")), arch="arm64", strategy=strategy)
        assert sim.kvm.handler == version


def test_v5_13_releases_the_zero_page_reference(make_sim: Any) -> None:
    sim, report = zero_page_read(make_sim, V5_13)
    phys = sim.kvm.phys
    # the load maps the zero page read-only (slow gup's FOLL_GET reference on
    # it, §L.1); 5.13's kvm_release_pfn_clean uses v5.6's kvm_is_reserved_pfn
    # (7df003c85218), which no longer counts the zero page as reserved, so the
    # reference is dropped: no refcount_leak, unlike v4.16 (test_arm64.py)
    step = report.steps[0]
    assert (step.outcome, step.writable) == ("mapped", False)
    assert sim.kvm.hooks.stage2_mappings(kvm=sim.kvm)[0].pfn == phys.zero_pfn
    assert report.passed and not report.verdicts, report.to_json()


def test_v6_13_releases_the_zero_page_reference(make_sim: Any) -> None:
    sim, report = zero_page_read(make_sim, V6_13)
    # __kvm_faultin_pfn hands the zero page back as *refcounted_page and
    # kvm_release_faultin_page puts it although it is PG_reserved (E steps 8-9)
    assert sim.kvm.hooks.stage2_mappings(kvm=sim.kvm)[0].pfn == sim.kvm.phys.zero_pfn
    assert report.passed and not report.verdicts, report.to_json()
    hv = [e for e in report.events if e["event"] == "hva_to_pfn"]
    assert hv and hv[0]["refcounted_page"] == hex(sim.kvm.phys.zero_pfn)


MISALIGNED_HUGETLB = dict(
    backing="hugetlbfs", extra='huge = "2M"', offset=0x1000, size="4M", slot_extra='size = "2M"'
)


def test_v5_13_maps_a_misaligned_hugetlbfs_memslot_with_pages(run_sim: Any) -> None:
    report = run_sim(
        ram(access(0x10000, "write"), **MISALIGNED_HUGETLB), arch="arm64", strategy=V5_13
    )
    # fault_supports_stage2_huge_mapping (v4.20): the memslot's hva and IPA
    # disagree modulo 2M, so the hugetlbfs vma is mapped with 4K pages and the
    # gfn is not rounded down: the right frame, unlike v4.16's block
    step = report.steps[0]
    assert (step.outcome, step.page_size) == ("mapped", 4096)
    assert report.passed and not report.verdicts, report.to_json()


def test_v5_13_maps_an_aligned_1g_hugetlbfs_page_with_a_1g_block(run_sim: Any) -> None:
    report = run_sim(
        ram(access(0x4012_3000, "write"), backing="hugetlbfs", extra='huge = "1G"', size="2G"),
        arch="arm64",
        strategy=V5_13,
    )
    # vma_shift = PUD_SHIFT and fault_supports_stage2_huge_mapping(PUD_SIZE)
    # holds (aligned, inside the memslot): a level-1 block (PUD maps, v4.20 on)
    assert report.passed, report.to_json()
    assert report.steps[0].page_size == 1 << 30


def test_v6_13_does_not_put_a_pfnmap_ram_page(make_sim: Any) -> None:
    text = ram(
        access(0x10000, "write"),
        access(0x20000, "read"),
        backing="pfnmap_linear",
        size="1M",
        extra='pfn_kind = "ram"\nshared = true',
    )
    sim = make_sim(text, arch="arm64", strategy=V6_13)
    report = sim.run()
    # hva_to_pfn_remapped takes no reference on a remapped pfn and hands back
    # refcounted_page = NULL (E step 7); user_mem_abort releases exactly that
    # page, so the driver's RAM page is never put (the v4.16 handler would
    # put_page it by pfn: refcount_underflow)
    assert report.passed and not report.verdicts, report.to_json()
    hv = [e for e in report.events if e["event"] == "hva_to_pfn"]
    assert hv and all(e["refcounted_page"] is None for e in hv)
    assert not [e for e in report.events if e["event"] == "follow_pfn_release_contract"]


def test_v5_13_fetch_from_a_device_pfn_is_a_prefetch_abort(make_sim: Any) -> None:
    text = ram(
        access(0x3000, "exec"),
        backing="pfnmap_linear",
        size="64K",
        prot="rwx",
        extra='pfn_kind = "mmio"\nshared = true',
    )
    sim = make_sim(text, arch="arm64", strategy=V5_13)
    report = sim.run()
    # user_mem_abort: exec_fault && device → -ENOEXEC, which
    # kvm_handle_guest_abort turns into kvm_inject_pabt; nothing is mapped
    assert report.steps[0].outcome == "guest_fault"
    assert sim.kvm.arch.pabt_injected == 1
    assert leaf(sim, 0x3000) == 0


def test_v6_13_maps_pfnmap_mmio_as_device(make_sim: Any) -> None:
    text = ram(
        access(0x3000, "write"),
        backing="pfnmap_linear",
        size="64K",
        extra='pfn_kind = "mmio"\nshared = true',
    )
    sim = make_sim(text, arch="arm64", strategy=V6_13)
    report = sim.run()
    # kvm_is_device_pfn (!pfn_is_map_memory): Device-nGnRE; the 64K memslot
    # cannot hold a block (fault_supports_stage2_huge_mapping), so a page
    assert report.passed, report.to_json()
    assert memattr(leaf(sim, 0x3000)) == MT_S2_DEVICE_nGnRE
    assert report.steps[0].page_size == 4096
