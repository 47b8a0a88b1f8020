"""Intel EPT as KVM builds it on x86-64 with TDP (arch/x86/kvm/mmu.c, vmx.c,
arch/x86/include/asm/vmx.h; v4.16): the table geometry, the SPTE bits, the
hardware walk (``translate``) and the SPTE operations the fault handler,
the MMU notifier and dirty logging use.

Geometry: 4-level tables for a 48-bit guest physical space.  The PML4
indexes bits 39..47, the PDPT bits 30..38, the PD bits 21..29, the PT bits
12..20.  Leaves sit in the PDPT (1G), the PD (2M, the PS bit set) or the PT
(4K).  KVM numbers the levels 1 (PT) to 4 (PML4); the ``create_pte`` hook
numbers leaves 0 (4K), 1 (2M), 2 (1G).

Tables are dicts (an absent key is a zero entry); a slot holds an ``int``
(an SPTE: a leaf, a write-protected leaf or an MMIO SPTE) or a ``dict``
(a present non-leaf entry, RWX as KVM always makes them: ACC_ALL).  A walk
is at most four lookups and nothing is allocated per page.

SPTE bits (the v4.16 EPT configuration of ``vmx_enable_tdp``; execute-only
EPT assumed, so ``shadow_present_mask`` is 0 and ACC_USER means R):

=========  ====================================================
bit 0..2   R, W, X
bit 3..5   memory type (0 UC, 6 WB)
bit 6      ignore PAT (IPAT)
bit 7      large page (PT_PAGE_SIZE_MASK)
bit 8, 9   accessed, dirty (EPT A/D enabled: ``enable_ept_ad_bits``)
bit 10     SPTE_HOST_WRITEABLE (software: the host allows writes)
bit 11     SPTE_MMU_WRITEABLE (software: KVM may make it writable)
bit 12..   the pfn
=========  ====================================================

An MMIO SPTE (``set_mmio_spte``, memslot-less gfn) is W|X without R
(``VMX_EPT_MISCONFIG_WX_VALUE``) with the gfn in the pfn field: the
hardware reports an EPT misconfiguration for it, never a hit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import Stage2Fault, Stage2Mapping, Translation
from kvmsim.kvm.pfn import kvm_is_reserved_pfn

if TYPE_CHECKING:
    from kvmsim_plugins.x86_ept.apf import ApfVcpu

    from kvmsim.host.physmem import PhysMem
    from kvmsim.kvm.core import Kvm

EPT_R: Final = 0x1
EPT_W: Final = 0x2
EPT_X: Final = 0x4
EPT_RWX: Final = 0x7
EPT_MT_SHIFT: Final = 3
EPT_MT_MASK: Final = 0x7 << EPT_MT_SHIFT
MTRR_TYPE_UNCACHABLE: Final = 0
MTRR_TYPE_WRBACK: Final = 6
EPT_IPAT: Final = 1 << 6
EPT_LARGE: Final = 1 << 7
EPT_A: Final = 1 << 8
EPT_D: Final = 1 << 9
SPTE_HOST_WRITEABLE: Final = 1 << 10
SPTE_MMU_WRITEABLE: Final = 1 << 11
SPTE_PFN_SHIFT: Final = 12
SPTE_FLAGS_MASK: Final = (1 << SPTE_PFN_SHIFT) - 1
MMIO_SPTE_VALUE: Final = EPT_W | EPT_X  # VMX_EPT_MISCONFIG_WX_VALUE

GPA_BITS: Final = 48
PT_PAGE_TABLE_LEVEL: Final = 1
PT_DIRECTORY_LEVEL: Final = 2
PT_PDPE_LEVEL: Final = 3
PT64_ROOT_LEVEL: Final = 4
PT_MAX_HUGEPAGE_LEVEL: Final = PT_PDPE_LEVEL

# Exit qualification of an EPT violation (vmx.h EPT_VIOLATION_*).
EPT_VIOLATION_ACC_READ: Final = 1 << 0
EPT_VIOLATION_ACC_WRITE: Final = 1 << 1
EPT_VIOLATION_ACC_INSTR: Final = 1 << 2
EPT_VIOLATION_READABLE: Final = 1 << 3
EPT_VIOLATION_WRITABLE: Final = 1 << 4
EPT_VIOLATION_EXECUTABLE: Final = 1 << 5
EPT_VIOLATION_GLA_VALID: Final = 1 << 7
EPT_VIOLATION_GVA_TRANSLATED: Final = 1 << 8

Table = dict[int, "int | Table"]

PML_ENTITY_NUM: Final = 512
"""Entries of a vcpu's page-modification log (vmx.h)."""

