"""The builtin hpt-* scenarios under both HPT handlers (v4.15 via
ppc_original, v5.7 via generic_v4_16 and upstream_final), with checks of the
HPT state the kernel semantics (B.5, C.2, L.1) say they must leave."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsim_plugins.ppc_hpt.hpt import HptState
from kvmsim_plugins.ppc_hpt.hpte import (
    HPTE_R_C,
    HPTE_R_I,
    HPTE_R_M,
    HPTE_R_WIMG,
    HPTE_V_ABSENT,
    HPTE_V_VALID,
    KVMPPC_RMAP_INDEX,
    KVMPPC_RMAP_PRESENT,
)

from kvmsim.errors import ScenarioError
from kvmsim.runner import RunReport, Simulation
from kvmsim.scenario import builtin_scenarios
from kvmsim.testing import build_sim

LIB = {p.stem: p for p in builtin_scenarios() if p.stem.startswith("hpt-")}
STRATEGIES = ("ppc_original", "generic_v4_16", "upstream_final")


def run(name: str, strategy: str) -> tuple[Simulation, RunReport]:
    sim = build_sim(LIB[name], strategy=strategy)
    return sim, sim.run()


def faults(report: RunReport, step: int) -> list[dict[str, Any]]:
    return [
        e
        for e in report.events
        if e.get("event") == "kvm_page_fault" and e.get("ph") == "B" and e.get("step") == step
    ]


def test_library_has_the_hpt_scenarios() -> None:
    assert set(LIB) >= {
        "hpt-enter-first-access",
        "hpt-cacheable-over-io",
        "hpt-ci-over-ram",
        "hpt-munmap-absent",
        "hpt-hugetlb-16m",
        "hpt-16m-over-small-pages",
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(LIB))
def test_scenario_passes(name: str, strategy: str) -> None:
    # every expectation is what both the v4.15 and the v5.7 HPT handler do
    _sim, report = run(name, strategy)
    assert report.passed, [(s.index, s.outcome, s.detail, s.expect_failures) for s in report.steps]
    assert not report.verdicts


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_first_access_faults_in_then_hits(strategy: str) -> None:
    sim, report = run("hpt-enter-first-access", strategy)
    st: HptState = sim.kvm.arch
    # B.5 H_ENTER: no host PTE -> the entry goes in absent
    # (the guest's boot-time bolting of its populated RAM runs before step 0)
    enter = next(
        e for e in report.events if e["event"] == "kvmppc_do_h_enter" and e.get("step") == 0
    )
    assert enter["state"] == "absent"
    # the first store takes exactly one fault (absent -> virtual-mode handler)
    assert len(faults(report, 1)) == 1
    # the second access is a hardware hit on the same HPTE
    assert faults(report, 2) == []
    v = st.v[0x90BA8]
    assert v & HPTE_V_VALID and not v & HPTE_V_ABSENT
    # the rmap of gfn 1 (gpa 0x10000) chains exactly that HPTE (B.5 step 11)
    assert st.rmap[1] & KVMPPC_RMAP_PRESENT
    assert st.rmap[1] & KVMPPC_RMAP_INDEX == 0x90BA8
    # populated memory: H_ENTER enters it valid at once, no fault on access
    assert faults(report, 4) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_munmap_makes_the_hpte_absent(strategy: str) -> None:
    sim, report = run("hpt-munmap-absent", strategy)
    st: HptState = sim.kvm.arch
    # kvm_unmap_rmapp: absent, unlinked from gfn 1's chain, R/C harvested
    v = st.v[0x90BA8]
    assert v & HPTE_V_ABSENT and not v & HPTE_V_VALID
    assert not st.rmap.get(1, 0) & KVMPPC_RMAP_PRESENT
    assert len(faults(report, 5)) == 1  # the next access faults again
    # after migrate, the refault maps the new frame (valid again)
    assert len(faults(report, 7)) == 1
    assert report.steps[7].pfn is not None and report.steps[7].pfn != report.steps[3].pfn


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ci_hpte_over_ram_is_made_cacheable(strategy: str) -> None:
    sim, _report = run("hpt-ci-over-ram", strategy)
    st: HptState = sim.kvm.arch
    # hpte_cache_flags_ok fails with !is_ci: WIMG forced to M, no error (B.5)
    bolted = {st.entered[p] for p in st.bolted if p in st.entered}  # boot: WIMG M RAM
    for index, v in st.v.items():
        if v & HPTE_V_VALID and index not in bolted:
            assert st.r[index] & HPTE_R_WIMG == HPTE_R_M
            # the guest's view keeps what it asked for
            assert st.guest_rpte[index] & HPTE_R_I


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_16m_hpte_over_hugetlbfs_points_at_the_head(strategy: str) -> None:
    sim, report = run("hpt-hugetlb-16m", strategy)
    (m,) = sim.kvm.hooks.hook.stage2_mappings(kvm=sim.kvm)
    assert m.size == 16 << 20 and m.gpa == 0x1000000
    # the 16M host page's head frame, 16M-aligned in host memory
    assert m.pfn % 256 == 0 and sim.phys.PageHuge(m.pfn)
    assert report.steps[1].pfn == m.pfn + 0x23


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_16m_over_64k_pages_drops_its_page(strategy: str) -> None:
    sim, report = run("hpt-16m-over-small-pages", strategy)
    # psize > pte_size: -EFAULT after out_put released the page it got
    assert report.steps[1].outcome == "efault"
    assert sim.phys.others_refs() == {}
    st: HptState = sim.kvm.arch
    # only the guest's boot-time bolted linear entries (populated ram2) remain
    assert all(m.gpa in st.bolted for m in sim.kvm.hooks.hook.stage2_mappings(kvm=sim.kvm))


def test_v5_7_leaks_the_zero_page_reference_v4_15_does_not() -> None:
    # L.1 / C.2: from v5.7 HPT takes page = NULL for the PG_reserved zero
    # page, so slow gup's reference on it is never dropped; v4.15 put_page()s
    # pages[0] directly.
    text = """
