"""Scenario steps the x86 EPT plugin adds.

- ``swap_out`` (``vma``, ``offset``, ``size``; one page by default): host
  reclaim makes each page of the range need I/O on its next fault
  (``Mm.mark_needs_io``: anonymous pages go to swap, file pages leave the
  page cache), with the MMU-notifier calls reclaim makes.  This is how a
  scenario gets a page that ``FOLL_NOWAIT`` gup cannot fault in, so that
  ``hva_to_pfn`` sets ``*async``.
- ``async_pf`` (``vcpu``, ``enable`` = true): the guest writes
  ``MSR_KVM_ASYNC_PF_EN`` (``kvm_pv_enable_async_pf``).
- ``apf_complete`` (``vcpu``): the kworker runs the vcpu's queued async-PF
  work (``async_pf_execute``), then the vcpu's next entry processes the
  completions: the page is prefaulted and "page ready" is injected
  (``kvm_check_async_pf_completion``).
- ``dirty_log`` (``slot``, ``action`` = ``enable`` | ``get`` | ``disable``,
  optional ``expect_dirty``, the gpas a correct kernel reports; optional
  ``pml`` on ``enable``: the host has Intel PML, ``enable_pml``): the
  ``KVM_SET_USER_MEMORY_REGION`` flag change and the ``KVM_GET_DIRTY_LOG``
  ioctl (kernel-notes §L.5).  Without PML (``slot_enable_log_dirty`` is
  NULL) by write protection; with PML by D bits the CPU logs (stores
  through a 4K leaf do not exit), large leaves write-protected.  The
  reported gpas are kept in ``kvm.arch.dirty_reports`` and traced; a
  mismatch with ``expect_dirty`` is an expectation failure of the step.
- ``age`` is a core step now (kvmsim.hoststeps): the plugin answers it
  with ``notifier_age_gfn`` (:func:`kvmsim_plugins.x86_ept.ept.age_gfn_range`).
- ``nx_huge_pages`` (``enabled`` = true): the administrator writes the
  ``kvm.nx_huge_pages`` module parameter (the iTLB multihit workaround,
  v5.4; on by default on affected CPUs).  ``set_nx_huge_pages`` zaps every
  SPTE of the VM (``kvm_mmu_zap_all_fast``) when the value changes; from
  then on huge leaves are mapped non-executable and an instruction fetch is
  mapped with 4K pages.  v4.16 has no such parameter: nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from kvmsim_plugins.x86_ept import apf
from kvmsim_plugins.x86_ept.common import mark_page_dirty, split_huge_spte
from kvmsim_plugins.x86_ept.ept import (
    EPT_D,
    EPT_W,
    EptState,
    drop_spte,
    is_large_pte,
    is_shadow_present_pte,
    spte_to_pfn,
    unmap_hva_range,
)

from kvmsim.dirtylog import DIRTY_LOG_STEP, dirty_log_action, dirty_log_result, dirty_log_slot
from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import StepResult
from kvmsim.host.constants import PTE_PFN_SHIFT, PTE_PRESENT, THP_SHIFT
from kvmsim.kvm.pfn import kvm_is_reserved_pfn
from kvmsim.scenario.model import FieldType, StepKind
from kvmsim.scenario.sizes import PAGE_SIZE

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot
    from kvmsim.scenario.model import StepSpec

_RANGE: Final[Mapping[str, FieldType]] = {"vma": str, "offset": int, "size": (int, str)}

STEP_KINDS: Final = (
    StepKind("swap_out", _RANGE, required=("vma",), default_size=PAGE_SIZE),
    StepKind("async_pf", {"vcpu": int, "enable": bool}),
    StepKind("apf_complete", {"vcpu": int}),
    DIRTY_LOG_STEP,
    StepKind("nx_huge_pages", {"enabled": bool}),
)
NAMES: Final = frozenset(k.name for k in STEP_KINDS)


def arch_step(kvm: Kvm, vcpu: int, step: StepSpec) -> StepResult | None:
    """Run one of this plugin's steps; None for any other."""
    do = step.do
    if do not in NAMES:
        return None
    if do == "swap_out":
        return _swap_out(kvm, step)
    if do == "async_pf":
        apf.kvm_pv_enable_async_pf(kvm, vcpu, bool(step.params.get("enable", True)))
        return StepResult(outcome="done")
    if do == "apf_complete":
        return _apf_complete(kvm, vcpu)
    if do == "dirty_log":
        return _dirty_log(kvm, step)
    return _nx_huge_pages(kvm, bool(step.params.get("enabled", True)))


