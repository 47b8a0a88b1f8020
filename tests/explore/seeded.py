"""Seeded bugs for the explorer: each drops one guard a correct fault path
keeps.  Registered as extra plugins, they answer ``hva_to_pfn`` before the
selected strategy (pluggy calls the last registered first)."""

from __future__ import annotations

from typing import Any

from kvmsim import hookimpl
from kvmsim.cmodel import EAGAIN
from kvmsim.hooktypes import HvaToPfnResult


class EarlyPut:
    """The strategy's answer, but the page reference is dropped before the
    handler installs the entry (the handler later releases a page it no
    longer holds, and between the two the host may free the frame).

    It touches shared state only through ``put_page`` (recorded), so the
    explorer's reduction may key its segments; the other seeded plugins
    keep state of their own across yield points and stay opaque."""

    FOOTPRINTS = True

    def __init__(self, strategy: Any) -> None:
        self.inner = strategy

    @hookimpl
    def hva_to_pfn(self, kvm: Any, request: Any) -> HvaToPfnResult:
        res: HvaToPfnResult = self.inner.hva_to_pfn(kvm=kvm, request=request)
        if res.page is not None and isinstance(res.page, int):
            kvm.phys.put_page(res.page)
        return res


class RetryBeforeLock:
    """``mmu_notifier_retry`` checked before ``mmu_lock`` is taken, not under
    it: an invalidation that runs between the check and the lock goes
    unnoticed (the arch's own check under the lock is removed)."""

    def __init__(self, arch: Any) -> None:
        self.arch = arch

    @hookimpl
    def create_pte(self, kvm: Any, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
        if kvm.mmu_notifier_retry(mmu_seq):
            return -EAGAIN
        kvm.mmu_notifier_retry = lambda seq: False  # the check under the lock is gone
        try:
            r: int = self.arch.create_pte(kvm=kvm, gpa=gpa, pte=pte, level=level, mmu_seq=mmu_seq)
        finally:
            del kvm.mmu_notifier_retry
        return r


class SeqAfterGup:
    """``mmu_notifier_seq`` read after hva_to_pfn pinned the page instead of
    before: an invalidation that ran while gup worked is not seen."""

    def __init__(self, arch: Any, strategy: Any) -> None:
        self.arch = arch
        self.strategy = strategy
        self.seq: int | None = None

    @hookimpl
    def hva_to_pfn(self, kvm: Any, request: Any) -> HvaToPfnResult:
        res: HvaToPfnResult = self.strategy.hva_to_pfn(kvm=kvm, request=request)
        self.seq = kvm.mmu_notifier_seq  # too late: the pin is already done
        return res

    @hookimpl
    def create_pte(self, kvm: Any, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
        seq = mmu_seq if self.seq is None else self.seq
        r: int = self.arch.create_pte(kvm=kvm, gpa=gpa, pte=pte, level=level, mmu_seq=seq)
        return r


class MarkBeforeLock:
    """x86's slow path marks the gfn dirty *before* taking ``mmu_lock``
    instead of when ``set_spte`` installs the writable SPTE under it (the
    arch's own mark during the install is removed).  The lock is what
    orders the mark against a harvest's fetch-and-protect
    (``kvm_get_dirty_log_protect`` holds it across ``xchg`` and
    ``kvm_arch_mmu_enable_log_dirty_pt_masked``): a harvest that runs in
    between takes the mark and protects nothing (no SPTE yet), then the
    writable SPTE appears with the bit clear, and a store through it after
    the harvest is never reported.  In file order the install completes
    before the harvest, which protects it: nothing is lost."""

    def __init__(self, arch: Any) -> None:
        self.arch = arch

    @hookimpl
    def create_pte(self, kvm: Any, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
        import kvmsim_plugins.x86_ept.common as common

        if pte & common.REQ_MAP_WRITABLE:
            common.mark_page_dirty(kvm, gpa >> 12)  # too early: mmu_lock not held
        saved = common.mark_page_dirty
        common.mark_page_dirty = lambda kvm, gfn: None  # set_spte's mark is gone
        try:
            r: int = self.arch.create_pte(kvm=kvm, gpa=gpa, pte=pte, level=level, mmu_seq=mmu_seq)
        finally:
            common.mark_page_dirty = saved
        return r
