"""The x86 EPT plugin's other paths: the EPT walk and exit qualification,
MMIO SPTEs, read-only memslots, memslot alignment, async PF without the
guest's MSR and on a double fault, ageing, dirty-log teardown, and the
v6.13 release rule."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsim_plugins.x86_ept import common, ept

from kvmsim.errors import ScenarioError
from kvmsim.kvm.memslot import Memslot

STRATEGY = "generic_v4_16"

HEAD = """
name = "t"
arch = "x86_ept"
[[vma]]
name = "ram"
size = "8M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
"""


def _access(gpa: int, op: str) -> str:
    return f'[[step]]\ndo = "access"\ngpa = {gpa:#x}\nop = "{op}"\n'


def _events(report: Any, name: str, step: int | None = None) -> list[dict[str, Any]]:
    return [
        e for e in report.events if e["event"] == name and (step is None or e.get("step") == step)
    ]


def test_exit_qualification_of_a_store_to_a_read_only_spte(make_sim: Any) -> None:
    sim = make_sim(HEAD + _access(0x1000, "read"), strategy=STRATEGY)
    sim.run()
    t = ept.translate(sim.kvm, 0x1000, "write")
    assert t.fault is not None and t.fault.kind == "ept_violation"
    # SDM 27.2.1: bit 1 (write access), bits 3 and 5 (the entry is readable
    # and executable, not writable), bits 7 and 8 (a linear address)
    assert t.fault.code == 0x2 | 0x8 | 0x20 | 0x180
    # handle_ept_violation turns that into write|present (+ GUEST_FINAL)
    missing = ept.translate(sim.kvm, 0x40_0000, "read")
    assert missing.fault is not None and missing.fault.code == 0x1 | 0x180


def test_hit_sets_accessed_and_dirty_like_the_hardware(make_sim: Any) -> None:
    sim = make_sim(HEAD + _access(0x1000, "read"), strategy=STRATEGY)
    sim.run()
    st = sim.kvm.arch
    table, idx, _ = st.find_spte(0x1000)
    table[idx] &= ~(ept.EPT_A | ept.EPT_D)
    ept.translate(sim.kvm, 0x1000, "read")
    assert table[idx] & ept.EPT_A and not table[idx] & ept.EPT_D
    # the zero page is mapped read-only: a store does not get through
    assert ept.translate(sim.kvm, 0x1000, "write").fault is not None


def test_memslot_less_gpa_gets_an_mmio_spte(make_sim: Any) -> None:
    text = HEAD + _access(0xFEE0_0000, "write") + _access(0xFEE0_0000, "read")
    sim = make_sim(text, strategy=STRATEGY)
    report = sim.run()
    # H step 9: NOSLOT → set_mmio_spte → RET_PF_EMULATE → KVM_EXIT_MMIO
    assert [s.outcome for s in report.steps] == ["mmio", "mmio"]
    table, idx, level = sim.kvm.arch.find_spte(0xFEE0_0000)
    assert level == 1 and ept.is_mmio_spte(table[idx])
    # the second access finds the MMIO SPTE: an EPT misconfiguration,
    # handled without calling hva_to_pfn again
    assert not _events(report, "hva_to_pfn", step=1)
    assert not sim.hooks.hook.stage2_mappings(kvm=sim.kvm)  # MMIO SPTEs map nothing


def test_store_to_read_only_memslot_is_emulated(make_sim: Any) -> None:
    text = HEAD.replace('vma = "ram"\n', 'vma = "ram"\nreadonly = true\n') + _access(
        0x2000, "write"
    )
    report = make_sim(text, strategy=STRATEGY).run()
    # A.2: KVM_HVA_ERR_RO_BAD → KVM_PFN_ERR_RO_FAULT; kvm_handle_bad_page
    # returns RET_PF_EMULATE: the emulated store exits to userspace as MMIO
    assert report.steps[0].outcome == "mmio"
    assert _events(report, "kvm_handle_bad_page")[0]["ret"] == "RET_PF_EMULATE"


def test_lpage_disallowed_follows_kvm_arch_create_memslot() -> None:
    # kvm_arch_create_memslot: the first and last huge frames when the slot
    # does not start/end on a huge boundary; all when gfn and hva are not
    # congruent modulo the huge size.
    slot = Memslot(id=0, base_gfn=0x200, npages=0x400, userspace_addr=0x7F00_0020_0000)
    assert not common.lpage_disallowed(slot, 0x200, 2)
    assert not common.lpage_disallowed(slot, 0x5FF, 2)
    misaligned = Memslot(
        id=0, base_gfn=0x200, npages=0x400, userspace_addr=0x7F00_0030_0000 + 0x1000
    )
    assert common.lpage_disallowed(misaligned, 0x400, 2)
    partial = Memslot(id=0, base_gfn=0x201, npages=0x400, userspace_addr=0x7F00_0020_1000)
    assert common.lpage_disallowed(partial, 0x201, 2)  # first huge frame is partial
    assert not common.lpage_disallowed(partial, 0x400, 2)
    assert common.lpage_disallowed(partial, 0x600, 2)  # last one too
    assert common.lpage_disallowed(None, 0, 2)


def test_hugetlbfs_2m_misaligned_memslot_maps_4k(make_sim: Any) -> None:
    text = """
