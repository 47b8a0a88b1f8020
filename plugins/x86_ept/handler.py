"""The x86 TDP fault handler of v4.16 (arch/x86/kvm/mmu.c, vmx.c;
kernel-semantics H, L.1, L.5): ``handle_ept_violation`` /
``handle_ept_misconfig`` → ``kvm_mmu_page_fault`` → ``tdp_page_fault``.

``tdp_page_fault``: level from the host mapping (``mapping_level``), the
lockless ``fast_page_fault``, ``mmu_notifier_seq``, ``try_async_pf`` (the
strategy's ``hva_to_pfn`` with a non-NULL ``async``), ``handle_abnormal_pfn``,
then under ``mmu_lock`` the part the ``create_pte`` hook models:
``mmu_notifier_retry``, ``transparent_hugepage_adjust`` and ``__direct_map``
→ ``mmu_set_spte`` → ``set_spte``, ending with ``kvm_release_pfn_clean``.

Handler versions (``StrategyInfo.handlers``):

- ``v4.16``: as above; references are released by pfn
  (``kvm_release_pfn_clean``), so the zero page's gup reference leaks (L.1).
- ``v5.13``: ``kvm_tdp_page_fault`` → ``direct_page_fault`` of 5.13 (legacy
  MMU; the TDP MMU was off by default until 5.15), in what the model can
  express: ``kvm_is_reserved_pfn`` excludes the zero page (7df003c85218,
  v5.6), so the release helpers drop its gup reference; the level is chosen
  under ``mmu_lock`` after the retry check by ``kvm_mmu_hugepage_adjust``
  (the host page-table level at the hva of a compound page, no
  ``mmap_sem`` and no vma page size), moving no reference; the one
  ``kvm_release_pfn_clean(pfn)`` of the pfn ``hva_to_pfn`` returned sits
  at ``out_unlock``; a fault on a memslot being deleted or moved
  (``KVM_MEMSLOT_INVALID``) is retried; the retry check is skipped for a
  NOSLOT pfn.  Not modelled: ``mmu_notifier_retry_hva``'s range test (the
  model never checks while an invalidation is in progress) and the NX
  huge-page workaround (``nx_huge_pages`` is off on CPUs without the iTLB
  multihit erratum).
- ``v6.13``: the same flow with the 2024 release rule (kernel-semantics E.9):
  only ``result.page`` (``*refcounted_page``) is released, by page
  (``kvm_release_faultin_page``), and ``transparent_hugepage_adjust`` moves
  no reference.  The v6.13 level selection (``kvm_mmu_hugepage_adjust``
  walking the host page tables) is NOT modelled: levels are chosen as in v4.16.

The value handed to ``create_pte`` as ``pte`` is a fault request, not an
SPTE: ``pfn << 12`` with the ``REQ_*`` bits below; ``create_pte`` builds
the SPTE (``set_spte``) under ``mmu_lock`` after the retry check and the
THP adjustment, as ``tdp_page_fault`` orders them.
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
    EPT_VIOLATION_ACC_INSTR,
    EPT_VIOLATION_ACC_READ,
    EPT_VIOLATION_ACC_WRITE,
    EPT_VIOLATION_EXECUTABLE,
    EPT_VIOLATION_GVA_TRANSLATED,
    EPT_VIOLATION_READABLE,
    EPT_VIOLATION_WRITABLE,
    EPT_W,
    EPT_X,
    LEVEL_SHIFT,
    MMIO_SPTE_VALUE,
    MTRR_TYPE_UNCACHABLE,
    MTRR_TYPE_WRBACK,
    PT64_ROOT_LEVEL,
    PT_DIRECTORY_LEVEL,
    PT_MAX_HUGEPAGE_LEVEL,
    PT_PAGE_TABLE_LEVEL,
    PT_PDPE_LEVEL,
    SPTE_HOST_WRITEABLE,
    SPTE_MMU_WRITEABLE,
    SPTE_PFN_SHIFT,
    EptState,
    Table,
    drop_spte,
    is_last_spte,
    is_mmio_spte,
    is_reserved_pfn,
    is_shadow_present_pte,
    kvm_set_pfn_accessed,
    kvm_set_pfn_dirty,
    level_shift,
    pages_per_hpage,
    spte_can_locklessly_be_made_writable,
    spte_to_pfn,
)

from kvmsim.cmodel import EAGAIN, EFAULT, UNINIT, KernelOops, errno_name
from kvmsim.hooktypes import ASYNC, ASYNC_PF, MMIO, RESUME, SIGBUS, FaultResult
from kvmsim.hooktypes import EFAULT as A_EFAULT
from kvmsim.host.constants import PTE_PFN_SHIFT, PTE_PRESENT, THP_SHIFT, VM_HUGETLB
from kvmsim.kvm.memslot import KVM_MEMSLOT_INVALID
from kvmsim.kvm.pfn import (
    KVM_HVA_ERR_BAD,
    KVM_PFN_ERR_HWPOISON,
    KVM_PFN_ERR_RO_FAULT,
    gfn_to_hva_memslot,
    is_error_noslot_pfn,
    is_error_pfn,
    is_noslot_pfn,
    kvm_get_pfn,
    kvm_is_error_hva,
    kvm_is_reserved_pfn,
    kvm_release_pfn_clean,
    pfn_name,
)

if TYPE_CHECKING:
    from kvmsim.hooktypes import HvaToPfnResult, Stage2Fault
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

# vmx_get_lpage_level: EPT with 1G pages (cpu_has_vmx_ept_1g_page)
LPAGE_LEVEL: Final = PT_MAX_HUGEPAGE_LEVEL

# The host memory type of RAM frames under PAT: write-back (the model has
# no PAT memtype tracking for RAM; MMIO frames have no struct page).
PAT_ENABLED: Final = True


# ---------------------------------------------------------------------- entry points


def page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    """The VM exit: ``handle_ept_violation`` or ``handle_ept_misconfig``,
    then ``kvm_mmu_page_fault``, and what ``vcpu_run`` does with its result
    (a pending SIGBUS, a pending APF halt, an emulation that exits to
    userspace)."""
    tr = kvm.tracer
    qual = fault.code
    if fault.kind == "ept_misconfig":
        # handle_ept_misconfig → kvm_mmu_page_fault(gpa, PFERR_RSVD_MASK) →
        # handle_mmio_page_fault: a direct MMIO SPTE of the current
        # generation → RET_PF_EMULATE → the emulator exits with KVM_EXIT_MMIO.
        if tr.enabled:
            tr.emit("handle_mmio_page_fault", gpa=hex(fault.gpa), ret="RET_PF_EMULATE")
        return FaultResult(action=MMIO, ret=RET_PF_EMULATE, detail="MMIO SPTE: KVM_EXIT_MMIO")
    error_code = PFERR_USER_MASK if qual & EPT_VIOLATION_ACC_READ else 0
    if qual & EPT_VIOLATION_ACC_WRITE:
        error_code |= PFERR_WRITE_MASK
    if qual & EPT_VIOLATION_ACC_INSTR:
        error_code |= PFERR_FETCH_MASK
    if qual & (EPT_VIOLATION_READABLE | EPT_VIOLATION_WRITABLE | EPT_VIOLATION_EXECUTABLE):
        error_code |= PFERR_PRESENT_MASK
    error_code |= (
        PFERR_GUEST_FINAL_MASK if qual & EPT_VIOLATION_GVA_TRANSLATED else PFERR_GUEST_PAGE_MASK
    )
    if tr.enabled:
        tr.emit(
            "handle_ept_violation",
            gpa=hex(fault.gpa),
            exit_qualification=hex(qual),
            error_code=hex(error_code),
            handler=kvm.arch.version,
        )
    r, event, detail = mmu_page_fault(kvm, vcpu, fault.gpa, error_code, False)
    a: apf.ApfVcpu = kvm.arch.vcpu_apf(vcpu)
    if event == "sigbus":
        # RET_PF_RETRY, but the vcpu thread has SIGBUS pending: KVM_RUN
        # returns -EINTR and QEMU handles the signal (MCE for the guest).
        return FaultResult(action=SIGBUS, ret=r, detail=detail)
    if a.halt_requested:
        # KVM_REQ_APF_HALT: the vcpu halts until the page is present.
        apf.apf_halt(kvm, vcpu)
        return FaultResult(action=RESUME, ret=r, detail="async PF: vcpu halted until page ready")
    if event == "not_present":
        return FaultResult(action=ASYNC_PF, ret=r, detail=detail)
    if r == RET_PF_RETRY:
        return FaultResult(action=RESUME, ret=r, detail=detail)
    if r == RET_PF_EMULATE:
        return FaultResult(action=MMIO, ret=r, detail=detail or "RET_PF_EMULATE")
    return FaultResult(action=A_EFAULT, ret=r, detail=detail or f"KVM_RUN returns {errno_name(r)}")


def mmu_page_fault(
    kvm: Kvm, vcpu: int, gpa: int, error_code: int, prefault: bool
) -> tuple[int, str | None, str]:
    """``vcpu->arch.mmu->page_fault`` of the handler version: v4.16's
    ``tdp_page_fault`` (also under the v6.13 release rule) or 5.13's
    ``kvm_tdp_page_fault``."""
    if kvm.arch.version == "v5.13":
        return direct_page_fault(kvm, vcpu, gpa, error_code, prefault)
    return tdp_page_fault(kvm, vcpu, gpa, error_code, prefault)


def tdp_page_fault(
    kvm: Kvm, vcpu: int, gpa: int, error_code: int, prefault: bool
) -> tuple[int, str | None, str]:
    """``tdp_page_fault`` (H): returns the RET_PF_* value or a negative errno,
    an event for the vcpu loop (``sigbus``, ``not_present``) and a detail."""
    st: EptState = kvm.arch
    tr = kvm.tracer
    gfn = gpa >> 12
    write = bool(error_code & PFERR_WRITE_MASK)
    # page_fault_handle_page_track: no gfn is write-tracked (no shadow paging
    # and no GVT-g); mmu_topup_memory_caches cannot fail here.
    # check_hugepage_cache_consistency: the guest MTRRs are uniform.
    level, force_pt_level = mapping_level(kvm, gfn)
    if not force_pt_level:
        gfn &= ~(pages_per_hpage(level) - 1)
    if tr.enabled:
        tr.emit(
            "tdp_page_fault",
            gpa=hex(gpa),
            error_code=hex(error_code),
            level=level,
            force_pt_level=force_pt_level,
            prefault=prefault,
        )
    if fast_page_fault(kvm, vcpu, gpa, level, error_code):
        return RET_PF_RETRY, None, "fast_page_fault"
    mmu_seq = kvm.mmu_notifier_seq
    handled, res = try_async_pf(kvm, vcpu, prefault, gfn, gpa, write)
    kvm.fire_point("after_hva_to_pfn")
    if handled:
        return _async_not_present(st, vcpu)
    assert res is not None
    pfn = res.pfn
    map_writable = res.writable
    bad = handle_abnormal_pfn(kvm, vcpu, gfn, pfn)
    if bad is not None:
        return bad
    flags = _request_flags(write, map_writable, prefault)
    if force_pt_level:
        flags |= REQ_FORCE_PT_LEVEL
    kvm.fire_point("before_create_pte")
    r = kvm.hooks.create_pte(
        kvm=kvm,
        gpa=gfn << 12,
        pte=(pfn << SPTE_PFN_SHIFT) | flags,
        level=level - 1,
        mmu_seq=mmu_seq,
    )
    if st.version == "v6.13":
        # kvm_mmu_finish_page_fault → kvm_release_faultin_page
        kvm_release_faultin_page(kvm, res.page, r == -EAGAIN, map_writable)
    if r == -EAGAIN:
        if st.version != "v6.13":
            # out_unlock: spin_unlock, then kvm_release_pfn_clean(pfn)
            kvm_release_pfn_clean(kvm.phys, pfn)
        return RET_PF_RETRY, None, "mmu_notifier_retry"
    return r, None, ""


def direct_page_fault(
    kvm: Kvm, vcpu: int, gpa: int, error_code: int, prefault: bool
) -> tuple[int, str | None, str]:
    """``kvm_tdp_page_fault`` → ``direct_page_fault`` (5.13, legacy MMU):
    the largest level the guest MTRRs allow (uniform here: 1G), the lockless
    ``fast_page_fault`` walking to the leaf, ``mmu_notifier_seq``,
    ``try_async_pf``, ``handle_abnormal_pfn``, then under ``mmu_lock`` the
    retry check and ``__direct_map`` (``create_pte``), and at ``out_unlock``
    one ``kvm_release_pfn_clean`` of the pfn ``hva_to_pfn`` returned, with
    v5.6's ``kvm_is_reserved_pfn`` (the zero page is released)."""
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
    flags = _request_flags(write, res.writable, prefault)
    kvm.fire_point("before_create_pte")
    r = kvm.hooks.create_pte(
        kvm=kvm,
        gpa=gpa & ~0xFFF,
        pte=(pfn << SPTE_PFN_SHIFT) | flags,
        level=max_level - 1,
        mmu_seq=mmu_seq,
    )
    # out_unlock: write_unlock(mmu_lock), then kvm_release_pfn_clean(pfn)
    # whether the fault was retried or mapped
    kvm_release_pfn_clean_v5_6(kvm, pfn)
    if r == -EAGAIN:
        return RET_PF_RETRY, None, "mmu_notifier_retry"
    return r, None, ""


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