def _nx_huge_pages(kvm: Kvm, enabled: bool) -> StepResult:
    st: EptState = kvm.arch
    if st.version == "v4.16":
        return StepResult(outcome="done", detail="no kvm.nx_huge_pages before v5.4: no effect")
    if enabled != st.nx_huge_pages:
        st.nx_huge_pages = enabled
        # set_nx_huge_pages → kvm_mmu_zap_all_fast: every SPTE goes
        task = kvm.mm.current
        kvm.mmu_lock.lock(task)
        try:
            for start, end in _slot_ranges(kvm):
                unmap_hva_range(kvm, start, end)
        finally:
            kvm.mmu_lock.unlock(task)
    if kvm.tracer.enabled:
        kvm.tracer.emit("set_nx_huge_pages", enabled=enabled)
    return StepResult(outcome="done")


def _slot_ranges(kvm: Kvm) -> list[tuple[int, int]]:
    shift = kvm.page_shift
    return [(s.userspace_addr, s.userspace_addr + (s.npages << shift)) for s in kvm.memslots.slots]


def _range(kvm: Kvm, step: StepSpec) -> tuple[int, int]:
    vma = next((v for v in kvm.mm.vmas if v.name == step.vma), None)
    if vma is None:
        raise ScenarioError(
            f"vma {step.vma!r} is not mapped any more", key=f"step[{step.index}].vma"
        )
    start = vma.start + step.offset
    size = step.size if step.size is not None else PAGE_SIZE
    return start, start + size


def _swap_out(kvm: Kvm, step: StepSpec) -> StepResult:
    start, end = _range(kvm, step)
    ps = kvm.mm.page_size
    for hva in range(start & ~(ps - 1), end, ps):
        kvm.mm.mark_needs_io(hva)
    if kvm.tracer.enabled:
        kvm.tracer.emit("swap_out", start=hex(start), end=hex(end))
    return StepResult(outcome="done", detail=f"{(end - start) // ps} page(s) need I/O")


def _apf_complete(kvm: Kvm, vcpu: int) -> StepResult:
    mm = kvm.mm
    ran = apf.run_pending_work(kvm, vcpu)
    prev = mm.current
    mm.current = f"vcpu{vcpu}"
    try:
        done = apf.kvm_check_async_pf_completion(kvm, vcpu)
    finally:
        mm.current = prev
    return StepResult(outcome="done", detail=f"{ran} work item(s) ran, {done} page(s) ready")


def _dirty_log(kvm: Kvm, step: StepSpec) -> StepResult:
    action = dirty_log_action(step)
    slot = dirty_log_slot(kvm, step)
    st: EptState = kvm.arch
    if action == "enable":
        if step.params.get("pml") and st.pml is None:
            st.pml = []  # enable_pml: every vcpu logs D-bit transitions from now on
        kvm_mmu_slot_enable_dirty_log(kvm, slot)
        return StepResult(outcome="done")
    if action == "disable":
        kvm_mmu_slot_disable_dirty_log(kvm, slot)
        return StepResult(outcome="done")
    if slot.id not in st.dirty_bitmaps:
        # kvm_get_dirty_log_protect: no dirty_bitmap → -ENOENT to QEMU
        return StepResult(outcome="enoent", detail="dirty logging is not enabled on this slot")
    gpas = kvm_get_dirty_log_protect(kvm, slot)
    st.dirty_reports.append((step.index, slot.id, gpas))
    return dirty_log_result(step, gpas)


