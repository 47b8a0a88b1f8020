"""The radix stage-2 MMU: the hardware walk (``translate``), and KVM's
``kvmppc_create_pte``, ``kvm_unmap_radix`` (arch/powerpc/kvm/book3s_64_mmu_radix.c).

Versions differ where the kernel's did (kernel-semantics B.4, C.1):
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

from kvmsim_plugins.ppc_radix.dsisr import (
    DSISR_ISSTORE,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    DSISR_SET_RC,
)
from kvmsim_plugins.ppc_radix.tree import (
    PGD_SHIFT,
    PMD_SHIFT,
    PUD_SHIFT,
    RadixTree,
    Table,
    is_leaf,
)

from kvmsim.cmodel import EAGAIN, EBUSY
from kvmsim.hooktypes import Stage2Fault, Stage2Mapping, Translation
from kvmsim.host.constants import (
    PTE_DIRTY,
    PTE_EXEC,
    PTE_LEAF,
    PTE_NONCACHED,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_READ,
    PTE_WRITE,
    PTE_YOUNG,
)

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
    """The partition-scoped walk as POWER9 does it (L.2): an invalid entry →
    NOHPTE; a leaf that does not allow the access → PROTFAULT; R (or C on a
    store) clear → SET_RC; ISSTORE added for a store."""
    tree: RadixTree = kvm.arch.tree
    pud = tree.pgd.get(gpa >> PGD_SHIFT)
    pte = 0
    shift = 0
    if pud is not None:
        assert isinstance(pud, dict)
        e = pud.get((gpa >> PUD_SHIFT) & 511)
        if isinstance(e, int):
            pte, shift = e, PUD_SHIFT
        elif e is not None:
            e2 = e.get((gpa >> PMD_SHIFT) & 511)
            if isinstance(e2, int):
                pte, shift = e2, PMD_SHIFT
            elif e2 is not None:
                v = e2.get((gpa >> tree.page_shift) & ((1 << tree.pte_bits) - 1), 0)
                assert isinstance(v, int)
                pte, shift = v, tree.page_shift
    store = op == "write"
    if not pte & PTE_PRESENT:
        code = DSISR_NOHPTE
    elif (
        (store and not pte & PTE_WRITE)
        or (op == "exec" and not pte & PTE_EXEC)
        or (op == "read" and not pte & (PTE_READ | PTE_WRITE))
    ):
        code = DSISR_PROTFAULT
    elif not pte & PTE_YOUNG or (store and not pte & PTE_DIRTY):
        code = DSISR_SET_RC
    else:
        pfn = (pte >> PTE_PFN_SHIFT) + ((gpa & ((1 << shift) - 1)) >> tree.page_shift)
        return Translation(
            pfn=pfn,
            page_size=1 << shift,
            writable=bool(pte & PTE_WRITE),
            noncached=bool(pte & PTE_NONCACHED),
        )
    if store:
        code |= DSISR_ISSTORE
    kind = "hisi" if op == "exec" else "hdsi"
    return Translation(fault=Stage2Fault(gpa=gpa, ea=ea, op=op, code=code, kind=kind))


def _clear_leaf(table: Table, idx: int, version: str) -> int:
    """``kvmppc_radix_update_pte`` + tlbie: v4.17 clears the whole entry,
    earlier versions only _PAGE_PRESENT.  Returns the old value."""
    old = table.get(idx, 0)
    assert isinstance(old, int)
    if version in ("v4.15", "v4.16"):
        table[idx] = old & ~PTE_PRESENT
    else:
        table.pop(idx, None)
    return old


def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    """``kvmppc_create_pte``: install ``pte`` for ``gpa`` at ``level`` under
    ``mmu_lock`` after the ``mmu_notifier_retry`` check."""
    st: RadixState = kvm.arch
    tree = st.tree
    version = st.version
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
        ret = _install(tree, gpa, pte | PTE_LEAF, level, version)
        if ret == 0:
            leaf_shift = (tree.page_shift, PMD_SHIFT, PUD_SHIFT)[level]
            tree.seqs[gpa & ~((1 << leaf_shift) - 1)] = mmu_seq
        if tr.enabled:
            tr.emit(
                "kvmppc_create_pte",
                gpa=hex(gpa),
                level=level,
                pfn=hex(pte >> PTE_PFN_SHIFT),
                write=bool(pte & PTE_WRITE),
                ret=ret,
                mmu_seq=mmu_seq,
            )
        return ret
    finally:
        kvm.mmu_lock.unlock(task)


def _install(tree: RadixTree, gpa: int, pte: int, level: int, version: str) -> int:
    pud = tree.pgd.setdefault(gpa >> PGD_SHIFT, {})
    assert isinstance(pud, dict)
    ui = (gpa >> PUD_SHIFT) & 511
    e = pud.get(ui)
    if isinstance(e, int):
        # a 1G leaf (only v4.17 makes them)
        if level == 2 and e == pte:
            return 0
        pud.pop(ui)
        e = None
    if level == 2:
        # v4.17: a pmd table in the way is freed and replaced
        pud[ui] = pte
        return 0
    if e is None:
        e = pud[ui] = {}
    pmd: Table = e
    mi = (gpa >> PMD_SHIFT) & 511
    e2 = pmd.get(mi)
    if is_leaf(e2):
        if version == "v4.15":
            return -EAGAIN  # pmd_large: "someone else" put a large page here
        assert isinstance(e2, int)
        if version != "v4.16" and level == 1 and e2 == pte:
            return 0
        pmd.pop(mi)  # remove the existing 2M leaf, tlbie
        e2 = None
    if level == 1:
        if e2 is not None:
            if version in ("v4.15", "v4.16"):
                return -EBUSY  # a page-table page is in the way: caller retries at 4K/64K
            # v4.17 frees the page-table page and installs the large leaf
        pmd[mi] = pte
        return 0
    if e2 is None:
        e2 = pmd[mi] = {}
    assert isinstance(e2, dict)
    pi = (gpa >> tree.page_shift) & ((1 << tree.pte_bits) - 1)
    old = e2.get(pi, 0)
    assert isinstance(old, int)
    if old & PTE_PRESENT:
        if version not in ("v4.15", "v4.16") and old == pte:
            return 0
        # invalidate the old PTE (clear PRESENT, tlbie) before setting the new one
    e2[pi] = pte
    return 0


def unmap_hva_range(kvm: Kvm, start: int, end: int) -> None:
    """``kvm_unmap_hva_range_hv`` → ``kvm_unmap_radix`` for every gfn of every
    memslot overlapping ``[start, end)``.  Clears leaves; drops no reference."""
    st: RadixState = kvm.arch
    if st is None:
        return
    tree = st.tree
    ps = tree.page_shift
    tr = kvm.tracer
    for _slot, gfn_lo, gfn_hi in kvm.memslots.hva_to_gfns(start, end):
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
                _clear_leaf(table, idx, st.version)
                if tr.enabled:
                    tr.emit(
                        "kvm_unmap_radix",
                        gpa=hex(gpa & ~(step - 1)),
                        size=step,
                        pfn=hex(v >> PTE_PFN_SHIFT),
                    )
            gpa = (gpa & ~(step - 1)) + step


def _next_populated(tree: RadixTree, gpa: int) -> int:
    """The next gpa past the level that is missing at ``gpa`` (so a walk
    over an empty range costs one step per missing table, not per page)."""
    pud = tree.pgd.get(gpa >> PGD_SHIFT)
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
    st: RadixState = kvm.arch
    tree = st.tree
    return [
        Stage2Mapping(
            gpa=gpa,
            size=1 << shift,
            pfn=pte >> PTE_PFN_SHIFT,
            writable=bool(pte & PTE_WRITE),
            noncached=bool(pte & PTE_NONCACHED),
            mmu_seq=tree.seqs.get(gpa, -1),
        )
        for gpa, shift, pte in tree.leaves()
    ]
