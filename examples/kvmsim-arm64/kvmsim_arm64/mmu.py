"""The Arm64 stage-2 translation tables: the hardware walk (``translate``)
and KVM's table updates of virt/kvm/arm/mmu.c v4.16 (``stage2_set_pte``,
``stage2_set_pmd_huge``, ``unmap_stage2_range``, ``kvm_age_hva``; ageing
also as v5.13 and v6.13 age), with
the three rules of arch/arm64/kvm/hyp/pgtable.c (5.12.9, 6.13.7) the
v5.13 / v6.13 handlers reach: a map that would change only a leaf's
S2AP/XN returns -EAGAIN, a page replaces a block in its way, and
``relax_perms`` adds permissions to the leaf in place.

Tables are dicts: the level-1 table (two concatenated tables, 1024 entries)
maps an index to a block descriptor (``int``) or a level-2 table (``dict``);
a level-2 table likewise to a 2M block or a level-3 table; a level-3 table
maps an index to a page descriptor.  A missing key is an invalid descriptor.
No object per page: one dict entry per leaf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmsim.cmodel import EAGAIN, EFAULT, KernelOops
from kvmsim.hooktypes import Stage2Fault, Stage2Mapping, Translation
from kvmsim.kvm.dirty import mark_page_dirty
from kvmsim.kvm.tables import leaves_in
from kvmsim_arm64.desc import (
    AF,
    DESC_VALID,
    FSC_ACCESS,
    FSC_FAULT,
    FSC_PERM,
    HW_LEVEL,
    IPA_BITS,
    L1_ENTRIES,
    L1_SHIFT,
    L2_SHIFT,
    L3_SHIFT,
    OA_MASK,
    S2AP_R,
    S2AP_W,
    START_LEVEL,
    TABLE_ENTRIES,
    TYPE_BLOCK,
    TYPE_MASK,
    XN,
    desc_pfn,
    describe,
    is_device,
    is_noncached,
    make_esr,
)
from kvmsim_arm64.dirty import memslot_is_logging

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm

Table = dict[int, Any]  # index → descriptor int, or the next-level table
_IDX = TABLE_ENTRIES - 1


class Stage2:
    """``kvm->arch`` for an arm64 guest: the stage-2 tables (``kvm->arch.pgd``),
    the mmu_notifier_seq each leaf was resolved under (for the checkers), the
    prefetch aborts injected into the guest, whether userspace enabled
    KVM_CAP_ARM_NISV_TO_USER (mmio.py) and the eager-split chunk size
    (dirty.py)."""

    __slots__ = (
        "cap_steps",
        "handler",
        "l1",
        "nisv_to_user",
        "pabt_injected",
        "seqs",
        "split_chunk_size",
    )

    def __init__(self, handler: str) -> None:
        self.l1: Table = {}
        self.seqs: dict[int, int] = {}
        self.pabt_injected = 0
        self.handler = handler
        self.nisv_to_user = False  # kvm->arch.return_nisv_io_abort_to_user
        self.split_chunk_size = 0  # kvm->arch.mmu.split_page_chunk_size (v6.2: 0)
        self.cap_steps = 0  # enable_cap steps at the start (before the VMM's memslots)

    def lookup(self, ipa: int) -> tuple[Table | None, int, int]:
        """The table holding the leaf (or the hole) for ``ipa``: (table,
        index, hardware level); ``table`` is None when a level above is
        missing (the level is then the one that is missing)."""
        e = self.l1.get((ipa >> L1_SHIFT) & (L1_ENTRIES - 1))
        if e is None or e.__class__ is int:
            return self.l1, (ipa >> L1_SHIFT) & (L1_ENTRIES - 1), 1
        e2 = e.get((ipa >> L2_SHIFT) & _IDX)
        if e2 is None or e2.__class__ is int:
            return e, (ipa >> L2_SHIFT) & _IDX, 2
        return e2, (ipa >> L3_SHIFT) & _IDX, 3


_SHIFT_OF_LEVEL = {1: L1_SHIFT, 2: L2_SHIFT, 3: L3_SHIFT}


def translate(kvm: Kvm, gpa: int, ea: int, op: str, vcpu: int = 0) -> Translation:
    """The stage-2 walk as the MMU does it (no hardware AF update: ARMv8.0
    without FEAT_HAFDBS, as KVM v4.16 assumes).

    Fault priority for one walk: an invalid descriptor (or an IPA beyond
    ``T0SZ``) is a translation fault at the level it was found; then AF
    clear is an Access flag fault; then the access not allowed by S2AP (read:
    S2AP[0], write: S2AP[1]) or by XN (fetch) is a permission fault; each
    at the leaf's level.  A data abort's syndrome (ESR_EL2.ISV) comes from
    the accessing instruction: the access step's ``isv`` (default true).
    """
    st: Stage2 = kvm.arch
    if gpa >> IPA_BITS:
        return _fault(kvm, vcpu, gpa, ea, op, FSC_FAULT, START_LEVEL)
    table, idx, level = st.lookup(gpa)
    desc = table.get(idx, 0) if table is not None else 0
    if not desc & DESC_VALID or desc.__class__ is not int:
        return _fault(kvm, vcpu, gpa, ea, op, FSC_FAULT, level)
    if level == 3 or desc & TYPE_MASK == TYPE_BLOCK:
        pass
    else:  # a reserved encoding where a page or block was expected
        return _fault(kvm, vcpu, gpa, ea, op, FSC_FAULT, level)
    if not desc & AF:
        return _fault(kvm, vcpu, gpa, ea, op, FSC_ACCESS, level)
    if op == "exec":
        allowed = not desc & XN
    elif op == "write":
        allowed = bool(desc & S2AP_W)
    else:
        allowed = bool(desc & S2AP_R)
    if not allowed:
        return _fault(kvm, vcpu, gpa, ea, op, FSC_PERM, level)
    shift = _SHIFT_OF_LEVEL[level]
    # a block's output address bits below its size are RES0: the MMU ignores them
    base = desc & OA_MASK & ~((1 << shift) - 1)
    pfn = (base + (gpa & ((1 << shift) - 1))) >> L3_SHIFT
    return Translation(
        pfn=pfn,
        page_size=1 << shift,
        writable=bool(desc & S2AP_W),
        noncached=is_noncached(desc),
    )


def _fault(kvm: Kvm, vcpu: int, gpa: int, ea: int, op: str, fsc: int, level: int) -> Translation:
    kind = "iabt" if op == "exec" else "dabt"
    insn = kvm.access_params.get(vcpu, {})
    esr = make_esr(
        op,
        fsc,
        level,
        isv=bool(insn.get("isv", True)),
        width=int(insn.get("width", 8)),  # type: ignore[call-overload]
    )
    return Translation(fault=Stage2Fault(gpa=gpa, ea=ea, op=op, code=esr, kind=kind))


# ------------------------------------------------------------- table updates


def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    """The locked tail of ``user_mem_abort``: ``spin_lock(&kvm->mmu_lock)``,
    ``mmu_notifier_retry``, then ``stage2_set_pmd_huge`` (level 1) or
    ``stage2_set_pte`` (level 0).  A Device descriptor is installed with
    ``KVM_S2PTE_FLAG_IS_IOMAP`` (``user_mem_abort`` sets both from
    ``kvm_is_device_pfn``), so it fails with -EFAULT over a valid page.
    Level 2 (a 1G block) is accepted for completeness; v4.16 never asks.
    For the v5.13 / v6.13 handlers it stands for ``kvm_pgtable_stage2_map``
    (see the module docstring)."""
    st: Stage2 = kvm.arch
    task = kvm.mm.current
    tr = kvm.tracer
    kvm.mmu_lock.lock(task)
    try:
        if kvm.mmu_notifier_retry(mmu_seq):
            if tr.enabled:
                tr.emit(
                    "stage2_set_pte",
                    ipa=hex(gpa),
                    ret="-EAGAIN",
                    why="mmu_notifier_retry",
                    mmu_seq=mmu_seq,
                    mmu_notifier_seq=kvm.mmu_notifier_seq,
                    mmu_notifier_count=kvm.mmu_notifier_count,
                )
            return -EAGAIN
        if st.handler != "v4.16" and _same_leaf(st, gpa, pte, level):
            # kvm_pgtable_stage2_map (v5.10 on): a valid leaf that differs
            # from the new one in its permissions at most is left alone
            # (stage2_map_walker_try_leaf); relaxing is another call
            if tr.enabled:
                tr.emit("kvm_pgtable_stage2_map", ipa=hex(gpa), level=level, ret="-EAGAIN")
            return -EAGAIN
        if level == 0:
            if st.handler == "v4.16" and pte & S2AP_W:
                # the pte branch of v4.16's user_mem_abort marks the page
                # before stage2_set_pte, under mmu_lock (a no-op unless the
                # slot logs)
                mark_page_dirty(kvm, gpa >> L3_SHIFT)
            # KVM_S2PTE_FLAG_IS_IOMAP is v4.16's; later kernels' kvm_pgtable
            # replaces a valid entry (break-before-make) instead
            ret = _set_pte(
                st,
                gpa,
                pte,
                iomap=is_device(pte) and st.handler == "v4.16",
                logging=_logging(kvm, gpa),
            )
            base = gpa & ~((1 << L3_SHIFT) - 1)
        else:
            shift = L2_SHIFT if level == 1 else L1_SHIFT
            ret = _set_block(st, gpa, pte, shift)
            base = gpa & ~((1 << shift) - 1)
        if ret == 0:
            st.seqs[base] = mmu_seq
            kvm.stage2_changed(base)
            if st.handler == "v5.13" and pte & S2AP_W:
                # "mark the page dirty only if the fault is handled
                # successfully", still under mmu_lock (v6.13 marks after
                # dropping it: abort_later.py)
                mark_page_dirty(kvm, gpa >> L3_SHIFT)
        if tr.enabled:
            tr.emit(
                "stage2_set_pmd_huge" if level else "stage2_set_pte",
                ipa=hex(base),
                level=level,
                pfn=hex(desc_pfn(pte)),
                desc=describe(pte),
                ret=ret,
                mmu_seq=mmu_seq,
            )
        return ret
    finally:
        kvm.mmu_lock.unlock(task)


S2_PERMS = S2AP_R | S2AP_W | XN
"""``KVM_PTE_LEAF_ATTR_S2_PERMS``: the bits a permission relax may change."""


def _same_leaf(st: Stage2, ipa: int, desc: int, level: int) -> bool:
    """Is there a valid leaf of ``level``'s size at ``ipa`` that differs from
    ``desc`` in S2_PERMS only (``!stage2_pte_needs_update``)?"""
    table, idx, hw_level = st.lookup(ipa)
    if table is None or hw_level != HW_LEVEL[level]:
        return False
    old = table.get(idx, 0)
    return old.__class__ is int and bool(old & DESC_VALID) and not (old ^ desc) & ~S2_PERMS


def relax_perms(kvm: Kvm, ipa: int, writable: bool, exec_: bool, mmu_seq: int) -> int:
    """``kvm_pgtable_stage2_relax_perms`` as ``user_mem_abort`` reaches it
    (v5.13, v6.13): under ``mmu_lock`` after ``mmu_notifier_retry``, add
    read, write when ``writable`` and execute when ``exec_`` to the valid
    leaf covering ``ipa``, whatever its level; nothing is taken away and
    the output address stays.  No valid leaf there: 0 in v5.13
    (``stage2_attr_walker`` skips it), -EAGAIN in v6.13."""
    st: Stage2 = kvm.arch
    task = kvm.mm.current
    tr = kvm.tracer
    kvm.mmu_lock.lock(task)
    try:
        if kvm.mmu_notifier_retry(mmu_seq):
            if tr.enabled:
                tr.emit("kvm_pgtable_stage2_relax_perms", ipa=hex(ipa), ret="-EAGAIN")
            return -EAGAIN
        table, idx, level = st.lookup(ipa)
        old = table.get(idx, 0) if table is not None else 0
        if old.__class__ is not int or not old & DESC_VALID:
            ret = -EAGAIN if st.handler == "v6.13" else 0
            if ret == 0 and writable:
                mark_page_dirty(kvm, ipa >> L3_SHIFT)  # v5.13: ret is 0, so it marks
            if tr.enabled:
                tr.emit("kvm_pgtable_stage2_relax_perms", ipa=hex(ipa), ret=ret, why="no leaf")
            return ret
        new = old | S2AP_R
        if writable:
            new |= S2AP_W
        if exec_:
            new &= ~XN
        if new != old:
            table[idx] = new  # type: ignore[index]
            kvm.stage2_changed(ipa)
        if st.handler == "v5.13" and writable:
            mark_page_dirty(kvm, ipa >> L3_SHIFT)  # under mmu_lock, as create_pte
        if tr.enabled:
            tr.emit(
                "kvm_pgtable_stage2_relax_perms",
                ipa=hex(ipa),
                level=level,
                desc=describe(new),
                ret=0,
            )
        return 0
    finally:
        kvm.mmu_lock.unlock(task)


def _get_l2(st: Stage2, ipa: int) -> Table:
    """``stage2_get_pmd`` with a memory cache: allocate the level-2 table."""
    i = (ipa >> L1_SHIFT) & (L1_ENTRIES - 1)
    e = st.l1.get(i)
    if e.__class__ is int:
        # a 1G block where a table is needed: only create_pte(level=2) makes
        # one and the v4.16 handler never asks for it; drop the block
        _forget(st, ipa & ~((1 << L1_SHIFT) - 1), L1_SHIFT)
        e = None
    if e is None:
        e = st.l1[i] = {}
    return e  # type: ignore[no-any-return]


def _set_block(st: Stage2, ipa: int, desc: int, shift: int) -> int:
    """``stage2_set_pmd_huge``: whatever is present in the entry, a block or
    a level-3 table, is cleared (TLB flushed) and the block written.  A
    level-3 table cleared this way is not freed in v4.16; its leaves are
    simply no longer reachable."""
    if shift == L1_SHIFT:
        i = (ipa >> L1_SHIFT) & (L1_ENTRIES - 1)
        if i in st.l1:
            _forget(st, ipa & ~((1 << L1_SHIFT) - 1), L1_SHIFT)
        st.l1[i] = desc
        return 0
    l2 = _get_l2(st, ipa)
    i = (ipa >> L2_SHIFT) & _IDX
    if i in l2:
        _forget(st, ipa & ~((1 << L2_SHIFT) - 1), L2_SHIFT)
    l2[i] = desc
    return 0


def _logging(kvm: Kvm, ipa: int) -> bool:
    """``memslot_is_logging`` of the IPA's slot: v4.16 passes it to
    ``stage2_set_pte`` as ``KVM_S2_FLAG_LOGGING_ACTIVE``.  Read here rather
    than carried from the fault's start: a flags change waits for every
    fault that saw the old slot (``synchronize_srcu`` before
    ``kvm_arch_commit_memory_region``), so both reads agree."""
    slot = kvm.memslots.gfn_to_memslot(ipa >> L3_SHIFT)
    return slot is not None and memslot_is_logging(kvm, slot)


def _set_pte(st: Stage2, ipa: int, desc: int, *, iomap: bool, logging: bool = False) -> int:
    """``stage2_set_pte``: allocate the level-2 and level-3 tables, refuse
    (-EFAULT) an I/O mapping over a valid page, else clear the old page
    (TLB flush) and write the new one.  With ``logging`` (v4.16's
    ``KVM_S2_FLAG_LOGGING_ACTIVE``) a 2M block in the way is dissolved
    first (``stage2_dissolve_pmd``: cleared, the other pages refault)."""
    l2 = _get_l2(st, ipa)
    i2 = (ipa >> L2_SHIFT) & _IDX
    l3 = l2.get(i2)
    if l3.__class__ is int and logging and st.handler == "v4.16":
        del l2[i2]
        _forget(st, ipa & ~((1 << L2_SHIFT) - 1), L2_SHIFT)
        l3 = None
    if l3.__class__ is int:
        if st.handler != "v4.16":
            # kvm_pgtable_stage2_map: a block where a page goes is broken
            # (invalidated, TLB flushed) and replaced by a table
            _forget(st, ipa & ~((1 << L2_SHIFT) - 1), L2_SHIFT)
            l3 = None
        else:
            # pte_offset_kernel() on a block descriptor would treat the
            # block's output address as a table: the v4.16 code never gets
            # here with a block (faults on a block take the block path again)
            raise KernelOops(f"stage2_set_pte: level-2 block in the way at ipa {ipa:#x}", "bug")
    if l3 is None:
        l3 = l2[i2] = {}
    i3 = (ipa >> L3_SHIFT) & _IDX
    old = l3.get(i3, 0)
    if iomap and old & DESC_VALID:
        return -EFAULT
    l3[i3] = desc
    return 0


def _forget(st: Stage2, base: int, shift: int) -> None:
    """Drop the recorded seqs of every leaf in ``[base, base + 2**shift)``."""
    end = base + (1 << shift)
    for k in [k for k in st.seqs if base <= k < end]:
        del st.seqs[k]


def unmap_hva_range(kvm: Kvm, start: int, end: int) -> None:
    """``kvm_unmap_hva_range`` → ``handle_hva_to_gpa`` →
    ``unmap_stage2_range(gpa, size)`` for each memslot overlapping the
    range.  A block overlapping the range is cleared whole (``unmap_stage2_pmds``
    tests ``pmd_thp_or_huge``, not the range); an emptied level-3 or level-2
    table is freed.  Entries hold no page reference: nothing is released."""
    st: Stage2 | None = kvm.arch
    if st is None:  # !kvm->arch.pgd
        return
    ps = kvm.page_shift
    tr = kvm.tracer
    for _slot, gfn_lo, gfn_hi in kvm.memslots.hva_to_gfns(start, end):
        _unmap_stage2_range(st, gfn_lo << ps, gfn_hi << ps, tr)


def _unmap_stage2_range(st: Stage2, addr: int, end: int, tr: Any) -> None:
    while addr < end:
        i1 = (addr >> L1_SHIFT) & (L1_ENTRIES - 1)
        e = st.l1.get(i1)
        next1 = (addr & ~((1 << L1_SHIFT) - 1)) + (1 << L1_SHIFT)
        if e is None:
            addr = next1
            continue
        if e.__class__ is int:
            _clear(st, st.l1, i1, addr & ~((1 << L1_SHIFT) - 1), L1_SHIFT, tr)
            addr = next1
            continue
        while addr < min(end, next1):
            i2 = (addr >> L2_SHIFT) & _IDX
            e2 = e.get(i2)
            next2 = (addr & ~((1 << L2_SHIFT) - 1)) + (1 << L2_SHIFT)
            if e2 is None:
                pass
            elif e2.__class__ is int:
                _clear(st, e, i2, addr & ~((1 << L2_SHIFT) - 1), L2_SHIFT, tr)
            else:
                a = addr
                while a < min(end, next2):
                    i3 = (a >> L3_SHIFT) & _IDX
                    if i3 in e2:
                        _clear(st, e2, i3, a, L3_SHIFT, tr)
                    a += 1 << L3_SHIFT
                if not e2:  # stage2_pte_table_empty → clear_stage2_pmd_entry
                    del e[i2]
            addr = next2
        if not e:  # stage2_pmd_table_empty → clear_stage2_pud_entry
            del st.l1[i1]


def _clear(st: Stage2, table: Table, idx: int, base: int, shift: int, tr: Any) -> None:
    desc = table.pop(idx)
    _forget(st, base, shift)
    if tr.enabled:
        tr.emit("unmap_stage2_range", ipa=hex(base), size=1 << shift, pfn=hex(desc_pfn(desc)))


def age_gfn_range(kvm: Kvm, start: int, end: int, test: bool) -> bool:
    """Ageing of one memslot's gfns ``[start, end)`` (clear AF, or with
    ``test`` only look), under ``mmu_lock``, as each handler version's
    kernel does it.  A leaf is young when valid with AF set; nothing is
    flushed (the next access to an aged leaf takes an Access flag fault,
    which ``handle_access_fault`` fixes).

    - v4.16: ``kvm_age_hva`` → ``handle_hva_to_gpa`` → ``kvm_age_hva_handler``
      looks at one IPA per memslot, the first of the range, and clears AF
      on the block or page there; the rest of the range is not aged.
      ``kvm_test_age_hva`` passes the empty range ``[hva, hva)``, which no
      memslot overlaps: never young (fixed by cf2d23e0bac9, v5.6).
    - v5.13: ``kvm_age_gfn`` → ``kvm_pgtable_stage2_mkold`` and
      ``kvm_test_age_gfn`` → ``kvm_pgtable_stage2_is_young``, both at
      ``range->start`` only.
    - v6.13: ``kvm_pgtable_stage2_test_clear_young`` over the whole range
      (df6556adf27b, v6.5), for both.

    Read from: Linux 4.16.13 virt/kvm/arm/mmu.c; the cf2d23e0bac9 and
    df6556adf27b patches as posted (their context shows the v5.13-era
    arch/arm64/kvm/mmu.c lines they replace)."""
    st: Stage2 | None = kvm.arch
    if st is None:  # !kvm->arch.pgd
        return False
    ps = kvm.page_shift
    if st.handler == "v6.13":
        shifts = (L1_SHIFT, L2_SHIFT, L3_SHIFT)
        ipas = [ipa for ipa, _sh, _d in leaves_in(st.l1, shifts, start << ps, end << ps)]
    elif test and st.handler == "v4.16":
        ipas = []
    else:
        ipas = [start << ps]
    young = False
    for ipa in ipas:
        table, idx, _level = st.lookup(ipa)
        desc = table.get(idx) if table is not None else None
        if desc.__class__ is not int or not desc & DESC_VALID or not desc & AF:  # type: ignore[operator]
            continue
        young = True
        if not test:
            table[idx] = desc & ~AF  # type: ignore[index,operator]
            if kvm.tracer.enabled:
                kvm.tracer.emit("stage2_mkold", ipa=hex(ipa), young=True)
    return young


def stage2_is_exec(st: Stage2, ipa: int) -> bool:
    """``stage2_is_exec``: is a valid leaf at ``ipa`` executable (XN clear)?"""
    table, idx, _level = st.lookup(ipa)
    desc = table.get(idx, 0) if table is not None else 0
    return desc.__class__ is int and bool(desc & DESC_VALID) and not desc & XN


def mkyoung(kvm: Kvm, ipa: int) -> int | None:
    """``handle_access_fault`` under ``mmu_lock``: set AF on the block or page
    at ``ipa``; returns its pfn, or None when nothing is there."""
    st: Stage2 = kvm.arch
    task = kvm.mm.current
    kvm.mmu_lock.lock(task)
    try:
        table, idx, _level = st.lookup(ipa)
        desc = table.get(idx) if table is not None else None
        if desc.__class__ is not int or not desc:
            return None
        table[idx] = desc | AF  # type: ignore[index]
        return desc_pfn(desc)
    finally:
        kvm.mmu_lock.unlock(task)


def mappings(kvm: Kvm) -> list[Stage2Mapping]:
    """Every valid leaf, in IPA order, for the checkers."""
    st: Stage2 = kvm.arch
    out: list[Stage2Mapping] = []
    for i1, e in sorted(st.l1.items()):
        if e.__class__ is int:
            out.append(_mapping(st, i1 << L1_SHIFT, L1_SHIFT, e))
            continue
        for i2, e2 in sorted(e.items()):
            base2 = (i1 << L1_SHIFT) | (i2 << L2_SHIFT)
            if e2.__class__ is int:
                out.append(_mapping(st, base2, L2_SHIFT, e2))
                continue
            for i3, d in sorted(e2.items()):
                out.append(_mapping(st, base2 | (i3 << L3_SHIFT), L3_SHIFT, d))
    return out


def mappings_in(kvm: Kvm, start: int, end: int) -> list[Stage2Mapping]:
    """The valid leaves overlapping ``[start, end)``, for the checkers."""
    st: Stage2 = kvm.arch
    shifts = (L1_SHIFT, L2_SHIFT, L3_SHIFT)
    return [_mapping(st, b, sh, d) for b, sh, d in leaves_in(st.l1, shifts, start, end)]


def _mapping(st: Stage2, base: int, shift: int, desc: int) -> Stage2Mapping:
    oa = desc & OA_MASK & ~((1 << shift) - 1)
    return Stage2Mapping(
        gpa=base,
        size=1 << shift,
        pfn=oa >> L3_SHIFT,
        writable=bool(desc & S2AP_W),
        noncached=is_noncached(desc),
        mmu_seq=st.seqs.get(base, -1),
    )