HIT_CACHE_MAX: Final = 1 << 16
"""Entries in ``EptState.hits`` (~200 bytes each: at most ~13 MB)."""


def level_shift(level: int) -> int:
    """``PT64_LEVEL_SHIFT``: 12 for level 1, 21, 30, 39."""
    return 12 + 9 * (level - 1)


LEVEL_SHIFT: Final = (0, 12, 21, 30, 39)
"""``level_shift(level)`` precomputed, indexed by level (1..4), for the hot walks."""


def pages_per_hpage(level: int) -> int:
    """``KVM_PAGES_PER_HPAGE(level)``: 4K frames per leaf at ``level``."""
    return 1 << (9 * (level - 1))


def spte_to_pfn(spte: int) -> int:
    return spte >> SPTE_PFN_SHIFT


def is_mmio_spte(spte: int) -> bool:
    """``is_mmio_spte``: (spte & shadow_mmio_mask) == shadow_mmio_value."""
    return spte & EPT_RWX == MMIO_SPTE_VALUE


def is_shadow_present_pte(spte: int) -> bool:
    """``is_shadow_present_pte``: any low bit set, and not an MMIO SPTE."""
    return bool(spte & 0xFFFFFFFF) and not is_mmio_spte(spte)


def is_large_pte(spte: int) -> bool:
    return bool(spte & EPT_LARGE)


def is_last_spte(spte: int, level: int) -> bool:
    """``is_last_spte``: every level-1 entry counts as last, present or not."""
    return level == PT_PAGE_TABLE_LEVEL or is_large_pte(spte)


def spte_can_locklessly_be_made_writable(spte: int) -> bool:
    """``spte_can_locklessly_be_made_writable``: write-protected for dirty
    logging (``pt_protect == false``), not for shadow paging."""
    both = SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE
    return spte & both == both


def _entry(e: int | Table | None) -> int:
    """The value of a table slot as an SPTE (a non-leaf entry is RWX)."""
    if e is None:
        return 0
    if isinstance(e, dict):
        return EPT_RWX | EPT_A
    return e