def _request_flags(write: bool, map_writable: bool, prefault: bool) -> int:
    """What ``create_pte`` needs to know of the fault besides the pfn."""
    flags = 0
    if write:
        flags |= REQ_WRITE_FAULT
    if map_writable:
        flags |= REQ_MAP_WRITABLE
    if prefault:
        flags |= REQ_PREFAULT
    return flags


def kvm_release_pfn_clean_v5_6(kvm: Kvm, pfn: int) -> None:
    """``kvm_release_pfn_clean`` with v5.6's ``kvm_is_reserved_pfn``: put_page
    unless an error/NOSLOT pfn or reserved; the zero page is not reserved."""
    if not is_error_noslot_pfn(pfn) and not is_reserved_pfn(kvm, pfn):
        kvm.phys.put_page(pfn)


# ---------------------------------------------------------------------- level selection


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


def kvm_host_page_size(kvm: Kvm, gfn: int, slot: Memslot | None = None) -> int:
    """``kvm_host_page_size``: ``vma_kernel_pagesize`` of the vma at
    ``gfn_to_hva(gfn)`` under ``mmap_sem``.  ``gfn_to_hva`` asks for write,
    so a read-only memslot gives an error hva and PAGE_SIZE (A.1).
    ``slot``: the gfn's memslot when the caller already looked it up (the
    lookup has no side effect, so the result is the same)."""
    if slot is None:
        slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        return 4096
    addr = gfn_to_hva_memslot(slot, gfn, 12)
    if kvm_is_error_hva(addr):
        return 4096
    mm = kvm.mm
    task = mm.current
    mm.mmap_sem.down_read(task)
    try:
        vma = mm.find_vma(addr)
        if vma is None:
            return 4096
        if vma.flags & VM_HUGETLB:
            return 1 << vma.huge_shift
        return 4096
    finally:
        mm.mmap_sem.up_read(task)


