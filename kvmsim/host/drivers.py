"""Device drivers' mappings: ``remap_pfn_range``, ``vm_insert_pfn`` and
friends, ``unmap_mapping_range`` (mm/memory.c, v4.16), and the builders
the scenario runner uses for each backing (:func:`map_backing`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define

from kvmsim.cmodel import BUG_ON, EBUSY, EFAULT, EINVAL, ENOMEM
from kvmsim.host.constants import (
    FAULT_FLAG_RETRY_NOWAIT,
    FOLL_FORCE,
    FOLL_TOUCH,
    FOLL_WRITE,
    PTE_CACHE_BITS,
    PTE_GUARDED,
    PTE_NONCACHED,
    PTE_PFN_SHIFT,
    PTE_SPECIAL,
    VM_DONTDUMP,
    VM_DONTEXPAND,
    VM_EXEC,
    VM_FAULT_NOPAGE,
    VM_FAULT_OOM,
    VM_FAULT_RETRY,
    VM_FAULT_SIGBUS,
    VM_IO,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
)
from kvmsim.host.fault import lock_page_or_retry
from kvmsim.host.tlb import MmuGather, tlb_flush_mmu
from kvmsim.host.vma import File, Vma, VmFault, VmOps, is_cow_mapping

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm

__all__ = [
    "BACKINGS",
    "PFN_KINDS",
    "Driver",
    "map_backing",
    "mm_populate",
    "remap_pfn_range",
    "unmap_mapping_range",
    "vm_insert_mixed",
    "vm_insert_page",
    "vm_insert_pfn",
    "vmf_insert_mixed",
    "vmf_insert_pfn",
]

BACKINGS = (
    "anon",
    "shmem",
    "file",
    "hugetlbfs",
    "pfnmap_linear",
    "pfnmap_fault",
    "mixedmap",
)
PFN_KINDS = ("mmio", "ram", "ram_unrefcounted")


@define(slots=True, kw_only=True)
class Driver:
    """A device driver's frames behind a vma (``vma->vm_private_data``).

    :param pfn_kind: ``mmio`` (no struct page), ``ram`` (order-0 pages the
        driver allocated and holds a reference on) or ``ram_unrefcounted``
        (a non-compound higher-order allocation: tail pages at refcount 0).
    :param base: first frame; the driver owns ``base .. base + npages - 1``.
    :param fault_retry: how many more times the fault handler finds its
        "page" locked and returns VM_FAULT_RETRY (``lock_page_or_retry``).
    """

    name: str
    pfn_kind: str
    base: int
    npages: int
    fault_retry: int = 0
    faults: int = 0

    @property
    def frames(self) -> range:
        return range(self.base, self.base + self.npages)

    def owns(self, pfn: int) -> bool:
        """Is ``pfn`` one of this driver's frames?"""
        return self.base <= pfn < self.base + self.npages


# ---------------------------------------------------------------------- insertion


def remap_pfn_range(mm: Mm, vma: Vma, addr: int, pfn: int, size: int, prot: int) -> int:
    """``remap_pfn_range`` (kernel-notes §F.7): a COW mapping must be covered wholly
    (-EINVAL) and gets ``vm_pgoff = pfn``; VM_IO|VM_PFNMAP|VM_DONTEXPAND|
    VM_DONTDUMP; every PTE populated now as a special PTE."""
    ps = mm.page_size
    end = addr + ((size + ps - 1) & ~(ps - 1))
    BUG_ON(addr >= end, "remap_pfn_range: empty range")
    if is_cow_mapping(vma.flags):
        if addr != vma.start or end != vma.end:
            if mm.tracer.enabled:
                mm.tracer.emit("remap_pfn_range", addr=addr, pfn=pfn, ret=-EINVAL)
            return -EINVAL
        vma.pgoff = pfn
    vma.flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
    ptes = mm.pgtable.ptes
    shift = mm.page_shift
    n = (end - addr) >> shift
    BUG_ON(
        any(True for _ in ptes.items_in(addr >> shift, (addr >> shift) + n)),
        "remap_pte_range: PTE not none",
    )
    # every PTE is set now, as a special PTE; the model builds each PTE
    # page's array when something first reads it (a 16G BAR costs nothing)
    ptes.fill_linear(
        addr >> shift, n, (pfn << PTE_PFN_SHIFT) | prot | PTE_SPECIAL, 1 << PTE_PFN_SHIFT
    )
    if mm.tracer.enabled:
        mm.tracer.emit(
            "remap_pfn_range", addr=addr, pfn=pfn, size=end - addr, ret=0, vm_pgoff=vma.pgoff
        )
    return 0


