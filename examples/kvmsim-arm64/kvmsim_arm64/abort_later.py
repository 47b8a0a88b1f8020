"""``user_mem_abort`` of two later kernels (arch/arm64/kvm/mmu.c), in the
shape this model can express; ``kvm_handle_guest_abort`` (abort.py) is
shared and calls :func:`user_mem_abort` for them.

``v5.13`` (the handler of refcount_guarded's era, kernel-notes §D):

- the memslot's hva and IPA must agree modulo a block's size and the block
  must lie inside the memslot (``fault_supports_stage2_huge_mapping``, from
  "KVM: arm/arm64: Fix unintended stage 2 PMD mappings", v4.20): otherwise a
  hugetlbfs vma is mapped with pages (``force_pte``) and the gfn is not
  rounded down; a 1G hugetlbfs page may be a 1G block (v4.20's PUD support),
  else falls back to 2M, then to pages;
- a VM_PFNMAP vma is mapped with pages (``force_pte``);
- a fetch from a device pfn gives -ENOEXEC: a prefetch abort for the guest;
- the THP adjustment (``transparent_hugepage_adjust`` after the notifier
  check) requires ``kvm_is_transparent_hugepage`` (a PMD-mapped THP, not a
  hugetlbfs page) and ``fault_supports_stage2_huge_mapping``; it still moves
  the reference from the subpage to the head;
- the page is marked dirty only when the mapping was installed;
- the release helpers (``kvm_release_pfn_clean``, ``kvm_get_pfn``,
  ``kvm_set_pfn_*``) use v5.6's ``kvm_is_reserved_pfn`` (7df003c85218): the
  zero page is not reserved, so its gup reference is dropped (§L.1).

``v6.13`` (follow_pfn_2024's era, kernel-notes §E):

- ``__kvm_faultin_pfn(memslot, gfn, write ? FOLL_WRITE : 0, &writable,
  &page)``; the only page released is that ``page`` (``HvaToPfnResult.page``:
  ``*refcounted_page``), by ``kvm_release_faultin_page(kvm, page, !!ret,
  writable)`` at ``out_unlock``; never a page derived from the pfn, so a
  PFNMAP pfn (no reference taken) is never put, and the zero page is;
- ``get_vma_page_shift``: a VM_PFNMAP vma may be mapped with a block when
  its pfns are aligned like its addresses (still bounded by the memslot);
- ``transparent_hugepage_adjust`` reads the host mapping size and moves no
  reference (the tail page taken is the one released);
- ``handle_access_fault`` no longer marks the page accessed.

Not modelled in either (besides abort.py's list): ``kvm_pgtable``'s
``relax_perms`` for a permission fault at the leaf's granule is modelled as
a fresh map keeping the leaf's execute permission (what relaxing adds to),
and the retry of a permission-only change (-EAGAIN) is not; MTE, nested
stage 2, ``VM_ALLOW_ANY_UNCACHED``, FEAT_DIC's executable-by-default; the
stage-2 table code stays v4.16's except that a Device page no longer fails
over a valid entry (``kvm_pgtable_stage2_map`` breaks it before making).

Read from: arch/arm64/kvm/mmu.c of Linux 5.13 and 6.13 as kernel-notes
§D/E and the v4.20 commit "KVM: arm/arm64: Fix unintended stage 2 PMD
mappings" describe them; NOT re-read against a 5.13 or 6.13 release tree
in this round (none was reachable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim.cmodel import EAGAIN, EFAULT
from kvmsim.host.constants import VM_PFNMAP
from kvmsim.kvm.pfn import (
    KVM_PFN_ERR_HWPOISON,
    is_error_noslot_pfn,
    pfn_name,
)
from kvmsim_arm64 import mmu
from kvmsim_arm64.desc import (
    FSC_PERM,
    L1_SHIFT,
    L2_SHIFT,
    PAGE_S2,
    PAGE_S2_DEVICE,
    PAGE_SHIFT,
    PMD_SIZE,
    PUD_SIZE,
    describe,
    pfn_pte,
    pmd_mkhuge,
    s2_mkexec,
    s2_mkwrite,
)

if TYPE_CHECKING:
    from kvmsim.host import PhysMem, Vma
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot

PAGE_SIZE = 1 << PAGE_SHIFT
PMD_MASK = ~(PMD_SIZE - 1)
PTRS_PER_PMD = PMD_SIZE >> PAGE_SHIFT
ENOEXEC = 8


# ------------------------------------------------------------ v5.6 reference rule


def kvm_is_reserved_pfn_v5_6(phys: PhysMem, pfn: int) -> bool:
    """``kvm_is_reserved_pfn`` from 7df003c85218 (v5.6) on: PageReserved but
    not the zero page for a pfn with a struct page, true for one without."""
    if phys.pfn_valid(pfn):
        return phys.PageReserved(pfn) and not phys.is_zero_pfn(pfn)
    return True


def kvm_release_pfn_clean_v5_6(phys: PhysMem, pfn: int) -> None:
    """``kvm_release_pfn_clean`` (v5.6-v6.12): put_page unless an error pfn or
    reserved under the v5.6 rule (the zero page is put)."""
    if not is_error_noslot_pfn(pfn) and not kvm_is_reserved_pfn_v5_6(phys, pfn):
        phys.put_page(pfn)


def kvm_get_pfn_v5_6(phys: PhysMem, pfn: int) -> None:
    """``kvm_get_pfn`` with the v5.6 reserved rule."""
    if not kvm_is_reserved_pfn_v5_6(phys, pfn):
        phys.get_page(pfn)


def kvm_set_pfn_dirty_v5_6(phys: PhysMem, pfn: int) -> None:
    """``kvm_set_pfn_dirty`` with the v5.6 reserved rule."""
    if not kvm_is_reserved_pfn_v5_6(phys, pfn):
        phys.SetPageDirty(pfn)


def kvm_set_pfn_accessed_v5_6(phys: PhysMem, pfn: int) -> None:
    """``kvm_set_pfn_accessed`` with the v5.6 reserved rule."""
    if not kvm_is_reserved_pfn_v5_6(phys, pfn):
        phys.mark_page_accessed(pfn)


# ------------------------------------------------------------ v6.13 release rule


def kvm_release_faultin_page(phys: PhysMem, page: int | None, unused: bool, dirty: bool) -> None:
    """``kvm_release_faultin_page`` (v6.13, §E.9): nothing for a NULL page;
    else ``kvm_release_page_unused`` (a bare put), ``_dirty`` (SetPageDirty
    unless PG_reserved, then the clean release) or ``_clean`` (mark accessed
    unless PG_reserved, then put).  The zero page is put like any page."""
    if page is None:
        return
    if not unused:
        if dirty and not phys.PageReserved(page):
            phys.SetPageDirty(page)
        if not phys.PageReserved(page):
            phys.mark_page_accessed(page)
    phys.put_page(page)


# ------------------------------------------------------------ block size decisions


def fault_supports_stage2_huge_mapping(memslot: Memslot, hva: int, map_size: int) -> bool:
    """``fault_supports_stage2_huge_mapping`` (v4.20 on): a block of
    ``map_size`` is allowed only if the memslot's hva and IPA agree modulo
    the size and the block around ``hva`` lies inside the memslot."""
    if map_size == PAGE_SIZE:
        return True
    gpa_start = memslot.base_gfn << PAGE_SHIFT
    uaddr_start = memslot.userspace_addr
    uaddr_end = uaddr_start + (memslot.npages << PAGE_SHIFT)
    if (gpa_start & (map_size - 1)) != (uaddr_start & (map_size - 1)):
        return False
    base = hva & ~(map_size - 1)
    return base >= uaddr_start and base + map_size <= uaddr_end


def vma_shift_v5_13(vma: Vma) -> tuple[int, bool]:
    """The vma's page shift as 5.13 reads it, and ``force_pte``: the
    hugetlbfs page shift, else PAGE_SHIFT; VM_PFNMAP forces pages
    (dirty logging, which would too, is not modelled)."""
    if vma.flags & VM_PFNMAP:
        return PAGE_SHIFT, True
    if vma.is_hugetlb() and vma.huge_shift:
        return vma.huge_shift, False
    return PAGE_SHIFT, False


def get_vma_page_shift(vma: Vma, hva: int) -> int:
    """``get_vma_page_shift`` (v5.14 on): hugetlbfs → its page shift; not
    VM_PFNMAP → PAGE_SHIFT; VM_PFNMAP → the largest block whose pfn and
    address agree modulo its size and whose aligned-down start and aligned-up
    hva stay within the vma (the kernel's bounds test, taken as written)."""
    if vma.is_hugetlb() and not vma.flags & VM_PFNMAP and vma.huge_shift:
        return vma.huge_shift
    if not vma.flags & VM_PFNMAP:
        return PAGE_SHIFT
    pa = (vma.pgoff << PAGE_SHIFT) + (hva - vma.start)
    for shift in (L1_SHIFT, L2_SHIFT):
        size = 1 << shift
        down = hva & ~(size - 1)
        up = (hva + size - 1) & ~(size - 1)
        if (hva & (size - 1)) == (pa & (size - 1)) and down >= vma.start and up <= vma.end:
            return shift
    return PAGE_SHIFT


def stage2_shift(memslot: Memslot, hva: int, vma_shift: int, force_pte: bool) -> tuple[int, bool]:
    """The ``switch (vma_shift)`` of v5.10 on: a 1G size falls back to 2M and
    a 2M size to pages when ``fault_supports_stage2_huge_mapping`` refuses;
    falling to pages sets ``force_pte``."""
    if vma_shift == L1_SHIFT:
        if fault_supports_stage2_huge_mapping(memslot, hva, PUD_SIZE):
            return vma_shift, force_pte
        vma_shift = L2_SHIFT
    if vma_shift == L2_SHIFT:
        if fault_supports_stage2_huge_mapping(memslot, hva, PMD_SIZE):
            return vma_shift, force_pte
        return PAGE_SHIFT, True
    return vma_shift, force_pte


def host_mapping_shift(kvm: Kvm, hva: int) -> int:
    """The host page-table level mapping ``hva`` (v6.13's
    ``get_user_mapping_size``), as a shift; PAGE_SHIFT when absent."""
    pte, shift = kvm.mm.pgtable.find_linux_pte(hva)
    if pte is None:
        return PAGE_SHIFT
    return shift or PAGE_SHIFT


def kvm_is_transparent_hugepage(kvm: Kvm, pfn: int, hva: int) -> bool:
    """``kvm_is_transparent_hugepage`` (v5.13): ``PageTransCompoundMap`` (a
    compound page the host maps with a huge leaf) and the head is a THP, so
    a hugetlbfs page is not."""
    phys = kvm.phys
    if not phys.pfn_valid(pfn) or not phys.PageTransCompound(pfn):
        return False
    _pte, shift = kvm.mm.pgtable.find_linux_pte(hva)
    return shift != 0


# ------------------------------------------------------------ user_mem_abort


def user_mem_abort(
    kvm: Kvm,
    vcpu: int,
    fault_ipa: int,
    memslot: Memslot,
    hva: int,
    fault_status: int,
    exec_fault: bool,
    write_fault: bool,
) -> tuple[int, str]:
    """``user_mem_abort`` of v5.13 or v6.13 (``kvm.arch.handler``).  Returns
    (ret, detail) as the v4.16 model does: ``ret`` 0, -ENOEXEC (a prefetch
    abort for the guest) or a negative errno; detail ``"hwpoison"`` after
    the SIGBUS."""
    v6 = kvm.arch.handler == "v6.13"
    tr = kvm.tracer
    mm = kvm.mm
    phys = kvm.phys
    task = mm.current
    if fault_status == FSC_PERM and not write_fault and not exec_fault:
        return -EFAULT, "Unexpected L2 read permission error"

    mm.mmap_sem.down_read(task)
    vma = mm.find_vma_intersection(hva, hva + 1)  # vma_lookup in v6.13
    if vma is None:
        mm.mmap_sem.up_read(task)
        return -EFAULT, f"Failed to find VMA for hva {hva:#x}"
    if v6:
        vma_shift, force_pte = get_vma_page_shift(vma, hva), False
    else:
        vma_shift, force_pte = vma_shift_v5_13(vma)
    vma_shift, force_pte = stage2_shift(memslot, hva, vma_shift, force_pte)
    vma_pagesize = 1 << vma_shift
    if vma_pagesize in (PMD_SIZE, PUD_SIZE):
        fault_ipa &= ~(vma_pagesize - 1)
    gfn = fault_ipa >> PAGE_SHIFT
    if v6:
        # 6.13 reads mmu_invalidate_seq before letting mmap_sem go
        mmu_seq = kvm.mmu_notifier_seq
        mm.mmap_sem.up_read(task)
    else:
        mm.mmap_sem.up_read(task)
        mmu_seq = kvm.mmu_notifier_seq

    # gfn_to_pfn_prot (5.13) / __kvm_faultin_pfn (6.13): the memslot of the
    # fault (the rounded gfn stays inside it: the block lies in the memslot)
    res = kvm.gfn_to_pfn_memslot(
        memslot,
        gfn,
        vcpu=vcpu,
        atomic=False,
        async_=False,
        write_fault=write_fault,
        writable=True,
    )
    pfn = res.pfn
    writable = res.writable
    page: int | None = res.page if v6 and isinstance(res.page, int) else None
    if tr.enabled:
        tr.emit(
            "__kvm_faultin_pfn" if v6 else "gfn_to_pfn_prot",
            gfn=hex(gfn),
            pfn=pfn_name(pfn),
            status=res.status,
            writable=writable,
            vma_shift=vma_shift,
            force_pte=force_pte,
            refcounted_page=None if page is None else hex(page),
            mmu_notifier_seq=mmu_seq,
        )
    kvm.fire_point("after_hva_to_pfn")
    if pfn == KVM_PFN_ERR_HWPOISON:
        if tr.enabled:
            tr.emit("kvm_send_hwpoison_signal", addr=hex(hva), si_addr_lsb=vma_shift)
        return 0, "hwpoison"
    if is_error_noslot_pfn(pfn):
        return -EFAULT, f"gfn_to_pfn_prot: {pfn_name(pfn)}"

    # kvm_is_device_pfn: !pfn_valid (5.13), !pfn_is_map_memory (6.13)
    device = not phys.pfn_valid(pfn)
    if exec_fault and device:
        # returned before out_unlock: nothing to release for a pfn with no
        # struct page (and __kvm_faultin_pfn hands back no page for it)
        return -ENOEXEC, "exec fault on a device pfn"

    kvm.fire_point("before_create_pte")
    # As in abort.py, the THP adjustment runs before create_pte, which owns
    # mmu_lock and the notifier check; nothing observable changes.
    if vma_pagesize == PAGE_SIZE and not (force_pte or device):
        vma_pagesize, pfn, fault_ipa = transparent_hugepage_adjust(
            kvm, memslot, hva, pfn, fault_ipa, move_ref=not v6
        )
    desc = pfn_pte(pfn, PAGE_S2_DEVICE if device else PAGE_S2)
    level = 0
    if vma_pagesize == PMD_SIZE:
        desc, level = pmd_mkhuge(desc), 1
    elif vma_pagesize == PUD_SIZE:
        desc, level = pmd_mkhuge(desc), 2
    if writable:
        desc = s2_mkwrite(desc)
    if exec_fault or (fault_status == FSC_PERM and mmu.stage2_is_exec(kvm.arch, fault_ipa)):
        # a permission fault relaxes the leaf: execute already granted stays
        desc = s2_mkexec(desc)
    if tr.enabled:
        tr.emit(
            "user_mem_abort",
            version=kvm.arch.handler,
            ipa=hex(fault_ipa),
            pfn=hex(pfn),
            level=level,
            desc=describe(desc),
        )
    ret = kvm.hooks.create_pte(kvm=kvm, gpa=fault_ipa, pte=desc, level=level, mmu_seq=mmu_seq)
    if v6:
        # out_unlock: kvm_release_faultin_page(kvm, page, !!ret, writable)
        kvm_release_faultin_page(phys, page, ret != 0, writable)
    else:
        if writable and ret == 0:
            kvm_set_pfn_dirty_v5_6(phys, pfn)
        kvm_set_pfn_accessed_v5_6(phys, pfn)
        kvm_release_pfn_clean_v5_6(phys, pfn)
    if ret == -EAGAIN:
        return 0, "mmu_notifier_retry: the guest faults again"
    return ret, "mapped" if ret == 0 else f"stage2 map returned {ret}"


def transparent_hugepage_adjust(
    kvm: Kvm, memslot: Memslot, hva: int, pfn: int, ipa: int, *, move_ref: bool
) -> tuple[int, int, int]:
    """``transparent_hugepage_adjust``: a 2M block when the memslot allows
    one here and the host maps a THP (5.13: ``kvm_is_transparent_hugepage``,
    moving the reference from the subpage to the head with the v5.6
    helpers) or maps the hva with a PMD leaf (6.13: the host mapping size,
    no reference moved).  Returns (size, pfn, ipa)."""
    if not fault_supports_stage2_huge_mapping(memslot, hva, PMD_SIZE):
        return PAGE_SIZE, pfn, ipa
    if move_ref:
        if not kvm_is_transparent_hugepage(kvm, pfn, hva):
            return PAGE_SIZE, pfn, ipa
    elif host_mapping_shift(kvm, hva) < L2_SHIFT:
        return PAGE_SIZE, pfn, ipa
    ipa &= PMD_MASK
    head = pfn & ~(PTRS_PER_PMD - 1)
    if move_ref:
        kvm_release_pfn_clean_v5_6(kvm.phys, pfn)
        kvm_get_pfn_v5_6(kvm.phys, head)
    if kvm.tracer.enabled:
        kvm.tracer.emit("transparent_hugepage_adjust", pfn=hex(head), ipa=hex(ipa))
    return PMD_SIZE, head, ipa