class EptState:
    """``kvm->arch`` for a TDP guest: the EPT, per-leaf notifier sequence
    numbers (for the checkers), dirty bitmaps, async-PF state per vcpu.

    ``dirty_bitmaps`` is the core's (:mod:`kvmsim.kvm.dirty`): a slot is in
    it exactly while ``KVM_MEM_LOG_DIRTY_PAGES`` is set.
    """

    __slots__ = (
        "ad_enabled",
        "apf",
        "dirty_bitmaps",
        "fresh",
        "hits",
        "hwpoison_signals",
        "lpages",
        "nx_children",
        "nx_huge_pages",
        "pf_fixed",
        "pml",
        "root",
        "seqs",
        "version",
    )

    def __init__(self, version: str) -> None:
        self.version = version
        self.root: Table = {}
        self.seqs: dict[int, int] = {}
        self.ad_enabled = True
        self.dirty_bitmaps: Mapping[int, object] = {}
        """The core's bitmaps (``kvm.dirty.bitmaps``): a slot is a key exactly
        while it logs."""
        self.hwpoison_signals: list[tuple[int, int]] = []
        """(vcpu, si_addr) per SIGBUS ``kvm_send_hwpoison_signal`` sent."""
        self.apf: dict[int, ApfVcpu] = {}
        self.pf_fixed = 0
        self.lpages = 0
        self.nx_huge_pages = False
        """``kvm.nx_huge_pages`` (v5.4+; the iTLB multihit workaround)."""
        self.nx_children: dict[tuple[int, int], Table] = {}
        """v6.13: the tables a ``huge_page_disallowed`` fault linked
        (``sp->nx_huge_page_disallowed``), by (level of the entry pointing
        at them, its base gpa); a table is one of them only while it is the
        very object recorded."""
        self.pml: dict[int, list[int]] | None = None
        """Each vcpu's page-modification log (gpas the CPU logged on setting
        a D bit) while PML is enabled (``enable_pml``); None: no PML."""
        self.hits: dict[int, Translation] = {}
        """The frozen Translation of a 4K leaf hit, keyed by the SPTE value
        (A/D already set): a function of the value alone, so a changed SPTE
        can never find a stale entry.  Entries of SPTEs KVM rewrites or
        zaps are dropped there (memory hygiene, not correctness).  At most
        ``HIT_CACHE_MAX`` entries: when full, further leaves are not cached
        (a sweep over more pages costs what an uncached walk does)."""
        self.fresh = -1
        """The 4K SPTE a fault installed last: its first hit (the access the
        fault resumes) is not cached, so a page touched once costs no entry."""

    def vcpu_apf(self, vcpu: int) -> ApfVcpu:
        """The vcpu's async-PF state, created on first use."""
        a = self.apf.get(vcpu)
        if a is None:
            # imported here (apf imports this module), and only here: an
            # import statement costs more than the lookup on every fault
            from kvmsim_plugins.x86_ept.apf import ApfVcpu

            a = self.apf[vcpu] = ApfVcpu(vcpu)
        return a

    # ------------------------------------------------------------------ walks

    def find_spte(self, gpa: int, stop_level: int = 1) -> tuple[Table | None, int, int]:
        """The table, index and level of the last entry a walk for ``gpa``
        reaches: a leaf, a non-present entry, or the entry at ``stop_level``.
        The table is None when the PML4 entry itself is absent."""
        table = self.root
        level = PT64_ROOT_LEVEL
        while True:
            idx = (gpa >> LEVEL_SHIFT[level]) & 511
            e = table.get(idx)
            if not isinstance(e, dict) or level == stop_level:
                return table, idx, level
            table = e
            level -= 1

    def leaves(self) -> list[tuple[int, int, int]]:
        """Every leaf SPTE (present, write-protected or MMIO) as
        ``(gpa, level, spte)``, in gpa order."""
        out: list[tuple[int, int, int]] = []
        self._collect(self.root, PT64_ROOT_LEVEL, 0, out)
        return out

    def _collect(
        self, table: Table, level: int, base: int, out: list[tuple[int, int, int]]
    ) -> None:
        shift = level_shift(level)
        for idx in sorted(table):
            e = table[idx]
            gpa = base | (idx << shift)
            if isinstance(e, dict):
                self._collect(e, level - 1, gpa, out)
            elif e:
                out.append((gpa, level, e))

    def leaves_in(self, start: int, end: int) -> list[tuple[Table, int, int, int]]:
        """Leaf slots overlapping guest physical ``[start, end)`` as
        ``(table, idx, level, gpa)``; walks only populated tables."""
        out: list[tuple[Table, int, int, int]] = []
        self._range(self.root, PT64_ROOT_LEVEL, 0, start, end, out)
        return out

    def _range(
        self,
        table: Table,
        level: int,
        base: int,
        start: int,
        end: int,
        out: list[tuple[Table, int, int, int]],
    ) -> None:
        shift = level_shift(level)
        size = 1 << shift
        lo = max(start, base)
        hi = min(end, base + (size << 9))
        if lo >= hi:
            return
        first = (lo - base) >> shift
        last = (hi - 1 - base) >> shift
        if last - first + 1 > len(table):
            keys = sorted(k for k in table if first <= k <= last)
        else:
            keys = [k for k in range(first, last + 1) if k in table]
        for idx in keys:
            e = table[idx]
            gpa = base | (idx << shift)
            if isinstance(e, dict):
                self._range(e, level - 1, gpa, start, end, out)
            elif e:
                out.append((table, idx, level, gpa))


