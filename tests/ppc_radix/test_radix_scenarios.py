"""The builtin radix-* scenarios under the v4.17 handler with the generic
v4.16 hva_to_pfn (generic_v4_16), checked against the kernel's semantics."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from kvmsim_plugins.ppc_radix.dsisr import DSISR_ISSTORE, DSISR_NOHPTE, DSISR_PROTFAULT
from kvmsim_plugins.ppc_radix.tree import PMD_SHIFT, PUD_SHIFT

from kvmsim.errors import ScenarioError
from kvmsim.host.constants import PTE_DIRTY, PTE_NONCACHED, PTE_PFN_SHIFT, PTE_WRITE, PTE_YOUNG
from kvmsim.runner import RunReport, Simulation
from kvmsim.scenario import builtin_scenarios
from kvmsim.testing import build_sim

STRATEGY = "generic_v4_16"  # selects the v4.17 radix handler
LIB = {p.stem: p for p in builtin_scenarios() if p.stem.startswith("radix-")}


def run(name: str, arch: str | None = None) -> tuple[Simulation, RunReport]:
    sim = build_sim(LIB[name], strategy=STRATEGY, arch=arch)
    return sim, sim.run()


def leaves(sim: Simulation) -> list[tuple[int, int, int]]:
    return list(sim.kvm.arch.tree.leaves())


def faults_in_step(report: RunReport, step: int) -> list[dict[str, Any]]:
    return [
        e
        for e in report.events
        if e.get("event") == "kvm_page_fault" and e.get("ph") == "B" and e.get("step") == step
    ]


def test_library_has_the_radix_scenarios() -> None:
    assert {
        "radix-anon-read-write",
        "radix-hugetlb-2m",
        "radix-hugetlb-misaligned",
        "radix-hugetlb-1g",
        "radix-munmap",
        "radix-ro-file",
        "radix-rc-bits",
        "radix-mmio-pfnmap",
        "radix-mmio-ro-store",
    } <= set(LIB)


CLEAN = [
    "radix-hugetlb-2m",
    "radix-hugetlb-misaligned",
    "radix-hugetlb-1g",
    "radix-munmap",
    "radix-ro-file",
    "radix-rc-bits",
    "radix-mmio-pfnmap",
]


@pytest.mark.parametrize("name", CLEAN)
def test_scenario_passes_under_v4_17_with_generic_hva_to_pfn(name: str) -> None:
    _, report = run(name)
    assert report.passed, (report.unexpected, [s.expect_failures for s in report.steps])
    assert report.verdicts == []


def test_anon_read_then_write_leaks_the_zero_page_at_the_read_step() -> None:
    # L.1: the v4.17 handler sets page = NULL for a PG_reserved pfn, so the
    # reference slow gup took on the zero page is never put.  Everything else
    # (frames, permissions, the COW store) is what a correct kernel does.
    sim, report = run("radix-anon-read-write")
    assert [(v.name, v.step) for v in report.verdicts] == [("refcount_leak", 0)]
    assert report.unexpected == ["step 0: refcount_leak"]
    assert all(not s.expect_failures for s in report.steps)
    read, write = report.steps
    assert read.pfn == sim.phys.zero_pfn and read.writable is False
    assert write.pfn != sim.phys.zero_pfn and write.writable is True
    assert sim.phys.others_refs() == {sim.phys.zero_pfn: 1}


def test_hugetlb_2m_is_one_2m_leaf_and_the_second_access_does_not_fault() -> None:
    # C.1 step 7: a compound page of >= 2M, gpa and hva equal modulo 2M → level 1
    sim, report = run("radix-hugetlb-2m")
    (lv,) = leaves(sim)
    assert lv[0] == 0 and lv[1] == PMD_SHIFT
    assert faults_in_step(report, 1) == []


def test_misaligned_hugetlb_gets_base_page_leaves() -> None:
    # gpa 64K vs hva 0 modulo 2M: the alignment test fails, level 0
    sim, _ = run("radix-hugetlb-misaligned")
    assert [s for _, s, _ in leaves(sim)] == [16, 16]


def test_hugetlb_1g_is_one_1g_leaf() -> None:
    sim, _ = run("radix-hugetlb-1g")
    (lv,) = leaves(sim)
    assert lv[:2] == (0x40000000, PUD_SHIFT)


def test_munmap_removes_the_leaves_and_the_next_access_faults_again() -> None:
    sim, report = run("radix-munmap")
    assert leaves(sim) == []
    assert sim.kvm.arch.tree.seqs == {}  # no seq left for a leaf that is gone
    (fault,) = faults_in_step(report, 3)
    assert int(fault["code"], 16) == DSISR_NOHPTE  # the whole entry is gone (v4.17)
    assert report.steps[3].outcome == "efault"


def test_ro_file_store_ends_in_efault_and_the_leaf_stays_read_only() -> None:
    # C.1 step 6: gup for write fails on a read-only vma → KVM_PFN_ERR_FAULT → -EFAULT
    sim, report = run("radix-ro-file")
    (fault,) = faults_in_step(report, 1)
    assert int(fault["code"], 16) == DSISR_PROTFAULT | DSISR_ISSTORE
    (lv,) = leaves(sim)
    assert not lv[2] & PTE_WRITE


# A read-only memslot over a read-only file.  powerpc never defines
# __KVM_HAVE_READONLY_MEM, so KVM_SET_USER_MEMORY_REGION refuses KVM_MEM_READONLY
# (-EINVAL) and the handlers' read-only branches cannot be reached from
# userspace; the tests below reach them by lifting that check, to pin what the
# source would do.
RO_MEMSLOT = """
name = "t-ro-memslot"
arch = "ppc_radix"
[[vma]]
name = "rom"
size = "1M"
backing = "file"
prot = "r"
shared = true
[[memslot]]
gpa = 0x0
vma = "rom"
readonly = true
[[step]]
do = "access"
gpa = 0x10000
op = "read"
[[step]]
do = "access"
gpa = 0x10000
op = "write"
"""


@pytest.fixture
def allow_ro_memslots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kvmsim.runner.unsupported", lambda _sc, _arch: None)


def test_ro_memslot_is_refused_on_powerpc() -> None:
    # check_memory_region_flags: KVM_MEM_READONLY only with __KVM_HAVE_READONLY_MEM
    with pytest.raises(ScenarioError) as e:
        build_sim(RO_MEMSLOT, strategy=STRATEGY)
    assert e.value.key == "memslot[0].readonly"
    assert "-EINVAL" in str(e.value)


def test_ro_memslot_store_is_a_dsi_to_the_guest(allow_ro_memslots: None) -> None:
    # C.1 step 2: KVM_MEM_READONLY and a store → DSI, RESUME_GUEST
    sim = build_sim(RO_MEMSLOT, strategy=STRATEGY)
    report = sim.run()
    assert report.steps[0].outcome == "mapped" and report.steps[0].writable is False
    assert report.steps[1].outcome == "guest_fault"
    assert sim.kvm.arch.dsi_queued == 1
    (lv,) = leaves(sim)
    assert not lv[2] & PTE_WRITE


def test_rc_bits_r_on_first_access_c_on_first_store() -> None:
    # C.1 step 7: every leaf the handler builds has _PAGE_ACCESSED (R);
    # _PAGE_DIRTY (C) only comes with _PAGE_WRITE
    sim = build_sim(LIB["radix-rc-bits"], strategy=STRATEGY)
    sc = sim.scenario
    read_only = Simulation(attrs.evolve(sc, steps=sc.steps[:1]), strategy=STRATEGY)
    read_only.run()
    (lv,) = leaves(read_only)
    assert lv[2] & PTE_YOUNG and not lv[2] & PTE_DIRTY and not lv[2] & PTE_WRITE
    sim.run()
    (lv,) = leaves(sim)
    assert lv[2] & PTE_YOUNG and lv[2] & PTE_DIRTY and lv[2] & PTE_WRITE


def test_mmio_pfnmap_without_device_is_an_mmio_outcome_through_stage_2() -> None:
    sim, report = run("radix-mmio-pfnmap")
    for step in report.steps:
        assert step.outcome == "mmio"
        assert step.value is None  # no device claimed the frame
        assert step.pfn is not None and not sim.phys.pfn_valid(step.pfn)
    for _, _, pte in leaves(sim):
        assert pte & PTE_NONCACHED  # copied from the host PTE (C.1 step 7)


def test_store_to_read_only_pfnmap_mmio_livelocks_under_v4_17() -> None:
    # L.2 / J.7: the page == NULL branch copies the host PTE, which has no
    # write bit; the store takes PROTFAULT again and again.
    sim, report = run("radix-mmio-ro-store")
    assert report.steps[1].outcome == "livelock"
    assert [(v.name, v.step) for v in report.verdicts] == [("livelock", 1)]
    codes = {int(f["code"], 16) for f in faults_in_step(report, 1)}
    assert codes == {DSISR_PROTFAULT | DSISR_ISSTORE}
    (lv,) = leaves(sim)
    assert not lv[2] & PTE_WRITE


def test_4k_arch_entry_point_uses_4k_leaves() -> None:
    sim, report = run("radix-rc-bits", arch="ppc_radix_4k")
    assert sim.kvm.page_shift == 12 and sim.kvm.arch.tree.pte_bits == 9
    assert sim.kvm.arch.version == "v4.17"  # the strategy's ppc_radix handler
    assert [s.page_size for s in report.steps] == [4096, 4096]
    assert [s for _, s, _ in leaves(sim)] == [12]


def _has_strategy(name: str) -> bool:
    from kvmsim.registry import discover

    return name in discover().get("strategy", {})


@pytest.mark.skipif(not _has_strategy("ppc_original"), reason="ppc_original not installed")
def test_v4_15_handler_makes_no_2m_leaf_and_fails_a_read_only_slot(
    allow_ro_memslots: None,
) -> None:
    # J.10: v4.15 compares the 2M bases of gpa and hva (0 vs the vma's base),
    # so the 2M hugetlbfs page is mapped with 64K leaves
    sim = build_sim(LIB["radix-hugetlb-2m"], strategy="ppc_original")
    report = sim.run()
    assert sim.kvm.arch.version == "v4.15"
    assert [s.page_size for s in report.steps] == [1 << 16, 1 << 16]
    assert {s for _, s, _ in leaves(sim)} == {16}
    # B.2 step 6: gfn_to_hva_memslot asks for write → KVM_HVA_ERR_RO_BAD → -EFAULT
    report = build_sim(RO_MEMSLOT, strategy="ppc_original").run()
    assert [s.outcome for s in report.steps] == ["efault", "efault"]


def test_shmem_thp_is_one_2m_leaf_from_its_compound_order() -> None:
    # kernel-notes §S.2: PageCompound (not PageAnon) sizes the leaf as for an
    # anonymous THP; the later loads hit it
    sim, report = run("radix-shmem-thp-2m")
    assert report.passed, (report.unexpected, [s.expect_failures for s in report.steps])
    ((gpa, shift, pte),) = leaves(sim)
    pfn = pte >> PTE_PFN_SHIFT
    assert (gpa, shift) == (0x200000, PMD_SHIFT) and pfn == sim.phys.compound_head(pfn)
    assert not sim.phys.PageAnon(pfn) and sim.phys.PageTransCompound(pfn)
    assert faults_in_step(report, 1) == [] and faults_in_step(report, 2) == []


def test_a_pte_mapped_shmem_thp_one_subpage_off_gets_a_wrong_2m_leaf() -> None:
    # §S.1/§S.2/§M.5: pgoff 1, so do_set_pmd fell back to PTEs, but the v4.17
    # handler still maps 2M from the head: gpa 0x30000 (page 3) reaches
    # subpage 3 where the host maps file index 4, subpage 4
    sim, report = run("radix-shmem-thp-misaligned")
    ((gpa, shift, pte),) = leaves(sim)
    pfn = pte >> PTE_PFN_SHIFT
    head = sim.phys.compound_head(pfn)
    assert (gpa, shift, pfn) == (0, PMD_SHIFT, head)
    host, hshift = sim.mm.pgtable.find_linux_pte(sim.vma("ram").start + 0x30000)
    assert hshift == 0 and host is not None and (host >> PTE_PFN_SHIFT) == head + 4
    assert {(v.name, v.step) for v in report.verdicts} == {
        ("wrong_frame", 0),
        ("outside_memslot", 0),
    }