def _insert_pfn(mm: Mm, vma: Vma, addr: int, pfn: int, prot: int) -> int:
    """``insert_pfn`` (mkwrite false): -EBUSY if a PTE is there; else a
    special PTE with ``prot``, not dirty."""
    vpn = addr >> mm.page_shift
    ptes = mm.pgtable.ptes
    if vpn in ptes:
        return -EBUSY
    ptes[vpn] = (pfn << PTE_PFN_SHIFT) | prot | PTE_SPECIAL
    return 0


def vm_insert_pfn(vma: Vma, addr: int, pfn: int) -> int:
    """``vm_insert_pfn`` (kernel-notes §F.6): BUGs unless exactly one of VM_PFNMAP/VM_MIXEDMAP,
    on a COW PFNMAP, and on a MIXEDMAP with a valid pfn; -EFAULT outside the
    vma; -EBUSY if a PTE is present; else 0 with a special PTE."""
    mm = vma.mm
    assert mm is not None
    f = vma.flags
    BUG_ON(not f & (VM_PFNMAP | VM_MIXEDMAP), "vm_insert_pfn: neither PFNMAP nor MIXEDMAP")
    BUG_ON(
        f & (VM_PFNMAP | VM_MIXEDMAP) == VM_PFNMAP | VM_MIXEDMAP,
        "vm_insert_pfn: both PFNMAP and MIXEDMAP",
    )
    BUG_ON(bool(f & VM_PFNMAP) and is_cow_mapping(f), "vm_insert_pfn: COW PFNMAP")
    BUG_ON(bool(f & VM_MIXEDMAP) and mm.phys.pfn_valid(pfn), "vm_insert_pfn: MIXEDMAP valid pfn")
    if addr < vma.start or addr >= vma.end:
        return -EFAULT
    ret = _insert_pfn(mm, vma, addr, pfn, vma.page_prot)
    if mm.tracer.enabled:
        mm.tracer.emit("vm_insert_pfn", addr=addr, pfn=pfn, ret=ret)
    return ret


def _errno_to_vmf(err: int) -> int:
    if err == -ENOMEM:
        return VM_FAULT_OOM
    if err < 0 and err != -EBUSY:
        return VM_FAULT_SIGBUS
    return VM_FAULT_NOPAGE


def vmf_insert_pfn(vma: Vma, addr: int, pfn: int) -> int:
    """``vmf_insert_pfn``: -ENOMEM → OOM; other errors but -EBUSY → SIGBUS;
    otherwise (a PTE already present included) NOPAGE."""
    return _errno_to_vmf(vm_insert_pfn(vma, addr, pfn))


