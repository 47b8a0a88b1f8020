"""The radix walk's cached hits (performance round 2): a hit on a base-page
leaf may return a shared frozen Translation (hookspecs ``translate``), but
never for a leaf that changed: the walk's decisions (L.2: validity, then
permission, then R/C) are taken on the current leaf every time."""

from __future__ import annotations

import pytest
from kvmsim_plugins.ppc_radix import mmu
from kvmsim_plugins.ppc_radix.dsisr import DSISR_NOHPTE, DSISR_SET_RC
from kvmsim_plugins.ppc_radix.tree import PMD_SIZE

from tests.ppc_radix.test_radix_mmu import create, fault_code, pte, sim_for


def test_a_cached_hit_never_outlives_its_leaf() -> None:
    sim = sim_for("v4.17")
    kvm = sim.kvm
    tree = kvm.arch.tree
    assert create(sim, 0x10000, pte(0x40), 0) == 0
    first = mmu.translate(kvm, 0x10000, 0x10000, "read")
    # the hit that resumes the installing fault is not cached (a page touched
    # once costs no cache entry); the next ones share one object
    assert not tree.hits
    second = mmu.translate(kvm, 0x10000 + 0x123, 0, "read")
    assert mmu.translate(kvm, 0x10000, 0, "write") is second
    assert second == first and second.pfn == 0x40 and second.writable
    # kvm_age_radix clears R: the next access takes SET_RC (L.2), not the cache
    start = sim.vma("ram").start
    assert sim.mm.notifiers.clear_young(sim.mm, start, start + PMD_SIZE)
    assert fault_code(sim, 0x10000, "read") == ("hdsi", DSISR_SET_RC)
    # v4.17 replaces the leaf with another frame: the walk sees the new pfn
    assert create(sim, 0x10000, pte(0x50), 0) == 0
    assert mmu.translate(kvm, 0x10000, 0, "read").pfn == 0x50
    assert mmu.translate(kvm, 0x10000, 0, "read").pfn == 0x50
    # kvm_unmap_radix clears it: NOHPTE, and the cache keeps nothing for it
    mmu.unmap_hva_range(kvm, start, start + PMD_SIZE)
    assert fault_code(sim, 0x10000, "read") == ("hdsi", DSISR_NOHPTE)
    assert not tree.hits


def test_large_leaves_are_not_cached() -> None:
    # a 2M leaf's pfn depends on the offset inside it: built per hit
    sim = sim_for("v4.17")
    kvm = sim.kvm
    assert create(sim, PMD_SIZE, pte(0x200), 1) == 0
    for _ in range(2):
        assert mmu.translate(kvm, PMD_SIZE + 0x30000, 0, "read").pfn == 0x203
    assert not kvm.arch.tree.hits


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # bounded: when full, further leaves are walked uncached, and still right
    monkeypatch.setattr(mmu, "HIT_CACHE_MAX", 2)
    sim = sim_for("v4.17")
    kvm = sim.kvm
    for i in range(4):
        assert create(sim, (i + 1) << 16, pte(0x40 + i), 0) == 0
    for _ in range(2):
        for i in range(4):
            assert mmu.translate(kvm, (i + 1) << 16, 0, "read").pfn == 0x40 + i
            assert len(kvm.arch.tree.hits) <= 2
