"""x86 dirty logging on EPT, per handler version: what the dirty-logging
hooks do (the generic part, bitmaps and rings, is the core's
:mod:`kvmsim.kvm.dirty`).

Mechanisms (``kvm.dirty.mode``):

- ``wp`` (the default): write protection.  Enabling logging write-protects
  the slot's SPTEs (``kvm_mmu_slot_remove_write_access``, keeping the
  host/MMU-writable bits); a store to a write-protected 4K SPTE is fixed by
  ``fast_page_fault``, which marks the gfn; a large one goes to the slow
  path and is mapped 4K; a harvest write-protects the pages it took
  (``kvm_mmu_write_protect_pt_masked``, 4K SPTEs only).
- ``pml``: Intel PML (``enable_pml``).  Enabling clears the D bits of the
  4K leaves and write-protects the large ones (``vmx_slot_enable_log_dirty``);
  the CPU logs the gpa of each 4K store that sets a D bit in the vcpu's
  512-entry buffer, a full buffer exits (``handle_pml_full``) and every exit
  and ``KVM_GET_DIRTY_LOG`` flush it into the bitmap (``vmx_flush_pml_buffer``);
  a harvest clears the D bits it took (``kvm_mmu_clear_dirty_pt_masked``).
  Disabling sets D everywhere (``vmx_slot_disable_log_dirty``).
- ``ring`` (v5.11+): the dirty ring over write protection (a host without
  PML: ``kvm_cpu_dirty_log_size`` is 0); marks go to the running vcpu's ring
  and ``KVM_RESET_DIRTY_RINGS`` write-protects what was collected.

Manual protect (v5.0+) with ``KVM_DIRTY_LOG_INITIALLY_SET`` (v5.3+): v5.11
write-protects only the large SPTEs at enable (4K pages are reported dirty
anyway and protected by the first clear); from v5.14 (the v6.13 handler)
enable protects nothing and each clear first write-protects the large SPTEs
around its range, the one holding its first page and, when the range
crosses a 2M boundary, the one holding its last (``kvm_arch_mmu_enable_log_dirty_pt_masked``).
v6.13 splits huge leaves eagerly (``eager_page_split``, on by default):
enabling without initially-set first splits every huge leaf of the slot in
place down to 4K (``kvm_mmu_slot_try_split_huge_pages``); with it, each
clear first splits those meeting its range (``kvm_mmu_try_split_huge_pages``,
before the write protection above).

Read from: Linux 4.16.13 (mirror lizuobin/linux-4.16.13_tiny4412:
arch/x86/kvm/mmu.c ``kvm_mmu_slot_remove_write_access``,
``kvm_mmu_write_protect_pt_masked``, ``kvm_mmu_clear_dirty_pt_masked``,
``kvm_mmu_slot_leaf_clear_dirty``, ``kvm_mmu_slot_largepage_remove_write_access``,
``kvm_mmu_zap_collapsible_sptes``; x86.c ``kvm_mmu_slot_apply_flags``;
vmx.c ``vmx_flush_pml_buffer``, ``handle_pml_full``); Linux 5.11.0 (mirror
CompressionDuck/linux-5.11, for the v5.13 handler: no 5.13 tree was
reachable, and the dirty-logging code is unchanged between them); the
2021 patch "KVM: x86: Not wr-protect huge page with init_all_set dirty log"
(Keqian Zhu, queued for v5.14, kvm@vger 2021-05-24) and a current mmu.c
for v6.13's ``kvm_arch_mmu_enable_log_dirty_pt_masked``; Linux 6.13.7
(GitHub ChenRuiwei/linux-6.13.7: x86.c ``kvm_mmu_slot_apply_flags``,
mmu/mmu.c ``kvm_arch_mmu_enable_log_dirty_pt_masked``,
``kvm_mmu_slot_try_split_huge_pages``) for the eager split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmsim_plugins.x86_ept.common import split_huge_spte
from kvmsim_plugins.x86_ept.ept import (
    EPT_D,
    EPT_W,
    EptState,
    drop_spte,
    is_large_pte,
    is_shadow_present_pte,
    spte_to_pfn,
)

from kvmsim.hooktypes import DirtyCaps
from kvmsim.host.constants import PTE_PFN_SHIFT, PTE_PRESENT, THP_SHIFT
from kvmsim.kvm.dirty import mark_page_dirty
from kvmsim.kvm.pfn import kvm_is_reserved_pfn

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot

_NO_CLEAR = (
    "KVM_CLEAR_DIRTY_LOG and KVM_CAP_MANUAL_DIRTY_LOG_PROTECT came in v5.0 "
    "(2a31b9db1535, 'kvm: introduce manual dirty log reprotect'); the v4.16 "
    "handler's kernel has neither"
)
_NO_INIT_SET = (
    "KVM_DIRTY_LOG_INITIALLY_SET (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) came in "
    "v5.3; the v4.16 handler's kernel has no such flag"
)
_NO_RING = (
    "KVM_CAP_DIRTY_LOG_RING came in v5.11 (fb04a1eddb1a, 'KVM: X86: Implement "
    "ring-based dirty memory tracking'); the v4.16 handler's kernel has no dirty ring"
)
_NO_DIRTY_BIT = (
    "x86 has no harvest of EPT dirty bits without PML: choose 'wp' or 'pml' "
    "('dirty_bit' is POWER's change-bit harvest)"
)


def caps(kvm: Kvm) -> DirtyCaps:
    """What the handler version's kernel offers (``dirty_log_caps``)."""
    st: EptState = kvm.arch
    if st.version == "v4.16":
        return DirtyCaps(
            modes=("wp", "pml"),
            missing={
                "ring": _NO_RING,
                "manual_protect": _NO_CLEAR,
                "initially_set": _NO_INIT_SET,
                "dirty_bit": _NO_DIRTY_BIT,
            },
        )
    return DirtyCaps(
        modes=("wp", "pml", "ring"),
        manual_protect=True,
        initially_set=True,
        missing={"dirty_bit": _NO_DIRTY_BIT},
    )


