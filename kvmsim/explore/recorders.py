"""Recording subclasses of the shared model objects (see
:mod:`kvmsim.footprint` for the keys): :func:`install` swaps a run's
objects to them, :func:`uninstall` swaps them back.  Same slots, no new
state: a swapped object is the same object, only its methods also report
what they touch to :data:`kvmsim.footprint.REC`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from kvmsim import footprint as fp
from kvmsim.host.pfnarray import PfnArray, PfnOwner
from kvmsim.host.pgtable import PageTable, PteMap
from kvmsim.host.physmem import PhysMem
from kvmsim.host.rwsem import RwSem
from kvmsim.kvm.core import SpinLock

_RANGE_MAX = 4096  # keys a range walk may name before it counts as opaque


# ---------------------------------------------------------------- host page table


class RecPteMap(PteMap):
    # (the base class's methods called by name, not through super(): these
    # run at every host page-table access of an explored run)
    __slots__ = ()

    def get(self, vpn: int, default: int | None = None) -> int | None:
        rec = fp.REC
        if rec is not None:
            rec.reads.add(("pt", vpn))
        return PteMap.get(self, vpn, default)

    def __setitem__(self, vpn: int, pte: int) -> None:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("pt", vpn))
        PteMap.__setitem__(self, vpn, pte)

    def pop(self, vpn: int, *default: Any) -> int | None:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("pt", vpn))
        return PteMap.pop(self, vpn, *default)

    def fill_linear(self, vpn: int, n: int, pte: int, stride: int) -> None:
        _range(vpn, vpn + n, True)
        super().fill_linear(vpn, n, pte, stride)

    def items_in(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        _range(lo, hi, False)
        return super().items_in(lo, hi)

    def items(self) -> Iterator[tuple[int, int]]:
        fp.opaque()
        return super().items()

    def __iter__(self) -> Iterator[int]:
        fp.opaque()
        return super().__iter__()

    def __len__(self) -> int:
        fp.opaque()
        return super().__len__()

    def __bool__(self) -> bool:
        fp.opaque()
        return super().__bool__()


def _range(lo: int, hi: int, write: bool, kind: str = "pt") -> None:
    """Keys ``(kind, i)`` for ``lo <= i < hi`` (at least one); too many: opaque."""
    rec = fp.REC
    if rec is None:
        return
    hi = max(hi, lo + 1)
    if hi - lo > _RANGE_MAX:
        rec.opaque = True
        return
    dest = rec.writes if write else rec.reads
    for i in range(lo, hi):
        dest.add((kind, i))


class RecPageTable(PageTable):
    __slots__ = ()

    def _huge_keys(self, hva: int, write: bool) -> None:
        # a lookup reads every huge level that could cover hva (and a level
        # added later is still named: the keys do not depend on self.shifts)
        r = (hva >> self.page_shift) >> 9
        _range(r, r + 1, write, "pmd")

    def find_linux_pte(self, hva: int) -> tuple[int | None, int]:
        self._huge_keys(hva, False)
        return super().find_linux_pte(hva)

    def get_huge(self, hva: int) -> tuple[int, int] | None:
        self._huge_keys(hva, False)
        return super().get_huge(hva)

    def set_huge(self, hva: int, shift: int, entry: int) -> None:
        self._huge_span(hva, shift)
        super().set_huge(hva, shift, entry)

    def clear_huge(self, hva: int, shift: int) -> int | None:
        self._huge_span(hva, shift)
        return super().clear_huge(hva, shift)

    def _huge_span(self, hva: int, shift: int) -> None:
        ps = self.page_shift + 9
        base = (hva >> shift) << shift
        _range(base >> ps, (base + (1 << shift)) >> ps, True, "pmd")

    def huge_in(self, start: int, end: int) -> list[tuple[int, int, int]]:
        ps = self.page_shift + 9
        _range(start >> ps, (end + (1 << ps) - 1) >> ps, False, "pmd")
        return super().huge_in(start, end)

    def items(self) -> Iterator[tuple[int, int, int]]:
        fp.opaque()
        return super().items()


# ---------------------------------------------------------------- struct pages


class RecPfnArray(PfnArray):
    __slots__ = ()

    def get(self, pfn: int, default: Any = None) -> Any:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("page", pfn))
        return PfnArray.get(self, pfn, default)

    def __getitem__(self, pfn: int) -> int:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("page", pfn))
        return PfnArray.__getitem__(self, pfn)

    def __setitem__(self, pfn: int, value: int) -> None:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("page", pfn))
        PfnArray.__setitem__(self, pfn, value)

    def fill(self, start: int, stop: int, value: int) -> None:
        fp.opaque()
        super().fill(start, stop, value)


class RecPfnOwner(PfnOwner):
    __slots__ = ()

    def get(self, pfn: int, default: Any = None) -> Any:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("page", pfn))
        return PfnOwner.get(self, pfn, default)

    def __getitem__(self, pfn: int) -> str:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("page", pfn))
        return PfnOwner.__getitem__(self, pfn)

    def __setitem__(self, pfn: int, owner: str) -> None:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("page", pfn))
        PfnOwner.__setitem__(self, pfn, owner)

    def __contains__(self, pfn: object) -> bool:
        if fp.REC is not None and isinstance(pfn, int):
            fp.REC.writes.add(("page", pfn))
        return super().__contains__(pfn)


#: PhysMem methods whose first argument is a pfn: its block (and its compound
#: head's) is written (reads counted as writes: simpler, never less sound).
_PFN_METHODS = (
    "read_word write_word page_contents put_contents _free _owned compound_head "
    "compound_order page_count page_ref_count owner_of _flag PageHuge PageCompound "
    "PageTransCompound PageTransHuge PageAnon PageReserved SetPageReserved PageHWPoison "
    "SetPageHWPoison PageDirty _set_head_flag SetPageDirty set_page_dirty_lock "
    "ClearPageDirty PageReferenced SetPageReferenced mark_page_accessed get_page "
    "get_page_unless_zero page_cache_get_speculative page_cache_add_speculative put_page "
    "host_get host_put"
).split()
#: PhysMem methods that allocate or look at every page.
_ALLOC_METHODS = ("alloc_pages", "alloc_unrefcounted", "alloc_mmio", "huge_zero_page")
_ALL_METHODS = ("copy_contents", "others_refs", "clear_anomalies")


def _pfn_wrapper(name: str) -> Callable[..., Any]:
    inner = getattr(PhysMem, name)
    head_of = PhysMem.compound_head

    def method(self: PhysMem, pfn: int, *args: Any, **kw: Any) -> Any:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("page", pfn))
            # without a compound page in use every page is its own head
            if self._orders and 0 <= pfn < self.ram_pages:
                rec.writes.add(("page", head_of(self, pfn)))
        return inner(self, pfn, *args, **kw)

    method.__name__ = name
    return method


def _key_wrapper(name: str, key: fp.Key | None) -> Callable[..., Any]:
    inner = getattr(PhysMem, name)

    def method(self: PhysMem, *args: Any, **kw: Any) -> Any:
        rec = fp.REC
        if rec is not None:
            if key is None:
                rec.opaque = True
            else:
                rec.writes.add(key)
        return inner(self, *args, **kw)

    method.__name__ = name
    return method


RecPhysMem: type[PhysMem] = type(
    "RecPhysMem",
    (PhysMem,),
    {
        "__slots__": (),
        **{n: _pfn_wrapper(n) for n in _PFN_METHODS},
        **{n: _key_wrapper(n, fp.ALLOC) for n in _ALLOC_METHODS},
        **{n: _key_wrapper(n, None) for n in _ALL_METHODS},
    },
)


# ---------------------------------------------------------------- locks


class RecSpinLock(SpinLock):
    """``mmu_lock``: taking or dropping it writes the lock and (everything a
    holder does is stage-2 work) the stage-2 structure."""

    __slots__ = ()

    def lock(self, task: str) -> None:
        SpinLock.lock(self, task)
        rec = fp.REC
        if rec is not None:  # in the segment that got it (after the point)
            rec.writes.update((("lock", self.name), fp.S2))

    def unlock(self, task: str) -> None:
        rec = fp.REC
        if rec is not None:
            rec.writes.update((("lock", self.name), fp.S2))
        SpinLock.unlock(self, task)


class RecRwSem(RwSem):
    """``mmap_sem``: readers commute with readers (a read of the lock);
    a writer writes it."""

    __slots__ = ()

    def down_read(self, task: str) -> None:
        RwSem.down_read(self, task)
        rec = fp.REC
        if rec is not None:
            rec.reads.add(("lock", self.name))

    def down_read_trylock(self, task: str) -> bool:
        rec = fp.REC
        if rec is not None:
            rec.reads.add(("lock", self.name))
        return RwSem.down_read_trylock(self, task)

    def up_read(self, task: str) -> None:
        rec = fp.REC
        if rec is not None:
            rec.reads.add(("lock", self.name))
        RwSem.up_read(self, task)

    def down_write(self, task: str) -> None:
        RwSem.down_write(self, task)
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("lock", self.name))

    def up_write(self, task: str) -> None:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("lock", self.name))
        RwSem.up_write(self, task)

    def downgrade_write(self, task: str) -> None:
        rec = fp.REC
        if rec is not None:
            rec.writes.add(("lock", self.name))
        RwSem.downgrade_write(self, task)


# ---------------------------------------------------------------- install

_SWAPS: tuple[tuple[type, type], ...] = (
    (PteMap, RecPteMap),
    (PageTable, RecPageTable),
    (PfnArray, RecPfnArray),
    (PfnOwner, RecPfnOwner),
    (PhysMem, RecPhysMem),
    (SpinLock, RecSpinLock),
    (RwSem, RecRwSem),
)


def _objects(sim: Any) -> list[Any]:
    phys, mm, kvm = sim.phys, sim.mm, sim.kvm
    return [
        mm.pgtable.ptes,
        mm.pgtable,
        phys.refcount,
        phys.flags,
        phys.host_refs,
        phys.owner,
        phys,
        kvm.mmu_lock,
        mm.mmap_sem,
    ]


def install(sim: Any) -> fp.Recorder:
    """Record ``sim``'s footprints from now on (one run at a time)."""
    swap = dict(_SWAPS)
    for obj in _objects(sim):
        rec_cls = swap.get(type(obj))
        if rec_cls is not None:
            obj.__class__ = rec_cls
    fp.REC = rec = fp.Recorder()
    return rec


def uninstall(sim: Any) -> None:
    back = {rec: plain for plain, rec in _SWAPS}
    for obj in _objects(sim):
        plain = back.get(type(obj))
        if plain is not None:
            obj.__class__ = plain
    fp.REC = None


__all__ = ["install", "uninstall"]
