"""Page table entries as plain ints: ``pfn << PTE_PFN_SHIFT | bits``.

Models the pte_*() accessors of ``include/asm-generic/pgtable.h`` and the
arch headers.  Huge leaves (PMD/PUD/hugepd) use the same encoding, with the
pfn of the compound head.
"""

from __future__ import annotations

from kvmsim.host.constants import (
    PTE_DIRTY,
    PTE_EXEC,
    PTE_GUARDED,
    PTE_HWPOISON,
    PTE_MIGRATION,
    PTE_NONCACHED,
    PTE_PFN_SHIFT,
    PTE_PRESENT,
    PTE_PROTNONE,
    PTE_READ,
    PTE_SPECIAL,
    PTE_SWAP,
    PTE_WRITE,
    PTE_YOUNG,
)

PTE_BITS_MASK = (1 << PTE_PFN_SHIFT) - 1

__all__ = [
    "PTE_BITS_MASK",
    "mk_pte",
    "pte_bits",
    "pte_dirty",
    "pte_exec",
    "pte_guarded",
    "pte_hwpoison",
    "pte_migration",
    "pte_mkclean",
    "pte_mkdirty",
    "pte_mkold",
    "pte_mkspecial",
    "pte_mkwrite",
    "pte_mkyoung",
    "pte_modify",
    "pte_noncached",
    "pte_none",
    "pte_pfn",
    "pte_present",
    "pte_protnone",
    "pte_read",
    "pte_special",
    "pte_swap",
    "pte_write",
    "pte_wrprotect",
    "pte_young",
]


def mk_pte(pfn: int, bits: int) -> int:
    """``pfn_pte(pfn, prot)``."""
    return (pfn << PTE_PFN_SHIFT) | bits


def pte_pfn(pte: int) -> int:
    """``pte_pfn``; for swap-type entries the pfn the entry remembers."""
    return pte >> PTE_PFN_SHIFT


def pte_bits(pte: int) -> int:
    """The flag bits of an entry (its pgprot)."""
    return pte & PTE_BITS_MASK


def pte_none(pte: int | None) -> bool:
    """``pte_none``: no entry at all (absent from the table, or 0)."""
    return not pte


def pte_present(pte: int) -> bool:
    """``pte_present``."""
    return bool(pte & PTE_PRESENT)


def pte_read(pte: int) -> bool:
    return bool(pte & PTE_READ)


def pte_write(pte: int) -> bool:
    """``pte_write``."""
    return bool(pte & PTE_WRITE)


def pte_exec(pte: int) -> bool:
    return bool(pte & PTE_EXEC)


def pte_dirty(pte: int) -> bool:
    """``pte_dirty``."""
    return bool(pte & PTE_DIRTY)


def pte_young(pte: int) -> bool:
    """``pte_young``."""
    return bool(pte & PTE_YOUNG)


def pte_special(pte: int) -> bool:
    """``pte_special``: no struct page to refcount behind this entry."""
    return bool(pte & PTE_SPECIAL)


def pte_noncached(pte: int) -> bool:
    """Cache-inhibited mapping (``pgprot_noncached``)."""
    return bool(pte & PTE_NONCACHED)


def pte_guarded(pte: int) -> bool:
    return bool(pte & PTE_GUARDED)


def pte_protnone(pte: int) -> bool:
    """``pte_protnone`` (NUMA hinting)."""
    return bool(pte & PTE_PROTNONE)


def pte_migration(pte: int) -> bool:
    """``is_migration_entry(pte_to_swp_entry(pte))``."""
    return bool(pte & PTE_MIGRATION)


def pte_hwpoison(pte: int) -> bool:
    """``is_hwpoison_entry(pte_to_swp_entry(pte))``."""
    return bool(pte & PTE_HWPOISON)


def pte_swap(pte: int) -> bool:
    """A swap entry for a swapped-out page."""
    return bool(pte & PTE_SWAP)


def pte_mkwrite(pte: int) -> int:
    return pte | PTE_WRITE


def pte_wrprotect(pte: int) -> int:
    return pte & ~PTE_WRITE


def pte_mkdirty(pte: int) -> int:
    return pte | PTE_DIRTY


def pte_mkclean(pte: int) -> int:
    return pte & ~PTE_DIRTY


def pte_mkyoung(pte: int) -> int:
    return pte | PTE_YOUNG


def pte_mkold(pte: int) -> int:
    return pte & ~PTE_YOUNG


def pte_mkspecial(pte: int) -> int:
    return pte | PTE_SPECIAL


_PROT_BITS = PTE_PRESENT | PTE_READ | PTE_WRITE | PTE_EXEC | PTE_PROTNONE
# What pte_modify keeps (_PAGE_CHG_MASK): pfn, dirty, young, special, cache attributes.


def pte_modify(pte: int, newprot: int) -> int:
    """``pte_modify``: new permission bits, keep pfn, dirty, young, special, caching."""
    return (pte & ~_PROT_BITS) | (newprot & _PROT_BITS)