def kvm_mmu_slot_enable_dirty_log(kvm: Kvm, slot: Memslot) -> None:
    """``KVM_SET_USER_MEMORY_REGION`` adding ``KVM_MEM_LOG_DIRTY_PAGES``:
    allocate the bitmap, then ``kvm_mmu_slot_apply_flags`` → (v6.13: the
    eager split of every huge leaf, :func:`_eager_split`)
    ``kvm_mmu_slot_remove_write_access``: under ``mmu_lock`` write-protect
    every SPTE of the slot at every level with ``pt_protect = false``
    (clear W only, keep HOST_WRITEABLE and MMU_WRITEABLE), flush."""
    st: EptState = kvm.arch
    if slot.id in st.dirty_bitmaps:
        return
    st.dirty_bitmaps[slot.id] = set()
    if st.version == "v6.13":
        _eager_split(kvm, slot)
    if st.pml is not None:
        # vmx_slot_enable_log_dirty: clear D on the 4K leaves (the CPU logs
        # the next store to each), write-protect the large ones (a store
        # faults and is mapped 4K)
        n = _change_bit(kvm, slot, EPT_D, None, lambda level: level == 1)
        n += _change_bit(kvm, slot, EPT_W, None, lambda level: level > 1)
        if kvm.tracer.enabled:
            kvm.tracer.emit("vmx_slot_enable_log_dirty", slot=slot.id, changed=n)
        return
    n = _write_protect(kvm, slot, None)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_mmu_slot_remove_write_access", slot=slot.id, protected=n)


def _eager_split(kvm: Kvm, slot: Memslot) -> None:
    """v6.13 ``kvm_mmu_slot_try_split_huge_pages(kvm, slot, PG_LEVEL_4K)``
    (``eager_page_split``, on by default), before the write protection:
    every huge leaf of the slot is split in place down to 4K
    (``tdp_mmu_split_huge_page``), its frames still mapped."""
    st: EptState = kvm.arch
    task = kvm.mm.current
    start = slot.base_gfn << 12
    end = (slot.base_gfn + slot.npages) << 12
    kvm.mmu_lock.lock(task)
    try:
        while True:
            huge = [
                (table, idx, level, gpa)
                for table, idx, level, gpa in st.leaves_in(start, end)
                if level > 1 and is_shadow_present_pte(v := table[idx]) and is_large_pte(v)  # type: ignore[arg-type]
            ]
            if not huge:
                break
            for table, idx, level, gpa in huge:
                split_huge_spte(kvm, table, idx, gpa, level, table[idx])  # type: ignore[arg-type]
    finally:
        kvm.mmu_lock.unlock(task)


def _write_protect(kvm: Kvm, slot: Memslot, gfns: set[int] | None) -> int:
    """``__rmap_write_protect(pt_protect = false)`` over the slot's SPTEs
    (every level), or only over the 4K SPTEs of ``gfns`` (the masked
    variant ``kvm_mmu_write_protect_pt_masked``)."""
    return _change_bit(kvm, slot, EPT_W, gfns, lambda level: True)


def _change_bit(
    kvm: Kvm,
    slot: Memslot,
    bit: int,
    gfns: set[int] | None,
    levels: Callable[[int], bool],
    *,
    set_: bool = False,
) -> int:
    """Under ``mmu_lock``, clear (``set_``: set) ``bit`` in the slot's present
    SPTEs whose level ``levels`` accepts, or only in the 4K SPTEs of
    ``gfns``; returns how many changed."""
    st: EptState = kvm.arch
    task = kvm.mm.current
    start = slot.base_gfn << 12
    end = (slot.base_gfn + slot.npages) << 12
    n = 0
    kvm.mmu_lock.lock(task)
    try:
        for table, idx, level, gpa in st.leaves_in(start, end):
            v = table[idx]
            assert isinstance(v, int)
            if not is_shadow_present_pte(v) or bool(v & bit) == set_ or not levels(level):
                continue
            if gfns is not None and (level != 1 or (gpa >> 12) not in gfns):
                continue
            table[idx] = v | bit if set_ else v & ~bit
            st.hits.pop(v, None)
            n += 1
    finally:
        kvm.mmu_lock.unlock(task)
    return n


