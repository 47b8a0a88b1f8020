"""``paolo_refactor``: Paolo Bonzini's untested, uncompiled sketch of a unified
``hva_to_pfn`` (kvm-ppc thread, 2018-02-12), transliterated as written on its
base ``virt/kvm/kvm_main.c`` blob b4414842b023 (kernel-notes §I.2, §J.5,
§J.6, §J.9).  Every arch: the generic ``__gfn_to_pfn_memslot`` calls it with
``p_page == NULL``; a caller that passes a page pointer (the PPC use Paolo
offered) sets ``request.page_out`` and gets ``*p_page`` back as ``page``.

What the sketch does, and what that means here:

- ``__hva_to_page_fast`` runs unconditionally (the async/atomic gate is
  gone).  With neither ``write_fault`` nor ``writable`` it does ``return
  false``: NULL, which ``!IS_ERR`` takes for success (kernel-notes §J.6a).  Otherwise it
  tests ``npages < 0``, which ``__get_user_pages_fast`` never returns, so
  with nothing pinned it sets ``*writable = true`` and returns the
  uninitialised ``page[0]`` (kernel-notes §J.5).  The caller's ``IS_ERR(page)`` on it is a
  use of an uninitialised value: :class:`~kvmsim.cmodel.KernelOops`
  ``uninit_use``.  This is the first-touch fault, the PFNMAP fault, anything
  gup-fast cannot pin: the slow path, the hwpoison check and the remapped
  path are unreachable as written.
- ``got_page: return page_to_pfn(page)``.  ``page_to_pfn`` is pointer
  arithmetic against ``vmemmap`` (SPARSEMEM_VMEMMAP on ppc64 and x86-64): on
  NULL it does not fault, it yields ``(0 - vmemmap) / sizeof(struct page)``,
  a garbage pfn holding no reference (kernel-notes §J.6a).  We compute it with the v4.16
  layouts (ppc64 radix ``RADIX_VMEMMAP_BASE`` 0xc00a000000000000, x86-64
  ``__VMEMMAP_BASE`` 0xffffea0000000000 without KASLR, 64-byte struct page):
  on ppc64 it has bits set in ``KVM_PFN_ERR_MASK`` so the v4.17 PPC caller
  sees an error pfn; on x86 it is a pfn far above RAM.  The trace names it.
- ``retry: *p_page = NULL`` is unguarded: reached from the generic path
  (``p_page == NULL``) it is a NULL write, an oops (kernel-notes §J.6b).  As written it is
  latent behind kernel-notes §J.5; :func:`hva_to_pfn` takes the fast helper as a parameter
  so the tests can show it with the one-line correction kernel-notes §J.6 names.
- ``hva_to_page_unlocked`` keeps the base's v4.15 slow-path shape
  (``get_user_page_nowait`` under mmap_sem for async, else
  ``get_user_pages_unlocked``); its ``npages < 0`` test lets 0 through as an
  uninitialised page, and its write upgrade reuses the fast helper.
- ``hva_to_pfn_remapped`` is the base's (v4.15: no ``writable``; our reading
  of b4414842b023, which predates the v4.16 slow-path rewrite).
- On the atomic and hwpoison returns ``*p_page`` is never written (kernel-notes §J.9): a
  caller's page then reads as ``UNINIT``.

Handlers: radix v4.17, HPT v5.7, others v4.16 (the generic callers).

Read from: Paolo's mail in reference/kvm-ppc-thread-2018-02.txt (2018-02-12)
and its base virt/kvm/kvm_main.c blob b4414842b023 (kernel-notes §I.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmsim_plugins.strategies.generic import (
    check_user_page_hwpoison,
    hva_to_pfn_remapped,
    package_result,
    vma_is_valid,
)

from kvmsim import hookimpl
from kvmsim.cmodel import (
    BUG_ON,
    EAGAIN,
    EHWPOISON,
    ERR_PTR,
    IS_ERR,
    NULL,
    PTR_ERR,
    UNINIT,
    OutParam,
    deref,
)
from kvmsim.hooktypes import HvaToPfnRequest, HvaToPfnResult, StrategyInfo
from kvmsim.host import gup
from kvmsim.host.constants import FOLL_HWPOISON, FOLL_NOWAIT, FOLL_WRITE, VM_IO, VM_PFNMAP
from kvmsim.kvm.pfn import (
    KVM_PFN_ERR_FAULT,
    KVM_PFN_ERR_HWPOISON,
)
from kvmsim.sources import read_from

#: Everything this plugin's code does to shared state during a guest access
#: is seen by the footprint recorders (:mod:`kvmsim.footprint`): the
#: explorer's partial-order reduction may treat its segments as keyed.
FOOTPRINTS = True

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm

FastFn = Callable[["Kvm", int, bool, OutParam], object]

SIZEOF_STRUCT_PAGE = 64
VMEMMAP_BASE = {"ppc": 0xC00A_0000_0000_0000, "x86": 0xFFFF_EA00_0000_0000}
"""v4.16 vmemmap bases: ppc64 radix ``RADIX_VMEMMAP_BASE``, x86-64 4-level
``__VMEMMAP_BASE`` (no KASLR)."""


@hookimpl
def strategy_info() -> StrategyInfo:
    return StrategyInfo(
        name="paolo_refactor",
        description="Paolo's untested unified hva_to_pfn sketch, as written (struct page **)",
        arches=("*",),
        handlers={"ppc_radix": "v4.17", "ppc_hpt": "v5.7", "*": "v4.16"},
        kernel="sketch on kvm_main.c b4414842b023 (2018-02-12)",
        linux={"*": "v4.16"},  # the 4.16 merge window's kvm tree
        source=read_from(__doc__),
    )


def page_to_pfn(kvm: Kvm, page: object) -> int:
    """``page_to_pfn(page)``: ``page - vmemmap``.  A real page gives its pfn;
    NULL gives the garbage pfn of ``(0 - vmemmap) / sizeof(struct page)``
    (signed pointer difference); an uninitialised pointer oopses here as a use."""
    if page is NULL:
        base = VMEMMAP_BASE["ppc" if kvm.arch_name.startswith("ppc") else "x86"]
        pfn = ((1 << 64) - base) // SIZEOF_STRUCT_PAGE
        if kvm.tracer.enabled:
            kvm.tracer.emit(
                "page_to_pfn",
                page="NULL",
                pfn=hex(pfn),
                why="`return false` from __hva_to_page_fast taken as a page (kernel-notes §J.6a)",
            )
        return pfn
    return deref(page, "page_to_pfn(page)")


def __hva_to_page_fast(kvm: Kvm, addr: int, write_fault: bool, writable: OutParam) -> object:
    """The sketch's ``__hva_to_page_fast`` → a ``struct page *`` (maybe NULL or UNINIT)."""
    tr = kvm.tracer
    if not (write_fault or writable):
        if tr.enabled:
            tr.emit("__hva_to_page_fast", ret="NULL", why="return false in a pointer function")
        return NULL
    page: list[object] = [UNINIT]  # struct page *page[1], never initialised
    pinned: list[int] = []
    npages = gup.__get_user_pages_fast(kvm.mm, addr, 1, 1, pinned)
    if pinned:
        page[0] = pinned[0]
    if npages < 0:  # never true: __get_user_pages_fast returns 0..nr (kernel-notes §F.1)
        return ERR_PTR(npages)
    if writable:
        writable.set(True)
    if tr.enabled:
        tr.emit(
            "__hva_to_page_fast",
            npages=npages,
            ret="UNINIT" if page[0] is UNINIT else hex(pinned[0]),
            writable_set=bool(writable),
        )
    return page[0]


