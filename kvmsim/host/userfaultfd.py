"""userfaultfd: registered ranges, ``handle_userfault`` and the resolving
ioctls (fs/userfaultfd.c, mm/userfaultfd.c, the uffd parts of mm/shmem.c
and mm/hugetlb.c).

One userfaultfd per process (``Mm.uffd``): ``UFFDIO_REGISTER`` splits the
vmas at the range's ends and sets ``VM_UFFD_MISSING`` or ``VM_UFFD_MINOR``
on them (:func:`userfaultfd_register`).  The fault handlers call
:func:`handle_userfault` where the kernel does: MISSING when the page is in
neither the page table nor (shmem, hugetlbfs) the page cache, MINOR when the
page cache has it but the PTE is absent (hugetlbfs from v5.13, shmem from
v5.14).  ``handle_userfault`` decides by the fault flags:

- with UFFD_FEATURE_SIGBUS on the userfaultfd (``UserfaultfdCtx.sigbus``,
  v4.14): VM_FAULT_SIGBUS, whatever the flags;
- without FAULT_FLAG_ALLOW_RETRY: VM_FAULT_SIGBUS (gup turns it into
  -EFAULT);
- with FAULT_FLAG_RETRY_NOWAIT (``FOLL_NOWAIT``): VM_FAULT_RETRY at once,
  ``mmap_sem`` still held, no message queued;
- otherwise: the fault message is queued (``fault_pending_wqh``), the page
  table is checked again (``userfaultfd_must_wait``), ``mmap_sem`` is
  dropped and, if the page is still missing, the task sleeps until a
  resolving ioctl wakes it; VM_FAULT_RETRY either way.

The faulting task is a vcpu's gup (KVM) or QEMU's own thread touching guest
memory through its mapping (:func:`kvmsim.host.events.user_fault`, whose user
fault has ALLOW_RETRY: it sleeps, kernel-notes §U.7).

Sleeping: in a concurrent run the task blocks on the userfaultfd (it is not
runnable until woken: the explorer's ``blocked`` point); in a sequential run
``UserfaultfdCtx.serve`` runs the handler's next resolving step (the runner
installs it, :mod:`kvmsim.uffdsteps`) and a task nobody serves is a
:class:`~kvmsim.host.rwsem.Deadlock`.

The handler's ioctls (:func:`userfaultfd_copy`, :func:`userfaultfd_zeropage`,
:func:`userfaultfd_continue`, :func:`userfaultfd_wake`) first read the
oldest queued message whose address lies in their range (the handler reads a
message, then resolves it, as the kernel selftests' handlers do; each read
counts in ``UserfaultfdCtx.faults_read``, the selftests' ``uffd_faults``),
then install pages and wake every waiter in the range.

Per release, where it matters here (``Mm.linux``): MINOR registration and
UFFDIO_CONTINUE (v5.13 hugetlbfs 7677f7fd8be7 / f619147104c8, v5.14 shmem
c949b097ef2e / 153132571f02); UFFDIO_COPY on a MAP_PRIVATE shmem vma
allocates anonymous memory from v4.20 (5b51072e97d5; v4.16 adds the page
to the page cache).

Read from: Linux 4.16.13 (lizuobin/linux-4.16.13_tiny4412) fs/userfaultfd.c
``handle_userfault``, ``userfaultfd_must_wait``, ``userfaultfd_huge_must_wait``,
``userfaultfd_wake_function``, ``wake_userfault``, ``userfaultfd_register``,
``userfaultfd_copy``, ``userfaultfd_zeropage``; mm/userfaultfd.c
``__mcopy_atomic``, ``mcopy_atomic_pte``, ``mfill_zeropage_pte``,
``__mcopy_atomic_hugetlb``; mm/shmem.c ``shmem_getpage_gfp``,
``shmem_mfill_atomic_pte``; mm/hugetlb.c ``hugetlb_no_page``.  The v5.8-era
fs/userfaultfd.c of torvalds/linux (same ``handle_userfault`` decisions),
and v6.x ``mfill_atomic_install_pte`` / ``mcontinue_atomic_pte`` (kernel-notes
§U).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from attrs import define

from kvmsim.cmodel import BUG_ON, EAGAIN, EEXIST, EFAULT, EINVAL, ENOENT
from kvmsim.host.constants import (
    FAULT_FLAG_ALLOW_RETRY,
    FAULT_FLAG_RETRY_NOWAIT,
    PG_ANON,
    PTE_DIRTY,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_SPECIAL,
    PTE_WRITE,
    THP_SHIFT,
    VM_FAULT_MAJOR,
    VM_FAULT_RETRY,
    VM_FAULT_SIGBUS,
    VM_HUGETLB,
    VM_MAYSHARE,
    VM_SHARED,
    VM_WRITE,
)
from kvmsim.host.rwsem import Deadlock

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm
    from kvmsim.host.vma import Vma

__all__ = [
    "MINOR_SINCE",
    "UFFD_MODES",
    "VM_UFFD_MINOR",
    "VM_UFFD_MISSING",
    "UffdWait",
    "UserfaultfdCtx",
    "handle_userfault",
    "register_unsupported",
    "scenario_min_linux",
    "userfaultfd_continue",
    "userfaultfd_copy",
    "userfaultfd_must_wait",
    "userfaultfd_register",
    "userfaultfd_wake",
    "userfaultfd_zeropage",
    "vma_can_userfault",
    "wake_userfault",
]

VM_UFFD_MISSING: Final = 0x00000200  # include/linux/mm.h
VM_UFFD_MINOR: Final = 1 << 37  # VM_UFFD_MINOR_BIT (v5.13)
VM_UFFD: Final = VM_UFFD_MISSING | VM_UFFD_MINOR

#: scenario ``mode`` → vm_flags bit
UFFD_MODES: Final = {"missing": VM_UFFD_MISSING, "minor": VM_UFFD_MINOR}

#: the first release with UFFDIO_REGISTER_MODE_MINOR on a backing, and the commit
MINOR_SINCE: Final = {
    "hugetlbfs": ((5, 13), "7677f7fd8be7"),
    "shmem": ((5, 14), "c949b097ef2e"),
}

_PRIVATE_SHMEM_ANON: Final = (4, 20)  # 5b51072e97d5


@define(slots=True, eq=False)
class UffdWait:
    """``struct userfaultfd_wait_queue``: one task waiting in ``handle_userfault``.

    :param address: the fault message's address (page aligned; the huge
        page's base on hugetlbfs).
    :param reason: ``VM_UFFD_MISSING`` or ``VM_UFFD_MINOR``.
    :param task: the waiting task.
    :param waken: a wake-up reached it (``uwq.waken``).
    """

    address: int
    reason: int
    task: str
    waken: bool = False


class UserfaultfdCtx:
    """``struct userfaultfd_ctx``: the queued fault messages and the waiters.

    ``pending`` is ``fault_pending_wqh`` (queued, not read yet), ``read``
    is ``fault_wqh`` (read by the handler, still asleep); ``faults_read``
    counts the messages the handler read.  ``serve`` (sequential runs only)
    runs the handler's next step that covers a waiter, returning False when
    there is none.
    """

    __slots__ = ("faults_read", "name", "pending", "read", "serve", "sigbus")

    def __init__(self) -> None:
        self.name = "userfaultfd"
        self.sigbus = False  # UFFD_FEATURE_SIGBUS (UFFDIO_API, v4.14)
        self.pending: list[UffdWait] = []
        self.read: list[UffdWait] = []
        self.faults_read = 0
        self.serve: Callable[[UffdWait], bool] | None = None

    def read_message(self, start: int, end: int) -> UffdWait | None:
        """``userfaultfd_read`` of the oldest queued message whose address
        lies in ``[start, end)``: it moves to ``read`` and counts."""
        for uwq in self.pending:
            if start <= uwq.address < end:
                self.pending.remove(uwq)
                self.read.append(uwq)
                self.faults_read += 1
                return uwq
        return None


# ---------------------------------------------------------------------- registration


def vma_can_userfault(vma: Vma, mode: int, linux: tuple[int, int]) -> bool:
    """``vma_can_userfault``: anonymous, hugetlbfs or shmem for MISSING;
    MINOR only on hugetlbfs (v5.13) and shmem (v5.14)."""
    hugetlb = bool(vma.flags & VM_HUGETLB)
    shmem = vma.file is not None and vma.file.shmem
    if mode & VM_UFFD_MINOR:
        return (hugetlb and linux >= MINOR_SINCE["hugetlbfs"][0]) or (
            shmem and linux >= MINOR_SINCE["shmem"][0]
        )
    return vma.is_anonymous() or hugetlb or shmem


def scenario_min_linux(scenario: Any) -> tuple[int, int] | None:
    """The first release whose UFFDIO_REGISTER accepts every ``[[uffd]]``
    of ``scenario`` (None: every release modelled does)."""
    need: tuple[int, int] | None = None
    for u in scenario.uffd:
        if u.mode != "minor":
            continue
        v = scenario.vma(u.vma)
        since = MINOR_SINCE.get("shmem" if v.backing == "anon" and v.shared else v.backing)
        if since is not None and (need is None or since[0] > need):
            need = since[0]
    return need


def register_unsupported(scenario: Any, linux: tuple[int, int]) -> str | None:
    """Why a scenario's ``[[uffd]]`` MINOR registration fails on ``linux``
    (the mode is unknown there: UFFDIO_REGISTER is -EINVAL), or None."""
    for u in scenario.uffd:
        if u.mode != "minor":
            continue
        v = scenario.vma(u.vma)
        backing = "shmem" if v.backing == "anon" and v.shared else v.backing
        since = MINOR_SINCE.get(backing)
        if since is not None and linux < since[0]:
            (major, minor), commit = since
            return (
                f"uffd[{u.index}]: UFFDIO_REGISTER_MODE_MINOR on {backing} exists from "
                f"Linux v{major}.{minor} ({commit}); this strategy's kernel is "
                f"v{linux[0]}.{linux[1]}: UFFDIO_REGISTER fails with -EINVAL"
            )
    return None


def userfaultfd_register(mm: Mm, start: int, end: int, mode: int) -> int:
    """``userfaultfd_register``: every vma in ``[start, end)`` must be able
    to userfault and the range must have no hole; a hugetlbfs vma needs huge
    page aligned ends.  The vmas are split at the ends (``split_vma``, with a
    THP straddling an end split first) and get the mode's flag.  0 or -EINVAL."""
    mm.mmap_sem.down_write(mm.current)
    try:
        vmas = mm._vmas_in(start, end)
        pos = start
        for v in vmas:
            if v.start > pos or not vma_can_userfault(v, mode, mm.linux):
                return -EINVAL
            if v.flags & VM_HUGETLB:
                mask = (1 << v.huge_shift) - 1
                if max(start, v.start) & mask or (end < v.end and end & mask):
                    return -EINVAL
            pos = v.end
        if not vmas or pos < end:
            return -EINVAL
        mm._split_thp_edges(start, end)
        mm._split_at(start)
        mm._split_at(end)
        for v in mm._vmas_in(start, end):
            v.flags |= mode
        if mm.uffd is None:
            mm.uffd = UserfaultfdCtx()
        if mm.tracer.enabled:
            mm.tracer.emit("userfaultfd_register", start=start, end=end, mode=hex(mode))
        return 0
    finally:
        mm.mmap_sem.up_write(mm.current)