def vm_insert_page(vma: Vma, addr: int, page: int) -> int:
    """``vm_insert_page``: -EFAULT outside the vma, -EINVAL on a page with
    refcount 0; marks the vma VM_MIXEDMAP; ``insert_page``: -EBUSY if a PTE
    is present, else a normal (not special) PTE holding a reference."""
    mm = vma.mm
    assert mm is not None
    phys = mm.phys
    if addr < vma.start or addr >= vma.end:
        return -EFAULT
    if not phys.page_count(page):
        return -EINVAL
    if not vma.flags & VM_MIXEDMAP:
        BUG_ON(bool(vma.flags & VM_PFNMAP), "vm_insert_page: VM_PFNMAP vma")
        vma.flags |= VM_MIXEDMAP
    vpn = addr >> mm.page_shift
    if vpn in mm.pgtable.ptes:
        return -EBUSY
    phys.host_get(page)
    mm.pgtable.ptes[vpn] = (page << PTE_PFN_SHIFT) | vma.page_prot
    if mm.tracer.enabled:
        mm.tracer.emit("vm_insert_page", addr=addr, pfn=page, ret=0)
    return 0


def vm_insert_mixed(vma: Vma, addr: int, pfn: int) -> int:
    """``vm_insert_mixed``: with pte_special (x86-64, ppc64) every pfn,
    struct page or not, goes in as a special PTE (``insert_pfn``)."""
    mm = vma.mm
    assert mm is not None
    BUG_ON(not vma.flags & VM_MIXEDMAP, "vm_insert_mixed: not VM_MIXEDMAP")
    if addr < vma.start or addr >= vma.end:
        return -EFAULT
    ret = _insert_pfn(mm, vma, addr, pfn, vma.page_prot)
    if mm.tracer.enabled:
        mm.tracer.emit("vm_insert_mixed", addr=addr, pfn=pfn, ret=ret)
    return ret


def vmf_insert_mixed(vma: Vma, addr: int, pfn: int) -> int:
    """``vmf_insert_mixed``."""
    return _errno_to_vmf(vm_insert_mixed(vma, addr, pfn))


# ---------------------------------------------------------------------- unmapping


def unmap_mapping_range(file: File, holebegin: int, holelen: int, even_cows: bool) -> None:
    """``unmap_mapping_range`` (kernel-notes §F.8): for every vma of the mapping overlapping
    the hole (by file offset), ``zap_page_range_single``: start/end pair per
    vma, unmap in between.  ``even_cows`` false keeps private COWed pages."""
    for vma in list(file.mapping):
        mm = vma.mm
        if mm is None:
            continue
        ps = mm.page_shift
        first = holebegin >> ps
        hlen = (holelen + mm.page_size - 1) >> ps
        last = first + hlen - 1 if hlen else -1
        if last < first:
            last = 1 << 64
        vba = vma.pgoff
        vea = vba + vma.npages(ps) - 1
        if vea < first or vba > last:
            continue
        zba = max(first, vba)
        zea = min(last, vea)
        start = ((zba - vba) << ps) + vma.start
        end = ((zea - vba + 1) << ps) + vma.start
        tlb = MmuGather()  # zap_page_range_single
        mm.notify_start(start, end)
        mm.zap_range(vma, start, end, even_cows=even_cows, tlb=tlb)
        mm.notify_end(start, end)
        tlb_flush_mmu(mm, tlb)
        if mm.tracer.enabled:
            mm.tracer.emit("unmap_mapping_range", file=file.name, start=start, end=end)


# ---------------------------------------------------------------------- populate


def mm_populate(mm: Mm, start: int, length: int) -> None:
    """``__mm_populate`` (MAP_POPULATE): fault in every page with
    ``populate_vma_page_range``'s flags (FOLL_WRITE only for a private
    writable vma, to break COW now); VM_IO|VM_PFNMAP vmas are skipped and
    errors ignored."""
    from kvmsim.host.gup import __get_user_pages

    ps = mm.page_shift
    end = start + length
    locked = [False]
    nstart = start
    while nstart < end:
        if not locked[0]:
            mm.mmap_sem.down_read(mm.current)
            locked[0] = True
        vma = mm.find_vma(nstart)
        if vma is None or vma.start >= end:
            break
        nend = min(end, vma.end)
        if vma.flags & (VM_IO | VM_PFNMAP):
            nstart = nend
            continue
        nstart = max(nstart, vma.start)
        flags = FOLL_TOUCH
        if vma.flags & (VM_WRITE | VM_SHARED) == VM_WRITE:
            flags |= FOLL_WRITE
        if vma.flags & (VM_READ | VM_WRITE | VM_EXEC):
            flags |= FOLL_FORCE
        ret = __get_user_pages(mm, nstart, (nend - nstart) >> ps, flags, None, locked)
        if ret < 0:
            nstart = nend
            continue
        nstart += ret << ps
    if locked[0]:
        mm.mmap_sem.up_read(mm.current)


