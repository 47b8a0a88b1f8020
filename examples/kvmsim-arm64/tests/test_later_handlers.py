"""The v5.13 and v6.13 ``user_mem_abort`` of the arm64 plugin (abort_later.py),
selected by the builtin strategies of those eras: ``refcount_guarded``
(``handlers["arm64"] = "v5.13"``) and ``follow_pfn_2024`` (``"v6.13"``).

Each expectation is what those kernels do, cited per test (sections
of kvmsim's docs/kernel-notes.md, and arch/arm64/kvm/mmu.c of 5.13 / 6.13).
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmsim_arm64 import abort_later
from kvmsim_arm64.desc import (
    FSC_FAULT,
    FSC_PERM,
    S2AP_W,
    XN,
    MT_S2_DEVICE_nGnRE,
    make_esr,
    memattr,
)
from test_arm64 import access, leaf, ram

from kvmsim.cmodel import EAGAIN
from kvmsim.host.pte import pte_pfn
from kvmsim.kvm.pfn import gfn_to_hva_memslot

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


# ------------------------------------------------ the locked tail: map, relax
#
# arch/arm64/kvm/mmu.c of 5.13 (5.12.9's user_mem_abort plus 10ba2d17d297)
# and 6.13 (6.13.7): under mmu_lock, a permission fault whose size equals
# the faulting level's granule calls kvm_pgtable_stage2_relax_perms (adds
# permissions to the leaf there), anything else kvm_pgtable_stage2_map,
# whose stage2_map_walker_try_leaf returns -EAGAIN for a valid leaf that
# differs from the new one in S2AP/XN only (hyp/pgtable.c).


def abort_again(sim: Any, ipa: int, op: str, fsc: int, level: int = 3) -> tuple[int, str]:
    """A second abort on ``ipa``, taken by the hardware before the stage-2
    state the first run left (another vcpu's, or one since torn down)."""
    kvm = sim.kvm
    gfn = ipa >> 12
    slot = kvm.memslots.gfn_to_memslot(gfn)
    hva = gfn_to_hva_memslot(slot, gfn, 12)
    esr = make_esr(op, fsc, level)
    return abort_later.user_mem_abort(kvm, 0, ipa, slot, hva, fsc, op == "exec", op == "write", esr)


@pytest.mark.parametrize("strategy", [V5_13, V6_13])
def test_a_translation_fault_over_the_same_leaf_leaves_it_alone(
    make_sim: Any, strategy: str
) -> None:
    sim = make_sim(ram(access(0x10000, "exec"), prot="rwx"), arch="arm64", strategy=strategy)
    assert sim.run().passed
    before = leaf(sim, 0x10000)
    assert before and not before & XN
    # a load's translation fault, taken before the fetch's page was mapped:
    # the new descriptor differs in XN only, so kvm_pgtable_stage2_map
    # returns -EAGAIN and the executable leaf stays (the guest retries)
    ret, detail = abort_again(sim, 0x10000, "read", FSC_FAULT)
    assert (ret, detail) == (0, "-EAGAIN: the guest faults again")
    assert leaf(sim, 0x10000) == before


@pytest.mark.parametrize("strategy", [V5_13, V6_13])
def test_a_permission_fault_relaxes_the_leaf_it_faulted_on(make_sim: Any, strategy: str) -> None:
    sim = make_sim(
        ram(access(0x10000, "write"), access(0x10000, "exec"), prot="rwx"),
        arch="arm64",
        strategy=strategy,
    )
    report = sim.run()
    assert report.passed, report.to_json()
    # the fetch is a level-3 permission fault on the read-write page: relax
    # adds execute to it, keeping write
    relax = [e for e in report.events if e["event"] == "kvm_pgtable_stage2_relax_perms"]
    assert [(e["ipa"], e["level"], e["ret"]) for e in relax] == [("0x10000", 3, 0)]
    desc = leaf(sim, 0x10000)
    assert desc & S2AP_W and not desc & XN


# a shared file page: the load maps it read-only (the host PTE is clean and
# write-notified), the store's write fault makes the host PTE writable in
# page_mkwrite without an invalidation (arm64-exec-then-store)
SHARED_FILE = dict(backing="file", extra="shared = true", prot="rwx", size="1M")


def test_v5_13_relaxing_a_leaf_gone_since_the_fault_maps_nothing(make_sim: Any) -> None:
    sim = make_sim(ram(access(0x10000, "read"), **SHARED_FILE), arch="arm64", strategy=V5_13)
    assert sim.run().passed
    kvm = sim.kvm
    # the stage-2 page is torn down after the store's permission fault was
    # taken: stage2_attr_walker skips the invalid entry and relax_perms
    # returns 0, so the store resolves its page and installs nothing
    kvm.hooks.notifier_invalidate(kvm=kvm, start=0, end=1 << 30)
    assert leaf(sim, 0x10000) == 0
    assert abort_again(sim, 0x10000, "write", FSC_PERM) == (0, "mapped")
    assert leaf(sim, 0x10000) == 0


def test_v6_13_relaxing_a_leaf_gone_since_the_fault_retries(make_sim: Any) -> None:
    sim = make_sim(ram(access(0x10000, "read"), **SHARED_FILE), arch="arm64", strategy=V6_13)
    assert sim.run().passed
    kvm = sim.kvm
    kvm.hooks.notifier_invalidate(kvm=kvm, start=0, end=1 << 30)
    hva = gfn_to_hva_memslot(kvm.memslots.gfn_to_memslot(0x10), 0x10, 12)
    pfn = pte_pfn(kvm.mm.pgtable.get_pte(hva))
    count = kvm.phys.page_count(pfn)
    # 6.13's stage2_attr_walker returns -EAGAIN for an invalid entry: the
    # page __kvm_faultin_pfn took is released as unused, the guest retries
    ret, detail = abort_again(sim, 0x10000, "write", FSC_PERM)
    assert (ret, detail) == (0, "-EAGAIN: the guest faults again")
    assert leaf(sim, 0x10000) == 0
    assert kvm.phys.page_count(pfn) == count


def test_get_user_mapping_size_reads_the_host_leaf(make_sim: Any) -> None:
    sim = make_sim(
        ram(access(0x10000, "write"), access(0x40_0000, "write"), extra='huge = "2M"'),
        arch="arm64",
        strategy=V6_13,
    )
    assert sim.run().passed
    kvm = sim.kvm
    slot = kvm.memslots.gfn_to_memslot(0)
    base = slot.userspace_addr
    # the host leaf's size (a THP's PMD: 2M), or -EAGAIN where the walk
    # finds no valid entry ("the userspace PTs are gone... replay")
    assert abort_later.get_user_mapping_size(kvm, base + 0x40_0000) == 1 << 21
    assert abort_later.get_user_mapping_size(kvm, base + 0x100_0000) == -EAGAIN


def test_v6_13_replays_the_fault_when_the_host_leaf_is_gone(
    make_sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim(ram(access(0x10000, "write")), arch="arm64", strategy=V6_13)
    assert sim.run().passed
    kvm = sim.kvm
    kvm.hooks.notifier_invalidate(kvm=kvm, start=0, end=1 << 30)
    hva = gfn_to_hva_memslot(kvm.memslots.gfn_to_memslot(0x10), 0x10, 12)
    pfn = pte_pfn(kvm.mm.pgtable.get_pte(hva))
    count = kvm.phys.page_count(pfn)
    # the walk under mmu_lock finds the userspace PTs gone (a stand-in: the
    # model's host changes them only with an invalidation, which the
    # sequence check would catch first); transparent_hugepage_adjust hands
    # the -EAGAIN back, out_unlock releases the page as unused, the guest
    # replays the fault and nothing is mapped
    monkeypatch.setattr(abort_later, "get_user_mapping_size", lambda _kvm, _hva: -EAGAIN)
    ret, detail = abort_again(sim, 0x10000, "write", FSC_FAULT)
    assert (ret, detail) == (0, "-EAGAIN: the guest faults again")
    assert leaf(sim, 0x10000) == 0
    assert kvm.phys.page_count(pfn) == count
