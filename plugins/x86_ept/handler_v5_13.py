"""The v5.13 x86 TDP fault handler: ``kvm_tdp_page_fault`` →
``direct_page_fault`` of 5.13 (legacy MMU; the TDP MMU was off by default
until 5.15), in what the model can express: ``kvm_is_reserved_pfn``
excludes the zero page (7df003c85218, v5.6), so the release helpers drop
its gup reference; the level is chosen under ``mmu_lock`` after the retry
check by ``kvm_mmu_hugepage_adjust`` (the host page-table level at the hva
of a compound page, no ``mmap_sem`` and no vma page size), moving no
reference; the one ``kvm_release_pfn_clean(pfn)`` of the pfn
``hva_to_pfn`` returned sits at ``out_unlock``; a fault on a memslot being
deleted or moved (``KVM_MEMSLOT_INVALID``) is retried; the retry check is
skipped for a NOSLOT pfn and is ``mmu_notifier_retry_hva`` (an
invalidation in progress forces a retry only when the fault's hva lies in
its range; one that ended since ``mmu_seq`` always does).

The level is v5.13.0's as released: ``kvm_mmu_max_mapping_level``
returns the host level unclamped by the slot's ``disallow_lpage`` (the
clamp, ec607a564f70, came in v5.15 and 5.13.16), so a 1G hugetlb page
behind a slot that allows only 2M maps whole (:func:`kvm_mmu_hugepage_adjust`),
and ``set_spte`` no longer has v4.16's ``lpage_disallowed`` check (dropped
in v5.6 when the level moved under ``mmu_lock``) to stop it.  With
``kvm.nx_huge_pages`` (the ``nx_huge_pages`` step) huge leaves are
non-executable, a fetch is mapped 4K, and ``__direct_map``'s
``disallowed_hugepage_adjust`` sends any fault one level down where a
table sits at its goal level.  ``__direct_map`` ends with
``direct_pte_prefetch``, skipped while an invalidation is in progress,
and returns before it when ``set_spte`` found the SPTE it would make
(RET_PF_SPURIOUS).

Not modelled: ``page_fault_handle_page_track`` (no write-tracked gfn),
``make_mmu_pages_available`` (always room), the TDP MMU (off by default:
``tdp_mmu_enabled = false``), ZONE_DEVICE pages in ``kvm_is_reserved_pfn``
and ``host_pfn_mapping_level``, the NX recovery thread.

Read from: Linux 5.12.9 (GitHub zhangyinjun/linux-5.12.9 @ d2af43753,
Makefile 5.12.9) and 5.14.2 (Kingdo777/linux-5.14.2-faascale-host @
21101b620, its unmodified "Source Code" import) arch/x86/kvm/mmu/mmu.c,
tdp_mmu.c, include/linux/kvm_host.h and virt/kvm/kvm_main.c: their
``direct_page_fault``, ``try_async_pf``, ``fast_page_fault``,
``__direct_map``, ``disallowed_hugepage_adjust``, ``mmu_set_spte``,
``set_spte``, ``kvm_mmu_hugepage_adjust``, ``kvm_mmu_max_mapping_level``
(the host level unclamped in both), ``host_pfn_mapping_level``,
``mmu_notifier_retry_hva`` and ``__kvm_handle_hva_range`` read alike, so
5.13 (between them) reads so too; no 5.13 release tree was reachable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmsim_plugins.x86_ept.common import (
    LPAGE_LEVEL,
    PFERR_FETCH_MASK,
    PFERR_WRITE_MASK,
    REQ_EXEC,
    REQ_MAP_WRITABLE,
    REQ_PREFAULT,
    REQ_WRITE_FAULT,
    RET_PF_RETRY,
    _async_not_present,
    _request_flags,
    direct_map,
    fast_page_fault,
    handle_abnormal_pfn,
    lpage_disallowed,
    notifier_retry,
    try_async_pf,
)
from kvmsim_plugins.x86_ept.ept import (
    PT_DIRECTORY_LEVEL,
    PT_PAGE_TABLE_LEVEL,
    PT_PDPE_LEVEL,
    SPTE_PFN_SHIFT,
    EptState,
    is_reserved_pfn,
    level_shift,
    pages_per_hpage,
)

from kvmsim.cmodel import EAGAIN
from kvmsim.host.pte import pte_present
from kvmsim.kvm.memslot import KVM_MEMSLOT_INVALID
from kvmsim.kvm.pfn import (
    gfn_to_hva_memslot,
    is_error_noslot_pfn,
    is_noslot_pfn,
    pfn_name,
)

if TYPE_CHECKING:
    from kvmsim.hooktypes import HvaToPfnResult
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot


def direct_page_fault(
    kvm: Kvm,
    vcpu: int,
    gpa: int,
    error_code: int,
    prefault: bool,
    release: Callable[[Kvm, HvaToPfnResult, int], None] | None = None,
) -> tuple[int, str | None, str]:
    """``kvm_tdp_page_fault`` → ``direct_page_fault`` (5.13, legacy MMU):
    the largest level the guest MTRRs allow (uniform here: 1G), the lockless
    ``fast_page_fault`` walking to the leaf, ``mmu_notifier_seq``,
    ``try_async_pf``, ``handle_abnormal_pfn``, then under ``mmu_lock`` the
    retry check and ``__direct_map`` (``create_pte``), and at ``out_unlock``
    one ``kvm_release_pfn_clean`` of the pfn ``hva_to_pfn`` returned, with
    v5.6's ``kvm_is_reserved_pfn`` (the zero page is released).  ``release``:
    a later version's release after the unlock instead (v6.13's
    ``kvm_mmu_finish_page_fault``, called with the map's return value)."""
    st: EptState = kvm.arch
    tr = kvm.tracer
    gfn = gpa >> 12
    write = bool(error_code & PFERR_WRITE_MASK)
    # kvm_tdp_page_fault: kvm_mtrr_check_gfn_range_consistency holds at every
    # level (uniform guest MTRRs), so max_level = KVM_MAX_HUGEPAGE_LEVEL.
    # page_fault_handle_page_track: no gfn is write-tracked.
    max_level = PT_PDPE_LEVEL
    if tr.enabled:
        tr.emit(
            "kvm_tdp_page_fault",
            gpa=hex(gpa),
            error_code=hex(error_code),
            max_level=max_level,
            prefault=prefault,
        )
    if fast_page_fault(kvm, vcpu, gpa, PT_PAGE_TABLE_LEVEL, error_code):
        return RET_PF_RETRY, None, "fast_page_fault"
    mmu_seq = kvm.mmu_notifier_seq
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is not None and slot.flags & KVM_MEMSLOT_INVALID:
        # try_async_pf: retry until the memslot update has zapped the old
        # SPTEs, rather than install an MMIO SPTE for the gfn
        if tr.enabled:
            tr.emit("try_async_pf", gfn=hex(gfn), retry="KVM_MEMSLOT_INVALID")
        return RET_PF_RETRY, None, "memslot being deleted or moved"
    handled, res = try_async_pf(kvm, vcpu, prefault, gfn, gpa, write)
    kvm.fire_point("after_hva_to_pfn")
    if handled:
        return _async_not_present(st, vcpu)
    assert res is not None
    pfn = res.pfn
    # (EPT caches MMIO SPTEs: shadow_mmio_value != 0)
    bad = handle_abnormal_pfn(kvm, vcpu, gfn, pfn)
    if bad is not None:
        return bad
    flags = _request_flags(write, res.writable, prefault, bool(error_code & PFERR_FETCH_MASK))
    kvm.fire_point("before_create_pte")
    r = kvm.hooks.create_pte(
        kvm=kvm,
        gpa=gpa & ~0xFFF,
        pte=(pfn << SPTE_PFN_SHIFT) | flags,
        level=max_level - 1,
        mmu_seq=mmu_seq,
    )
    if release is not None:
        release(kvm, res, r)
    else:
        # out_unlock: write_unlock(mmu_lock), then kvm_release_pfn_clean(pfn)
        # whether the fault was retried or mapped
        kvm_release_pfn_clean_v5_6(kvm, pfn)
    if r == -EAGAIN:
        return RET_PF_RETRY, None, "mmu_notifier_retry"
    return r, None, ""