# ---------------------------------------------------------------------- builders


def _driver_fault_handler(drv: Driver, *, mixed: bool) -> VmOps:
    """A device ``->fault``: optional contention first (``fault_retry``), then
    insert ``base + vmf->pgoff - vm_pgoff``."""

    def fault(vmf: VmFault) -> int:
        vma = vmf.vma
        mm = vma.mm
        assert mm is not None
        drv.faults += 1
        if drv.fault_retry > 0:
            if not lock_page_or_retry(mm, vmf.flags):
                if not vmf.flags & FAULT_FLAG_RETRY_NOWAIT:
                    drv.fault_retry -= 1
                return VM_FAULT_RETRY
            drv.fault_retry = 0
        pfn = drv.base + vmf.pgoff - vma.pgoff
        if not drv.owns(pfn):
            return VM_FAULT_SIGBUS
        if not mixed:
            return vmf_insert_pfn(vma, vmf.address, pfn)
        if mm.phys.pfn_valid(pfn):
            return _errno_to_vmf(vm_insert_page(vma, vmf.address, pfn))
        return vmf_insert_mixed(vma, vmf.address, pfn)

    return VmOps(fault, f"driver:{drv.name}")


def _driver_frames(mm: Mm, name: str, npages: int, pfn_kind: str) -> int:
    phys = mm.phys
    owner = f"driver:{name}"
    if pfn_kind == "mmio":
        return phys.alloc_mmio(npages, owner=owner)
    if pfn_kind == "ram":
        base = phys.alloc_pages(0, owner=owner, kind="driver")
        for _ in range(npages - 1):
            phys.alloc_pages(0, owner=owner, kind="driver")
        return base
    if pfn_kind == "ram_unrefcounted":
        return phys.alloc_unrefcounted(npages, owner=owner)
    raise ValueError(f"unknown pfn_kind {pfn_kind!r} (expected one of {', '.join(PFN_KINDS)})")


