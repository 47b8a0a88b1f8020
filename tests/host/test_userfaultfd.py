"""The host's userfaultfd (kvmsim/host/userfaultfd.py) against the kernel's
decisions (kernel-notes §U): handle_userfault's three answers, the
must-wait recheck, the wake range, the ioctls' page-table effects, the
registration's checks and splits, and gup's retry per release."""

from __future__ import annotations

import pytest

from kvmsim.cmodel import EAGAIN, EEXIST, EFAULT, EINVAL, ENOENT
from kvmsim.host import Mm, RecordingNotifier, events, get_user_pages, get_user_pages_unlocked
from kvmsim.host import userfaultfd as uffd
from kvmsim.host.constants import (
    FAULT_FLAG_ALLOW_RETRY,
    FAULT_FLAG_KILLABLE,
    FAULT_FLAG_RETRY_NOWAIT,
    FAULT_FLAG_TRIED,
    FAULT_FLAG_USER,
    FAULT_FLAG_WRITE,
    FOLL_NOWAIT,
    FOLL_WRITE,
    PTE_DIRTY,
    PTE_PFN_SHIFT,
    PTE_SPECIAL,
    PTE_WRITE,
    VM_FAULT_MAJOR,
    VM_FAULT_RETRY,
    VM_FAULT_SIGBUS,
)
from kvmsim.host.fault import handle_mm_fault
from kvmsim.host.fileio import file_write
from kvmsim.host.rwsem import Deadlock
from kvmsim.host.vma import File, Vma

SZ = 1 << 21


def _anon(mm: Mm, mode: int = uffd.VM_UFFD_MISSING) -> Vma:
    v = mm.mmap(SZ, prot="rw", shared=False, name="ram")
    assert uffd.userfaultfd_register(mm, v.start, v.end, mode) == 0
    return v


def _fault(mm: Mm, vma: Vma, addr: int, flags: int) -> int:
    mm.mmap_sem.down_read(mm.current)
    ret = handle_mm_fault(mm, vma, addr, flags)
    if not (ret & VM_FAULT_RETRY and flags & FAULT_FLAG_ALLOW_RETRY):
        mm.mmap_sem.up_read(mm.current)
    elif flags & FAULT_FLAG_RETRY_NOWAIT:
        mm.mmap_sem.up_read(mm.current)
    return ret


def _server(mm: Mm, act: object) -> list[int]:
    """A sequential handler: each wait runs ``act`` (a callable of the
    waiter) once; records the addresses it served."""
    served: list[int] = []

    def serve(uwq: uffd.UffdWait) -> bool:
        if len(served) >= 4:
            return False
        served.append(uwq.address)
        act(uwq)  # type: ignore[operator]
        return True

    assert mm.uffd is not None
    mm.uffd.serve = serve
    return served


def test_without_allow_retry_the_fault_is_sigbus(mm: Mm) -> None:
    v = _anon(mm)
    assert _fault(mm, v, v.start, 0) == VM_FAULT_SIGBUS
    assert mm.uffd is not None and mm.uffd.pending == [] and mm.uffd.faults_read == 0
    assert (v.start >> mm.page_shift) not in mm.pgtable.ptes


def test_nowait_returns_retry_with_mmap_sem_held_and_no_message(mm: Mm) -> None:
    v = _anon(mm)
    mm.mmap_sem.down_read(mm.current)
    ret = handle_mm_fault(mm, v, v.start, FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_RETRY_NOWAIT)
    assert ret == VM_FAULT_RETRY
    assert mm.mmap_sem.held_by() == {mm.current: "read"}
    mm.mmap_sem.up_read(mm.current)
    assert mm.uffd is not None and mm.uffd.pending == []


def test_allow_retry_queues_drops_mmap_sem_and_sleeps_until_woken(mm: Mm) -> None:
    v = _anon(mm)
    seen: list[dict[str, str]] = []

    def copy(uwq: uffd.UffdWait) -> None:
        seen.append(mm.mmap_sem.held_by())  # the faulting task released it
        assert uffd.userfaultfd_copy(mm, uwq.address, mm.page_size, 0xAB) == 0

    served = _server(mm, copy)
    mm.mmap_sem.down_read(mm.current)
    ret = handle_mm_fault(mm, v, v.start + 5, FAULT_FLAG_ALLOW_RETRY)
    assert ret == VM_FAULT_RETRY | VM_FAULT_MAJOR
    assert not mm.mmap_sem.is_locked()
    assert served == [v.start] and seen == [{}]
    assert mm.uffd is not None and mm.uffd.faults_read == 1
    pte = mm.pgtable.get_pte(v.start)
    assert pte is not None and mm.phys.read_word(pte >> PTE_PFN_SHIFT, 0) == 0xAB