def kvm_release_pfn_clean_v5_6(kvm: Kvm, pfn: int) -> None:
    """``kvm_release_pfn_clean`` with v5.6's ``kvm_is_reserved_pfn``: put_page
    unless an error/NOSLOT pfn or reserved; the zero page is not reserved."""
    if not is_error_noslot_pfn(pfn) and not is_reserved_pfn(kvm, pfn):
        kvm.phys.put_page(pfn)


def map_locked(kvm: Kvm, gfn: int, pfn: int, flags: int, max_level: int, mmu_seq: int) -> int:
    """The part of 5.13 ``direct_page_fault`` under ``mmu_lock``: the retry
    check (skipped for a NOSLOT pfn), then ``__direct_map``, which starts
    with ``kvm_mmu_hugepage_adjust``."""
    if not is_noslot_pfn(pfn) and notifier_retry(
        kvm, gfn, mmu_seq, retry_hva(kvm, gfn, mmu_seq), "mmu_notifier_retry_hva"
    ):
        return -EAGAIN
    return adjust_and_map(kvm, gfn, pfn, flags, max_level, mmu_seq)


def adjust_and_map(
    kvm: Kvm, gfn: int, pfn: int, flags: int, max_level: int, mmu_seq: int, *, v6: bool = False
) -> int:
    """After the retry check: ``__direct_map``, which starts with
    ``kvm_mmu_hugepage_adjust`` (``v6``: the v6.13 rule)."""
    # make_mmu_pages_available: there is always room
    # huge_page_disallowed: an instruction fetch under the iTLB multihit
    # workaround is mapped with 4K pages
    nx = bool(flags & REQ_EXEC) and kvm.arch.nx_huge_pages
    level, pfn = kvm_mmu_hugepage_adjust(kvm, gfn, pfn, max_level, v6=v6, nx_disallowed=nx)
    base_gfn = gfn & ~(pages_per_hpage(level) - 1)
    return direct_map(
        kvm,
        bool(flags & REQ_WRITE_FAULT),
        bool(flags & REQ_MAP_WRITABLE),
        level,
        base_gfn,
        pfn,
        bool(flags & REQ_PREFAULT),
        mmu_seq,
        fault_gfn=gfn,
        huge_page_disallowed=nx,
    )


