"""The v6.13 x86 TDP fault handler, in what the model can express:
``kvm_tdp_page_fault`` → ``kvm_tdp_mmu_page_fault`` (the TDP MMU, on by
default since 5.15) with the shape of 5.13's ``direct_page_fault``
(:mod:`.handler_v5_13`): the fault's max level from the guest MTRRs (1G),
``fast_page_fault``, ``mmu_invalidate_seq``, ``kvm_mmu_faultin_pfn``
(a memslot being deleted or moved retries), ``handle_abnormal_pfn``, then
under ``mmu_lock``:

- ``is_page_fault_stale`` → ``mmu_invalidate_retry_gfn`` (skipped without
  a memslot): an invalidation in progress forces a retry only when the gfn
  lies in the gfn range it covers; one that ended since ``mmu_seq`` always
  does;
- ``kvm_mmu_hugepage_adjust``: ``kvm_mmu_max_mapping_level`` *clamped* to
  the slot's ``disallow_lpage`` (ec607a564f70, v5.15), the host level read
  from the host page tables for any pfn (no compound-page or reserved-pfn
  test since a8ac499bb6ab, v6.0), then the leaf;
- ``kvm_tdp_mmu_map``: with ``kvm.nx_huge_pages``, a fetch is mapped 4K
  and ``disallowed_hugepage_adjust`` sends a fault one level down only
  where the table at its goal level was linked by such a fetch
  (``sp->nx_huge_page_disallowed``); a present huge SPTE in the way of a
  smaller goal is split in place (``tdp_mmu_split_huge_page``: 512 SPTEs
  on its frames, executable again at 4K under the workaround), not
  dropped; no ``direct_pte_prefetch``;

and, at ``out_unlock`` still under ``mmu_lock`` (the model releases right
after ``create_pte`` dropped it: nothing runs in between),
``kvm_mmu_finish_page_fault`` → ``kvm_release_faultin_page`` of exactly
``*refcounted_page`` (kernel-notes §E.9), unused when the fault is
retried (RET_PF_RETRY).  The lockless
``fast_page_fault`` also makes a write-protected huge SPTE writable
unless its slot logs dirty pages; ``host_pfn_mapping_level`` stops at a
PUD or PMD that is not present (4K).  Enabling dirty logging first splits
the slot's huge leaves (``eager_page_split``, plugins/x86_ept/steps.py).

Not modelled: ``kvm_mmu_faultin_pfn``'s early
``mmu_invalidate_retry_gfn_unsafe`` (v6.9), 5.14+'s skipping of the count
and sequence for invalidations that overlap no memslot, the TDP MMU's
own table layout (one root, its SPTE decisions are the legacy MMU's
``mmu_set_spte`` here), ``kvm_mmu_recover_huge_pages`` when dirty logging
is disabled (the legacy zap of collapsible SPTEs stands in), private
memory, the NX recovery thread.

Read from: Linux 6.13.7 (GitHub ChenRuiwei/linux-6.13.7, Makefile
6.13.7, the kvm files as imported in its initial commit)
arch/x86/kvm/mmu/mmu.c (``kvm_mmu_hugepage_adjust``,
``__kvm_mmu_max_mapping_level``, ``host_pfn_mapping_level``,
``disallowed_hugepage_adjust``, ``fast_page_fault``,
``page_fault_can_be_fast``), tdp_mmu.c (``kvm_tdp_mmu_map``,
``tdp_mmu_split_huge_page``), spte.c (``make_small_spte``), x86.c
(``kvm_mmu_slot_apply_flags``) and include/linux/kvm_host.h
(``kvm_release_faultin_page``); the release first from the "Stop
grabbing references to PFNMAP'd pages" series (v13, kvm list
2024-10-10; kernel-notes §E.9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.x86_ept import handler_v5_13
from kvmsim_plugins.x86_ept.common import notifier_retry

from kvmsim.cmodel import EAGAIN, UNINIT, KernelOops
from kvmsim.kvm.pfn import is_noslot_pfn

if TYPE_CHECKING:
    from kvmsim.hooktypes import HvaToPfnResult
    from kvmsim.kvm.core import Kvm


def tdp_page_fault(
    kvm: Kvm, vcpu: int, gpa: int, error_code: int, prefault: bool
) -> tuple[int, str | None, str]:
    """5.13's ``direct_page_fault`` flow ending in ``kvm_mmu_finish_page_fault``."""
    return handler_v5_13.direct_page_fault(kvm, vcpu, gpa, error_code, prefault, _finish)


def map_locked(kvm: Kvm, gfn: int, pfn: int, flags: int, max_level: int, mmu_seq: int) -> int:
    """Under ``mmu_lock``: ``is_page_fault_stale`` (the gfn-range retry, no
    check for a NOSLOT pfn), then ``kvm_mmu_hugepage_adjust`` (v6.13 rule)
    and the map."""
    if not is_noslot_pfn(pfn) and notifier_retry(
        kvm, gfn, mmu_seq, kvm.mmu_invalidate_retry_gfn(mmu_seq, gfn), "mmu_invalidate_retry_gfn"
    ):
        return -EAGAIN
    return handler_v5_13.adjust_and_map(kvm, gfn, pfn, flags, max_level, mmu_seq, v6=True)


def _finish(kvm: Kvm, res: HvaToPfnResult, r: int) -> None:
    """``kvm_mmu_finish_page_fault`` → ``kvm_release_faultin_page``."""
    kvm_release_faultin_page(kvm, res.page, r == -EAGAIN, res.writable)


def kvm_release_faultin_page(kvm: Kvm, page: object, unused: bool, dirty: bool) -> None:
    """``kvm_release_faultin_page`` (v6.13-era, kernel-notes §E.9): only the refcounted
    page the strategy handed back is released, by page, NULL-safe; a dirty
    release marks it dirty unless PG_reserved.  No ``kvm_is_reserved_pfn``
    test: the zero page's reference is dropped too."""
    if page is None:
        return
    if page is UNINIT:
        raise KernelOops("kvm_release_faultin_page(UNINIT page)", "uninit_use")
    if not isinstance(page, int):
        raise KernelOops(f"kvm_release_faultin_page({page!r})", "null_deref")
    phys = kvm.phys
    if not unused and dirty and not phys.PageReserved(page):
        phys.SetPageDirty(page)
    phys.put_page(page)
