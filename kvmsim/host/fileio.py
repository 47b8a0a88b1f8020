"""``write(2)`` to a file through its page cache (mm/filemap.c
``generic_perform_write``, mm/shmem.c ``shmem_write_begin``; v4.16).

What a VMM does to fill guest memory without touching the guest's mapping:
QEMU's postcopy with shared memory, or a snapshot server filling a memfd,
writes the file; the page lands in the page cache and no PTE of any mapping
changes (the next fault on such a mapping is a *minor* fault, which
userfaultfd's MINOR mode reports).
"""

from __future__ import annotations

from kvmsim.host.physmem import PhysMem
from kvmsim.host.vma import File

__all__ = ["file_write"]


def file_write(phys: PhysMem, f: File, index: int, value: int, owner: str = "") -> int:
    """Store the 8 bytes ``value`` at the start of page ``index`` of ``f``:
    ``shmem_getpage(SGP_WRITE)`` / ``grab_cache_page_write_begin`` finds the
    page cache page or adds a new one (read back first when it was evicted:
    its index is in ``needs_io``), then the copy; the page is dirtied.
    Returns the page's pfn."""
    page = f.cache.get(index)
    if page is None:
        kind = "file"
        page = phys.alloc_pages(0, owner=owner or f"pagecache:{f.name}", kind=kind)
        phys.put_contents(page, f.disk.pop(index, {}))
        f.cache[index] = page
        f.needs_io.discard(index)
    phys.write_word(page, 0, value)
    phys.SetPageDirty(page)
    return page
