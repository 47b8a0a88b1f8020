"""H_ENTER / H_REMOVE, bad scenario input, the v4.15 handler against a stub
of its inline gup + VM_PFNMAP block, races, ageing, and the guest's
on-demand linear mapping."""

from __future__ import annotations

import pytest
from kvmsim_plugins.ppc_hpt.hpt import HptState
from kvmsim_plugins.ppc_hpt.hpte import (
    HPTE_R_R,
    HPTE_V_ABSENT,
    HPTE_V_VALID,
    KVMPPC_RMAP_INDEX,
    KVMPPC_RMAP_PRESENT,
)

from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import OK, HvaToPfnRequest, HvaToPfnResult
from kvmsim.host.constants import PTE_NONCACHED
from kvmsim.testing import build_sim

BASE = """
name = "t"
description = "t"
arch = "ppc_hpt"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
populate = true
[[memslot]]
gpa = 0
vma = "ram"
"""

ENTER = """
[[step]]
do = "hcall"
call = "H_ENTER"
ea = 0x12340000
gpa = 0x10000
"""


def test_h_remove_invalidates_and_unlinks() -> None:
    sim = build_sim(
        BASE
        + ENTER
        + """
[[step]]
do = "hcall"
call = "H_REMOVE"
ea = 0x12340000
expect_ret = "H_SUCCESS"
[[step]]
do = "hcall"
call = "H_REMOVE"
ea = 0x12340000
expect_ret = "H_NOT_FOUND"
[[step]]
do = "access"
ea = 0x12340000
gpa = 0x10000
op = "read"
expect = { outcome = "guest_fault" }
""",
        strategy="generic_v4_16",
    )
    report = sim.run()
    assert report.passed, [s.expect_failures for s in report.steps]
    st: HptState = sim.kvm.arch
    # kvmppc_do_h_remove: the slot is free and off the rmap chain of gfn 1,
    # which keeps only the guest's boot-time bolted linear entry for gpa 0x10000
    # (populated RAM: valid since boot, htab_bolt_mapping → H_ENTER, B.5)
    assert not st.v.get(0x90BA8, 0) & (HPTE_V_VALID | HPTE_V_ABSENT)
    linear = st.entered[0x10000]
    assert st.rmap.get(1, 0) & KVMPPC_RMAP_PRESENT
    assert st.rmap[1] & KVMPPC_RMAP_INDEX == linear
    assert st.forw[linear] == linear  # a chain of one
    assert [m.gpa for m in sim.kvm.hooks.hook.stage2_mappings(kvm=sim.kvm) if m.gpa == 0x10000]


def test_wrong_expect_ret_is_an_expectation_failure() -> None:
    report = build_sim(
        BASE + ENTER.replace("gpa = 0x10000", 'gpa = 0x10000\nexpect_ret = "H_PARAMETER"'),
        strategy="generic_v4_16",
    ).run()
    assert not report.passed
    assert report.steps[0].expect_failures == ["expect_ret: expected H_PARAMETER, got H_SUCCESS"]


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('psize = "2M"', "step[0].psize"),
        ('wimg = "X"', "step[0].wimg"),
        ('pp = "rwx"', "step[0].pp"),
        ('expect_ret = "H_MAYBE"', "step[0].expect_ret"),
    ],
)
def test_bad_hcall_fields_are_scenario_errors(extra: str, key: str) -> None:
    sim = build_sim(BASE + ENTER + extra + "\n", strategy="generic_v4_16")
    with pytest.raises(ScenarioError) as exc:
        sim.run()
    assert exc.value.key == key


def test_unknown_hcall_is_a_scenario_error() -> None:
    sim = build_sim(BASE + ENTER.replace("H_ENTER", "H_BOGUS"), strategy="generic_v4_16")
    with pytest.raises(ScenarioError):
        sim.run()