def test_nobody_to_serve_is_a_task_asleep_for_ever(mm: Mm) -> None:
    v = _anon(mm)
    mm.mmap_sem.down_read(mm.current)
    with pytest.raises(Deadlock):
        handle_mm_fault(mm, v, v.start, FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_WRITE)


def test_a_page_installed_before_the_recheck_is_not_waited_for(mm: Mm) -> None:
    v = _anon(mm)
    served = _server(mm, lambda uwq: None)
    # the copy lands between the fault's own pte check and the queueing
    mm.race_points["handle_userfault"] = lambda: uffd.userfaultfd_copy(mm, v.start, mm.page_size, 1)
    mm.mmap_sem.down_read(mm.current)
    assert handle_mm_fault(mm, v, v.start, FAULT_FLAG_ALLOW_RETRY) == VM_FAULT_RETRY
    assert served == [] and not mm.mmap_sem.is_locked()
    assert mm.uffd is not None and mm.uffd.pending == [] and mm.uffd.faults_read == 0


def test_wake_reaches_only_the_range(mm: Mm) -> None:
    v = _anon(mm)
    ctx = mm.uffd
    assert ctx is not None
    ps = mm.page_size
    a, b = (
        uffd.UffdWait(v.start, uffd.VM_UFFD_MISSING, "x"),
        uffd.UffdWait(v.start + ps, uffd.VM_UFFD_MISSING, "y"),
    )
    ctx.pending += [a, b]
    assert uffd.wake_userfault(mm, v.start, ps) == 1
    assert a.waken and not b.waken and ctx.pending == [b]


def test_copy_maps_a_new_writable_page_without_notifier(mm: Mm, rec: RecordingNotifier) -> None:
    v = _anon(mm)
    ps = mm.page_size
    assert uffd.userfaultfd_copy(mm, v.start, 2 * ps, 0x55) == 0
    for i in range(2):
        pte = mm.pgtable.get_pte(v.start + i * ps)
        assert pte is not None and pte & PTE_WRITE and pte & PTE_DIRTY
        assert mm.phys.read_word(pte >> PTE_PFN_SHIFT, 0) == 0x55
    assert rec.calls == []
    # the first page is there: nothing copied, -EEXIST
    assert uffd.userfaultfd_copy(mm, v.start + ps, 2 * ps, 1) == -EEXIST
    assert mm.pgtable.get_pte(v.start + 2 * ps) is None
    # the second page is there: one page copied, -EAGAIN
    assert uffd.userfaultfd_copy(mm, v.start + 5 * ps, ps, 1) == 0
    assert uffd.userfaultfd_copy(mm, v.start + 4 * ps, 2 * ps, 7) == -EAGAIN
    pte = mm.pgtable.get_pte(v.start + 4 * ps)
    assert pte is not None and mm.phys.read_word(pte >> PTE_PFN_SHIFT, 0) == 7


def test_zeropage_maps_the_zero_page_read_only(mm: Mm) -> None:
    v = _anon(mm)
    assert uffd.userfaultfd_zeropage(mm, v.start, mm.page_size) == 0
    pte = mm.pgtable.get_pte(v.start)
    assert pte is not None and pte >> PTE_PFN_SHIFT == mm.phys.zero_pfn
    assert pte & PTE_SPECIAL and not pte & PTE_WRITE


def test_ioctls_outside_a_registered_vma_are_enoent(mm: Mm) -> None:
    _anon(mm)
    other = mm.mmap(SZ, prot="rw", shared=False, name="other")
    assert uffd.userfaultfd_copy(mm, other.start, mm.page_size, 1) == -ENOENT


