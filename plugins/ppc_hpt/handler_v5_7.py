"""The v5.7 body of ``kvmppc_book3s_hv_page_fault`` after ``mmu_seq``
(cd758a9b57ee, "Use __gfn_to_pfn_memslot in HPT page fault handler";
kernel-notes §C.2): gup-fast for a writable page, else the generic
``__gfn_to_pfn_memslot`` (the strategy's ``hva_to_pfn``), then the host PTE
for the size, address and cache attribute.

As released: ``page = pfn_valid && !PageReserved ? pfn : NULL`` (so a
zero-page reference taken by the slow gup is never dropped, kernel-notes
§L.1), and the host PTE read with ``__find_linux_pte`` under
``local_irq_disable`` (no ``mmu_lock``, no sequence check), a missing or
non-present one putting the page and resuming the guest: ae49dedaa92b
("Handle non-present PTEs in page fault functions", the fix of
cd758a9b57ee's regression, kvm-ppc-fixes-5.7-1, merged before v5.7).

Read from: Linux 5.7.14 stable (GitHub a5221985/linux-5.7.14, Makefile
5.7.14) arch/powerpc/kvm/book3s_64_mmu_hv.c ``kvmppc_book3s_hv_page_fault``;
commit cd758a9b57ee (v5.7) and the ae49dedaa92b mail and its
kvm-ppc-fixes-5.7-1 pull (2020-04-21) for what v5.7.0 carried
(kernel-notes §C.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_hpt.handler import RESUME_GUEST, FaultCtx, _ret, finish

from kvmsim.cmodel import EFAULT
from kvmsim.hooktypes import FaultResult
from kvmsim.host import gup
from kvmsim.host.constants import PTE_NONCACHED, PTE_PFN_SHIFT, PTE_PRESENT
from kvmsim.kvm.pfn import is_error_noslot_pfn, pfn_name

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm


def resolve_v5_7(kvm: Kvm, vcpu: int, ctx: FaultCtx, writing: bool) -> FaultResult:
    """C.2 second bullet."""
    tr = kvm.tracer
    phys = kvm.phys
    hva = ctx.hva
    write_ok = writing
    pages: list[int] = []
    page: int | None
    if gup.__get_user_pages_fast(kvm.mm, hva, 1, 1, pages) == 1:
        page = pages[0]
        write_ok = True
        if tr.enabled:
            tr.emit("__get_user_pages_fast", hva=hex(hva), ret=1, pfn=hex(page))
    else:
        res = kvm.gfn_to_pfn_memslot(
            ctx.memslot,
            ctx.gfn,
            vcpu=vcpu,
            atomic=False,
            async_=False,
            write_fault=writing,
            writable=True,
        )
        pfn = res.pfn
        write_ok = res.writable
        if tr.enabled:
            tr.emit(
                "__gfn_to_pfn_memslot", pfn=pfn_name(pfn), status=res.status, writable=res.writable
            )
        if is_error_noslot_pfn(pfn):
            kvm.fire_point("after_hva_to_pfn")
            return _ret(-EFAULT, f"__gfn_to_pfn_memslot: {pfn_name(pfn)}")
        page = pfn if phys.pfn_valid(pfn) and not phys.PageReserved(pfn) else None
    return host_pte_tail(kvm, ctx, page, write_ok)


def host_pte_tail(
    kvm: Kvm, ctx: FaultCtx, page: int | None, write_ok: bool, *, kvm_host_pte: bool = False
) -> FaultResult:
    """What v5.7 and v6.13 share after the lookup: the host PTE gives the
    size, the address and ``is_ci``; then :func:`finish`, which dirties
    (``set_page_dirty_lock``) and puts ``page`` — the only reference dropped.

    v5.7 (``kvm_host_pte`` false): ``__find_linux_pte`` without ``mmu_lock``;
    a missing or non-present entry → put the page, ``RESUME_GUEST``
    (ae49dedaa92b, in v5.7 as released).  v6.13 (``kvm_host_pte`` true): under ``mmu_lock``,
    ``find_kvm_host_pte(kvm, mmu_seq, hva, &shift)``, which finds nothing
    when an invalidation ran or runs since ``mmu_seq``; a missing or
    non-present entry → put the page, ``RESUME_GUEST``."""
    tr = kvm.tracer
    ps = kvm.page_shift
    hva = ctx.hva
    phys = kvm.phys
    kvm.fire_point("after_hva_to_pfn")
    # the host PTE gives the mapping size and the cache attribute
    if kvm_host_pte:
        pte, shift = find_kvm_host_pte(kvm, ctx.mmu_seq, hva)
    else:
        pte, shift = kvm.mm.pgtable.find_linux_pte(hva)
    if pte is None or not pte & PTE_PRESENT:
        if page is not None:
            phys.put_page(page)
        if tr.enabled:
            tr.emit("resume_guest", why="host PTE missing or not present")
        return _ret(RESUME_GUEST, "host PTE gone: retry")
    hpa = (pte >> PTE_PFN_SHIFT) << ps
    pte_size = 1 << shift if shift else 1 << ps
    is_ci = bool(pte & PTE_NONCACHED)
    if pte_size > ctx.psize:
        hpa |= hva & (pte_size - ctx.psize)
    if tr.enabled:
        tr.emit(
            "hpt_resolved",
            hpa=hex(hpa),
            page=None if page is None else hex(page),
            pte_size=pte_size,
            is_ci=is_ci,
            write_ok=write_ok,
        )
    return finish(
        kvm,
        ctx,
        hpa=hpa,
        pte_size=pte_size,
        is_ci=is_ci,
        write_ok=write_ok,
        dirty_page=page,
        put=page,
        set_dirty_lock=True,
    )


def find_kvm_host_pte(kvm: Kvm, mmu_seq: int, hva: int) -> tuple[int | None, int]:
    """``find_kvm_host_pte`` (asm/kvm_book3s_64.h, v5.10+) read under
    ``mmu_lock`` as the v6.13 handler reads it: no entry when
    ``mmu_invalidate_retry(kvm, mmu_seq)`` holds, else ``__find_linux_pte``
    on the VM's mm; the entry's value is copied before the unlock."""
    task = kvm.mm.current
    kvm.mmu_lock.lock(task)
    try:
        if kvm.mmu_notifier_retry(mmu_seq):
            if kvm.tracer.enabled:
                kvm.tracer.emit("find_kvm_host_pte", hva=hex(hva), retry=True)
            return None, 0
        return kvm.mm.pgtable.find_linux_pte(hva)
    finally:
        kvm.mmu_lock.unlock(task)
