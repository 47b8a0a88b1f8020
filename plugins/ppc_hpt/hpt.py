"""The hashed page table: its geometry and hash, the HPTE search the
hardware and KVM both do, the reverse map, and the MMU-notifier teardown
(arch/powerpc/kvm/book3s_hv_rm_mmu.c, book3s_64_mmu_hv.c, v4.16).

Storage is sparse: dicts keyed by HPTE index (``index = PTEG * 8 + slot``)
for the two doublewords and KVM's ``revmap_entry`` (``guest_rpte``, ``forw``,
``back``), and a dict keyed by gfn for the rmap words.  Memslots never
overlap in gfn space, so one dict stands for every ``memslot->arch.rmap``.

The guest's SLB is modelled simply (documented in the package docstring):
every 256M segment maps ea to va one to one, with VSID ``GUEST_VSID_BASE +
ESID``, supervisor key 0 (a Linux kernel segment: Kp set, Ks clear), and a
base page size the segment gets from the first H_ENTER into it (64K unless
that entry is a 16M page).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_hpt.hpte import (
    DSISR_ISSTORE,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    HPTE_R_C,
    HPTE_R_G,
    HPTE_R_I,
    HPTE_R_KEY,
    HPTE_R_N,
    HPTE_R_PP,
    HPTE_R_PP0,
    HPTE_R_R,
    HPTE_R_RPN,
    HPTE_V_ABSENT,
    HPTE_V_AVPN,
    HPTE_V_HVLOCK,
    HPTE_V_LARGE,
    HPTE_V_SECONDARY,
    HPTE_V_VALID,
    KVM_DEFAULT_HPT_ORDER,
    KVMPPC_RMAP_INDEX,
    KVMPPC_RMAP_PRESENT,
    KVMPPC_RMAP_RC_SHIFT,
    KVMPPC_RMAP_REFERENCED,
    PAGE_SIZES,
    SID_SHIFT,
    SLB_BASE_PAGE_SHIFT,
    SLB_VSID_B,
    SLB_VSID_KP,
    SLB_VSID_KS,
    SLB_VSID_L,
    SLB_VSID_LP,
    SLB_VSID_SHIFT,
    SRR1_ISI_N_OR_G,
    SRR1_ISI_NOPT,
    actual_pgsz,
    hpte_base_page_shift,
    hpte_is_writable,
    hpte_read_permission,
    hpte_rpn,
    hpte_write_permission,
    slb_pgsize_encoding,
)
from kvmsim_plugins.ppc_hpt.mmio_cache import MmioCache, MmioCacheEntry

from kvmsim.hooktypes import Stage2Fault, Stage2Mapping, Translation
from kvmsim.host.constants import PTE_DIRTY, PTE_PRESENT, PTE_WRITE, PTE_YOUNG
from kvmsim.host.rwsem import Deadlock
from kvmsim.kvm.dirty import mark_page_dirty

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm

GUEST_VSID_BASE = 0x12340
"""The modelled guest's VSID for ESID 0; ESID ``n`` gets ``GUEST_VSID_BASE + n``."""

SEGMENT_MASK = (1 << SID_SHIFT) - 1


class PgFault:
    """What real mode saved for the virtual-mode handler
    (``vcpu->arch.pgfault_addr/index/hpte[]``)."""

    __slots__ = ("addr", "cache", "index", "r", "v")

    def __init__(
        self, addr: int, index: int, v: int, r: int, cache: MmioCacheEntry | None = None
    ) -> None:
        self.addr = addr
        self.index = index
        self.v = v
        self.r = r
        self.cache = cache  # vcpu->arch.pgfault_cache


class Install:
    """The virtual-mode handler's snapshot of the HPTE it is about to fill,
    handed to ``create_pte`` (``index``, ``hpte[0..2]``, the rmap's gfn)."""

    __slots__ = ("gfn_base", "hpte0", "hpte1", "hpte2", "index")

    def __init__(self, index: int, hpte0: int, hpte1: int, hpte2: int, gfn_base: int) -> None:
        self.index = index
        self.hpte0 = hpte0
        self.hpte1 = hpte1
        self.hpte2 = hpte2
        self.gfn_base = gfn_base


