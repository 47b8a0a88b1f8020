"""The v6.13 radix handler (``kvmppc_book3s_instantiate_page`` after the 2024
rework, kernel-semantics E) under ``follow_pfn_2024``, and the host page-table
walk of a kernel hva (``pgd_index`` aliasing) shared by every radix handler."""

from __future__ import annotations

import pytest
from kvmsim_plugins.ppc_radix.handler import HOST_PGTABLE_MASK, find_linux_pte
from kvmsim_plugins.ppc_radix.handler_v6_13 import release_page

from kvmsim.host.constants import PTE_PFN_SHIFT, PTE_PRESENT, PTE_READ
from kvmsim.kvm.pfn import kvm_hva_err_ro_bad
from kvmsim.scenario import builtin_scenarios
from kvmsim.testing import build_sim

# KVM_HVA_ERR_RO_BAD on ppc_radix: PAGE_OFFSET + 64K
KVM_HVA_ERR_RO_BAD = kvm_hva_err_ro_bad(16)

LIB = {p.stem: p for p in builtin_scenarios()}
STRATEGY = "follow_pfn_2024"


# untouched anonymous RAM behind a read-only memslot: a load resolves to the
# zero page, which the v4.17 handler treats as "no page" (PG_reserved)
# (powerpc refuses KVM_MEM_READONLY; these tests lift the check to pin what
# the handler source would do: see tests/ppc_radix/test_radix_scenarios.py)
@pytest.fixture
def allow_ro_memslots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kvmsim.runner.unsupported", lambda _sc, _arch: None)


RO_ZERO = """
name = "t-ro-slot-zero-page"
arch = "ppc_radix"

[[vma]]
name = "rom"
size = "1M"
backing = "anon"

[[memslot]]
gpa = 0x0
vma = "rom"
readonly = true

[[step]]
do = "access"
gpa = 0x10000
op = "read"
"""


@pytest.mark.parametrize("arch", ["ppc_radix", "ppc_radix_4k"])
def test_follow_pfn_2024_selects_the_v6_13_handler(arch: str) -> None:
    sim = build_sim(LIB["gen-zero-page-then-write"], strategy=STRATEGY, arch=arch)
    assert sim.kvm.arch.version == "v6.13"


@pytest.mark.parametrize("arch", ["ppc_radix", "ppc_radix_4k"])
def test_zero_page_reference_is_released(arch: str) -> None:
    # E step 9: kvm_release_faultin_page drops *refcounted_page, the zero page
    # included (only the dirty marking skips PG_reserved); v4.17 leaked it (L.1)
    sim = build_sim(LIB["gen-zero-page-then-write"], strategy=STRATEGY, arch=arch)
    report = sim.run()
    assert report.passed and report.verdicts == []
    assert report.steps[0].pfn == sim.phys.zero_pfn
    assert sim.phys.others_refs() == {}
    assert not any(e.get("event") == "follow_pfn_release_contract" for e in report.events)


@pytest.mark.parametrize("arch", ["ppc_radix", "ppc_radix_4k"])
def test_pfnmap_ram_pfn_is_not_put(arch: str) -> None:
    # E step 7: remapped pfns come back with refcounted_page = NULL; the
    # handler must not derive a page from the pfn (the v4.17 handler did, and
    # a count-0 driver page went negative)
    sim = build_sim(LIB["strat-pfnmap-unrefcounted"], strategy=STRATEGY, arch=arch)
    report = sim.run()
    assert report.passed and report.verdicts == []
    pfn = report.steps[0].pfn
    assert pfn is not None and sim.phys.pfn_valid(pfn)
    assert not any(a.kind == "refcount_underflow" for a in sim.phys.anomalies)


def test_release_helper_puts_exactly_the_given_page() -> None:
    # v6.13 radix: NULL → nothing; else set_page_dirty_lock only when the
    # installed PTE is writable (never for the zero page), then one put_page
    sim = build_sim(LIB["gen-zero-page-then-write"], strategy=STRATEGY, arch="ppc_radix")
    phys = sim.phys
    z = phys.zero_pfn
    before = phys.refcount.get(z, 0)
    phys.get_page(z)
    release_page(sim.kvm, z, False)
    assert phys.refcount.get(z, 0) == before
    assert not phys.PageDirty(z)
    release_page(sim.kvm, None, True)  # no page: no effect
    assert phys.refcount.get(z, 0) == before


def test_host_pte_gone_releases_the_page_and_resumes() -> None:
    # C.2 / E: the host PTE is read for every pfn; an invalidation since
    # mmu_seq (find_kvm_host_pte) or a missing PTE releases the page and
    # returns RESUME_GUEST, so no reference stays behind
    sim = build_sim(LIB["gen-race-munmap-after-hva-to-pfn"], strategy=STRATEGY, arch="ppc_radix")
    report = sim.run()
    assert report.verdicts == [], report.unexpected
    assert sim.phys.others_refs() == {}


# ------------------------------------------- __find_linux_pte on a kernel hva


def test_kernel_hva_walks_its_user_alias(allow_ro_memslots: None) -> None:
    # __find_linux_pte has no user-address check; pgd_index() and the lower
    # index macros mask the address, so KVM_HVA_ERR_RO_BAD (a PAGE_OFFSET
    # address) walks the user table at its low 52 bits
    sim = build_sim(RO_ZERO, strategy="generic_v4_16")
    alias = KVM_HVA_ERR_RO_BAD & HOST_PGTABLE_MASK
    assert alias != KVM_HVA_ERR_RO_BAD and alias < 1 << 52
    assert find_linux_pte(sim.kvm, KVM_HVA_ERR_RO_BAD) == (None, 0)
    planted = (0x123 << PTE_PFN_SHIFT) | PTE_PRESENT | PTE_READ
    sim.kvm.mm.pgtable.set_pte(alias, planted)
    assert find_linux_pte(sim.kvm, KVM_HVA_ERR_RO_BAD) == (planted, 0)
    assert find_linux_pte(sim.kvm, alias) == (planted, 0)


def test_v4_17_read_of_zero_page_on_read_only_slot_walks_the_alias_and_oopses(
    allow_ro_memslots: None,
) -> None:
    # C.1 steps 6-7: page = NULL for the PG_reserved zero page, so the handler
    # copies *__find_linux_pte(pgdir, hva) with hva = KVM_HVA_ERR_RO_BAD
    # (gfn_to_hva_memslot asks for write); nothing is mapped at the alias, and
    # the unchecked dereference is a NULL pointer oops
    sim = build_sim(RO_ZERO, strategy="generic_v4_16")
    assert sim.kvm.arch.version == "v4.17"
    report = sim.run()
    assert report.steps[0].outcome == "oops"
    walks = [e for e in report.events if e.get("event") == "__find_linux_pte"]
    assert walks and int(walks[0]["walked"], 16) == KVM_HVA_ERR_RO_BAD & HOST_PGTABLE_MASK


def test_v4_17_alias_that_is_mapped_is_copied_into_stage_2(allow_ro_memslots: None) -> None:
    # the same walk with something mapped at the alias: its PTE (another
    # frame entirely) becomes the stage-2 leaf
    sim = build_sim(RO_ZERO, strategy="generic_v4_16")
    alias = KVM_HVA_ERR_RO_BAD & HOST_PGTABLE_MASK
    frame = 0x77
    sim.kvm.mm.pgtable.set_pte(alias, (frame << PTE_PFN_SHIFT) | PTE_PRESENT | PTE_READ)
    report = sim.run()
    assert report.steps[0].outcome == "mapped"
    assert report.steps[0].pfn == frame != sim.phys.zero_pfn
