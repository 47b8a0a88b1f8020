"""``struct vm_area_struct``, ``vm_operations_struct``, ``struct vm_fault``
and a minimal ``struct file`` with its page cache (include/linux/mm_types.h,
mm.h, fs.h; v4.16)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attrs import define, field

from kvmsim.host.constants import VM_HUGETLB, VM_IO, VM_MAYWRITE, VM_PFNMAP, VM_SHARED

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm

__all__ = ["File", "VmFault", "VmOps", "Vma", "is_cow_mapping"]


@define(slots=True)
class VmOps:
    """``struct vm_operations_struct``: only ``->fault`` is modelled.

    ``page_mkwrite`` is a flag: a shared writable file mapping with it (or
    with dirty accounting) is write-notified.
    """

    fault: Callable[[VmFault], int] | None
    name: str = ""
    page_mkwrite: bool = False


@define(slots=True)
class File:
    """A ``struct file`` / ``address_space``.

    :param size: in bytes.
    :param readonly: opened read-only (no shared writable mapping).
    :param shmem: tmpfs/shmem (no dirty accounting, so no write-notify;
        pages never need I/O unless marked).
    :param cache: page cache, file page index → pfn (the cache holds one
        host reference on each page).
    :param mapping: the vmas mapping this file (``i_mmap``), for
        ``unmap_mapping_range``.
    :param needs_io: page indexes not yet read from disk: a fault on them
        needs I/O (``FOLL_NOWAIT`` gets VM_FAULT_RETRY).
    :param disk: what a page evicted from the cache held, by index (written
        back, or in swap for tmpfs), read into the new page on the next fault.
    """

    name: str
    size: int
    readonly: bool = False
    shmem: bool = False
    hugetlbfs: bool = False
    cache: dict[int, int] = field(factory=dict)
    mapping: list[Vma] = field(factory=list)
    needs_io: set[int] = field(factory=set)
    disk: dict[int, dict[int, int]] = field(factory=dict)
    private_data: Any = None


@define(slots=True, eq=False)
class Vma:
    """``struct vm_area_struct``.

    ``page_prot`` is ``vm_page_prot`` as PTE_* bits (including PTE_YOUNG,
    which the kernel's protections carry as _PAGE_ACCESSED); a private
    writable mapping has no PTE_WRITE there (write faults add it after COW).
    ``huge_shift`` is the hugetlbfs page shift (0 if none); ``thp`` allows
    transparent huge pages (VM_HUGEPAGE).
    """

    start: int
    end: int
    flags: int
    pgoff: int = 0
    page_prot: int = 0
    ops: VmOps | None = None
    file: File | None = None
    huge_shift: int = 0
    thp: bool = False
    name: str = ""
    mm: Mm | None = None
    private_data: Any = None

    def is_anonymous(self) -> bool:
        """``vma_is_anonymous``: no vm_ops."""
        return self.ops is None

    def is_hugetlb(self) -> bool:
        """``is_vm_hugetlb_page``."""
        return bool(self.flags & VM_HUGETLB)

    def is_pfnmap(self) -> bool:
        return bool(self.flags & (VM_IO | VM_PFNMAP))

    def npages(self, page_shift: int) -> int:
        """``vma_pages``."""
        return (self.end - self.start) >> page_shift

    def __repr__(self) -> str:
        return (
            f"Vma({self.name or '?'} {self.start:#x}-{self.end:#x} flags={self.flags:#x} "
            f"pgoff={self.pgoff:#x})"
        )


@define(slots=True)
class VmFault:
    """``struct vm_fault``: what a ``->fault`` handler sees.

    ``pgoff = vm_pgoff + ((address - vm_start) >> PAGE_SHIFT)``.  A handler
    that returns a page (not NOPAGE) stores its pfn in ``page`` holding a
    reference, as ``vmf->page`` does.
    """

    vma: Vma
    address: int
    pgoff: int
    flags: int
    page: int | None = None


def is_cow_mapping(flags: int) -> bool:
    """``is_cow_mapping``: private and may become writable."""
    return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE
