"""The partition-scoped radix tree KVM HV builds for a POWER9 guest
(``kvm->arch.pgtable``), with Linux's radix geometry.

Geometry (arch/powerpc/include/asm/book3s/64/radix-{4k,64k}.h, the same in
v4.15.1, v4.16.13 and v4.17): a 52-bit guest real address space; the PGD
indexes bits 39..51 (13 bits), the PUD bits 30..38 (9), the PMD bits 21..29
(9), the PTE table the rest down to the page (9 bits with 4K pages, 5 with
64K).  Leaves can sit in the PUD (1G), the PMD (2M) or the PTE table.
Entries use the Linux PTE encoding (``PTE_*`` of :mod:`kvmsim.host.constants`,
``PTE_LEAF`` standing for ``_PAGE_PTE``, ``PTE_YOUNG``/``PTE_DIRTY`` for the
R and C bits).

Tables are dicts (absent = ``pXd_none``); a table slot holds an ``int`` for
a leaf (present or not) or a ``dict`` for the next table, so a walk is at
most four dict lookups.  No object per page.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.hooktypes import Translation
from kvmsim.host.constants import PTE_LEAF, PTE_PFN_SHIFT, PTE_PRESENT

PGD_SHIFT = 39
PUD_SHIFT = 30
PMD_SHIFT = 21
PUD_SIZE = 1 << PUD_SHIFT
PMD_SIZE = 1 << PMD_SHIFT
GPA_BITS = 52
PGD_INDEX_MASK = (1 << (GPA_BITS - PGD_SHIFT)) - 1  # pgd_index masks with PTRS_PER_PGD - 1

Table = dict[int, "int | Table"]

HIT_CACHE_MAX = 1 << 16
"""Entries in a cache of hit Translations (``RadixTree.hits``, the EPT's
``EptState.hits``): ~200 bytes each, so at most ~13 MB."""


class RadixTree:
    """One partition-scoped tree.

    ``seqs`` maps the base gpa of every leaf a fault installed to the
    ``mmu_notifier_seq`` that fault read before resolving the pfn (the
    stale-mapping checker's evidence).  A key is removed whenever its leaf
    is cleared or replaced, so a present leaf's seq is always the one of
    the fault that installed it.

    ``hits`` caches the frozen ``Translation`` of a base-page leaf hit, keyed
    by the leaf's value: for a base page the translation is a function of
    the value alone, so a changed leaf (new value) can never find a stale
    entry.  Entries of leaves the arch zaps or rewrites are dropped there
    (memory hygiene, not correctness).  ``fresh`` is the value of the base
    leaf a fault installed last: its first hit (the access the fault
    resumes) is not cached, so a page touched once costs no cache entry;
    a page accessed again is cached on its next hit.  At most
    :data:`HIT_CACHE_MAX` entries, so its memory is bounded whatever the
    guest size: when full, further leaves are not cached (entries leave as
    their leaves change or go), and a sweep over more pages than that costs
    what an uncached walk does.
    """

    __slots__ = ("fresh", "hits", "page_shift", "pgd", "pte_bits", "pte_mask", "seqs")

    def __init__(self, page_shift: int) -> None:
        self.page_shift = page_shift
        self.pte_bits = PMD_SHIFT - page_shift
        self.pte_mask = (1 << self.pte_bits) - 1
        self.pgd: Table = {}
        self.seqs: dict[int, int] = {}
        self.hits: dict[int, Translation] = {}
        self.fresh = -1

    # ------------------------------------------------------------------ walk

    def find_pte(self, gpa: int) -> tuple[Table | None, int, int]:
        """``__find_linux_pte(kvm->arch.pgtable, gpa, NULL, &shift)``: the
        table holding the leaf slot for ``gpa``, the slot's index, and the
        leaf's shift (0 for the base page, as the kernel reports it).  The
        table is None when no leaf slot exists (a level is none)."""
        pud = self.pgd.get((gpa >> PGD_SHIFT) & PGD_INDEX_MASK)
        if pud is None:
            return None, 0, 0
        assert isinstance(pud, dict)
        i = (gpa >> PUD_SHIFT) & 511
        pmd = pud.get(i)
        if pmd is None:
            return None, 0, 0
        if isinstance(pmd, int):
            return pud, i, PUD_SHIFT
        j = (gpa >> PMD_SHIFT) & 511
        pte = pmd.get(j)
        if pte is None:
            return None, 0, 0
        if isinstance(pte, int):
            return pmd, j, PMD_SHIFT
        return pte, (gpa >> self.page_shift) & self.pte_mask, 0

    def lookup(self, gpa: int) -> tuple[int, int]:
        """The leaf value covering ``gpa`` (0 if none) and its size shift."""
        table, idx, shift = self.find_pte(gpa)
        if table is None:
            return 0, 0
        v = table.get(idx, 0)
        assert isinstance(v, int)
        return v, shift or self.page_shift

    def leaves(self) -> Iterator[tuple[int, int, int]]:
        """Every present leaf as ``(gpa, size_shift, pte)``, in gpa order."""
        ps = self.page_shift
        for gi in sorted(self.pgd):
            pud = self.pgd[gi]
            assert isinstance(pud, dict)
            for ui in sorted(pud):
                e = pud[ui]
                base1 = (gi << PGD_SHIFT) | (ui << PUD_SHIFT)
                if isinstance(e, int):
                    if e & PTE_PRESENT:
                        yield base1, PUD_SHIFT, e
                    continue
                for mi in sorted(e):
                    e2 = e[mi]
                    base2 = base1 | (mi << PMD_SHIFT)
                    if isinstance(e2, int):
                        if e2 & PTE_PRESENT:
                            yield base2, PMD_SHIFT, e2
                        continue
                    for pi in sorted(e2):
                        e3 = e2[pi]
                        assert isinstance(e3, int)
                        if e3 & PTE_PRESENT:
                            yield base2 | (pi << ps), ps, e3

    # ------------------------------------------------------- seq bookkeeping

    def forget(self, base: int, entry: int | Table | None, shift: int) -> None:
        """Drop the seqs of ``entry`` (a leaf, or a whole table being freed)
        whose slot covers ``base`` at level ``shift``."""
        if entry is None:
            return
        if isinstance(entry, int):
            self.seqs.pop(base, None)
            self.hits.pop(entry, None)
            return
        if shift == PUD_SHIFT:  # a pmd table
            for mi, e in entry.items():
                self.forget(base | (mi << PMD_SHIFT), e, PMD_SHIFT)
        else:  # a pte table
            ps = self.page_shift
            hits = self.hits
            for pi, v in entry.items():
                self.seqs.pop(base | (pi << ps), None)
                hits.pop(v, None)  # type: ignore[arg-type]


def leaf_pfn(pte: int) -> int:
    return pte >> PTE_PFN_SHIFT


def is_leaf(entry: object) -> bool:
    """``pmd_is_leaf`` / ``pmd_large``: an int with _PAGE_PTE (a leaf whose
    _PAGE_PRESENT was cleared by a v4.15/v4.16 unmap keeps the bit)."""
    return isinstance(entry, int) and bool(entry & PTE_LEAF)