def hva_to_page_unlocked(
    kvm: Kvm, addr: int, async_: OutParam, write_fault: bool, writable: OutParam
) -> object:
    """The sketch's ``hva_to_page_unlocked`` on the base's v4.15 slow path."""
    mm = kvm.mm
    tr = kvm.tracer
    page: list[object] = [UNINIT]
    pinned: list[int] = []
    if writable:
        writable.set(write_fault)
    if async_:
        # get_user_page_nowait: get_user_pages under the caller's mmap_sem
        flags = FOLL_NOWAIT | FOLL_HWPOISON | (FOLL_WRITE if write_fault else 0)
        mm.mmap_sem.down_read(mm.current)
        npages = gup.get_user_pages(mm, addr, 1, flags, pinned)
        mm.mmap_sem.up_read(mm.current)
    else:
        flags = FOLL_HWPOISON | (FOLL_WRITE if write_fault else 0)
        npages = gup.get_user_pages_unlocked(mm, addr, 1, pinned, flags)
    if pinned:
        page[0] = pinned[0]
    if tr.enabled:
        tr.emit("hva_to_page_unlocked", npages=npages, nowait=bool(async_))
    if npages < 0:
        return ERR_PTR(npages)
    if not write_fault and writable:
        wpage = __hva_to_page_fast(kvm, addr, write_fault, writable)
        if not IS_ERR(wpage, "IS_ERR(wpage) in hva_to_page_unlocked"):
            kvm.phys.put_page(deref(page[0], "put_page(page[0])"))
            return wpage
    return page[0]