class HptState:
    """``kvm->arch.hpt`` and the rmap arrays of every memslot, plus the
    modelled guest's SLB and the vcpus' saved real-mode fault."""

    __slots__ = (
        "back",
        "bolted",
        "by_gpa",
        "dsi_queued",
        "entered",
        "forw",
        "guest_rpte",
        "hpte_locks",
        "mask",
        "mmio_cache",
        "mmio_update",
        "mmu_ready",
        "npte",
        "order",
        "page_shift",
        "pending",
        "pgfault",
        "r",
        "rmap",
        "rmap_locks",
        "seg_shift",
        "seqs",
        "v",
        "version",
    )

    def __init__(self, page_shift: int, version: str, order: int = KVM_DEFAULT_HPT_ORDER) -> None:
        self.page_shift = page_shift
        self.version = version
        self.order = order
        self.npte = 1 << (order - 4)  # kvmppc_hpt_npte: HPTEs are 16 bytes
        self.mask = (1 << (order - 7)) - 1  # kvmppc_hpt_mask: 128-byte PTEGs
        self.v: dict[int, int] = {}
        self.r: dict[int, int] = {}
        self.guest_rpte: dict[int, int] = {}
        self.forw: dict[int, int] = {}
        self.back: dict[int, int] = {}
        self.rmap: dict[int, int] = {}
        self.seqs: dict[int, int] = {}  # index → mmu_seq of the code that made it valid
        # guest real address an H_ENTER gave → the indices entered there (for
        # the checkers' range lookups; an index's current entry is re-read)
        self.by_gpa: dict[int, set[int]] = {}
        self.hpte_locks: dict[int, str] = {}
        self.rmap_locks: dict[int, str] = {}
        self.seg_shift: dict[int, int] = {}  # ESID → base page shift (guest SLB model)
        self.entered: dict[int, int] = {}  # ea page → HPTE index (the guest's slot record)
        # linear-mapping pages (ea == gpa) the guest has bolted so far; the
        # rest of the RAM memslots was bolted absent at boot (see __init__)
        self.bolted: set[int] = set()
        self.pgfault: dict[int, PgFault] = {}
        self.pending: Install | None = None
        self.mmu_ready = True  # HPT resizing is not modelled
        self.mmio_update = 0
        self.mmio_cache: dict[int, MmioCache] = {}  # vcpu → its emulated-MMIO HPTE cache
        self.dsi_queued = 0

    # ------------------------------------------------------------ guest SLB
    def segment_shift(self, ea: int) -> int:
        return self.seg_shift.get(ea >> SID_SHIFT, 16)

    def slb_v(self, ea: int) -> int:
        """The SLB VSID doubleword the modelled guest has for ``ea``'s segment."""
        esid = ea >> SID_SHIFT
        vsid = GUEST_VSID_BASE + esid
        return (
            (vsid << SLB_VSID_SHIFT)
            | SLB_VSID_KP
            | slb_pgsize_encoding(1 << self.segment_shift(ea))
        )

    # ------------------------------------------------------------- locking
    def lock_hpte(self, index: int, task: str) -> None:
        """``try_lock_hpte`` spun until it succeeds: a held lock can never be
        released in a run-to-completion model."""
        holder = self.hpte_locks.get(index)
        if holder is not None:
            raise Deadlock(f"HPTE {index:#x} HVLOCK", task, {holder: "spin"})
        self.hpte_locks[index] = task
        self.v[index] = self.v.get(index, 0) | HPTE_V_HVLOCK

    def unlock_hpte(self, index: int, v: int) -> None:
        """``unlock_hpte`` / ``__unlock_hpte``: store ``v`` without the lock bit."""
        self.hpte_locks.pop(index, None)
        v &= ~HPTE_V_HVLOCK
        if v or self.r.get(index):
            self.v[index] = v
        else:
            self.v.pop(index, None)

    def lock_rmap(self, gfn: int, task: str) -> None:
        """``lock_rmap``."""
        holder = self.rmap_locks.get(gfn)
        if holder is not None:
            raise Deadlock(f"rmap lock of gfn {gfn:#x}", task, {holder: "spin"})
        self.rmap_locks[gfn] = task

    def unlock_rmap(self, gfn: int) -> None:
        """``unlock_rmap``."""
        self.rmap_locks.pop(gfn, None)

    # ------------------------------------------------------------- search
    def search(self, eaddr: int, slb_v: int, valid: int) -> int:
        """The HPTE search of ``kvmppc_hv_find_lock_hpte`` (and of the
        hardware, with ``valid = HPTE_V_VALID``): primary PTEG, then
        secondary; returns the index or -1.  Does not lock."""
        mask = SLB_VSID_B | HPTE_V_AVPN | HPTE_V_SECONDARY
        val = 0
        pshift = 12
        if slb_v & SLB_VSID_L:
            mask |= HPTE_V_LARGE
            val |= HPTE_V_LARGE
            pshift = SLB_BASE_PAGE_SHIFT[(slb_v & SLB_VSID_LP) >> 4]
        somask = SEGMENT_MASK  # 256M segments only (no 1T segments in the model)
        vsid = (slb_v & ~SLB_VSID_B) >> SLB_VSID_SHIFT
        hash_ = (vsid ^ ((eaddr & somask) >> pshift)) & self.mask
        avpn = slb_v & ~(somask >> 16)
        avpn |= (eaddr & somask) >> 16
        if pshift >= 24:
            avpn &= ~((1 << (pshift - 16)) - 1)
        else:
            avpn &= ~0x7F
        val |= avpn
        hv = self.v
        hr = self.r
        while True:
            base = hash_ << 3
            for i in range(base, base + 8):
                v = hv.get(i, 0) & ~HPTE_V_HVLOCK
                if not v & valid or (v & mask) != val:
                    continue
                if hpte_base_page_shift(v, hr.get(i, 0)) == pshift:
                    return i
            if val & HPTE_V_SECONDARY:
                return -1
            val |= HPTE_V_SECONDARY
            hash_ ^= self.mask

    def find_lock_hpte(self, eaddr: int, slb_v: int, valid: int, task: str) -> int:
        """``kvmppc_hv_find_lock_hpte``: the search, returning with the entry locked."""
        index = self.search(eaddr, slb_v, valid)
        if index >= 0:
            self.lock_hpte(index, task)
        return index

    # ------------------------------------------------------------ reverse map
    def add_revmap_chain(self, index: int, gfn: int) -> None:
        """``kvmppc_add_revmap_chain``: link ``index`` into the chain of
        ``gfn`` (whose rmap lock is held) and unlock the rmap."""
        rm = self.rmap.get(gfn, 0)
        if rm & KVMPPC_RMAP_PRESENT:
            head = rm & KVMPPC_RMAP_INDEX
            tail = self.back[head]
            self.forw[index] = head
            self.back[index] = tail
            self.forw[tail] = index
            self.back[head] = index
        else:
            self.forw[index] = self.back[index] = index
            self.rmap[gfn] = (rm & ~KVMPPC_RMAP_INDEX) | index | KVMPPC_RMAP_PRESENT
        self.unlock_rmap(gfn)

    def remove_revmap_chain(self, kvm: Kvm, index: int, hpte_v: int, hpte_r: int) -> None:
        """``remove_revmap_chain`` (H_REMOVE): unlink ``index`` and harvest R/C."""
        rcbits = hpte_r & (HPTE_R_R | HPTE_R_C)
        ptel = self.guest_rpte[index] = self.guest_rpte.get(index, 0) | rcbits
        gfn = hpte_rpn(ptel, actual_pgsz(hpte_v, ptel), self.page_shift)
        if kvm.memslots.gfn_to_memslot(gfn) is None:
            return
        self.lock_rmap(gfn, kvm.mm.current)
        rm = self.rmap.get(gfn, 0)
        head = rm & KVMPPC_RMAP_INDEX
        nxt, prv = self.forw[index], self.back[index]
        self.back[nxt] = prv
        self.forw[prv] = nxt
        if head == index:
            head = nxt
            if head == index:
                rm &= ~(KVMPPC_RMAP_PRESENT | KVMPPC_RMAP_INDEX)
            else:
                rm = (rm & ~KVMPPC_RMAP_INDEX) | head
        rm |= rcbits << KVMPPC_RMAP_RC_SHIFT
        self.rmap[gfn] = rm
        if rcbits & HPTE_R_C:
            # kvmppc_update_dirty_map(memslot, gfn, kvmppc_actual_pgsz(v, r))
            psize = actual_pgsz(hpte_v, hpte_r)
            mark_page_dirty(kvm, gfn, (psize + (1 << self.page_shift) - 1) >> self.page_shift)
        self.unlock_rmap(gfn)

    def invalidate_hpte(self, kvm: Kvm, index: int) -> None:
        """``kvmppc_invalidate_hpte``: clear V, then tlbie (the model has no TLB)."""
        self.v[index] = self.v.get(index, 0) & ~HPTE_V_VALID

    def unmap_hpte(self, kvm: Kvm, index: int, gfn: int) -> None:
        """``kvmppc_unmap_hpte``, both locks held: unlink, and if the entry is
        valid and maps ``gfn``, make it absent and harvest R/C into the rmap."""
        rm = self.rmap.get(gfn, 0)
        j = self.forw[index]
        if j == index:
            rm &= ~(KVMPPC_RMAP_PRESENT | KVMPPC_RMAP_INDEX)
        else:
            h = self.back[index]
            self.forw[h] = j
            self.back[j] = h
            self.forw[index] = self.back[index] = index
            rm = (rm & ~KVMPPC_RMAP_INDEX) | j
        ptel = self.guest_rpte.get(index, 0)
        v = self.v.get(index, 0)
        psize = actual_pgsz(v, ptel)
        if v & HPTE_V_VALID and hpte_rpn(ptel, psize, self.page_shift) == gfn:
            self.v[index] = v | HPTE_V_ABSENT
            self.invalidate_hpte(kvm, index)
            r = self.r[index] = self.r.get(index, 0) & ~HPTE_R_KEY
            rcbits = r & (HPTE_R_R | HPTE_R_C)
            rm |= rcbits << KVMPPC_RMAP_RC_SHIFT
            if rcbits & HPTE_R_C:
                # kvmppc_update_dirty_map(memslot, gfn, psize), if logging
                mark_page_dirty(kvm, gfn, (psize + (1 << self.page_shift) - 1) >> self.page_shift)
            if rcbits & ~ptel:
                self.guest_rpte[index] = ptel | rcbits
            tr = kvm.tracer
            if tr.enabled:
                tr.emit(
                    "kvmppc_unmap_hpte",
                    index=hex(index),
                    gfn=hex(gfn),
                    psize=psize,
                    hpa=hex(r & HPTE_R_RPN & ~(psize - 1)),
                )
        self.rmap[gfn] = rm

    def unmap_rmapp(self, kvm: Kvm, gfn: int) -> None:
        """``kvm_unmap_rmapp``: make every HPTE in ``gfn``'s chain absent."""
        task = kvm.mm.current
        while True:
            self.lock_rmap(gfn, task)
            rm = self.rmap.get(gfn, 0)
            if not rm & KVMPPC_RMAP_PRESENT:
                self.unlock_rmap(gfn)
                break
            i = rm & KVMPPC_RMAP_INDEX
            # try_lock_hpte: the kernel drops the rmap lock and spins; no
            # one can release an HPTE lock here, so spinning never ends
            self.lock_hpte(i, task)
            self.unmap_hpte(kvm, i, gfn)
            self.unlock_rmap(gfn)
            self.unlock_hpte(i, self.v.get(i, 0))

    def unmap_hva_range(self, kvm: Kvm, start: int, end: int) -> None:
        """``kvm_unmap_hva_range_hv`` → ``kvm_handle_hva_range`` with
        ``kvm_unmap_rmapp`` for every gfn of every overlapping memslot (gfns
        with no rmap word are skipped: their chains are empty)."""
        rmap = self.rmap
        for _slot, lo, hi in kvm.memslots.hva_to_gfns(start, end):
            if hi - lo <= len(rmap):
                gfns = [g for g in range(lo, hi) if rmap.get(g, 0) & KVMPPC_RMAP_PRESENT]
            else:
                gfns = sorted(
                    g for g, w in rmap.items() if lo <= g < hi and w & KVMPPC_RMAP_PRESENT
                )
            for gfn in gfns:
                self.unmap_rmapp(kvm, gfn)

    def test_clear_dirty_npages(self, kvm: Kvm, gfn: int) -> int:
        """``kvm_test_clear_dirty_npages`` (v4.15+: e641a317830b moved the
        dirty bits of unmapped HPTEs to the slot's bitmap, so the rmap's
        changed bit is not read here): for every HPTE of ``gfn``'s chain
        that has C, or is writable (no vcpu runs between scenario steps, so
        a delayed C writeback must be flushed): lock it, skip it if not
        valid, make it absent, ``tlbie``, clear C (remembered in
        ``guest_rpte``), make it valid again.  Returns the base pages
        dirtied (the largest HPTE's size in base pages), 0 if none."""
        task = kvm.mm.current
        ps = self.page_shift
        self.lock_rmap(gfn, task)
        rm = self.rmap.get(gfn, 0)
        npages = 0
        if rm & KVMPPC_RMAP_PRESENT:
            i = head = rm & KVMPPC_RMAP_INDEX
            while True:
                j = self.forw[i]
                r = self.r.get(i, 0)
                if r & HPTE_R_C or hpte_is_writable(r):
                    self.lock_hpte(i, task)
                    v = self.v[i]
                    if v & HPTE_V_VALID:
                        self.v[i] = v | HPTE_V_ABSENT
                        self.invalidate_hpte(kvm, i)
                        r = self.r[i]
                        if r & HPTE_R_C:
                            self.r[i] = r & ~HPTE_R_C
                            self.guest_rpte[i] = self.guest_rpte.get(i, 0) | HPTE_R_C
                            n = (actual_pgsz(v, r) + (1 << ps) - 1) >> ps
                            npages = max(npages, n)
                        v = (v & ~HPTE_V_ABSENT) | HPTE_V_VALID
                    self.unlock_hpte(i, v)
                i = j
                if i == head:
                    break
        self.unlock_rmap(gfn)
        return npages

    def age_rmapp(self, kvm: Kvm, gfn: int) -> bool:
        """``kvm_age_rmapp``: young if the rmap remembers a reference
        (``KVMPPC_RMAP_REFERENCED``, harvested when an HPTE of the gfn was
        removed or made absent), which is cleared; then every HPTE of the
        chain whose R is set is locked and, if still valid and referenced,
        loses R (``kvmppc_clear_ref_hpte``: the byte holding R rewritten,
        then a tlbie; the model keeps no TLB), the guest's view keeping it
        (``guest_rpte``)."""
        task = kvm.mm.current
        self.lock_rmap(gfn, task)
        rm = self.rmap.get(gfn, 0)
        young = False
        if rm & KVMPPC_RMAP_REFERENCED:
            self.rmap[gfn] = rm = rm & ~KVMPPC_RMAP_REFERENCED
            young = True
        if rm & KVMPPC_RMAP_PRESENT:
            i = head = rm & KVMPPC_RMAP_INDEX
            while True:
                j = self.forw[i]
                if self.r.get(i, 0) & HPTE_R_R:
                    self.lock_hpte(i, task)
                    if self.v[i] & HPTE_V_VALID and self.r[i] & HPTE_R_R:
                        self.r[i] &= ~HPTE_R_R
                        self.guest_rpte[i] = self.guest_rpte.get(i, 0) | HPTE_R_R
                        young = True
                        if kvm.tracer.enabled:
                            kvm.tracer.emit("kvmppc_clear_ref_hpte", index=hex(i), gfn=hex(gfn))
                    self.unlock_hpte(i, self.v[i])
                i = j
                if i == head:
                    break
        self.unlock_rmap(gfn)
        return young

    def test_age_rmapp(self, kvm: Kvm, gfn: int) -> bool:
        """``kvm_test_age_rmapp``: young if the rmap remembers a reference
        (checked once unlocked, again under the rmap lock) or any HPTE of
        the chain has R, valid or not; nothing changes."""
        if self.rmap.get(gfn, 0) & KVMPPC_RMAP_REFERENCED:
            return True
        self.lock_rmap(gfn, kvm.mm.current)
        try:
            rm = self.rmap.get(gfn, 0)
            if rm & KVMPPC_RMAP_REFERENCED:
                return True
            if rm & KVMPPC_RMAP_PRESENT:
                i = head = rm & KVMPPC_RMAP_INDEX
                while True:
                    if self.r.get(i, 0) & HPTE_R_R:
                        return True
                    i = self.forw[i]
                    if i == head:
                        break
            return False
        finally:
            self.unlock_rmap(gfn)

    def age_gfn_range(self, kvm: Kvm, start: int, end: int, test: bool) -> bool:
        """``kvm_age_hva_hv`` → ``kvm_handle_hva_range`` with ``kvm_age_rmapp``
        on every gfn of the range (v4.15, v5.7; v6.13: ``kvm_age_gfn_hv``,
        the same loop), or ``kvm_test_age_rmapp`` on the one gfn
        ``kvm_test_age_hva_hv`` / ``kvm_test_age_gfn_hv`` look at.  Only
        gfns with an rmap word can answer; the others are skipped.

        Read from: Linux 4.15.1 and 4.16.13 arch/powerpc/kvm/book3s_64_mmu_hv.c
        and book3s_hv_rm_mmu.c (``kvmppc_clear_ref_hpte``); the 2021 "Fix
        conversion to gfn-based MMU notifier callbacks" patch for the v5.13+
        ``kvm_age_gfn_hv`` / ``kvm_test_age_gfn_hv`` (kernel-notes §L.8)."""
        age = self.test_age_rmapp if test else self.age_rmapp
        young = False
        for gfn in sorted(g for g in self.rmap if start <= g < end):
            young |= age(kvm, gfn)
            if young and test:
                break
        return young

    # ------------------------------------------------------------ hardware
    def translate(self, kvm: Kvm, gpa: int, ea: int, op: str) -> Translation:
        """The POWER9 HPT walk for a guest access with LPCR[VPM1] set (every
        storage interrupt goes to the hypervisor): hash ``ea`` through the
        guest SLB, search the primary then the secondary PTEG for a valid
        matching entry, check PP with key 0 (guest supervisor state), set R
        (and C for a store) in the entry.  A miss is an HDSI with
        DSISR_NOHPTE (HISI with SRR1_ISI_NOPT for a fetch); a PP refusal an
        HDSI with DSISR_PROTFAULT; a fetch from an N or G page an HISI with
        SRR1_ISI_N_OR_G."""
        slb_v = self.slb_v(ea)
        index = self.search(ea, slb_v, HPTE_V_VALID)
        store = op == "write"
        fetch = op == "exec"
        if index < 0:
            code = SRR1_ISI_NOPT if fetch else DSISR_NOHPTE
        else:
            r = self.r.get(index, 0)
            pp = r & (HPTE_R_PP0 | HPTE_R_PP)
            key = slb_v & SLB_VSID_KS  # MSR_PR = 0: the guest kernel's key
            if fetch and r & (HPTE_R_N | HPTE_R_G):
                code = SRR1_ISI_N_OR_G
            elif store and not hpte_write_permission(pp, key):
                code = DSISR_PROTFAULT
            elif not hpte_read_permission(pp, key):
                code = DSISR_PROTFAULT
            else:
                self.r[index] = r | HPTE_R_R | (HPTE_R_C if store else 0)
                psize = actual_pgsz(self.v[index], r)
                hpa = (r & HPTE_R_RPN & ~(psize - 1)) | (ea & (psize - 1))
                return Translation(
                    pfn=hpa >> self.page_shift,
                    page_size=psize,
                    writable=hpte_is_writable(r),
                    noncached=bool(r & HPTE_R_I),
                )
        if store:
            code |= DSISR_ISSTORE
        kind = "hisi" if fetch else "hdsi"
        fgpa = gpa
        if index >= 0:
            # the guest real address the entry says (what the handler will use)
            gr = self.guest_rpte.get(index, 0)
            psize = actual_pgsz(self.v[index], gr)
            fgpa = (gr & HPTE_R_RPN & ~(psize - 1)) | (ea & (psize - 1))
        return Translation(fault=Stage2Fault(gpa=fgpa, ea=ea, op=op, code=code, kind=kind))

    # ------------------------------------------------------------ checkers
    def mappings(self) -> list[Stage2Mapping]:
        """One :class:`Stage2Mapping` per valid HPTE: the guest real address
        the guest asked for, the host frame KVM put in, PP and WIMG as they
        stand."""
        out = [m for m in map(self._mapping, self.v) if m is not None]
        out.sort(key=lambda m: m.gpa)
        return out

    def mappings_in(self, start: int, end: int) -> list[Stage2Mapping]:
        """The valid HPTEs whose guest page overlaps ``[start, end)``."""
        by_gpa = self.by_gpa
        bases: set[int] = set()
        for psize in PAGE_SIZES:
            lo = start & ~(psize - 1)
            if (end - lo) // psize > len(by_gpa):
                bases.update(b for b in by_gpa if lo <= b < end)
            else:
                bases.update(b for b in range(lo, end, psize) if b in by_gpa)
        out = []
        for base in sorted(bases):
            for index in sorted(by_gpa[base]):
                m = self._mapping(index)
                if m is not None and m.gpa < end and start < m.gpa + m.size:
                    out.append(m)
        return out

    def _mapping(self, index: int) -> Stage2Mapping | None:
        v = self.v.get(index, 0)
        if not v & HPTE_V_VALID:
            return None
        r = self.r.get(index, 0)
        gr = self.guest_rpte.get(index, 0)
        psize = actual_pgsz(v, gr)
        ps = self.page_shift
        # a 4K entry is judged as the base page that holds it: the checkers'
        # unit is the host page (the 4K piece is the guest's choice in gpa)
        return Stage2Mapping(
            gpa=hpte_rpn(gr, psize, ps) << ps,
            size=max(psize, 1 << ps),
            pfn=hpte_rpn(r, psize, ps),
            writable=hpte_is_writable(r),
            noncached=bool(r & HPTE_R_I),
            mmu_seq=self.seqs.get(index, -1),
        )