name = "mis"
arch = "x86_ept"
[[vma]]
name = "huge"
size = "8M"
backing = "hugetlbfs"
huge = "2M"
shared = true
[[memslot]]
gpa = 0x1000
vma = "huge"
offset = 0
size = "4M"
""" + _access(0x3000, "write")
    report = make_sim(text, strategy=STRATEGY).run()
    # kvm_arch_create_memslot: gfn and hva not congruent modulo 2M → every
    # large page of the slot is disallowed
    assert (report.steps[0].outcome, report.steps[0].page_size) == ("mapped", 4096)
    assert report.steps[0].verdicts == []


ASYNC = (
    HEAD
    + """
[[step]]
do = "swap_out"
vma = "ram"
offset = 0x3000
"""
)


def test_async_pf_without_the_msr_halts_the_vcpu_until_the_page_is_there(make_sim: Any) -> None:
    sim = make_sim(ASYNC + _access(0x3000, "read"), strategy=STRATEGY)
    report = sim.run()
    # kvm_arch_async_page_not_present: the guest has not enabled async PF,
    # so KVM_REQ_APF_HALT; the vcpu blocks until the work is done, then the
    # completion prefaults the page and the access completes.
    assert report.steps[1].outcome == "mapped"
    assert _events(report, "kvm_apf_halt")
    assert sim.kvm.arch.apf[0].events == []  # nothing was injected
    assert sim.phys.others_refs() == {}


def test_second_fault_on_a_queued_gfn_halts(make_sim: Any) -> None:
    text = ASYNC + '[[step]]\ndo = "async_pf"\n' + _access(0x3000, "read") + _access(0x3000, "read")
    report = make_sim(text, strategy=STRATEGY).run()
    assert report.steps[2].outcome == "async_pf"
    # kvm_find_async_pf_gfn: the gfn is still queued → APF_HALT, the work
    # runs, the page becomes present and the access completes
    assert _events(report, "kvm_async_pf_doublefault", step=3)
    assert report.steps[3].outcome == "mapped"


def test_disabling_async_pf_cancels_queued_work(make_sim: Any) -> None:
    text = (
        ASYNC
        + '[[step]]\ndo = "async_pf"\n'
        + _access(0x3000, "read")
        + '[[step]]\ndo = "async_pf"\nenable = false\n'
    )
    sim = make_sim(text, strategy=STRATEGY)
    report = sim.run()
    assert report.steps[2].outcome == "async_pf"
    apf = sim.kvm.arch.apf[0]
    assert not apf.queue and not apf.gfns and not apf.enabled


def test_ageing_clears_accessed_bits(make_sim: Any) -> None:
    text = (
        HEAD
        + _access(0x1000, "write")
        + _access(0x2000, "write")
        + '[[step]]\ndo = "age"\nvma = "ram"\nsize = "8M"\n'
        + '[[step]]\ndo = "age"\nvma = "ram"\nsize = "8M"\n'
    )
    sim = make_sim(text, strategy=STRATEGY)
    report = sim.run()
    # kvm_age_rmapp → mmu_spte_age: the two SPTEs the faults installed had A
    # (the prefetched neighbours did not); cleared once, then old
    assert [report.steps[i].young for i in (2, 3)] == [True, False]
    assert [e["gfn"] for e in _events(report, "kvm_age_page", step=2)] == ["0x1", "0x2"]
    assert not _events(report, "kvm_age_page", step=3)


@pytest.mark.parametrize(
    ("strategy", "prefetched"), [("generic_v4_16", True), ("follow_pfn_2024", False)]
)
def test_a_prefetched_neighbour_is_old(make_sim: Any, strategy: str, prefetched: bool) -> None:
    # direct_pte_prefetch (v4.16, v5.13) maps the seven SPTEs before the
    # faulting one speculatively, without A; v6.13's TDP MMU prefetches nothing
    text = HEAD.replace('backing = "anon"', 'backing = "anon"\npopulate = true') + _access(
        0x17000, "write"
    )
    sim = make_sim(text, strategy=strategy)
    sim.run()
    st = sim.kvm.arch
    table, idx, _level = st.find_spte(0x16000)
    spte = table.get(idx, 0) if table is not None else 0
    assert ept.is_shadow_present_pte(spte) is prefetched
    assert not spte & ept.EPT_A
    mm = sim.mm
    base = sim.vma("ram").start
    assert mm.notifiers.test_young(mm, base + 0x16000) is False
    assert mm.notifiers.test_young(mm, base + 0x17000) is True


def test_dirty_log_disable_zaps_collapsible_4k_sptes(make_sim: Any) -> None:
    text = (
        """