# ---------------------------------------------------------------------- hardware walk


def translate(kvm: Kvm, gpa: int, op: str) -> Translation:
    """The EPT walk for one access (see :func:`translate_access`)."""
    return translate_access(kvm, 0, gpa, gpa, op)


_ACC_NEED = {
    "write": (EPT_VIOLATION_ACC_WRITE, EPT_W),
    "exec": (EPT_VIOLATION_ACC_INSTR, EPT_X),
}
_READ = (EPT_VIOLATION_ACC_READ, EPT_R)
_QUAL = EPT_VIOLATION_GLA_VALID | EPT_VIOLATION_GVA_TRANSLATED


def translate_access(kvm: Kvm, vcpu: int, gpa: int, ea: int, op: str) -> Translation:
    """The EPT walk a VMX processor does for one guest-physical access; the
    ``translate`` hook itself (its signature), so the Dispatcher calls it
    directly.

    Not present anywhere on the walk, or present without the permission the
    access needs: an EPT violation whose exit qualification carries the
    access type (bits 0..2), the AND of the RWX bits of the entries walked
    (bits 3..5, all zero when an entry was not present) and "a linear
    address was translated" (bits 7, 8).  An MMIO SPTE is a misconfiguration.
    A hit sets the leaf's accessed bit, and dirty on a store, when EPT A/D
    is enabled (Intel SDM 28.2.4), then returns the cached Translation of
    the (updated) 4K SPTE value if there is one (:attr:`EptState.hits`).
    """
    st: EptState = kvm.arch
    if gpa >> GPA_BITS:
        raise ScenarioError(
            f"gpa {gpa:#x} is beyond the 48-bit guest physical space of 4-level EPT", key="gpa"
        )
    # the walk, unrolled: PML4, PDPT, PD, PT
    level = 4
    table = st.root
    idx = (gpa >> 39) & 511
    e = table.get(idx)
    if e.__class__ is dict:
        level = 3
        table = e  # type: ignore[assignment]
        idx = (gpa >> 30) & 511
        e = table.get(idx)
        if e.__class__ is dict:
            level = 2
            table = e  # type: ignore[assignment]
            idx = (gpa >> 21) & 511
            e = table.get(idx)
            if e.__class__ is dict:
                level = 1
                table = e  # type: ignore[assignment]
                idx = (gpa >> 12) & 511
                e = table.get(idx)
    spte: int = e or 0  # type: ignore[assignment]
    if level == 1 and op == "read" and spte & EPT_R and spte & EPT_A:
        # the common case, a load hitting a 4K leaf already accessed: R set
        # means not an MMIO SPTE, A set means nothing to write; the cache
        t = st.hits.get(spte)
        if t is not None:
            return t
    acc, need = _ACC_NEED.get(op, _READ)
    if spte and spte & EPT_RWX == MMIO_SPTE_VALUE:  # is_mmio_spte
        return Translation(
            fault=Stage2Fault(gpa=gpa, ea=gpa, op=op, code=acc, kind="ept_misconfig")
        )
    if not spte & need:
        # a missing table gives a not-present entry: bits 3..5 are 0
        qual = acc | ((spte & EPT_RWX) << 3) | _QUAL
        return Translation(
            fault=Stage2Fault(gpa=gpa, ea=gpa, op=op, code=qual, kind="ept_violation")
        )
    if st.ad_enabled:
        new = spte | EPT_A | (EPT_D if op == "write" else 0)
        if new != spte:
            if st.pml is not None and new & ~spte & EPT_D:
                # PML: setting a D flag logs the guest-physical address; with
                # the vcpu's log full the access exits first (PML full)
                log = st.pml.setdefault(vcpu, [])
                if len(log) >= PML_ENTITY_NUM:
                    return Translation(
                        fault=Stage2Fault(gpa=gpa, ea=gpa, op=op, code=0, kind="pml_full")
                    )
                log.append(gpa & ~0xFFF)
            table[idx] = new
            st.hits.pop(spte, None)
            spte = new
    if level == 1:
        t = st.hits.get(spte)
        if t is not None:
            return t
    shift = LEVEL_SHIFT[level]
    t = Translation(
        pfn=(spte >> SPTE_PFN_SHIFT) + ((gpa & ((1 << shift) - 1)) >> 12),  # spte_to_pfn
        page_size=1 << shift,
        writable=bool(spte & EPT_W),
        noncached=(spte & EPT_MT_MASK) >> EPT_MT_SHIFT == MTRR_TYPE_UNCACHABLE,
    )
    if level == 1:
        if spte == st.fresh:
            st.fresh = -1
        else:
            hits = st.hits
            if len(hits) < HIT_CACHE_MAX:  # bounded: memory does not grow with the guest
                hits[spte] = t
    return t


