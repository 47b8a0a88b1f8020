"""The v6.13 body of ``kvmppc_book3s_hv_page_fault`` after ``mmu_seq``
(0865ba14b4ee "KVM: PPC: Use __kvm_faultin_pfn() to handle page faults on
Book3s HV", in the v6.13 "Stop grabbing references to PFNMAP'd pages"
series; kernel-notes §E).

The patch replaces v5.7's own lookup (gup-fast for a writable page, else
``__gfn_to_pfn_memslot`` and ``page = pfn_valid && !PageReserved ? ... :
NULL``) by one call, ``__kvm_faultin_pfn(memslot, gfn, writing ?
FOLL_WRITE : 0, &write_ok, &page)``: the generic code now tries gup-fast
itself whenever a write is wanted or allowed (E step 3), and hands back the
page it holds a reference on (``refcounted_page``; NULL for a remapped pfn,
the zero page included when gup gave it).  An error or noslot pfn is
-EFAULT.  The rest of the handler is v5.7's, unchanged by the patch: the
host PTE gives size, address and cache attribute, and the same lines that
dirtied and put the derived page now dirty and put ``page`` (E step 9), so
the handler releases exactly ``HvaToPfnResult.page`` and never derives a
page from the pfn.

Read from: Linux 6.13.7 (GitHub ChenRuiwei/linux-6.13.7, Makefile
6.13.7, the kvm files as imported in its initial commit)
arch/powerpc/kvm/book3s_64_mmu_hv.c ``kvmppc_book3s_hv_page_fault``
(``__kvm_faultin_pfn``, ``find_kvm_host_pte(kvm, mmu_seq, hva, &shift)``
under ``mmu_lock``, non-present → ``put_page``, ``RESUME_GUEST``; the
size and WIMG checks, the HPTE install, ``set_page_dirty_lock`` and
``put_page``) read alike the model; first built from commit 0865ba14b4ee
of the v6.13 "Stop grabbing references to PFNMAP'd pages" series (v13,
kvm list 2024-10-10) on the v6.12 handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_hpt.handler import FaultCtx, _ret
from kvmsim_plugins.ppc_hpt.handler_v5_7 import host_pte_tail

from kvmsim.cmodel import EFAULT
from kvmsim.hooktypes import FaultResult
from kvmsim.kvm.pfn import is_error_noslot_pfn, pfn_name

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm


def resolve_v6_13(kvm: Kvm, vcpu: int, ctx: FaultCtx, writing: bool) -> FaultResult:
    """``__kvm_faultin_pfn`` then v5.7's tail (``host_pte_tail``)."""
    tr = kvm.tracer
    # __kvm_faultin_pfn: __gfn_to_pfn_memslot's hva checks, then kvm_follow_pfn
    # with map_writable = &write_ok and refcounted_page = &page
    res = kvm.gfn_to_pfn_memslot(
        ctx.memslot,
        ctx.gfn,
        vcpu=vcpu,
        atomic=False,
        async_=False,
        write_fault=writing,
        writable=True,
    )
    if tr.enabled:
        tr.emit(
            "__kvm_faultin_pfn",
            pfn=pfn_name(res.pfn),
            status=res.status,
            writable=res.writable,
            refcounted_page=None if res.page is None else hex(res.page),
        )
    if is_error_noslot_pfn(res.pfn):
        kvm.fire_point("after_hva_to_pfn")
        return _ret(-EFAULT, f"__kvm_faultin_pfn: {pfn_name(res.pfn)}")
    page: int | None = res.page
    return host_pte_tail(kvm, ctx, page, res.writable, kvm_host_pte=True)