def _init_all_set(kvm: Kvm) -> bool:
    """``kvm_dirty_log_manual_protect_and_init_set``."""
    d = kvm.dirty
    return d.manual_protect and d.initially_set


def enable(kvm: Kvm, slot: Memslot, on: bool) -> bool:
    """``kvm_mmu_slot_apply_flags`` for a flags-only change (``dirty_log_enable``)."""
    st: EptState = kvm.arch
    pml = kvm.dirty.mode == "pml"
    if not on:
        if pml:
            # vmx_slot_disable_log_dirty → kvm_mmu_slot_set_dirty: D on every leaf
            _locked_change(kvm, slot, EPT_D, None, lambda level: True, set_=True)
        kvm_mmu_zap_collapsible_sptes(kvm, slot)
        return True
    if pml and st.pml is None:
        st.pml = {}  # enable_pml: every vcpu logs D-bit transitions from now on
    init_set = _init_all_set(kvm)
    if st.version == "v6.13" and init_set:
        # reported dirty already: the clears write-protect, large leaves included
        return True
    if st.version == "v6.13":
        _eager_split(kvm, slot)
    n = 0
    if pml:
        # vmx_slot_enable_log_dirty (v5.11: not the 4K D bits when initially set)
        if st.version == "v4.16" or not init_set:
            n += _locked_change(kvm, slot, EPT_D, None, lambda level: level == 1)
        n += _locked_change(kvm, slot, EPT_W, None, lambda level: level > 1)
        event = "vmx_slot_enable_log_dirty"
    else:
        # kvm_mmu_slot_remove_write_access(kvm, slot, level): v5.11 from 2M up
        # when initially set (4K pages are reported dirty anyway)
        least = 2 if st.version == "v5.13" and init_set else 1
        n += _locked_change(kvm, slot, EPT_W, None, lambda level: level >= least)
        event = "kvm_mmu_slot_remove_write_access"
    if kvm.tracer.enabled:
        kvm.tracer.emit(event, slot=slot.id, changed=n)
    return True


