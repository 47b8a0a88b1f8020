"""The v4.15 / v4.16 body of ``kvmppc_book3s_hv_page_fault`` after
``mmu_seq`` (kernel-notes §B.5 steps 6-12).

The handler's own ``get_user_pages_fast`` + VM_PFNMAP block is answered by
the strategy's ``hva_to_pfn`` (the request carries ``psize``, which the
block's ``hva + psize <= vm_end`` test needs):

- ``page`` set: gup's page (``pages[0]``, put at ``out_put``);
- ``page`` None: the VM_PFNMAP branch's ``pfn`` (0: nothing found →
  -EFAULT), ``prot`` its ``vm_page_prot`` (``is_ci = pte_ci(prot)``) and
  ``writable`` its ``write_ok = vm_flags & VM_WRITE``;
- status ``retry``: re-enter the guest; any other non-ok status has no pfn
  to use and ends in -EFAULT as ``!pfn`` does.

Read from: Linux 4.15.1 release tarball (mirror Kent-Hu/linux-4.15.1) and
Linux 4.16.13 stable (mirror lizuobin/linux-4.16.13_tiny4412),
arch/powerpc/kvm/book3s_64_mmu_hv.c (identical there; kernel-notes
§B.5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_hpt.handler import RESUME_GUEST, FaultCtx, _ret, finish
from kvmsim_plugins.ppc_hpt.hpt import read_update_linux_pte
from kvmsim_plugins.ppc_hpt.hpte import hpte_is_writable

from kvmsim.cmodel import EFAULT
from kvmsim.hooktypes import OK, RETRY, FaultResult, HvaToPfnRequest
from kvmsim.host.constants import PTE_NONCACHED, PTE_WRITE

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm


def resolve_v4_15(kvm: Kvm, vcpu: int, ctx: FaultCtx, writing: bool) -> FaultResult:
    """B.5 steps 6-12 for v4.15 and v4.16."""
    tr = kvm.tracer
    phys = kvm.phys
    ps = kvm.page_shift
    is_ci = False
    pte_size = 1 << ps
    write_ok = writing  # a store got here only if the HPTE allows stores
    req = HvaToPfnRequest(
        vcpu=vcpu,
        slot=ctx.memslot,
        gfn=ctx.gfn,
        gpa=ctx.gpa,
        hva=ctx.hva,
        write_fault=writing,
        psize=ctx.psize,
    )
    res = kvm.hva_to_pfn(req)
    kvm.fire_point("after_hva_to_pfn")
    if res.status == RETRY:
        if tr.enabled:
            tr.emit("resume_guest", why="hva_to_pfn asked for a retry", ret=res.ret)
        return _ret(RESUME_GUEST, "retry after -EAGAIN")
    page = res.page
    if page is None:
        pfn = res.pfn if res.status == OK else 0
        if not pfn:
            if tr.enabled:
                tr.emit("hpt_fault_efault", why="no page and no VM_PFNMAP pfn", status=res.status)
            return _ret(-EFAULT, "no page and no VM_PFNMAP pfn")
        pte_size = ctx.psize
        is_ci = bool((res.prot or 0) & PTE_NONCACHED)
        write_ok = res.writable
        dirty_page = None
    else:
        pfn = page
        head = page
        if phys.PageHuge(page):
            head = phys.compound_head(page)
            pte_size <<= phys.compound_order(head)
        if not writing and hpte_is_writable(ctx.r):
            # may the guest have write access?  Only if the host PTE is writable
            hpte = read_update_linux_pte(kvm, ctx.hva, True)
            if hpte & PTE_WRITE:
                write_ok = True
        dirty_page = head
    if tr.enabled:
        tr.emit(
            "hpt_resolved",
            pfn=hex(pfn),
            page=None if page is None else hex(page),
            pte_size=pte_size,
            is_ci=is_ci,
            write_ok=write_ok,
        )
    return finish(
        kvm,
        ctx,
        hpa=pfn << ps,
        pte_size=pte_size,
        is_ci=is_ci,
        write_ok=write_ok,
        dirty_page=dirty_page,
        put=page,
        set_dirty_lock=False,
    )
