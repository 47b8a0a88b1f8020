"""ppc_original, cedric_rfc and cedric_reviewed on the v4.15 radix handler:
each expectation follows from kernel-semantics B.2, B.6, I.1, J.1-J.4, J.7,
J.10, L.2 (cited per test)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvmsim.runner import RunReport
from tests.strategies.conftest import PAGE, access, events, host_step, pfnmap_scenario

GPA = 0x1000_0000
Run = Callable[..., RunReport]


def _run(run_sim: Run, text: str, strategy: str) -> RunReport:
    return run_sim(text, strategy=strategy)


# ------------------------------------------------------------------ ppc_original


@pytest.mark.parametrize("populate_first", [False, True], ids=["pte_absent", "pte_present"])
def test_ppc_original_maps_vm_pgoff_plus_offset_whatever_the_pte(
    run_sim: Run, populate_first: bool
) -> None:
    # J.1 / B.2 step 10: gup fails on VM_PFNMAP, and the branch computes
    # pfn = vm_pgoff + offset without consulting the PTE.  A fault-populated
    # MAP_SHARED vma keeps vm_pgoff = file offset (B.6), so page 1 gives pfn 1,
    # a host RAM frame, mapped with vm_page_prot: cache-inhibited (MMIO prot)
    # and writable (shared writable vma), with no reference taken.
    steps = (host_step("host_write", PAGE) if populate_first else "") + access(GPA + PAGE)
    rep = _run(run_sim, pfnmap_scenario(steps=steps), "ppc_original")
    step = rep.steps[-1]
    assert step.outcome == "mapped"  # pfn 1 has a struct page: guest RAM access
    assert step.pfn == 1
    assert step.writable is True
    assert "wrong_frame" in step.verdicts
    assert "cache_attr_mismatch" in step.verdicts  # RAM mapped cache-inhibited
    assert "refcount_leak" not in step.verdicts  # no reference on this path
    assert not events(rep, "follow_pfn")  # the PTE is never consulted


def test_ppc_original_pfn_zero_is_efault(run_sim: Run) -> None:
    # B.6: file offset 0 at page 0 gives pfn 0, which `if (!pfn)` rejects.
    rep = _run(run_sim, pfnmap_scenario(steps=access(GPA)), "ppc_original")
    assert rep.steps[0].outcome == "efault"


def test_ppc_original_right_frame_for_cow_remap_pfn_range(run_sim: Run) -> None:
    # B.6 / F.7: a private (COW) remap_pfn_range sets vm_pgoff = pfn, so the
    # formula is right there; vm_page_prot of a private mapping has no write.
    text = pfnmap_scenario(backing="pfnmap_linear", shared=False, steps=access(GPA + PAGE))
    rep = _run(run_sim, text, "ppc_original")
    step = rep.steps[0]
    assert step.outcome == "mmio" and step.writable is False
    assert step.verdicts == []


def test_ppc_original_store_to_readonly_pfnmap_livelocks(run_sim: Run) -> None:
    # J.7 / L.2: the stage-2 PTE is built from vm_page_prot without write;
    # the store raises PROTFAULT, which v4.15 ignores, rebuilding the same PTE.
    text = pfnmap_scenario(backing="pfnmap_linear", shared=False, steps=access(GPA + PAGE, "write"))
    rep = _run(run_sim, text, "ppc_original")
    assert rep.steps[0].outcome == "livelock"


def test_ppc_original_read_upgrade_needs_dirty(run_sim: Run) -> None:
    # B.2 step 11 (v4.15): a read fault gets _PAGE_WRITE only if the host PTE
    # is writable AND dirty.  A shared shmem page read-faulted in is writable
    # but clean, so stage 2 is read-only; after a host write (dirty) it is not.
    text = f"""