def mapping_level(kvm: Kvm, gfn: int) -> tuple[int, bool]:
    """``mapping_level`` (with ``host_mapping_level``): 4K and
    ``force_pt_level`` for no slot, an invalid slot or a slot with a dirty
    bitmap (L.5); else the hugetlbfs page size, capped by the CPU's largest
    EPT page and the slot's ``disallow_lpage``.  THP is found later, by
    ``transparent_hugepage_adjust``."""
    st: EptState = kvm.arch
    slot = kvm.memslots.gfn_to_memslot(gfn)
    # memslot_valid_for_gpte(slot, no_dirty_log = true)
    if slot is None or slot.flags & KVM_MEMSLOT_INVALID or slot.id in st.dirty_bitmaps:
        return PT_PAGE_TABLE_LEVEL, True
    # host_mapping_level → kvm_host_page_size looks the same gfn's slot up
    # again (gfn_to_hva): the same slot, so it is handed over
    page_size = kvm_host_page_size(kvm, gfn, slot)
    host_level = 0
    for i in range(PT_PAGE_TABLE_LEVEL, PT_MAX_HUGEPAGE_LEVEL + 1):
        if page_size >= 1 << LEVEL_SHIFT[i]:
            host_level = i
        else:
            break
    if host_level == PT_PAGE_TABLE_LEVEL:
        return host_level, False
    max_level = min(LPAGE_LEVEL, host_level)
    level = PT_DIRECTORY_LEVEL
    while level <= max_level:
        if lpage_disallowed(slot, gfn, level):
            break
        level += 1
    return level - 1, False


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