def test_shmem_copy_lands_in_the_page_cache_and_continue_maps_it(mm: Mm) -> None:
    mm.linux = (6, 13)
    f = File(name="memfd", size=SZ, shmem=True)
    v = mm.mmap(SZ, prot="rw", shared=True, file=f, name="shm")
    assert uffd.userfaultfd_register(mm, v.start, v.end, uffd.VM_UFFD_MISSING) == 0
    assert uffd.userfaultfd_copy(mm, v.start, mm.page_size, 9) == 0
    assert 0 in f.cache
    # MINOR: a cached page, no PTE → CONTINUE maps that very page
    ps = mm.page_size
    g = File(name="memfd2", size=SZ, shmem=True)
    w = mm.mmap(SZ, prot="rw", shared=True, file=g, name="shm2")
    assert uffd.userfaultfd_register(mm, w.start, w.end, uffd.VM_UFFD_MINOR) == 0
    page = mm.phys.alloc_pages(0, owner="pagecache:memfd2", kind="file")
    g.cache[1] = page
    assert uffd.userfaultfd_continue(mm, w.start, ps) == -EFAULT  # index 0 not cached
    assert uffd.userfaultfd_continue(mm, w.start + ps, ps) == 0
    pte = mm.pgtable.get_pte(w.start + ps)
    assert pte is not None and pte >> PTE_PFN_SHIFT == page and pte & PTE_WRITE


def test_minor_fault_only_on_a_cached_page(mm: Mm) -> None:
    mm.linux = (6, 13)
    g = File(name="memfd", size=SZ, shmem=True)
    w = mm.mmap(SZ, prot="rw", shared=True, file=g, name="shm")
    assert uffd.userfaultfd_register(mm, w.start, w.end, uffd.VM_UFFD_MINOR) == 0
    g.cache[1] = mm.phys.alloc_pages(0, owner="pagecache:memfd", kind="file")
    ps = mm.page_size
    _server(mm, lambda uwq: uffd.userfaultfd_continue(mm, uwq.address, ps))
    # not cached: an ordinary shmem fault allocates it, no userfault
    assert _fault(mm, w, w.start, FAULT_FLAG_ALLOW_RETRY) == 0
    assert mm.uffd is not None and mm.uffd.faults_read == 0
    # cached: a MINOR userfault, resolved by CONTINUE
    assert _fault(mm, w, w.start + ps, FAULT_FLAG_ALLOW_RETRY) & VM_FAULT_RETRY
    assert mm.uffd.faults_read == 1


_REGISTER = [
    ("file", (6, 13), False),
    ("minor-anon", (6, 13), False),
    ("minor-shmem", (5, 13), False),
    ("minor-shmem", (5, 14), True),
    ("hole", (4, 16), False),
    ("anon", (4, 16), True),
]


@pytest.mark.parametrize(("what", "linux", "ok"), _REGISTER)
def test_register_checks(mm: Mm, what: str, linux: tuple[int, int], ok: bool) -> None:
    mm.linux = linux
    mode = uffd.VM_UFFD_MINOR if what.startswith("minor") else uffd.VM_UFFD_MISSING
    if what == "file":
        v = mm.mmap(SZ, prot="rw", shared=True, file=File(name="f", size=SZ), name="f")
    elif what == "minor-shmem":
        v = mm.mmap(SZ, prot="rw", shared=True, name="shm")
    else:
        v = mm.mmap(SZ, prot="rw", shared=False, name="ram")
    end = v.end + SZ if what == "hole" else v.end
    assert uffd.userfaultfd_register(mm, v.start, end, mode) == (0 if ok else -EINVAL)


def test_register_splits_the_vma_at_the_range(mm: Mm) -> None:
    v = mm.mmap(SZ, prot="rw", shared=False, name="ram")
    ps = mm.page_size
    assert uffd.userfaultfd_register(mm, v.start + ps, v.start + 2 * ps, uffd.VM_UFFD_MISSING) == 0
    parts = [(w.start - v.start, w.end - v.start, bool(w.flags & uffd.VM_UFFD)) for w in mm.vmas]
    assert parts == [(0, ps, False), (ps, 2 * ps, True), (2 * ps, SZ, False)]


def test_get_user_pages_without_locked_gets_efault(mm: Mm) -> None:
    v = _anon(mm)
    mm.mmap_sem.down_read(mm.current)
    assert get_user_pages(mm, v.start, 1, FOLL_WRITE, []) == -EFAULT
    mm.mmap_sem.up_read(mm.current)


