"""The radix stage-2 MMU: the hardware walk (``translate``), and KVM's
``kvmppc_create_pte``, ``kvm_unmap_radix`` (arch/powerpc/kvm/book3s_64_mmu_radix.c).

Versions differ where the kernel's did (kernel-notes §B.4, §C.1):
- v4.15: any large PMD already there → -EAGAIN; a page-table page in the
  way of a 2M leaf → -EBUSY; unmap clears only _PAGE_PRESENT.
- v4.16: an existing 2M leaf is removed and replaced; -EBUSY as v4.15.
- v4.17: 1G leaves; "same value already present" → 0; a page-table page
  in the way of a large leaf is freed and replaced (no -EBUSY); unmap
  clears the whole entry.

The allocate-outside-the-lock dance of the kernel only matters when another
CPU changes the tree between the allocation and the lock; this simulation
runs one fault at a time and fires injected host events at the named points
only, so the "someone raced us" branches cannot trigger and are not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim_plugins.ppc_radix import dirty
from kvmsim_plugins.ppc_radix.dsisr import (
    DSISR_ISSTORE,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    DSISR_SET_RC,
    SRR1_ISI_N_OR_G,
    SRR1_ISI_NOPT,
)
from kvmsim_plugins.ppc_radix.tree import (
    HIT_CACHE_MAX,
    PGD_INDEX_MASK,
    PGD_SHIFT,
    PMD_SHIFT,
    PMD_SIZE,
    PUD_SHIFT,
    PUD_SIZE,
    RadixTree,
    Table,
    is_leaf,
)

from kvmsim.cmodel import EAGAIN, EBUSY
from kvmsim.hooktypes import Stage2Fault, Stage2Mapping, Translation
from kvmsim.host.constants import (
    PTE_DIRTY,
    PTE_EXEC,
    PTE_GUARDED,
    PTE_LEAF,
    PTE_NONCACHED,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_READ,
    PTE_WRITE,
    PTE_YOUNG,
)
from kvmsim.kvm.tables import leaves_in

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm


class RadixState:
    """``kvm->arch`` for a radix guest: the tree, and the guest DSIs queued."""

    __slots__ = ("dsi_queued", "tree", "version")

    def __init__(self, page_shift: int, version: str) -> None:
        self.tree = RadixTree(page_shift)
        self.dsi_queued = 0
        self.version = version


def translate(kvm: Kvm, gpa: int, ea: int, op: str) -> Translation:
    """The partition-scoped walk for ``gpa`` (see :func:`translate_access`)."""
    return translate_access(kvm, 0, gpa, ea, op)


_RW = PTE_READ | PTE_WRITE
_RC = PTE_YOUNG | PTE_DIRTY


def translate_access(kvm: Kvm, vcpu: int, gpa: int, ea: int, op: str) -> Translation:
    """The partition-scoped walk as POWER9 does it (kernel-notes §L.2); the ``translate``
    hook itself (its signature), so the Dispatcher calls it directly.

    Data side (HDSI, the HDSISR bits): an invalid entry anywhere → NOHPTE; a
    present leaf that does not allow the access (store without write, load
    without read or write) → PROTFAULT; R clear, or C clear on a store →
    SET_RC (POWER9 does not set R/C itself); ISSTORE added for a store.
    Instruction side (HISI, the cause in HSRR1): invalid → SRR1_ISI_NOPT; no
    execute permission or guarded storage → SRR1_ISI_N_OR_G; R clear →
    SET_RC.  Checks go validity, then permission, then R/C.

    One dict lookup per level at most.  A hit on a base-page leaf returns the
    leaf value's cached Translation when there is one (``RadixTree.hits``):
    no allocation; a hit on a large leaf builds its Translation (the pfn
    depends on the offset in the leaf).
    """
    tree: RadixTree = kvm.arch.tree
    pte = 0
    shift = 0
    pud = tree.pgd.get((gpa >> PGD_SHIFT) & PGD_INDEX_MASK)
    if pud is not None:
        e = pud.get((gpa >> PUD_SHIFT) & 511)  # type: ignore[union-attr]
        if e.__class__ is int:
            pte, shift = e, PUD_SHIFT  # type: ignore[assignment]
        elif e is not None:
            e2 = e.get((gpa >> PMD_SHIFT) & 511)  # type: ignore[union-attr]
            if e2.__class__ is int:
                pte, shift = e2, PMD_SHIFT  # type: ignore[assignment]
            elif e2 is not None:
                ps = tree.page_shift
                pte = e2.get((gpa >> ps) & tree.pte_mask, 0)  # type: ignore[union-attr,assignment]
                if op == "read" and pte & PTE_PRESENT and pte & _RW and pte & PTE_YOUNG:
                    # the common case, a load hitting a base page: the same
                    # checks as below in one test, then the cache
                    t = tree.hits.get(pte)
                    return t if t is not None else _hit(tree, gpa, pte, ps)
                shift = ps
    if op == "exec":
        if not pte & PTE_PRESENT:
            code = SRR1_ISI_NOPT
        elif not pte & PTE_EXEC or pte & PTE_GUARDED:
            code = SRR1_ISI_N_OR_G
        elif not pte & PTE_YOUNG:
            code = DSISR_SET_RC
        else:
            return _cached_hit(tree, gpa, pte, shift)
        return Translation(fault=Stage2Fault(gpa=gpa, ea=ea, op=op, code=code, kind="hisi"))
    store = op == "write"
    if not pte & PTE_PRESENT:
        code = DSISR_NOHPTE
    elif (store and not pte & PTE_WRITE) or not pte & _RW:
        code = DSISR_PROTFAULT
    elif not pte & PTE_YOUNG or (store and not pte & PTE_DIRTY):
        code = DSISR_SET_RC
    else:
        return _cached_hit(tree, gpa, pte, shift)
    if store:
        code |= DSISR_ISSTORE
    return Translation(fault=Stage2Fault(gpa=gpa, ea=ea, op=op, code=code, kind="hdsi"))


def _cached_hit(tree: RadixTree, gpa: int, pte: int, shift: int) -> Translation:
    if shift == tree.page_shift:
        t = tree.hits.get(pte)
        if t is not None:
            return t
    return _hit(tree, gpa, pte, shift)


def _hit(tree: RadixTree, gpa: int, pte: int, shift: int) -> Translation:
    """A new Translation for a hit; a base-page leaf's is cached by value,
    except on the first hit after the fault that installed it."""
    ps = tree.page_shift
    t = Translation(
        pfn=(pte >> PTE_PFN_SHIFT) + ((gpa & ((1 << shift) - 1)) >> ps),
        page_size=1 << shift,
        writable=bool(pte & PTE_WRITE),
        noncached=bool(pte & PTE_NONCACHED),
    )
    if shift == ps:
        if pte == tree.fresh:
            tree.fresh = -1
        else:
            hits = tree.hits
            if len(hits) < HIT_CACHE_MAX:  # full: this leaf is not cached
                hits[pte] = t
    return t


def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    """``kvmppc_create_pte``: install ``pte`` for ``gpa`` at ``level`` under
    ``mmu_lock`` after the ``mmu_notifier_retry`` check (kernel-notes §B.4, §C.1 step 8)."""
    st: RadixState = kvm.arch
    tree = st.tree
    task = kvm.mm.current
    tr = kvm.tracer
    kvm.mmu_lock.lock(task)
    try:
        if kvm.mmu_notifier_retry(mmu_seq):
            if tr.enabled:
                tr.emit(
                    "kvmppc_create_pte",
                    gpa=hex(gpa),
                    level=level,
                    ret="-EAGAIN",
                    why="mmu_notifier_retry",
                    mmu_seq=mmu_seq,
                    mmu_notifier_seq=kvm.mmu_notifier_seq,
                    mmu_notifier_count=kvm.mmu_notifier_count,
                )
            return -EAGAIN
        removed: list[tuple[int, int, int]] = []
        ret = _install(tree, gpa, pte | PTE_LEAF, level, st.version, removed)
        for base, size, old in removed:
            dirty.replaced(kvm, base, size, old)
        installed = ret == 0
        if ret == _SAME:  # v4.17: "someone else set the same thing": 0, nothing written
            ret = 0
        if installed:
            d = kvm.stage2_dirty
            if d is not None:  # kvm.stage2_changed(gpa), inline on the fault path
                d.append(gpa)
            leaf_shift = (tree.page_shift, PMD_SHIFT, PUD_SHIFT)[level]
            tree.seqs[gpa & ~((1 << leaf_shift) - 1)] = mmu_seq
            if level == 0:
                tree.fresh = pte | PTE_LEAF
        if tr.enabled:
            tr.emit(
                "kvmppc_create_pte",
                gpa=hex(gpa),
                level=level,
                pfn=hex(pte >> PTE_PFN_SHIFT),
                write=bool(pte & PTE_WRITE),
                ret=ret,
                installed=installed,
                mmu_seq=mmu_seq,
            )
        return ret
    finally:
        kvm.mmu_lock.unlock(task)


_SAME = 1  # _install's private result: the same leaf is already there


def _install(
    tree: RadixTree,
    gpa: int,
    pte: int,
    level: int,
    version: str,
    removed: list[tuple[int, int, int]],
) -> int:
    """The part of ``kvmppc_create_pte`` under the lock.  Returns 0 (a leaf
    was written), ``_SAME`` (v4.17 found the identical leaf), ``-EAGAIN``
    (v4.15: a large pmd is there) or ``-EBUSY`` (v4.15/v4.16: a pte page is
    in the way of a 2M leaf).  Present leaves it removes are appended to
    ``removed`` as (base gpa, size, old value): their C bit is marked."""
    v417 = version not in ("v4.15", "v4.16")
    pgd = tree.pgd
    gi = (gpa >> PGD_SHIFT) & PGD_INDEX_MASK
    pud = pgd.get(gi)
    if pud is None:
        pud = pgd[gi] = {}
    assert isinstance(pud, dict)
    ui = (gpa >> PUD_SHIFT) & 511
    pud_base = gpa & ~(PUD_SIZE - 1)
    e = pud.get(ui)
    if isinstance(e, int):
        # pud_huge: only v4.17 makes 1G leaves, and its unmap zeroes the
        # whole entry, so this is a valid 1G leaf.
        if level == 2 and e == pte:
            return _SAME
        if level == 2 and version == "v6.13" and e & PTE_PRESENT:
            pud[ui] = e | pte  # "valid 1GB page here already, add our extra bits"
            return 0
        pud.pop(ui)  # remove it (tlbie; dirty map)
        tree.forget(pud_base, e, PUD_SHIFT)
        if e & PTE_PRESENT:
            removed.append((pud_base, PUD_SIZE, e))
        e = None
    if level == 2:
        if e is not None:
            # a pmd table in the way: v4.17 clears the pud, flushes the page
            # walk cache and frees the table (every leaf under it goes)
            tree.forget(pud_base, e, PUD_SHIFT)
        pud[ui] = pte
        return 0
    if e is None:
        e = pud[ui] = {}
    pmd: Table = e
    mi = (gpa >> PMD_SHIFT) & 511
    pmd_base = gpa & ~(PMD_SIZE - 1)
    e2 = pmd.get(mi)
    if is_leaf(e2):
        if version == "v4.15":
            # pmd_large() is true for any entry with _PAGE_PTE, even one a
            # v4.15 unmap left non-present: "someone else put a large page here"
            return -EAGAIN
        assert isinstance(e2, int)
        if v417 and level == 1 and e2 == pte:
            return _SAME
        if level == 1 and version == "v6.13" and e2 & PTE_PRESENT:
            pmd[mi] = e2 | pte  # "valid 2MB page here already, add our extra bits"
            return 0
        pmd.pop(mi)  # remove the existing 2M leaf (clear all bits, tlbie)
        tree.forget(pmd_base, e2, PMD_SHIFT)
        if e2 & PTE_PRESENT:
            removed.append((pmd_base, PMD_SIZE, e2))
        e2 = None
    elif level == 1 and e2 is not None and not v417:
        return -EBUSY  # a page-table page is in the way: the caller retries small
    if level == 1:
        if e2 is not None:
            # v4.17: the pte page is cleared from the pmd and freed
            tree.forget(pmd_base, e2, PMD_SHIFT)
        pmd[mi] = pte
        return 0
    if e2 is None:
        e2 = pmd[mi] = {}
    assert isinstance(e2, dict)
    pi = (gpa >> tree.page_shift) & tree.pte_mask
    old = e2.get(pi, 0)
    assert isinstance(old, int)
    tree.hits.pop(old, None)  # the leaf changes: its cached hit goes
    if old & PTE_PRESENT:
        if v417 and old == pte:
            return _SAME
        if version == "v6.13":
            # later kernels keep the entry and OR in the new bits (kvmppc_radix_update_pte;
            # WARN_ON_ONCE if PTE_BITS_MUST_MATCH differ)
            e2[pi] = old | pte
            return 0
        # the old PTE is invalidated (clear PRESENT, tlbie, mark_page_dirty
        # if it was dirty) before the new one is set
        removed.append((gpa & ~((1 << tree.page_shift) - 1), 1 << tree.page_shift, old))
    e2[pi] = pte
    return 0


def unmap_hva_range(kvm: Kvm, start: int, end: int) -> None:
    """``kvm_unmap_hva_range_hv`` → ``kvm_unmap_radix`` for every gfn of every
    memslot overlapping ``[start, end)``.  v4.15/v4.16 clear only
    _PAGE_PRESENT (the entry keeps _PAGE_PTE and its pfn); v4.17 clears the
    whole entry.  Drops no page reference (entries hold none)."""
    st: RadixState = kvm.arch
    if st is None:
        return
    tree = st.tree
    ps = tree.page_shift
    whole = st.version not in ("v4.15", "v4.16")
    tr = kvm.tracer
    for slot, gfn_lo, gfn_hi in kvm.memslots.hva_to_gfns(start, end):
        gpa = gfn_lo << ps
        gpa_end = gfn_hi << ps
        while gpa < gpa_end:
            table, idx, shift = tree.find_pte(gpa)
            step = 1 << (shift or ps)
            if table is None:
                gpa = _next_populated(tree, gpa)
                continue
            v = table.get(idx, 0)
            if isinstance(v, int) and v & PTE_PRESENT:
                tree.hits.pop(v, None)
                if whole:
                    table.pop(idx, None)
                else:
                    table[idx] = v & ~PTE_PRESENT
                tree.seqs.pop(gpa & ~(step - 1), None)
                dirty.unmapped(kvm, slot, gpa, shift, v)
                if tr.enabled:
                    tr.emit(
                        "kvm_unmap_radix",
                        gpa=hex(gpa & ~(step - 1)),
                        size=step,
                        pfn=hex(v >> PTE_PFN_SHIFT),
                    )
            gpa = (gpa & ~(step - 1)) + step


def age_gfn_range(kvm: Kvm, start: int, end: int, test: bool) -> bool:
    """``kvm_age_radix`` (or with ``test`` ``kvm_test_age_radix``) for every
    gfn in ``[start, end)`` of one memslot, under ``mmu_lock`` (the
    caller's): a present leaf with R (_PAGE_ACCESSED) is young; ageing
    clears R through ``kvmppc_radix_update_pte`` with no TLB flush ("XXX
    need to flush tlb here?") and no change to the host PTE.  The guest's
    next access to an aged leaf takes a SET_RC fault (the handler sets R
    again: kernel-notes §L.2), since POWER9 does not set R in a
    partition-scoped entry itself.

    Every modelled version agrees: v4.15.1, v4.16.13 (``kvm_age_hva_hv`` →
    ``kvm_handle_hva_range`` per gfn; ``kvm_test_age_hva_hv`` on the one
    gfn at the address) and the v5.13+ ``kvm_age_gfn_hv`` /
    ``kvm_test_age_gfn_hv`` (the same per-gfn loop; test on
    ``range->start``).  Not modelled: v4.15/v4.16's POWER9 DD1 work-around
    in ``kvmppc_radix_update_pte`` (invalidate and tlbie first; DD2 parts
    take the plain update), and later kernels' secure-guest early return
    and nested-guest rmap update.

    Read from: Linux 4.15.1 and 4.16.13 arch/powerpc/kvm/book3s_64_mmu_radix.c
    and book3s_64_mmu_hv.c; the v5.13-era book3s_64_mmu_radix.c of
    torvalds/linux; the 2021 "Fix conversion to gfn-based MMU notifier
    callbacks" patch for ``kvm_age_gfn_hv`` (kernel-notes §L.8)."""
    st: RadixState = kvm.arch
    if st is None:
        return False
    tree = st.tree
    ps = tree.page_shift
    tr = kvm.tracer
    young = False
    gpa = start << ps
    gpa_end = end << ps
    while gpa < gpa_end:
        table, idx, shift = tree.find_pte(gpa)
        step = 1 << (shift or ps)
        if table is None:
            gpa = _next_populated(tree, gpa)
            continue
        v = table.get(idx, 0)
        if isinstance(v, int) and v & PTE_PRESENT and v & PTE_YOUNG:
            young = True
            if not test:
                tree.hits.pop(v, None)
                table[idx] = v & ~PTE_YOUNG
                if tr.enabled:
                    tr.emit("kvm_age_radix", gpa=hex(gpa & ~(step - 1)), size=step)
            elif tr.enabled:
                tr.emit("kvm_test_age_radix", gpa=hex(gpa & ~(step - 1)), young=True)
        # the kernel visits every gfn; after a large leaf the next gfns
        # find the same leaf, already old, so skipping them changes nothing
        gpa = (gpa & ~(step - 1)) + step
    return young


def _next_populated(tree: RadixTree, gpa: int) -> int:
    """The next gpa past the level that is missing at ``gpa`` (so a walk
    over an empty range costs one step per missing table, not per page)."""
    pud = tree.pgd.get((gpa >> PGD_SHIFT) & PGD_INDEX_MASK)
    if pud is None:
        shift = PGD_SHIFT
    else:
        assert isinstance(pud, dict)
        pmd = pud.get((gpa >> PUD_SHIFT) & 511)
        if pmd is None:
            shift = PUD_SHIFT
        else:
            assert isinstance(pmd, dict)
            shift = PMD_SHIFT if pmd.get((gpa >> PMD_SHIFT) & 511) is None else tree.page_shift
    return (gpa & ~((1 << shift) - 1)) + (1 << shift)


def mappings(kvm: Kvm) -> list[Stage2Mapping]:
    """Every present leaf, for the checkers."""
    tree = kvm.arch.tree
    return [_mapping(tree, gpa, shift, pte) for gpa, shift, pte in tree.leaves()]


def mappings_in(kvm: Kvm, start: int, end: int) -> list[Stage2Mapping]:
    """The present leaves overlapping ``[start, end)``, for the checkers."""
    tree = kvm.arch.tree
    shifts = (PGD_SHIFT, PUD_SHIFT, PMD_SHIFT, tree.page_shift)
    return [
        _mapping(tree, gpa, shift, pte)
        for gpa, shift, pte in leaves_in(tree.pgd, shifts, start, end)
        if pte & PTE_PRESENT
    ]


def _mapping(tree: RadixTree, gpa: int, shift: int, pte: int) -> Stage2Mapping:
    return Stage2Mapping(
        gpa=gpa,
        size=1 << shift,
        pfn=pte >> PTE_PFN_SHIFT,
        writable=bool(pte & PTE_WRITE),
        noncached=bool(pte & PTE_NONCACHED),
        mmu_seq=tree.seqs.get(gpa, -1),
    )
