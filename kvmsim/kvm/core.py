"""The KVM core: the VM, ``mmu_lock``, the MMU-notifier sequence and its
subscriber, and ``__gfn_to_pfn_memslot`` (virt/kvm/kvm_main.c, v4.16).

The core names no arch and no strategy: it reaches them through
``kvm.hooks`` (see :mod:`kvmsim.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from kvmsim.cmodel import KernelOops
from kvmsim.hooktypes import ERR_RO_FAULT, NOSLOT, HvaToPfnRequest, HvaToPfnResult, StrategyInfo
from kvmsim.host.rwsem import Deadlock
from kvmsim.kvm.dirty import DirtyLog
from kvmsim.kvm.memslot import PAGE_OFFSET, Memslot, Memslots
from kvmsim.kvm.pfn import (
    KVM_PFN_ERR_RO_FAULT,
    KVM_PFN_NOSLOT,
    gfn_to_hva_many,
    kvm_hva_err_ro_bad,
)
from kvmsim.trace import DISABLED, Tracer

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm
    from kvmsim.host.physmem import PhysMem
    from kvmsim.registry import Dispatcher


class SpinLock:
    """A spinlock that knows its holder (``kvm->mmu_lock``).

    Taking it while held can never succeed in a run-to-completion simulation:
    that is a :class:`~kvmsim.host.rwsem.Deadlock`.
    """

    __slots__ = ("holder", "mm", "name", "sched")

    def __init__(self, name: str, mm: Mm | None = None) -> None:
        self.name = name
        self.holder: str | None = None
        self.sched: Any = None  # a concurrent run's scheduler: waiters spin, not runnable
        self.mm = mm  # whose points the release reaches (None: no point)

    def lock(self, task: str) -> None:
        sched = self.sched
        if sched is not None:
            sched.point("mmu_lock")
            while self.holder is not None:
                sched.block(self)
        if self.holder is not None:
            raise Deadlock(self.name, task, {self.holder: "spin"})
        self.holder = task

    def unlock(self, task: str) -> None:
        if self.holder != task:
            raise KernelOops(f"spin_unlock({self.name}) by {task}, held by {self.holder}", "bug")
        self.holder = None
        if self.sched is not None:
            self.sched.released(self)
        mm = self.mm
        if mm is not None and (mm.race_points or mm.sched is not None):
            # a fault path drops its page reference after this
            mm.fire_point("mmu_lock_released")


#: ``INVALID_GPA`` as a gfn: no memslot overlapped the invalidation yet
INVALID_GFN: Final = -1


class Kvm:
    """``struct kvm``: one VM of the simulation.

    :param mm: the host process (QEMU) whose memory backs the memslots.
    :param phys: host physical memory.
    :param hooks: the simulation's dispatcher (arch, strategy, devices).
    :param strategy: the selected strategy's info.
    :param arch_name: the selected arch.
    :param tracer: this run's tracer.
    """

    def __init__(
        self,
        *,
        mm: Mm,
        phys: PhysMem,
        hooks: Dispatcher,
        strategy: StrategyInfo,
        arch_name: str,
        tracer: Tracer = DISABLED,
    ) -> None:
        self.mm = mm
        self.phys = phys
        self.hooks = hooks
        self.strategy = strategy
        self.arch_name = arch_name
        self.handler = strategy.handler_for(arch_name)
        self.tracer = tracer
        self.page_shift: int = phys.page_shift
        self.hva_err_ro_bad = kvm_hva_err_ro_bad(self.page_shift)  # a constant of the VM
        self.memslots = Memslots(self.page_shift)
        self.mmu_lock = SpinLock("kvm->mmu_lock", mm)
        self.mmu_notifier_seq = 0
        self.mmu_notifier_count = 0
        # the union of the ranges being invalidated while the count is
        # non-zero: hva (``mmu_notifier_range_start/end``, v5.13) and gfn
        # (``mmu_invalidate_range_start/end``, v6.3+; INVALID_GFN until an
        # invalidation overlaps a memslot)
        self.mmu_notifier_range_start = 0
        self.mmu_notifier_range_end = 0
        self.mmu_invalidate_range_start = INVALID_GFN
        self.mmu_invalidate_range_end = INVALID_GFN
        # (seq after the invalidation ended, start, end): the stale-mapping
        # checker compares entries' mmu_seq against it.
        self.invalidations: list[tuple[int, int, int]] = []
        # gpas inside stage-2 leaves the arch installed or changed since the
        # checkers last looked (None: nobody looks, nothing is recorded)
        self.stage2_dirty: list[int] | None = None
        self.arch: Any = None
        self.dirty = DirtyLog()  # dirty logging: bitmaps, rings, the stores' ground truth
        self.devices: dict[str, Any] = {}
        # per vcpu, the keys of the access step it is executing (width,
        # value, ea and any key a plugin added to the access step, e.g. the
        # arm64 example's isv), for the arch's translate and fault handler
        self.access_params: dict[int, Mapping[str, object]] = {}
        self.nr_vcpus = 1
        self.notifier = KvmMmuNotifier(self)
        mm.notifiers.register(self.notifier)

    # -- helpers the arch handlers use ------------------------------------

    def fire_point(self, name: str) -> None:
        """A named point of the fault path: run a host event a scenario
        attached to it (``at = "after_hva_to_pfn"``), if any."""
        mm = self.mm
        if mm.race_points or mm.sched is not None:
            mm.fire_point(name)

    def stage2_changed(self, gpa: int) -> None:
        """The arch installed or changed the stage-2 leaf covering ``gpa``
        (see the ``stage2_mappings_in`` hook): the checkers judge it again."""
        d = self.stage2_dirty
        if d is not None:
            d.append(gpa)

    def mmu_notifier_retry(self, mmu_seq: int) -> bool:
        """``mmu_notifier_retry``: an invalidation is running, or one ended
        since ``mmu_seq`` was read.  Called under ``mmu_lock``."""
        if self.mmu_notifier_count:
            return True
        return self.mmu_notifier_seq != mmu_seq

    def mmu_notifier_retry_hva(self, mmu_seq: int, hva: int) -> bool:
        """``mmu_notifier_retry_hva`` (v5.13): an invalidation is running *and*
        ``hva`` lies in the range being invalidated, or one ended since
        ``mmu_seq`` was read.  An unrelated range in progress does not count.
        Called under ``mmu_lock``."""
        if self.mmu_notifier_count and (
            self.mmu_notifier_range_start <= hva < self.mmu_notifier_range_end
        ):
            return True
        return self.mmu_notifier_seq != mmu_seq

    def mmu_invalidate_retry_gfn(self, mmu_seq: int, gfn: int) -> bool:
        """``mmu_invalidate_retry_gfn`` (v6.3+): as :meth:`mmu_notifier_retry_hva`
        with the gfn range the invalidation covers in the memslots; a count
        with no gfn range yet (``INVALID_GPA``) retries (the kernel warns).
        Called under ``mmu_lock``."""
        if self.mmu_notifier_count:
            if self.mmu_invalidate_range_start == INVALID_GFN:
                return True
            if self.mmu_invalidate_range_start <= gfn < self.mmu_invalidate_range_end:
                return True
        return self.mmu_notifier_seq != mmu_seq

    def gfn_to_pfn_memslot(
        self,
        slot: Memslot,
        gfn: int,
        *,
        vcpu: int,
        atomic: bool,
        async_: bool,
        write_fault: bool,
        writable: bool,
        page_out: bool = False,
    ) -> HvaToPfnResult:
        """``__gfn_to_pfn_memslot`` (kernel-notes §A.2): the hva checks, then the strategy's
        ``hva_to_pfn``.  ``writable`` says whether the caller passed a
        ``writable`` pointer; a read-only slot NULLs it (no write upgrade)."""
        tr = self.tracer
        addr = gfn_to_hva_many(slot, gfn, write_fault, self.page_shift)
        if addr == self.hva_err_ro_bad:
            if tr.enabled:
                tr.emit("gfn_to_pfn_memslot", gfn=gfn, result="KVM_PFN_ERR_RO_FAULT")
            return HvaToPfnResult(status=ERR_RO_FAULT, pfn=KVM_PFN_ERR_RO_FAULT)
        if addr >= PAGE_OFFSET:  # kvm_is_error_hva, inline on the fault path
            if tr.enabled:
                tr.emit("gfn_to_pfn_memslot", gfn=gfn, result="KVM_PFN_NOSLOT")
            return HvaToPfnResult(status=NOSLOT, pfn=KVM_PFN_NOSLOT)
        if writable and slot.readonly:
            writable = False
        req = HvaToPfnRequest(
            vcpu=vcpu,
            slot=slot,
            gfn=gfn,
            gpa=gfn << self.page_shift,
            hva=addr,
            write_fault=write_fault,
            atomic=atomic,
            async_=async_,
            writable=writable,
            page_out=page_out,
        )
        mm = self.mm
        if mm.race_points or mm.sched is not None:
            mm.fire_point("hva_to_pfn")
        # Kvm.hva_to_pfn, inlined on the fault path (a call costs more than the check)
        r = self.hooks.hva_to_pfn(kvm=self, request=req)
        if not isinstance(r, HvaToPfnResult):
            raise self.hooks.bad_result("hva_to_pfn", r)
        return r  # type: ignore[no-any-return]

    def hva_to_pfn(self, request: HvaToPfnRequest) -> HvaToPfnResult:
        """The strategy's ``hva_to_pfn`` hook, its result type checked where
        it crosses back into KVM: a wrong type is the strategy's bug
        (:meth:`Dispatcher.bad_result`), not the next reader's."""
        r = self.hooks.hva_to_pfn(kvm=self, request=request)
        if not isinstance(r, HvaToPfnResult):
            raise self.hooks.bad_result("hva_to_pfn", r)
        return r  # type: ignore[no-any-return]


