"""``follow_pfn_2024``: the generic resolution after David Stevens's and Sean
Christopherson's rework "KVM: Stop grabbing references to PFNMAP'd pages"
(v13, 2024-10-10; merged for v6.13), with 6da8e9634bb7/5731aacd54a8's
``follow_pfnmap_start/end`` (v6.12) in ``hva_to_pfn_remapped``
(kernel-notes §E, §L.7).  In the shape this model can express:

- ``struct kvm_follow_pfn`` becomes the request: FOLL_WRITE = ``write_fault``,
  FOLL_NOWAIT = ``async_`` (``KVM_PFN_ERR_NEEDS_IO`` is status ``async``),
  ``map_writable`` = ``writable``, ``refcounted_page`` is required (always
  given).  ``pin`` (guest_memfd/pKVM) is not modelled.
- The fast path (``get_user_page_fast_only(FOLL_WRITE)``) runs whenever a
  write is wanted or allowed, no longer only for atomic/async callers.
- Slow path ``get_user_pages_unlocked(FOLL_HWPOISON | FOLL_HONOR_NUMA_FAULT
  | flags)`` (NUMA hinting is not modelled), read-fault write upgrade by
  swapping references; -EHWPOISON → HWPOISON (no extra hwpoison gup any
  more); -EINTR/-EAGAIN would be ``KVM_PFN_ERR_SIGPENDING`` (the model has no
  signals; reported as ``efault``).
- ``vma_lookup``; VM_IO|VM_PFNMAP → ``hva_to_pfn_remapped``: follow_pfnmap_start,
  else fixup_user_fault (-EAGAIN when unlocked → retry) and start again;
  a write fault on a non-writable leaf → ``KVM_PFN_ERR_RO_FAULT``; otherwise
  the pfn with ``map_writable = args.writable`` and **no reference at all**
  (``refcounted_page = NULL``), struct page or not; follow_pfnmap_end.
- Result ``page`` is ``*refcounted_page``: the only page the caller may
  release (``kvm_release_page_clean/dirty``, NULL-safe, which put the zero
  page too: it is treated as refcounted despite PG_reserved).  None = release
  nothing; stage-2 safety of PFNMAP pfns rests on MMU notifiers alone.

An arch handler must release exactly ``result.page`` (never derive a page
from the pfn, as the v4.17 PPC handler and the v4.16 x86 handler do): the
builtin arches' ``v6.13`` handlers do (radix ``kvmppc_book3s_instantiate_page``,
HPT after 0865ba14b4ee, x86 releasing ``refcounted_page``).  An arch with no
such version (``"*"``: v4.16) pairs the 2024 code with an older release rule;
the trace event ``follow_pfn_release_contract`` flags every result whose
release such a handler gets wrong.

Read from: Linux 6.13.7 (GitHub ChenRuiwei/linux-6.13.7, Makefile
6.13.7, the kvm files as imported in its initial commit)
virt/kvm/kvm_main.c (``__kvm_faultin_pfn``, ``kvm_follow_pfn``,
``hva_to_pfn``, ``hva_to_pfn_fast``, ``hva_to_pfn_slow``,
``hva_to_pfn_remapped``, ``kvm_resolve_pfn``, ``vma_is_valid``) and
mm/memory.c ``follow_pfnmap_start``, which read alike the model; first
built from the v6.13 "Stop grabbing references to PFNMAP'd pages" series
(merge 5cb1659f4120, 2024-10-25) and 6da8e9634bb7 / 5731aacd54a8 (v6.12
``follow_pfnmap_start/end``; kernel-notes §E, §L.7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define
from kvmsim_plugins.strategies.generic import vma_is_valid

from kvmsim import hookimpl
from kvmsim.cmodel import EAGAIN, EHWPOISON, EINTR, OutParam
from kvmsim.hooktypes import (
    ASYNC,
    ERR_FAULT,
    ERR_HWPOISON,
    ERR_RO_FAULT,
    OK,
    HvaToPfnRequest,
    HvaToPfnResult,
    StrategyInfo,
)
from kvmsim.host import gup
from kvmsim.host.constants import (
    FAULT_FLAG_WRITE,
    FOLL_HWPOISON,
    FOLL_NOWAIT,
    FOLL_WRITE,
    VM_IO,
    VM_PFNMAP,
)
from kvmsim.kvm.pfn import (
    KVM_PFN_ERR_FAULT,
    KVM_PFN_ERR_HWPOISON,
    KVM_PFN_ERR_RO_FAULT,
    pfn_name,
)
from kvmsim.sources import read_from

#: Everything this plugin's code does to shared state during a guest access
#: is seen by the footprint recorders (:mod:`kvmsim.footprint`): the
#: explorer's partial-order reduction may treat its segments as keyed.
FOOTPRINTS = True

if TYPE_CHECKING:
    from kvmsim.host.vma import Vma
    from kvmsim.kvm.core import Kvm

KVM_PFN_ERR_NEEDS_IO = KVM_PFN_ERR_FAULT + 3  # the 6.13 value after RO_FAULT
KVM_PFN_ERR_SIGPENDING = KVM_PFN_ERR_FAULT + 4


# the handlers that release exactly HvaToPfnResult.page (kvm_release_faultin_page)
HANDLERS = {
    "ppc_radix": "v6.13",  # kvmppc_book3s_instantiate_page
    "ppc_radix_4k": "v6.13",
    "ppc_hpt": "v6.13",  # book3s_64_mmu_hv.c after 0865ba14b4ee
    "x86_ept": "v6.13",  # releasing only refcounted_page (kernel-notes §E.9)
    "arm64": "v6.13",  # the out-of-tree example (examples/kvmsim-arm64): user_mem_abort
    "*": "v4.16",  # an arch without a 2024 handler: see follow_pfn_release_contract
}


@hookimpl
def strategy_info() -> StrategyInfo:
    return StrategyInfo(
        name="follow_pfn_2024",
        description="v6.13 kvm_follow_pfn: fast path always, no reference on PFNMAP pfns",
        arches=("*",),
        handlers=HANDLERS,
        kernel="v6.13 (kvm-no-struct-page, merge 5cb1659f4120)",
        linux={"*": "v6.13"},
        source=read_from(__doc__),
    )


@define(slots=True)
class KvmFollowPfn:
    """``struct kvm_follow_pfn`` as far as the model goes."""

    hva: int
    write: bool  # flags & FOLL_WRITE
    nowait: bool  # flags & FOLL_NOWAIT
    map_writable: OutParam  # NULL: no write upgrade
    refcounted_page: OutParam  # required


def kvm_resolve_pfn(
    kfp: KvmFollowPfn, page: int | None, map_pfn: int | None, writable: bool
) -> int:
    """``kvm_resolve_pfn``: ``*map_writable = writable``; the pfn from the
    follow_pfnmap args or from the page; ``*refcounted_page = page``."""
    if kfp.map_writable:
        kfp.map_writable.set(writable)
    kfp.refcounted_page.set(page)
    if map_pfn is not None:
        return map_pfn
    assert page is not None
    return page


def hva_to_pfn_fast(kvm: Kvm, kfp: KvmFollowPfn) -> int | None:
    """``hva_to_pfn_fast``: only if a write is wanted or allowed;
    ``get_user_page_fast_only(hva, FOLL_WRITE)``."""
    if not (kfp.write or kfp.map_writable):
        return None
    pages: list[int] = []
    if gup.__get_user_pages_fast(kvm.mm, kfp.hva, 1, 1, pages) == 1:
        return kvm_resolve_pfn(kfp, pages[0], None, True)
    return None


def hva_to_pfn_slow(kvm: Kvm, kfp: KvmFollowPfn, pfn: OutParam) -> int:
    """``hva_to_pfn_slow``: one ``get_user_pages_unlocked``, then the
    read-fault upgrade through gup-fast (swapping the reference)."""
    flags = FOLL_HWPOISON | (FOLL_WRITE if kfp.write else 0) | (FOLL_NOWAIT if kfp.nowait else 0)
    pages: list[int] = []
    npages = gup.get_user_pages_unlocked(kvm.mm, kfp.hva, 1, pages, flags)
    if npages != 1:
        return npages
    page = pages[0]
    writable = kfp.write
    if not kfp.write and kfp.map_writable:
        wpage: list[int] = []
        if gup.__get_user_pages_fast(kvm.mm, kfp.hva, 1, 1, wpage) == 1:
            kvm.phys.put_page(page)
            page = wpage[0]
            writable = True
    pfn.set(kvm_resolve_pfn(kfp, page, None, writable))
    return npages


def hva_to_pfn_remapped(kvm: Kvm, vma: Vma, kfp: KvmFollowPfn, p_pfn: OutParam) -> int:
    """v6.13 ``hva_to_pfn_remapped``: follow_pfnmap_start (after
    fixup_user_fault if needed), RO_FAULT check, no reference taken."""
    mm = kvm.mm
    tr = kvm.tracer
    args = gup.FollowPfnmapArgs(vma=vma, address=kfp.hva)
    r = gup.follow_pfnmap_start(args)
    if r:
        unlocked = OutParam("unlocked", False)
        r = gup.fixup_user_fault(mm, kfp.hva, FAULT_FLAG_WRITE if kfp.write else 0, unlocked)
        if unlocked.get():
            return -EAGAIN
        if r:
            return r
        r = gup.follow_pfnmap_start(args)
        if r:
            return r
    if kfp.write and not args.writable:
        p_pfn.set(KVM_PFN_ERR_RO_FAULT)
    else:
        p_pfn.set(kvm_resolve_pfn(kfp, None, args.pfn, args.writable))
    if tr.enabled:
        tr.emit(
            "hva_to_pfn_remapped",
            pfn=pfn_name(p_pfn.get()),  # type: ignore[arg-type]
            writable=args.writable,
            refcounted_page=None,
            why="no reference on remapped pfns (E)",
        )
    gup.follow_pfnmap_end(args)
    return r


def kfp_hva_to_pfn(kvm: Kvm, kfp: KvmFollowPfn) -> int:
    """v6.13 ``hva_to_pfn(kfp)`` (E steps 2-6)."""
    mm = kvm.mm
    tr = kvm.tracer
    pfn = hva_to_pfn_fast(kvm, kfp)
    if tr.enabled:
        tr.emit("hva_to_pfn_fast", ran=bool(kfp.write or kfp.map_writable), pinned=pfn is not None)
    if pfn is not None:
        return pfn
    out = OutParam("pfn", 0)
    npages = hva_to_pfn_slow(kvm, kfp, out)
    if tr.enabled:
        tr.emit("hva_to_pfn_slow", ret=npages)
    if npages == 1:
        return out.get()  # type: ignore[return-value]
    if npages in (-EINTR, -EAGAIN):
        return KVM_PFN_ERR_SIGPENDING
    if npages == -EHWPOISON:
        return KVM_PFN_ERR_HWPOISON
    task = mm.current
    mm.mmap_sem.down_read(task)
    try:
        while True:  # retry:
            vma = mm.find_vma_intersection(kfp.hva, kfp.hva + 1)  # vma_lookup
            if vma is None:
                return KVM_PFN_ERR_FAULT
            if vma.flags & (VM_IO | VM_PFNMAP):
                r = hva_to_pfn_remapped(kvm, vma, kfp, out)
                if r == -EAGAIN:
                    continue
                if r < 0:
                    return KVM_PFN_ERR_FAULT
                return out.get()  # type: ignore[return-value]
            if kfp.nowait and vma_is_valid(vma, kfp.write):
                return KVM_PFN_ERR_NEEDS_IO
            return KVM_PFN_ERR_FAULT
    finally:
        mm.mmap_sem.up_read(task)


_STATUS = {
    KVM_PFN_ERR_FAULT: ERR_FAULT,
    KVM_PFN_ERR_HWPOISON: ERR_HWPOISON,
    KVM_PFN_ERR_RO_FAULT: ERR_RO_FAULT,
    KVM_PFN_ERR_NEEDS_IO: ASYNC,
    KVM_PFN_ERR_SIGPENDING: ERR_FAULT,
}


@hookimpl
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    """``kvm_follow_pfn`` → ``hva_to_pfn`` (the memslot checks of E step 1
    are the core's ``__gfn_to_pfn_memslot``, identical in effect)."""
    kfp = KvmFollowPfn(
        hva=request.hva,
        write=request.write_fault,
        nowait=request.async_,
        map_writable=OutParam("map_writable", False)
        if request.writable
        else OutParam.null("map_writable"),
        refcounted_page=OutParam("refcounted_page", None),
    )
    pfn = kfp_hva_to_pfn(kvm, kfp)
    status = _STATUS.get(pfn, OK)
    page = kfp.refcounted_page.get() if status == OK else None
    tr = kvm.tracer
    if tr.enabled:
        tr.emit(
            "hva_to_pfn",
            hva=hex(request.hva),
            write_fault=request.write_fault,
            pfn=pfn_name(pfn),
            status=status,
            refcounted_page=None if page is None else hex(page),  # type: ignore[arg-type]
        )
    if tr.enabled and status == OK and kvm.handler != "v6.13":
        # what the selected (older) handler will release instead of `page`
        derived = pfn if kvm.phys.pfn_valid(pfn) and not kvm.phys.PageReserved(pfn) else None
        if derived != page:
            tr.emit(
                "follow_pfn_release_contract",
                handler=kvm.handler,
                refcounted_page=None if page is None else hex(page),  # type: ignore[arg-type]
                handler_releases=None if derived is None else hex(derived),
                why="the selected handler derives the page from the pfn; v6.13 would not",
            )
    return HvaToPfnResult(
        status=status,
        pfn=pfn,
        page=page,
        writable=bool(kfp.map_writable.get()) if kfp.map_writable else False,
    )