def test_v4_15_pfnmap_branch_with_a_stub_strategy() -> None:
    # B.5 step 7: gup failed, the VM_PFNMAP branch gives pfn, vm_page_prot
    # (is_ci) and write_ok = VM_WRITE; a cacheable HPTE over is_ci fails
    # with -EFAULT (step 9).  The stub stands for that block.
    sim = build_sim(
        BASE.replace("populate = true", "")
        + ENTER
        + """
[[step]]
do = "access"
ea = 0x12340000
gpa = 0x10000
op = "read"
""",
        strategy="ppc_original",
    )
    seen: list[HvaToPfnRequest] = []

    def stub(*, kvm: object, request: HvaToPfnRequest) -> HvaToPfnResult:
        seen.append(request)
        return HvaToPfnResult(status=OK, pfn=0x5000, page=None, writable=True, prot=PTE_NONCACHED)

    sim.hooks.hva_to_pfn = stub  # type: ignore[attr-defined]
    report = sim.run()
    assert report.steps[1].outcome == "efault"
    # the request carries the HPTE's page size, which the block's
    # hva + psize <= vm_end test needs
    assert seen[0].psize == 0x10000 and seen[0].write_fault is False


def test_v4_15_gup_page_is_put_and_dirtied_on_the_head() -> None:
    # B.5 step 7/11/12: a store pins a page; SetPageDirty on it, put_page(pages[0])
    sim = build_sim(
        BASE.replace("populate = true", "")
        + ENTER
        + """
[[step]]
do = "access"
ea = 0x12340000
gpa = 0x10000
op = "write"
""",
        strategy="ppc_original",
    )
    report = sim.run()
    assert report.steps[1].outcome == "mapped" and report.steps[1].writable
    assert sim.phys.others_refs() == {}
    pfn = report.steps[1].pfn
    assert pfn is not None and sim.phys.PageDirty(pfn)


@pytest.mark.parametrize("strategy", ["ppc_original", "generic_v4_16"])
def test_munmap_racing_before_the_install_is_not_installed(strategy: str) -> None:
    # B.5 step 11: mmu_notifier_retry under the rmap lock -> the entry stays
    # absent, RESUME_GUEST; the retry finds no vma and fails with -EFAULT.
    sim = build_sim(
        BASE.replace("populate = true", "")
        + ENTER
        + """
[[step]]
do = "munmap"
vma = "ram"
offset = 0x10000
size = "64K"
at = "before_create_pte"
[[step]]
do = "access"
ea = 0x12340000
gpa = 0x10000
op = "write"
expect = { outcome = "efault", verdicts = [] }
""",
        strategy=strategy,
    )
    report = sim.run()
    assert report.passed, [s.expect_failures for s in report.steps]
    assert any(
        e["event"] == "hpt_install" and e.get("why") == "mmu_notifier_retry" for e in report.events
    )
    assert sim.phys.others_refs() == {}


def test_ageing_clears_r_through_the_rmap() -> None:
    # kvm_age_rmapp: R cleared in the HPTE, remembered in guest_rpte; young once
    sim = build_sim(
        BASE + ENTER + '[[step]]\ndo = "access"\nea = 0x12340000\ngpa = 0x10000\nop = "read"\n',
        strategy="generic_v4_16",
    )
    sim.run()
    kvm = sim.kvm
    st: HptState = kvm.arch
    assert st.r[0x90BA8] & HPTE_R_R  # the hardware set R on the access
    slot = kvm.memslots.slots[0]
    hva = slot.userspace_addr + 0x10000
    assert kvm.notifier.clear_young(kvm.mm, hva, hva + 0x10000) is True
    assert not st.r[0x90BA8] & HPTE_R_R
    assert st.guest_rpte[0x90BA8] & HPTE_R_R
    assert kvm.notifier.clear_young(kvm.mm, hva, hva + 0x10000) is False


def test_linear_mapping_is_entered_by_the_guest_on_demand() -> None:
    # an access with ea == gpa: the guest's hash_page H_ENTERs it after the DSI
    report = build_sim(
        BASE.replace("populate = true", "")
        + """
[[step]]
do = "access"
gpa = 0x20000
op = "write"
expect = { outcome = "mapped", frame = "host", writable = true, verdicts = [] }
""",
        strategy="generic_v4_16",
    ).run()
    assert report.passed
    assert any(e["event"] == "guest_hash_page" for e in report.events)


def test_explicit_ea_without_hpte_is_a_guest_dsi() -> None:
    report = build_sim(
        BASE
        + """
[[step]]
do = "access"
ea = 0x50000000
gpa = 0x20000
op = "read"
expect = { outcome = "guest_fault", verdicts = [] }
""",
        strategy="generic_v4_16",
    ).run()
    assert report.passed
