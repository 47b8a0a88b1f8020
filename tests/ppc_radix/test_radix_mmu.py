"""The radix tree, the hardware walk, and kvmppc_create_pte / kvm_unmap_radix
/ kvm_age_radix of each kernel version, exercised directly."""

from __future__ import annotations

import pytest
from kvmsim_plugins.ppc_radix import mmu
from kvmsim_plugins.ppc_radix.dsisr import (
    DSISR_BAD_FAULT_64S,
    DSISR_ISSTORE,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    DSISR_PRTABLE_FAULT,
    DSISR_SET_RC,
    SRR1_ISI_N_OR_G,
    SRR1_ISI_NOPT,
)
from kvmsim_plugins.ppc_radix.tree import (
    GPA_BITS,
    PGD_SHIFT,
    PMD_SHIFT,
    PMD_SIZE,
    PUD_SHIFT,
    PUD_SIZE,
    RadixTree,
)

from kvmsim.cmodel import EAGAIN, EBUSY
from kvmsim.host.constants import (
    PTE_DIRTY,
    PTE_EXEC,
    PTE_GUARDED,
    PTE_LEAF,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_READ,
    PTE_WRITE,
    PTE_YOUNG,
)
from kvmsim.runner import Simulation
from kvmsim.testing import build_sim

SCENARIO = """
name = "radix-unit"
description = "an 8M anonymous memslot at gpa 0"
arch = "ppc_radix"
[[vma]]
name = "ram"
size = "8M"
backing = "anon"
prot = "rw"
[[memslot]]
gpa = 0
vma = "ram"
"""
RW = PTE_PRESENT | PTE_READ | PTE_WRITE | PTE_EXEC | PTE_YOUNG | PTE_DIRTY
RO = PTE_PRESENT | PTE_READ | PTE_EXEC | PTE_YOUNG


def sim_for(version: str, arch: str = "ppc_radix") -> Simulation:
    sim = build_sim(SCENARIO, strategy="generic_v4_16", arch=arch, trace=False)
    sim.kvm.arch = mmu.RadixState(sim.kvm.page_shift, version)
    return sim


def pte(pfn: int, bits: int = RW) -> int:
    return (pfn << PTE_PFN_SHIFT) | bits


def create(sim: Simulation, gpa: int, value: int, level: int, seq: int | None = None) -> int:
    kvm = sim.kvm
    return mmu.create_pte(kvm, gpa, value, level, kvm.mmu_notifier_seq if seq is None else seq)


# ------------------------------------------------------------------ geometry


def test_geometry_is_linux_radix_for_64k_and_4k_pages() -> None:
    # radix-64k.h: PTE 5, PMD 9, PUD 9, PGD 13 bits; radix-4k.h: PTE 9
    assert (PGD_SHIFT, PUD_SHIFT, PMD_SHIFT, GPA_BITS) == (39, 30, 21, 52)
    assert RadixTree(16).pte_bits == 5 and RadixTree(12).pte_bits == 9
    assert PGD_SHIFT + 13 == GPA_BITS


def test_arch_info_of_both_entry_points() -> None:
    from kvmsim_plugins.ppc_radix import arch_info
    from kvmsim_plugins.ppc_radix.radix4k import arch_info as arch_info_4k

    assert arch_info().page_sizes == (1 << 16, PMD_SIZE, PUD_SIZE)
    assert arch_info_4k().name == "ppc_radix_4k"
    assert arch_info_4k().page_sizes == (1 << 12, PMD_SIZE, PUD_SIZE)


def test_bad_fault_64s_is_the_v4_17_mask() -> None:
    # reg.h (v4.17): PRTABLE_FAULT is one of the "bad" bits, KEYFAULT is not
    assert DSISR_BAD_FAULT_64S & DSISR_PRTABLE_FAULT
    assert not DSISR_BAD_FAULT_64S & (DSISR_SET_RC | DSISR_NOHPTE | DSISR_PROTFAULT)
    assert not DSISR_BAD_FAULT_64S & 0x00200000  # KEYFAULT
    # BAD_DIRECT_ST|ATTR_CONFLICT|BADACCESS|BAD_EXT_CTRL|UNSUPP_MMU|PRTABLE_FAULT|
    # ICSWX_NO_CT|BAD_COPYPASTE|BAD_AMO|BAD_CI_LDST
    assert DSISR_BAD_FAULT_64S == 0xA41A400E


# ----------------------------------------------------------------- translate


def fault_code(sim: Simulation, gpa: int, op: str) -> tuple[str, int] | None:
    t = mmu.translate(sim.kvm, gpa, gpa, op)
    return None if t.fault is None else (t.fault.kind, t.fault.code)


