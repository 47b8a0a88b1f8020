"""Flag values of the host mm model (include/linux/mm.h, mm_types.h, v4.16).

Numeric values are kvmsim's own where the kernel's are arch-specific; only
their meaning matters.  Page table entries are plain ``int``s: the pfn above
:data:`PTE_PFN_SHIFT`, the bits below (see :mod:`kvmsim.host.pte`).
"""

from __future__ import annotations

from typing import Final

# vm_flags (include/linux/mm.h)
VM_READ: Final = 0x00000001
VM_WRITE: Final = 0x00000002
VM_EXEC: Final = 0x00000004
VM_SHARED: Final = 0x00000008
VM_MAYREAD: Final = 0x00000010
VM_MAYWRITE: Final = 0x00000020
VM_MAYEXEC: Final = 0x00000040
VM_MAYSHARE: Final = 0x00000080
VM_PFNMAP: Final = 0x00000400
VM_IO: Final = 0x00004000
VM_DONTEXPAND: Final = 0x00040000
VM_HUGETLB: Final = 0x00400000
VM_MIXEDMAP: Final = 0x10000000
VM_DONTDUMP: Final = 0x04000000
VM_HUGEPAGE: Final = 0x20000000  # madvise(MADV_HUGEPAGE): THP allowed here

# gup flags (FOLL_*)
FOLL_WRITE: Final = 0x01
FOLL_TOUCH: Final = 0x02
FOLL_GET: Final = 0x04
FOLL_DUMP: Final = 0x08
FOLL_FORCE: Final = 0x10
FOLL_NOWAIT: Final = 0x20
FOLL_HWPOISON: Final = 0x100
FOLL_TRIED: Final = 0x800

# fault flags (FAULT_FLAG_*)
FAULT_FLAG_WRITE: Final = 0x01
FAULT_FLAG_ALLOW_RETRY: Final = 0x04
FAULT_FLAG_RETRY_NOWAIT: Final = 0x08
FAULT_FLAG_KILLABLE: Final = 0x10
FAULT_FLAG_TRIED: Final = 0x20
FAULT_FLAG_USER: Final = 0x40
FAULT_FLAG_INSTRUCTION: Final = 0x100

# handle_mm_fault results (VM_FAULT_*)
VM_FAULT_OOM: Final = 0x0001
VM_FAULT_SIGBUS: Final = 0x0002
VM_FAULT_MAJOR: Final = 0x0004
VM_FAULT_WRITE: Final = 0x0008
VM_FAULT_HWPOISON: Final = 0x0010
VM_FAULT_HWPOISON_LARGE: Final = 0x0020
VM_FAULT_SIGSEGV: Final = 0x0040
VM_FAULT_NOPAGE: Final = 0x0100
VM_FAULT_LOCKED: Final = 0x0200
VM_FAULT_RETRY: Final = 0x0400
VM_FAULT_FALLBACK: Final = 0x0800
VM_FAULT_DONE_COW: Final = 0x1000
VM_FAULT_ERROR: Final = (
    VM_FAULT_OOM
    | VM_FAULT_SIGBUS
    | VM_FAULT_SIGSEGV
    | VM_FAULT_HWPOISON
    | VM_FAULT_HWPOISON_LARGE
    | VM_FAULT_FALLBACK
)

# Page table entry bits (a neutral encoding of pte_t; _PAGE_* on powerpc).
PTE_PRESENT: Final = 0x001
PTE_READ: Final = 0x002
PTE_WRITE: Final = 0x004
PTE_EXEC: Final = 0x008
PTE_DIRTY: Final = 0x010
PTE_YOUNG: Final = 0x020  # accessed
PTE_SPECIAL: Final = 0x040  # no struct page to refcount (remap_pfn_range, vm_insert_pfn, zero page)
# cache-inhibited (_PAGE_NON_IDEMPOTENT / _PAGE_TOLERANT, pgprot_noncached)
PTE_NONCACHED: Final = 0x080
PTE_GUARDED: Final = 0x100  # guarded (no speculative access)
PTE_PROTNONE: Final = 0x200  # NUMA hinting
# Non-present swap-type entries: the pfn field then holds the old pfn.
PTE_MIGRATION: Final = 0x400  # migration entry (try_to_unmap(TTU_MIGRATION))
PTE_HWPOISON: Final = 0x800  # hwpoison entry (memory_failure)
PTE_PFN_SHIFT: Final = 16

PTE_CACHE_BITS: Final = PTE_NONCACHED | PTE_GUARDED
"""The bits of a pgprot that carry the cache attributes."""

# page flags (struct page.flags) of the model
PG_RESERVED: Final = 0x01
PG_HWPOISON: Final = 0x02
PG_DIRTY: Final = 0x04
PG_REFERENCED: Final = 0x08
PG_HEAD: Final = 0x10  # head of a compound page
PG_HUGE: Final = 0x20  # hugetlbfs compound page (PageHuge)
PG_THP: Final = 0x40  # transparent huge page (PageTransHuge)

# Added by the host mm model.
PTE_SWAP: Final = 0x1000  # swap entry: the page was swapped out (needs I/O to fault back in)
PG_ANON: Final = 0x80  # PageAnon: an anonymous page (not in a file's page cache)
# !PageSwapBacked on an anonymous page: MADV_FREE made it lazily freeable
# (reclaim discards it unless it was dirtied again)
PG_LAZYFREE: Final = 0x100
THP_SHIFT: Final = 21  # HPAGE_PMD_SHIFT of the model (x86 and ppc64 radix, 4K and 64K pages)
TASK_SIZE: Final = 1 << 47  # user address space limit used by access_ok

PTE_LEAF: Final = 0x4000  # _PAGE_PTE: the entry is a leaf, not a pointer to a table
