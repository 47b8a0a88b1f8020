"""Discarding memory without unmapping it: ``madvise(MADV_DONTNEED)``,
``madvise(MADV_FREE)``, ``madvise(MADV_REMOVE)`` and
``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`` on shmem and
hugetlbfs files, with v4.16 semantics (kernel-notes §M.1 to §M.4).

Read from: Linux 4.16.13 (lizuobin/linux-4.16.13_tiny4412, Makefile 4.16.13):
``mm/madvise.c`` (``SYSCALL_DEFINE3(madvise)``, ``madvise_dontneed_free``,
``madvise_free_single_vma``, ``madvise_free_pte_range``, ``madvise_remove``),
``mm/huge_memory.c`` (``madvise_free_huge_pmd``), ``mm/memory.c``
(``zap_page_range``), ``fs/open.c`` (``vfs_fallocate``), ``mm/shmem.c``
(``shmem_fallocate``, ``shmem_undo_range``), ``fs/hugetlbfs/inode.c``
(``hugetlbfs_punch_hole``, ``hugetlb_vmdelete_list``,
``remove_inode_hugepages``), ``mm/swap.c`` (``lru_lazyfree_fn``).

The vma stays in every case; what goes is the host PTEs (and, for REMOVE
and hole punching, the page cache pages), each change inside an MMU
notifier pair, so KVM drops its stage-2 entries and refaults.  Each
function returns 0 or a negative errno, as the kernel function does;
:func:`madvise_refusal` and :func:`fallocate_refusal` say why, for the
error a scenario step reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim.cmodel import EINVAL, ENOMEM
from kvmsim.host.constants import (
    PG_ANON,
    PG_HEAD,
    PG_LAZYFREE,
    PG_REFERENCED,
    PG_THP,
    PTE_DIRTY,
    PTE_HWPOISON,
    PTE_MIGRATION,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_YOUNG,
    THP_SHIFT,
    VM_HUGETLB,
    VM_PFNMAP,
    VM_SHARED,
    VM_WRITE,
)
from kvmsim.host.drivers import unmap_mapping_range
from kvmsim.host.events import _mappings, _split_huge_page
from kvmsim.host.fault import vm_normal_page
from kvmsim.host.tlb import MmuGather, tlb_flush_mmu

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm
    from kvmsim.host.vma import File, Vma

__all__ = [
    "ADVICE",
    "EACCES",
    "EBADF",
    "ENODEV",
    "EOPNOTSUPP",
    "ERRNO_NAMES",
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "MADV_DONTNEED",
    "MADV_FREE",
    "MADV_REMOVE",
    "NOT_MODELLED",
    "fallocate_refusal",
    "madvise_error",
    "madvise_refusal",
    "punch_hole",
    "punch_hole_error",
    "sys_madvise",
    "vfs_fallocate",
]

# include/uapi/asm-generic/mman-common.h and falloc.h
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
#: a scenario's ``advice`` → the MADV_* value
ADVICE = {"dontneed": MADV_DONTNEED, "remove": MADV_REMOVE, "free": MADV_FREE}

EBADF = 9
EACCES = 13
ENODEV = 19
EOPNOTSUPP = 95
ERRNO_NAMES = {
    EBADF: "EBADF",
    EACCES: "EACCES",
    ENODEV: "ENODEV",
    EINVAL: "EINVAL",
    ENOMEM: "ENOMEM",
    EOPNOTSUPP: "EOPNOTSUPP",
}
#: fallocate reached a file system the model does not have (a disk file
#: system's ``->fallocate``): not an errno, the caller reports it
NOT_MODELLED = -(1 << 16)

_PMD = 1 << THP_SHIFT


# ---------------------------------------------------------------------- refusals


def madvise_refusal(vma: Vma, behavior: int) -> tuple[int, str] | None:
    """The error ``madvise_vma`` returns for ``behavior`` on ``vma`` before
    touching anything, with the reason; None when it goes ahead (REMOVE may
    still fail in ``vfs_fallocate``: :func:`fallocate_refusal`).

    No VM_LOCKED in the model, and no userfaultfd: ``userfaultfd_remove``
    returns true.
    """
    if behavior in (MADV_DONTNEED, MADV_FREE):
        # can_madv_dontneed_vma
        if vma.flags & VM_HUGETLB:
            return -EINVAL, "a hugetlb vma (VM_HUGETLB: allowed only from v5.18)"
        if vma.flags & VM_PFNMAP:
            return -EINVAL, "a VM_PFNMAP vma"
        if behavior == MADV_FREE and not vma.is_anonymous():
            return -EINVAL, "MADV_FREE works on private anonymous memory only"
        return None
    if behavior == MADV_REMOVE:
        if vma.file is None:
            return -EINVAL, "an anonymous private vma has no file to punch a hole in"
        if vma.flags & (VM_SHARED | VM_WRITE) != VM_SHARED | VM_WRITE:
            return -EACCES, "MADV_REMOVE needs a shared writable mapping"
        return None
    return -EINVAL, f"advice {behavior} is not modelled"


def fallocate_refusal(file: File | None, mode: int) -> tuple[int, str] | None:
    """What ``vfs_fallocate`` (then the file system's ``->fallocate``)
    refuses before doing anything, with the reason (:data:`NOT_MODELLED` for
    a disk file system's file); None when the model runs it."""
    if file is None:
        return -EOPNOTSUPP, "anonymous private memory has no file, so no ->fallocate"
    if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
        return -EOPNOTSUPP, "FALLOC_FL_PUNCH_HOLE needs FALLOC_FL_KEEP_SIZE"
    if file.readonly:
        return -EBADF, f"file {file.name!r} is open read-only (no FMODE_WRITE)"
    if file.private_data is not None:
        return -ENODEV, f"{file.name!r} is a device file, not a regular file"
    if not (file.shmem or file.hugetlbfs):
        return NOT_MODELLED, (
            f"{file.name!r} is a disk file system's file, whose ->fallocate the model "
            "does not have (shmem and hugetlbfs only)"
        )
    return None


def _verdict(call: str, ret: int, why: tuple[int, str] | None, fallback: str) -> str:
    if ret == NOT_MODELLED:
        verdict = "is not modelled"
    else:
        verdict = f"fails with {ERRNO_NAMES.get(-ret, str(-ret))}"
    reason = why[1] if why is not None and why[0] == ret else fallback
    return f"{call} {verdict}: {reason}"


def madvise_error(mm: Mm, start: int, behavior: int, ret: int) -> str:
    """What a failed :func:`sys_madvise` (``ret``) means, in one sentence."""
    name = {MADV_DONTNEED: "DONTNEED", MADV_FREE: "FREE", MADV_REMOVE: "REMOVE"}[behavior]
    why = None
    fallback = "the vma does not allow it"
    vma = mm.find_vma(start)
    if start & (mm.page_size - 1):
        fallback = "the start is not aligned to the host page size"
    elif ret == -ENOMEM:
        fallback = "part of the range is not mapped (any more)"
    elif vma is not None and vma.start <= start:
        why = madvise_refusal(vma, behavior)
        if why is None and behavior == MADV_REMOVE:
            why = fallocate_refusal(vma.file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
    return _verdict(f"madvise(MADV_{name})", ret, why, fallback)


def punch_hole_error(vma: Vma, ret: int) -> str:
    """What a failed :func:`punch_hole` (``ret``) means, in one sentence."""
    why = fallocate_refusal(vma.file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
    return _verdict("fallocate(PUNCH_HOLE)", ret, why, "the file does not allow it")


# ---------------------------------------------------------------------- madvise


def sys_madvise(mm: Mm, start: int, len_in: int, behavior: int) -> int:
    """``madvise(start, len_in, behavior)`` for DONTNEED, FREE and REMOVE.

    ``mmap_sem`` for read (all three); each vma of the range in turn; a
    hole in the range is skipped and reported as -ENOMEM at the end, an
    error of one vma stops there.  Returns 0 or a negative errno.
    """
    if behavior not in (MADV_DONTNEED, MADV_FREE, MADV_REMOVE):
        return -EINVAL
    ps = mm.page_size
    if start & (ps - 1):
        return -EINVAL
    length = (len_in + ps - 1) & ~(ps - 1)
    end = start + length
    if end == start:
        return 0
    tr = mm.tracer
    first = start
    mm.mmap_sem.down_read(mm.current)
    try:
        unmapped_error = 0
        error = 0
        vma = mm.find_vma(start)
        while True:
            error = -ENOMEM
            if vma is None:
                break
            if start < vma.start:
                unmapped_error = -ENOMEM
                start = vma.start
                if start >= end:
                    break
            tmp = min(vma.end, end)
            error = _madvise_vma(mm, vma, start, tmp, behavior)
            if error:
                break
            start = tmp
            error = unmapped_error
            if start >= end:
                break
            # prev->vm_next, or find_vma after madvise_remove dropped mmap_sem
            vma = mm.find_vma(start)
        if tr.enabled:
            tr.emit("madvise", start=first, end=end, behavior=behavior, ret=error)
        return error
    finally:
        mm.mmap_sem.up_read(mm.current)


def _madvise_vma(mm: Mm, vma: Vma, start: int, end: int, behavior: int) -> int:
    """``madvise_vma`` → ``madvise_remove`` / ``madvise_dontneed_free``."""
    refused = madvise_refusal(vma, behavior)
    if refused is not None:
        return refused[0]
    if behavior == MADV_REMOVE:
        return _madvise_remove(mm, vma, start, end)
    if behavior == MADV_DONTNEED:
        zap_page_range(mm, vma, start, end)
        return 0
    return _madvise_free_single_vma(mm, vma, start, end)


def zap_page_range(mm: Mm, vma: Vma, start: int, end: int) -> None:
    """``zap_page_range``: one notifier pair over ``[start, end)``, the PTEs
    cleared in between (``unmap_single_vma``: the zero page is just dropped,
    page cache pages stay in the cache).  A THP PMD the range covers in part
    is split first, with its own pair over the 2M inside this one
    (``zap_pmd_range`` → ``__split_huge_pmd``: the split of the range's
    edges, as munmap's)."""
    _notified_zap(mm, vma, start, end, "zap_page_range", split_edges=True)


def _notified_zap(mm: Mm, vma: Vma, start: int, end: int, event: str, *, split_edges: bool) -> None:
    """A notifier pair over ``[start, end)`` around clearing its entries
    (after splitting the THP PMDs at its edges when ``split_edges``), the
    ``host_pte_changed`` point between, and the trace ``event``."""
    tlb = MmuGather()
    mm.notify_start(start, end)
    if split_edges:
        mm._split_thp_edges(start, end)
    mm.zap_range(vma, start, end, tlb=tlb)
    if mm.race_points or mm.sched is not None:
        mm.fire_point("host_pte_changed")
    mm.notify_end(start, end)
    tlb_flush_mmu(mm, tlb)  # tlb_finish_mmu
    if mm.tracer.enabled:
        mm.tracer.emit(event, start=start, end=end)


def _madvise_free_single_vma(mm: Mm, vma: Vma, start: int, end: int) -> int:
    """``madvise_free_single_vma``: a notifier pair over the range, and in
    between every present anonymous page made clean and old and lazily
    freeable (``madvise_free_page_range``); the pages stay mapped."""
    start = max(vma.start, start)
    end = min(vma.end, end)
    if start >= end:
        return -EINVAL
    mm.notify_start(start, end)
    addr = start
    while addr < end:
        nxt = min((addr | (_PMD - 1)) + 1, end)
        _madvise_free_pmd(mm, vma, addr, nxt)
        addr = nxt
    if mm.race_points or mm.sched is not None:
        mm.fire_point("host_pte_changed")
    mm.notify_end(start, end)
    if mm.tracer.enabled:
        mm.tracer.emit("madvise_free", start=start, end=end)
    return 0


def _mark_page_lazyfree(mm: Mm, page: int) -> None:
    """``mark_page_lazyfree`` → ``lru_lazyfree_fn``: an anonymous page not
    already lazy loses PG_swapbacked (PG_LAZYFREE here) and PG_referenced."""
    phys = mm.phys
    head = phys.compound_head(page)
    fl = phys.flags.get(head, 0)
    if fl & PG_ANON and not fl & PG_LAZYFREE:
        phys.flags[head] = (fl | PG_LAZYFREE) & ~PG_REFERENCED


def _madvise_free_pmd(mm: Mm, vma: Vma, addr: int, end: int) -> None:
    """``madvise_free_pte_range`` over one PMD's part ``[addr, end)``."""
    phys = mm.phys
    pgt = mm.pgtable
    haddr = addr & ~(_PMD - 1)
    e = pgt.huge.get(THP_SHIFT, {}).get(haddr >> THP_SHIFT)
    if e is not None:
        if _madvise_free_huge_pmd(mm, haddr, e, addr, end):
            return
        if pgt.huge.get(THP_SHIFT, {}).get(haddr >> THP_SHIFT) is not None:
            return  # pmd_trans_unstable: still huge (zero PMD, or the split failed)
    for hva, _ in pgt.ptes_in(addr, end):
        while True:  # a PTE-mapped THP is split, then its PTE looked at again
            pte = pgt.get_pte(hva)
            if pte is None:
                break
            if not pte & PTE_PRESENT:
                if pte & (PTE_MIGRATION | PTE_HWPOISON) or not pte & PTE_SWAP:
                    break  # non_swap_entry
                # a swapped-out page: free the slot and clear the entry
                # instead of reading it back later
                vpn = hva >> mm.page_shift
                mm.swap_slots.pop(vpn, None)
                mm.swapcache.discard(vpn)
                pgt.clear_pte(hva)
                break
            page = vm_normal_page(mm, vma, pte)
            if page is None:
                break  # special: the zero page, a driver's pfn
            if phys.PageTransCompound(page) and phys.compound_head(page) in phys.order:
                if _split_huge_page(mm, phys.compound_head(page)):
                    return  # the split failed: goto out, the rest of the PMD untouched
                continue
            if phys.PageDirty(page):
                phys.ClearPageDirty(page)
            if pte & (PTE_YOUNG | PTE_DIRTY):
                pgt.set_pte(hva, pte & ~(PTE_YOUNG | PTE_DIRTY))
            _mark_page_lazyfree(mm, page)
            break


def _madvise_free_huge_pmd(mm: Mm, haddr: int, e: int, addr: int, end: int) -> bool:
    """``madvise_free_huge_pmd``: true when the whole THP was made lazy; a
    range covering part of it splits the THP (``split_huge_page``) and
    returns false, so the PTEs are walked."""
    phys = mm.phys
    if not e & PTE_PRESENT:
        return False
    head = e >> PTE_PFN_SHIFT
    if head == phys.huge_zero_pfn:
        return False
    if end - addr != _PMD:
        _split_huge_page(mm, head)
        return False
    if phys.PageDirty(head):
        phys.ClearPageDirty(head)
    if e & (PTE_YOUNG | PTE_DIRTY):
        mm.pgtable.set_huge(haddr, THP_SHIFT, e & ~(PTE_YOUNG | PTE_DIRTY))
    _mark_page_lazyfree(mm, head)
    return True


def _madvise_remove(mm: Mm, vma: Vma, start: int, end: int) -> int:
    """``madvise_remove``: punch a hole in the vma's file over the range,
    with ``mmap_sem`` dropped around ``vfs_fallocate``."""
    assert vma.file is not None  # madvise_refusal
    offset = (start - vma.start) + (vma.pgoff << mm.page_shift)
    mm.mmap_sem.up_read(mm.current)
    try:
        return vfs_fallocate(
            mm, vma.file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, end - start
        )
    finally:
        mm.mmap_sem.down_read(mm.current)


# ---------------------------------------------------------------------- fallocate


def punch_hole(mm: Mm, vma: Vma, offset: int, length: int) -> int:
    """``fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ...)`` on
    the file ``vma`` maps, over the file range behind ``vma`` +
    ``offset``; no ``mmap_sem``.  The vma need not be mapped any more (the
    fd outlives it).  -EOPNOTSUPP for anonymous private memory."""
    if vma.file is None:
        return -EOPNOTSUPP
    pos = (vma.pgoff << mm.page_shift) + offset
    return vfs_fallocate(mm, vma.file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pos, length)


def vfs_fallocate(mm: Mm, file: File, mode: int, offset: int, length: int) -> int:
    """``vfs_fallocate`` for a hole punch: its checks, then the file
    system's ``->fallocate`` (``shmem_fallocate``, ``hugetlbfs_fallocate``).
    ``mm`` is the caller's (for the frames and the trace)."""
    if offset < 0 or length <= 0:
        return -EINVAL
    refused = fallocate_refusal(file, mode)
    if refused is not None:
        return refused[0]
    if file.hugetlbfs:
        ret = _hugetlbfs_punch_hole(mm, file, offset, length)
    else:
        ret = _shmem_punch_hole(mm, file, offset, length)
    if mm.tracer.enabled:
        mm.tracer.emit("fallocate", file=file.name, offset=offset, len=length, ret=ret)
    return ret


def _shmem_punch_hole(mm: Mm, file: File, offset: int, length: int) -> int:
    """``shmem_fallocate`` with FALLOC_FL_PUNCH_HOLE: unmap the whole pages
    of the hole from every mapping (``unmap_mapping_range``, COWed private
    pages kept), then ``shmem_truncate_range``."""
    ps = mm.page_size
    unmap_start = (offset + ps - 1) & ~(ps - 1)
    unmap_end = ((offset + length) & ~(ps - 1)) - 1
    if unmap_end > unmap_start:
        unmap_mapping_range(file, unmap_start, 1 + unmap_end - unmap_start, False)
    _shmem_undo_range(mm, file, offset, offset + length - 1)
    return 0


def _shmem_undo_range(mm: Mm, file: File, lstart: int, lend: int) -> None:
    """``shmem_undo_range`` for a hole punch: every whole page of
    ``[lstart, lend]`` leaves the page cache (``truncate_inode_page``:
    unmapped again if something mapped it meanwhile, dirty cancelled, the
    cache's reference dropped) and its swap copy is freed; a page the range
    covers in part keeps its frame and has that part zeroed."""
    phys = mm.phys
    shift = mm.page_shift
    ps = mm.page_size
    start = (lstart + ps - 1) >> shift
    end = (lend + 1) >> shift
    partial_start = lstart & (ps - 1)
    partial_end = (lend + 1) & (ps - 1)
    split_partial = mm.linux >= (5, 7)  # 71725ed10c40
    for index in sorted(i for i in file.cache if start <= i < end):
        page = file.cache.get(index)
        if page is None:
            continue  # it went with its whole THP
        if phys._orders and phys.PageTransCompound(page):
            head = phys.compound_head(page)
            nr = 1 << phys.order[head]
            hindex = index - (page - head)
            if start <= hindex and hindex + nr <= end:
                _truncate_thp(mm, file, head, hindex, nr)
                continue
            if not split_partial or not _split_shmem_thp(mm, file, head):
                # v4.16: a subpage of a THP the hole covers in part is zeroed
                # (clear_highpage) and the THP stays whole in the cache;
                # from v5.7 (shmem_punch_compound) so is every subpage when
                # the split fails
                _clear_page(mm, page)
                continue
            # v5.7+: split, so this page leaves the cache as an order-0 page
        if _page_mapped(file, index, page, shift):
            unmap_mapping_range(file, index << shift, ps, False)
        phys.ClearPageDirty(page)  # cancel_dirty_page
        del file.cache[index]  # delete_from_page_cache
        phys.host_put(page)
    for index in [i for i in (*file.disk, *file.needs_io) if start <= i < end]:
        file.disk.pop(index, None)  # shmem_free_swap
        file.needs_io.discard(index)
    if partial_start:
        top = ps
        if start > end:
            top, partial_end = partial_end, 0
        _zero_segment(mm, file, start - 1, partial_start, top)
    if partial_end:
        _zero_segment(mm, file, end, 0, partial_end)


def _truncate_thp(mm: Mm, file: File, head: int, hindex: int, nr: int) -> None:
    """``truncate_inode_page`` of a page-cache THP the hole covers whole:
    unmapped first if still mapped (``unmap_mapping_pages`` over its
    ``HPAGE_PMD_NR`` pages), dirty cancelled, its ``nr`` cache entries and
    references go."""
    shift = mm.page_shift
    if any(_page_mapped(file, hindex + i, head + i, shift) for i in range(nr)):
        unmap_mapping_range(file, hindex << shift, nr << shift, False)
    mm.phys.ClearPageDirty(head)
    for i in range(nr):
        del file.cache[hindex + i]
    mm.phys.host_put(head, nr)


def _clear_page(mm: Mm, page: int) -> None:
    """``clear_highpage``: the frame reads zero from now on (not dirtied)."""
    phys = mm.phys
    for off in list(phys.page_contents(page)):
        phys.write_word(page, off, 0)


def _split_shmem_thp(mm: Mm, file: File, head: int) -> bool:
    """``split_huge_page`` of a shmem THP a hole covers in part (v5.7's
    ``shmem_punch_compound``, 71725ed10c40; v6.13's
    ``truncate_inode_partial_folio``; read in 5.7.14 and 6.13.7).

    Refused when someone beyond the page cache and the mappings holds a
    reference (``can_split_huge_page``).  Otherwise every PMD mapping is
    zapped (``unmap_page`` → ``split_huge_pmd_address``: a file PMD is not
    split into PTEs), each PTE mapping is unmapped and restored (a notifier
    pair per page: ``try_to_unmap_one`` with migration entries, then
    ``remove_migration_ptes``), and the compound page becomes order-0
    pages, each keeping its cache reference and one per PTE that maps it."""
    phys = mm.phys
    if phys._others.get(head, 0) > 0:
        return False
    nr = 1 << phys.order[head]
    hs = THP_SHIFT
    for v in list(file.mapping):
        m = v.mm
        if m is None:
            continue
        for hva, shift, e in m.pgtable.huge_in(v.start, v.end):
            if shift == hs and e & PTE_PRESENT and e >> PTE_PFN_SHIFT == head:
                m.split_huge_pmd(v, hva)
    ptes = _mappings(mm, head, nr)
    for hva, _shift, _e in ptes:
        mm.notify_start(hva, hva + mm.page_size)
        mm.notify_end(hva, hva + mm.page_size)
    maps: dict[int, int] = {}
    for _hva, _shift, e in ptes:
        p = e >> PTE_PFN_SHIFT
        maps[p] = maps.get(p, 0) + 1
    fl = phys.flags.get(head, 0) & ~(PG_HEAD | PG_THP)
    owner = phys.owner.get(head, f"pagecache:{file.name}")
    phys.order.pop(head)
    for p in range(head, head + nr):
        c = 1 + maps.get(p, 0)  # its cache entry and its PTEs
        phys.refcount[p] = c
        phys.host_refs[p] = c
        phys.flags[p] = fl
        phys.owner[p] = owner
    if mm.tracer.enabled:
        mm.tracer.emit("split_huge_page", pfn=head, order=nr.bit_length() - 1, file=file.name)
    return True


def _zero_segment(mm: Mm, file: File, index: int, lo: int, hi: int) -> None:
    """``shmem_getpage(SGP_READ)`` then ``zero_user_segment(page, lo, hi)``
    and ``set_page_dirty``: only a page in the cache; the frame stays."""
    page = file.cache.get(index)
    if page is None:
        return
    phys = mm.phys
    for off in list(phys.page_contents(page)):
        if lo <= off < hi:
            phys.write_word(page, off, 0)
    phys.SetPageDirty(page)


def _page_mapped(file: File, index: int, page: int, shift: int) -> bool:
    """``page_mapped``: some vma of the file maps the cache page at ``index``."""
    for v in file.mapping:
        m = v.mm
        if m is None or not v.pgoff <= index < v.pgoff + v.npages(shift):
            continue
        hva = v.start + ((index - v.pgoff) << shift)
        e, hshift = m.pgtable.find_linux_pte(hva)
        if e is None or not e & PTE_PRESENT:
            continue
        pfn = e >> PTE_PFN_SHIFT
        if hshift:  # a PMD mapping a page-cache THP: the subpage at hva
            pfn += (hva & ((1 << hshift) - 1)) >> shift
        if pfn == page:
            return True
    return False


def _hugetlbfs_punch_hole(mm: Mm, file: File, offset: int, length: int) -> int:
    """``hugetlbfs_punch_hole``: the hole shrinks to whole huge pages (a
    hole inside one huge page does nothing: v4.16 zeroes no partial huge
    page); every mapping of it is unmapped (``hugetlb_vmdelete_list``,
    private mappings' pages too), then the pages leave the page cache
    (``remove_inode_hugepages``)."""
    hshift = _huge_shift(file)
    hsize = 1 << hshift
    hole_start = (offset + hsize - 1) & ~(hsize - 1)
    hole_end = (offset + length) & ~(hsize - 1)
    if hole_end <= hole_start:
        return 0
    shift = mm.page_shift
    _hugetlb_vmdelete_list(file, hole_start >> shift, hole_end >> shift)
    _remove_inode_hugepages(mm, file, hole_start, hole_end, hshift)
    return 0


def _huge_shift(file: File) -> int:
    """The huge page shift of a hugetlbfs file (``hstate_inode``): the
    mappings' (a file with none has no page to free anyway)."""
    for v in file.mapping:
        if v.huge_shift:
            return v.huge_shift
    return THP_SHIFT


def _hugetlb_vmdelete_list(file: File, start: int, end: int) -> None:
    """``hugetlb_vmdelete_list(&mapping->i_mmap, start, end)``, page offsets.

    The interval tree is searched with ``end`` as the *last* offset, so a
    vma starting right at ``end`` is visited too and gets an empty
    ``unmap_hugepage_range`` (an empty notifier pair), as in v4.16.
    """
    for v in list(file.mapping):
        m = v.mm
        if m is None:
            continue
        shift = m.page_shift
        first, last = v.pgoff, v.pgoff + v.npages(shift) - 1
        if last < start or first > end:
            continue
        v_offset = (start - v.pgoff) << shift if v.pgoff < start else 0
        v_end = min(((end - v.pgoff) << shift) + v.start, v.end)
        _unmap_hugepage_range(m, v, v.start + v_offset, v_end)


def _unmap_hugepage_range(mm: Mm, vma: Vma, start: int, end: int) -> None:
    """``unmap_hugepage_range`` → ``__unmap_hugepage_range``: a notifier
    pair over the range, each huge entry cleared and its reference dropped."""
    _notified_zap(mm, vma, start, end, "unmap_hugepage_range", split_edges=False)


def _remove_inode_hugepages(mm: Mm, file: File, lstart: int, lend: int, hshift: int) -> None:
    """``remove_inode_hugepages`` for a hole punch: each cached huge page of
    the hole, unmapped again if it was faulted back in meanwhile, leaves the
    page cache (``remove_huge_page``, the cache's reference dropped)."""
    phys = mm.phys
    start, end = lstart >> hshift, lend >> hshift
    order = hshift - mm.page_shift
    for index in sorted(i for i in file.cache if start <= i < end):
        page = file.cache[index]
        if _page_mapped(file, index << order, page, mm.page_shift):
            _hugetlb_vmdelete_list(file, index << order, (index + 1) << order)
        del file.cache[index]
        phys.host_put(page)