def test_translate_reports_the_hdsi_and_hisi_causes() -> None:
    # L.2: invalid → NOHPTE; not permitted → PROTFAULT; R/C → SET_RC; +ISSTORE
    sim = sim_for("v4.17")
    assert fault_code(sim, 0x10000, "read") == ("hdsi", DSISR_NOHPTE)
    assert fault_code(sim, 0x10000, "write") == ("hdsi", DSISR_NOHPTE | DSISR_ISSTORE)
    assert fault_code(sim, 0x10000, "exec") == ("hisi", SRR1_ISI_NOPT)
    assert create(sim, 0x10000, pte(0x40, RO), 0) == 0
    assert fault_code(sim, 0x10000, "read") is None
    assert fault_code(sim, 0x10000, "exec") is None
    assert fault_code(sim, 0x10000, "write") == ("hdsi", DSISR_PROTFAULT | DSISR_ISSTORE)
    # writable but C clear: a store needs C set
    assert create(sim, 0x20000, pte(0x41, RW & ~PTE_DIRTY), 0) == 0
    assert fault_code(sim, 0x20000, "read") is None
    assert fault_code(sim, 0x20000, "write") == ("hdsi", DSISR_SET_RC | DSISR_ISSTORE)
    # R clear: every access needs R set
    assert create(sim, 0x30000, pte(0x42, RW & ~PTE_YOUNG), 0) == 0
    assert fault_code(sim, 0x30000, "read") == ("hdsi", DSISR_SET_RC)
    assert fault_code(sim, 0x30000, "exec") == ("hisi", DSISR_SET_RC)
    # no execute permission, or guarded I/O storage: HISI N_OR_G
    assert create(sim, 0x40000, pte(0x43, RW & ~PTE_EXEC), 0) == 0
    assert fault_code(sim, 0x40000, "exec") == ("hisi", SRR1_ISI_N_OR_G)
    assert create(sim, 0x50000, pte(0x44, RW | PTE_GUARDED), 0) == 0
    assert fault_code(sim, 0x50000, "exec") == ("hisi", SRR1_ISI_N_OR_G)
    hit = mmu.translate(sim.kvm, 0x10000 + 0x123, 0, "read")
    assert hit.pfn == 0x40 and hit.page_size == 1 << 16 and not hit.writable


def test_hisi_reaches_the_handler_with_dsisr_zero() -> None:
    # book3s_hv.c H_INST_STORAGE: fault_dsisr = 0, so no SET_RC fast path; the
    # exec fault is handled as a read miss and maps the page
    sim = build_sim(SCENARIO, strategy="generic_v4_16")
    sc = sim.scenario
    from kvmsim.kvm.vcpu import guest_access

    r = guest_access(sim.kvm, 0, 0x10000, 0x10000, "exec")
    assert r.outcome == "mapped"
    ev = [e for e in sim.tracer.events if e["event"] == "kvmppc_book3s_radix_page_fault"]
    assert ev[0]["dsisr"] == "0"
    assert sc.name == "radix-unit"


def test_large_leaf_hit_gives_the_frame_of_the_page_inside() -> None:
    sim = sim_for("v4.17")
    assert create(sim, PMD_SIZE, pte(0x200), 1) == 0
    t = mmu.translate(sim.kvm, PMD_SIZE + 0x30000 + 5, 0, "write")
    assert (t.pfn, t.page_size, t.writable) == (0x203, PMD_SIZE, True)


# ------------------------------------------------------------- create_pte


def test_v4_15_large_pmd_even_cleared_gives_eagain() -> None:
    # v4.15: pmd_large() tests _PAGE_PTE only; unmap left it with PRESENT clear
    sim = sim_for("v4.15")
    assert create(sim, 0, pte(0x200), 1) == 0
    mmu.unmap_hva_range(sim.kvm, sim.vma("ram").start, sim.vma("ram").start + PMD_SIZE)
    v, _ = sim.kvm.arch.tree.lookup(0)
    assert v & PTE_LEAF and not v & PTE_PRESENT and v >> PTE_PFN_SHIFT == 0x200
    assert create(sim, 0x10000, pte(0x201), 0) == -EAGAIN
    assert create(sim, 0, pte(0x200), 1) == -EAGAIN


@pytest.mark.parametrize("version", ["v4.15", "v4.16"])
def test_v4_15_16_pte_page_in_the_way_of_a_2m_leaf_is_ebusy(version: str) -> None:
    sim = sim_for(version)
    assert create(sim, 0x10000, pte(0x41), 0) == 0
    assert create(sim, 0, pte(0x200), 1) == -EBUSY


def test_v4_16_replaces_a_2m_leaf_and_a_cleared_one() -> None:
    sim = sim_for("v4.16")
    tree = sim.kvm.arch.tree
    assert create(sim, 0, pte(0x200), 1, seq=0) == 0
    assert create(sim, 0x10000, pte(0x41), 0, seq=0) == 0  # 2M leaf removed, pte page added
    assert [(g, s) for g, s, _ in tree.leaves()] == [(0x10000, 16)]
    assert tree.seqs == {0x10000: 0}