# ---------------------------------------------------------------------- SPTE helpers


def kvm_is_reserved_pfn_v5_6(phys: PhysMem, pfn: int) -> bool:
    """``kvm_is_reserved_pfn`` from 7df003c85218 (v5.6) on: PageReserved and
    not the zero pfn for a valid pfn, true for a pfn with no struct page.
    The zero page is no longer "reserved", so the release helpers drop the
    reference gup took on it (kernel-notes §L.1)."""
    if phys.pfn_valid(pfn):
        return phys.PageReserved(pfn) and not phys.is_zero_pfn(pfn)
    return True


def is_reserved_pfn(kvm: Kvm, pfn: int) -> bool:
    """``kvm_is_reserved_pfn`` of the handler version's kernel: v4.16's
    (kernel-notes §A.9: the zero page counts as reserved) or v5.6's (it does not)."""
    if kvm.arch.version == "v4.16":
        return kvm_is_reserved_pfn(kvm.phys, pfn)
    return kvm_is_reserved_pfn_v5_6(kvm.phys, pfn)


def kvm_set_pfn_accessed(kvm: Kvm, pfn: int) -> None:
    """``kvm_set_pfn_accessed``: mark_page_accessed unless reserved."""
    if not is_reserved_pfn(kvm, pfn):
        kvm.phys.mark_page_accessed(pfn)


def kvm_set_pfn_dirty(kvm: Kvm, pfn: int) -> None:
    """``kvm_set_pfn_dirty``: SetPageDirty unless reserved."""
    if not is_reserved_pfn(kvm, pfn):
        kvm.phys.SetPageDirty(pfn)


def mmu_spte_clear_track_bits(kvm: Kvm, spte: int) -> None:
    """``mmu_spte_clear_track_bits`` after the SPTE was cleared: hand the
    accessed and dirty state of a present SPTE back to the struct page."""
    if not is_shadow_present_pte(spte):
        return
    pfn = spte_to_pfn(spte)
    if spte & EPT_A:
        kvm_set_pfn_accessed(kvm, pfn)
    if spte & EPT_D:
        kvm_set_pfn_dirty(kvm, pfn)


def drop_spte(kvm: Kvm, table: Table, idx: int, gpa: int, level: int) -> int:
    """``drop_spte`` (``mmu_spte_clear_track_bits`` + ``rmap_remove``) of a
    leaf; returns the old value."""
    st: EptState = kvm.arch
    old = table.pop(idx, 0)
    assert isinstance(old, int)
    st.hits.pop(old, None)
    mmu_spte_clear_track_bits(kvm, old)
    st.seqs.pop(gpa, None)
    if level > PT_PAGE_TABLE_LEVEL and is_shadow_present_pte(old):
        st.lpages -= 1
    return old


