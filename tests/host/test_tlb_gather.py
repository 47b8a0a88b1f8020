"""The mmu_gather phases of a host unmap: ``tlb_flush`` and ``page_freed``.

v4.16 semantics (kvmsim.host.tlb): munmap, MADV_DONTNEED and hole punching
clear the entries inside the notifier pair but drop the pages' references
only after the TLB flush, which ``tlb_finish_mmu`` does after
``invalidate_range_end``; a dirty page-cache page forces the flush (and the
free) inside the pair.  mprotect flushes after its pairs, migration inside
its pair, and a migrated page's old frame is dropped last.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmsim.host import Mm, RecordingNotifier, host_write, map_backing, migrate_page
from kvmsim.host import madvise as mad
from kvmsim.host.events import host_read
from kvmsim.host.pte import pte_pfn

PHASES = (
    "invalidate_range_start",
    "host_pte_changed",
    "invalidate_range_end",
    "tlb_flush",
    "page_freed",
)


def _watch(mm: Mm, look: Callable[[], object]) -> list[tuple[str, object]]:
    """Record, at every host phase point, its name and ``look()`` then.
    A race point fires once, so it is re-armed each time."""
    seen: list[tuple[str, object]] = []

    def arm(name: str) -> None:
        def cb() -> None:
            seen.append((name, look()))
            arm(name)

        mm.race_points[name] = cb

    for name in PHASES:
        arm(name)
    return seen


def test_munmap_frees_after_invalidate_range_end(mm: Mm, rec: RecordingNotifier) -> None:
    phys = mm.phys
    vma = mm.mmap(2 * mm.page_size, prot="rw", shared=False)
    host_write(mm, vma.start)
    pfn = pte_pfn(mm.pgtable.get_pte(vma.start) or 0)
    seen = _watch(mm, lambda: (pfn in phys.freed, mm.pgtable.get_pte(vma.start), len(rec.calls)))
    rec.calls.clear()
    assert mm.munmap(vma.start, 2 * mm.page_size) == 0
    assert [n for n, _ in seen] == list(PHASES)
    state = dict(seen)
    # cleared inside the pair, the page still referenced by the gather
    assert state["host_pte_changed"] == (False, None, 1)
    # the flush comes after invalidate_range_end; the page is freed after it
    assert state["tlb_flush"] == (False, None, 2)
    assert state["page_freed"] == (True, None, 2)


def test_madvise_dontneed_gathers_too(mm: Mm) -> None:
    phys = mm.phys
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    host_write(mm, vma.start)
    pfn = pte_pfn(mm.pgtable.get_pte(vma.start) or 0)
    seen = _watch(mm, lambda: pfn in phys.freed)
    assert mad.sys_madvise(mm, vma.start, mm.page_size, mad.MADV_DONTNEED) == 0
    assert seen == [
        ("invalidate_range_start", False),
        ("host_pte_changed", False),
        ("invalidate_range_end", False),
        ("tlb_flush", False),
        ("page_freed", True),
    ]


def test_nothing_cleared_no_flush(mm: Mm) -> None:
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)  # never touched
    seen = _watch(mm, lambda: None)
    assert mm.munmap(vma.start, mm.page_size) == 0
    assert "tlb_flush" not in [n for n, _ in seen] and "page_freed" not in [n for n, _ in seen]


def test_dirty_page_cache_page_flushes_inside_the_pair(mm: Mm) -> None:
    """zap_pte_range's force_flush: a dirty shared file page is flushed and
    its reference dropped before invalidate_range_end."""
    vma = map_backing(mm, name="f", size=mm.page_size, backing="shmem", prot="rw", shared=True)
    host_write(mm, vma.start)
    seen = _watch(mm, lambda: None)
    assert mm.munmap(vma.start, mm.page_size) == 0
    assert [n for n, _ in seen] == [
        "invalidate_range_start",
        "tlb_flush",
        "page_freed",
        "host_pte_changed",
        "invalidate_range_end",
    ]


def test_clean_page_cache_page_waits_for_tlb_finish(mm: Mm) -> None:
    vma = map_backing(mm, name="f", size=mm.page_size, backing="shmem", prot="r", shared=True)
    phys = mm.phys
    host_read(mm, vma.start)
    assert mm.pgtable.get_pte(vma.start) is not None
    seen = _watch(mm, lambda: None)
    assert mm.munmap(vma.start, mm.page_size) == 0
    assert [n for n, _ in seen] == list(PHASES)
    assert phys.others_refs() == {}


def test_mprotect_flushes_after_the_pairs(mm: Mm) -> None:
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    host_write(mm, vma.start)
    seen = _watch(mm, lambda: None)
    assert mm.mprotect(vma.start, mm.page_size, "r") == 0
    assert [n for n, _ in seen] == ["invalidate_range_start", "invalidate_range_end", "tlb_flush"]


def test_hugetlb_mprotect_flushes_inside_the_pair(mm: Mm) -> None:
    vma = map_backing(
        mm,
        name="h",
        size=2 << 20,
        backing="hugetlbfs",
        prot="rw",
        shared=False,
        huge_shift=21,
        populate=True,
    )
    seen = _watch(mm, lambda: None)
    assert mm.mprotect(vma.start, 2 << 20, "r") == 0
    assert [n for n, _ in seen] == ["invalidate_range_start", "tlb_flush", "invalidate_range_end"]


def test_migration_flushes_inside_and_drops_the_old_page_last(mm: Mm) -> None:
    phys = mm.phys
    vma = mm.mmap(mm.page_size, prot="rw", shared=False)
    host_write(mm, vma.start)
    old = pte_pfn(mm.pgtable.get_pte(vma.start) or 0)
    seen = _watch(mm, lambda: (old in phys.freed, pte_pfn(mm.pgtable.get_pte(vma.start) or 0)))
    assert migrate_page(mm, vma.start) == 0
    names = [n for n, _ in seen]
    assert names == ["invalidate_range_start", "tlb_flush", "invalidate_range_end", "page_freed"]
    new = pte_pfn(mm.pgtable.get_pte(vma.start) or 0)
    assert new != old
    # the new entry is installed before the old frame goes
    assert dict(seen)["page_freed"] == (True, new)