@pytest.mark.parametrize(("linux", "expected"), [((4, 16), -EFAULT), ((5, 7), 1)])
def test_a_wake_without_resolving_fails_gup_before_v5_7(
    mm: Mm, linux: tuple[int, int], expected: int
) -> None:
    """v4.16 retries the woken page once without FAULT_FLAG_ALLOW_RETRY:
    VM_FAULT_SIGBUS, -EFAULT; v5.7 (4426e945df58) waits again."""
    mm.linux = linux
    v = _anon(mm)
    ps = mm.page_size
    acts = iter(
        [
            lambda uwq: uffd.userfaultfd_wake(mm, uwq.address, ps),
            lambda uwq: uffd.userfaultfd_copy(mm, uwq.address, ps, 3),
        ]
    )
    served = _server(mm, lambda uwq: next(acts)(uwq))
    pages: list[int] = []
    assert get_user_pages_unlocked(mm, v.start, 1, pages, FOLL_WRITE) == expected
    assert len(served) == (1 if expected < 0 else 2)
    assert not mm.mmap_sem.is_locked()


@pytest.mark.parametrize(
    ("linux", "leaked"), [((4, 16), True), ((4, 19), True), ((5, 0), False), ((5, 13), False)]
)
def test_nowait_on_hugetlbfs_and_the_locked_flag(
    mm: Mm, linux: tuple[int, int], leaked: bool
) -> None:
    """v4.16 follow_hugetlb_page clears *nonblocking under RETRY_NOWAIT:
    __get_user_pages_locked takes mmap_sem a second time and releases it
    once, until v5.0's "mm/hugetlb.c: teach follow_hugetlb_page() to handle
    FOLL_NOWAIT" (v4.19's text still lacks the test; kernel-notes §U.4)."""
    mm.linux = linux
    v = mm.mmap(SZ, prot="rw", shared=True, huge_shift=21, name="huge")
    assert uffd.userfaultfd_register(mm, v.start, v.end, uffd.VM_UFFD_MISSING) == 0
    assert get_user_pages_unlocked(mm, v.start, 1, [], FOLL_NOWAIT) == 0
    assert mm.mmap_sem.is_locked() is leaked


# ---------------------------------------------------------------- QEMU's own accesses (§U.7)


