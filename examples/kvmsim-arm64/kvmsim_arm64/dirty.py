"""Dirty logging on the arm64 stage 2, per handler version: what the
dirty-logging hooks do (the bitmap, ``KVM_GET_DIRTY_LOG`` and
``KVM_CLEAR_DIRTY_LOG`` are kvmsim's core).  One mechanism: write
protection (``wp``); arm64 has no PML and no hardware dirty bit use in
these versions.

- Enabling logging on a slot (``kvm_arch_commit_memory_region``):
  ``kvm_mmu_wp_memory_region`` write-protects every leaf of the slot under
  ``mmu_lock`` (a block as a whole).  v5.13 and v6.13 skip it with manual
  protect and ``KVM_DIRTY_LOG_INITIALLY_SET`` (every page is reported dirty
  anyway; the clears protect gradually).  v6.13 then splits the slot's
  blocks into pages (``kvm_mmu_split_memory_region``) when userspace set
  ``KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE`` (v6.2, 0 by default: off); the
  pages inherit the block's read-only permission.
- A harvest re-arms pages (``kvm_arch_mmu_enable_log_dirty_pt_masked`` →
  ``stage2_wp_range`` from the word's first set page to one past its last,
  so also the clean pages between them, and every block meeting that
  range whole); v6.13 with manual protect and initially-set then splits
  the blocks of that range (the same chunk-size switch).
- The fault path (abort.py, abort_later.py): ``memslot_is_logging``
  forces page mappings (no hugetlbfs or THP block) and maps a read
  fault's page read-only; a write fault's page is mapped writable and
  marked with ``mark_page_dirty`` — v4.16 under ``mmu_lock`` before
  ``stage2_set_pte``, which first dissolves a block in the way
  (``stage2_dissolve_pmd``); v5.13 under ``mmu_lock`` once the map or
  relax succeeded; v6.13 after ``mmu_lock`` is dropped (a harvest in
  between write-protects the new page, so the store faults and marks
  again: nothing is lost).  There is no lockless fast path: every store
  to a write-protected page takes a permission fault.

Not modelled: the dirty ring (arm64 has it from v6.1, with
``KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP`` for the ITS tables); nested
stage 2 (``kvm_nested_s2_wp``); the split cache's top-up (best effort,
never failing here); ``kvm_arch_flush_remote_tlbs_memslot``.

Read from: Linux 4.16.13 (mirror lizuobin/linux-4.16.13_tiny4412)
virt/kvm/arm/mmu.c ``kvm_arch_commit_memory_region``,
``kvm_mmu_wp_memory_region``, ``stage2_wp_range`` / ``_puds`` /
``_pmds`` / ``_ptes``, ``kvm_mmu_write_protect_pt_masked``,
``stage2_set_pte`` / ``stage2_dissolve_pmd``, ``user_mem_abort``;
Linux 5.12.9 (zhangyinjun/linux-5.12.9) arch/arm64/kvm/mmu.c for the
v5.13 handler (the same functions, with the initially-set test in
``kvm_arch_commit_memory_region``); Linux 6.13.7 (ChenRuiwei/linux-6.13.7)
arch/arm64/kvm/mmu.c ``kvm_mmu_split_huge_pages``,
``kvm_mmu_split_memory_region``, ``kvm_arch_mmu_enable_log_dirty_pt_masked``,
``kvm_arch_commit_memory_region``, ``user_mem_abort`` and arm.c
``kvm_vm_ioctl_enable_cap`` (``KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim.hooktypes import DirtyCaps, StepResult
from kvmsim.kvm.dirty import mark_page_dirty
from kvmsim_arm64.desc import (
    DESC_TABLE_OR_PAGE,
    L1_ENTRIES,
    L1_SHIFT,
    L2_SHIFT,
    L3_SHIFT,
    PAGE_SHIFT,
    PMD_SIZE,
    PUD_SIZE,
    S2AP_W,
    TABLE_ENTRIES,
)

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot
    from kvmsim.scenario import StepSpec

PAGE_SIZE = 1 << PAGE_SHIFT
EAGER_SPLIT = "arm_eager_split_chunk_size"
"""``enable_cap`` name of ``KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE`` (v6.2)."""

_NO_CLEAR = (
    "KVM_CLEAR_DIRTY_LOG and KVM_CAP_MANUAL_DIRTY_LOG_PROTECT came in v5.0 "
    "(2a31b9db1535); the v4.16 handler's kernel has neither"
)
_NO_INIT_SET = (
    "KVM_DIRTY_LOG_INITIALLY_SET (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) came in "
    "v5.3; the v4.16 handler's kernel has no such flag"
)
_NO_RING = (
    "arm64's dirty ring came in v6.1 and is not modelled by this example "
    "(the v4.16 and v5.13 handlers' kernels have none)"
)
_NO_PML = "arm64 has no PML: dirty logging is write protection ('wp')"
_NO_DIRTY_BIT = "arm64 KVM harvests no hardware dirty bit: dirty logging is write protection ('wp')"
_IDX = TABLE_ENTRIES - 1


def caps(kvm: Kvm) -> DirtyCaps:
    """What the handler version's kernel offers (``dirty_log_caps``)."""
    missing = {"ring": _NO_RING, "pml": _NO_PML, "dirty_bit": _NO_DIRTY_BIT}
    if kvm.arch.handler == "v4.16":
        return DirtyCaps(
            modes=("wp",),
            missing={**missing, "manual_protect": _NO_CLEAR, "initially_set": _NO_INIT_SET},
        )
    return DirtyCaps(modes=("wp",), manual_protect=True, initially_set=True, missing=missing)