def protect(kvm: Kvm, slot: Memslot, gfn_offset: int, mask: int) -> bool:
    """``kvm_arch_mmu_enable_log_dirty_pt_masked`` with ``mmu_lock`` held
    (``dirty_log_protect``): the 4K SPTEs of the masked pages lose W (with
    PML: D); v6.13 with initially-set first write-protects the large SPTEs
    holding the first and (in another 2M region) the last page."""
    st: EptState = kvm.arch
    rels = [gfn_offset + i for i in range(64) if mask >> i & 1]
    gfns = {slot.base_gfn + r for r in rels}
    n = 0
    if st.version == "v6.13" and _init_all_set(kvm):
        start = slot.base_gfn + rels[0]
        end = slot.base_gfn + rels[-1]
        # kvm_mmu_slot_gfn_write_protect(start, PG_LEVEL_2M), and for end
        # when ALIGN(start, 2M) != ALIGN(end, 2M)
        # eager_page_split: kvm_mmu_try_split_huge_pages(start, end + 1, 4K)
        _split_huge(kvm, start << 12, (end + 1) << 12)
        huge = {start}
        if -(-(start << 12) // (1 << 21)) != -(-(end << 12) // (1 << 21)):
            huge.add(end)
        n += _change_bit(kvm, slot, EPT_W, huge, lambda level: level > 1, any_level=True)
    if kvm.dirty.mode == "pml":
        n += _change_bit(kvm, slot, EPT_D, gfns, lambda level: level == 1)
        event = "kvm_mmu_clear_dirty_pt_masked"
    else:
        n += _change_bit(kvm, slot, EPT_W, gfns, lambda level: level == 1)
        event = "kvm_mmu_write_protect_pt_masked"
    if kvm.tracer.enabled:
        kvm.tracer.emit(event, slot=slot.id, gfn_offset=gfn_offset, mask=hex(mask), changed=n)
    return True


def sync(kvm: Kvm, slot: Memslot) -> bool:
    """``kvm_arch_sync_dirty_log`` → ``kvm_flush_pml_buffers`` (``dirty_log_sync``):
    the vcpus are kicked and each exit flushes the vcpu's log.  Between its
    steps a vcpu of the model is outside guest mode, so the kick finds every
    buffer to flush now."""
    st: EptState = kvm.arch
    if st.pml:
        for vcpu in sorted(st.pml):
            vmx_flush_pml_buffer(kvm, vcpu)
    return True


def vmx_flush_pml_buffer(kvm: Kvm, vcpu: int) -> int:
    """``vmx_flush_pml_buffer``: every logged gpa is marked dirty
    (``kvm_vcpu_mark_page_dirty``), the index reset; returns how many."""
    st: EptState = kvm.arch
    if not st.pml:
        return 0
    logged = st.pml.pop(vcpu, [])
    for gpa in logged:
        mark_page_dirty(kvm, gpa >> 12)
    if logged and kvm.tracer.enabled:
        kvm.tracer.emit("vmx_flush_pml_buffer", vcpu=vcpu, entries=len(logged))
    return len(logged)


def _eager_split(kvm: Kvm, slot: Memslot) -> None:
    """v6.13 ``kvm_mmu_slot_try_split_huge_pages(kvm, slot, PG_LEVEL_4K)``
    (``eager_page_split``, on by default), before the write protection:
    every huge leaf of the slot is split in place down to 4K
    (``tdp_mmu_split_huge_page``), its frames still mapped."""
    task = kvm.mm.current
    kvm.mmu_lock.lock(task)
    try:
        _split_huge(kvm, slot.base_gfn << 12, (slot.base_gfn + slot.npages) << 12)
    finally:
        kvm.mmu_lock.unlock(task)


def _split_huge(kvm: Kvm, start: int, end: int) -> None:
    """``kvm_tdp_mmu_try_split_huge_pages`` to 4K over the gpas [start, end),
    ``mmu_lock`` held by the caller: every huge leaf meeting the range is
    split in place (:func:`~kvmsim_plugins.x86_ept.common.split_huge_spte`),
    1G leaves down through 2M."""
    st: EptState = kvm.arch
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


# ---------------------------------------------------------------- SPTE walks


def _locked_change(
    kvm: Kvm,
    slot: Memslot,
    bit: int,
    gfns: set[int] | None,
    levels: Callable[[int], bool],
    *,
    set_: bool = False,
) -> int:
    """:func:`_change_bit` under ``mmu_lock``."""
    task = kvm.mm.current
    kvm.mmu_lock.lock(task)
    try:
        return _change_bit(kvm, slot, bit, gfns, levels, set_=set_)
    finally:
        kvm.mmu_lock.unlock(task)


def _change_bit(
    kvm: Kvm,
    slot: Memslot,
    bit: int,
    gfns: set[int] | None,
    levels: Callable[[int], bool],
    *,
    set_: bool = False,
    any_level: bool = False,
) -> int:
    """Clear (``set_``: set) ``bit`` in the slot's present SPTEs whose level
    ``levels`` accepts; with ``gfns``, only in the 4K SPTEs of those gfns
    (``any_level``: in the SPTEs of any level that map one of them).
    ``mmu_lock`` is held by the caller.  Returns how many changed."""
    st: EptState = kvm.arch
    start = slot.base_gfn << 12
    end = (slot.base_gfn + slot.npages) << 12
    n = 0
    for table, idx, level, gpa in st.leaves_in(start, end):
        v = table[idx]
        assert isinstance(v, int)
        if not is_shadow_present_pte(v) or bool(v & bit) == set_ or not levels(level):
            continue
        if gfns is not None:
            if any_level:
                first = gpa >> 12
                if not any(first <= g < first + (1 << (9 * (level - 1))) for g in gfns):
                    continue
            elif level != 1 or (gpa >> 12) not in gfns:
                continue
        table[idx] = v | bit if set_ else v & ~bit
        st.hits.pop(v, None)
        kvm.stage2_changed(gpa)
        n += 1
    return n


def kvm_mmu_zap_collapsible_sptes(kvm: Kvm, slot: Memslot) -> None:
    """``kvm_mmu_zap_collapsible_sptes`` when logging stops: drop the 4K
    SPTEs of pfns that are part of a THP the host maps with a PMD, so they
    refault as 2M.  hugetlbfs-backed 4K SPTEs are not zapped in v4.16 (the
    test is ``PageTransCompoundMap``)."""
    st: EptState = kvm.arch
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