# ---------------------------------------------------------------------- the fault side


def userfaultfd_must_wait(mm: Mm, vma: Vma, address: int) -> bool:
    """``userfaultfd_must_wait`` / ``userfaultfd_huge_must_wait``: the page
    table entry is still none (a huge PMD, or any non-none entry, is not)."""
    pgt = mm.pgtable
    if vma.flags & VM_HUGETLB:
        d = pgt.huge.get(vma.huge_shift)
        return d is None or (address >> vma.huge_shift) not in d
    d = pgt.huge.get(THP_SHIFT)
    if d is not None and (address >> THP_SHIFT) in d:
        return False
    return (address >> mm.page_shift) not in pgt.ptes


def handle_userfault(mm: Mm, vma: Vma, address: int, flags: int, reason: int) -> int:
    """``handle_userfault(vmf, reason)`` → VM_FAULT_* (see the module docstring).

    Entered with ``mmap_sem`` held for read by ``mm.current``; returns
    VM_FAULT_RETRY with it released unless RETRY_NOWAIT."""
    ctx = mm.uffd
    BUG_ON(ctx is None, "handle_userfault on a vma no userfaultfd registered")
    assert ctx is not None
    if vma.flags & VM_HUGETLB:
        address &= ~((1 << vma.huge_shift) - 1)
    else:
        address &= ~(mm.page_size - 1)
    if ctx.sigbus:
        # checked before the fault flags: even a RETRY_NOWAIT try gets it
        _traced(mm, address, reason, result="VM_FAULT_SIGBUS", why="UFFD_FEATURE_SIGBUS")
        return VM_FAULT_SIGBUS
    if not flags & FAULT_FLAG_ALLOW_RETRY:
        BUG_ON(bool(flags & FAULT_FLAG_RETRY_NOWAIT), "RETRY_NOWAIT without ALLOW_RETRY")
        _traced(mm, address, reason, result="VM_FAULT_SIGBUS", why="FAULT_FLAG_ALLOW_RETRY missing")
        return VM_FAULT_SIGBUS
    if flags & FAULT_FLAG_RETRY_NOWAIT:
        why = "FAULT_FLAG_RETRY_NOWAIT: no message, mmap_sem kept"
        _traced(mm, address, reason, result="VM_FAULT_RETRY", why=why)
        return VM_FAULT_RETRY
    if mm.race_points or mm.sched is not None:
        mm.fire_point("handle_userfault")
    uwq = UffdWait(address, reason, mm.current)
    ctx.pending.append(uwq)
    must_wait = userfaultfd_must_wait(mm, vma, address)
    mm.mmap_sem.up_read(mm.current)
    ret = VM_FAULT_RETRY
    _traced(mm, address, reason, must_wait=must_wait, result="VM_FAULT_RETRY")
    if must_wait:
        ret |= VM_FAULT_MAJOR
        _sleep(mm, ctx, uwq)
    # still queued (not woken, or must_wait was false): take it off
    if uwq in ctx.pending:
        ctx.pending.remove(uwq)
    if uwq in ctx.read:
        ctx.read.remove(uwq)
    return ret