name = "thp-log"
arch = "x86_ept"
[[vma]]
name = "ram"
size = "8M"
backing = "anon"
huge = "2M"
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "dirty_log"
slot = 0
action = "enable"
"""
        + _access(0x201000, "write")
        + """
[[step]]
do = "dirty_log"
slot = 0
action = "disable"
"""
        + _access(0x201000, "write")
    )
    report = make_sim(text, strategy=STRATEGY).run()
    # L.5: logging forces 4K; turning it off runs kvm_mmu_zap_collapsible_sptes
    # (the pfn is part of a PMD-mapped THP), so the next fault maps 2M again
    assert report.steps[1].page_size == 4096
    assert _events(report, "kvm_mmu_zap_collapsible_sptes")[0]["zapped"] == 1
    assert report.steps[3].page_size == 2 << 20
    assert report.passed, report.to_json()


def test_bad_dirty_log_action_is_a_scenario_error(make_sim: Any) -> None:
    text = HEAD + '[[step]]\ndo = "dirty_log"\nslot = 0\naction = "flip"\n'
    with pytest.raises(ScenarioError, match="unknown dirty_log action"):
        make_sim(text, strategy=STRATEGY).run()
    text = HEAD + '[[step]]\ndo = "dirty_log"\nslot = 3\naction = "get"\n'
    with pytest.raises(ScenarioError, match=r"step\[0\]\.slot: no memslot with this index"):
        make_sim(text, strategy=STRATEGY).run()


def test_v6_13_handler_releases_only_the_refcounted_page(make_sim: Any) -> None:
    text = (
        """
name = "v613"
arch = "x86_ept"
[[vma]]
name = "ram"
size = "8M"
backing = "anon"
[[vma]]
name = "bar"
size = "1M"
backing = "pfnmap_linear"
pfn_kind = "ram"
shared = true
[[memslot]]
gpa = 0
vma = "ram"
[[memslot]]
gpa = 0x1_0000_0000
vma = "bar"
"""
        + _access(0x5000, "read")
        + _access(0x1_0000_2000, "read")
        + _access(0x6000, "write")
    )
    sim = make_sim(text, strategy="follow_pfn_2024")
    assert sim.kvm.arch.version == "v6.13"
    report = sim.run()
    # E.9: the zero page is released through its page (no PG_reserved
    # skip: no leak), a PFNMAP pfn carries no reference and is not released
    # (no underflow), an anonymous page is released once.
    assert [s.outcome for s in report.steps] == ["mapped"] * 3
    assert [s.verdicts for s in report.steps] == [[], [], []]
    assert sim.phys.others_refs() == {}


def test_unknown_handler_version_is_refused(make_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import kvmsim_plugins.strategies.follow_pfn_2024 as f24

    from kvmsim import registry
    from kvmsim.errors import PluginError

    # plugin information is read once per process: forget it around the patch
    monkeypatch.setattr(f24, "HANDLERS", {"*": "v9.99"})
    registry.reset_cache()
    try:
        with pytest.raises(PluginError, match=r"no fault handler version 'v9\.99'"):
            make_sim(HEAD, strategy="follow_pfn_2024")
    finally:
        monkeypatch.undo()
        registry.reset_cache()
