"""The H_ENTER and H_REMOVE hypercalls as KVM HV serves them
(``kvmppc_do_h_enter``, ``kvmppc_do_h_remove`` in
arch/powerpc/kvm/book3s_hv_rm_mmu.c, v4.16; kernel-notes §B.5), and the
guest side that issues them the way a Linux guest does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_hpt.hpt import (
    GUEST_VSID_BASE,
    HptState,
    guest_hpte_v,
    hpt_hash,
    read_update_linux_pte,
)
from kvmsim_plugins.ppc_hpt.hpte import (
    H_ANDCOND,
    H_AVPN,
    H_EXACT,
    H_NOT_FOUND,
    H_PARAMETER,
    H_PTEG_FULL,
    H_SUCCESS,
    HCALL_NAMES,
    HPTE_GR_RESERVED,
    HPTE_R_C,
    HPTE_R_G,
    HPTE_R_I,
    HPTE_R_KEY,
    HPTE_R_KEY_HI,
    HPTE_R_KEY_LO,
    HPTE_R_M,
    HPTE_R_N,
    HPTE_R_PP0,
    HPTE_R_R,
    HPTE_R_RPN,
    HPTE_R_W,
    HPTE_V_ABSENT,
    HPTE_V_HVLOCK,
    HPTE_V_SECONDARY,
    HPTE_V_VALID,
    KVMPPC_RMAP_RC_SHIFT,
    PP_RWXX,
    PP_RXXX,
    SID_SHIFT,
    actual_pgsz,
    hpte_cache_flags_ok,
    hpte_is_writable,
    hpte_make_readonly,
    is_mmio_hpte,
    pgsize_lp_encoding,
    wimg_name,
)

from kvmsim.host.constants import PTE_NONCACHED, PTE_PFN_SHIFT, PTE_PRESENT, PTE_PROTNONE, PTE_WRITE
from kvmsim.kvm.memslot import KVM_MEMSLOT_INVALID

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm


def slot_is_aligned(base_gfn: int, npages: int, pagesize: int, page_shift: int) -> bool:
    """``slot_is_aligned``: a large page must fit the memslot entirely."""
    mask = (pagesize >> page_shift) - 1
    if pagesize <= (1 << page_shift):
        return True
    return not base_gfn & mask and not npages & mask


def do_h_enter(
    kvm: Kvm, flags: int, pte_index: int, pteh: int, ptel: int, *, at_boot: bool = False
) -> tuple[int, int]:
    """``kvmppc_do_h_enter``: returns ``(H_*, pte_index used)``.

    With a present host PTE the entry goes in valid, pointing at the host
    page (read-only if the host PTE is; ``H_PARAMETER`` if the host page is
    smaller than the guest page or is cache-inhibited under a cacheable
    HPTE; a cache-inhibited HPTE over RAM is silently made cacheable).  With
    no host PTE it goes in absent, so the first access faults; with no
    memslot, absent with storage key 31 (emulated MMIO).

    :param at_boot: the call is one the guest made at boot (bolting its
        linear mapping), when the host had no PTE for the page yet; the model
        performs it when the guest first touches the page (see the package
        docstring), so the host page table of *now* must not be consulted.
    """
    st: HptState = kvm.arch
    ps = kvm.page_shift
    tr = kvm.tracer
    task = kvm.mm.current
    psize = actual_pgsz(pteh, ptel)
    if not psize:
        return H_PARAMETER, -1
    writing = hpte_is_writable(ptel)
    pteh &= ~(HPTE_V_HVLOCK | HPTE_V_ABSENT | HPTE_V_VALID)
    ptel &= ~HPTE_GR_RESERVED
    g_ptel = ptel
    mmu_seq = kvm.mmu_notifier_seq
    gpa = (ptel & HPTE_R_RPN) & ~(psize - 1)
    gfn = gpa >> ps
    memslot = kvm.memslots.gfn_to_memslot(gfn)
    pa = 0
    is_ci = False
    rmap_gfn: int | None = None
    if memslot is None or memslot.flags & KVM_MEMSLOT_INVALID:
        # emulated MMIO: absent, with storage key 31
        pteh |= HPTE_V_ABSENT
        ptel |= HPTE_R_KEY_HI | HPTE_R_KEY_LO
    else:
        if not slot_is_aligned(memslot.base_gfn, memslot.npages, psize, ps):
            return H_PARAMETER, -1
        rmap_gfn = gfn
        hva = memslot.userspace_addr + ((gfn - memslot.base_gfn) << ps)
        if at_boot:
            pte, hpage_shift = None, 0  # nothing mapped there when it was issued
        else:
            pte, hpage_shift = kvm.mm.pgtable.find_linux_pte(hva)
        found = pte is not None  # ptep != NULL
        if found:
            host_pte_size = 1 << hpage_shift if hpage_shift else 1 << ps
            if host_pte_size < psize:
                if tr.enabled:
                    tr.emit(
                        "kvmppc_do_h_enter",
                        ret="H_PARAMETER",
                        why="host page smaller than the HPTE's page",
                        host_pte_size=host_pte_size,
                        psize=psize,
                    )
                return H_PARAMETER, -1
            hpte = read_update_linux_pte(kvm, hva, writing)
            if hpte & PTE_PRESENT and not hpte & PTE_PROTNONE:
                if writing and not hpte & PTE_WRITE:
                    ptel = hpte_make_readonly(ptel)  # the host page is read-only
                is_ci = bool(hpte & PTE_NONCACHED)
                pa = (hpte >> PTE_PFN_SHIFT) << ps
                pa |= hva & (host_pte_size - 1)
                pa |= gpa & ((1 << ps) - 1)
        ptel &= HPTE_R_KEY | HPTE_R_PP0 | (psize - 1)
        ptel |= pa
        if pa:
            pteh |= HPTE_V_VALID
        else:
            pteh |= HPTE_V_ABSENT
            ptel &= ~(HPTE_R_KEY_HI | HPTE_R_KEY_LO)
        if found and not hpte_cache_flags_ok(ptel, is_ci):
            if is_ci:
                if tr.enabled:
                    tr.emit(
                        "kvmppc_do_h_enter",
                        ret="H_PARAMETER",
                        why="cacheable HPTE over a cache-inhibited host mapping",
                        wimg=wimg_name(ptel),
                    )
                return H_PARAMETER, -1
            # the guest may map (emulated) memory uncacheable: make it cacheable
            ptel = (ptel & ~(HPTE_R_W | HPTE_R_I | HPTE_R_G)) | HPTE_R_M
    # do_insert: find and lock a free slot of the PTEG
    if pte_index >= st.npte:
        return H_PARAMETER, -1
    if not flags & H_EXACT:
        pte_index &= ~7
        for i in range(8):
            if not st.v.get(pte_index + i, 0) & (HPTE_V_HVLOCK | HPTE_V_VALID | HPTE_V_ABSENT):
                break
        else:
            # the kernel retries each slot under its lock; with no
            # concurrent H_REMOVE the answer is the same
            return H_PTEG_FULL, -1
        pte_index += i
    elif st.v.get(pte_index, 0) & (HPTE_V_VALID | HPTE_V_ABSENT):
        return H_PTEG_FULL, -1
    st.lock_hpte(pte_index, task)
    st.guest_rpte[pte_index] = g_ptel
    st.by_gpa.setdefault(gpa, set()).add(pte_index)
    if pteh & HPTE_V_VALID:
        assert rmap_gfn is not None
        st.lock_rmap(rmap_gfn, task)
        if kvm.mmu_notifier_retry(mmu_seq):
            # an invalidation is in progress: write a non-present entry
            pteh |= HPTE_V_ABSENT
            pteh &= ~HPTE_V_VALID
            ptel &= ~(HPTE_R_KEY_HI | HPTE_R_KEY_LO)
            st.unlock_rmap(rmap_gfn)
        else:
            st.add_revmap_chain(pte_index, rmap_gfn)
            # only set R/C in the real entry if already set in the rmap
            rcbits = st.rmap.get(rmap_gfn, 0) >> KVMPPC_RMAP_RC_SHIFT
            ptel &= rcbits | ~(HPTE_R_R | HPTE_R_C)
            st.seqs[pte_index] = mmu_seq
    st.r[pte_index] = ptel
    st.unlock_hpte(pte_index, pteh)
    kvm.stage2_changed(gpa)
    if tr.enabled:
        tr.emit(
            "kvmppc_do_h_enter",
            ret="H_SUCCESS",
            index=hex(pte_index),
            gpa=hex(gpa),
            psize=psize,
            state="valid" if pteh & HPTE_V_VALID else "absent",
            hpa=hex(pa) if pa else None,
            wimg=wimg_name(ptel),
            writable=hpte_is_writable(ptel),
            mmio=rmap_gfn is None,
            mmu_seq=mmu_seq,
        )
    return H_SUCCESS, pte_index


def do_h_remove(kvm: Kvm, flags: int, pte_index: int, avpn: int) -> tuple[int, int, int]:
    """``kvmppc_do_h_remove``: returns ``(H_*, old v, guest's r)``."""
    st: HptState = kvm.arch
    if pte_index >= st.npte:
        return H_PARAMETER, 0, 0
    st.lock_hpte(pte_index, kvm.mm.current)
    pte = st.v.get(pte_index, 0)
    pte_r = st.r.get(pte_index, 0)
    if (
        not pte & (HPTE_V_ABSENT | HPTE_V_VALID)
        or (flags & H_AVPN and (pte & ~0x7F) != avpn)
        or (flags & H_ANDCOND and pte & avpn)
    ):
        st.unlock_hpte(pte_index, pte)
        return H_NOT_FOUND, 0, 0
    v = pte & ~HPTE_V_HVLOCK
    if v & HPTE_V_VALID:
        st.v[pte_index] = st.v[pte_index] & ~HPTE_V_VALID
        # tlbie; R and C are re-read after it, then the chain is updated
        st.remove_revmap_chain(kvm, pte_index, v, st.r.get(pte_index, 0))
    r = st.guest_rpte.get(pte_index, 0) & ~HPTE_GR_RESERVED
    st.r.pop(pte_index, None)
    st.seqs.pop(pte_index, None)
    st.unlock_hpte(pte_index, 0)
    if is_mmio_hpte(v, pte_r):
        st.mmio_update += 1
    if v & HPTE_V_ABSENT:
        v = (v & ~HPTE_V_ABSENT) | HPTE_V_VALID
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvmppc_do_h_remove", index=hex(pte_index), ret="H_SUCCESS")
    return H_SUCCESS, v, r


# ------------------------------------------------------------------ guest side


def guest_ptel(gpa: int, pshift: int, base_shift: int, wimg: int, writable: bool, exe: bool) -> int:
    """The second doubleword a Linux guest builds (``hpte_encode_r`` plus
    ``htab_convert_pte_flags``): the real address, the LP encoding, WIMG,
    PP (supervisor read/write or read-only, no user access), N."""
    lp = pgsize_lp_encoding(base_shift, pshift)
    r = (gpa & HPTE_R_RPN & ~((1 << pshift) - 1)) | (lp << 12 if pshift > 12 else 0)
    r |= wimg
    r |= PP_RWXX if writable else PP_RXXX
    if not exe:
        r |= HPTE_R_N
    return r


def guest_h_enter(
    kvm: Kvm,
    ea: int,
    gpa: int,
    pshift: int,
    wimg: int,
    writable: bool,
    exe: bool,
    *,
    at_boot: bool = False,
) -> tuple[int, int]:
    """What a Linux guest's ``hash_page`` (or, at boot, ``htab_bolt_mapping``)
    does to insert a translation: hash the ea through its SLB, H_ENTER into
    the primary PTEG, and on H_PTEG_FULL into the secondary one.  Records
    the slot for H_REMOVE.  ``at_boot``: see :func:`do_h_enter`.
    Returns ``(H_*, index)``."""
    st: HptState = kvm.arch
    esid = ea >> SID_SHIFT
    st.seg_shift.setdefault(esid, pshift)
    base = st.seg_shift[esid]
    vsid = GUEST_VSID_BASE + esid
    v = guest_hpte_v(ea, vsid, pshift)
    r = guest_ptel(gpa, pshift, base, wimg, writable, exe)
    h = hpt_hash(vsid, ea, base, st.mask)
    ret, index = do_h_enter(kvm, 0, h << 3, v, r, at_boot=at_boot)
    if ret == H_PTEG_FULL:
        ret, index = do_h_enter(
            kvm, 0, (h ^ st.mask) << 3, v | HPTE_V_SECONDARY, r, at_boot=at_boot
        )
    if ret == H_SUCCESS:
        st.entered[ea >> pshift << pshift] = index
    return ret, index


def guest_h_remove(kvm: Kvm, ea: int) -> int:
    """The guest removes the translation it entered for ``ea``'s page:
    H_REMOVE with H_AVPN at the slot it recorded."""
    st: HptState = kvm.arch
    for pshift in (12, 16, 24):
        index = st.entered.get(ea >> pshift << pshift)
        if index is None:
            continue
        v = st.v.get(index, 0)
        ret, _v, _r = do_h_remove(kvm, H_AVPN, index, v & ~0x7F)
        if ret == H_SUCCESS:
            del st.entered[ea >> pshift << pshift]
        return ret
    return H_NOT_FOUND


def hcall_name(ret: int) -> str:
    return HCALL_NAMES.get(ret, str(ret))


__all__ = [
    "do_h_enter",
    "do_h_remove",
    "guest_h_enter",
    "guest_h_remove",
    "guest_ptel",
    "hcall_name",
    "slot_is_aligned",
]
