"""The HPT fault path: the real-mode prefilter ``kvmppc_hpte_hv_fault``
(book3s_hv_rm_mmu.c; dispatch in book3s_hv_rmhandlers.S, kernel-notes
§L.6), then ``kvmppc_book3s_hv_page_fault`` (book3s_64_mmu_hv.c, kernel-notes §B.5) of the
version the selected strategy names:

- ``v4.15`` (also ``v4.16``: the handler is identical): ``get_user_pages_fast``
  then the inline VM_PFNMAP block, answered by the strategy's
  ``hva_to_pfn`` (:mod:`.handler_v4_15`).
- ``v5.7`` (cd758a9b57ee, kernel-notes §C.2): ``__get_user_pages_fast(write)``, else
  ``__gfn_to_pfn_memslot``, then the host PTE (:mod:`.handler_v5_7`).
- ``v6.13`` (0865ba14b4ee, E): ``__kvm_faultin_pfn`` and v5.7's tail,
  releasing exactly the page the strategy hands back (:mod:`.handler_v6_13`).

This module holds what both share: the prefilter, the prologue up to
``mmu_seq``, and the tail from the page-size check to ``out_put``; the
install under the HPTE and rmap locks is ``create_pte`` (:func:`install`).

Read from: Linux 4.16.13 stable (mirror lizuobin/linux-4.16.13_tiny4412),
arch/powerpc/kvm/book3s_hv_rm_mmu.c and book3s_64_mmu_hv.c for the
real-mode prefilter and the prologue the versions share
(kernel-notes §B.5, §L.6); each version's body names its own source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_hpt.hpt import HptState, Install, PgFault
from kvmsim_plugins.ppc_hpt.hpte import (
    DSISR_ISSTORE,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    HPTE_R_C,
    HPTE_R_G,
    HPTE_R_I,
    HPTE_R_KEY,
    HPTE_R_KEY_HI,
    HPTE_R_M,
    HPTE_R_N,
    HPTE_R_PP,
    HPTE_R_PP0,
    HPTE_R_R,
    HPTE_R_RPN,
    HPTE_R_W,
    HPTE_V_ABSENT,
    HPTE_V_HVLOCK,
    HPTE_V_VALID,
    KVMPPC_RMAP_RC_SHIFT,
    SLB_VSID_KS,
    SRR1_ISI_N_OR_G,
    SRR1_ISI_NOPT,
    SRR1_ISI_PROT,
    actual_pgsz,
    hpte_cache_flags_ok,
    hpte_is_writable,
    hpte_make_readonly,
    hpte_read_permission,
    hpte_write_permission,
    wimg_name,
)
from kvmsim_plugins.ppc_hpt.mmio_cache import MmioCache, MmioCacheEntry

from kvmsim.cmodel import EAGAIN, EFAULT
from kvmsim.hooktypes import EFAULT as A_EFAULT
from kvmsim.hooktypes import GUEST_FAULT, MMIO, RESUME, FaultResult
from kvmsim.kvm.memslot import KVM_MEMSLOT_INVALID

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Fault
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot

RESUME_GUEST = 0
EINVAL = 22


def _ret(ret: int, detail: str = "") -> FaultResult:
    if ret == RESUME_GUEST:
        return FaultResult(action=RESUME, ret=ret, detail=detail)
    return FaultResult(action=A_EFAULT, ret=ret, detail=detail or f"handler returned {ret}")


# ------------------------------------------------------------------ real mode


def hpte_hv_fault(kvm: Kvm, vcpu: int, addr: int, slb_v: int, status: int, data: bool) -> int:
    """``kvmppc_hpte_hv_fault``: 0 retries the access, -1 goes to the
    virtual-mode handler (-2 too, after loading the instruction word, for
    emulated MMIO), anything else is a DSISR (SRR1) image for a DSI (ISI)
    delivered to the guest.  A no-HPTE fault first looks in the vcpu's
    emulated-MMIO cache (:mod:`.mmio_cache`), whose hit replaces the search
    and the HPTE read; the storage-key check needs a non-zero AMR, and the
    modelled guest keeps AMR at 0."""
    st: HptState = kvm.arch
    tr = kvm.tracer
    task = kvm.mm.current
    valid = HPTE_V_VALID
    cache = st.mmio_cache.get(vcpu)
    entry: MmioCacheEntry | None = None
    mmio_update = 0
    if status & DSISR_NOHPTE:
        valid |= HPTE_V_ABSENT
        mmio_update = st.mmio_update
        if cache is not None:
            entry = cache.search(addr, slb_v, mmio_update)
    if entry is not None:
        index, v, r, gr = entry.pte_index, entry.hpte_v, entry.hpte_r, entry.rpte
        if tr.enabled:
            tr.emit("mmio_cache_hit", ea=hex(addr), index=hex(index), mmio_update=mmio_update)
    else:
        index = st.find_lock_hpte(addr, slb_v, valid, task)
        if index < 0:
            return status if status & DSISR_NOHPTE else 0
        v = st.v[index] & ~HPTE_V_HVLOCK
        r = st.r.get(index, 0)
        gr = st.guest_rpte.get(index, 0)
        st.unlock_hpte(index, v)
    if status & DSISR_NOHPTE and v & HPTE_V_VALID:
        return 0  # made valid since the hardware looked: retry
    pp = gr & (HPTE_R_PP0 | HPTE_R_PP)
    key = slb_v & SLB_VSID_KS  # MSR_PR = 0
    status &= ~DSISR_NOHPTE
    if not data:
        if gr & (HPTE_R_N | HPTE_R_G):
            return status | SRR1_ISI_N_OR_G
        if not hpte_read_permission(pp, key):
            return status | SRR1_ISI_PROT
    elif status & DSISR_ISSTORE:
        if not hpte_write_permission(pp, key):
            return status | DSISR_PROTFAULT
    elif not hpte_read_permission(pp, key):
        return status | DSISR_PROTFAULT
    st.pgfault[vcpu] = PgFault(addr, index, v, r, entry)
    if (r & HPTE_R_KEY) == HPTE_R_KEY:
        if entry is None:
            if cache is None:
                cache = st.mmio_cache[vcpu] = MmioCache()
            cache.fill(MmioCacheEntry(addr, slb_v, index, v, r, gr, mmio_update))
        if data:
            return -2  # emulated MMIO with MSR_IR on: load the instruction word too
    return -1


def page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    """``kvmppc_hdsi`` / ``kvmppc_hisi`` (kernel-notes §L.6) then, on -1/-2, the exit to
    the host and ``kvmppc_book3s_hv_page_fault``."""
    st: HptState = kvm.arch
    tr = kvm.tracer
    data = fault.kind != "hisi"
    status = fault.code
    ea = fault.ea
    if data and not status & (DSISR_NOHPTE | DSISR_PROTFAULT):
        st.dsi_queued += 1
        return FaultResult(action=GUEST_FAULT, ret=status, detail="DSI (not an HPT fault)")
    if not data and not status & SRR1_ISI_NOPT:
        st.dsi_queued += 1
        return FaultResult(action=GUEST_FAULT, ret=status, detail="ISI (no search)")
    slb_v = st.slb_v(ea)
    r3 = hpte_hv_fault(kvm, vcpu, ea, slb_v, status, data)
    if tr.enabled:
        tr.emit("kvmppc_hpte_hv_fault", ea=hex(ea), status=hex(status), ret=r3)
    if r3 == 0:
        return FaultResult(action=RESUME, ret=0, detail="real mode: retry the access")
    if r3 not in (-1, -2):
        st.dsi_queued += 1
        what = "DSI" if data else "ISI"
        return FaultResult(
            action=GUEST_FAULT, ret=r3, detail=f"{what} delivered to the guest, image {r3:#x}"
        )
    # H_DATA_STORAGE → RESUME_PAGE_FAULT; H_INST_STORAGE passes dsisr 0
    return hv_page_fault(kvm, vcpu, ea, status if data else 0)


# --------------------------------------------------------------- virtual mode


def hv_page_fault(kvm: Kvm, vcpu: int, ea: int, dsisr: int) -> FaultResult:
    """``kvmppc_book3s_hv_page_fault`` up to ``mmu_seq``, then the version's body."""
    st: HptState = kvm.arch
    tr = kvm.tracer
    ps = kvm.page_shift
    pf = st.pgfault.get(vcpu)
    if pf is None or ea != pf.addr:
        return _ret(RESUME_GUEST, "ea is not the one real mode saw")
    if pf.cache is not None and pf.cache.mmio_update == st.mmio_update:
        # a current emulated-MMIO entry: no HPTE lock, no memslot lookup
        r = pf.cache.rpte
        psize = actual_pgsz(pf.v, r)
        gpa = (r & HPTE_R_RPN & ~(psize - 1)) | (ea & (psize - 1))
        if tr.enabled:
            tr.emit("kvmppc_hv_emulate_mmio", gpa=hex(gpa), store=bool(dsisr & DSISR_ISSTORE))
        return FaultResult(action=MMIO, ret=RESUME_GUEST, detail="KVM_EXIT_MMIO (MMIO cache)")
    index = pf.index
    st.lock_hpte(index, kvm.mm.current)
    hpte0 = st.v[index] & ~HPTE_V_HVLOCK
    hpte1 = st.r.get(index, 0)
    hpte2 = r = st.guest_rpte.get(index, 0)
    st.unlock_hpte(index, hpte0)
    if hpte0 != pf.v or hpte1 != pf.r:
        return _ret(RESUME_GUEST, "HPTE changed since real mode")
    psize = actual_pgsz(hpte0, r)
    gpa_base = r & HPTE_R_RPN & ~(psize - 1)
    gfn_base = gpa_base >> ps
    gpa = gpa_base | (ea & (psize - 1))
    gfn = gpa >> ps
    memslot = kvm.memslots.gfn_to_memslot(gfn)
    if tr.enabled:
        tr.emit(
            "kvm_page_fault_enter",
            handler=st.version,
            index=hex(index),
            ea=hex(ea),
            gpa=hex(gpa),
            psize=psize,
            store=bool(dsisr & DSISR_ISSTORE),
            wimg=wimg_name(r),
        )
    if memslot is None or memslot.flags & KVM_MEMSLOT_INVALID:
        if tr.enabled:
            tr.emit("kvmppc_hv_emulate_mmio", gpa=hex(gpa), store=bool(dsisr & DSISR_ISSTORE))
        return FaultResult(action=MMIO, ret=RESUME_GUEST, detail="KVM_EXIT_MMIO")
    if gfn_base < memslot.base_gfn:
        return _ret(-EFAULT, "large page starts below its memslot")
    mmu_seq = kvm.mmu_notifier_seq
    writing = bool(dsisr & DSISR_ISSTORE)
    hva = memslot.userspace_addr + ((gfn - memslot.base_gfn) << ps)
    ctx = FaultCtx(index, hpte0, hpte1, hpte2, r, psize, gpa, gfn, gfn_base, hva, memslot, mmu_seq)
    if st.version == "v6.13":
        from kvmsim_plugins.ppc_hpt.handler_v6_13 import resolve_v6_13 as resolve
    elif st.version == "v5.7":
        from kvmsim_plugins.ppc_hpt.handler_v5_7 import resolve_v5_7 as resolve
    else:
        from kvmsim_plugins.ppc_hpt.handler_v4_15 import resolve_v4_15 as resolve
    return resolve(kvm, vcpu, ctx, writing)