def _traced(mm: Mm, address: int, reason: int, **answer: object) -> None:
    """The ``handle_userfault`` trace event: what it answered and why (the
    keys in the order given)."""
    if mm.tracer.enabled:
        mm.tracer.emit("handle_userfault", address=address, reason=_reason(reason), **answer)


def _sleep(mm: Mm, ctx: UserfaultfdCtx, uwq: UffdWait) -> None:
    """``schedule()`` until ``uwq.waken``."""
    sched = mm.sched
    if sched is not None:
        while not uwq.waken:
            sched.block(ctx)
        return
    while not uwq.waken:
        if ctx.serve is None or not ctx.serve(uwq):
            raise Deadlock(
                f"userfaultfd (no later uffd step resolves {uwq.address:#x})",
                uwq.task,
                {},
            )


def wake_userfault(mm: Mm, start: int, length: int) -> int:
    """``wake_userfault``: every waiter (queued or read) whose address lies
    in ``[start, start + length)`` is woken and leaves the queues.  Returns
    how many."""
    ctx = mm.uffd
    if ctx is None:
        return 0
    end = start + length
    woken = 0
    for q in (ctx.pending, ctx.read):
        for uwq in list(q):
            if start <= uwq.address < end:
                uwq.waken = True
                q.remove(uwq)
                woken += 1
    if woken and mm.sched is not None:
        mm.sched.released(ctx)
    if mm.tracer.enabled:
        mm.tracer.emit("wake_userfault", start=start, len=length, woken=woken)
    return woken