def fast_page_fault(kvm: Kvm, vcpu: int, gpa: int, level: int, error_code: int) -> bool:
    """``fast_page_fault`` (L.5): without ``mmu_lock``, fix a present 4K SPTE
    that was write-protected for dirty logging (``pt_protect == false``):
    make it writable again and mark its gfn dirty.  A large SPTE is left to
    the slow path (only its first gfn could be logged).  With EPT A/D on,
    SPTEs are never access-tracked, so nothing else is fixed here."""
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
            if lvl > PT_PAGE_TABLE_LEVEL:
                new = spte  # do not fix a large SPTE: break to the slow path
        if new != spte and is_access_allowed(error_code, new):
            # fast_pf_fix_direct_spte: cmpxchg, then mark the gfn dirty
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
    KVM_PFN_NOSLOT, A.1)."""
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


def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    """The tail of ``tdp_page_fault`` under ``mmu_lock``: ``mmu_notifier_retry``
    (→ ``-EAGAIN``; the caller releases the pfn after unlocking),
    ``transparent_hugepage_adjust`` unless ``REQ_FORCE_PT_LEVEL``, then
    ``__direct_map``.  ``pte`` is a request (see the module docstring),
    ``level`` 0/1/2 for 4K/2M/1G.  Returns ``-EAGAIN``, ``RET_PF_EMULATE``
    (an MMIO SPTE was installed) or 0."""
    tr = kvm.tracer
    task = kvm.mm.current
    pfn = pte >> SPTE_PFN_SHIFT
    flags = pte & ((1 << SPTE_PFN_SHIFT) - 1)
    gfn = gpa >> 12
    kvm_level = level + 1
    kvm.stage2_changed(gpa)  # whatever this installs covers gpa
    kvm.mmu_lock.lock(task)
    try:
        if kvm.arch.version == "v5.13":
            return _direct_map_v5_13(kvm, gfn, pfn, flags, kvm_level, mmu_seq)
        if kvm.mmu_notifier_retry(mmu_seq):
            if tr.enabled:
                tr.emit(
                    "mmu_notifier_retry",
                    gfn=hex(gfn),
                    mmu_seq=mmu_seq,
                    mmu_notifier_seq=kvm.mmu_notifier_seq,
                    mmu_notifier_count=kvm.mmu_notifier_count,
                )
            return -EAGAIN
        # make_mmu_pages_available: there is always room
        if not flags & REQ_FORCE_PT_LEVEL:
            gfn, pfn, kvm_level = transparent_hugepage_adjust(kvm, gfn, pfn, kvm_level)
        return direct_map(
            kvm,
            bool(flags & REQ_WRITE_FAULT),
            bool(flags & REQ_MAP_WRITABLE),
            kvm_level,
            gfn,
            pfn,
            bool(flags & REQ_PREFAULT),
            mmu_seq,
        )
    finally:
        kvm.mmu_lock.unlock(task)


def _direct_map_v5_13(
    kvm: Kvm, gfn: int, pfn: int, flags: int, max_level: int, mmu_seq: int
) -> int:
    """The part of 5.13 ``direct_page_fault`` under ``mmu_lock``: the retry
    check (skipped for a NOSLOT pfn), then ``__direct_map``, which starts
    with ``kvm_mmu_hugepage_adjust``."""
    tr = kvm.tracer
    if not is_noslot_pfn(pfn) and kvm.mmu_notifier_retry(mmu_seq):
        if tr.enabled:
            tr.emit(
                "mmu_notifier_retry",
                gfn=hex(gfn),
                mmu_seq=mmu_seq,
                mmu_notifier_seq=kvm.mmu_notifier_seq,
                mmu_notifier_count=kvm.mmu_notifier_count,
            )
        return -EAGAIN
    # make_mmu_pages_available: there is always room
    level, pfn = kvm_mmu_hugepage_adjust(kvm, gfn, pfn, max_level)
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
    )


def host_pfn_mapping_level(kvm: Kvm, gfn: int, pfn: int, slot: Memslot) -> int:
    """``host_pfn_mapping_level`` (5.13): 4K unless the pfn is part of a
    compound page (hugetlbfs or THP; ZONE_DEVICE is not modelled); else the
    level of the host page-table leaf at the gfn's hva
    (``lookup_address_in_mm``), found with ``__gfn_to_hva_memslot``, which
    skips the read-only test of ``gfn_to_hva``."""
    if not kvm.phys.PageCompound(pfn):
        return PT_PAGE_TABLE_LEVEL
    hva = slot.userspace_addr + ((gfn - slot.base_gfn) << 12)
    e, shift = kvm.mm.pgtable.find_linux_pte(hva)
    if e is None:
        return PT_PAGE_TABLE_LEVEL
    if shift >= level_shift(PT_PDPE_LEVEL):
        return PT_PDPE_LEVEL
    if shift >= level_shift(PT_DIRECTORY_LEVEL):
        return PT_DIRECTORY_LEVEL
    return PT_PAGE_TABLE_LEVEL


def kvm_mmu_hugepage_adjust(kvm: Kvm, gfn: int, pfn: int, max_level: int) -> tuple[int, int]:
    """``kvm_mmu_hugepage_adjust`` (5.13), under ``mmu_lock`` after the retry
    check: 4K for an error/NOSLOT or reserved pfn (v5.6 rule), for no slot
    and for a slot with dirty logging (``gfn_to_memslot_dirty_bitmap``);
    else the largest level the slot's ``disallow_lpage`` allows
    (``kvm_mmu_max_mapping_level``), capped by the host mapping; the pfn is
    aligned down to that level.  No reference moves (unlike v4.16's
    ``transparent_hugepage_adjust``).  Returns (level, pfn)."""
    st: EptState = kvm.arch
    level = PT_PAGE_TABLE_LEVEL
    if max_level > PT_PAGE_TABLE_LEVEL and not (
        is_error_noslot_pfn(pfn) or is_reserved_pfn(kvm, pfn)
    ):
        slot = kvm.memslots.gfn_to_memslot(gfn)
        if (
            slot is not None
            and not slot.flags & KVM_MEMSLOT_INVALID
            and slot.id not in st.dirty_bitmaps
        ):
            lvl = min(max_level, LPAGE_LEVEL)
            while lvl > PT_PAGE_TABLE_LEVEL and lpage_disallowed(slot, gfn, lvl):
                lvl -= 1
            if lvl > PT_PAGE_TABLE_LEVEL:
                level = min(host_pfn_mapping_level(kvm, gfn, pfn, slot), lvl)
    if level > PT_PAGE_TABLE_LEVEL:
        # VM_BUG_ON((gfn & mask) != (pfn & mask)): compiled out (no DEBUG_VM)
        pfn &= ~(pages_per_hpage(level) - 1)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_mmu_hugepage_adjust", gfn=hex(gfn), level=level, pfn=pfn_name(pfn))
    return level, pfn


def page_trans_compound_map(kvm: Kvm, pfn: int, gfn: int) -> bool:
    """``PageTransCompoundMap``: part of a THP that the host maps only with
    a huge PMD (``_mapcount < 0``).  With one mm, the host mapping at the
    gfn's hva tells."""
    phys = kvm.phys
    if not phys.PageTransCompound(pfn):
        return False
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        return False
    hva = gfn_to_hva_memslot(slot, gfn, 12)
    e, shift = kvm.mm.pgtable.find_linux_pte(hva)
    return (
        e is not None
        and shift == THP_SHIFT
        and bool(e & PTE_PRESENT)
        and e >> PTE_PFN_SHIFT == phys.compound_head(pfn)
    )