def test_v4_17_large_leaf_replaces_a_pte_page_and_forgets_its_seqs() -> None:
    sim = sim_for("v4.17")
    tree = sim.kvm.arch.tree
    assert create(sim, 0x10000, pte(0x41), 0, seq=0) == 0
    assert create(sim, 0x20000, pte(0x42), 0, seq=0) == 0
    sim.kvm.mmu_notifier_seq = 5
    assert create(sim, 0, pte(0x200), 1, seq=5) == 0
    assert [(g, s) for g, s, _ in tree.leaves()] == [(0, PMD_SHIFT)]
    assert tree.seqs == {0: 5}
    # and a 1G leaf frees the pmd table under it
    sim.kvm.mmu_notifier_seq = 6
    assert create(sim, 0, pte(0x4000), 2, seq=6) == 0
    assert [(g, s) for g, s, _ in tree.leaves()] == [(0, PUD_SHIFT)]
    assert tree.seqs == {0: 6}
    # and a 2M leaf inside it replaces the 1G leaf
    sim.kvm.mmu_notifier_seq = 7
    assert create(sim, PMD_SIZE, pte(0x4020), 1, seq=7) == 0
    assert [(g, s) for g, s, _ in tree.leaves()] == [(PMD_SIZE, PMD_SHIFT)]
    assert tree.seqs == {PMD_SIZE: 7}


def test_v4_17_same_leaf_already_there_is_success_and_keeps_its_seq() -> None:
    # "Check if someone else set the same thing": ret 0, nothing written, so the
    # leaf is still the one the first fault installed, with that fault's seq
    sim = sim_for("v4.17")
    tree = sim.kvm.arch.tree
    assert create(sim, 0x10000, pte(0x41), 0, seq=0) == 0
    sim.kvm.mmu_notifier_seq = 3
    assert create(sim, 0x10000, pte(0x41), 0, seq=3) == 0
    assert tree.seqs == {0x10000: 0}
    assert create(sim, 0x10000, pte(0x42), 0, seq=3) == 0  # a different pte replaces it
    assert tree.seqs == {0x10000: 3}


def test_create_pte_with_an_invalidation_since_the_seq_is_eagain() -> None:
    sim = sim_for("v4.17")
    sim.kvm.mmu_notifier_seq = 2
    assert create(sim, 0x10000, pte(0x41), 0, seq=1) == -EAGAIN
    assert list(sim.kvm.arch.tree.leaves()) == [] and sim.kvm.arch.tree.seqs == {}


# -------------------------------------------------------------------- unmap


@pytest.mark.parametrize(("version", "kept"), [("v4.15", True), ("v4.16", True), ("v4.17", False)])
def test_unmap_clears_present_only_before_v4_17(version: str, kept: bool) -> None:
    # kvm_unmap_radix: v4.15/v4.16 clear _PAGE_PRESENT, v4.17 clears ~0UL
    sim = sim_for(version)
    tree = sim.kvm.arch.tree
    assert create(sim, 0x10000, pte(0x41), 0) == 0
    start = sim.vma("ram").start
    mmu.unmap_hva_range(sim.kvm, start + 0x10000, start + 0x20000)
    table, idx, _ = tree.find_pte(0x10000)
    assert table is not None
    if kept:
        assert table[idx] == pte(0x41, (RW & ~PTE_PRESENT) | PTE_LEAF)
    else:
        assert idx not in table
    assert list(tree.leaves()) == [] and tree.seqs == {}


# ------------------------------------------------------------------ ageing


def test_clear_young_ages_the_leaf_and_the_next_access_takes_set_rc() -> None:
    # kvm_age_radix clears R; POWER9 then raises SET_RC, which the v4.17
    # handler serves under mmu_lock without gup (C.1 step 3)
    sim = build_sim(SCENARIO, strategy="generic_v4_16")
    from kvmsim.kvm.vcpu import guest_access

    kvm = sim.kvm
    assert guest_access(kvm, 0, 0x10000, 0x10000, "write").outcome == "mapped"
    start = sim.vma("ram").start
    mm = sim.mm
    # test_young asks about one page: the written one, then a neighbour never touched
    assert mm.notifiers.test_young(mm, start + 0x10000) is True
    assert mm.notifiers.test_young(mm, start + 0x20000) is False
    assert mm.notifiers.clear_young(mm, start, start + PMD_SIZE) is True
    v, _ = kvm.arch.tree.lookup(0x10000)
    assert v & PTE_PRESENT and not v & PTE_YOUNG
    assert mm.notifiers.test_young(mm, start + 0x10000) is False
    assert mm.notifiers.clear_young(mm, start, start + PMD_SIZE) is False
    assert fault_code(sim, 0x10000, "read") == ("hdsi", DSISR_SET_RC)
    n = len(sim.tracer.events)
    r = guest_access(kvm, 0, 0x10000, 0x10000, "read")
    assert (r.outcome, r.faults) == ("mapped", 1)
    names = [e["event"] for e in sim.tracer.events[n:]]
    assert "kvmppc_hv_handle_set_rc" in names and "hva_to_pfn" not in names
    assert kvm.arch.tree.lookup(0x10000)[0] & PTE_YOUNG
    assert kvm.mmu_lock.holder is None