def _reason(reason: int) -> str:
    return "VM_UFFD_MINOR" if reason & VM_UFFD_MINOR else "VM_UFFD_MISSING"


# ---------------------------------------------------------------------- the ioctls


def userfaultfd_copy(mm: Mm, start: int, length: int, value: int) -> int:
    """``UFFDIO_COPY``: read a message, ``mcopy_atomic`` of pages whose
    first 8 bytes hold ``value``, then wake the copied range.  0, -EAGAIN
    (partly copied) or the first page's -errno (nothing copied, nobody woken)."""

    def fill() -> int:
        return _mfill(mm, start, length, value, "copy")

    return _ioctl(mm, "UFFDIO_COPY", start, length, fill)


def userfaultfd_zeropage(mm: Mm, start: int, length: int) -> int:
    """``UFFDIO_ZEROPAGE``: as :func:`userfaultfd_copy` with zeroed pages
    (the zero page on private anonymous memory; -EINVAL on hugetlbfs)."""

    def fill() -> int:
        return _mfill(mm, start, length, 0, "zero")

    return _ioctl(mm, "UFFDIO_ZEROPAGE", start, length, fill)


def userfaultfd_continue(mm: Mm, start: int, length: int) -> int:
    """``UFFDIO_CONTINUE`` (v5.13): map the page cache's pages; -EFAULT where
    the cache has none.  -EINVAL before v5.13 (no such ioctl)."""
    if mm.linux < MINOR_SINCE["hugetlbfs"][0]:
        return -EINVAL
    return _ioctl(
        mm, "UFFDIO_CONTINUE", start, length, lambda: _mfill(mm, start, length, 0, "continue")
    )