def _spy_flags(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The fault flags of every handle_mm_fault QEMU's accesses make."""
    flags: list[int] = []

    def spy(mm: Mm, vma: Vma, address: int, f: int) -> int:
        flags.append(f)
        return handle_mm_fault(mm, vma, address, f)

    monkeypatch.setattr(events, "handle_mm_fault", spy)
    return flags


def test_a_host_load_sleeps_until_the_copy(mm: Mm, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU's user fault has FAULT_FLAG_ALLOW_RETRY|KILLABLE|USER: it sleeps
    in handle_userfault (no SIGBUS), the copy wakes it, the retry (TRIED)
    maps the page and the load reads the copy; mmap_sem is balanced."""
    flags = _spy_flags(monkeypatch)
    v = _anon(mm)
    ps = mm.page_size
    addr = v.start + 0x10000

    def copy(uwq: uffd.UffdWait) -> None:
        assert not mm.mmap_sem.is_locked()  # handle_userfault dropped it
        assert uffd.userfaultfd_copy(mm, uwq.address, ps, 0x5A) == 0

    served = _server(mm, copy)
    ret, value = events.host_read(mm, addr)
    assert (ret, value) == (0, 0x5A)
    assert served == [addr]
    assert mm.uffd is not None and mm.uffd.faults_read == 1
    first = FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE | FAULT_FLAG_USER
    assert flags == [first, FAULT_FLAG_KILLABLE | FAULT_FLAG_USER | FAULT_FLAG_TRIED]
    assert not mm.mmap_sem.is_locked()


@pytest.mark.parametrize(("linux", "sigbus"), [((4, 16), True), ((5, 6), True), ((5, 7), False)])
def test_a_host_store_woken_before_the_copy(
    mm: Mm, monkeypatch: pytest.MonkeyPatch, linux: tuple[int, int], sigbus: bool
) -> None:
    """Woken by UFFDIO_WAKE with the page still missing: before v5.7 the
    retry has no ALLOW_RETRY and handle_userfault answers SIGBUS (the store
    never lands, no second message); from v5.7 (4064b9827063) the retry
    sleeps again and the copy resolves it, then the store lands."""
    mm.linux = linux
    flags = _spy_flags(monkeypatch)
    v = _anon(mm)
    ps = mm.page_size
    addr = v.start + 0x10000
    acts = iter(
        [
            lambda uwq: uffd.userfaultfd_wake(mm, uwq.address, ps),
            lambda uwq: uffd.userfaultfd_copy(mm, uwq.address, ps, 0x77),
        ]
    )
    served = _server(mm, lambda uwq: next(acts)(uwq))
    ret = events.host_write(mm, addr, 0x99)
    assert not mm.mmap_sem.is_locked()
    assert mm.uffd is not None
    if sigbus:
        assert ret == VM_FAULT_SIGBUS and served == [addr] and mm.uffd.faults_read == 1
        assert flags[1] & FAULT_FLAG_TRIED and not flags[1] & FAULT_FLAG_ALLOW_RETRY
        assert (addr >> mm.page_shift) not in mm.pgtable.ptes
        return
    assert not ret & VM_FAULT_SIGBUS and served == [addr, addr] and mm.uffd.faults_read == 2
    assert flags[1] == flags[0] | FAULT_FLAG_TRIED and flags[0] & FAULT_FLAG_ALLOW_RETRY
    assert events.host_read(mm, addr) == (0, 0x99)


def test_a_host_access_nobody_serves_sleeps_for_ever(mm: Mm) -> None:
    v = _anon(mm)
    assert mm.uffd is not None
    mm.uffd.serve = lambda uwq: False  # no handler step left
    with pytest.raises(Deadlock):
        events.host_write(mm, v.start, 1)
    # handle_userfault released mmap_sem before sleeping; the message stays queued
    assert not mm.mmap_sem.is_locked()
    assert [w.address for w in mm.uffd.pending] == [v.start]


def test_a_host_load_on_a_minor_shmem_page_waits_for_continue(mm: Mm) -> None:
    """MINOR (v5.14 shmem): the page cache has the page, the PTE is absent:
    QEMU's load sleeps until UFFDIO_CONTINUE maps that very page."""
    mm.linux = (5, 14)
    f = File(name="memfd", size=SZ, shmem=True)
    v = mm.mmap(SZ, prot="rw", shared=True, file=f, name="shm")
    assert uffd.userfaultfd_register(mm, v.start, v.end, uffd.VM_UFFD_MINOR) == 0
    page = file_write(mm.phys, f, 3, 0x33)
    served = _server(mm, lambda uwq: uffd.userfaultfd_continue(mm, uwq.address, mm.page_size))
    addr = v.start + 3 * mm.page_size
    assert events.host_read(mm, addr) == (0, 0x33)
    assert served == [addr]
    assert mm.pgtable.ptes[addr >> mm.page_shift] >> PTE_PFN_SHIFT == page


def test_a_host_store_to_a_hugetlbfs_page_waits_for_the_huge_copy(mm: Mm) -> None:
    v = mm.mmap(SZ, prot="rw", shared=True, huge_shift=21, name="huge")
    assert uffd.userfaultfd_register(mm, v.start, v.end, uffd.VM_UFFD_MISSING) == 0
    served = _server(mm, lambda uwq: uffd.userfaultfd_copy(mm, uwq.address, SZ, 0x11))
    assert events.host_write(mm, v.start + 0x1008, 0x22) == 0
    assert served == [v.start]  # the huge page's address
    assert events.host_read(mm, v.start) == (0, 0x11)
    assert events.host_read(mm, v.start + 0x1008) == (0, 0x22)


@pytest.mark.parametrize(
    "flags",
    [0, FAULT_FLAG_ALLOW_RETRY, FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_RETRY_NOWAIT],
)
def test_uffd_feature_sigbus_answers_sigbus_whatever_the_flags(mm: Mm, flags: int) -> None:
    """UFFD_FEATURE_SIGBUS is tested before the fault flags (v4.16
    handle_userfault): no message, no sleep, mmap_sem still held."""
    v = _anon(mm)
    assert mm.uffd is not None
    mm.uffd.sigbus = True
    mm.mmap_sem.down_read(mm.current)
    assert handle_mm_fault(mm, v, v.start, flags) == VM_FAULT_SIGBUS
    assert mm.mmap_sem.held_by() == {mm.current: "read"}
    mm.mmap_sem.up_read(mm.current)
    assert mm.uffd.pending == [] and mm.uffd.faults_read == 0
    # QEMU's own store gets the signal at once
    assert events.host_write(mm, v.start + 0x1000, 1) == VM_FAULT_SIGBUS
    assert not mm.mmap_sem.is_locked() and mm.uffd.pending == []
