"""Building blocks of the generic ``hva_to_pfn`` (virt/kvm/kvm_main.c,
v4.16; kernel-notes §A.3-A.8), shared by the strategies that use them.

Each function models the kernel function of the same name.  ``writable`` is
an :class:`~kvmsim.cmodel.OutParam` (NULL when the caller passed none);
``async_`` likewise (the code only ever writes ``*async = true``).

Read from: Linux 4.16.13 stable (mirror lizuobin/linux-4.16.13_tiny4412),
virt/kvm/kvm_main.c (kernel-notes §A.3-A.8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmsim.cmodel import BUG_ON, EAGAIN, EHWPOISON, OutParam
from kvmsim.hooktypes import (
    ASYNC,
    ERR_FAULT,
    ERR_HWPOISON,
    ERR_RO_FAULT,
    NOSLOT,
    OK,
    HvaToPfnRequest,
    HvaToPfnResult,
)
from kvmsim.host import gup
from kvmsim.host.constants import (
    FAULT_FLAG_WRITE,
    FOLL_HWPOISON,
    FOLL_NOWAIT,
    FOLL_WRITE,
    VM_IO,
    VM_PFNMAP,
    VM_READ,
    VM_WRITE,
)
from kvmsim.kvm.pfn import (
    KVM_PFN_ERR_FAULT,
    KVM_PFN_ERR_HWPOISON,
    KVM_PFN_ERR_RO_FAULT,
    KVM_PFN_NOSLOT,
    is_error_noslot_pfn,
    kvm_get_pfn,
    pfn_name,
)

#: Everything this plugin's code does to shared state during a guest access
#: is seen by the footprint recorders (:mod:`kvmsim.footprint`): the
#: explorer's partial-order reduction may treat its segments as keyed.
FOOTPRINTS = True

if TYPE_CHECKING:
    from kvmsim.host.vma import Vma
    from kvmsim.kvm.core import Kvm


def check_user_page_hwpoison(kvm: Kvm, addr: int) -> bool:
    """``check_user_page_hwpoison`` (kernel-notes §A.6): a write-gup with no page array,
    under the caller's mmap_sem; true iff it returns -EHWPOISON."""
    rc = gup.get_user_pages(kvm.mm, addr, 1, FOLL_HWPOISON | FOLL_WRITE, None)
    return rc == -EHWPOISON


def hva_to_pfn_fast(
    kvm: Kvm,
    addr: int,
    atomic: bool,
    async_: OutParam,
    write_fault: bool,
    writable: OutParam,
    pfn: OutParam,
    *,
    any_caller: bool = False,
) -> bool:
    """``hva_to_pfn_fast`` (kernel-notes §A.4): only for atomic or async callers; always
    asks gup-fast for a writable page.  ``any_caller``: from v4.19 ("KVM:
    try __get_user_pages_fast even if not in atomic context") any caller
    that wants or allows a write tries it first."""
    if not (async_ or atomic or any_caller):
        return False
    if not (write_fault or writable):
        return False
    page: list[int] = []  # gup appends what it pinned
    npages = gup.__get_user_pages_fast(kvm.mm, addr, 1, 1, page)
    if kvm.tracer.enabled:
        kvm.tracer.emit("hva_to_pfn_fast", gup="__get_user_pages_fast", write=1, ret=npages)
    if npages == 1:
        pfn.set(page[0])
        if writable:
            writable.set(True)
        return True
    return False