def map_backing(
    mm: Mm,
    *,
    name: str,
    size: int,
    backing: str,
    prot: str,
    shared: bool,
    huge_shift: int = 0,
    populate: bool = False,
    pgoff: int = 0,
    pfn_kind: str = "mmio",
    fault_retry: int = 0,
    thp: bool = False,
) -> Vma:
    """Set up one scenario vma: ``backing`` is one of :data:`BACKINGS`.

    anon (``thp``, or any ``huge_shift``, for VM_HUGEPAGE), shmem (the same for a shmem THP:
    VM_HUGEPAGE on a mount whose huge policy is ``advise``), file (read-only unless shared
    writable), hugetlbfs (``huge_shift``, default 2M), pfnmap_linear (driver
    mmap remap_pfn_range'ing the whole vma), pfnmap_fault (VM_IO|VM_PFNMAP,
    filled by ``vmf_insert_pfn`` from the fault handler), mixedmap
    (VM_MIXEDMAP, plus VM_IO for MMIO; RAM frames through ``vm_insert_page``,
    MMIO frames through ``vm_insert_mixed``).  MMIO frames are mapped
    cache-inhibited and guarded.  ``fault_retry`` applies to every backing
    with a fault handler (page cache or driver).
    """
    ps = mm.page_size
    npages = (size + ps - 1) // ps
    vma: Vma
    if backing == "anon":
        # A scenario's ``huge`` on anonymous memory means THP (VM_HUGEPAGE).
        thp = thp or bool(huge_shift)
        vma = mm.mmap(size, prot=prot, shared=shared, pgoff=pgoff, thp=thp, name=name)
    elif backing in ("shmem", "file"):
        f = File(
            name=name,
            size=(pgoff + npages) * ps,
            shmem=backing == "shmem",
            readonly=backing == "file" and not (shared and "w" in prot),
        )
        # ``huge`` on shmem: MADV_HUGEPAGE, so shmem_fault asks for SGP_HUGE
        thp = backing == "shmem" and (thp or bool(huge_shift))
        vma = mm.mmap(size, prot=prot, shared=shared, file=f, pgoff=pgoff, thp=thp, name=name)
    elif backing == "hugetlbfs":
        vma = mm.mmap(
            size, prot=prot, shared=shared, pgoff=pgoff, huge_shift=huge_shift or 21, name=name
        )
    elif backing in ("pfnmap_linear", "pfnmap_fault", "mixedmap"):
        base = _driver_frames(mm, name, npages, pfn_kind)
        drv = Driver(
            name=name, pfn_kind=pfn_kind, base=base, npages=npages, fault_retry=fault_retry
        )
        devfile = File(name=f"dev:{name}", size=(pgoff + npages) * ps, private_data=drv)
        cache = PTE_NONCACHED | PTE_GUARDED if pfn_kind == "mmio" else 0
        if backing == "pfnmap_linear":
            vma = mm.mmap(
                size,
                prot=prot,
                shared=shared,
                file=devfile,
                pgoff=pgoff,
                ops=VmOps(None, f"driver:{name}"),
                name=name,
            )
            vma.page_prot = (vma.page_prot & ~PTE_CACHE_BITS) | cache
            ret = remap_pfn_range(mm, vma, vma.start, base, size, vma.page_prot)
            if ret:
                raise ValueError(f"remap_pfn_range failed for {name}: {ret}")
        elif backing == "pfnmap_fault":
            vma = mm.mmap(
                size,
                prot=prot,
                shared=shared,
                file=devfile,
                pgoff=pgoff,
                extra_flags=VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP,
                ops=_driver_fault_handler(drv, mixed=False),
                name=name,
            )
            vma.page_prot = (vma.page_prot & ~PTE_CACHE_BITS) | cache
        else:
            extra = VM_MIXEDMAP | (VM_IO if pfn_kind == "mmio" else 0)
            vma = mm.mmap(
                size,
                prot=prot,
                shared=shared,
                file=devfile,
                pgoff=pgoff,
                extra_flags=extra,
                ops=_driver_fault_handler(drv, mixed=True),
                name=name,
            )
            vma.page_prot = (vma.page_prot & ~PTE_CACHE_BITS) | cache
        vma.private_data = drv
    else:
        raise ValueError(f"unknown backing {backing!r} (expected one of {', '.join(BACKINGS)})")
    if backing in ("shmem", "file") and fault_retry and vma.ops is not None:
        vma.ops = _retrying(vma.ops, fault_retry)
    if populate:
        mm_populate(mm, vma.start, vma.end - vma.start)
    return vma


def _retrying(ops: VmOps, n: int) -> VmOps:
    """Wrap a page-cache ``->fault`` so the page is found locked ``n`` times."""
    inner = ops.fault
    assert inner is not None
    left = [n]

    def fault(vmf: VmFault) -> int:
        mm = vmf.vma.mm
        assert mm is not None
        if left[0] > 0:
            if not lock_page_or_retry(mm, vmf.flags):
                if not vmf.flags & FAULT_FLAG_RETRY_NOWAIT:
                    left[0] -= 1
                return VM_FAULT_RETRY
            left[0] = 0
        return inner(vmf)

    return VmOps(fault, ops.name, ops.page_mkwrite)