class FaultCtx:
    """The virtual-mode handler's locals that both versions share."""

    __slots__ = (
        "gfn",
        "gfn_base",
        "gpa",
        "hpte0",
        "hpte1",
        "hpte2",
        "hva",
        "index",
        "memslot",
        "mmu_seq",
        "psize",
        "r",
    )

    def __init__(
        self,
        index: int,
        hpte0: int,
        hpte1: int,
        hpte2: int,
        r: int,
        psize: int,
        gpa: int,
        gfn: int,
        gfn_base: int,
        hva: int,
        memslot: Memslot,
        mmu_seq: int,
    ) -> None:
        self.index = index
        self.hpte0 = hpte0
        self.hpte1 = hpte1
        self.hpte2 = hpte2
        self.r = r
        self.psize = psize
        self.gpa = gpa
        self.gfn = gfn
        self.gfn_base = gfn_base
        self.hva = hva
        self.memslot = memslot
        self.mmu_seq = mmu_seq


def finish(
    kvm: Kvm,
    ctx: FaultCtx,
    *,
    hpa: int,
    pte_size: int,
    is_ci: bool,
    write_ok: bool,
    dirty_page: int | None,
    put: int | None,
    set_dirty_lock: bool,
) -> FaultResult:
    """From ``if (psize > pte_size)`` to ``out_put``: the page-size check,
    the WIMG check, the new second dword, the install (``create_pte``),
    marking the page dirty, and the put.

    :param hpa: the host address ORed into the entry (v4.15 passes
        ``pfn << PAGE_SHIFT`` and it is masked to ``psize`` here; v5.7 passes
        its ``hpa``, already aligned).
    :param dirty_page: the page SetPageDirty / set_page_dirty_lock gets.
    :param put: the page ``out_put`` releases.
    """
    tr = kvm.tracer
    phys = kvm.phys
    ps = kvm.page_shift
    psize = ctx.psize
    r = ctx.r
    ret = -EFAULT
    detail = ""
    if psize > pte_size:
        detail = f"HPTE page {psize:#x} larger than the host mapping {pte_size:#x}"
        if tr.enabled:
            tr.emit("hpt_fault_efault", why="psize > pte_size", psize=psize, pte_size=pte_size)
    elif not hpte_cache_flags_ok(r, is_ci) and is_ci:
        detail = "cacheable HPTE over a cache-inhibited host mapping"
        if tr.enabled:
            tr.emit("hpt_fault_efault", why="WIMG vs cache-inhibited host page", wimg=wimg_name(r))
    else:
        if not hpte_cache_flags_ok(r, is_ci):
            # the guest may map it uncacheable; make it cacheable
            r = (r & ~(HPTE_R_W | HPTE_R_I | HPTE_R_G)) | HPTE_R_M
        if psize < (1 << ps):
            psize = 1 << ps
        r = (r & HPTE_R_KEY_HI) | (r & ~(HPTE_R_PP0 - psize)) | (hpa & ~(psize - 1))
        if hpte_is_writable(r) and not write_ok:
            r = hpte_make_readonly(r)
        if tr.enabled:
            tr.emit(
                "hpte_r",
                hpa=hex(hpa & ~(psize - 1)),
                psize=psize,
                writable=hpte_is_writable(r),
                wimg=wimg_name(r),
            )
        st: HptState = kvm.arch
        st.pending = Install(ctx.index, ctx.hpte0, ctx.hpte1, ctx.hpte2, ctx.gfn_base)
        kvm.fire_point("before_create_pte")
        level = 0 if ctx.psize <= (1 << ps) else 1
        rc = kvm.hooks.create_pte(
            kvm=kvm, gpa=ctx.gpa & ~(ctx.psize - 1), pte=r, level=level, mmu_seq=ctx.mmu_seq
        )
        ret = RESUME_GUEST
        if rc == 0 and dirty_page is not None and hpte_is_writable(r):
            if set_dirty_lock:
                phys.set_page_dirty_lock(dirty_page)
            else:
                phys.SetPageDirty(dirty_page)
        detail = "installed" if rc == 0 else "not installed; the guest retries"
    if put is not None:
        phys.put_page(put)
    return _ret(ret, detail)