name = "shm"
description = "x"
arch = "ppc_radix"
[[vma]]
name = "shm"
size = "1M"
backing = "shmem"
prot = "rw"
shared = true
[[memslot]]
gpa = 0
vma = "shm"
{access(0)}
[[step]]
do = "host_write"
vma = "shm"
offset = {PAGE:#x}
{access(PAGE)}
"""
    rep = _run(run_sim, text, "ppc_original")
    assert rep.steps[0].outcome == "mapped" and rep.steps[0].writable is False
    assert rep.steps[2].outcome == "mapped" and rep.steps[2].writable is True
    assert all(not s.verdicts for s in rep.steps)  # put_page(pages[0]) balances gup


@pytest.mark.parametrize(("gpa", "size"), [(0, 0x10000), (0x1000_0000, 0x200000)])
def test_ppc_original_2m_leaf_only_when_2m_bases_agree(run_sim: Run, gpa: int, size: int) -> None:
    # J.10 / B.2 step 11: v4.15 compares gpa and hva 2M *bases*; the vma sits
    # at hva 0x1000_0000, so only a memslot at that very gpa gets a 2M leaf.
    text = f"""
name = "huge"
description = "x"
arch = "ppc_radix"
[[vma]]
name = "h"
size = "4M"
backing = "hugetlbfs"
huge = "2M"
[[memslot]]
gpa = {gpa:#x}
vma = "h"
{access(gpa + 0x20000, "write")}
"""
    rep = _run(run_sim, text, "ppc_original")
    assert rep.steps[0].outcome == "mapped"
    assert rep.steps[0].page_size == size
    assert rep.steps[0].verdicts == []


# ------------------------------------------------------------------ the RFC


@pytest.mark.parametrize("strategy", ["cedric_rfc", "cedric_reviewed"])
def test_rfc_resolves_fault_populated_pfnmap(run_sim: Run, strategy: str) -> None:
    # I.1: follow_pfn fails (PTE absent), fixup_user_fault runs the driver's
    # ->fault, follow_pfn then gives the inserted MMIO pfn; pgflags = vm_page_prot.
    rep = _run(run_sim, pfnmap_scenario(steps=access(GPA + PAGE)), strategy)
    step = rep.steps[0]
    assert step.outcome == "mmio" and step.verdicts == []
    assert events(rep, "fixup_user_fault")


@pytest.mark.parametrize("strategy", ["cedric_rfc", "cedric_reviewed"])
def test_rfc_leaks_mmap_sem_then_munmap_deadlocks(run_sim: Run, strategy: str) -> None:
    # J.3: the ->fault returns VM_FAULT_RETRY (mmap_sem dropped),
    # fixup_user_fault re-takes it and reports unlocked; the RFC's
    # `return RESUME_GUEST` comes before up_read, so the vcpu keeps a read
    # hold; the retried fault then succeeds.  The review did not touch that
    # line, so cedric_reviewed leaks too.  QEMU's munmap (down_write) then
    # blocks for ever.
    steps = access(GPA + PAGE) + host_step("munmap", 0, 0x40000)
    rep = _run(run_sim, pfnmap_scenario(fault_retry=1, steps=steps), strategy)
    assert rep.steps[0].outcome == "mmio"
    assert "lock_leak" in rep.steps[0].verdicts
    assert rep.steps[1].outcome == "deadlock"
    leak = events(rep, "ppc_pfnmap_branch")[0]
    assert leak["mmap_sem_holders"] == {"vcpu0": "read"}


def test_generic_path_does_not_leak_on_retry(run_sim: Run) -> None:
    # A.3: generic hva_to_pfn does `goto retry` on -EAGAIN, still holding the lock once.
    steps = access(GPA + PAGE) + host_step("munmap", 0, 0x40000)
    rep = _run(run_sim, pfnmap_scenario(fault_retry=1, steps=steps), "upstream_final")
    assert rep.steps[0].outcome == "mmio" and rep.steps[0].verdicts == []
    assert rep.steps[1].outcome == "done"


@pytest.mark.parametrize("strategy", ["cedric_rfc", "cedric_reviewed"])
def test_rfc_leaks_kvm_get_pfn_reference_on_ram(run_sim: Run, strategy: str) -> None:
    # J.4: kvm_get_pfn takes a reference on a refcounted pfn; page stays NULL
    # in the PFNMAP branch, so nothing puts it: one leak per fault.
    rep = _run(run_sim, pfnmap_scenario(pfn_kind="ram", steps=access(GPA + PAGE)), strategy)
    assert rep.steps[0].outcome == "mapped"
    assert "refcount_leak" in rep.steps[0].verdicts


def test_rfc_efaults_on_vm_io_only_vma_review_fixes_it(run_sim: Run) -> None:
    # J.2: a VM_MIXEDMAP|VM_IO vma (special PTEs, gup fails) fails the RFC's
    # outer VM_PFNMAP test → pfn 0 → -EFAULT; Paolo's VM_IO|VM_PFNMAP outer
    # test sends it to hva_to_pfn_remapped.
    text = pfnmap_scenario(backing="mixedmap", steps=access(GPA + PAGE))
    assert _run(run_sim, text, "cedric_rfc").steps[0].outcome == "efault"
    rep = _run(run_sim, text, "cedric_reviewed")
    assert rep.steps[0].outcome == "mmio" and rep.steps[0].verdicts == []


def test_rfc_readonly_pfnmap_store(run_sim: Run) -> None:
    # L.2 / J.7: with the PTE absent, fixup_user_fault(FAULT_FLAG_WRITE) fails
    # vma_permits_fault → -EFAULT; once a read mapped it, follow_pfn ignores
    # the missing write bit, the same read-only PTE is rebuilt: livelock.
    text = pfnmap_scenario(prot="r", steps=access(GPA + PAGE, "write"))
    assert _run(run_sim, text, "cedric_rfc").steps[0].outcome == "efault"
    text = pfnmap_scenario(prot="r", steps=access(GPA + PAGE) + access(GPA + PAGE, "write"))
    rep = _run(run_sim, text, "cedric_rfc")
    assert rep.steps[0].outcome == "mmio"
    assert rep.steps[1].outcome == "livelock"


def test_rfc_dead_else_never_taken(run_sim: Run) -> None:
    # J.2: the inner VM_IO|VM_PFNMAP test is always true under the outer VM_PFNMAP test.
    rep = _run(run_sim, pfnmap_scenario(steps=access(GPA + PAGE)), "cedric_rfc")
    assert {e["how"] for e in events(rep, "ppc_pfnmap_branch")} == {"hva_to_pfn_remapped"}