def unmap_hva_range(kvm: Kvm, start: int, end: int) -> None:
    """``kvm_unmap_hva_range`` → ``kvm_handle_hva_range(kvm_unmap_rmapp)``:
    for every memslot overlapping the hva range, zap the SPTEs (all levels)
    mapping its gfns.  MMIO SPTEs are in no rmap and stay."""
    st: EptState | None = kvm.arch
    if st is None:
        return
    tr = kvm.tracer
    for _slot, gfn_lo, gfn_hi in kvm.memslots.hva_to_gfns(start, end):
        for table, idx, level, gpa in st.leaves_in(gfn_lo << 12, gfn_hi << 12):
            v = table[idx]
            assert isinstance(v, int)
            if not is_shadow_present_pte(v):
                continue
            drop_spte(kvm, table, idx, gpa, level)
            if tr.enabled:
                tr.emit(
                    "kvm_unmap_rmapp",
                    gpa=hex(gpa),
                    level=level,
                    pfn=hex(spte_to_pfn(v)),
                )


def mappings(kvm: Kvm) -> list[Stage2Mapping]:
    """Every present leaf (MMIO SPTEs are not mappings), for the checkers."""
    st: EptState = kvm.arch
    return [
        _mapping(st, gpa, level, spte)
        for gpa, level, spte in st.leaves()
        if is_shadow_present_pte(spte)
    ]


def mappings_in(kvm: Kvm, start: int, end: int) -> list[Stage2Mapping]:
    """The present leaves overlapping ``[start, end)``, for the checkers."""
    st: EptState = kvm.arch
    out = []
    for table, idx, level, gpa in st.leaves_in(start, end):
        spte = table[idx]
        assert isinstance(spte, int)
        if is_shadow_present_pte(spte):
            out.append(_mapping(st, gpa, level, spte))
    return out


def _mapping(st: EptState, gpa: int, level: int, spte: int) -> Stage2Mapping:
    return Stage2Mapping(
        gpa=gpa,
        size=1 << level_shift(level),
        pfn=spte_to_pfn(spte),
        writable=bool(spte & EPT_W),
        noncached=(spte & EPT_MT_MASK) >> EPT_MT_SHIFT == MTRR_TYPE_UNCACHABLE,
        mmu_seq=st.seqs.get(gpa, -1),
    )


def age_gfn_range(kvm: Kvm, start: int, end: int, test: bool) -> bool:
    """``kvm_age_gfn`` / ``kvm_test_age_gfn`` over gfns ``[start, end)`` of
    one memslot, under ``mmu_lock`` (the caller's).  v4.16 and v5.13 (rmap
    MMU): ``kvm_age_rmapp`` → ``mmu_spte_age`` on every leaf SPTE, at every
    level, whose gfn range meets the range; v6.13 (TDP MMU):
    ``age_gfn_range`` / ``test_age_gfn`` on every leaf the walk meets.
    Every version, with EPT A/D: an accessed SPTE (``is_accessed_spte``:
    the A bit) has A cleared and counts as young; nothing is flushed and no
    struct page is marked accessed.  ``test`` only asks (the test variants
    stop at the first accessed SPTE).

    The model always enables EPT A/D (``EptState.ad_enabled``), so the
    versions' other branch, access tracking (``mark_spte_for_access_track``,
    v4.10+, which takes R/W/X away instead of an A bit), is never reached;
    none of the modelled versions zaps the SPTE to age it (that was before
    v4.10).

    Read from: Linux 4.16.13 arch/x86/kvm/mmu.c (``kvm_age_hva``,
    ``kvm_test_age_hva``, ``kvm_age_rmapp``, ``kvm_test_age_rmapp``,
    ``mmu_spte_age``); the v5.13-era arch/x86/kvm/mmu/tdp_mmu.c
    ``age_gfn_range`` / ``test_age_gfn`` (torvalds/linux) and the 2023-2024
    tdp_mmu.c patches on the kvm list that rework them without changing
    the A/D path (kernel-notes §L.8).
    """
    st: EptState = kvm.arch
    tr = kvm.tracer
    young = False
    for table, idx, level, gpa in st.leaves_in(start << 12, end << 12):
        v = table[idx]
        assert isinstance(v, int)
        if not is_shadow_present_pte(v) or not v & EPT_A:
            continue
        young = True
        if test:
            break
        st.hits.pop(v, None)
        table[idx] = v & ~EPT_A
        if tr.enabled:
            tr.emit("kvm_age_page", gfn=hex(gpa >> 12), level=level, young=True)
    return young