def transparent_hugepage_adjust(kvm: Kvm, gfn: int, pfn: int, level: int) -> tuple[int, int, int]:
    """``transparent_hugepage_adjust`` (H step 8): a 4K decision on a THP the
    host maps with a PMD becomes 2M; in v4.16 the reference moves from the
    tail pfn to the head (``kvm_release_pfn_clean`` + ``kvm_get_pfn``)."""
    phys = kvm.phys
    if (
        not is_error_noslot_pfn(pfn)
        and not kvm_is_reserved_pfn(phys, pfn)
        and level == PT_PAGE_TABLE_LEVEL
        and page_trans_compound_map(kvm, pfn, gfn)
        and not lpage_disallowed(kvm.memslots.gfn_to_memslot(gfn), gfn, PT_DIRECTORY_LEVEL)
    ):
        level = PT_DIRECTORY_LEVEL
        mask = pages_per_hpage(level) - 1
        # VM_BUG_ON((gfn & mask) != (pfn & mask)): compiled out (no DEBUG_VM)
        moved = bool(pfn & mask)
        if pfn & mask:
            gfn &= ~mask
            if kvm.arch.version == "v6.13":
                pfn &= ~mask
            else:
                kvm_release_pfn_clean(phys, pfn)
                pfn &= ~mask
                kvm_get_pfn(phys, pfn)
        if kvm.tracer.enabled:
            kvm.tracer.emit(
                "transparent_hugepage_adjust", gfn=hex(gfn), pfn=hex(pfn), ref_moved=moved
            )
    return gfn, pfn, level


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