def hva_to_pfn_slow(
    kvm: Kvm, addr: int, async_: OutParam, write_fault: bool, writable: OutParam, pfn: OutParam
) -> int:
    """``hva_to_pfn_slow`` (kernel-notes §A.5, v4.16): one ``get_user_pages_unlocked``
    with FOLL_HWPOISON (and FOLL_NOWAIT for async), then the read-fault
    write upgrade through gup-fast, swapping one reference for another."""
    flags = FOLL_HWPOISON
    if writable:
        writable.set(write_fault)
    if write_fault:
        flags |= FOLL_WRITE
    if async_:
        flags |= FOLL_NOWAIT
    page: list[int] = []
    npages = gup.get_user_pages_unlocked(kvm.mm, addr, 1, page, flags)
    tr = kvm.tracer
    if tr.enabled:
        tr.emit(
            "hva_to_pfn_slow",
            gup="get_user_pages_unlocked",
            write=write_fault,
            nowait=bool(async_),
            ret=npages,
        )
    if npages != 1:
        return npages
    if not write_fault and writable:
        wpage: list[int] = []
        if gup.__get_user_pages_fast(kvm.mm, addr, 1, 1, wpage) == 1:
            writable.set(True)
            kvm.phys.put_page(page[0])
            page = wpage
        if tr.enabled:
            tr.emit("hva_to_pfn_slow_upgrade", writable=writable.get())
    pfn.set(page[0])
    return npages


def vma_is_valid(vma: Vma, write_fault: bool) -> bool:
    """``vma_is_valid`` (kernel-notes §A.7)."""
    if not vma.flags & VM_READ:
        return False
    return not (write_fault and not vma.flags & VM_WRITE)


def hva_to_pfn_remapped(
    kvm: Kvm,
    vma: Vma,
    addr: int,
    async_: OutParam,
    write_fault: bool,
    writable: OutParam | None,
    p_pfn: OutParam,
) -> int:
    """``hva_to_pfn_remapped`` (kernel-notes §A.8): follow_pfn, else fixup_user_fault and
    follow_pfn again; -EAGAIN whenever mmap_sem was dropped.  v4.16 reports
    every remapped pfn writable (a340b3e229b2), v4.15 passes no ``writable``
    (``None`` here).  No check of the PTE's write bit in either."""
    pfn = OutParam("pfn")
    r = gup.follow_pfn(vma, addr, pfn)
    if r:
        unlocked = OutParam("unlocked", False)
        r = gup.fixup_user_fault(kvm.mm, addr, FAULT_FLAG_WRITE if write_fault else 0, unlocked)
        if unlocked.get():
            return -EAGAIN
        if r:
            return r
        r = gup.follow_pfn(vma, addr, pfn)
        if r:
            return r
    if writable is not None and writable:
        writable.set(True)
    value = pfn.get()
    assert isinstance(value, int)
    kvm_get_pfn(kvm.phys, value)
    p_pfn.set(value)
    return 0


RemappedFn = Callable[["Kvm", "Vma", int, OutParam, bool, "OutParam | None", OutParam], int]
"""``hva_to_pfn_remapped(kvm, vma, addr, async, write_fault, writable, p_pfn)``:
the version a strategy uses (v4.16 here; 5.13-era in ``refcount_guarded``)."""