def userfaultfd_wake(mm: Mm, start: int, length: int) -> int:
    """``UFFDIO_WAKE``: read a message, wake the range, install nothing."""
    ctx = mm.uffd
    if ctx is None:
        return -EINVAL
    uwq = ctx.read_message(start, start + length)
    woken = wake_userfault(mm, start, length)
    if mm.tracer.enabled:
        mm.tracer.emit(
            "UFFDIO_WAKE",
            start=start,
            len=length,
            read=None if uwq is None else uwq.address,
            woken=woken,
        )
    return 0


def _ioctl(mm: Mm, name: str, start: int, length: int, fill: Callable[[], int]) -> int:
    ctx = mm.uffd
    if ctx is None:
        return -EINVAL
    uwq = ctx.read_message(start, start + length)
    done = fill()
    woken = 0
    if done > 0:
        woken = wake_userfault(mm, start, done)
    ret = done if done < 0 else (0 if done == length else -EAGAIN)
    if mm.tracer.enabled:
        mm.tracer.emit(
            name,
            start=start,
            len=length,
            read=None if uwq is None else uwq.address,
            filled=max(done, 0),
            woken=woken,
            ret=ret,
        )
    return ret


def _mfill(mm: Mm, start: int, length: int, value: int, how: str) -> int:
    """``__mcopy_atomic`` (copy and zeropage) and ``__mcopy_atomic``'s
    CONTINUE mode: under ``mmap_sem`` for read, the range must lie inside
    one registered vma (-ENOENT); hugetlbfs goes page by huge page; the
    bytes filled, or the first page's -errno."""
    mm.mmap_sem.down_read(mm.current)
    try:
        vma = mm.find_vma(start)
        if vma is None or not vma.flags & VM_UFFD:
            return -ENOENT
        if start < vma.start or start + length > vma.end:
            return -ENOENT
        if vma.flags & VM_HUGETLB:
            return _mfill_hugetlb(mm, vma, start, length, value, how)
        shmem = vma.file is not None and vma.file.shmem
        if not vma.is_anonymous() and not shmem:
            return -EINVAL
        ps = mm.page_size
        thp = mm.pgtable.huge.get(THP_SHIFT)
        done = 0
        err = 0
        while done < length:
            addr = start + done
            if thp is not None and (addr >> THP_SHIFT) in thp:
                err = -EEXIST  # a THP PMD is there: be strict
                break
            err = _mfill_pte(mm, vma, addr, value, how)
            if err:
                break
            done += ps
        return done if done else err
    finally:
        mm.mmap_sem.up_read(mm.current)