def kvm_flush_pml_buffers(kvm: Kvm) -> None:
    """``kvm_flush_pml_buffers`` (``vmx_flush_log_dirty``, before
    ``KVM_GET_DIRTY_LOG`` takes the bitmap): every logged gpa is
    ``kvm_vcpu_mark_page_dirty``-ed."""
    st: EptState = kvm.arch
    if not st.pml:
        return
    logged, st.pml = st.pml, []
    for gpa in logged:
        mark_page_dirty(kvm, gpa >> 12)


def kvm_get_dirty_log_protect(kvm: Kvm, slot: Memslot) -> tuple[int, ...]:
    """``kvm_vm_ioctl_get_dirty_log`` (with PML: ``kvm_flush_pml_buffers``
    first) → ``kvm_get_dirty_log_protect``: take the bitmap and clear it
    (``xchg``), write-protect the 4K SPTEs of the gfns that were dirty (with
    PML: ``kvm_mmu_clear_dirty_pt_masked``, clear their D bits), and return
    them (as gpas, sorted)."""
    st: EptState = kvm.arch
    kvm_flush_pml_buffers(kvm)
    bitmap = st.dirty_bitmaps[slot.id]
    rel = sorted(bitmap)
    bitmap.clear()
    gfns = {slot.base_gfn + r for r in rel}
    if not gfns:
        n = 0
    elif st.pml is not None:
        n = _change_bit(kvm, slot, EPT_D, gfns, lambda level: level == 1)
    else:
        n = _write_protect(kvm, slot, gfns)
    gpas = tuple((slot.base_gfn + r) << 12 for r in rel)
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvm_get_dirty_log", slot=slot.id, dirty=[hex(g) for g in gpas], protected=n
        )
    return gpas


def kvm_mmu_slot_disable_dirty_log(kvm: Kvm, slot: Memslot) -> None:
    """Clearing ``KVM_MEM_LOG_DIRTY_PAGES``: free the bitmap, then
    ``kvm_mmu_zap_collapsible_sptes``: drop the 4K SPTEs of pfns that are
    part of a THP the host maps with a PMD, so they refault as 2M.
    hugetlbfs-backed 4K SPTEs are not zapped in v4.16 (the test is
    ``PageTransCompoundMap``)."""
    st: EptState = kvm.arch
    if st.dirty_bitmaps.pop(slot.id, None) is None:
        return
    if st.pml is not None:
        # vmx_slot_disable_log_dirty → kvm_mmu_slot_set_dirty: D on every leaf
        _change_bit(kvm, slot, EPT_D, None, lambda level: True, set_=True)
    phys = kvm.phys
    task = kvm.mm.current
    start = slot.base_gfn << 12
    end = (slot.base_gfn + slot.npages) << 12
    zapped = 0
    kvm.mmu_lock.lock(task)
    try:
        for table, idx, level, gpa in st.leaves_in(start, end):
            v = table[idx]
            assert isinstance(v, int)
            if level != 1 or not is_shadow_present_pte(v):
                continue
            pfn = spte_to_pfn(v)
            if kvm_is_reserved_pfn(phys, pfn) or not phys.PageTransCompound(pfn):
                continue
            hva = slot.userspace_addr + (gpa - start)
            e, shift = kvm.mm.pgtable.find_linux_pte(hva)
            if e is None or shift != THP_SHIFT or not e & PTE_PRESENT:
                continue
            if e >> PTE_PFN_SHIFT != phys.compound_head(pfn):
                continue
            drop_spte(kvm, table, idx, gpa, level)
            zapped += 1
    finally:
        kvm.mmu_lock.unlock(task)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_mmu_zap_collapsible_sptes", slot=slot.id, zapped=zapped)
