"""The page lookup the v4.15 PPC HV fault handlers inline (kernel-notes
§B.2 steps 9-10 for radix, §B.5 step 7 for HPT), shared by the strategies that
sit on that base: ``ppc_original``, ``cedric_rfc`` and ``cedric_reviewed``.

Both handlers do the same thing, in this order:

1. ``npages = get_user_pages_fast(hva, 1, writing, pages)``.  gup-fast falls
   back to ``get_user_pages_unlocked`` without FOLL_HWPOISON, so with nothing
   pinned the result is a negative errno (kernel-notes §F.2), never 0.
2. On success: ``page = pages[0]``, one reference on the compound head.  The
   handler does the rest (PageHuge, write permission, put_page).
3. On failure: ``down_read(mmap_sem)``; ``vma = find_vma(mm, hva)``; if the
   vma covers ``hva`` (HPT: covers ``[hva, hva + psize)``) and passes the
   outer flag test, the strategy's *PFNMAP branch* decides the pfn; the
   handler then takes ``pgflags = vm_page_prot`` (HPT: ``is_ci`` from it and
   ``write_ok = vm_flags & VM_WRITE``); ``up_read``; ``if (!pfn) return -EFAULT``.

The strategies differ only in the outer flag test and in the branch, so this
module runs the block and calls the branch.

Result contract (what ``handler_v4_15`` and the HPT v4.15 handler read):
``page`` = ``pages[0]`` when gup pinned a page (the caller puts it), else
None; ``pfn`` = the frame, 0 meaning "nothing" (status ``efault``: the
handler returns -EFAULT, a genuine pfn 0 included, as ``if (!pfn)`` does);
``prot`` = ``vm_page_prot`` when the branch ran; ``writable`` = ``writing``
(the handlers' initial ``write_ok``), or on HPT after the branch ran
``vm_flags & VM_WRITE``; status ``retry`` = the RFC's ``-EAGAIN`` →
``RESUME_GUEST``, returned **with mmap_sem still held** when the branch says
so (defect kernel-notes §J.3).

Read from: Linux 4.15.1 release tarball (mirror Kent-Hu/linux-4.15.1),
arch/powerpc/kvm/book3s_64_mmu_radix.c blob 58618f644c56 and
book3s_64_mmu_hv.c (kernel-notes §B.2 steps 9-10, §B.5 step 7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from attrs import frozen

from kvmsim.cmodel import EAGAIN
from kvmsim.hooktypes import ERR_FAULT, OK, RETRY, HvaToPfnRequest, HvaToPfnResult
from kvmsim.host import gup
from kvmsim.host.constants import VM_IO, VM_PFNMAP, VM_WRITE

#: Everything this plugin's code does to shared state during a guest access
#: is seen by the footprint recorders (:mod:`kvmsim.footprint`): the
#: explorer's partial-order reduction may treat its segments as keyed.
FOOTPRINTS = True

if TYPE_CHECKING:
    from kvmsim.host.vma import Vma
    from kvmsim.kvm.core import Kvm

HPT = "ppc_hpt"


@frozen
class BranchAnswer:
    """What a strategy's PFNMAP branch decided.

    :param pfn: the frame (0: nothing; the handler's ``pfn`` stays 0).
    :param retry: return ``RESUME_GUEST`` now, before the handler's ``up_read``.
    :param ret: the branch's return code, for the trace.
    :param how: a few words for the trace (``vm_pgoff``, ``follow_pfn``...).
    """

    pfn: int
    retry: bool = False
    ret: int = 0
    how: str = ""


PfnmapBranch = Callable[["Kvm", "Vma", HvaToPfnRequest], BranchAnswer]
"""``branch(kvm, vma, request)``: runs with ``mmap_sem`` held for read, the vma
having passed the outer test."""


def _flag_names(flags: int) -> str:
    names = [n for n, bit in (("VM_IO", VM_IO), ("VM_PFNMAP", VM_PFNMAP)) if flags & bit]
    return "|".join(names) or "-"


def pgoff_pfn(kvm: Kvm, vma: Vma, hva: int) -> int:
    """``vma->vm_pgoff + ((hva - vma->vm_start) >> PAGE_SHIFT)``: a pfn only
    when the vma's creator made ``vm_pgoff`` one (kernel-notes §B.6)."""
    return vma.pgoff + ((hva - vma.start) >> kvm.page_shift)


def inline_hva_to_pfn(
    kvm: Kvm, request: HvaToPfnRequest, *, outer_flags: int, branch: PfnmapBranch
) -> HvaToPfnResult:
    """Run the v4.15 handlers' gup-fast + VM_PFNMAP block (kernel-notes §B.2 9-10, §B.5 7).

    :param outer_flags: the vma flags the handler's outer test requires (any
        of them): VM_PFNMAP in v4.15 and the RFC, VM_IO|VM_PFNMAP after review.
    :param branch: the strategy's code inside that test.
    """
    mm = kvm.mm
    tr = kvm.tracer
    hva = request.hva
    writing = request.write_fault
    hpt = kvm.arch_name == HPT
    pages: list[int] = []
    npages = gup.get_user_pages_fast(mm, hva, 1, int(writing), pages)
    if npages >= 1:
        page = pages[0]
        if tr.enabled:
            tr.emit(
                "ppc_get_user_pages_fast", hva=hex(hva), write=writing, ret=npages, pfn=hex(page)
            )
        return HvaToPfnResult(status=OK, pfn=page, page=page, writable=writing)
    task = mm.current
    mm.mmap_sem.down_read(task)
    vma = mm.find_vma(hva)
    pfn = 0
    prot: int | None = None
    writable = writing
    covers = False
    if vma is not None and vma.start <= hva:
        # HPT needs the whole guest page inside the vma (kernel-notes §B.5 step 7)
        covers = hva + request.psize <= vma.end if hpt else hva < vma.end
    if tr.enabled:
        tr.emit(
            "ppc_vma_test",
            hva=hex(hva),
            gup_ret=npages,
            vma=None if vma is None else vma.name,
            covers=covers,
            flags=None if vma is None else _flag_names(vma.flags),
            outer_test=_flag_names(outer_flags),
        )
    if covers and vma is not None and vma.flags & outer_flags:
        ans = branch(kvm, vma, request)
        if ans.retry:
            # the RFC's `return RESUME_GUEST` sits before the handler's up_read
            if tr.enabled:
                tr.emit(
                    "ppc_pfnmap_branch",
                    how=ans.how,
                    ret=ans.ret,
                    action="return RESUME_GUEST before up_read: mmap_sem stays held",
                    mmap_sem_holders=mm.mmap_sem.held_by(),
                )
            return HvaToPfnResult(status=RETRY, pfn=0, ret=-EAGAIN)
        pfn = ans.pfn
        prot = vma.page_prot
        if hpt:
            writable = bool(vma.flags & VM_WRITE)
        if tr.enabled:
            tr.emit(
                "ppc_pfnmap_branch",
                how=ans.how,
                ret=ans.ret,
                pfn=hex(pfn),
                vm_pgoff=vma.pgoff,
                vm_page_prot=hex(vma.page_prot),
            )
    mm.mmap_sem.up_read(task)
    if not pfn:
        if tr.enabled:
            tr.emit("ppc_hva_to_pfn", result="pfn == 0: the handler returns -EFAULT")
        return HvaToPfnResult(status=ERR_FAULT, pfn=0, prot=prot, writable=writable)
    return HvaToPfnResult(status=OK, pfn=pfn, prot=prot, writable=writable)
