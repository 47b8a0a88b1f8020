"""The page fault handler: ``handle_mm_fault`` and what it calls
(mm/memory.c, mm/huge_memory.c, mm/hugetlb.c, mm/filemap.c; v4.16).

Entered with ``mmap_sem`` held for read by ``mm.current``.  A handler that
returns VM_FAULT_RETRY with FAULT_FLAG_ALLOW_RETRY set and RETRY_NOWAIT
clear has released ``mmap_sem`` (``lock_page_or_retry``); right after that
``mm.fire_point("mmap_sem_dropped")`` lets the runner inject a host event.

Kept lean: dict lookups and int arithmetic, no objects except the
``VmFault`` handed to a ``->fault`` handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmsim import footprint
from kvmsim.host.constants import (
    FAULT_FLAG_ALLOW_RETRY,
    FAULT_FLAG_RETRY_NOWAIT,
    FAULT_FLAG_TRIED,
    FAULT_FLAG_WRITE,
    PG_ANON,
    PTE_DIRTY,
    PTE_HWPOISON,
    PTE_MIGRATION,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_PROTNONE,
    PTE_SPECIAL,
    PTE_SWAP,
    PTE_WRITE,
    PTE_YOUNG,
    THP_SHIFT,
    VM_EXEC,
    VM_FAULT_DONE_COW,
    VM_FAULT_ERROR,
    VM_FAULT_HWPOISON,
    VM_FAULT_HWPOISON_LARGE,
    VM_FAULT_MAJOR,
    VM_FAULT_NOPAGE,
    VM_FAULT_RETRY,
    VM_FAULT_SIGBUS,
    VM_FAULT_SIGSEGV,
    VM_FAULT_WRITE,
    VM_HUGEPAGE,
    VM_HUGETLB,
    VM_MAYSHARE,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
)
from kvmsim.host.pte import PTE_BITS_MASK
from kvmsim.host.userfaultfd import VM_UFFD_MINOR, VM_UFFD_MISSING, handle_userfault
from kvmsim.host.vma import VmFault

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm
    from kvmsim.host.vma import Vma

__all__ = [
    "do_anonymous_page",
    "do_fault",
    "do_wp_page",
    "filemap_fault",
    "handle_mm_fault",
    "hugetlb_fault",
    "lock_page_or_retry",
    "shmem_fault",
    "vm_normal_page",
    "wp_page_copy",
]

_W = PTE_WRITE
_WD = PTE_WRITE | PTE_DIRTY
_DY = PTE_DIRTY | PTE_YOUNG
_ACCESS = VM_READ | VM_WRITE | VM_EXEC
_FAULT_STOP = VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY | VM_FAULT_DONE_COW


def lock_page_or_retry(mm: Mm, flags: int) -> bool:
    """``lock_page_or_retry`` on a page that is locked (I/O in flight).

    With FAULT_FLAG_ALLOW_RETRY it returns False (the fault must return
    VM_FAULT_RETRY), after dropping ``mmap_sem`` and waiting unless
    RETRY_NOWAIT is set.  Without it, it waits for the page and returns True.
    From v5.7 a retried fault (FAULT_FLAG_TRIED) waits as without it
    (``fault_flag_allow_retry_first``, kernel-notes §U.4).
    """
    if flags & FAULT_FLAG_ALLOW_RETRY and not (flags & FAULT_FLAG_TRIED and mm.linux >= (5, 7)):
        if not flags & FAULT_FLAG_RETRY_NOWAIT:
            mm.mmap_sem.up_read(mm.current)
        return False
    return True


def wait_migration(mm: Mm, pending: Callable[[], bool]) -> None:
    """``migration_entry_wait`` (wait on the locked page) in a concurrent run:
    not runnable while ``pending()``; the migrating task wakes the waiters
    when it has installed the new entries."""
    footprint.opaque()  # not described by the recorders: POR treats it as touching all
    while pending():
        mm.sched.block(mm.migration_wait)


def handle_mm_fault(mm: Mm, vma: Vma, address: int, flags: int) -> int:
    """``handle_mm_fault(vma, address, flags)`` → VM_FAULT_* bits.

    A write fault on a vma without VM_WRITE, or any fault on a PROT_NONE
    vma, is VM_FAULT_SIGSEGV (the callers' access checks, folded in here).
    """
    if footprint.REC is not None:  # (checked here: a call per host fault otherwise)
        footprint.opaque()  # not described by the recorders: POR treats it as touching all
    vf = vma.flags
    if flags & FAULT_FLAG_WRITE:
        if not vf & VM_WRITE:
            ret = VM_FAULT_SIGSEGV
        elif vf & VM_HUGETLB:
            ret = hugetlb_fault(mm, vma, address, flags)
        else:
            ret = _handle_pte_fault(mm, vma, address, flags)
    elif not vf & _ACCESS:
        ret = VM_FAULT_SIGSEGV
    elif vf & VM_HUGETLB:
        ret = hugetlb_fault(mm, vma, address, flags)
    else:
        ret = _handle_pte_fault(mm, vma, address, flags)
    tr = mm.tracer
    if tr.enabled:
        tr.emit("handle_mm_fault", address=address, flags=flags, vm_flags=vf, result=ret)
    if (
        ret & VM_FAULT_RETRY
        and flags & FAULT_FLAG_ALLOW_RETRY
        and not flags & FAULT_FLAG_RETRY_NOWAIT
    ):
        mm.fire_point("mmap_sem_dropped")
    return ret


def _handle_pte_fault(mm: Mm, vma: Vma, address: int, flags: int) -> int:
    """``__handle_mm_fault`` → ``handle_pte_fault`` (and the THP PMD cases)."""
    pgt = mm.pgtable
    ps = mm.page_shift
    vpn = address >> ps
    pte = pgt.ptes.get(vpn)
    if pte is None:
        if vma.flags & VM_HUGEPAGE:
            if vma.ops is None:
                if not vma.flags & VM_SHARED:
                    ret = _thp_fault(mm, vma, address, flags)
                    if ret >= 0:
                        return ret
            elif pgt.shifts:
                ret = _file_thp_pmd_fault(mm, vma, address, flags)
                if ret >= 0:
                    return ret
        if vma.ops is None:
            return do_anonymous_page(mm, vma, address, flags)
        return do_fault(mm, vma, address, flags)
    if not pte & PTE_PRESENT:
        if pte & PTE_HWPOISON:
            return VM_FAULT_HWPOISON
        if pte & PTE_MIGRATION:
            if mm.sched is not None:
                # migration_entry_wait in a concurrent run: wait on the page
                # until remove_migration_ptes replaced the entry, then retry
                wait_migration(mm, lambda: bool((pgt.ptes.get(vpn) or 0) & PTE_MIGRATION))
                return 0
            # migration_entry_wait: migration is atomic in a sequential run,
            # so it has finished; the entry is replaced as
            # remove_migration_ptes would.
            pgt.ptes[vpn] = (pte & ~PTE_MIGRATION) | PTE_PRESENT
            return 0
        if pte & PTE_SWAP:
            return do_swap_page(mm, vma, address, flags)
        return VM_FAULT_SIGBUS
    if pte & PTE_PROTNONE and vma.flags & _ACCESS:
        # do_numa_page: restore the vma's protection.
        pgt.ptes[vpn] = (pte & ~PTE_BITS_MASK) | vma.page_prot | (pte & (PTE_SPECIAL | _DY))
        return 0
    if flags & FAULT_FLAG_WRITE:
        if not pte & PTE_WRITE:
            return do_wp_page(mm, vma, address, pte)
        new = pte | _DY
    else:
        new = pte | PTE_YOUNG
    if new != pte:
        pgt.ptes[vpn] = new
    return 0


def vm_normal_page(mm: Mm, vma: Vma, pte: int) -> int | None:
    """``vm_normal_page``: the pfn of the struct page behind a present PTE, or
    None for a special PTE (remap_pfn_range, vm_insert_pfn, zero page) and
    for a pfn without a struct page."""
    if pte & PTE_SPECIAL:
        return None
    pfn = pte >> PTE_PFN_SHIFT
    if not mm.phys.pfn_valid(pfn):
        return None
    return pfn


# ---------------------------------------------------------------------- anonymous


def do_anonymous_page(mm: Mm, vma: Vma, address: int, flags: int) -> int:
    """``do_anonymous_page``: a read maps the zero page read-only as a special
    PTE (no reference); a write allocates a new page.  A shared vma without
    vm_ops gets VM_FAULT_SIGBUS.  On a userfaultfd MISSING vma both go to
    ``handle_userfault`` instead (a write after allocating, then freeing,
    its page)."""
    if vma.flags & VM_SHARED:
        return VM_FAULT_SIGBUS
    phys = mm.phys
    vpn = address >> mm.page_shift
    if not flags & FAULT_FLAG_WRITE:
        if vma.flags & VM_UFFD_MISSING:
            return handle_userfault(mm, vma, address, flags, VM_UFFD_MISSING)
        mm.pgtable.ptes[vpn] = (phys.zero_pfn << PTE_PFN_SHIFT) | (
            (vma.page_prot | PTE_SPECIAL) & ~PTE_WRITE
        )
        return 0
    page = phys.alloc_pages(0, owner="anon", kind="anon")
    if vma.flags & VM_UFFD_MISSING:
        phys.host_put(page)
        return handle_userfault(mm, vma, address, flags, VM_UFFD_MISSING)
    entry = (page << PTE_PFN_SHIFT) | vma.page_prot | _DY
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE
    mm.pgtable.ptes[vpn] = entry
    return 0


def do_swap_page(mm: Mm, vma: Vma, address: int, flags: int) -> int:
    """``do_swap_page``: reading the page back needs I/O unless it is already
    in the swap cache (``mm.swapcache``)."""
    vpn = address >> mm.page_shift
    ret = 0
    if vpn not in mm.swapcache:
        ret = VM_FAULT_MAJOR
        if not lock_page_or_retry(mm, flags):
            if not flags & FAULT_FLAG_RETRY_NOWAIT:
                mm.swapcache.add(vpn)  # the read completed while we waited
            return VM_FAULT_RETRY | VM_FAULT_MAJOR
    mm.swapcache.discard(vpn)
    page = mm.phys.alloc_pages(0, owner="anon", kind="anon")
    mm.phys.put_contents(page, mm.swap_slots.pop(vpn, {}))  # swap_read_folio
    entry = (page << PTE_PFN_SHIFT) | vma.page_prot
    if flags & FAULT_FLAG_WRITE:
        entry |= _DY | PTE_WRITE
        ret |= VM_FAULT_WRITE
    mm.pgtable.ptes[vpn] = entry
    return ret


# ---------------------------------------------------------------------- write protect


def do_wp_page(mm: Mm, vma: Vma, address: int, pte: int) -> int:
    """``do_wp_page``: write fault on a present read-only PTE."""
    phys = mm.phys
    vpn = address >> mm.page_shift
    page = vm_normal_page(mm, vma, pte)
    shared_w = (vma.flags & (VM_WRITE | VM_SHARED)) == (VM_WRITE | VM_SHARED)
    if page is None:
        if shared_w:
            # wp_pfn_shared → wp_page_reuse (no ->pfn_mkwrite in the model).
            mm.pgtable.ptes[vpn] = pte | _DY | PTE_WRITE
            return VM_FAULT_WRITE
        return wp_page_copy(mm, vma, address, pte)
    if phys.flags.get(phys.compound_head(page), 0) & PG_ANON:
        # reuse_swap_page: one mapping (there is no fork in the model).
        mm.pgtable.ptes[vpn] = pte | _DY | PTE_WRITE
        return VM_FAULT_WRITE
    if shared_w:
        # wp_page_shared: ->page_mkwrite, reuse, then the page is dirtied.
        mm.pgtable.ptes[vpn] = pte | _DY | PTE_WRITE
        phys.SetPageDirty(page)
        return VM_FAULT_WRITE
    return wp_page_copy(mm, vma, address, pte)


def wp_page_copy(mm: Mm, vma: Vma, address: int, pte: int) -> int:
    """``wp_page_copy``: break COW into a new anonymous page.

    Notifier calls (kernel-notes §L.4): start over the page, ``set_pte_at_notify`` →
    ``change_pte``, then (only_)end.  The old mapping's reference is dropped.
    """
    phys = mm.phys
    ps = mm.page_size
    start = address & ~(ps - 1)
    old = pte >> PTE_PFN_SHIFT
    new = phys.alloc_pages(0, owner="anon", kind="anon")
    if phys.pfn_valid(old):
        phys.copy_contents(old, new)  # cow_user_page
    mm.notify_start(start, start + ps)
    entry = (new << PTE_PFN_SHIFT) | vma.page_prot | _DY
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE
    mm.pgtable.ptes[address >> mm.page_shift] = entry
    mm.notify_change_pte(start, entry)
    if not pte & PTE_SPECIAL and phys.pfn_valid(old):
        phys.host_put(old)
    mm.notify_end(start, start + ps)
    if mm.tracer.enabled:
        mm.tracer.emit("wp_page_copy", address=start, old_pfn=old, new_pfn=new)
    return VM_FAULT_WRITE


# ---------------------------------------------------------------------- THP


def _thp_fault(mm: Mm, vma: Vma, address: int, flags: int) -> int:
    """The PMD level of ``__handle_mm_fault`` for a VM_HUGEPAGE anonymous vma.

    Returns -1 when the fault must go to the PTE level (range not fully
    inside the vma, or a PTE table already exists there)."""
    size = 1 << THP_SHIFT
    haddr = address & ~(size - 1)
    if haddr < vma.start or haddr + size > vma.end:
        return -1
    pgt = mm.pgtable
    phys = mm.phys
    d = pgt.huge.get(THP_SHIFT)
    e = d.get(haddr >> THP_SHIFT) if d is not None else None
    write = flags & FAULT_FLAG_WRITE
    if e is None:
        if pgt.ptes_in(haddr, haddr + size):
            return -1  # pmd points to a PTE table (split earlier)
        order = THP_SHIFT - mm.page_shift
        if not write:
            # do_huge_pmd_anonymous_page → set_huge_zero_page
            zero = phys.huge_zero_page(order)
            if vma.flags & VM_UFFD_MISSING:
                return handle_userfault(mm, vma, address, flags, VM_UFFD_MISSING)
            pgt.set_huge(haddr, THP_SHIFT, (zero << PTE_PFN_SHIFT) | (vma.page_prot & ~_W))
            return 0
        page = phys.alloc_pages(order, owner="anon", kind="thp")
        if vma.flags & VM_UFFD_MISSING:
            # __do_huge_pmd_anonymous_page: the new THP is put back first
            phys.host_put(page)
            return handle_userfault(mm, vma, address, flags, VM_UFFD_MISSING)
        entry = (page << PTE_PFN_SHIFT) | vma.page_prot | _DY | PTE_WRITE
        pgt.set_huge(haddr, THP_SHIFT, entry)
        return 0
    if not write:
        pgt.set_huge(haddr, THP_SHIFT, e | PTE_YOUNG)
        return 0
    if e & PTE_WRITE:
        pgt.set_huge(haddr, THP_SHIFT, e | _DY)
        return 0
    head = e >> PTE_PFN_SHIFT
    if head == phys.huge_zero_pfn:
        # do_huge_pmd_wp_page on the huge zero page: a new THP, start/end over 2M.
        page = phys.alloc_pages(THP_SHIFT - mm.page_shift, owner="anon", kind="thp")
        mm.notify_start(haddr, haddr + size)
        pgt.set_huge(haddr, THP_SHIFT, (page << PTE_PFN_SHIFT) | vma.page_prot | _DY | _W)
        mm.notify_end(haddr, haddr + size)
        return VM_FAULT_WRITE
    # anonymous THP mapped once: reuse
    pgt.set_huge(haddr, THP_SHIFT, e | _DY | PTE_WRITE)
    return VM_FAULT_WRITE


def _file_thp_pmd_fault(mm: Mm, vma: Vma, address: int, flags: int) -> int:
    """The PMD level of ``__handle_mm_fault`` (v4.16) on a file vma whose
    PMD already maps a page-cache THP (``do_set_pmd`` put it there):
    ``huge_pmd_set_accessed`` (young, and dirty on a write) when the access
    is allowed; a write through a read-only PMD goes to ``wp_huge_pmd``,
    which for a file vma without ``->huge_fault`` (shmem has none) splits
    the PMD (``__split_huge_pmd``: for a file THP that zaps the PMD) and
    falls back to the PTE level, where ``do_cow_fault`` copies the subpage.

    Returns -1 when the fault goes to the PTE level (no PMD there, or after
    the split)."""
    size = 1 << THP_SHIFT
    haddr = address & ~(size - 1)
    pgt = mm.pgtable
    d = pgt.huge.get(THP_SHIFT)
    e = d.get(haddr >> THP_SHIFT) if d is not None else None
    if e is None or not e & PTE_PRESENT:
        # a file PMD is never a migration or hwpoison entry in the model:
        # memory_failure refuses a non-anonymous THP, migration skips its PMD
        return -1
    if not flags & FAULT_FLAG_WRITE:
        if not e & PTE_YOUNG:
            pgt.set_huge(haddr, THP_SHIFT, e | PTE_YOUNG)
        return 0
    if e & PTE_WRITE:
        if e & _DY != _DY:
            pgt.set_huge(haddr, THP_SHIFT, e | _DY)
        return 0
    mm.split_huge_pmd(vma, haddr)
    return -1


# ---------------------------------------------------------------------- hugetlb


def hugetlb_fault(mm: Mm, vma: Vma, address: int, flags: int) -> int:
    """``hugetlb_fault``: allocate (or find in the hugetlbfs page cache) a
    compound PG_HUGE page on first touch and map it with a huge leaf."""
    hs = vma.huge_shift
    haddr = address & ~((1 << hs) - 1)
    pgt = mm.pgtable
    phys = mm.phys
    d = pgt.huge.get(hs)
    e = d.get(haddr >> hs) if d is not None else None
    write = flags & FAULT_FLAG_WRITE
    if e is not None and not e & PTE_PRESENT:
        if e & PTE_MIGRATION:
            if mm.sched is not None:
                wait_migration(
                    mm, lambda: bool((pgt.huge.get(hs) or {}).get(haddr >> hs, 0) & PTE_MIGRATION)
                )
                return 0
            pgt.set_huge(haddr, hs, (e & ~PTE_MIGRATION) | PTE_PRESENT)
            return 0
        if e & PTE_HWPOISON:
            return VM_FAULT_HWPOISON_LARGE
        return VM_FAULT_SIGBUS
    if e is None:
        return _hugetlb_no_page(mm, vma, haddr, flags)
    if write and not e & PTE_WRITE:
        head = e >> PTE_PFN_SHIFT
        if phys.flags.get(head, 0) & PG_ANON:
            pgt.set_huge(haddr, hs, e | _DY | PTE_WRITE)
            return VM_FAULT_WRITE
        # hugetlb_cow of a page cache page in a private mapping
        new = phys.alloc_pages(hs - mm.page_shift, owner="anon", kind="hugetlb")
        phys.flags[new] |= PG_ANON
        mm.notify_start(haddr, haddr + (1 << hs))
        pgt.set_huge(haddr, hs, (new << PTE_PFN_SHIFT) | vma.page_prot | _DY | PTE_WRITE)
        phys.host_put(head)
        mm.notify_end(haddr, haddr + (1 << hs))
        return VM_FAULT_WRITE
    new_e = e | (_DY if write else PTE_YOUNG)
    if new_e != e:
        pgt.set_huge(haddr, hs, new_e)
    return 0


def _hugetlb_no_page(mm: Mm, vma: Vma, haddr: int, flags: int) -> int:
    """``hugetlb_no_page``."""
    hs = vma.huge_shift
    phys = mm.phys
    order = hs - mm.page_shift
    f = vma.file
    if vma.flags & VM_MAYSHARE and f is not None:
        idx = ((haddr - vma.start) >> hs) + (vma.pgoff >> order)
        page = f.cache.get(idx)
        if page is None:
            if vma.flags & VM_UFFD_MISSING:
                return handle_userfault(mm, vma, haddr, flags, VM_UFFD_MISSING)
            page = phys.alloc_pages(order, owner=f"hugetlbfs:{f.name}", kind="hugetlb")
            f.cache[idx] = page
        elif phys.PageHWPoison(page):
            return VM_FAULT_HWPOISON_LARGE
        elif vma.flags & VM_UFFD_MINOR:
            return handle_userfault(mm, vma, haddr, flags, VM_UFFD_MINOR)
        phys.host_get(page)
    else:
        if vma.flags & VM_UFFD_MISSING:
            return handle_userfault(mm, vma, haddr, flags, VM_UFFD_MISSING)
        page = phys.alloc_pages(order, owner="anon", kind="hugetlb")
        phys.flags[page] |= PG_ANON
    entry = (page << PTE_PFN_SHIFT) | (vma.page_prot & ~PTE_WRITE)
    if (vma.flags & (VM_WRITE | VM_SHARED)) == (VM_WRITE | VM_SHARED):
        entry |= _WD  # make_huge_pte(writable)
    ret = 0
    if flags & FAULT_FLAG_WRITE and not vma.flags & VM_SHARED:
        entry |= _DY | PTE_WRITE  # hugetlb_cow on the new anonymous page: reuse
        ret = VM_FAULT_WRITE
    mm.pgtable.set_huge(haddr, hs, entry)
    return ret


# ---------------------------------------------------------------------- do_fault


def do_fault(mm: Mm, vma: Vma, address: int, flags: int) -> int:
    """``do_fault``: no ``->fault`` → VM_FAULT_SIGBUS; else ``do_read_fault``,
    ``do_cow_fault`` (private write) or ``do_shared_fault`` (shared write)."""
    ops = vma.ops
    if ops is None or ops.fault is None:
        return VM_FAULT_SIGBUS
    ps = mm.page_shift
    vmf = VmFault(vma, address, vma.pgoff + ((address - vma.start) >> ps), flags)
    phys = mm.phys
    if not flags & FAULT_FLAG_WRITE:
        ret = _do_fault(mm, vmf)
        if ret & _FAULT_STOP:
            return ret
        page = vmf.page
        assert page is not None
        _finish_fault(mm, vma, address, (page << PTE_PFN_SHIFT) | vma.page_prot, page)
        return ret
    if not vma.flags & VM_SHARED:
        # do_cow_fault
        new = phys.alloc_pages(0, owner="anon", kind="anon")
        ret = _do_fault(mm, vmf)
        if ret & _FAULT_STOP:
            phys.host_put(new)
            return ret
        if vmf.page is not None:
            phys.copy_contents(vmf.page, new)  # copy_user_highpage of the file page
        entry = (new << PTE_PFN_SHIFT) | vma.page_prot | _DY
        if vma.flags & VM_WRITE:
            entry |= PTE_WRITE
        if _finish_fault(mm, vma, address, entry, new) and vmf.page is not None:
            phys.host_put(vmf.page)
        return ret
    # do_shared_fault
    ret = _do_fault(mm, vmf)
    if ret & _FAULT_STOP:
        return ret
    page = vmf.page
    assert page is not None
    entry = (page << PTE_PFN_SHIFT) | vma.page_prot | _DY
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE
    if _finish_fault(mm, vma, address, entry, page):
        phys.SetPageDirty(page)  # fault_dirty_shared_page
    return ret


def _do_fault(mm: Mm, vmf: VmFault) -> int:
    """``__do_fault``: call ``->fault``; a poisoned page gives VM_FAULT_HWPOISON."""
    ops = vmf.vma.ops
    assert ops is not None and ops.fault is not None
    ret = ops.fault(vmf)
    if ret & _FAULT_STOP:
        return ret
    page = vmf.page
    if page is None:
        return VM_FAULT_SIGBUS
    if mm.phys.PageHWPoison(page):
        mm.phys.host_put(page)
        vmf.page = None
        return VM_FAULT_HWPOISON
    return ret


def _finish_fault(mm: Mm, vma: Vma, address: int, entry: int, page: int) -> bool:
    """``finish_fault`` → ``alloc_set_pte``: a subpage of a page-cache THP
    (shmem) whose PMD is empty goes to ``do_set_pmd`` first; otherwise
    install the PTE unless one appeared meanwhile (then the reference is
    dropped)."""
    if (
        mm.phys._orders
        and mm.phys.PageTransCompound(page)
        and _do_set_pmd(mm, vma, address, entry, page)
    ):
        return True
    vpn = address >> mm.page_shift
    if vpn in mm.pgtable.ptes:
        mm.phys.host_put(page)
        return False
    mm.pgtable.ptes[vpn] = entry
    return True


def transhuge_vma_suitable(mm: Mm, vma: Vma, address: int) -> bool:
    """``transhuge_vma_suitable`` (v4.16; ``thp_vma_suitable_order`` in
    v6.13): the vma's start and its file offset agree modulo 2M, and the 2M
    range around ``address`` lies wholly inside the vma."""
    ps = mm.page_shift
    nr = 1 << (THP_SHIFT - ps)
    if ((vma.start >> ps) & (nr - 1)) != (vma.pgoff & (nr - 1)):
        return False
    haddr = address & ~((1 << THP_SHIFT) - 1)
    return vma.start <= haddr and haddr + (1 << THP_SHIFT) <= vma.end


def _do_set_pmd(mm: Mm, vma: Vma, address: int, entry: int, page: int) -> bool:
    """``do_set_pmd`` (mm/memory.c, v4.16), reached from ``alloc_set_pte``
    when the PMD is none and the page is PageTransCompound: map the whole
    compound page with one PMD unless ``transhuge_vma_suitable`` fails (the
    vma's start and its file offset differ modulo 2M, or the 2M range is not
    wholly inside the vma): then VM_FAULT_FALLBACK, a PTE.  The PMD's bits
    are the PTE's (``mk_huge_pmd`` of ``vm_page_prot``, dirty and writable
    on a write fault, as the caller built them); the reference ``->fault``
    took is the PMD's (on the head, as every reference on a compound page).
    Only file vmas get here: the COW page of ``do_cow_fault`` is order 0."""
    if not transhuge_vma_suitable(mm, vma, address):
        return False
    size = 1 << THP_SHIFT
    haddr = address & ~(size - 1)
    pgt = mm.pgtable
    if pgt.ptes_in(haddr, haddr + size):
        return False  # pmd_none fails: a PTE table is there
    head = mm.phys.compound_head(page)
    pgt.set_huge(haddr, THP_SHIFT, (head << PTE_PFN_SHIFT) | (entry & PTE_BITS_MASK))
    if mm.tracer.enabled:
        mm.tracer.emit("do_set_pmd", haddr=haddr, pfn=head)
    return True


# ---------------------------------------------------------------------- page cache


def filemap_fault(vmf: VmFault) -> int:
    """``filemap_fault``: the page cache page at ``vmf.pgoff``, read from disk
    first when its index is in ``file.needs_io`` (``lock_page_or_retry``).
    Returns it in ``vmf.page`` with a reference."""
    vma = vmf.vma
    f = vma.file
    mm = vma.mm
    assert f is not None and mm is not None
    phys = mm.phys
    ps = mm.page_size
    index = vmf.pgoff
    if index >= (f.size + ps - 1) // ps:
        return VM_FAULT_SIGBUS
    ret = 0
    if index in f.needs_io:
        ret = VM_FAULT_MAJOR
        if not lock_page_or_retry(mm, vmf.flags):
            if not vmf.flags & FAULT_FLAG_RETRY_NOWAIT:
                f.needs_io.discard(index)  # the read completed while we waited
            return ret | VM_FAULT_RETRY
        f.needs_io.discard(index)
    page = f.cache.get(index)
    if page is None:
        page = phys.alloc_pages(0, owner=f"pagecache:{f.name}", kind="file")
        phys.put_contents(page, f.disk.pop(index, {}))  # the read from disk
        f.cache[index] = page
    phys.host_get(page)
    vmf.page = page
    return ret


def shmem_fault(vmf: VmFault) -> int:
    """``shmem_fault``: like the page cache, tmpfs pages are created zeroed on
    first touch and need no I/O unless marked.  ``shmem_getpage_gfp`` calls
    ``handle_userfault`` for an index inside the file that is neither cached
    nor swapped out on a MISSING vma, and (v5.14) for one that is, on a
    MINOR vma."""
    vma = vmf.vma
    if vma.flags & (VM_UFFD_MISSING | VM_UFFD_MINOR):
        f = vma.file
        mm = vma.mm
        assert f is not None and mm is not None
        if vmf.pgoff < (f.size + mm.page_size - 1) // mm.page_size:
            cached = vmf.pgoff in f.cache or vmf.pgoff in f.needs_io
            if not cached and vma.flags & VM_UFFD_MISSING:
                return handle_userfault(mm, vma, vmf.address, vmf.flags, VM_UFFD_MISSING)
            if cached and vma.flags & VM_UFFD_MINOR:
                return handle_userfault(mm, vma, vmf.address, vmf.flags, VM_UFFD_MINOR)
    if vma.flags & VM_HUGEPAGE:
        _shmem_alloc_huge(vmf)
    return filemap_fault(vmf)


def _shmem_alloc_huge(vmf: VmFault) -> None:
    """The huge branch of ``shmem_getpage_gfp`` (mm/shmem.c, v4.16) for a
    fault on a VM_HUGEPAGE vma (``shmem_fault``: SGP_HUGE) of a mount whose
    huge policy is ``advise`` (the scenario's ``huge`` on shmem; a memfd
    or MAP_SHARED|MAP_ANONYMOUS region with shmem_enabled=advise): when the
    index is inside i_size and nothing is cached or swapped there,
    ``shmem_alloc_hugepage`` refuses if the page cache (or swap) holds
    anything in the 2M-aligned index range, else allocates a compound page
    (``prep_transhuge_page``) and ``shmem_add_to_page_cache`` puts its
    subpages at ``hindex`` .. ``hindex + HPAGE_PMD_NR - 1`` with one cache
    reference each.  v4.16 does not look at i_size for the range: the tail
    may lie beyond it (the page then goes on the shrink list, not modelled).
    v6.13 (``shmem_suitable_orders``, read in 6.13.7; not in 5.7.14) also
    asks ``thp_vma_suitable_orders``: no huge page where the vma could not
    map it with a PMD.  The caller then finds the subpage like any cached
    page."""
    vma = vmf.vma
    f = vma.file
    mm = vma.mm
    assert f is not None and mm is not None
    ps = mm.page_shift
    index = vmf.pgoff
    cache = f.cache
    if index in cache or index >= (f.size + (1 << ps) - 1) >> ps:
        return
    if mm.linux >= (6, 13) and not transhuge_vma_suitable(mm, vma, vmf.address):
        return
    nr = 1 << (THP_SHIFT - ps)
    hindex = index & ~(nr - 1)
    busy = (*f.needs_io, *f.disk)
    for i in range(hindex, hindex + nr):
        if i in cache or i in busy:
            return  # radix_tree_gang_lookup_slot found an entry: a small page
    phys = mm.phys
    head = phys.alloc_pages(THP_SHIFT - ps, owner=f"pagecache:{f.name}", kind="shmem_thp")
    phys.host_get(
        head, nr - 1
    )  # the cache's references (page_ref_add), the allocation's among them
    for i in range(nr):
        cache[hindex + i] = head + i
    if mm.tracer.enabled:
        mm.tracer.emit("shmem_alloc_hugepage", file=f.name, index=hindex, pfn=head)
