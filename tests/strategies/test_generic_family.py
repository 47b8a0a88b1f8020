"""paolo_refactor, upstream_final, refcount_guarded and follow_pfn_2024:
expectations from kernel-semantics C, D, E, I.2, J.5, J.6, J.9, L.1, L.3, L.7."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kvmsim_plugins.strategies import follow_pfn_2024, paolo_refactor

from kvmsim.cmodel import EFAULT, ERR_PTR, KernelOops
from kvmsim.hooktypes import HvaToPfnRequest
from kvmsim.runner import RunReport, Simulation
from kvmsim.testing import build_sim
from tests.strategies.conftest import PAGE, access, events, pfnmap_scenario

GPA = 0x1000_0000
Run = Callable[..., RunReport]

ANON = """
name = "anon"
description = "x"
arch = "ppc_radix"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
readonly = {ro}
"""


def _request(sim: Simulation, gpa: int, *, write: bool, page_out: bool = False) -> HvaToPfnRequest:
    kvm = sim.kvm
    slot = kvm.memslots.gfn_to_memslot(gpa >> kvm.page_shift)
    hva = slot.userspace_addr + (gpa - (slot.base_gfn << kvm.page_shift))
    kvm.mm.current = "vcpu0"
    return HvaToPfnRequest(
        vcpu=0,
        slot=slot,
        gfn=gpa >> kvm.page_shift,
        gpa=gpa,
        hva=hva,
        write_fault=write,
        writable=True,
        page_out=page_out,
    )


# ------------------------------------------------------------------ paolo_refactor


def test_paolo_first_touch_is_an_uninitialised_page(run_sim: Run) -> None:
    # J.5: __get_user_pages_fast pins nothing (untouched memory) and returns 0,
    # never < 0, so __hva_to_page_fast returns the uninitialised page[0];
    # hva_to_pfn's IS_ERR on it is a use of an uninitialised value.
    rep = run_sim(ANON.format(ro="false") + access(0x10000, "write"), strategy="paolo_refactor")
    assert rep.steps[0].outcome == "oops"
    assert "uninit_use" in rep.steps[0].detail and "IS_ERR" in rep.steps[0].detail


def test_paolo_pfnmap_never_reaches_remapped(run_sim: Run) -> None:
    # J.5: special PTEs are never pinned by gup-fast, so every PFNMAP fault
    # takes the same uninitialised path; hva_to_pfn_remapped is unreachable.
    rep = run_sim(pfnmap_scenario(steps=access(GPA + PAGE)), strategy="paolo_refactor")
    assert rep.steps[0].outcome == "oops"
    assert not events(rep, "follow_pfn")


def test_paolo_return_false_is_taken_as_null_page(
    run_sim: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # powerpc refuses KVM_MEM_READONLY (no __KVM_HAVE_READONLY_MEM): lift that
    # check to reach the branch the v4.17 source has for it
    monkeypatch.setattr("kvmsim.runner.unsupported", lambda _sc, _arch: None)
    # J.6a: a read fault on a read-only memslot (the v4.17 handler passes no
    # writable pointer, C.1 step 2; A.2 step 4) makes __hva_to_page_fast
    # `return false` = NULL; !IS_ERR(NULL) → got_page → page_to_pfn(NULL), a
    # garbage pfn with no reference.  On ppc64 (vmemmap at 0xc00a...) it has
    # error bits set, so the radix handler returns -EFAULT: no oops.
    rep = run_sim(ANON.format(ro="true") + access(0x10000), strategy="paolo_refactor")
    assert rep.steps[0].outcome == "efault"
    ev = events(rep, "page_to_pfn")
    assert ev and ev[0]["page"] == "NULL"
    assert rep.steps[0].verdicts == []


def _corrected_fast(kvm, addr, write_fault, writable):  # type: ignore[no-untyped-def]
    """The sketch's fast helper with the one-line correction J.6 names:
    ERR_PTR(-EFAULT) when nothing was pinned."""
    page = paolo_refactor.__hva_to_page_fast(kvm, addr, write_fault, writable)
    return ERR_PTR(-EFAULT) if not isinstance(page, int) else page


def test_paolo_retry_label_writes_through_null_p_page() -> None:
    # J.6b: with a fast helper that can fail, a PFNMAP fault reaches `retry:`
    # and its unguarded `*p_page = NULL` writes through the NULL p_page that
    # __gfn_to_pfn_memslot passes: a NULL-pointer write (latent as written).
    sim = build_sim(pfnmap_scenario(), strategy="paolo_refactor")
    req = _request(sim, GPA + PAGE, write=False)
    with pytest.raises(KernelOops) as exc:
        paolo_refactor.paolo_request(sim.kvm, req, fast=_corrected_fast)
    assert exc.value.kind == "null_deref" and "p_page" in exc.value.what


def test_paolo_with_a_page_pointer_remapped_gives_null_page() -> None:
    # J.9: with a real p_page the same path works; *p_page is NULL on the
    # remapped path even though kvm_get_pfn may have taken a reference.
    sim = build_sim(pfnmap_scenario(pfn_kind="ram"), strategy="paolo_refactor")
    req = _request(sim, GPA + PAGE, write=False, page_out=True)
    res = paolo_refactor.paolo_request(sim.kvm, req, fast=_corrected_fast)
    assert res.status == "ok" and res.page is None
    assert sum(sim.phys.others_refs().values()) == 1  # kvm_get_pfn's reference
    assert sim.mm.mmap_sem.held_by() == {}


def test_paolo_pinned_page_goes_to_p_page() -> None:
    # I.2 got_page: a page gup-fast pinned is stored in *p_page with its reference.
    sim = build_sim(ANON.format(ro="false"), strategy="paolo_refactor")
    sim.mm.current = "qemu"
    from kvmsim.host import events as host_events

    hva = sim.kvm.memslots.slots[0].userspace_addr + 0x10000
    host_events.host_write(sim.mm, hva)
    req = _request(sim, 0x10000, write=True, page_out=True)
    res = paolo_refactor.paolo_request(sim.kvm, req)
    assert res.status == "ok" and res.page == res.pfn and res.writable
    assert sim.phys.others_refs() == {sim.phys.compound_head(res.pfn): 1}


# ------------------------------------------------------------------ upstream_final


def test_upstream_final_copies_host_pte_attributes(run_sim: Run) -> None:
    # C.1 step 7: an MMIO pfn (page == NULL) takes its stage-2 PTE from the
    # host PTE: the right frame, cache-inhibited, no reference.
    rep = run_sim(pfnmap_scenario(steps=access(GPA + PAGE)), strategy="upstream_final")
    assert rep.steps[0].outcome == "mmio" and rep.steps[0].verdicts == []


def test_upstream_final_leaks_zero_page_reference(run_sim: Run) -> None:
    # L.1: a read of untouched anon memory: slow gup returns the zero page with
    # a reference; the v4.17 handler sees PageReserved, sets page = NULL and
    # never puts it.
    rep = run_sim(ANON.format(ro="false") + access(0x10000), strategy="upstream_final")
    assert rep.steps[0].outcome == "mapped"
    assert "refcount_leak" in rep.steps[0].verdicts


def test_upstream_final_frees_unrefcounted_driver_page(run_sim: Run) -> None:
    # D: kvm_get_pfn takes a tail page of a non-compound allocation from 0 to
    # 1; the handler's put_page (valid, not reserved) takes it back to 0 and
    # frees a page the driver still owns (CVE-2021-22543).
    text = pfnmap_scenario(pfn_kind="ram_unrefcounted", steps=access(GPA + PAGE))
    rep = run_sim(text, strategy="upstream_final")
    assert "refcount_underflow" in rep.steps[0].verdicts


# ------------------------------------------------------------------ refcount_guarded


def test_refcount_guarded_refuses_unrefcounted_page(run_sim: Run) -> None:
    # D: kvm_try_get_pfn → get_page_unless_zero fails on the count-0 tail →
    # r = -EFAULT → KVM_PFN_ERR_FAULT → the handler returns -EFAULT.
    text = pfnmap_scenario(pfn_kind="ram_unrefcounted", steps=access(GPA + PAGE))
    rep = run_sim(text, strategy="refcount_guarded")
    assert rep.steps[0].outcome == "efault" and rep.steps[0].verdicts == []


def test_refcount_guarded_balances_refcounted_pfnmap_ram(run_sim: Run) -> None:
    # D: a refcounted page gets one reference, which the v4.17 handler puts.
    text = pfnmap_scenario(pfn_kind="ram", steps=access(GPA + PAGE))
    rep = run_sim(text, strategy="refcount_guarded")
    assert rep.steps[0].outcome == "mapped" and rep.steps[0].verdicts == []


def test_refcount_guarded_write_to_readonly_pfnmap_is_ro_fault(run_sim: Run) -> None:
    # L.3 bd2fae8da794 / L.2: a store to a read-only PFNMAP PTE gives
    # KVM_PFN_ERR_RO_FAULT, which the PPC handler turns into -EFAULT instead
    # of the livelock of earlier versions.
    text = pfnmap_scenario(prot="r", steps=access(GPA + PAGE) + access(GPA + PAGE, "write"))
    rep = run_sim(text, strategy="refcount_guarded")
    assert rep.steps[0].outcome == "mmio"
    assert rep.steps[1].outcome == "efault"
    assert events(rep, "hva_to_pfn")[-1]["status"] == "ro_fault"


@pytest.mark.parametrize(
    ("strategy", "fast"), [("generic_v4_16", False), ("refcount_guarded", True)]
)
def test_refcount_guarded_fast_path_for_sync_callers(strategy: str, fast: bool) -> None:
    # virt/kvm/kvm_main.c of 5.12.9 / 5.14.2: hva_to_pfn_fast tries gup-fast
    # for any caller that wants or allows a write ("KVM: try
    # __get_user_pages_fast even if not in atomic context", v4.19); v4.16
    # only for atomic or async callers, so a synchronous read of a populated
    # writable page goes through the slow gup and its write upgrade
    sim = build_sim(ANON.format(ro="false"), strategy=strategy, trace=True)
    from kvmsim.host import events as host_events

    sim.mm.current = "qemu"
    host_events.host_write(sim.mm, sim.kvm.memslots.slots[0].userspace_addr + 0x10000)
    req = _request(sim, 0x10000, write=False)
    mod = __import__(f"kvmsim_plugins.strategies.{strategy}", fromlist=["hva_to_pfn"])
    res = mod.hva_to_pfn(sim.kvm, req)
    assert res.status == "ok" and res.writable
    fast_evs = [e for e in sim.tracer.events if e["event"] == "hva_to_pfn_fast"]
    slow = [e for e in sim.tracer.events if e["event"] == "get_user_pages_unlocked"]
    assert bool(fast_evs and fast_evs[-1]["ret"] == 1) is fast
    assert bool(slow) is not fast
    sim.phys.put_page(res.pfn)
    assert sim.phys.others_refs() == {}


# ------------------------------------------------------------------ follow_pfn_2024


def test_follow_pfn_2024_takes_no_reference_on_pfnmap_ram() -> None:
    # E step 7: kvm_resolve_pfn(kfp, NULL, &args, writable): refcounted_page
    # = NULL and no reference, even for a pfn with a struct page.
    sim = build_sim(pfnmap_scenario(pfn_kind="ram"), strategy="follow_pfn_2024")
    res = follow_pfn_2024.hva_to_pfn(sim.kvm, _request(sim, GPA + PAGE, write=False))
    assert res.status == "ok" and res.page is None and res.writable
    assert sim.phys.others_refs() == {}
    assert sim.mm.mmap_sem.held_by() == {}


def test_follow_pfn_2024_zero_page_is_refcounted() -> None:
    # E / L.1: slow gup returns the zero page with a reference; v6.13 hands it
    # back as refcounted_page (released with put_page despite PG_reserved).
    sim = build_sim(ANON.format(ro="false"), strategy="follow_pfn_2024")
    res = follow_pfn_2024.hva_to_pfn(sim.kvm, _request(sim, 0x10000, write=False))
    assert res.pfn == sim.phys.zero_pfn and res.page == sim.phys.zero_pfn
    assert res.writable is False
    sim.phys.put_page(res.page)
    assert sim.phys.others_refs() == {}


def test_follow_pfn_2024_fast_path_for_sync_callers() -> None:
    # E step 3: the fast path is no longer gated on async/atomic: a populated
    # writable page is pinned by gup-fast without the slow path.
    sim = build_sim(ANON.format(ro="false"), strategy="follow_pfn_2024", trace=True)
    from kvmsim.host import events as host_events

    sim.mm.current = "qemu"
    host_events.host_write(sim.mm, sim.kvm.memslots.slots[0].userspace_addr + 0x10000)
    res = follow_pfn_2024.hva_to_pfn(sim.kvm, _request(sim, 0x10000, write=False))
    assert res.page == res.pfn and res.writable
    evs = [e for e in sim.tracer.events if e["event"] == "hva_to_pfn_fast"]
    assert evs and evs[-1]["pinned"] is True
    assert not [e for e in sim.tracer.events if e["event"] == "get_user_pages_unlocked"]


def test_follow_pfn_2024_ro_fault_and_retry() -> None:
    # E step 7: write to a read-only leaf → RO_FAULT; and a ->fault that drops
    # mmap_sem makes hva_to_pfn go back to retry with the lock held once,
    # released on return (no leak, unlike J.3).
    sim = build_sim(pfnmap_scenario(prot="r"), strategy="follow_pfn_2024")
    req = _request(sim, GPA + PAGE, write=True)
    assert follow_pfn_2024.hva_to_pfn(sim.kvm, req).status == "efault"  # fixup: no VM_WRITE
    follow_pfn_2024.hva_to_pfn(sim.kvm, _request(sim, GPA + PAGE, write=False))
    assert follow_pfn_2024.hva_to_pfn(sim.kvm, req).status == "ro_fault"
    sim = build_sim(pfnmap_scenario(fault_retry=1), strategy="follow_pfn_2024")
    res = follow_pfn_2024.hva_to_pfn(sim.kvm, _request(sim, GPA + PAGE, write=False))
    assert res.status == "ok" and sim.mm.mmap_sem.held_by() == {}