def track_range(kvm: Kvm, start: int, end: int) -> None:
    """The range bookkeeping of ``kvm_inc_notifier_count`` (v5.13, hva) and
    ``kvm_mmu_invalidate_range_add`` (v6.3+, gfn, per overlapping memslot):
    the first invalidation sets the range, a nested one widens it to the
    union's bounds."""
    if kvm.mmu_notifier_count == 1:
        kvm.mmu_notifier_range_start = start
        kvm.mmu_notifier_range_end = end
        kvm.mmu_invalidate_range_start = INVALID_GFN
        kvm.mmu_invalidate_range_end = INVALID_GFN
    else:
        kvm.mmu_notifier_range_start = min(kvm.mmu_notifier_range_start, start)
        kvm.mmu_notifier_range_end = max(kvm.mmu_notifier_range_end, end)
    for _, lo, hi in kvm.memslots.hva_to_gfns(start, end):
        if kvm.mmu_invalidate_range_start == INVALID_GFN:
            kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = lo, hi
        else:
            kvm.mmu_invalidate_range_start = min(kvm.mmu_invalidate_range_start, lo)
            kvm.mmu_invalidate_range_end = max(kvm.mmu_invalidate_range_end, hi)


def _age_gfn_ranges(kvm: Kvm, start: int, end: int, *, test: bool) -> bool:
    """``kvm_handle_hva_range`` for the young callbacks: each memslot the hva
    range overlaps, with the gfns it touches, goes to the arch's
    ``notifier_age_gfn``; the answers are ORed (every slot is visited)."""
    young = False
    for slot, lo, hi in kvm.memslots.hva_to_gfns(start, end):
        answers = kvm.hooks.hook.notifier_age_gfn(kvm=kvm, slot=slot, start=lo, end=hi, test=test)
        young |= any(answers)
    return young


