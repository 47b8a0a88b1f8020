"""The v6.13 x86 TDP fault handler, as far as the model goes: the v4.16
flow (:mod:`.handler_v4_16`) with the 2024 release rule (kernel-semantics
E.9): only ``result.page`` (``*refcounted_page``) is released, by page
(``kvm_release_faultin_page``), ``transparent_hugepage_adjust`` moves
no reference, and the retry check under ``mmu_lock`` is the gfn-range
``mmu_invalidate_retry_gfn`` (``is_page_fault_stale``).  Not modelled:
``kvm_faultin_pfn``'s early ``mmu_invalidate_retry_gfn_unsafe`` (v6.9),
and 5.14+'s skipping of the count and sequence for invalidations that
overlap no memslot.  The v6.13 level selection (``kvm_mmu_hugepage_adjust``
walking the host page tables) is NOT modelled: levels are chosen as in v4.16.

Read from: the v6.13 "Stop grabbing references to PFNMAP'd pages" series
(v13, kvm list 2024-10-10; kernel-semantics E.9) for the release rule
only; the rest of the v6.13 x86 fault path is NOT modelled (see above).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.x86_ept import handler_v4_16
from kvmsim_plugins.x86_ept.common import notifier_retry

from kvmsim.cmodel import EAGAIN, UNINIT, KernelOops

if TYPE_CHECKING:
    from kvmsim.hooktypes import HvaToPfnResult
    from kvmsim.kvm.core import Kvm


def map_locked(kvm: Kvm, gfn: int, pfn: int, flags: int, kvm_level: int, mmu_seq: int) -> int:
    """Under ``mmu_lock``: ``is_page_fault_stale`` → ``mmu_invalidate_retry_gfn``
    (an invalidation in progress forces a retry only when the gfn lies in the
    gfn range it covers; one that ended since ``mmu_seq`` always does), then
    v4.16's level adjustment and map."""
    if notifier_retry(
        kvm, gfn, mmu_seq, kvm.mmu_invalidate_retry_gfn(mmu_seq, gfn), "mmu_invalidate_retry_gfn"
    ):
        return -EAGAIN
    return handler_v4_16.adjust_and_map(kvm, gfn, pfn, flags, kvm_level, mmu_seq)


def tdp_page_fault(
    kvm: Kvm, vcpu: int, gpa: int, error_code: int, prefault: bool
) -> tuple[int, str | None, str]:
    """v4.16's ``tdp_page_fault`` ending in ``kvm_mmu_finish_page_fault``."""
    return handler_v4_16.tdp_page_fault(kvm, vcpu, gpa, error_code, prefault, _finish)


def _finish(kvm: Kvm, res: HvaToPfnResult, r: int) -> None:
    """``kvm_mmu_finish_page_fault`` → ``kvm_release_faultin_page``."""
    kvm_release_faultin_page(kvm, res.page, r == -EAGAIN, res.writable)


def kvm_release_faultin_page(kvm: Kvm, page: object, unused: bool, dirty: bool) -> None:
    """``kvm_release_faultin_page`` (v6.13-era, E.9): only the refcounted
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
