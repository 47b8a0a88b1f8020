"""Property test: whatever the host does, references taken through gup and
dropped with put_page balance, and the host never records an anomaly."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmsim.host import (
    Mm,
    PhysMem,
    __get_user_pages_fast,
    get_user_pages_fast,
    get_user_pages_unlocked,
    host_write,
    map_backing,
    memory_failure,
    migrate_page,
    split_thp,
    unmap_mapping_range,
)
from kvmsim.host.constants import FOLL_WRITE
from kvmsim.host.pte import pte_pfn, pte_present

BACKINGS = [
    ("anon", {}),
    ("anon", {"thp": True}),
    ("shmem", {}),
    ("file", {}),
    ("hugetlbfs", {"huge_shift": 21}),
    ("mixedmap", {"pfn_kind": "ram"}),
    ("pfnmap_fault", {"pfn_kind": "mmio", "fault_retry": 1}),
]

op = st.tuples(
    st.sampled_from(
        [
            "gup_fast",
            "gup",
            "gup_w",
            "fast_only",
            "write",
            "put",
            "munmap",
            "mprotect",
            "migrate",
            "split",
            "poison",
            "unmap_mapping",
        ]
    ),
    st.integers(0, len(BACKINGS) - 1),
    st.integers(0, 1023),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=25), shift=st.sampled_from([12, 16]))
def test_references_balance(ops: list[tuple[str, int, int]], shift: int) -> None:
    phys = PhysMem(shift, ram_pages=1 << 20)
    mm = Mm(phys)
    vmas = [
        map_backing(
            mm,
            name=f"v{i}",
            size=4 << 20,
            backing=b,
            prot="rw",
            shared=b not in ("anon", "file"),
            **kw,
        )  # type: ignore[arg-type]
        for i, (b, kw) in enumerate(BACKINGS)
    ]
    held: list[int] = []
    ps = mm.page_size
    for name, vi, off in ops:
        vma = vmas[vi]
        hva = vma.start + (off * ps) % (vma.end - vma.start)
        if name == "gup_fast":
            get_user_pages_fast(mm, hva, 2, 1, held)
        elif name == "gup":
            get_user_pages_unlocked(mm, hva, 1, held, 0)
        elif name == "gup_w":
            get_user_pages_unlocked(mm, hva, 3, held, FOLL_WRITE)
        elif name == "fast_only":
            __get_user_pages_fast(mm, hva, 4, 0, held)
        elif name == "write":
            host_write(mm, hva)
        elif name == "put" and held:
            phys.put_page(held.pop(off % len(held)))
        elif name == "munmap":
            mm.munmap(hva & ~((2 << 20) - 1), 2 << 20)
        elif name == "mprotect":
            mm.mprotect(hva & ~(ps - 1), ps, "r" if off % 2 else "rw")
        elif name == "migrate":
            migrate_page(mm, hva, strict_refcount=bool(off % 2))
        elif name == "split":
            split_thp(mm, hva)
        elif name == "poison":
            e, _ = mm.pgtable.find_linux_pte(hva)
            if e is not None and pte_present(e) and phys.pfn_valid(pte_pfn(e)):
                if not phys.PageReserved(pte_pfn(e)):
                    memory_failure(mm, pte_pfn(e))
        elif name == "unmap_mapping" and vma.file is not None:
            unmap_mapping_range(vma.file, 0, 0, bool(off % 2))
        assert not mm.mmap_sem.is_locked()
    for p in held:
        phys.put_page(p)
    assert phys.anomalies == []
    assert phys.others_refs() == {}