def read_update_linux_pte(kvm: Kvm, hva: int, writing: bool) -> int:
    """``kvmppc_read_update_linux_pte`` on the host PTE mapping ``hva`` (the
    caller found one): if present, set young, and dirty when ``writing`` and
    the PTE is writable; returns the new PTE, or 0 when not present."""
    pgt = kvm.mm.pgtable
    pte, shift = pgt.find_linux_pte(hva)
    if pte is None or not pte & PTE_PRESENT:
        return 0
    new = pte | PTE_YOUNG
    if writing and pte & PTE_WRITE:
        new |= PTE_DIRTY
    if new != pte:
        if shift:
            pgt.set_huge(hva, shift, new)
        else:
            pgt.set_pte(hva, new)
    return new


def hpt_hash(vsid: int, ea: int, pshift: int, mask: int) -> int:
    """The primary hash of a 256M segment (Power ISA): VSID xor the page
    index within the segment, masked to the PTEG count."""
    return (vsid ^ ((ea & SEGMENT_MASK) >> pshift)) & mask


def guest_hpte_v(ea: int, vsid: int, pshift: int) -> int:
    """The first doubleword a Linux guest builds (``hpte_encode_v``): the
    AVPN (va >> 23, with the bits a large page covers cleared), L for
    non-4K pages, V."""
    va = (vsid << SID_SHIFT) | (ea & SEGMENT_MASK)
    avpnm = (1 << (pshift - 23)) - 1 if pshift > 23 else 0
    v = ((va >> 23) & ~avpnm) << 7
    if pshift > 12:
        v |= HPTE_V_LARGE
    return v | HPTE_V_VALID


__all__ = [
    "GUEST_VSID_BASE",
    "HptState",
    "Install",
    "PgFault",
    "guest_hpte_v",
    "hpt_hash",
    "read_update_linux_pte",
]
