"""The EPT walk's cached hits (performance round 2): a hit may return a
shared frozen Translation (hookspecs ``translate``), but the hardware's side
effect of every hit still happens (Intel SDM 28.2.4: the walk sets the
accessed bit, and dirty on a store, with EPT A/D enabled), and a changed
SPTE is always walked afresh."""

from __future__ import annotations

from typing import Any

import pytest
from kvmsim_plugins.x86_ept import ept

from kvmsim.kvm.dirty import set_logging
from tests.x86_ept.test_ept_paths import HEAD, STRATEGY, _access


def test_cached_hits_keep_setting_accessed_and_dirty(make_sim: Any) -> None:
    sim = make_sim(HEAD + _access(0x1000, "write"), strategy=STRATEGY)
    sim.run()
    kvm = sim.kvm
    st = kvm.arch
    table, idx, _ = st.find_spte(0x1000)
    first = ept.translate(kvm, 0x1000, "read")
    assert ept.translate(kvm, 0x1000, "read") is first  # shared, unchanged SPTE
    assert first.pfn is not None and first.writable and first.page_size == 4096
    # kvm_age_rmapp clears A: the next hit sets it again, cached or not
    start = sim.vma("ram").start
    assert sim.mm.notifiers.clear_young(sim.mm, start, start + 0x2000) is True
    assert not table[idx] & ept.EPT_A
    assert ept.translate(kvm, 0x1000, "read") == first
    assert table[idx] & ept.EPT_A
    # a clean SPTE: a store hit sets D
    table[idx] &= ~ept.EPT_D
    assert ept.translate(kvm, 0x1000, "write") == first
    assert table[idx] & ept.EPT_D


def test_write_protection_is_seen_through_the_cache(make_sim: Any) -> None:
    sim = make_sim(HEAD + _access(0x1000, "write"), strategy=STRATEGY)
    sim.run()
    kvm = sim.kvm
    for _ in range(2):
        assert ept.translate(kvm, 0x1000, "write").fault is None
    # KVM_MEM_LOG_DIRTY_PAGES write-protects every SPTE (L.5): a store is an
    # EPT violation again, a load still hits
    set_logging(kvm, kvm.memslots.gfn_to_memslot(1), True)
    t = ept.translate(kvm, 0x1000, "write")
    assert t.fault is not None and t.fault.kind == "ept_violation"
    r = ept.translate(kvm, 0x1000, "read")
    assert r.fault is None and not r.writable


def test_the_cache_is_bounded(make_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ept, "HIT_CACHE_MAX", 2)
    text = HEAD + "".join(_access(g, "write") for g in (0x1000, 0x2000, 0x3000, 0x4000))
    sim = make_sim(text, strategy=STRATEGY)
    sim.run()
    kvm = sim.kvm
    pfns = [ept.translate(kvm, g, "read").pfn for g in (0x1000, 0x2000, 0x3000, 0x4000)]
    for _ in range(2):
        for g, pfn in zip((0x1000, 0x2000, 0x3000, 0x4000), pfns, strict=True):
            assert ept.translate(kvm, g, "read").pfn == pfn
            assert len(kvm.arch.hits) <= 2