def vmx_get_mt_mask(kvm: Kvm, gfn: int, is_mmio: bool) -> int:
    """``vmx_get_mt_mask``: MMIO → UC; no non-coherent DMA (no assigned
    device in the model) → WB with IPAT."""
    if is_mmio:
        return MTRR_TYPE_UNCACHABLE << EPT_MT_SHIFT
    return (MTRR_TYPE_WRBACK << EPT_MT_SHIFT) | EPT_IPAT


def mark_page_dirty(kvm: Kvm, gfn: int) -> None:
    """``kvm_vcpu_mark_page_dirty`` → ``mark_page_dirty_in_slot``: set the
    gfn's bit if the slot has a dirty bitmap."""
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is None:
        return
    bitmap = kvm.arch.dirty_bitmaps.get(slot.id)
    if bitmap is not None:
        bitmap.add(gfn - slot.base_gfn)


def direct_map(
    kvm: Kvm,
    write: bool,
    map_writable: bool,
    level: int,
    gfn: int,
    pfn: int,
    prefault: bool,
    mmu_seq: int,
) -> int:
    """``__direct_map``: walk from the root, dropping a large SPTE in the way
    (``drop_large_spte``) and linking new tables, down to ``level``; there
    ``mmu_set_spte``.  (``direct_pte_prefetch`` is not modelled.)"""
    st: EptState = kvm.arch
    gpa = gfn << 12
    table = st.root
    lvl = PT64_ROOT_LEVEL
    while lvl > level:
        idx = (gpa >> LEVEL_SHIFT[lvl]) & 511
        e = table.get(idx)
        if isinstance(e, int):
            # drop_large_spte (a large leaf, present or write-protected) or
            # a stale non-present value: the slot becomes a table
            if e and not is_mmio_spte(e):
                drop_spte(kvm, table, idx, gpa & ~((1 << LEVEL_SHIFT[lvl]) - 1), lvl)
            e = None
        if e is None:
            e = {}
            table[idx] = e
        table = e
        lvl -= 1
    idx = (gpa >> LEVEL_SHIFT[level]) & 511
    ret = mmu_set_spte(kvm, table, idx, write, level, gfn, pfn, prefault, map_writable, mmu_seq)
    st.pf_fixed += 1
    return ret


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
    if isinstance(old, dict):
        # a 4K table where the large leaf goes: drop_parent_pte (the child
        # page becomes unreachable)
        table.pop(idx)
        for g in [g for g in st.seqs if gpa <= g < gpa + (1 << level_shift(level))]:
            del st.seqs[g]
    elif old is not None and is_shadow_present_pte(old):
        if pfn != spte_to_pfn(old):
            drop_spte(kvm, table, idx, gpa, level)
        else:
            was_rmapped = True
    set_spte(kvm, table, idx, level, gfn, pfn, speculative, host_writable)
    new = table.get(idx, 0)
    assert isinstance(new, int)
    ret = RET_PF_RETRY
    if new and is_mmio_spte(new):
        ret = RET_PF_EMULATE
    elif is_shadow_present_pte(new):
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
    if is_noslot_pfn(pfn):
        # set_mmio_spte: gfn, access and the MMIO generation; not in any rmap
        table[idx] = (gfn << SPTE_PFN_SHIFT) | MMIO_SPTE_VALUE
        return
    st: EptState = kvm.arch
    spte = 0
    if not speculative and st.ad_enabled:
        spte |= EPT_A
    spte |= EPT_X | EPT_R  # ACC_EXEC_MASK, ACC_USER_MASK (= R on EPT)
    if level > PT_PAGE_TABLE_LEVEL:
        spte |= EPT_LARGE
    spte |= vmx_get_mt_mask(kvm, gfn, kvm_is_mmio_pfn(kvm, pfn))
    writable = True
    if host_writable:
        spte |= SPTE_HOST_WRITEABLE
    else:
        writable = False
    spte |= pfn << SPTE_PFN_SHIFT
    if writable:
        if level > PT_PAGE_TABLE_LEVEL and lpage_disallowed(
            kvm.memslots.gfn_to_memslot(gfn), gfn, level
        ):
            return  # goto done: the SPTE is left as it was
        spte |= EPT_W | SPTE_MMU_WRITEABLE
        # mmu_need_write_protect: no write-tracked gfn, no shadow pages
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
    if not is_shadow_present_pte(old):
        return
    pfn = spte_to_pfn(old)
    if old & EPT_A and not new & EPT_A:
        kvm_set_pfn_accessed(kvm, pfn)
    if old & EPT_D and not new & EPT_D:
        kvm_set_pfn_dirty(kvm, pfn)


# ---------------------------------------------------------------------- v6.13 release


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


__all__ = [
    "EPT_D",
    "RET_PF_EMULATE",
    "RET_PF_RETRY",
    "create_pte",
    "direct_page_fault",
    "mapping_level",
    "mmu_page_fault",
    "page_fault",
    "tdp_page_fault",
]