def memslot_is_logging(kvm: Kvm, slot: Memslot) -> bool:
    """``memslot_is_logging``: the slot has a dirty bitmap and is not read-only."""
    return kvm.dirty.logging(slot.id) and not slot.readonly


def _init_all_set(kvm: Kvm) -> bool:
    """``kvm_dirty_log_manual_protect_and_init_set``."""
    return bool(kvm.dirty.manual_protect and kvm.dirty.initially_set)


def enable(kvm: Kvm, slot: Memslot, on: bool) -> bool:
    """``kvm_arch_commit_memory_region`` for a flags-only change
    (``dirty_log_enable``).  Disabling changes no stage-2 entry (v6.13
    frees the split cache)."""
    if not on:
        return True
    st = kvm.arch
    if st.handler != "v4.16" and _init_all_set(kvm):
        # reported dirty already: the clears write-protect (and split) gradually
        if kvm.tracer.enabled:
            kvm.tracer.emit("kvm_arch_commit_memory_region", slot=slot.id, write_protected=0)
        return True
    start = slot.base_gfn << PAGE_SHIFT
    end = (slot.base_gfn + slot.npages) << PAGE_SHIFT
    task = kvm.mm.current
    # kvm_mmu_wp_memory_region, then (v6.13) kvm_mmu_split_memory_region:
    # each takes mmu_lock itself
    kvm.mmu_lock.lock(task)
    try:
        n = stage2_wp_range(kvm, start, end)
    finally:
        kvm.mmu_lock.unlock(task)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_mmu_wp_memory_region", slot=slot.id, write_protected=n)
    if st.handler == "v6.13":
        kvm.mmu_lock.lock(task)
        try:
            kvm_mmu_split_huge_pages(kvm, start, end)
        finally:
            kvm.mmu_lock.unlock(task)
    return True


def protect(kvm: Kvm, slot: Memslot, gfn_offset: int, mask: int) -> bool:
    """``kvm_arch_mmu_enable_log_dirty_pt_masked`` with ``mmu_lock`` held
    (``dirty_log_protect``): write-protect from the mask's first page to
    one past its last; v6.13 with manual protect and initially-set then
    splits the blocks there."""
    base = slot.base_gfn + gfn_offset
    start = (base + (mask & -mask).bit_length() - 1) << PAGE_SHIFT
    end = (base + mask.bit_length()) << PAGE_SHIFT
    n = stage2_wp_range(kvm, start, end)
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvm_mmu_write_protect_pt_masked",
            slot=slot.id,
            gfn_offset=gfn_offset,
            mask=hex(mask),
            write_protected=n,
        )
    if kvm.arch.handler == "v6.13" and _init_all_set(kvm):
        kvm_mmu_split_huge_pages(kvm, start, end)
    return True


def stage2_wp_range(kvm: Kvm, start: int, end: int) -> int:
    """``stage2_wp_range`` (v4.16) / ``kvm_pgtable_stage2_wrprotect`` (v5.13,
    v6.13) over the IPAs ``[start, end)``, ``mmu_lock`` held: every valid
    leaf meeting the range loses S2AP[1] (write), a block as a whole.
    Returns how many leaves changed."""
    st = kvm.arch
    n = 0
    for table, idx, base, _shift in _leaves(st.l1, start, end):
        d = table[idx]
        if d & S2AP_W:
            table[idx] = d & ~S2AP_W
            kvm.stage2_changed(base)
            n += 1
    return n