# ------------------------------------------------------------------ install


def install(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    """``create_pte`` for HPT: the locked tail of ``kvmppc_book3s_hv_page_fault``.

    ``pte`` is the new second doubleword; the entry (its index and the
    snapshot the handler took) is the one the handler named in
    ``kvm.arch.pending``.  Under the HPTE lock: bail out if the HPT is not
    ready or the entry changed; under the rmap lock of the page's base gfn:
    bail out on ``mmu_notifier_retry``; then merge R/C, invalidate the old
    valid entry or link the rmap chain, and write the entry valid.  Returns
    0, or -EAGAIN when it bailed out (the kernel then still returns
    RESUME_GUEST, but skips SetPageDirty)."""
    st: HptState = kvm.arch
    tr = kvm.tracer
    p = st.pending
    st.pending = None
    if p is None:
        return -EINVAL
    task = kvm.mm.current
    index = p.index
    r = pte
    st.lock_hpte(index, task)
    hnow_v = st.v[index]
    hnow_r = st.r.get(index, 0)
    why = ""
    if not st.mmu_ready:
        why = "HPT not ready"
    elif (
        (hnow_v & ~HPTE_V_HVLOCK) != p.hpte0
        or hnow_r != p.hpte1
        or st.guest_rpte.get(index, 0) != p.hpte2
    ):
        why = "HPTE changed under us"
    if why:
        st.unlock_hpte(index, st.v[index])
        if tr.enabled:
            tr.emit("hpt_install", index=hex(index), ret="-EAGAIN", why=why)
        return -EAGAIN
    hpte0 = (p.hpte0 & ~HPTE_V_ABSENT) | HPTE_V_VALID
    gfn = p.gfn_base
    st.lock_rmap(gfn, task)
    if kvm.mmu_notifier_retry(mmu_seq):
        st.unlock_rmap(gfn)
        st.unlock_hpte(index, st.v[index])
        if tr.enabled:
            tr.emit(
                "hpt_install",
                index=hex(index),
                ret="-EAGAIN",
                why="mmu_notifier_retry",
                mmu_seq=mmu_seq,
                mmu_notifier_seq=kvm.mmu_notifier_seq,
                mmu_notifier_count=kvm.mmu_notifier_count,
            )
        return -EAGAIN
    # only set R/C in the real entry if set in both the rmap and guest_rpte
    rcbits = st.rmap.get(gfn, 0) >> KVMPPC_RMAP_RC_SHIFT
    r &= rcbits | ~(HPTE_R_R | HPTE_R_C)
    if st.v[index] & HPTE_V_VALID:
        st.unlock_rmap(gfn)
        st.v[index] |= HPTE_V_ABSENT
        st.invalidate_hpte(kvm, index)
        r |= st.r.get(index, 0) & (HPTE_R_R | HPTE_R_C)
    else:
        st.add_revmap_chain(index, gfn)
    st.r[index] = r
    st.seqs[index] = mmu_seq
    st.unlock_hpte(index, hpte0)
    kvm.stage2_changed(gfn << kvm.page_shift)
    if tr.enabled:
        tr.emit(
            "hpt_install",
            index=hex(index),
            gpa=hex(gpa),
            hpa=hex(r & HPTE_R_RPN & ~(actual_pgsz(hpte0, r) - 1)),
            writable=hpte_is_writable(r),
            noncached=bool(r & HPTE_R_I),
            ret=0,
            mmu_seq=mmu_seq,
        )
    return 0
