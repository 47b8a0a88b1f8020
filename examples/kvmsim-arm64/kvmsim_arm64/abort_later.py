"""``user_mem_abort`` of two later kernels (arch/arm64/kvm/mmu.c), in the
shape this model can express; ``kvm_handle_guest_abort`` (abort.py) is
shared and calls :func:`user_mem_abort` for them (its v5.13 / v6.13
decisions the model reaches are v4.16's, plus -ENOEXEC turned into a
prefetch abort at its ``out`` label).

Both versions, in order: a permission fault that is neither a write nor a
fetch is -EFAULT; under ``mmap_read_lock`` the vma at the hva
(``find_vma_intersection`` / ``vma_lookup``) gives the page shift, which
the ``switch (vma_shift)`` lowers while ``fault_supports_stage2_huge_mapping``
refuses (the memslot's hva and IPA agree modulo the size and the block
lies inside the memslot; 1G → 2M → pages, pages setting ``force_pte``);
a 2M or 1G size rounds the IPA down; the pfn comes from the fault's own
memslot; a hwpoisoned pfn sends SIGBUS with ``si_addr_lsb`` = that shift
and returns 0; any other error pfn is -EFAULT; a device pfn
(``kvm_is_device_pfn``: ``!pfn_valid`` in 5.13, ``!pfn_is_map_memory``
in 6.13) is mapped Device and never adjusted, and a fetch from one is
-ENOEXEC before the lock (nothing released).  Under ``mmu_lock``, after
the sequence check (-EAGAIN: the guest retries): the THP adjustment for
a page-sized fault not forced to pages; prot = read, write when
``writable``, execute for a fetch; then a permission fault whose size is
the faulting level's granule (``fault_granule``, from the ESR) is
relaxed in place (``kvm_pgtable_stage2_relax_perms``: permissions are
only added, the output address stays) and anything else is mapped
(``kvm_pgtable_stage2_map``), which returns -EAGAIN without a change
when a valid leaf of that size differs from the new one in S2AP/XN only.

``v5.13`` (the handler of refcount_guarded's era, kernel-notes §D):

- ``vma_shift``: the hugetlbfs page shift, else PAGE_SHIFT; a VM_PFNMAP
  vma is mapped with pages (``force_pte``); ``mmap_read_unlock`` then
  ``mmu_notifier_seq`` is read;
- ``__gfn_to_pfn_memslot(memslot, gfn, false, NULL, write_fault,
  &writable, NULL)`` (10ba2d17d297, v5.13: not ``gfn_to_pfn_prot``);
- ``transparent_hugepage_adjust``: ``kvm_is_transparent_hugepage``
  (``PageTransCompoundMap`` and a THP head: not hugetlbfs) and
  ``fault_supports_stage2_huge_mapping``; the reference moves from the
  subpage to the head (``kvm_release_pfn_clean`` + ``kvm_get_pfn``);
- ``relax_perms`` on an entry no longer valid returns 0;
- the pfn is marked dirty only when ``ret`` is 0 (mapped, relaxed or
  relaxed-nothing), then ``kvm_set_pfn_accessed`` and
  ``kvm_release_pfn_clean`` at ``out_unlock`` on every path past the
  lock; these helpers use v5.6's ``kvm_is_reserved_pfn`` (7df003c85218):
  the zero page is not reserved, so its gup reference is dropped
  (kernel-notes §L.1);
- ``handle_access_fault``: AF set under ``mmu_lock``, then
  ``kvm_set_pfn_accessed`` on the leaf's pfn (abort.py).

``v6.13`` (follow_pfn_2024's era, kernel-notes §E):

- ``get_vma_page_shift``: hugetlbfs (not VM_PFNMAP) → its page shift; not
  VM_PFNMAP → PAGE_SHIFT; VM_PFNMAP → the largest block whose pfn and
  address agree modulo its size and whose aligned-down start and
  aligned-up hva stay within the vma (still bounded by the memslot);
- ``mmu_invalidate_seq`` is read before ``mmap_read_unlock``;
- ``__kvm_faultin_pfn(memslot, gfn, write ? FOLL_WRITE : 0, &writable,
  &page)``; the only page released is that ``page``
  (``HvaToPfnResult.page``: ``*refcounted_page``), by
  ``kvm_release_faultin_page(kvm, page, !!ret, writable)`` at
  ``out_unlock``: unused (a bare put) whenever ``ret`` is not 0, -EAGAIN
  included; never a page derived from the pfn, so a PFNMAP pfn (no
  reference taken) is never put, and the zero page is;
- a permission fault on a leaf larger than a page takes that granule as
  its size (no THP lookup, pfn and IPA left unrounded) and is relaxed;
- ``transparent_hugepage_adjust``: ``fault_supports_stage2_huge_mapping``,
  then ``get_user_mapping_size`` (the host page-table leaf's size; -EAGAIN
  when the walk ends on an invalid entry, which replays the fault), a
  block when 2M or more; no reference moves;
- ``relax_perms`` on an entry no longer valid returns -EAGAIN;
- ``handle_access_fault`` only sets AF (abort.py).

Dirty logging (dirty.py): ``memslot_is_logging`` forces pages
(``force_pte``, ``vma_shift = PAGE_SHIFT``) and a read fault maps a
non-device page read-only; a writable map or relax that succeeded marks
the page (v5.13 under ``mmu_lock``, in mmu.py; v6.13 after dropping it).

Not modelled (besides abort.py's list): MTE
(``kvm_has_mte`` is false: no -EFAULT for a VMA without VM_MTE_ALLOWED /
VM_SHARED, no tag sanitising); nested stage 2; ``VM_ALLOW_ANY_UNCACHED``
(Normal-NC); FEAT_DIC's execute-by-default; CONT_PTE / CONT_PMD hugetlbfs
sizes; 5.14+'s skipping of the notifier count for ranges outside every
memslot (any invalidation in flight makes both versions retry);
5.13's ``kvm_is_reserved_pfn`` exception for ZONE_DEVICE pages.  The
lock and the sequence check belong to ``create_pte`` / ``relax_perms``,
after the size adjustment (see the comment there).

Read from: Linux 5.12.9 (GitHub zhangyinjun/linux-5.12.9 @ d2af43753,
Makefile 5.12.9) arch/arm64/kvm/mmu.c and arch/arm64/kvm/hyp/pgtable.c,
with the one change the kvmarm-5.13 pull (2021-04-23) made to
``user_mem_abort``, 10ba2d17d297 (Gavin Shan's v2 mail read), and
cross-checked against 5.14.2 (Kingdo777/linux-5.14.2-faascale-host @
21101b620) minus the kvmarm-5.14 pull's changes (MTE, CMOs, device
block mappings); Linux 6.13.7 (ChenRuiwei/linux-6.13.7, Makefile
6.13.7, kvm files as imported) arch/arm64/kvm/mmu.c, hyp/pgtable.c,
include/linux/kvm_host.h and virt/kvm/kvm_main.c.  No 5.13 release tree
was reachable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim.cmodel import EAGAIN, EFAULT
from kvmsim.host.constants import VM_PFNMAP
from kvmsim.host.pte import pte_present, pte_protnone
from kvmsim.kvm.dirty import mark_page_dirty
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
    level_shift,
    pfn_pte,
    pmd_mkhuge,
    s2_mkexec,
    s2_mkwrite,
)
from kvmsim_arm64.dirty import memslot_is_logging

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


def get_user_mapping_size(kvm: Kvm, hva: int) -> int:
    """``get_user_mapping_size`` (v6.13): the size of the host page-table
    leaf mapping ``hva``, or -EAGAIN when the walk ends on an invalid entry
    (none, swap or migration, PROT_NONE: arm64 clears PTE_VALID in all of
    them), which replays the fault."""
    pte, shift = kvm.mm.pgtable.find_linux_pte(hva)
    if pte is None or not pte_present(pte) or pte_protnone(pte):
        return -EAGAIN
    return 1 << (shift or PAGE_SHIFT)


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
    esr: int,
) -> tuple[int, str]:
    """``user_mem_abort`` of v5.13 or v6.13 (``kvm.arch.handler``).  Returns
    (ret, detail) as the v4.16 model does: ``ret`` 0, -ENOEXEC (a prefetch
    abort for the guest) or a negative errno; detail ``"hwpoison"`` after
    the SIGBUS.  ``esr`` gives the faulting level (``fault_granule``)."""
    v6 = kvm.arch.handler == "v6.13"
    tr = kvm.tracer
    mm = kvm.mm
    phys = kvm.phys
    task = mm.current
    fault_is_perm = fault_status == FSC_PERM
    # kvm_vcpu_trap_get_fault_level: the lookup level the fault was taken at
    fault_granule = 1 << level_shift(esr & 3)
    if fault_is_perm and not write_fault and not exec_fault:
        return -EFAULT, "Unexpected L2 read permission error"

    # (v6.13 tops the memory cache up here, v5.13 after the unlock: it
    # cannot fail in the model)
    mm.mmap_sem.down_read(task)
    vma = mm.find_vma_intersection(hva, hva + 1)  # vma_lookup in v6.13
    if vma is None:
        mm.mmap_sem.up_read(task)
        return -EFAULT, f"Failed to find VMA for hva {hva:#x}"
    logging_active = memslot_is_logging(kvm, memslot)
    if logging_active:
        # pages only while the slot logs (VM_PFNMAP slots never log)
        vma_shift, force_pte = PAGE_SHIFT, True
    elif v6:
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

    # __gfn_to_pfn_memslot(memslot, gfn, false, NULL, write_fault,
    # &writable, NULL) (5.13, 10ba2d17d297) / __kvm_faultin_pfn (6.13): the
    # memslot of the fault, whatever the rounded gfn
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
            "__kvm_faultin_pfn" if v6 else "__gfn_to_pfn_memslot",
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
        return -EFAULT, f"{'__kvm_faultin_pfn' if v6 else '__gfn_to_pfn_memslot'}: {pfn_name(pfn)}"

    # kvm_is_device_pfn: !pfn_valid (5.13), !pfn_is_map_memory (6.13)
    device = not phys.pfn_valid(pfn)
    if not device and logging_active and not write_fault:
        writable = False  # only a write fault maps the page writable
    if exec_fault and device:
        # returned before out_unlock: nothing to release for a pfn with no
        # struct page (and __kvm_faultin_pfn hands back no page for it)
        return -ENOEXEC, "exec fault on a device pfn"

    kvm.fire_point("before_create_pte")
    # The kernel takes mmu_lock, checks the notifier sequence, then adjusts
    # the size; here the lock and the check belong to create_pte and
    # relax_perms, after the adjustment: the reference v5.13 moves stays
    # within one compound page, and what a THP split in between changes
    # makes the sequence check refuse either way.
    ret = 0
    if vma_pagesize == PAGE_SIZE and not (force_pte or device):
        if v6 and fault_is_perm and fault_granule > PAGE_SIZE:
            # a permission fault on a block: keep the block's size, no THP
            # lookup, pfn and IPA left as they are (only relaxed below)
            vma_pagesize = fault_granule
        else:
            vma_pagesize, pfn, fault_ipa = transparent_hugepage_adjust(
                kvm, memslot, hva, pfn, fault_ipa, move_ref=not v6
            )
            if vma_pagesize < 0:
                ret = vma_pagesize
    # (MTE: kvm_has_mte is false, no VM has KVM_CAP_ARM_MTE here)
    if ret == 0:
        ret = _install(
            kvm,
            fault_ipa,
            pfn,
            vma_pagesize,
            device,
            writable,
            exec_fault,
            relax=fault_is_perm and vma_pagesize == fault_granule,
            mmu_seq=mmu_seq,
        )
    if v6:
        # out_unlock: kvm_release_faultin_page(kvm, page, !!ret, writable),
        # read_unlock; then, outside mmu_lock, the page is marked dirty if
        # mapped writable (v5.13 marks under the lock: mmu.create_pte)
        kvm_release_faultin_page(phys, page, ret != 0, writable)
        if writable and ret == 0:
            mark_page_dirty(kvm, gfn)
    else:
        # "mark the page dirty only if the fault is handled successfully";
        # then out_unlock, whether mapped or not
        if writable and ret == 0:
            kvm_set_pfn_dirty_v5_6(phys, pfn)
        kvm_set_pfn_accessed_v5_6(phys, pfn)
        kvm_release_pfn_clean_v5_6(phys, pfn)
    if ret == -EAGAIN:
        return 0, "-EAGAIN: the guest faults again"
    return ret, "mapped" if ret == 0 else f"stage2 map returned {ret}"


def _install(
    kvm: Kvm,
    ipa: int,
    pfn: int,
    size: int,
    device: bool,
    writable: bool,
    exec_fault: bool,
    *,
    relax: bool,
    mmu_seq: int,
) -> int:
    """The prot ``user_mem_abort`` builds (read; write if ``writable``;
    execute only for an instruction fetch, FEAT_DIC's default execute not
    modelled; Device for a device pfn), then a permission fault at the
    leaf's own granule relaxes the leaf (``kvm_pgtable_stage2_relax_perms``)
    and anything else maps (``kvm_pgtable_stage2_map``, here
    ``create_pte``)."""
    if relax:
        return mmu.relax_perms(kvm, ipa, writable, exec_fault, mmu_seq)
    desc = pfn_pte(pfn, PAGE_S2_DEVICE if device else PAGE_S2)
    level = 0
    if size == PMD_SIZE:
        desc, level = pmd_mkhuge(desc), 1
    elif size == PUD_SIZE:
        desc, level = pmd_mkhuge(desc), 2
    if writable:
        desc = s2_mkwrite(desc)
    if exec_fault:
        desc = s2_mkexec(desc)
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "user_mem_abort",
            version=kvm.arch.handler,
            ipa=hex(ipa),
            pfn=hex(pfn),
            level=level,
            desc=describe(desc),
        )
    return kvm.hooks.create_pte(kvm=kvm, gpa=ipa, pte=desc, level=level, mmu_seq=mmu_seq)  # type: ignore[no-any-return]


def transparent_hugepage_adjust(
    kvm: Kvm, memslot: Memslot, hva: int, pfn: int, ipa: int, *, move_ref: bool
) -> tuple[int, int, int]:
    """``transparent_hugepage_adjust``: a 2M block when the memslot allows
    one here and the host maps a THP.  5.13 (``move_ref``):
    ``kvm_is_transparent_hugepage`` and ``fault_supports_stage2_huge_mapping``,
    then the reference moves from the subpage to the head with the v5.6
    helpers.  6.13: ``fault_supports_stage2_huge_mapping``, then
    ``get_user_mapping_size`` (a host leaf of 2M or more), no reference
    moved; its -EAGAIN is returned as the size.  Returns (size, pfn, ipa)."""
    if move_ref:
        if not (
            kvm_is_transparent_hugepage(kvm, pfn, hva)
            and fault_supports_stage2_huge_mapping(memslot, hva, PMD_SIZE)
        ):
            return PAGE_SIZE, pfn, ipa
    else:
        if not fault_supports_stage2_huge_mapping(memslot, hva, PMD_SIZE):
            return PAGE_SIZE, pfn, ipa
        sz = get_user_mapping_size(kvm, hva)
        if sz < 0:
            if kvm.tracer.enabled:
                kvm.tracer.emit("get_user_mapping_size", hva=hex(hva), ret="-EAGAIN")
            return sz, pfn, ipa
        if sz < PMD_SIZE:
            return PAGE_SIZE, pfn, ipa
    ipa &= PMD_MASK
    head = pfn & ~(PTRS_PER_PMD - 1)
    if move_ref:
        kvm_release_pfn_clean_v5_6(kvm.phys, pfn)
        kvm_get_pfn_v5_6(kvm.phys, head)
    if kvm.tracer.enabled:
        kvm.tracer.emit("transparent_hugepage_adjust", pfn=hex(head), ipa=hex(ipa))
    return PMD_SIZE, head, ipa
