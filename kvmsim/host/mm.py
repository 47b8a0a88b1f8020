"""``struct mm_struct``: vmas, page tables, ``mmap_sem``, MMU notifiers, and
the address-space syscalls the scenarios use (``mmap``, ``munmap``,
``mprotect``), with v4.16 semantics (mm/mmap.c, mm/mprotect.c, mm/memory.c).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import attrs

from kvmsim import footprint
from kvmsim.cmodel import EINVAL, ENOMEM
from kvmsim.host.constants import (
    PG_LAZYFREE,
    PTE_CACHE_BITS,
    PTE_DIRTY,
    PTE_EXEC,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_PROTNONE,
    PTE_READ,
    PTE_SPECIAL,
    PTE_SWAP,
    PTE_WRITE,
    PTE_YOUNG,
    THP_SHIFT,
    VM_DONTEXPAND,
    VM_EXEC,
    VM_HUGEPAGE,
    VM_HUGETLB,
    VM_IO,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
)
from kvmsim.host.notifier import MmuNotifierChain
from kvmsim.host.pgtable import PageTable
from kvmsim.host.physmem import PhysMem
from kvmsim.host.pte import PTE_BITS_MASK, pte_modify
from kvmsim.host.rwsem import RwSem
from kvmsim.host.tlb import MmuGather, tlb_flush_mmu
from kvmsim.host.vma import File, Vma, VmOps
from kvmsim.trace import DISABLED, Tracer

__all__ = ["EACCES", "MMAP_BASE", "PUD_SHIFT", "Mm", "prot_flags", "vm_get_page_prot"]

EACCES = 13
MMAP_BASE = 0x10000000
ULONG_MAX = (1 << 64) - 1
PUD_SHIFT = 30  # the span of one change_pmd_range walk (one pud entry) in the model
_PERM = VM_READ | VM_WRITE | VM_EXEC


def prot_flags(prot: str) -> int:
    """``calc_vm_prot_bits``: ``"rw"`` → VM_READ|VM_WRITE; ``""``/``"none"`` → 0."""
    if prot == "none":
        return 0
    bad = set(prot) - set("rwx")
    if bad:
        raise ValueError(f"bad protection {prot!r}")
    return (
        (VM_READ if "r" in prot else 0)
        | (VM_WRITE if "w" in prot else 0)
        | (VM_EXEC if "x" in prot else 0)
    )


def vm_get_page_prot(flags: int, writenotify: bool = False) -> int:
    """``vm_get_page_prot`` (``protection_map``) plus ``vma_set_page_prot``.

    Private mappings never carry write (COW on the write fault); shared
    writable ones do unless write-notified.  Accessible protections carry
    PTE_YOUNG (_PAGE_ACCESSED is part of PAGE_* on x86 and ppc64).
    """
    if not flags & _PERM:
        return PTE_PRESENT | PTE_PROTNONE | PTE_YOUNG
    prot = PTE_PRESENT | PTE_YOUNG
    if flags & (VM_READ | VM_WRITE):
        prot |= PTE_READ
    if flags & VM_EXEC:
        prot |= PTE_EXEC
    if flags & VM_WRITE and flags & VM_SHARED and not writenotify:
        prot |= PTE_WRITE
    return prot


class WaitQueue:
    """Something tasks of a concurrent run wait on (a page being migrated)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Mm:
    """An address space.

    :param phys: the host's frames.
    :param tracer: decision trace (``tracer.enabled`` guards every emit).
    """

    def __init__(self, phys: PhysMem, tracer: Tracer = DISABLED) -> None:
        self.phys = phys
        self.page_shift = phys.page_shift
        self.page_size = phys.page_size
        self.tracer = tracer
        self.vmas: list[Vma] = []
        self._ends: list[int] = []
        self.pgtable = PageTable(phys.page_shift)
        self.mmap_sem = RwSem("mmap_sem")
        self.notifiers = MmuNotifierChain()
        self.current = "qemu"
        self.race_points: dict[str, Callable[[], None]] = {}
        self.sched: Any = None  # a concurrent run's scheduler (kvmsim.explore.runtime)
        self.migration_wait = WaitQueue("migration_entry_wait")
        # invalidate_range_end calls of an "across_create_pte" event, held
        # until the fault that was in flight returns (None: not holding)
        self.held_ends: list[tuple[int, int]] = []
        self._holding = False
        self._next = MMAP_BASE
        self.uffd: Any = None  # the process's userfaultfd (kvmsim.host.userfaultfd), if any
        self.linux: tuple[int, int] = (4, 16)  # host mm release where behaviour differs
        self.swapcache: set[int] = set()
        self.swap_slots: dict[int, dict[int, int]] = {}
        """what each swapped-out page held, by vpn (its swap slot)"""
        """vpns of swapped-out pages whose read-back I/O has completed."""

    # ------------------------------------------------------------------ helpers

    def fire_point(self, name: str) -> None:
        """Yield point ``name`` (:mod:`kvmsim.points`): run (once) the host event
        a sequential scenario placed there, or let a concurrent run's
        scheduler switch to another actor.  At ``before_create_pte`` an
        ``across_create_pte`` event runs too, with its ``invalidate_range_end``
        calls held back: the invalidation is in progress while the fault takes
        ``mmu_lock`` and checks for a retry, and ends
        (:meth:`release_held_ends`) when the fault has returned."""
        if self.race_points:
            cb = self.race_points.pop(name, None)
            if cb is not None:
                cb()
            if name == "before_create_pte":
                cb = self.race_points.pop("across_create_pte", None)
                if cb is not None:
                    self._holding = True
                    try:
                        cb()
                    finally:
                        self._holding = False
        if self.sched is not None:
            self.sched.point(name)

    def release_held_ends(self) -> None:
        """The held ``invalidate_range_end`` calls, in order."""
        footprint.opaque()  # the notifier chain: POR treats it as touching all
        held, self.held_ends = self.held_ends, []
        for start, end in held:
            self.notify_end(start, end)

    def notify_start(self, start: int, end: int) -> None:
        """``mmu_notifier_invalidate_range_start``."""
        footprint.opaque()  # the notifier chain: POR treats it as touching all
        if self.tracer.enabled:
            self.tracer.emit("mmu_notifier_invalidate_range_start", start=start, end=end)
        self.notifiers.invalidate_range_start(self, start, end)
        if self.race_points or self.sched is not None:
            self.fire_point("invalidate_range_start")

    def notify_end(self, start: int, end: int) -> None:
        """``mmu_notifier_invalidate_range_end``."""
        footprint.opaque()  # the notifier chain: POR treats it as touching all
        if self._holding:
            self.held_ends.append((start, end))
            return
        if self.tracer.enabled:
            self.tracer.emit("mmu_notifier_invalidate_range_end", start=start, end=end)
        self.notifiers.invalidate_range_end(self, start, end)
        if self.race_points or self.sched is not None:
            self.fire_point("invalidate_range_end")

    def notify_change_pte(self, address: int, pte: int) -> None:
        """``mmu_notifier_change_pte`` (``set_pte_at_notify``)."""
        footprint.opaque()  # the notifier chain: POR treats it as touching all
        if self.tracer.enabled:
            self.tracer.emit("mmu_notifier_change_pte", address=address, pte=pte)
        self.notifiers.change_pte(self, address, pte)

    def _resort(self) -> None:
        self.vmas.sort(key=lambda v: v.start)
        self._ends = [v.end for v in self.vmas]

    # ------------------------------------------------------------------ vma lookups

    def find_vma(self, addr: int) -> Vma | None:
        """``find_vma``: the first vma with ``vm_end > addr``; it may start above ``addr``."""
        i = bisect.bisect_right(self._ends, addr)
        return self.vmas[i] if i < len(self.vmas) else None

    def find_vma_intersection(self, start: int, end: int) -> Vma | None:
        """``find_vma_intersection``: None unless the vma found overlaps ``[start, end)``."""
        vma = self.find_vma(start)
        if vma is not None and end <= vma.start:
            return None
        return vma

    def find_extend_vma(self, addr: int) -> Vma | None:
        """``find_extend_vma``: no stack vmas in the model, so the vma
        containing ``addr`` or None."""
        vma = self.find_vma(addr)
        if vma is None or vma.start > addr:
            return None
        return vma

    # ------------------------------------------------------------------ mmap

    def mmap(
        self,
        size: int,
        *,
        prot: str,
        shared: bool,
        file: File | None = None,
        pgoff: int = 0,
        extra_flags: int = 0,
        ops: VmOps | None = None,
        huge_shift: int = 0,
        thp: bool = False,
        name: str = "",
        align: int | None = None,
    ) -> Vma:
        """``do_mmap`` / ``mmap_region`` with deterministic placement.

        Anonymous shared memory gets a shmem file (``shmem_zero_setup``); a
        file mapping without ``ops`` gets the page-cache fault handler; a
        ``huge_shift`` makes it a hugetlbfs mapping.  Vmas are placed from
        MMAP_BASE upward, aligned to max(2M, huge page, ``align``) with a
        guard page so they never touch.
        """
        from kvmsim.host import fault  # the page-cache handlers live with the fault code

        ps = self.page_size
        unit = 1 << huge_shift if huge_shift else ps
        size = (size + unit - 1) & ~(unit - 1)
        if size <= 0:
            raise ValueError("mmap of an empty range")
        flags = prot_flags(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC | extra_flags
        if shared:
            flags |= VM_SHARED | VM_MAYSHARE
            if file is not None and file.readonly:
                if flags & VM_WRITE:
                    raise PermissionError(f"shared writable mapping of read-only file {file.name}")
                flags &= ~(VM_MAYWRITE | VM_SHARED)
        if huge_shift:
            flags |= VM_HUGETLB | VM_DONTEXPAND
            if file is None:
                # a private mapping of a hugetlbfs file is still a file
                # mapping (its fd can punch holes in it); its pages stay
                # anonymous (hugetlb_no_page)
                file = File(name=name or "hugetlbfs", size=size, hugetlbfs=True)
        elif file is None and shared:
            file = File(name=name or "dev/zero", size=size, shmem=True)
        if thp:
            flags |= VM_HUGEPAGE
        if file is not None and ops is None and not huge_shift:
            ops = VmOps(fault.shmem_fault if file.shmem else fault.filemap_fault, "filemap")
        writenotify = bool(
            flags & VM_SHARED
            and flags & VM_WRITE
            and not flags & (VM_PFNMAP | VM_IO)
            and (
                (ops is not None and ops.page_mkwrite)
                or (
                    file is not None
                    and ops is not None
                    and ops.name == "filemap"
                    and not file.shmem
                )
            )
        )
        align_ = max(1 << 21, 1 << huge_shift, align or 0)
        start = (self._next + align_ - 1) & ~(align_ - 1)
        end = start + size
        self._next = end + ps
        vma = Vma(
            start=start,
            end=end,
            flags=flags,
            pgoff=pgoff,
            page_prot=vm_get_page_prot(flags, writenotify),
            ops=ops,
            file=file,
            huge_shift=huge_shift,
            thp=thp,
            name=name,
            mm=self,
        )
        if file is not None:
            file.mapping.append(vma)
        self.vmas.append(vma)
        self._resort()
        if self.tracer.enabled:
            self.tracer.emit(
                "mmap",
                name=name,
                start=start,
                end=end,
                vm_flags=flags,
                pgoff=pgoff,
                page_prot=vma.page_prot,
            )
        return vma

    def wants_writenotify(self, vma: Vma) -> bool:
        """``vma_wants_writenotify``: shared writable page-cache file mapping."""
        return bool(
            vma.flags & VM_SHARED
            and vma.flags & VM_WRITE
            and not vma.flags & (VM_PFNMAP | VM_IO)
            and vma.ops is not None
            and (
                vma.ops.page_mkwrite
                or (vma.ops.name == "filemap" and vma.file is not None and not vma.file.shmem)
            )
        )

    def _split(self, vma: Vma, at: int) -> None:
        """``__split_vma``: cut ``vma`` at ``at`` (both halves stay in the mm)."""
        if not vma.start < at < vma.end:
            return
        right = attrs.evolve(vma, start=at, pgoff=vma.pgoff + ((at - vma.start) >> self.page_shift))
        vma.end = at
        self.vmas.append(right)
        if vma.file is not None:
            vma.file.mapping.append(right)
        self._resort()

    def _split_thp_edges(self, start: int, end: int) -> None:
        """``vma_adjust_trans_huge``: a THP PMD straddling a vma boundary
        about to be created is split first (its own start/end pair)."""
        mask = (1 << THP_SHIFT) - 1
        for edge in (start, end) if start != end else (start,):
            ev = self.find_vma(edge)
            if ev is not None and ev.start < edge and ev.thp and edge & mask:
                self.split_huge_pmd(ev, edge)

    def _split_at(self, addr: int) -> None:
        """Split the vma containing ``addr`` there, if it straddles it."""
        v = self.find_vma(addr)
        if v is not None and v.start < addr:
            self._split(v, addr)

    def _vmas_in(self, start: int, end: int) -> list[Vma]:
        i = bisect.bisect_right(self._ends, start)
        out = []
        while i < len(self.vmas) and self.vmas[i].start < end:
            out.append(self.vmas[i])
            i += 1
        return out

    # ------------------------------------------------------------------ zap

    def zap_range(
        self,
        vma: Vma,
        start: int,
        end: int,
        *,
        even_cows: bool = True,
        tlb: MmuGather | None = None,
    ) -> None:
        """``unmap_page_range`` over ``[start, end)`` of one vma (no notifier).

        Clears the entries and drops the references the mappings held; with
        ``tlb`` the references are gathered instead, to be dropped after the
        TLB flush (:mod:`kvmsim.host.tlb`), and a page table that held a
        dirty page-cache page is flushed before the walk goes on
        (``zap_pte_range``'s ``force_flush``).  ``even_cows`` false keeps
        private anonymous (COWed) pages, as ``unmap_mapping_range(...,
        even_cows=0)`` does.
        """
        phys = self.phys
        pgt = self.pgtable
        hz = phys.huge_zero_pfn
        put = phys.host_put if tlb is None else tlb.pages.append
        for hva, shift, e in pgt.huge_in(start, end):
            size = 1 << shift
            if not vma.flags & VM_HUGETLB and (hva < start or hva + size > end):
                # zap_pmd_range on a partly covered THP: split it, then zap the
                # ptes.  __split_huge_pmd has its own pair over the 2M; an
                # anonymous THP's callers split their edges with it first
                # (_split_thp_edges), a page-cache THP's (unmap_mapping_range
                # of a hole) do not, so the pair fires here.
                self.split_huge_pmd(vma, hva, notify=not vma.is_anonymous())
                continue
            pfn = e >> PTE_PFN_SHIFT
            if not e & PTE_PRESENT:
                pgt.clear_huge(hva, shift)
                continue
            if not even_cows and phys.PageAnon(pfn) and not vma.flags & VM_HUGETLB:
                continue
            pgt.clear_huge(hva, shift)
            if tlb is not None:
                tlb.flush_needed = True
            if e & PTE_SPECIAL or pfn == hz:
                continue
            if e & PTE_DIRTY:
                phys.SetPageDirty(pfn)
            put(pfn)
        table = -1  # the page table (2M span) the walk is in
        force_flush = False
        for hva, pte in pgt.ptes_in(start, end):
            if tlb is not None and hva >> THP_SHIFT != table:
                if force_flush:
                    tlb_flush_mmu(self, tlb)
                    force_flush = False
                table = hva >> THP_SHIFT
            if not pte & PTE_PRESENT:
                pgt.clear_pte(hva)
                continue
            pfn = _pfn(pte)
            if pte & PTE_SPECIAL:
                pgt.clear_pte(hva)
                if tlb is not None:
                    tlb.flush_needed = True
                continue
            if not even_cows and phys.PageAnon(pfn):
                continue
            pgt.clear_pte(hva)
            if pte & PTE_DIRTY:
                phys.SetPageDirty(pfn)
            if tlb is not None:
                tlb.flush_needed = True
                if pte & PTE_DIRTY and not phys.PageAnon(pfn):
                    force_flush = True
            put(pfn)
        if force_flush:
            assert tlb is not None
            tlb_flush_mmu(self, tlb)

    def split_huge_pmd(self, vma: Vma, hva: int, *, notify: bool = True) -> bool:
        """``__split_huge_pmd``: replace the THP PMD at ``hva`` by base PTEs.

        Fires start/end over the 2M range (kernel-notes §L.4) when ``notify``.  The PMD's
        one reference on the head becomes one per PTE (``page_ref_add``); a
        huge zero PMD becomes special PTEs to the 4K zero page.  On a file
        vma (a shmem THP that ``do_set_pmd`` mapped) ``__split_huge_pmd_locked``
        installs no PTEs: it zaps the PMD (its reference dropped, the page
        marked referenced if the PMD was young) and the compound page stays
        whole in the page cache; the next fault maps it again.
        """
        phys = self.phys
        haddr = hva & ~((1 << THP_SHIFT) - 1)
        e = self.pgtable.huge.get(THP_SHIFT, {}).get(haddr >> THP_SHIFT)
        if e is None or vma.flags & VM_HUGETLB:
            return False
        hend = haddr + (1 << THP_SHIFT)
        if notify:
            self.notify_start(haddr, hend)
        self.pgtable.clear_huge(haddr, THP_SHIFT)
        if not vma.is_anonymous():
            head = _pfn(e)
            if e & PTE_PRESENT:
                if e & PTE_YOUNG:
                    phys.SetPageReferenced(head)
                phys.host_put(head)
            if notify:
                self.notify_end(haddr, hend)
            if self.tracer.enabled:
                self.tracer.emit("split_huge_pmd", haddr=haddr, pfn=head, file=True)
            return True
        ps = self.page_shift
        n = 1 << (THP_SHIFT - ps)
        head = _pfn(e)
        bits = e & PTE_BITS_MASK
        if e & PTE_PRESENT:
            if head == phys.huge_zero_pfn:
                zbits = (vma.page_prot | PTE_SPECIAL) & ~PTE_WRITE
                zpte = (phys.zero_pfn << PTE_PFN_SHIFT) | zbits
                for i in range(n):
                    self.pgtable.set_pte(haddr + (i << ps), zpte)
            else:
                if n > 1:
                    phys.host_get(head, n - 1)
                for i in range(n):
                    self.pgtable.set_pte(haddr + (i << ps), ((head + i) << PTE_PFN_SHIFT) | bits)
        if notify:
            self.notify_end(haddr, hend)
        if self.tracer.enabled:
            self.tracer.emit("split_huge_pmd", haddr=haddr, pfn=head)
        return True

    # ------------------------------------------------------------------ munmap

    def munmap(self, start: int, length: int) -> int:
        """``vm_munmap`` → ``do_munmap``: one invalidate_range_start/end pair over
        the whole range (``unmap_region``), then the vmas are split or removed.

        Takes ``mmap_sem`` for write as :attr:`current`.  Returns 0 or -EINVAL.
        """
        ps = self.page_size
        if start & (ps - 1) or length <= 0:
            return -EINVAL
        end = start + ((length + ps - 1) & ~(ps - 1))
        self.mmap_sem.down_write(self.current)
        try:
            vmas = self._vmas_in(start, end)
            if not vmas:
                return 0
            for v in vmas:
                if v.huge_shift:
                    mask = (1 << v.huge_shift) - 1
                    if (start > v.start and start & mask) or (end < v.end and end & mask):
                        return -EINVAL
            self._split_thp_edges(start, end)
            tlb = MmuGather()  # unmap_region: tlb_gather_mmu
            self.notify_start(start, end)
            for v in vmas:
                self.zap_range(v, max(start, v.start), min(end, v.end), tlb=tlb)
            if self.race_points or self.sched is not None:
                self.fire_point("host_pte_changed")
            self.notify_end(start, end)
            tlb_flush_mmu(self, tlb)  # tlb_finish_mmu, after free_pgtables
            self._split_at(start)
            self._split_at(end)
            for v in self._vmas_in(start, end):
                self.vmas.remove(v)
                if v.file is not None:
                    v.file.mapping.remove(v)
            self._resort()
            if self.tracer.enabled:
                self.tracer.emit("munmap", start=start, end=end, nr_vmas=len(vmas))
            return 0
        finally:
            self.mmap_sem.up_write(self.current)

    # ------------------------------------------------------------------ mprotect

    def mprotect(self, start: int, length: int, prot: str) -> int:
        """``do_mprotect_pkey`` → ``mprotect_fixup`` → ``change_protection``.

        Returns 0, -EINVAL, -ENOMEM (a hole in the range) or -EACCES (write
        on a shared mapping that may not become writable).  The notifier
        pair fires per pud-sized walk only where something is mapped (kernel-notes §L.4);
        hugetlb vmas get one pair over their range unconditionally.
        """
        ps = self.page_size
        if start & (ps - 1):
            return -EINVAL
        end = start + ((length + ps - 1) & ~(ps - 1))
        if end <= start:
            return -EINVAL if length < 0 else 0
        newbits = prot_flags(prot)
        self.mmap_sem.down_write(self.current)
        try:
            vmas = self._vmas_in(start, end)
            pos = start
            for v in vmas:
                if v.start > pos:
                    return -ENOMEM
                pos = v.end
            if pos < end:
                return -ENOMEM
            for v in vmas:
                if newbits & VM_WRITE and v.flags & VM_MAYSHARE and not v.flags & VM_MAYWRITE:
                    return -EACCES
            for edge in (start, end):
                ev = self.find_vma(edge)
                if ev is not None and (ev.flags & ~_PERM) | newbits != ev.flags:
                    self._split_thp_edges(edge, edge)
                    self._split_at(edge)
            for v in self._vmas_in(start, end):
                newflags = (v.flags & ~_PERM) | newbits
                if newflags == v.flags:
                    continue
                v.flags = newflags
                cache = v.page_prot & PTE_CACHE_BITS
                v.page_prot = vm_get_page_prot(newflags, self.wants_writenotify(v)) | cache
                self._change_protection(v, v.start, v.end)
            if self.tracer.enabled:
                self.tracer.emit("mprotect", start=start, end=end, prot=prot)
            return 0
        finally:
            self.mmap_sem.up_write(self.current)

    def _change_protection(self, vma: Vma, start: int, end: int) -> None:
        pgt = self.pgtable
        newprot = vma.page_prot
        dirty_accountable = self.wants_writenotify(vma)

        def modify(e: int) -> int:
            if not e & PTE_PRESENT:
                return e
            n = pte_modify(e, newprot)
            if dirty_accountable and n & PTE_DIRTY:
                n |= PTE_WRITE  # avoid write faults on known dirty pages
            return n

        points = bool(self.race_points) or self.sched is not None
        if vma.flags & VM_HUGETLB:
            # hugetlb_change_protection flushes inside the pair
            self.notify_start(start, end)
            huge = pgt.huge_in(start, end)
            for hva, shift, e in huge:
                pgt.set_huge(hva, shift, modify(e))
            if huge and points:
                self.fire_point("tlb_flush")
            self.notify_end(start, end)
            return
        chunk = 1 << PUD_SHIFT
        pmd = 1 << THP_SHIFT
        addr = start
        changed = False
        while addr < end:
            cend = min((addr | (chunk - 1)) + 1, end)
            ptes = pgt.ptes_in(addr, cend)
            huge = pgt.huge_in(addr, cend)
            if ptes or huge:
                first = min([h for h, _ in ptes[:1]] + [h for h, _, _ in huge[:1]])
                mni_start = max(addr, first & ~(pmd - 1))
                self.notify_start(mni_start, cend)
                for hva, shift, e in huge:
                    pgt.set_huge(hva, shift, modify(e))
                for hva, e in ptes:
                    pgt.set_pte(hva, modify(e))
                self.notify_end(mni_start, cend)
                changed = True
            addr = cend
        if changed and points:
            # change_protection_range flushes once, after every pair has ended
            self.fire_point("tlb_flush")

    # ------------------------------------------------------------------ scenario helpers

    def mark_swapped(self, hva: int) -> None:
        """Swap out the anonymous page at ``hva`` (reclaim): the PTE becomes a
        swap entry, so the next fault needs I/O.  Unmapping a mapped page
        fires a start/end pair, as ``try_to_unmap_one`` does; a page MADV_FREE
        made lazy is discarded or kept instead (:meth:`_reclaim_lazyfree`)."""
        ps = self.page_size
        hva &= ~(ps - 1)
        pte = self.pgtable.get_pte(hva)
        if pte is not None and pte & PTE_PRESENT and not pte & PTE_SPECIAL:
            self.notify_start(hva, hva + ps)
            pfn = _pfn(pte)
            if self.phys.flags.get(self.phys.compound_head(pfn), 0) & PG_LAZYFREE:
                self._reclaim_lazyfree(hva, pte, pfn)
                self.notify_end(hva, hva + ps)
                return
            self.pgtable.set_pte(hva, PTE_SWAP)
            self.swap_slots[hva >> self.page_shift] = self.phys.page_contents(_pfn(pte))
            self.phys.host_put(_pfn(pte))
            self.notify_end(hva, hva + ps)
        else:
            self.pgtable.set_pte(hva, PTE_SWAP)

    def _reclaim_lazyfree(self, hva: int, pte: int, pfn: int) -> None:
        """``try_to_unmap_one`` on a page MADV_FREE made lazy (kernel-notes §M.2):
        clean (neither the PTE nor the page dirty) it is discarded, the PTE
        left empty, so the next touch gets a fresh page; dirtied since, it
        is mapped back and becomes swap-backed again (not swapped this time)."""
        phys = self.phys
        if pte & PTE_DIRTY:
            phys.SetPageDirty(pfn)
        head = phys.compound_head(pfn)
        if not phys.PageDirty(pfn):
            self.pgtable.clear_pte(hva)
            phys.host_put(pfn)
            if self.tracer.enabled:
                self.tracer.emit("lazyfree_discard", hva=hva, pfn=pfn)
            return
        phys.flags[head] = phys.flags.get(head, 0) & ~PG_LAZYFREE  # SetPageSwapBacked
        if self.tracer.enabled:
            self.tracer.emit("lazyfree_redirtied", hva=hva, pfn=pfn)

    def mark_needs_io(self, hva: int) -> None:
        """Make the page at ``hva`` need I/O on its next fault (reclaim):
        anonymous memory is swapped out (:meth:`mark_swapped`); a file page is
        unmapped (start/end pair if it was mapped) and dropped from the page
        cache, so the fault must read it back (``File.needs_io``)."""
        vma = self.find_vma(hva)
        if vma is None or vma.start > hva:
            return
        f = vma.file
        if f is None or vma.flags & VM_HUGETLB:
            self.mark_swapped(hva)
            return
        ps = self.page_size
        hva &= ~(ps - 1)
        index = vma.pgoff + ((hva - vma.start) >> self.page_shift)
        page = f.cache.get(index)
        if page is not None:
            for v in f.mapping:
                if v.mm is not self or not v.pgoff <= index < v.pgoff + v.npages(self.page_shift):
                    continue
                addr = v.start + ((index - v.pgoff) << self.page_shift)
                pte = self.pgtable.get_pte(addr)
                if pte is not None and pte >> PTE_PFN_SHIFT == page and not pte & PTE_SPECIAL:
                    self.notify_start(addr, addr + ps)
                    self.zap_range(v, addr, addr + ps)
                    self.notify_end(addr, addr + ps)
            del f.cache[index]
            f.disk[index] = self.phys.page_contents(page)  # writeback, then eviction
            self.phys.host_put(page)
        f.needs_io.add(index)

    def exit_mmap(self) -> None:
        """``exit_mmap``: ``release`` first, then ``unmap_vmas(vma, 0, -1)``:
        one start/end pair over the whole address space."""
        if self.tracer.enabled:
            self.tracer.emit("mmu_notifier_release")
        self.notifiers.release(self)
        tlb = MmuGather()
        self.notify_start(0, ULONG_MAX)
        for v in list(self.vmas):
            self.zap_range(v, v.start, v.end, tlb=tlb)
        self.notify_end(0, ULONG_MAX)
        tlb_flush_mmu(self, tlb)
        for v in self.vmas:
            if v.file is not None:
                v.file.mapping.remove(v)
        self.vmas.clear()
        self._ends.clear()


def _pfn(pte: int) -> int:
    return pte >> PTE_PFN_SHIFT
