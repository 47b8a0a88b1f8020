"""Host-side events the scenarios inject (kernel-notes §L.4 gives the notifier calls of each).

``munmap`` and ``mprotect`` are methods of :class:`~kvmsim.host.mm.Mm`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from kvmsim.cmodel import EAGAIN, EBUSY, EINVAL
from kvmsim.host.constants import (
    FAULT_FLAG_ALLOW_RETRY,
    FAULT_FLAG_KILLABLE,
    FAULT_FLAG_TRIED,
    FAULT_FLAG_USER,
    FAULT_FLAG_WRITE,
    PG_ANON,
    PG_DIRTY,
    PG_HUGE,
    PG_LAZYFREE,
    PG_REFERENCED,
    PG_THP,
    PTE_DIRTY,
    PTE_HWPOISON,
    PTE_MIGRATION,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_READ,
    PTE_SPECIAL,
    PTE_WRITE,
    PTE_YOUNG,
    THP_SHIFT,
    VM_FAULT_RETRY,
    VM_FAULT_SIGSEGV,
)
from kvmsim.host.fault import handle_mm_fault
from kvmsim.host.pte import PTE_BITS_MASK
from kvmsim.host.rwsem import Deadlock

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm
    from kvmsim.host.physmem import PhysMem

__all__ = [
    "ENXIO",
    "USER_FAULT_MULTI_RETRY",
    "DeviceIo",
    "host_read",
    "host_write",
    "memory_failure",
    "migrate_page",
    "split_thp",
    "swap_out",
    "user_fault",
]

ENXIO = 6
_T = TypeVar("_T")

#: from v5.7 (4064b9827063 "mm: allow VM_FAULT_RETRY for multiple times") the
#: arch fault handlers keep FAULT_FLAG_ALLOW_RETRY when they retry
USER_FAULT_MULTI_RETRY = (5, 7)


def _mappings(mm: Mm, head: int, npages: int) -> list[tuple[int, int, int]]:
    """(hva, shift, entry) of every present, non-special entry of ``mm``
    mapping a frame in ``[head, head + npages)`` (the rmap walk)."""
    end = head + npages
    out = []
    for hva, shift, e in mm.pgtable.items():
        if e & PTE_PRESENT and not e & PTE_SPECIAL and head <= e >> PTE_PFN_SHIFT < end:
            out.append((hva, shift, e))
    out.sort()
    return out


def _set_entry(mm: Mm, hva: int, shift: int, entry: int) -> None:
    if shift:
        mm.pgtable.set_huge(hva, shift, entry)
    else:
        mm.pgtable.set_pte(hva, entry)


def _unmap_one(mm: Mm, hva: int, shift: int, order: int, new_entry: int) -> None:
    """``try_to_unmap_one``: start/end around the page, clipped to the vma."""
    vma = mm.find_vma(hva)
    end = hva + (mm.page_size << order)
    if vma is not None:
        end = min(end, vma.end)
    mm.notify_start(hva, end)
    _set_entry(mm, hva, shift, new_entry)
    if mm.race_points or mm.sched is not None:
        # ptep_clear_flush: the entry cleared and flushed before the new one is set
        mm.fire_point("tlb_flush")
    mm.notify_end(hva, end)


def _split_huge_page(mm: Mm, head: int) -> int:
    """``split_huge_page`` of an anonymous THP: fails with -EBUSY when
    someone else holds references (``can_split_huge_page``); else splits
    the PMD (start/end over 2M), unmaps the PTEs (``try_to_unmap``: a pair
    over the THP) and turns the compound page into order-0 pages, each PTE's
    reference moving to its own subpage."""
    phys = mm.phys
    if phys._others.get(head, 0) > 0:
        return -EBUSY
    hs = THP_SHIFT
    d = mm.pgtable.huge.get(hs, {})
    for idx, e in list(d.items()):
        if e >> PTE_PFN_SHIFT == head:
            vma = mm.find_vma(idx << hs)
            assert vma is not None
            mm.split_huge_pmd(vma, idx << hs)
    order = phys.order[head]
    n = 1 << order
    maps = _mappings(mm, head, n)
    if maps:
        lo = maps[0][0] & ~((1 << hs) - 1)
        mm.notify_start(lo, lo + (1 << hs))
        mm.notify_end(lo, lo + (1 << hs))
    mapped = {e >> PTE_PFN_SHIFT for _, _, e in maps}
    fl = phys.flags.get(head, 0) & (PG_ANON | PG_DIRTY | PG_REFERENCED | PG_LAZYFREE)
    hrefs = phys.host_refs.get(head, 0)
    phys.order.pop(head)
    phys.flags[head] = fl
    owner = phys.owner.get(head, "anon")
    # Every mapped subpage keeps the reference its PTE held; the head keeps
    # the rest of what it had (allocation reference of an unmapped THP).
    moved = 0
    for p in range(head + 1, head + n):
        phys.flags[p] = fl
        phys.owner[p] = owner
        if p in mapped:
            phys.refcount[p] = 1
            phys.host_refs[p] = 1
            moved += 1
        else:
            phys.refcount[p] = 0
            phys.freed.add(p)
    phys.refcount[head] -= moved
    left = hrefs - moved
    if left > 0:
        phys.host_refs[head] = left
    else:
        phys.host_refs.pop(head, None)
    if mm.tracer.enabled:
        mm.tracer.emit("split_huge_page", pfn=head, order=order)
    return 0


def memory_failure(mm: Mm, pfn: int) -> int:
    """``memory_failure(pfn, flags)``: PG_hwpoison, then every mapping of the
    page in ``mm`` is unmapped (``hwpoison_user_mappings`` → ``try_to_unmap``,
    a start/end pair per vma) and its entry becomes a hwpoison entry.

    A THP is split first (failing with -EBUSY, poison cleared, when others
    hold references); a hugetlb page is poisoned on its head and unmapped
    whole.  Special PTEs (no rmap) are not touched.  Returns 0, -ENXIO or -EBUSY.
    """
    phys = mm.phys
    tr = mm.tracer
    if not phys.pfn_valid(pfn):
        return -ENXIO
    if phys.PageHWPoison(pfn):
        return 0
    head = phys.compound_head(pfn)
    hflags = phys.flags.get(head, 0)
    if hflags & PG_HUGE:
        target, order = head, phys.order.get(head, 0)
    else:
        if hflags & PG_THP and head in phys.order:
            if not hflags & PG_ANON or _split_huge_page(mm, head):
                if tr.enabled:
                    tr.emit("memory_failure", pfn=pfn, ret=-EBUSY, why="thp split failed")
                return -EBUSY
        target, order = pfn, 0
    phys.SetPageHWPoison(target)
    maps = _mappings(mm, target, 1 << order)
    for hva, shift, e in maps:
        page = e >> PTE_PFN_SHIFT
        _unmap_one(mm, hva, shift, order, (page << PTE_PFN_SHIFT) | PTE_HWPOISON)
        if e & PTE_DIRTY:
            phys.SetPageDirty(page)
        phys.host_put(page)
    if tr.enabled:
        tr.emit("memory_failure", pfn=pfn, ret=0, unmapped=len(maps))
    return 0


def _anon_or_huge(phys: PhysMem, head: int) -> bool:
    """PageAnon or PageHuge of a compound head."""
    return bool(phys.flags.get(head, 0) & (PG_ANON | PG_HUGE))


def migrate_page(mm: Mm, hva: int, *, strict_refcount: bool = True) -> int:
    """``migrate_pages`` of the page mapped at ``hva`` (base page, THP or
    hugetlb page, moved whole).

    Each mapping is replaced by a migration entry inside a start/end pair
    per vma (``try_to_unmap_one``); the new entries are installed without a
    notifier (``remove_migration_ptes``).  Page cache entries move to the new
    frame.  With ``strict_refcount`` (the kernel: ``migrate_page_move_mapping``
    compares the refcount) a page someone else holds references on is not
    moved: the old entries come back and -EAGAIN is returned; without it the
    page moves and the old frame is freed when its last reference goes.
    Returns 0, -EAGAIN, -EBUSY (PTE-mapped part of a THP) or -EINVAL (nothing
    migratable mapped there).
    """
    phys = mm.phys
    tr = mm.tracer
    e, shift = mm.pgtable.find_linux_pte(hva)
    if e is None or not e & PTE_PRESENT or e & PTE_SPECIAL:
        return -EINVAL
    pfn = e >> PTE_PFN_SHIFT
    if not phys.pfn_valid(pfn) or phys.PageReserved(pfn) or pfn == phys.huge_zero_pfn:
        return -EINVAL
    old = phys.compound_head(pfn)
    order = phys.order.get(old, 0)
    if order and not shift:
        return -EBUSY
    if order and not _anon_or_huge(phys, old):
        # try_to_unmap_one (v4.16) puts a migration entry in a THP's PMD
        # only when the page is anonymous: a shmem THP stays mapped, so
        # __unmap_and_move finds it mapped and the move fails
        if tr.enabled:
            tr.emit("migrate_page", hva=hva, old_pfn=old, ret=-EAGAIN, why="file THP PMD")
        return -EAGAIN
    maps = _mappings(mm, old, 1 << order)
    for mhva, mshift, me in maps:
        _unmap_one(mm, mhva, mshift, order, (me & ~PTE_PRESENT) | PTE_MIGRATION)
    if strict_refcount and phys._others.get(old, 0) > 0:
        for mhva, mshift, me in maps:
            _set_entry(mm, mhva, mshift, me)
        if mm.sched is not None:
            mm.sched.released(mm.migration_wait)
        if tr.enabled:
            tr.emit("migrate_page", hva=hva, old_pfn=old, ret=-EAGAIN)
        return -EAGAIN
    fl = phys.flags.get(old, 0)
    kind = (
        "hugetlb"
        if fl & PG_HUGE
        else "thp"
        if fl & PG_THP
        else ("anon" if fl & PG_ANON else "file")
    )
    new = phys.alloc_pages(order, owner=phys.owner.get(old, "anon"), kind=kind)
    phys.flags[new] = fl
    phys.copy_contents(old, new, 1 << order)  # migrate_folio copies the data
    hrefs = phys.host_refs.get(old, 0)
    for vma in mm.vmas:
        f = vma.file
        if f is not None:
            for idx, p in f.cache.items():
                if p == old:
                    f.cache[idx] = new
    if hrefs > 1:
        phys.host_get(new, hrefs - 1)
    for mhva, mshift, me in maps:
        _set_entry(mm, mhva, mshift, (new << PTE_PFN_SHIFT) | (me & PTE_BITS_MASK))
    if mm.sched is not None:  # the page is unlocked: migration_entry_wait returns
        mm.sched.released(mm.migration_wait)
    if hrefs:
        # unmap_and_move drops the old page after unlocking it
        phys.host_put(old, hrefs)
        if mm.race_points or mm.sched is not None:
            mm.fire_point("page_freed")
    if tr.enabled:
        tr.emit("migrate_page", hva=hva, old_pfn=old, new_pfn=new, ret=0)
    return 0


#: ``io(pfn, offset, op, width, value)``: a load or store the CPU made on a
#: frame without a ``struct page`` (I/O memory) reached the device behind it;
#: returns what a load reads, None when no device answers.
DeviceIo = Callable[[int, int, str, int, int], "int | None"]


def user_fault(mm: Mm, hva: int, flags: int) -> int:
    """A page fault of the VMM's own thread on a user access (the arch's
    ``__do_page_fault`` / ``do_page_fault``: x86, powerpc and arm64 decide
    alike here) → VM_FAULT_* bits.

    Entered and left with ``mmap_sem`` held for read by ``mm.current``.  The
    fault flags are FAULT_FLAG_ALLOW_RETRY|KILLABLE|USER (plus *flags*), so
    a handler may drop ``mmap_sem`` and return VM_FAULT_RETRY: on a
    userfaultfd range ``handle_userfault`` queues the message and the thread
    sleeps until the handler resolves or wakes the range (a page under I/O:
    ``lock_page_or_retry`` waits for it).  The thread then takes
    ``mmap_sem`` again, looks the vma up again and retries with
    FAULT_FLAG_TRIED: before v5.7 without ALLOW_RETRY, so a userfaultfd
    page still missing then (woken by UFFDIO_WAKE, say) is VM_FAULT_SIGBUS;
    from v5.7 (4064b9827063) with it, so the retry may sleep again.  No vma:
    VM_FAULT_SIGSEGV (``bad_area``).

    Read from: Linux 4.16.13 arch/x86/mm/fault.c ``__do_page_fault``,
    arch/powerpc/mm/fault.c ``__do_page_fault`` (lizuobin/linux-4.16.13_tiny4412);
    Linux 5.7.14 arch/x86/mm/fault.c ``do_user_addr_fault``,
    arch/powerpc/mm/fault.c ``__do_page_fault`` (a5221985/linux-5.7.14);
    kernel-notes §U.7.
    """
    flags |= FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE | FAULT_FLAG_USER
    tr = mm.tracer
    while True:
        vma = mm.find_vma(hva)
        if vma is None or vma.start > hva:
            return VM_FAULT_SIGSEGV
        ret = handle_mm_fault(mm, vma, hva, flags)
        if not (ret & VM_FAULT_RETRY and flags & FAULT_FLAG_ALLOW_RETRY):
            return ret
        # the handler released mmap_sem (it never gets RETRY_NOWAIT here)
        if mm.linux < USER_FAULT_MULTI_RETRY:
            flags &= ~FAULT_FLAG_ALLOW_RETRY
        flags |= FAULT_FLAG_TRIED
        if tr.enabled:
            tr.emit("user_fault_retry", hva=hva, flags=flags)
        mm.mmap_sem.down_read(mm.current)


def host_write(
    mm: Mm, hva: int, value: int | None = None, width: int = 8, io: DeviceIo | None = None
) -> int:
    """QEMU writes to the page at ``hva``: nothing to do for a present
    writable entry (the CPU sets dirty/accessed); otherwise a user write
    fault (:func:`user_fault` with FAULT_FLAG_WRITE, under ``mmap_sem`` for
    read), which COWs the zero page or a private page (start, change_pte,
    end), or sleeps on a userfaultfd range until the handler serves it.
    With *value*, the CPU then stores it (*width* bytes) at ``hva``: into
    the frame's contents when the frame is RAM, to the device through *io*
    when it has no ``struct page`` (a store to a device page is the device's
    MMIO, whoever makes it).  Returns the VM_FAULT_* bits (SIGSEGV with no
    vma)."""

    def locked() -> int:
        vma = mm.find_vma(hva)
        if vma is None or vma.start > hva:
            return VM_FAULT_SIGSEGV
        e, shift = mm.pgtable.find_linux_pte(hva)
        if e is not None and e & PTE_PRESENT and e & PTE_WRITE:
            _set_entry(
                mm, hva & ~((1 << (shift or mm.page_shift)) - 1), shift, e | PTE_DIRTY | PTE_YOUNG
            )
            ret = 0
        else:
            ret = user_fault(mm, hva, FAULT_FLAG_WRITE)
            if mm.tracer.enabled:
                mm.tracer.emit("host_write", hva=hva, result=ret)
        if value is not None:
            _store(mm, hva, value, width, io)
        return ret

    return _under_mmap_sem(mm, locked)


def host_read(
    mm: Mm, hva: int, width: int = 8, io: DeviceIo | None = None
) -> tuple[int, int | None]:
    """QEMU loads *width* bytes at ``hva`` through its own mapping: a
    present readable entry needs nothing; otherwise a user read fault
    (:func:`user_fault`, under ``mmap_sem`` for read), which maps the zero
    page on untouched private anonymous memory, the page-cache page of a
    file or shmem, runs a device vma's fault handler, or sleeps on a
    userfaultfd range until the handler serves it.  The load then reads the
    frame: RAM gives what was stored there (0 where nothing was), a frame
    without a ``struct page`` is the device's MMIO through *io*, with the
    device's load side effects.

    :returns: the VM_FAULT_* bits and the value read, None when the
        process got a signal instead (no vma, SIGBUS from the fault) or no
        device answered the load.
    """

    def locked() -> tuple[int, int | None]:
        vma = mm.find_vma(hva)
        if vma is None or vma.start > hva:
            return VM_FAULT_SIGSEGV, None
        e, _shift = mm.pgtable.find_linux_pte(hva)
        ret = 0
        if e is None or not e & PTE_PRESENT or not e & PTE_READ:
            ret = user_fault(mm, hva, 0)
            if mm.tracer.enabled:
                mm.tracer.emit("host_read", hva=hva, result=ret)
        return ret, _load(mm, hva, width, io)

    return _under_mmap_sem(mm, locked)


def _under_mmap_sem(mm: Mm, fn: Callable[[], _T]) -> _T:
    """``fn()`` with ``mmap_sem`` held for read by ``mm.current``, released
    after it, also when the simulated kernel oopses inside; not after a
    :class:`~kvmsim.host.rwsem.Deadlock`: the thread sleeps for ever in
    ``handle_userfault``, which had released it."""
    mm.mmap_sem.down_read(mm.current)
    try:
        ret = fn()
    except Deadlock:
        raise
    except BaseException:
        mm.mmap_sem.up_read(mm.current)
        raise
    mm.mmap_sem.up_read(mm.current)
    return ret


def _frame(mm: Mm, hva: int, write: bool) -> int | None:
    """The frame the host PTE at ``hva`` lets the CPU reach for this access,
    or None when it does not (the fault failed: the process got a signal)."""
    e, shift = mm.pgtable.find_linux_pte(hva)
    if e is None or not e & PTE_PRESENT or not e & (PTE_WRITE if write else PTE_READ):
        return None
    ps = mm.page_shift
    return (e >> PTE_PFN_SHIFT) + ((hva & ((1 << (shift or ps)) - 1)) >> ps)


def _store(mm: Mm, hva: int, value: int, width: int, io: DeviceIo | None) -> None:
    """The CPU's store through the (now writable) host PTE at ``hva``."""
    pfn = _frame(mm, hva, True)
    if pfn is None:
        return  # the fault failed: the process got SIGSEGV/SIGBUS instead
    offset = hva & (mm.page_size - 1)
    if mm.phys.pfn_valid(pfn):
        mm.phys.write_word(pfn, offset, value, width)
    elif io is not None:
        io(pfn, offset, "write", width, value & ((1 << (8 * width)) - 1))


def _load(mm: Mm, hva: int, width: int, io: DeviceIo | None) -> int | None:
    """The CPU's load through the host PTE at ``hva`` (as a guest load of
    the same frame reads it: :func:`kvmsim.kvm.vcpu.guest_access`)."""
    pfn = _frame(mm, hva, False)
    if pfn is None:
        return None
    offset = hva & (mm.page_size - 1)
    if mm.phys.pfn_valid(pfn):
        return mm.phys.read_word(pfn, offset)
    return None if io is None else io(pfn, offset, "read", width, 0)


def split_thp(mm: Mm, hva: int) -> bool:
    """``__split_huge_pmd`` of the THP PMD covering ``hva``: start/end over
    the 2M range; the PMD becomes base PTEs to the subpages.  False when
    there is no THP PMD there."""
    mm.mmap_sem.down_read(mm.current)
    try:
        vma = mm.find_vma(hva)
        if vma is None or vma.start > hva:
            return False
        return mm.split_huge_pmd(vma, hva)
    finally:
        mm.mmap_sem.up_read(mm.current)


def swap_out(mm: Mm, hva: int) -> None:
    """Reclaim the anonymous page at ``hva`` to swap (see ``Mm.mark_swapped``)."""
    mm.mark_swapped(hva)