def _mfill_pte(mm: Mm, vma: Vma, addr: int, value: int, how: str) -> int:
    """``mfill_atomic_pte``: anonymous memory (and MAP_PRIVATE shmem from
    v4.20) gets a new anonymous page or the zero page; shmem a new page in
    the page cache; CONTINUE the page cache's page."""
    if how == "continue":
        return _mcontinue_pte(mm, vma, addr)
    private = vma.is_anonymous() or (not vma.flags & VM_SHARED and mm.linux >= _PRIVATE_SHMEM_ANON)
    if private:
        if how == "zero":
            return _mfill_zeropage_pte(mm, vma, addr)
        return _mcopy_atomic_pte(mm, vma, addr, value)
    return _shmem_mfill_atomic_pte(mm, vma, addr, value)


def _install(mm: Mm, vma: Vma, addr: int, entry: int) -> bool:
    """Take the page table lock (the ``uffd_install`` point comes first: the
    page is filled, the lock not yet taken) and set the PTE unless one is
    there (-EEXIST); no notifier: the entry was none ("no need to
    invalidate")."""
    if mm.race_points or mm.sched is not None:
        mm.fire_point("uffd_install")
    vpn = addr >> mm.page_shift
    if vpn in mm.pgtable.ptes:
        return False
    mm.pgtable.ptes[vpn] = entry
    return True


def _mcopy_atomic_pte(mm: Mm, vma: Vma, addr: int, value: int) -> int:
    """``mcopy_atomic_pte``: a new anonymous page holding the copy, mapped
    writable and dirty when the vma is writable."""
    phys = mm.phys
    page = phys.alloc_pages(0, owner="anon", kind="anon")
    if value:
        phys.write_word(page, 0, value)
    entry = (page << PTE_PFN_SHIFT) | vma.page_prot
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE | PTE_DIRTY
    if not _install(mm, vma, addr, entry):
        phys.host_put(page)
        return -EEXIST
    return 0


def _mfill_zeropage_pte(mm: Mm, vma: Vma, addr: int) -> int:
    """``mfill_zeropage_pte``: the zero page, special, with the vma's
    protection (read-only on a private mapping)."""
    phys = mm.phys
    entry = (phys.zero_pfn << PTE_PFN_SHIFT) | ((vma.page_prot | PTE_SPECIAL) & ~PTE_WRITE)
    return 0 if _install(mm, vma, addr, entry) else -EEXIST


def _shmem_index(mm: Mm, vma: Vma, addr: int) -> int:
    return vma.pgoff + ((addr - vma.start) >> mm.page_shift)


def _shmem_mfill_atomic_pte(mm: Mm, vma: Vma, addr: int, value: int) -> int:
    """``shmem_mfill_atomic_pte`` (copy and zeropage): a new page added to the
    page cache (-EEXIST if the index has one), then the PTE; on a PTE that
    appeared meanwhile the page stays in the cache, as v4.16 leaves it."""
    f = vma.file
    assert f is not None
    phys = mm.phys
    index = _shmem_index(mm, vma, addr)
    if index in f.cache or index in f.needs_io:
        return -EEXIST  # shmem_add_to_page_cache
    page = phys.alloc_pages(0, owner=f"pagecache:{f.name}", kind="file")
    if value:
        phys.write_word(page, 0, value)
    f.cache[index] = page
    entry = (page << PTE_PFN_SHIFT) | vma.page_prot
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE | PTE_DIRTY
    phys.host_get(page)  # the mapping's reference
    if not _install(mm, vma, addr, entry):
        phys.host_put(page)
        return -EEXIST
    return 0