def retry_hva(kvm: Kvm, gfn: int, mmu_seq: int) -> bool:
    """``mmu_notifier_retry_hva(kvm, mmu_seq, hva)`` with the hva
    ``__gfn_to_pfn_memslot`` handed back for the gfn (a NOSLOT pfn never
    gets here)."""
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        return kvm.mmu_notifier_retry(mmu_seq)
    return kvm.mmu_notifier_retry_hva(mmu_seq, gfn_to_hva_memslot(slot, gfn, 12))


def host_pfn_mapping_level(
    kvm: Kvm, gfn: int, pfn: int, slot: Memslot, *, compound: bool = True
) -> int:
    """``host_pfn_mapping_level`` (5.13): 4K unless the pfn is part of a
    compound page (hugetlbfs or THP; ZONE_DEVICE is not modelled); else the
    level of the host page-table leaf at the gfn's hva
    (``lookup_address_in_mm``), found with ``__gfn_to_hva_memslot``, which
    skips the read-only test of ``gfn_to_hva``.  ``compound`` false: the
    v6.13 walk (a8ac499bb6ab, v6.0, dropped the struct-page test: any pfn,
    refcounted or not, takes the host leaf's level)."""
    if compound and not kvm.phys.PageCompound(pfn):
        return PT_PAGE_TABLE_LEVEL
    hva = slot.userspace_addr + ((gfn - slot.base_gfn) << 12)
    e, shift = kvm.mm.pgtable.find_linux_pte(hva)
    if e is None:
        return PT_PAGE_TABLE_LEVEL
    if not compound and not pte_present(e):
        # v6.13 stops at a PUD or PMD that is not present (a migration or
        # hwpoison entry): 4K; 5.13's lookup_address_in_mm returns such an
        # entry with its level
        return PT_PAGE_TABLE_LEVEL
    if shift >= level_shift(PT_PDPE_LEVEL):
        return PT_PDPE_LEVEL
    if shift >= level_shift(PT_DIRECTORY_LEVEL):
        return PT_DIRECTORY_LEVEL
    return PT_PAGE_TABLE_LEVEL


