"""get_user_pages and friends, ``follow_pfn``/``follow_pte`` and
``fixup_user_fault`` (mm/gup.c, mm/memory.c, arch gup-fast; v4.16).

Return conventions are the kernel's, exactly (kernel-notes §F.1-F.5):
``__get_user_pages_fast`` returns 0..nr and never a negative value;
``get_user_pages_fast`` with nothing pinned returns a negative errno, never 0;
``fixup_user_fault`` returns only 0, -EFAULT or -ENOMEM.

``pages`` arguments are Python lists the functions append page pointers
(pfns of the exact subpage) to, one per page counted in the return value.
References are taken through ``PhysMem.get_page`` and friends, so they show
up in ``PhysMem.others_refs()`` until the caller puts them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import define

from kvmsim.cmodel import BUG_ON, EBUSY, EEXIST, EFAULT, EHWPOISON, EINVAL, ENOENT, ENOMEM, OutParam
from kvmsim.host.constants import (
    FAULT_FLAG_ALLOW_RETRY,
    FAULT_FLAG_RETRY_NOWAIT,
    FAULT_FLAG_TRIED,
    FAULT_FLAG_WRITE,
    FOLL_DUMP,
    FOLL_FORCE,
    FOLL_GET,
    FOLL_HWPOISON,
    FOLL_NOWAIT,
    FOLL_TOUCH,
    FOLL_TRIED,
    FOLL_WRITE,
    PG_REFERENCED,
    PTE_DIRTY,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_PROTNONE,
    PTE_SPECIAL,
    PTE_WRITE,
    PTE_YOUNG,
    TASK_SIZE,
    THP_SHIFT,
    VM_FAULT_ERROR,
    VM_FAULT_HWPOISON,
    VM_FAULT_HWPOISON_LARGE,
    VM_FAULT_OOM,
    VM_FAULT_RETRY,
    VM_FAULT_SIGBUS,
    VM_FAULT_SIGSEGV,
    VM_FAULT_WRITE,
    VM_HUGETLB,
    VM_IO,
    VM_MAYREAD,
    VM_PFNMAP,
    VM_READ,
    VM_WRITE,
)
from kvmsim.host.fault import handle_mm_fault, hugetlb_fault, vm_normal_page
from kvmsim.host.vma import is_cow_mapping

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm
    from kvmsim.host.vma import Vma

__all__ = [
    "FOLL_COW",
    "FOLL_NUMA",
    "FollowPfnmapArgs",
    "__get_user_pages",
    "__get_user_pages_fast",
    "check_vma_flags",
    "faultin_page",
    "fixup_user_fault",
    "follow_hugetlb_page",
    "follow_page_mask",
    "follow_pfn",
    "follow_pfnmap_end",
    "follow_pfnmap_start",
    "follow_pte",
    "get_user_pages",
    "get_user_pages_fast",
    "get_user_pages_locked",
    "get_user_pages_unlocked",
    "vm_fault_to_errno",
]

FOLL_NUMA = 0x200  # internal: do not follow protnone (NUMA hinting) PTEs
GUP_MULTI_RETRY = (5, 7)  # 4426e945df58: gup retries keep FAULT_FLAG_ALLOW_RETRY
# follow_hugetlb_page keeps *locked under RETRY_NOWAIT from v5.0: "mm/hugetlb.c: teach
# follow_hugetlb_page() to handle FOLL_NOWAIT" (absent in 4.19, present in 5.0.1; §U.4)
HUGETLB_NOWAIT_LOCKED = (5, 0)
FOLL_COW = 0x4000  # internal: a COW was broken for a FOLL_FORCE write

_FAST_BAD = PTE_PROTNONE | PTE_SPECIAL


# ---------------------------------------------------------------------- gup-fast


def __get_user_pages_fast(mm: Mm, start: int, nr_pages: int, write: int, pages: list[Any]) -> int:
    """``__get_user_pages_fast``: walk the page tables without faulting,
    without ``mmap_sem`` and without looking at the vma.

    Stops at the first entry that is not present, protnone, not writable
    for a write, or special.  One reference per page on the compound head
    (``page_cache_get_speculative``, which fails on a count of 0); the page
    appended is the exact subpage; ``SetPageReferenced``.  Returns 0..nr.
    """
    phys = mm.phys
    pgt = mm.pgtable
    ps = mm.page_shift
    start &= ~((1 << ps) - 1)
    end = start + (nr_pages << ps)
    nr = 0
    if nr_pages > 0 and end <= TASK_SIZE:
        ptes = pgt.ptes
        flags = phys.flags
        need = PTE_PRESENT | PTE_WRITE if write else PTE_PRESENT
        addr = start
        while nr < nr_pages:
            pte = ptes.get(addr >> ps)
            if pte is None:
                leaf = pgt.get_huge(addr) if pgt.shifts else None
                if leaf is None:
                    break
                shift, e = leaf
                if e & need != need or e & _FAST_BAD:
                    break
                head = e >> PTE_PFN_SHIFT
                off = (addr & ((1 << shift) - 1)) >> ps
                n = min(nr_pages - nr, (1 << (shift - ps)) - off)
                if not phys.page_cache_add_speculative(head, n):
                    break
                pages.extend(range(head + off, head + off + n))
                phys.SetPageReferenced(head)
                nr += n
                addr += n << ps
                continue
            if pte & need != need or pte & _FAST_BAD:
                break
            pfn = pte >> PTE_PFN_SHIFT
            if not 0 <= pfn < phys.ram_pages:
                break
            head = phys.compound_head(pfn)
            if not phys.page_cache_get_speculative(head):
                break
            flags[head] = flags.get(head, 0) | PG_REFERENCED
            pages.append(pfn)
            nr += 1
            addr += 1 << ps
    tr = mm.tracer
    if tr.enabled:
        tr.emit("__get_user_pages_fast", start=start, nr_pages=nr_pages, write=bool(write), ret=nr)
    if nr and (mm.race_points or mm.sched is not None):
        # irqs off holds back only the TLB-flush IPI (and so the freeing):
        # another CPU's invalidate_range_start, PTE clear and
        # invalidate_range_end can all run while the pages are pinned
        mm.fire_point("gup_pinned")
    return nr


def get_user_pages_fast(mm: Mm, start: int, nr_pages: int, write: int, pages: list[Any]) -> int:
    """``get_user_pages_fast``: the fast walk, then ``get_user_pages_unlocked``
    for the rest with FOLL_WRITE if ``write`` and no FOLL_HWPOISON.

    ``nr_pages <= 0`` → 0; bad range → -EFAULT.  With nothing pinned the
    result is the slow path's (negative errno, never 0 for a plain fault).
    """
    ps = mm.page_shift
    start &= ~((1 << ps) - 1)
    if nr_pages <= 0:
        return 0
    if start + (nr_pages << ps) > TASK_SIZE:
        return -EFAULT
    nr = __get_user_pages_fast(mm, start, nr_pages, write, pages)
    ret = nr
    if nr < nr_pages:
        ret = get_user_pages_unlocked(
            mm, start + (nr << ps), nr_pages - nr, pages, FOLL_WRITE if write else 0
        )
        if nr > 0:
            ret = nr if ret < 0 else ret + nr
    tr = mm.tracer
    if tr.enabled:
        tr.emit("get_user_pages_fast", start=start, nr_pages=nr_pages, fast=nr, ret=ret)
    return ret


# ---------------------------------------------------------------------- slow gup


def get_user_pages_unlocked(
    mm: Mm, start: int, nr_pages: int, pages: list[Any] | None, gup_flags: int
) -> int:
    """``get_user_pages_unlocked``: takes and drops ``mmap_sem`` (as
    ``mm.current``); a VM_FAULT_RETRY re-takes it and retries that page
    with FOLL_TRIED."""
    mm.mmap_sem.down_read(mm.current)
    locked = [True]
    ret = _get_user_pages_locked(mm, start, nr_pages, pages, gup_flags | FOLL_TOUCH, locked, False)
    if locked[0]:
        mm.mmap_sem.up_read(mm.current)
    tr = mm.tracer
    if tr.enabled:
        tr.emit("get_user_pages_unlocked", start=start, nr_pages=nr_pages, flags=gup_flags, ret=ret)
    return ret


def get_user_pages(
    mm: Mm, start: int, nr_pages: int, gup_flags: int, pages: list[Any] | None
) -> int:
    """``get_user_pages``: the caller holds ``mmap_sem`` and it is never dropped.

    ``pages=None`` takes no references (no FOLL_GET)."""
    ret = _get_user_pages_locked(mm, start, nr_pages, pages, gup_flags | FOLL_TOUCH, None, False)
    tr = mm.tracer
    if tr.enabled:
        tr.emit("get_user_pages", start=start, nr_pages=nr_pages, flags=gup_flags, ret=ret)
    return ret


def get_user_pages_locked(
    mm: Mm, start: int, nr_pages: int, gup_flags: int, pages: list[Any] | None, locked: OutParam
) -> int:
    """``get_user_pages_locked``: the caller holds ``mmap_sem``; on return
    ``*locked`` says whether it still does."""
    box = [bool(locked.get())]
    ret = _get_user_pages_locked(mm, start, nr_pages, pages, gup_flags | FOLL_TOUCH, box, True)
    locked.set(1 if box[0] else 0)
    return ret


def _get_user_pages_locked(
    mm: Mm,
    start: int,
    nr_pages: int,
    pages: list[Any] | None,
    flags: int,
    locked: list[bool] | None,
    notify_drop: bool,
) -> int:
    """``__get_user_pages_locked``.  After a VM_FAULT_RETRY the page is
    retried with FOLL_TRIED: once, without FAULT_FLAG_ALLOW_RETRY, before
    v5.7; from v5.7 (4426e945df58) with ``locked`` passed on, so the retry
    may wait again, until it no longer drops ``mmap_sem`` (kernel-notes §U.4)."""
    if locked is not None:
        BUG_ON(not locked[0], "__get_user_pages_locked: *locked == 0 on entry")
    if pages is not None:
        flags |= FOLL_GET
    ps = mm.page_shift
    pages_done = 0
    lock_dropped = False
    while True:
        ret = __get_user_pages(mm, start, nr_pages, flags, pages, locked)
        if locked is None:
            return ret
        if ret > 0:
            nr_pages -= ret
            pages_done += ret
            if not nr_pages:
                break
        if locked[0]:
            if not pages_done:
                pages_done = ret
            break
        # VM_FAULT_RETRY: the fault handler dropped mmap_sem.
        start += ret << ps
        lock_dropped = True
        multi = mm.linux >= GUP_MULTI_RETRY
        while True:
            locked[0] = True
            mm.mmap_sem.down_read(mm.current)
            if mm.tracer.enabled:
                mm.tracer.emit("gup_retry", address=start)
            again = locked if multi else None
            ret = __get_user_pages(mm, start, 1, flags | FOLL_TRIED, pages, again)
            if locked[0]:
                break
            # v5.7+: the retry dropped mmap_sem again: retry until it does not
        if ret != 1:
            BUG_ON(ret > 1, "__get_user_pages returned more than asked")
            if not pages_done:
                pages_done = ret
            break
        nr_pages -= 1
        pages_done += 1
        if not nr_pages:
            break
        start += 1 << ps
    if notify_drop and lock_dropped and locked[0]:
        mm.mmap_sem.up_read(mm.current)
        locked[0] = False
    return pages_done


def check_vma_flags(vma: Vma, gup_flags: int) -> int:
    """``check_vma_flags``: VM_IO|VM_PFNMAP is rejected first (-EFAULT);
    then a write without VM_WRITE (unless FOLL_FORCE on a COW mapping) and a
    read without VM_READ (unless FOLL_FORCE and VM_MAYREAD)."""
    vm_flags = vma.flags
    if vm_flags & (VM_IO | VM_PFNMAP):
        return -EFAULT
    if gup_flags & FOLL_WRITE:
        if not vm_flags & VM_WRITE:
            if not gup_flags & FOLL_FORCE:
                return -EFAULT
            if not is_cow_mapping(vm_flags):
                return -EFAULT
    elif not vm_flags & VM_READ:
        if not gup_flags & FOLL_FORCE:
            return -EFAULT
        if not vm_flags & VM_MAYREAD:
            return -EFAULT
    return 0


def vm_fault_to_errno(vm_fault: int, foll_flags: int) -> int:
    """``vm_fault_to_errno``: OOM → -ENOMEM; HWPOISON → -EHWPOISON only with
    FOLL_HWPOISON, else -EFAULT; SIGBUS/SIGSEGV → -EFAULT; otherwise 0."""
    if vm_fault & VM_FAULT_OOM:
        return -ENOMEM
    if vm_fault & (VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE):
        return -EHWPOISON if foll_flags & FOLL_HWPOISON else -EFAULT
    if vm_fault & (VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV):
        return -EFAULT
    return 0


def __get_user_pages(
    mm: Mm,
    start: int,
    nr_pages: int,
    gup_flags: int,
    pages: list[Any] | None,
    nonblocking: list[bool] | None,
) -> int:
    """``__get_user_pages``: per page, vma checks, ``follow_page_mask``, and
    ``faultin_page`` when nothing usable is mapped.

    Returns the number of pages done, or (when none) a negative errno; 0
    when a VM_FAULT_RETRY (-EBUSY from faultin_page) came first.
    """
    if not nr_pages:
        return 0
    tr = mm.tracer
    ps = mm.page_shift
    if not gup_flags & FOLL_FORCE:
        gup_flags |= FOLL_NUMA
    i = 0
    vma: Vma | None = None
    while nr_pages:
        if vma is None or start >= vma.end:
            vma = mm.find_extend_vma(start)
            if vma is None:
                if tr.enabled:
                    tr.emit("__get_user_pages", address=start, error="no vma", ret=i or -EFAULT)
                return i or -EFAULT
            err = check_vma_flags(vma, gup_flags)
            if err:
                if tr.enabled:
                    tr.emit(
                        "check_vma_flags",
                        address=start,
                        vm_flags=vma.flags,
                        gup_flags=gup_flags,
                        ret=err,
                    )
                return i or err
            if vma.flags & VM_HUGETLB:
                i, nr_pages, start = follow_hugetlb_page(
                    mm, vma, pages, start, nr_pages, i, gup_flags, nonblocking
                )
                continue
        foll_flags = gup_flags
        page_mask = 0
        while True:
            page, page_mask = follow_page_mask(mm, vma, start, foll_flags)
            if page is None:
                ret, foll_flags = faultin_page(mm, vma, start, foll_flags, nonblocking)
                if ret == 0:
                    continue
                if ret in (-EFAULT, -ENOMEM, -EHWPOISON):
                    return i or ret
                if ret == -EBUSY:
                    return i
                if ret == -ENOENT:
                    break
                BUG_ON(True, f"faultin_page returned {ret}")
            assert page is not None
            if page == -EEXIST:
                # A proper PTE with no struct page behind it: skip the page.
                break
            if page < 0:
                return i or page
            if pages is not None:
                pages.append(page)
                page_mask = 0
            break
        page_increm = 1 + (~(start >> ps) & page_mask)
        if page_increm > nr_pages:
            page_increm = nr_pages
        i += page_increm
        start += page_increm << ps
        nr_pages -= page_increm
    return i


def follow_page_mask(mm: Mm, vma: Vma, address: int, flags: int) -> tuple[int | None, int]:
    """``follow_page_mask``: (page, page_mask).  page is a pfn, None (NULL:
    fault it in) or a negative errno (``ERR_PTR``: -EEXIST for a PTE without a
    struct page, -EFAULT)."""
    phys = mm.phys
    pgt = mm.pgtable
    ps = mm.page_shift
    pte = pgt.ptes.get(address >> ps)
    if pte is None:
        d = pgt.huge.get(THP_SHIFT) if pgt.shifts else None
        e = d.get(address >> THP_SHIFT) if d else None
        if e is not None:
            return _follow_trans_huge_pmd(mm, vma, address, e, flags)
        # no_page_table
        if flags & FOLL_DUMP and (vma.ops is None or vma.ops.fault is None):
            return -EFAULT, 0
        return None, 0
    # follow_page_pte
    if not pte & PTE_PRESENT:
        return None, 0
    if flags & FOLL_NUMA and pte & PTE_PROTNONE:
        return None, 0
    if flags & FOLL_WRITE and not _can_follow_write(pte, flags):
        return None, 0
    pfn = pte >> PTE_PFN_SHIFT
    page = vm_normal_page(mm, vma, pte)
    if page is None:
        if flags & FOLL_DUMP:
            return -EFAULT, 0
        if phys.is_zero_pfn(pfn):
            page = pfn
        else:
            # follow_pfn_pte
            if flags & FOLL_GET:
                return -EFAULT, 0
            if flags & FOLL_TOUCH:
                new = pte | PTE_YOUNG | (PTE_DIRTY if flags & FOLL_WRITE else 0)
                if new != pte:
                    pgt.ptes[address >> ps] = new
            return -EEXIST, 0
    if flags & FOLL_GET:
        phys.get_page(page)
        if mm.race_points or mm.sched is not None:
            mm.fire_point("gup_pinned")
    if flags & FOLL_TOUCH:
        if flags & FOLL_WRITE and not pte & PTE_DIRTY and not phys.PageDirty(page):
            phys.SetPageDirty(page)
        phys.mark_page_accessed(page)
    return page, 0


def _can_follow_write(e: int, flags: int) -> bool:
    """``can_follow_write_pte`` / ``can_follow_write_pmd``."""
    return bool(e & PTE_WRITE) or bool(flags & FOLL_FORCE and flags & FOLL_COW and e & PTE_DIRTY)


def _follow_trans_huge_pmd(
    mm: Mm, vma: Vma, address: int, e: int, flags: int
) -> tuple[int | None, int]:
    """``follow_trans_huge_pmd``: the subpage of a THP (or of the huge zero
    page, an ordinary refcounted page: kernel-notes §L.1), referenced under FOLL_GET."""
    phys = mm.phys
    if not e & PTE_PRESENT:
        return None, 0
    if flags & FOLL_WRITE and not _can_follow_write(e, flags):
        return None, 0
    head = e >> PTE_PFN_SHIFT
    if flags & FOLL_DUMP and head == phys.huge_zero_pfn:
        return -EFAULT, 0
    if flags & FOLL_NUMA and e & PTE_PROTNONE:
        return None, 0
    if flags & FOLL_TOUCH:
        new = e | PTE_YOUNG | (PTE_DIRTY if flags & FOLL_WRITE else 0)
        if new != e:
            mm.pgtable.set_huge(address, THP_SHIFT, new)
    ps = mm.page_shift
    page = head + ((address & ((1 << THP_SHIFT) - 1)) >> ps)
    if flags & FOLL_GET:
        phys.get_page(page)
        if mm.race_points or mm.sched is not None:
            mm.fire_point("gup_pinned")
    return page, (1 << (THP_SHIFT - ps)) - 1


def _gup_fault_flags(flags: int, nonblocking: list[bool] | None) -> int:
    """The fault flags gup's faults use (``faultin_page`` and
    ``follow_hugetlb_page`` build them the same way): FOLL_WRITE → WRITE;
    a ``nonblocking`` caller allows a retry; FOLL_NOWAIT asks for a retry
    without dropping mmap_sem; FOLL_TRIED marks the second attempt."""
    fault_flags = 0
    if flags & FOLL_WRITE:
        fault_flags |= FAULT_FLAG_WRITE
    if nonblocking is not None:
        fault_flags |= FAULT_FLAG_ALLOW_RETRY
    if flags & FOLL_NOWAIT:
        fault_flags |= FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_RETRY_NOWAIT
    if flags & FOLL_TRIED:
        fault_flags |= FAULT_FLAG_TRIED
    return fault_flags


def faultin_page(
    mm: Mm, vma: Vma, address: int, flags: int, nonblocking: list[bool] | None
) -> tuple[int, int]:
    """``faultin_page`` → (0 | -errno, updated gup flags).

    FOLL_NOWAIT gives ALLOW_RETRY|RETRY_NOWAIT: a VM_FAULT_RETRY then comes
    back without ``mmap_sem`` dropped.  VM_FAULT_RETRY → -EBUSY (and
    ``*nonblocking = 0`` unless RETRY_NOWAIT kept the lock); VM_FAULT_ERROR →
    ``vm_fault_to_errno``.
    """
    fault_flags = _gup_fault_flags(flags, nonblocking)
    ret = handle_mm_fault(mm, vma, address, fault_flags)
    tr = mm.tracer
    if ret & VM_FAULT_ERROR:
        err = vm_fault_to_errno(ret, flags)
        if tr.enabled:
            tr.emit("faultin_page", address=address, fault=ret, ret=err)
        BUG_ON(not err, "faultin_page: VM_FAULT_ERROR without an errno")
        return err, flags
    if ret & VM_FAULT_RETRY:
        # with RETRY_NOWAIT the fault kept mmap_sem: the caller still holds it
        if nonblocking is not None and not fault_flags & FAULT_FLAG_RETRY_NOWAIT:
            nonblocking[0] = False
        if tr.enabled:
            tr.emit("faultin_page", address=address, fault=ret, ret=-EBUSY)
        return -EBUSY, flags
    if ret & VM_FAULT_WRITE and not vma.flags & VM_WRITE:
        flags |= FOLL_COW
    return 0, flags


def follow_hugetlb_page(
    mm: Mm,
    vma: Vma,
    pages: list[Any] | None,
    vaddr: int,
    nr_pages: int,
    i: int,
    flags: int,
    nonblocking: list[bool] | None,
) -> tuple[int, int, int]:
    """``follow_hugetlb_page`` → (i or errno, remaining pages, next address).

    Faults in absent, non-present or (for a write) read-only leaves through
    ``hugetlb_fault``; then one reference per subpage, on the head."""
    phys = mm.phys
    ps = mm.page_shift
    hs = vma.huge_shift
    hmask = (1 << hs) - 1
    err = -EFAULT
    remainder = nr_pages
    while vaddr < vma.end and remainder:
        d = mm.pgtable.huge.get(hs)
        e = d.get(vaddr >> hs) if d is not None else None
        if e is None or not e & PTE_PRESENT or (flags & FOLL_WRITE and not e & PTE_WRITE):
            fault_flags = _gup_fault_flags(flags, nonblocking)
            ret = hugetlb_fault(mm, vma, vaddr, fault_flags)
            if mm.tracer.enabled:
                mm.tracer.emit("hugetlb_fault", address=vaddr, flags=fault_flags, result=ret)
            if ret & VM_FAULT_ERROR:
                err = vm_fault_to_errno(ret, flags)
                remainder = 0
                break
            if ret & VM_FAULT_RETRY:
                # v4.16 clears *nonblocking even when RETRY_NOWAIT kept mmap_sem
                if nonblocking is not None and not (
                    fault_flags & FAULT_FLAG_RETRY_NOWAIT and mm.linux >= HUGETLB_NOWAIT_LOCKED
                ):
                    nonblocking[0] = False
                return i, 0, vaddr
            continue
        head = e >> PTE_PFN_SHIFT
        off = (vaddr & hmask) >> ps
        per = 1 << (hs - ps)
        while True:
            if pages is not None:
                pages.append(head + off)
                phys.get_page(head)
                if mm.race_points or mm.sched is not None:
                    mm.fire_point("gup_pinned")
            vaddr += 1 << ps
            off += 1
            remainder -= 1
            i += 1
            if not (vaddr < vma.end and remainder and off < per):
                break
    return (i if i else err), remainder, vaddr


# ---------------------------------------------------------------------- follow_pfn


def follow_pte(mm: Mm, address: int) -> tuple[int, int | None]:
    """``follow_pte(mm, address, &ptep, &ptl)`` → (0, pte) or (-EINVAL, None).

    -EINVAL when no entry exists, when the address is covered by a huge
    leaf (no pmd pointer requested), or when the PTE is not present."""
    pte = mm.pgtable.ptes.get(address >> mm.page_shift)
    if pte is None or not pte & PTE_PRESENT:
        return -EINVAL, None
    return 0, pte


def follow_pfn(vma: Vma, address: int, pfn: OutParam) -> int:
    """``follow_pfn``: -EINVAL unless VM_IO|VM_PFNMAP or without a present
    PTE; ignores write permission; takes no reference."""
    mm = vma.mm
    assert mm is not None
    tr = mm.tracer
    if not vma.flags & (VM_IO | VM_PFNMAP):
        if tr.enabled:
            tr.emit("follow_pfn", address=address, ret=-EINVAL, why="not VM_IO|VM_PFNMAP")
        return -EINVAL
    ret, pte = follow_pte(mm, address)
    if ret:
        if tr.enabled:
            tr.emit("follow_pfn", address=address, ret=ret, why="no present pte")
        return ret
    assert pte is not None
    pfn.set(pte >> PTE_PFN_SHIFT)
    if tr.enabled:
        tr.emit(
            "follow_pfn",
            address=address,
            ret=0,
            pfn=pte >> PTE_PFN_SHIFT,
            pte_write=bool(pte & PTE_WRITE),
        )
    return 0


# ---------------------------------------------------------------------- fixup_user_fault


def fixup_user_fault(mm: Mm, address: int, fault_flags: int, unlocked: OutParam | None) -> int:
    """``fixup_user_fault(tsk, mm, address, fault_flags, unlocked)`` (kernel-notes §F.5).

    Caller holds ``mmap_sem`` for read; it is held again on every return.
    With ``unlocked`` (not NULL) the handler may retry: then ``*unlocked =
    true`` and the fault is retried once with FAULT_FLAG_TRIED.  Returns 0,
    -EFAULT (no vma, access not permitted, SIGBUS/SIGSEGV/HWPOISON) or -ENOMEM.
    """
    tr = mm.tracer
    if unlocked is not None and unlocked:
        fault_flags |= FAULT_FLAG_ALLOW_RETRY
    did_unlock = False
    while True:
        vma = mm.find_extend_vma(address)
        if vma is None or address < vma.start:
            ret = -EFAULT
            break
        write = fault_flags & FAULT_FLAG_WRITE
        if (write and not vma.flags & VM_WRITE) or (not write and not vma.flags & VM_READ):
            ret = -EFAULT  # vma_permits_fault
            break
        fret = handle_mm_fault(mm, vma, address, fault_flags)
        if fret & VM_FAULT_ERROR:
            ret = vm_fault_to_errno(fret, 0)
            BUG_ON(not ret, "fixup_user_fault: VM_FAULT_ERROR without an errno")
            break
        if fret & VM_FAULT_RETRY:
            if fault_flags & FAULT_FLAG_RETRY_NOWAIT:
                BUG_ON(True, "fixup_user_fault: RETRY_NOWAIT is not supported")
            mm.mmap_sem.down_read(mm.current)
            if not fault_flags & FAULT_FLAG_TRIED:
                assert unlocked is not None
                unlocked.set(True)
                did_unlock = True
                fault_flags &= ~FAULT_FLAG_ALLOW_RETRY
                fault_flags |= FAULT_FLAG_TRIED
                continue
        ret = 0
        break
    if tr.enabled:
        tr.emit(
            "fixup_user_fault",
            address=address,
            fault_flags=fault_flags,
            ret=ret,
            unlocked=did_unlock,
        )
    return ret


# ---------------------------------------------------------------------- follow_pfnmap


@define(slots=True)
class FollowPfnmapArgs:
    """``struct follow_pfnmap_args`` (v6.12, kernel-notes §L.7): inputs ``vma``/``address``,
    outputs ``pfn``, ``pgprot``, ``writable``, ``special``; ``lock`` held
    between start and end."""

    vma: Vma
    address: int
    pfn: int = 0
    pgprot: int = 0
    writable: bool = False
    special: bool = False
    lock: bool = False


def follow_pfnmap_start(args: FollowPfnmapArgs) -> int:
    """``follow_pfnmap_start``: 0 (lock held, outputs valid) or -EINVAL.

    Huge leaves resolve to the exact base pfn of the address."""
    vma = args.vma
    mm = vma.mm
    assert mm is not None
    addr = args.address
    if addr < vma.start or addr >= vma.end or not vma.flags & (VM_IO | VM_PFNMAP):
        return -EINVAL
    e, shift = mm.pgtable.find_linux_pte(addr)
    if e is None or not e & PTE_PRESENT:
        return -EINVAL
    pfn = e >> PTE_PFN_SHIFT
    if shift:
        pfn += (addr & ((1 << shift) - 1)) >> mm.page_shift
    args.pfn = pfn
    args.pgprot = e & ((1 << PTE_PFN_SHIFT) - 1)
    args.writable = bool(e & PTE_WRITE)
    args.special = bool(e & PTE_SPECIAL)
    args.lock = True
    if mm.tracer.enabled:
        mm.tracer.emit("follow_pfnmap_start", address=addr, pfn=pfn, writable=args.writable)
    return 0


def follow_pfnmap_end(args: FollowPfnmapArgs) -> None:
    """``follow_pfnmap_end``: drop the lock taken by a successful start."""
    BUG_ON(not args.lock, "follow_pfnmap_end without a successful start")
    args.lock = False