def _leaves(
    l1: dict[int, object], start: int, end: int
) -> list[tuple[dict[int, int], int, int, int]]:
    """(table, index, base IPA, size shift) of each leaf descriptor meeting
    ``[start, end)``, in IPA order."""
    out: list[tuple[dict[int, int], int, int, int]] = []
    for i1 in range(start >> L1_SHIFT, ((end - 1) >> L1_SHIFT) + 1):
        e1 = l1.get(i1 & (L1_ENTRIES - 1))
        b1 = i1 << L1_SHIFT
        if e1 is None:
            continue
        if isinstance(e1, int):
            out.append((l1, i1 & (L1_ENTRIES - 1), b1, L1_SHIFT))  # type: ignore[arg-type]
            continue
        assert isinstance(e1, dict)
        lo2, hi2 = max(start, b1), min(end, b1 + PUD_SIZE)
        for i2 in range((lo2 >> L2_SHIFT) & _IDX, (((hi2 - 1) >> L2_SHIFT) & _IDX) + 1):
            e2 = e1.get(i2)
            b2 = b1 | (i2 << L2_SHIFT)
            if e2 is None:
                continue
            if isinstance(e2, int):
                out.append((e1, i2, b2, L2_SHIFT))
                continue
            lo3, hi3 = max(start, b2), min(end, b2 + PMD_SIZE)
            for i3 in range((lo3 >> L3_SHIFT) & _IDX, (((hi3 - 1) >> L3_SHIFT) & _IDX) + 1):
                if i3 in e2:
                    out.append((e2, i3, b2 | (i3 << L3_SHIFT), L3_SHIFT))
    return out


def kvm_mmu_split_huge_pages(kvm: Kvm, start: int, end: int) -> int:
    """``kvm_mmu_split_huge_pages`` (v6.13), ``mmu_lock`` held: nothing when
    the VM's split chunk size is 0 (the default); else
    ``kvm_pgtable_stage2_split`` breaks every block meeting ``[start, end)``
    into page descriptors with the block's attributes and consecutive
    output addresses (a 1G block through 2M tables).  The chunks only bound
    how much is split between cache top-ups; the result is the same.
    Returns how many blocks were split."""
    st = kvm.arch
    if not st.split_chunk_size:
        return 0
    n = 0
    while True:
        blocks = [leaf for leaf in _leaves(st.l1, start, end) if leaf[3] != L3_SHIFT]
        if not blocks:
            break
        for table, idx, base, shift in blocks:
            _split_block(kvm, table, idx, base, shift)  # type: ignore[arg-type]
            n += 1
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_mmu_split_huge_pages", start=hex(start), end=hex(end), split=n)
    return n


def _split_block(kvm: Kvm, table: dict[int, object], idx: int, base: int, shift: int) -> None:
    """``stage2_split_walker`` for one block: a table of ``TABLE_ENTRIES``
    children, each the block's descriptor for its part (pages at level 3,
    2M blocks under a 1G one), replacing the block (break-before-make)."""
    st = kvm.arch
    d = table[idx]
    assert isinstance(d, int)
    child_shift = shift - (PAGE_SHIFT - 3)
    child_type = DESC_TABLE_OR_PAGE if child_shift == L3_SHIFT else 0
    seq = st.seqs.pop(base, -1)
    children: dict[int, int] = {}
    for i in range(TABLE_ENTRIES):
        children[i] = (d + (i << child_shift)) | child_type
        if seq >= 0:
            st.seqs[base + (i << child_shift)] = seq
    table[idx] = children
    kvm.stage2_changed(base)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_pgtable_stage2_split", ipa=hex(base), size=1 << shift)


def enable_eager_split(kvm: Kvm, step: StepSpec) -> StepResult:
    """``KVM_ENABLE_CAP(KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, chunk_size)``
    (v6.2+): accepted only while the VM has no memslot
    (``kvm_are_all_memslots_empty``) and for 0 or a size the stage 2 can
    map (4K, 2M, 1G).  The scenario's memslots stand for those the VMM
    creates after its capabilities, so the step is accepted before any
    other step ran; later it fails as the kernel's would."""
    from kvmsim_arm64.mmio import EINVAL_OUTCOME

    st = kvm.arch
    size = step.params.get("chunk_size", 0)
    if st.handler != "v6.13":
        return StepResult(
            outcome=EINVAL_OUTCOME,
            detail=f"no KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE before v6.2 ({st.handler} handler)",
        )
    if step.index != st.cap_steps:
        return StepResult(
            outcome=EINVAL_OUTCOME,
            detail="KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE: the VM has memslots already",
        )
    if size not in (0, PAGE_SIZE, PMD_SIZE, PUD_SIZE):
        return StepResult(
            outcome=EINVAL_OUTCOME,
            detail=f"KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE: {size:#x} is not a block size",
        )
    st.split_chunk_size = size
    return StepResult(detail=f"split_page_chunk_size = {size:#x}")


def mark(kvm: Kvm, gfn: int) -> None:
    """``mark_page_dirty``: the slot's bitmap, when it logs."""
    mark_page_dirty(kvm, gfn)