def kvm_mmu_max_mapping_level(
    kvm: Kvm, slot: Memslot, gfn: int, pfn: int, max_level: int, *, v6: bool
) -> int:
    """``kvm_mmu_max_mapping_level``: walk down from ``max_level`` (capped by
    the CPU's largest EPT page) to the first level the slot's
    ``disallow_lpage`` allows; 4K if none.  Otherwise v5.13.0 returns the
    host mapping level *unclamped* (``clamp`` false), so a 1G host page
    outranks a slot that allows only 2M there; ec607a564f70 (v5.15, in
    5.13.16 stable) returns ``min(host level, that level)`` (v6.13, ``v6``
    true, whose host walk also needs no compound page)."""
    lvl = min(max_level, LPAGE_LEVEL)
    while lvl > PT_PAGE_TABLE_LEVEL and lpage_disallowed(slot, gfn, lvl):
        lvl -= 1
    if lvl == PT_PAGE_TABLE_LEVEL:
        return PT_PAGE_TABLE_LEVEL
    host_level = host_pfn_mapping_level(kvm, gfn, pfn, slot, compound=not v6)
    return min(host_level, lvl) if v6 else host_level


def kvm_mmu_hugepage_adjust(
    kvm: Kvm, gfn: int, pfn: int, max_level: int, *, v6: bool = False, nx_disallowed: bool = False
) -> tuple[int, int]:
    """``kvm_mmu_hugepage_adjust`` (5.13), under ``mmu_lock`` after the retry
    check: 4K for an error/NOSLOT or reserved pfn (v5.6 rule), for no slot
    and for a slot with dirty logging (``gfn_to_memslot_dirty_bitmap``);
    else ``kvm_mmu_max_mapping_level`` capped by the fault's ``max_level``
    (1G under uniform guest MTRRs), not by the slot: as released (no
    ``clamp``), a 1G hugetlb page behind a slot that allows only 2M at the
    gfn (a slot covering part of the page, or congruent to it only modulo
    2M) is mapped with one 1G leaf — past the slot's end, or on the frames
    of the gfn's 1G-aligned neighbourhood instead of its own.  The pfn is
    aligned down to the level (``VM_BUG_ON`` compiled out).  No reference
    moves (unlike v4.16's ``transparent_hugepage_adjust``).  ``v6``: the
    v6.13 rule: no reserved-pfn test (gone with the refcounted-page
    requirement), the clamped max mapping level.  Returns (level, pfn)."""
    st: EptState = kvm.arch
    level = PT_PAGE_TABLE_LEVEL
    if max_level > PT_PAGE_TABLE_LEVEL and not (
        is_error_noslot_pfn(pfn) or (not v6 and is_reserved_pfn(kvm, pfn))
    ):
        slot = kvm.memslots.gfn_to_memslot(gfn)
        if (
            slot is not None
            and not slot.flags & KVM_MEMSLOT_INVALID
            and slot.id not in st.dirty_bitmaps
        ):
            level = kvm_mmu_max_mapping_level(kvm, slot, gfn, pfn, max_level, v6=v6)
            level = min(level, max_level)
            if nx_disallowed:
                # the requested level was computed (for the NX accounting),
                # then refused: 4K with the gfn's own pfn, not aligned down
                level = PT_PAGE_TABLE_LEVEL
    if level > PT_PAGE_TABLE_LEVEL:
        # VM_BUG_ON((gfn & mask) != (pfn & mask)): compiled out (no DEBUG_VM)
        pfn &= ~(pages_per_hpage(level) - 1)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_mmu_hugepage_adjust", gfn=hex(gfn), level=level, pfn=pfn_name(pfn))
    return level, pfn