def _mcontinue_pte(mm: Mm, vma: Vma, addr: int) -> int:
    """``mcontinue_atomic_pte`` (v5.14) → ``mfill_atomic_install_pte``: the
    page cache's page, dirty, writable only on a shared writable vma;
    -EFAULT when the cache has no page there."""
    f = vma.file
    if f is None or not f.shmem:
        return -EINVAL
    index = _shmem_index(mm, vma, addr)
    page = f.cache.get(index)
    if page is None:
        return -EFAULT
    phys = mm.phys
    phys.host_get(page)  # shmem_getpage's reference becomes the mapping's
    entry = (page << PTE_PFN_SHIFT) | (vma.page_prot & ~PTE_WRITE) | PTE_DIRTY
    if vma.flags & VM_WRITE and vma.flags & VM_SHARED:
        entry |= PTE_WRITE
    if not _install(mm, vma, addr, entry):
        phys.host_put(page)
        return -EEXIST
    return 0


def _mfill_hugetlb(mm: Mm, vma: Vma, start: int, length: int, value: int, how: str) -> int:
    """``__mcopy_atomic_hugetlb``: no zeropage (-EINVAL); huge page aligned
    range (-EINVAL); per huge page, -EEXIST on a non-none entry, else a new
    huge page (added to the hugetlbfs page cache on a shared mapping) or,
    for CONTINUE, the cache's page (-EFAULT without one)."""
    if how == "zero":
        return -EINVAL
    hs = vma.huge_shift
    size = 1 << hs
    if start & (size - 1) or length & (size - 1):
        return -EINVAL
    phys = mm.phys
    f = vma.file
    order = hs - mm.page_shift
    shared = bool(vma.flags & VM_MAYSHARE) and f is not None
    done = 0
    err = 0
    while done < length:
        addr = start + done
        d = mm.pgtable.huge.get(hs)
        if d is not None and (addr >> hs) in d:
            err = -EEXIST
            break
        idx = ((addr - vma.start) >> hs) + (vma.pgoff >> order)
        if how == "continue":
            page = f.cache.get(idx) if shared and f is not None else None
            if page is None:
                err = -EFAULT
                break
            phys.host_get(page)
            writable = bool(vma.flags & VM_WRITE) and bool(vma.flags & VM_SHARED)
        else:
            if shared and f is not None and idx in f.cache:
                err = -EEXIST  # huge_add_to_page_cache
                break
            if shared and f is not None:
                page = phys.alloc_pages(order, owner=f"hugetlbfs:{f.name}", kind="hugetlb")
                f.cache[idx] = page
                phys.host_get(page)
            else:
                page = phys.alloc_pages(order, owner="anon", kind="hugetlb")
                phys.flags[page] |= PG_ANON
            if value:
                phys.write_word(page, 0, value)
            writable = bool(vma.flags & VM_WRITE)
        entry = (page << PTE_PFN_SHIFT) | (vma.page_prot & ~PTE_WRITE) | PTE_PRESENT
        if writable:
            entry |= PTE_WRITE | PTE_DIRTY
        if mm.race_points or mm.sched is not None:
            mm.fire_point("uffd_install")
        d = mm.pgtable.huge.get(hs)
        if d is not None and (addr >> hs) in d:
            # hugetlb_mcopy_atomic_pte's check under the page table lock
            phys.host_put(page)
            err = -EEXIST
            break
        mm.pgtable.set_huge(addr, hs, entry)
        done += size
    return done if done else err
