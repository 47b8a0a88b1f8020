"""What the x86 TDP fault handler versions share (arch/x86/kvm/mmu.c of
v4.16 and its successors; the version bodies are :mod:`.handler_v4_16`,
:mod:`.handler_v5_13` and :mod:`.handler_v6_13`): the error-code and
request bits, ``handle_abnormal_pfn`` and ``kvm_handle_bad_page``, the
lockless ``fast_page_fault``, ``try_async_pf``, the slot's
``disallow_lpage`` rule, and the SPTE installation under ``mmu_lock``
(``__direct_map`` → ``mmu_set_spte`` → ``set_spte``).

Read from: see each version module (the shared code reads the same in
every modelled release, except where a function names the version it
branches on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from kvmsim_plugins.x86_ept import apf
from kvmsim_plugins.x86_ept.ept import (
    EPT_A,
    EPT_D,
    EPT_IPAT,
    EPT_LARGE,
    EPT_MT_SHIFT,
    EPT_R,
    EPT_RWX,
    EPT_W,
    EPT_X,
    LEVEL_SHIFT,
    MMIO_SPTE_VALUE,
    MTRR_TYPE_UNCACHABLE,
    MTRR_TYPE_WRBACK,
    PT64_ROOT_LEVEL,
    PT_MAX_HUGEPAGE_LEVEL,
    PT_PAGE_TABLE_LEVEL,
    SPTE_HOST_WRITEABLE,
    SPTE_MMU_WRITEABLE,
    SPTE_PFN_SHIFT,
    EptState,
    Table,
    drop_spte,
    is_large_pte,
    is_last_spte,
    is_mmio_spte,
    is_shadow_present_pte,
    kvm_set_pfn_accessed,
    kvm_set_pfn_dirty,
    level_shift,
    pages_per_hpage,
    spte_can_locklessly_be_made_writable,
    spte_to_pfn,
)

from kvmsim import footprint
from kvmsim.cmodel import EFAULT
from kvmsim.hooktypes import ASYNC
from kvmsim.host import gup
from kvmsim.kvm.dirty import mark_page_dirty as core_mark_page_dirty
from kvmsim.kvm.memslot import KVM_MEMSLOT_INVALID
from kvmsim.kvm.pfn import (
    KVM_HVA_ERR_BAD,
    KVM_PFN_ERR_HWPOISON,
    KVM_PFN_ERR_RO_FAULT,
    KVM_PFN_NOSLOT,
    gfn_to_hva_many,
    gfn_to_hva_memslot,
    is_error_pfn,
    is_noslot_pfn,
    kvm_is_error_hva,
    kvm_release_pfn_clean,
    pfn_name,
)

if TYPE_CHECKING:
    from kvmsim.hooktypes import HvaToPfnResult
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot


RET_PF_RETRY: Final = 0
RET_PF_EMULATE: Final = 1
RET_PF_INVALID: Final = 2

PFERR_PRESENT_MASK: Final = 1 << 0
PFERR_WRITE_MASK: Final = 1 << 1
PFERR_USER_MASK: Final = 1 << 2
PFERR_RSVD_MASK: Final = 1 << 3
PFERR_FETCH_MASK: Final = 1 << 4
PFERR_GUEST_FINAL_MASK: Final = 1 << 32
PFERR_GUEST_PAGE_MASK: Final = 1 << 33

# create_pte request bits (below PTE pfn shift 12)
REQ_WRITE_FAULT: Final = 1 << 0  # the fault is a write (``write``)
REQ_MAP_WRITABLE: Final = 1 << 1  # ``map_writable``: set_spte's host_writable
REQ_PREFAULT: Final = 1 << 2  # ``prefault``: mmu_set_spte's speculative
REQ_FORCE_PT_LEVEL: Final = 1 << 3  # ``force_pt_level``: no THP adjustment
REQ_EXEC: Final = 1 << 4  # ``fault->exec``: an instruction fetch

# vmx_get_lpage_level: EPT with 1G pages (cpu_has_vmx_ept_1g_page)
LPAGE_LEVEL: Final = PT_MAX_HUGEPAGE_LEVEL

# The host memory type of RAM frames under PAT: write-back (the model has
# no PAT memtype tracking for RAM; MMIO frames have no struct page).
PAT_ENABLED: Final = True


# ---------------------------------------------------------------------- entry points


def _async_not_present(st: EptState, vcpu: int) -> tuple[int, str | None, str]:
    """``try_async_pf`` queued the work: the guest is told "page not present"
    (unless the vcpu was told to halt until the page is in) and retries."""
    a: apf.ApfVcpu = st.vcpu_apf(vcpu)
    event = "not_present" if not a.halt_requested else None
    return RET_PF_RETRY, event, "async PF: page not present"


def handle_abnormal_pfn(
    kvm: Kvm, vcpu: int, gfn: int, pfn: int
) -> tuple[int, str | None, str] | None:
    """``handle_abnormal_pfn``: an error pfn ends the fault through
    ``kvm_handle_bad_page``; a NOSLOT pfn caches the MMIO info and goes on
    (None: carry on to the map)."""
    if is_error_pfn(pfn):
        return kvm_handle_bad_page(kvm, vcpu, gfn, pfn)
    if is_noslot_pfn(pfn) and kvm.tracer.enabled:
        kvm.tracer.emit("vcpu_cache_mmio_info", gfn=hex(gfn))
    return None


def _request_flags(write: bool, map_writable: bool, prefault: bool, exec_: bool = False) -> int:
    """What ``create_pte`` needs to know of the fault besides the pfn."""
    flags = REQ_EXEC if exec_ else 0
    if write:
        flags |= REQ_WRITE_FAULT
    if map_writable:
        flags |= REQ_MAP_WRITABLE
    if prefault:
        flags |= REQ_PREFAULT
    return flags


def notifier_retry(kvm: Kvm, gfn: int, mmu_seq: int, retry: bool, check: str = "") -> bool:
    """The version's notifier retry check under ``mmu_lock`` (``retry``, its
    result), traced; True means the fault must be retried.  ``check`` names
    a range-based check (v5.13's ``mmu_notifier_retry_hva``, v6.13's
    ``mmu_invalidate_retry_gfn``); empty for ``mmu_notifier_retry``."""
    if not retry:
        return False
    tr = kvm.tracer
    if tr.enabled:
        extra = {"check": check} if check else {}
        tr.emit(
            "mmu_notifier_retry",
            gfn=hex(gfn),
            mmu_seq=mmu_seq,
            mmu_notifier_seq=kvm.mmu_notifier_seq,
            mmu_notifier_count=kvm.mmu_notifier_count,
            **extra,
        )
    return True


# ---------------------------------------------------------------------- level limits


def lpage_disallowed(slot: Memslot | None, gfn: int, level: int) -> bool:
    """``__mmu_gfn_lpage_is_disallowed``: the ``disallow_lpage`` counter that
    ``kvm_arch_create_memslot`` set: the slot's first and last huge frames
    when the slot does not start or end on a huge boundary, every one when
    the gfn and the hva are not congruent modulo the huge size.  No slot:
    disallowed.  (Write tracking adds nothing: no gfn is tracked.)"""
    if slot is None:
        return True
    n = pages_per_hpage(level)
    base = slot.base_gfn
    if (base ^ (slot.userspace_addr >> 12)) & (n - 1):
        return True
    s = 9 * (level - 1)
    idx = (gfn >> s) - (base >> s)
    if idx == 0 and base & (n - 1):
        return True
    last = ((base + slot.npages - 1) >> s) - (base >> s)
    return bool(idx == last and (base + slot.npages) & (n - 1))


# ---------------------------------------------------------------------- fast path


def page_fault_can_be_fast(error_code: int) -> bool:
    """``page_fault_can_be_fast``: not an MMIO (RSVD) fault, not an NX
    violation on a present entry; EPT always has an access-tracking mask
    (RWX), so every other fault qualifies."""
    if error_code & PFERR_RSVD_MASK:
        return False
    both = PFERR_FETCH_MASK | PFERR_PRESENT_MASK
    return error_code & both != both


def is_access_allowed(error_code: int, spte: int) -> bool:
    """``is_access_allowed``."""
    if error_code & PFERR_FETCH_MASK:
        return bool(spte & EPT_X)
    if error_code & PFERR_WRITE_MASK:
        return bool(spte & EPT_W)
    return bool(spte & EPT_R)


def _dirty_tracked(kvm: Kvm, gpa: int) -> bool:
    """``kvm_slot_dirty_track_enabled(fault->slot)``: the gfn's slot logs
    dirty pages."""
    slot = kvm.memslots.gfn_to_memslot(gpa >> 12)
    return slot is not None and slot.id in kvm.arch.dirty_bitmaps


def fast_page_fault(kvm: Kvm, vcpu: int, gpa: int, level: int, error_code: int) -> bool:
    """``fast_page_fault`` (kernel-notes §L.5): without ``mmu_lock``, fix a present 4K SPTE
    that was write-protected for dirty logging (``pt_protect == false``):
    make it writable again and mark its gfn dirty.  A large SPTE is left to
    the slow path (only its first gfn could be logged); v6.13 leaves it
    only while its slot logs dirty pages.  With EPT A/D on,
    SPTEs are never access-tracked, so nothing else is fixed here."""
    if footprint.REC is not None:  # (checked here: a call per fault otherwise)
        footprint.stage2(gpa, 0, False)  # lockless (no mmu_lock): the leaf it walks to
    if not page_fault_can_be_fast(error_code):
        return False
    st: EptState = kvm.arch
    table: Table = st.root
    lvl = PT64_ROOT_LEVEL
    while True:  # for_each_shadow_entry_lockless
        idx = (gpa >> LEVEL_SHIFT[lvl]) & 511
        e = table.get(idx)
        if e.__class__ is not dict:
            break  # not present or a leaf: the walk ends
        # a table entry is present (RWX): go down unless below the level wanted
        if lvl < level:
            break
        table = e  # type: ignore[assignment]
        lvl -= 1
    if e.__class__ is dict:
        return False  # stopped on a table entry: not a last SPTE
    spte = e or 0  # type: ignore[assignment]
    if not spte:
        # an absent entry (a first touch): is_last_spte holds only at level 1,
        # where is_access_allowed fails and nothing can be made writable
        if lvl != PT_PAGE_TABLE_LEVEL:
            return False
        if kvm.tracer.enabled:
            kvm.tracer.emit("fast_page_fault", gpa=hex(gpa), spte=hex(0), level=lvl, handled=False)
        return False
    if not is_last_spte(spte, lvl):
        return False
    handled = False
    if is_access_allowed(error_code, spte):
        handled = True  # spurious: another vcpu (or a lazy TLB) fixed it
    else:
        new = spte
        if error_code & PFERR_WRITE_MASK and spte_can_locklessly_be_made_writable(spte):
            new |= EPT_W
            if lvl > PT_PAGE_TABLE_LEVEL and (st.version != "v6.13" or _dirty_tracked(kvm, gpa)):
                # do not fix a large SPTE (v6.13: while its slot logs dirty
                # pages): break to the slow path
                new = spte
        if new != spte and is_access_allowed(error_code, new):
            # fast_pf_fix_direct_spte: cmpxchg, then mark the gfn dirty
            footprint.stage2(gpa, 1 << LEVEL_SHIFT[lvl], True)
            table[idx] = new
            kvm.stage2_changed(gpa)
            kvm.arch.hits.pop(spte, None)
            if new & EPT_W and not spte & EPT_W:
                mark_page_dirty(kvm, (gpa >> LEVEL_SHIFT[lvl]) << (LEVEL_SHIFT[lvl] - 12))
            handled = True
    if kvm.tracer.enabled:
        kvm.tracer.emit("fast_page_fault", gpa=hex(gpa), spte=hex(spte), level=lvl, handled=handled)
    return handled


# ---------------------------------------------------------------------- pfn resolution


def try_async_pf(
    kvm: Kvm, vcpu: int, prefault: bool, gfn: int, gva: int, write: bool
) -> tuple[bool, HvaToPfnResult | None]:
    """``try_async_pf`` (H step 5): ``__gfn_to_pfn_memslot`` with a non-NULL
    ``async`` and ``writable``; on ``*async``, queue an async fault (or
    halt on a gfn already queued) unless this is a prefault; else resolve
    synchronously with ``async = NULL``.  Returns (handled, result)."""
    tr = kvm.tracer
    slot = kvm.memslots.gfn_to_memslot(gfn)
    res = _gfn_to_pfn(kvm, slot, gfn, vcpu, write, async_=True)
    if res.status != ASYNC:
        return False, res
    if not prefault:  # kvm_can_do_async_pf: lapic in kernel, interrupts allowed
        a: apf.ApfVcpu = kvm.arch.vcpu_apf(vcpu)
        if tr.enabled:
            tr.emit("kvm_try_async_get_page", gva=hex(gva), gfn=hex(gfn))
        if apf.kvm_find_async_pf_gfn(a, gfn):
            if tr.enabled:
                tr.emit("kvm_async_pf_doublefault", gva=hex(gva), gfn=hex(gfn))
            a.halt_requested = True
            return True, None
        hva = gfn_to_hva_memslot(slot, gfn, 12) if slot is not None else KVM_HVA_ERR_BAD
        if apf.kvm_arch_setup_async_pf(kvm, vcpu, gva, gfn, hva):
            return True, None
    return False, _gfn_to_pfn(kvm, slot, gfn, vcpu, write, async_=False)


def _gfn_to_pfn(
    kvm: Kvm, slot: Memslot | None, gfn: int, vcpu: int, write: bool, *, async_: bool
) -> HvaToPfnResult:
    """``__gfn_to_pfn_memslot(slot, gfn, false, async ? &async : NULL, write,
    &map_writable)`` as try_async_pf calls it (a NULL slot gives
    KVM_PFN_NOSLOT, kernel-notes §A.1)."""
    res = kvm.gfn_to_pfn_memslot(
        slot,  # type: ignore[arg-type]
        gfn,
        vcpu=vcpu,
        atomic=False,
        async_=async_,
        write_fault=write,
        writable=True,
    )
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "__gfn_to_pfn_memslot",
            gfn=hex(gfn),
            pfn=pfn_name(res.pfn),
            status=res.status,
            writable=res.writable,
            async_=async_,
        )
    return res


def kvm_handle_bad_page(kvm: Kvm, vcpu: int, gfn: int, pfn: int) -> tuple[int, str | None, str]:
    """``kvm_handle_bad_page``: RO_FAULT → emulate; HWPOISON → SIGBUS
    (BUS_MCEERR_AR, si_addr = the gfn's hva, si_addr_lsb = PAGE_SHIFT) and
    retry; any other error pfn → -EFAULT out of KVM_RUN."""
    tr = kvm.tracer
    if pfn == KVM_PFN_ERR_RO_FAULT:
        if tr.enabled:
            tr.emit("kvm_handle_bad_page", pfn=pfn_name(pfn), ret="RET_PF_EMULATE")
        return RET_PF_EMULATE, None, "KVM_PFN_ERR_RO_FAULT: emulated (MMIO exit)"
    if pfn == KVM_PFN_ERR_HWPOISON:
        slot = kvm.memslots.gfn_to_memslot(gfn)
        hva = gfn_to_hva_memslot(slot, gfn, 12) if slot is not None else 0
        footprint.opaque()  # the SIGBUS list is not recorded
        kvm.arch.hwpoison_signals.append((vcpu, hva))
        if tr.enabled:
            tr.emit(
                "kvm_send_hwpoison_signal",
                si_code="BUS_MCEERR_AR",
                si_addr=hex(hva),
                si_addr_lsb=12,
            )
        return RET_PF_RETRY, "sigbus", f"SIGBUS (BUS_MCEERR_AR) at hva {hva:#x}"
    if tr.enabled:
        tr.emit("kvm_handle_bad_page", pfn=pfn_name(pfn), ret="-EFAULT")
    return -EFAULT, None, f"{pfn_name(pfn)}: KVM_RUN returns -EFAULT"


# ---------------------------------------------------------------------- under mmu_lock


def kvm_is_mmio_pfn(kvm: Kvm, pfn: int) -> bool:
    """``kvm_is_mmio_pfn`` (mmu.c, v4.16): no struct page → MMIO; a valid pfn
    only if PG_reserved, not the zero page, and (with PAT) a UC/WC host
    memtype, which RAM never has in the model.  Not ``kvm_is_reserved_pfn``."""
    phys = kvm.phys
    if phys.pfn_valid(pfn):
        return (
            not phys.is_zero_pfn(pfn)
            and phys.PageReserved(pfn)
            and (not PAT_ENABLED or _pat_pfn_immune_to_uc_mtrr(kvm, pfn))
        )
    return True


def _pat_pfn_immune_to_uc_mtrr(kvm: Kvm, pfn: int) -> bool:
    """``pat_pfn_immune_to_uc_mtrr``: the host memtype is UC, UC- or WC.
    RAM frames are write-back in the model."""
    return not kvm.phys.pfn_valid(pfn)


def mark_page_dirty(kvm: Kvm, gfn: int) -> None:
    """``kvm_vcpu_mark_page_dirty`` → the core's ``mark_page_dirty_in_slot``
    (the slot's bitmap, or the running vcpu's dirty ring)."""
    core_mark_page_dirty(kvm, gfn)


def direct_map(
    kvm: Kvm,
    write: bool,
    map_writable: bool,
    level: int,
    gfn: int,
    pfn: int,
    prefault: bool,
    mmu_seq: int,
    *,
    fault_gfn: int | None = None,
    huge_page_disallowed: bool = False,
) -> int:
    """``__direct_map`` (v4.16, v5.13) / ``kvm_tdp_mmu_map`` (v6.13): walk
    from the root down to ``level`` (``gfn`` is the leaf's base gfn), then
    ``mmu_set_spte``, then (legacy MMU: v4.16, v5.13) ``direct_pte_prefetch``
    unless v5.13 found the SPTE already as it would make it (RET_PF_SPURIOUS).

    On the way down, a large SPTE in the way is dropped (``drop_large_spte``)
    and a table linked; v6.13's TDP MMU splits it instead
    (``tdp_mmu_split_huge_page``, :func:`split_huge_spte`).  ``fault_gfn``
    (v5.13, v6.13 callers) enables the NX huge-page workaround's
    ``disallowed_hugepage_adjust`` while ``kvm.nx_huge_pages`` is on: at the
    goal level, a present table (v6.13: one linked by a fault that was
    ``huge_page_disallowed``) sends the map one level down, the pfn patched
    with the fault's gfn bits.  A v6.13 table linked for a
    ``huge_page_disallowed`` fault is remembered as such
    (``sp->nx_huge_page_disallowed``)."""
    st: EptState = kvm.arch
    version = st.version
    v6 = version == "v6.13"
    nx = fault_gfn is not None and st.nx_huge_pages
    g = gfn if fault_gfn is None else fault_gfn
    gpa = g << 12
    table = st.root
    lvl = PT64_ROOT_LEVEL
    while True:
        shift = LEVEL_SHIFT[lvl]
        idx = (gpa >> shift) & 511
        e = table.get(idx)
        if (
            nx
            and lvl == level > PT_PAGE_TABLE_LEVEL
            and e.__class__ is dict
            and (not v6 or st.nx_children.get((lvl, gpa & ~((1 << shift) - 1))) is e)
        ):
            # disallowed_hugepage_adjust: a small SPTE's table is there
            pfn |= g & (pages_per_hpage(lvl) - pages_per_hpage(lvl - 1))
            level -= 1
            if kvm.tracer.enabled:
                kvm.tracer.emit("disallowed_hugepage_adjust", gfn=hex(g), level=level)
        if lvl == level:
            break
        if e.__class__ is dict:
            # a present table entry: go down (the walk of every fault after
            # the first in a region; nothing to link, drop or remember)
            table = e  # type: ignore[assignment]
            lvl -= 1
            continue
        base = gpa & ~((1 << shift) - 1)
        linked = False
        if isinstance(e, int):
            if v6 and is_shadow_present_pte(e) and is_large_pte(e):
                e = split_huge_spte(kvm, table, idx, base, lvl, e)
                linked = True
            else:
                # drop_large_spte (a large leaf, present or write-protected)
                # or a stale non-present value: the slot becomes a table
                if e and not is_mmio_spte(e):
                    drop_spte(kvm, table, idx, base, lvl)
                e = None
        if e is None:
            e = {}
            table[idx] = e
            linked = True
        if v6 and linked:
            # sp->nx_huge_page_disallowed = fault->huge_page_disallowed
            if huge_page_disallowed:
                st.nx_children[(lvl, base)] = e  # type: ignore[assignment]
            else:
                st.nx_children.pop((lvl, base), None)
        table = e  # type: ignore[assignment]
        lvl -= 1
    shift = LEVEL_SHIFT[level]
    gfn = g & ~((1 << (shift - 12)) - 1)  # the leaf's base gfn (KVM_PAGES_PER_HPAGE)
    idx = (gpa >> shift) & 511
    if version == "v5.13":
        old = table.get(idx)
        ret = mmu_set_spte(kvm, table, idx, write, level, gfn, pfn, prefault, map_writable, mmu_seq)
        if ret == RET_PF_RETRY and isinstance(old, int) and old:
            if is_shadow_present_pte(old) and table.get(idx) == old:
                # set_spte found the SPTE it would make: RET_PF_SPURIOUS, which
                # __direct_map returns before prefetching or counting
                return ret
    else:
        ret = mmu_set_spte(kvm, table, idx, write, level, gfn, pfn, prefault, map_writable, mmu_seq)
    if not v6 and level == PT_PAGE_TABLE_LEVEL and st.ad_enabled:
        # the v6.13 TDP MMU (kvm_tdp_mmu_map) prefetches nothing
        direct_pte_prefetch(kvm, table, idx, gfn, mmu_seq)
    st.pf_fixed += 1
    return ret


def split_huge_spte(kvm: Kvm, table: Table, idx: int, gpa: int, level: int, huge: int) -> Table:
    """``tdp_mmu_split_huge_page`` (v6.13): a table of 512 SPTEs for the
    parts of the huge SPTE at ``level`` (``make_small_spte``: the huge
    SPTE's bits with the part's pfn; at 4K without the large bit and, with
    ``kvm.nx_huge_pages``, executable again), linked in its place.  The
    frames stay mapped: no accessed/dirty hand-back, no reference; each
    part keeps the huge leaf's ``mmu_seq``."""
    st: EptState = kvm.arch
    child_level = level - 1
    step = pages_per_hpage(child_level)
    base = huge
    if child_level == PT_PAGE_TABLE_LEVEL:
        base &= ~EPT_LARGE
        if st.nx_huge_pages:
            base |= EPT_X  # make_spte_executable (ACC_ALL has exec)
    child: Table = {i: base + ((i * step) << SPTE_PFN_SHIFT) for i in range(512)}
    table[idx] = child
    st.hits.pop(huge, None)
    seq = st.seqs.pop(gpa, None)
    size = 1 << LEVEL_SHIFT[child_level]
    for i in range(512):
        if seq is not None:
            st.seqs[gpa + i * size] = seq
        kvm.stage2_changed(gpa + i * size)
    if level - 1 == PT_PAGE_TABLE_LEVEL:
        st.lpages -= 1
    else:
        st.lpages += 511
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvm_mmu_split_huge_page", gfn=hex(gpa >> 12), spte=hex(huge), level=level, ret=0
        )
    return child


PTE_PREFETCH_NUM: Final = 8


def direct_pte_prefetch(kvm: Kvm, table: Table, idx: int, gfn: int, mmu_seq: int) -> None:
    """``direct_pte_prefetch`` (v4.16; v5.13 adds: nothing while an
    invalidation is in progress): in the faulting 4K SPTE's aligned group of
    ``PTE_PREFETCH_NUM``, each run of non-present SPTEs that ends at a
    present one or at the faulting one is filled from
    ``gfn_to_page_many_atomic``; a run after the faulting SPTE that reaches
    the group's end is not.  The first run that cannot be filled ends it."""
    if kvm.arch.version == "v5.13" and kvm.mmu_notifier_count:
        return
    base = idx & ~(PTE_PREFETCH_NUM - 1)
    end = base + PTE_PREFETCH_NUM
    get = table.get
    # The usual first touch, told first without the run bookkeeping below:
    # every SPTE before the faulting one present (no run ends at it) and no
    # slot after it filled (a run reaching the group's end is not filled).
    # A 4K table holds SPTEs only, so an absent slot reads as 0; ``while``
    # costs less than ``range`` over a handful of slots.
    i = base
    while i < idx:
        e: int = get(i, 0)  # type: ignore[assignment]
        if not e & 0xFFFFFFFF or e & EPT_RWX == MMIO_SPTE_VALUE:  # not is_shadow_present_pte
            break
        i += 1
    else:
        i = idx + 1
        while i < end:
            if i in table:
                break
            i += 1
        else:
            return  # nothing to prefetch
    start: int | None = None
    for i in range(base, end):
        if i != idx:
            e = get(i)  # type: ignore[assignment]
            # not is_shadow_present_pte, inline
            if not (isinstance(e, int) and e & 0xFFFFFFFF and e & EPT_RWX != MMIO_SPTE_VALUE):
                if start is None:
                    start = i
                continue
        # the faulting SPTE or a present one ends a run of non-present ones
        if start is None:
            continue
        if not direct_pte_prefetch_many(kvm, table, start, i, gfn - idx + start, mmu_seq):
            break
        start = None


def direct_pte_prefetch_many(
    kvm: Kvm, table: Table, start: int, end: int, gfn: int, mmu_seq: int
) -> bool:
    """``direct_pte_prefetch_many``: ``gfn_to_memslot_dirty_bitmap`` (no slot,
    a slot being changed or one with dirty logging: nothing), then
    ``gfn_to_page_many_atomic`` (all of ``[start, end)`` inside the slot,
    ``__get_user_pages_fast`` for write) and one speculative, host-writable
    ``mmu_set_spte`` per page pinned, whose reference it drops again
    (v4.16 inside ``mmu_set_spte``, v5.13 with ``put_page``).  False: stop."""
    st: EptState = kvm.arch
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None or slot.flags & KVM_MEMSLOT_INVALID or slot.id in st.dirty_bitmaps:
        return False
    nr = end - start
    addr = gfn_to_hva_many(slot, gfn, True, 12)
    if kvm_is_error_hva(addr) or slot.base_gfn + slot.npages - gfn < nr:
        return False
    pages: list[int] = []
    ret = gup.__get_user_pages_fast(kvm.mm, addr, nr, 1, pages)
    if kvm.tracer.enabled:
        kvm.tracer.emit("direct_pte_prefetch", gfn=hex(gfn), nr=nr, pinned=ret)
    if ret <= 0:
        return False
    for i in range(ret):
        mmu_set_spte(kvm, table, start + i, False, 1, gfn + i, pages[i], True, True, mmu_seq)
        if st.version != "v4.16":
            kvm.phys.put_page(pages[i])
    return True


def mmu_set_spte(
    kvm: Kvm,
    table: Table,
    idx: int,
    write_fault: bool,
    level: int,
    gfn: int,
    pfn: int,
    speculative: bool,
    host_writable: bool,
    mmu_seq: int,
) -> int:
    """``mmu_set_spte``: replace a table or an SPTE for another pfn, keep one
    for the same pfn, ``set_spte``, and end with ``kvm_release_pfn_clean(pfn)``
    (v4.16): the EPT holds no page reference."""
    st: EptState = kvm.arch
    tr = kvm.tracer
    gpa = gfn << 12
    old = table.get(idx)
    was_rmapped = False
    if old is None:
        pass  # a first touch: nothing to replace or keep
    elif isinstance(old, dict):
        # a 4K table where the large leaf goes: drop_parent_pte (the child
        # page becomes unreachable)
        table.pop(idx)
        for g in [g for g in st.seqs if gpa <= g < gpa + (1 << level_shift(level))]:
            del st.seqs[g]
    elif is_shadow_present_pte(old):
        if pfn != spte_to_pfn(old):
            drop_spte(kvm, table, idx, gpa, level)
        else:
            was_rmapped = True
    set_spte(kvm, table, idx, level, gfn, pfn, speculative, host_writable)
    new = table.get(idx, 0)
    assert isinstance(new, int)
    ret = RET_PF_RETRY
    # is_mmio_spte, then is_shadow_present_pte of a non-MMIO value, inline
    if new and new & EPT_RWX == MMIO_SPTE_VALUE:
        ret = RET_PF_EMULATE
    elif new & 0xFFFFFFFF:
        st.seqs[gpa] = mmu_seq
        if not was_rmapped and level > PT_PAGE_TABLE_LEVEL:
            st.lpages += 1
    if tr.enabled:
        tr.emit(
            "kvm_mmu_set_spte",
            gfn=hex(gfn),
            level=level,
            pfn=pfn_name(pfn),
            spte=hex(new),
            write=bool(new & EPT_W),
            mmio=bool(new) and is_mmio_spte(new),
            write_fault=write_fault,
            mmu_seq=mmu_seq,
        )
    if st.version == "v4.16":
        kvm_release_pfn_clean(kvm.phys, pfn)
    return ret


def set_spte(
    kvm: Kvm,
    table: Table,
    idx: int,
    level: int,
    gfn: int,
    pfn: int,
    speculative: bool,
    host_writable: bool,
) -> None:
    """``set_spte`` with ``pte_access = ACC_ALL`` (direct map): an MMIO SPTE
    for a NOSLOT pfn; else R|X, A unless speculative, PS above 4K, the
    memory type, HOST_WRITEABLE when the host allows writes, and W with
    MMU_WRITEABLE, D and a dirty-bitmap mark when writable."""
    d = kvm.stage2_dirty
    if d is not None:  # kvm.stage2_changed, inline: the checkers re-judge this leaf (prefetch too)
        d.append(gfn << 12)
    if pfn == KVM_PFN_NOSLOT:  # is_noslot_pfn
        # set_mmio_spte: gfn, access and the MMIO generation; not in any rmap
        table[idx] = (gfn << SPTE_PFN_SHIFT) | MMIO_SPTE_VALUE
        return
    st: EptState = kvm.arch
    spte = 0
    if not speculative and st.ad_enabled:
        spte |= EPT_A
    spte |= EPT_R  # ACC_USER_MASK (= R on EPT)
    if not (st.nx_huge_pages and level > PT_PAGE_TABLE_LEVEL):
        # ACC_EXEC_MASK; with the iTLB-multihit workaround (v5.4+:
        # nx_huge_pages) make_spte maps a huge page non-executable
        spte |= EPT_X
    if level > PT_PAGE_TABLE_LEVEL:
        spte |= EPT_LARGE
    # vmx_get_mt_mask (inline: one call less per SPTE): MMIO → UC; no
    # non-coherent DMA (no assigned device in the model) → WB with IPAT
    if kvm_is_mmio_pfn(kvm, pfn):
        spte |= MTRR_TYPE_UNCACHABLE << EPT_MT_SHIFT
    else:
        spte |= (MTRR_TYPE_WRBACK << EPT_MT_SHIFT) | EPT_IPAT
    writable = True
    if host_writable:
        spte |= SPTE_HOST_WRITEABLE
    else:
        writable = False
    spte |= pfn << SPTE_PFN_SHIFT
    if writable:
        if (
            st.version == "v4.16"
            and level > PT_PAGE_TABLE_LEVEL
            and lpage_disallowed(kvm.memslots.gfn_to_memslot(gfn), gfn, level)
        ):
            # goto done: the SPTE is left as it was (v4.16 only: v5.6 dropped
            # the check once the level was chosen under mmu_lock)
            return
        spte |= EPT_W | SPTE_MMU_WRITEABLE
        # mmu_need_write_protect: no write-tracked gfn, no shadow pages
        if st.dirty_bitmaps:  # no slot logs: mark_page_dirty_in_slot marks nothing
            mark_page_dirty(kvm, gfn)
        if st.ad_enabled:
            spte |= EPT_D
    mmu_spte_update(kvm, table, idx, spte)


def mmu_spte_update(kvm: Kvm, table: Table, idx: int, new: int) -> None:
    """``mmu_spte_update``: install; if the old SPTE of the same pfn had the
    accessed or dirty bit and the new one has not, pass it to the page."""
    old = table.get(idx, 0)
    assert isinstance(old, int)
    table[idx] = new
    st: EptState = kvm.arch
    st.hits.pop(old, None)
    st.fresh = new  # its first hit is the access this fault resumes: not cached
    if not old or not is_shadow_present_pte(old):  # a first touch: no old bits to pass on
        return
    pfn = spte_to_pfn(old)
    if old & EPT_A and not new & EPT_A:
        kvm_set_pfn_accessed(kvm, pfn)
    if old & EPT_D and not new & EPT_D:
        kvm_set_pfn_dirty(kvm, pfn)