name = "zero"
description = "read of untouched anonymous memory"
arch = "ppc_hpt"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "hcall"
call = "H_ENTER"
ea = 0x12340000
gpa = 0x10000
[[step]]
do = "access"
ea = 0x12340000
gpa = 0x10000
op = "read"
"""
    old = build_sim(text, strategy="ppc_original")
    r_old = old.run()
    assert r_old.steps[1].outcome == "mapped" and not r_old.verdicts
    new = build_sim(text, strategy="upstream_final")
    r_new = new.run()
    assert r_new.steps[1].outcome == "mapped"
    assert [v.name for v in r_new.verdicts] == ["refcount_leak"]
    assert new.phys.others_refs() == {new.phys.zero_pfn: 1}
    # the zero page is mapped read-only either way
    assert r_old.steps[1].writable is False and r_new.steps[1].writable is False


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_dirty_log_harvests_and_clears_c_bits(strategy: str) -> None:
    # kvm_test_clear_dirty_npages: every reported page's HPTE loses C (kept in
    # guest_rpte); the munmapped page's C went to the slot's dirty bitmap at
    # unmap (kvmppc_unmap_hpte → kvmppc_update_dirty_map), which the get
    # consumed
    sim, report = run("hpt-dirty-log", strategy)
    assert report.passed, [(s.index, s.outcome, s.detail, s.expect_failures) for s in report.steps]
    st: HptState = sim.kvm.arch
    assert not [i for i, r in st.r.items() if r & HPTE_R_C and st.v.get(i, 0) & HPTE_V_VALID]
    assert len(sim.kvm.dirty.bitmaps[0]) == 0
    logs = [e for e in report.events if e["event"] == "kvmppc_hv_get_dirty_log_hpt"]
    # the C bits harvested per get; the third get also reports 0x10000, from
    # the bitmap (its expect_dirty holds, report.passed above)
    assert [e["dirty"] for e in logs] == [["0x10000"], [], ["0x30000"]]


def test_dirty_log_on_a_slot_not_logging_is_a_scenario_error() -> None:
    # KVM would answer -ENOENT: a scenario asking for it is a mistake (exit 2)
    text = LIB["hpt-dirty-log"].read_text().replace('action = "enable"', 'action = "disable"')
    with pytest.raises(ScenarioError, match=r"step\[3\]\.slot: dirty logging is not enabled"):
        build_sim(text, strategy="generic_v4_16").run()


def test_v5_7_resumes_on_a_non_present_host_pte(monkeypatch: pytest.MonkeyPatch) -> None:
    # book3s_64_mmu_hv.c of 5.7.14 (ae49dedaa92b, in v5.7 as released): a
    # host PTE found non-present after the page was looked up (a THP
    # collapse or migration in flight) puts the page and resumes the guest,
    # which faults again; before the fix it was taken for a cache-inhibited
    # mapping
    from kvmsim_plugins.ppc_hpt import handler_v5_7

    from kvmsim.host.constants import PTE_PRESENT

    text = """
name = "np"
description = "store, its host PTE non-present at the host-PTE read"
arch = "ppc_hpt"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "hcall"
call = "H_ENTER"
ea = 0x12340000
gpa = 0x10000
[[step]]
do = "access"
ea = 0x12340000
gpa = 0x10000
op = "write"
"""
    sim = build_sim(text, strategy="upstream_final")
    tail = handler_v5_7.host_pte_tail
    seen: list[int] = []

    def non_present_once(kvm: Any, ctx: Any, *args: Any, **kw: Any) -> Any:
        if not seen:
            pte = kvm.mm.pgtable.get_pte(ctx.hva)
            seen.append(pte)
            kvm.mm.pgtable.set_pte(ctx.hva, pte & ~PTE_PRESENT)
            try:
                return tail(kvm, ctx, *args, **kw)
            finally:
                kvm.mm.pgtable.set_pte(ctx.hva, pte)
        return tail(kvm, ctx, *args, **kw)

    monkeypatch.setattr(handler_v5_7, "host_pte_tail", non_present_once)
    report = sim.run()
    assert seen
    resumed = [e for e in report.events if e["event"] == "resume_guest"]
    assert resumed and resumed[0]["why"] == "host PTE missing or not present"
    # the retried fault maps the page; gup-fast's reference of the first
    # attempt was put
    assert report.steps[1].outcome == "mapped"
    assert sim.phys.others_refs() == {}