def paolo_hva_to_pfn(
    kvm: Kvm,
    addr: int,
    atomic: bool,
    async_: OutParam,
    write_fault: bool,
    writable: OutParam,
    p_page: OutParam,
    *,
    fast: FastFn = __hva_to_page_fast,
) -> int:
    """The sketch's ``hva_to_pfn(addr, atomic, async, write_fault, writable, p_page)``.

    ``fast`` is ``__hva_to_page_fast`` unless a test substitutes a corrected
    one to reach the code kernel-notes §J.5 hides."""
    BUG_ON(bool(atomic and async_), "BUG_ON(atomic && async)")
    mm = kvm.mm
    tr = kvm.tracer
    page = fast(kvm, addr, write_fault, writable)
    if not IS_ERR(page, "IS_ERR(page) after __hva_to_page_fast"):
        return _got_page(kvm, page, p_page)
    if atomic:
        return KVM_PFN_ERR_FAULT
    page = hva_to_page_unlocked(kvm, addr, async_, write_fault, writable)
    if not IS_ERR(page, "IS_ERR(page) after hva_to_page_unlocked"):
        return _got_page(kvm, page, p_page)
    task = mm.current
    mm.mmap_sem.down_read(task)
    if PTR_ERR(page) == -EHWPOISON or (not async_ and check_user_page_hwpoison(kvm, addr)):
        mm.mmap_sem.up_read(task)
        return KVM_PFN_ERR_HWPOISON
    pfn = OutParam("pfn", 0)
    while True:  # retry:
        if tr.enabled:
            tr.emit("hva_to_pfn_retry_label", p_page="NULL" if not p_page else "given")
        p_page.set(NULL)  # unguarded: __gfn_to_pfn_memslot passes NULL (kernel-notes §J.6b)
        vma = mm.find_vma_intersection(addr, addr + 1)
        if vma is None:
            result = KVM_PFN_ERR_FAULT
        elif vma.flags & (VM_IO | VM_PFNMAP):
            r = hva_to_pfn_remapped(kvm, vma, addr, async_, write_fault, None, pfn)
            if r == -EAGAIN:
                continue
            result = KVM_PFN_ERR_FAULT if r < 0 else pfn.get()  # type: ignore[assignment]
        else:
            if async_ and vma_is_valid(vma, write_fault):
                async_.set(True)
            result = KVM_PFN_ERR_FAULT
        break
    mm.mmap_sem.up_read(task)
    return result


def _got_page(kvm: Kvm, page: object, p_page: OutParam) -> int:
    """``got_page: if (p_page) *p_page = page; return page_to_pfn(page);``"""
    if p_page:
        p_page.set(page)
    return page_to_pfn(kvm, page)


@hookimpl
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    return paolo_request(kvm, request)


def paolo_request(
    kvm: Kvm, request: HvaToPfnRequest, *, fast: FastFn | None = None
) -> HvaToPfnResult:
    """Run the sketch for a request; ``page`` is ``*p_page`` when the caller
    passed one (NULL → None; never written → ``UNINIT``), else None."""
    writable = OutParam("writable", False) if request.writable else OutParam.null("writable")
    async_ = OutParam("async", False) if request.async_ else OutParam.null("async")
    p_page = OutParam("p_page") if request.page_out else OutParam.null("p_page")
    pfn = paolo_hva_to_pfn(
        kvm,
        request.hva,
        request.atomic,
        async_,
        request.write_fault,
        writable,
        p_page,
        fast=fast or __hva_to_page_fast,
    )
    # a garbage pfn (page_to_pfn(NULL) on ppc64) has error bits set: every
    # caller tests is_error_noslot_pfn and takes it for a fault
    page: object = None
    if p_page:
        got = p_page.get()
        page = None if got is NULL else got
    return package_result(kvm, request, pfn, async_, writable, page)