class KvmMmuNotifier:
    """KVM's MMU-notifier callbacks (``kvm_mmu_notifier_ops``, kernel-notes §A.10)."""

    __slots__ = ("kvm",)

    def __init__(self, kvm: Kvm) -> None:
        self.kvm = kvm

    def invalidate_range_start(self, mm: Any, start: int, end: int) -> None:
        """``kvm_mmu_notifier_invalidate_range_start``: count++, unmap now."""
        kvm = self.kvm
        task = mm.current
        kvm.mmu_lock.lock(task)
        kvm.mmu_notifier_count += 1
        track_range(kvm, start, end)
        if kvm.tracer.enabled:
            kvm.tracer.emit(
                "kvm_mmu_notifier_invalidate_range_start",
                start=hex(start),
                end=hex(end),
                mmu_notifier_seq=kvm.mmu_notifier_seq,
                mmu_notifier_count=kvm.mmu_notifier_count,
            )
        kvm.hooks.notifier_invalidate(kvm=kvm, start=start, end=end)
        kvm.mmu_lock.unlock(task)

    def invalidate_range_end(self, mm: Any, start: int, end: int) -> None:
        """``kvm_mmu_notifier_invalidate_range_end``: seq++, count--."""
        kvm = self.kvm
        task = mm.current
        kvm.mmu_lock.lock(task)
        kvm.mmu_notifier_seq += 1
        kvm.mmu_notifier_count -= 1
        if kvm.mmu_notifier_count < 0:
            raise KernelOops("mmu_notifier_count went negative", "bug")
        kvm.invalidations.append((kvm.mmu_notifier_seq, start, end))
        if kvm.tracer.enabled:
            kvm.tracer.emit(
                "kvm_mmu_notifier_invalidate_range_end",
                start=hex(start),
                end=hex(end),
                mmu_notifier_seq=kvm.mmu_notifier_seq,
                mmu_notifier_count=kvm.mmu_notifier_count,
            )
        kvm.mmu_lock.unlock(task)

    def change_pte(self, mm: Any, address: int, pte: int) -> None:
        """``kvm_mmu_notifier_change_pte``: seq++ and ``kvm_set_spte_hva``."""
        kvm = self.kvm
        task = mm.current
        kvm.mmu_lock.lock(task)
        kvm.mmu_notifier_seq += 1
        kvm.hooks.notifier_change_pte(kvm=kvm, hva=address, pte=pte)
        kvm.mmu_lock.unlock(task)

    def clear_young(self, mm: Any, start: int, end: int) -> bool:
        """``kvm_mmu_notifier_clear_young``: under ``mmu_lock``, age the
        range in every memslot it overlaps (``kvm_age_hva`` /
        ``kvm_age_gfn``); no TLB flush, in v4.16 as in v6.13.  True if
        anything was young before it was cleared."""
        kvm = self.kvm
        task = mm.current
        kvm.mmu_lock.lock(task)
        try:
            young = _age_gfn_ranges(kvm, start, end, test=False)
            # a plugin written against the hva-range hook (hookspecs.notifier_age)
            young |= any(kvm.hooks.hook.notifier_age(kvm=kvm, start=start, end=end))
        finally:
            kvm.mmu_lock.unlock(task)
        if kvm.tracer.enabled:
            kvm.tracer.emit(
                "kvm_mmu_notifier_clear_young", start=hex(start), end=hex(end), young=young
            )
        return young

    def test_young(self, mm: Any, address: int) -> bool:
        """``kvm_mmu_notifier_test_young``: under ``mmu_lock``, is the page
        at ``address`` young in the memslot(s) mapping it (``kvm_test_age_hva``
        / ``kvm_test_age_gfn`` on the one gfn)?  Changes nothing."""
        kvm = self.kvm
        task = mm.current
        kvm.mmu_lock.lock(task)
        try:
            young = _age_gfn_ranges(kvm, address, address + 1, test=True)
        finally:
            kvm.mmu_lock.unlock(task)
        if kvm.tracer.enabled:
            kvm.tracer.emit("kvm_mmu_notifier_test_young", address=hex(address), young=young)
        return young

    def release(self, mm: Any) -> None:
        """``kvm_mmu_notifier_release``: the process exits; nothing to model."""