def hva_to_pfn(
    kvm: Kvm,
    addr: int,
    atomic: bool,
    async_: OutParam,
    write_fault: bool,
    writable: OutParam,
    *,
    remapped_writable: bool = True,
    remapped: RemappedFn | None = None,
    fast_any_caller: bool = False,
) -> int:
    """``hva_to_pfn`` (kernel-notes §A.3, v4.16): fast (atomic/async only), slow, then the
    vma walk under mmap_sem: hwpoison, remapped VM_IO|VM_PFNMAP, async.

    ``remapped`` replaces :func:`hva_to_pfn_remapped`; ``fast_any_caller``
    is v4.19's fast-path rule (:func:`hva_to_pfn_fast`): later kernels up to
    v5.13 changed only these on this path."""
    if remapped is None:
        remapped = hva_to_pfn_remapped
    BUG_ON(bool(atomic and async_), "BUG_ON(atomic && async)")
    tr = kvm.tracer
    pfn = OutParam("pfn", 0)
    if hva_to_pfn_fast(
        kvm, addr, atomic, async_, write_fault, writable, pfn, any_caller=fast_any_caller
    ):
        return pfn.get()  # type: ignore[return-value]
    if atomic:
        return KVM_PFN_ERR_FAULT
    npages = hva_to_pfn_slow(kvm, addr, async_, write_fault, writable, pfn)
    if npages == 1:
        return pfn.get()  # type: ignore[return-value]
    mm = kvm.mm
    task = mm.current
    mm.mmap_sem.down_read(task)
    try:
        if npages == -EHWPOISON or (not async_ and check_user_page_hwpoison(kvm, addr)):
            if tr.enabled:
                tr.emit("hva_to_pfn_hwpoison", npages=npages)
            return KVM_PFN_ERR_HWPOISON
        while True:  # retry:
            vma = mm.find_vma_intersection(addr, addr + 1)
            if vma is None:
                if tr.enabled:
                    tr.emit("find_vma_intersection", addr=hex(addr), vma=None)
                result = KVM_PFN_ERR_FAULT
            elif vma.flags & (VM_IO | VM_PFNMAP):
                if tr.enabled:
                    tr.emit(
                        "find_vma_intersection",
                        addr=hex(addr),
                        vma=vma.name,
                        flags="VM_IO|VM_PFNMAP" if vma.flags & VM_IO else "VM_PFNMAP",
                    )
                r = remapped(
                    kvm,
                    vma,
                    addr,
                    async_,
                    write_fault,
                    writable if remapped_writable else None,
                    pfn,
                )
                if r == -EAGAIN:
                    if tr.enabled:
                        tr.emit("hva_to_pfn_retry", why="mmap_sem was dropped")
                    continue
                result = KVM_PFN_ERR_FAULT if r < 0 else pfn.get()  # type: ignore[assignment]
            else:
                if async_ and vma_is_valid(vma, write_fault):
                    async_.set(True)
                result = KVM_PFN_ERR_FAULT
            return result
    finally:
        mm.mmap_sem.up_read(task)


_STATUS = {
    KVM_PFN_ERR_FAULT: ERR_FAULT,
    KVM_PFN_ERR_HWPOISON: ERR_HWPOISON,
    KVM_PFN_ERR_RO_FAULT: ERR_RO_FAULT,
    KVM_PFN_NOSLOT: NOSLOT,
}


def generic_request(
    kvm: Kvm,
    request: HvaToPfnRequest,
    *,
    remapped_writable: bool = True,
    remapped: RemappedFn | None = None,
    fast_any_caller: bool = False,
) -> HvaToPfnResult:
    """Run :func:`hva_to_pfn` for a request and package its outputs.

    ``page`` stays None: the generic API hands back no page pointer; callers
    release by pfn (``kvm_release_pfn_*``) or derive the page themselves
    (PPC v4.17: ``pfn_valid && !PageReserved``)."""
    writable = OutParam("writable", False) if request.writable else OutParam.null("writable")
    async_ = OutParam("async", False) if request.async_ else OutParam.null("async")
    pfn = hva_to_pfn(
        kvm,
        request.hva,
        request.atomic,
        async_,
        request.write_fault,
        writable,
        remapped_writable=remapped_writable,
        remapped=remapped,
        fast_any_caller=fast_any_caller,
    )
    return package_result(kvm, request, pfn, async_, writable)


def package_result(
    kvm: Kvm,
    request: HvaToPfnRequest,
    pfn: int,
    async_: OutParam,
    writable: OutParam,
    page: object = None,
) -> HvaToPfnResult:
    """The outputs of a generic-shaped ``hva_to_pfn`` as a result: the
    status its pfn stands for (a pfn with error bits is a fault, as every
    caller's ``is_error_noslot_pfn`` takes it; ``*async`` set turns a fault
    into ``async``), ``*writable``, and the page pointer, if the API has one."""
    status = _STATUS.get(pfn, OK)
    if status == OK and is_error_noslot_pfn(pfn):
        status = ERR_FAULT
    if status == ERR_FAULT and async_ and async_.get() is True:
        status = ASYNC
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "hva_to_pfn",
            hva=hex(request.hva),
            write_fault=request.write_fault,
            pfn=pfn_name(pfn),
            status=status,
        )
    return HvaToPfnResult(
        status=status,
        pfn=pfn,
        page=page,
        writable=bool(writable.get()) if writable else False,
    )
