"""POWER9 radix dirty logging (mode ``dirty_bit``, the only one): the
partition-scoped C bit (``_PAGE_DIRTY``), per handler version.

POWER9 does not set R or C in a partition-scoped entry itself: an access
that would have to (a store through an entry without C) takes an HDSI with
``DSISR_SET_RC`` and KVM sets the bits (``kvmppc_book3s_radix_page_fault``,
``kvmppc_hv_handle_set_rc`` from v4.17; see :mod:`.mmu` ``translate``).  A
fault that installs a writable entry sets C at once.  ``KVM_GET_DIRTY_LOG``
walks every page of the slot (``kvmppc_hv_get_dirty_log_radix`` →
``kvm_radix_test_clear_dirty``): a present entry with C is reported, as many
base pages as it maps from the page where the walk found it
(``set_dirty_bits(map, i, npages)``), and loses C (``kvmppc_radix_update_pte``
+ ``tlbie``); the walk then skips the rest of a large entry.  What an entry
held when it was unmapped goes to the slot's bitmap
(``kvmppc_update_dirty_map``), which the ioctl ORs in.

Versions:

- v4.15, v4.16: large entries are made while logging; ``kvm_unmap_radix``
  hands ``kvmppc_update_dirty_map`` a page *count* where it takes a size in
  bytes, so a dirty large entry unmapped by the MMU notifier marks one page
  (:func:`unmapped`); ``kvm_radix_test_clear_dirty`` takes no lock.
- v4.17: ``kvm_unmap_radix`` passes the size (``1ul << shift``), from the
  page the invalidation reached first (not the entry's start: a range
  beginning inside a large entry marks from there); the harvest takes
  ``mmu_lock``; large entries are still made while logging.
- v6.13: setting or clearing ``KVM_MEM_LOG_DIRTY_PAGES`` flushes the slot
  (``kvmppc_radix_flush_memslot``: every present entry unmapped, its C
  kept in the bitmap, ``mmu_notifier_seq`` bumped) and faults map only base
  pages while logging (``large_enable``), so the harvest meets base pages.

Read from: Linux 4.15.1 (mirror Kent-Hu/linux-4.15.1) and 4.16.13 (mirror
lizuobin/linux-4.16.13_tiny4412): arch/powerpc/kvm/book3s_64_mmu_radix.c
``kvm_unmap_radix``, ``kvm_radix_test_clear_dirty``,
``kvmppc_hv_get_dirty_log_radix``, book3s_hv_rm_mmu.c
``kvmppc_update_dirty_map``, book3s_hv.c ``kvm_vm_ioctl_get_dirty_log_hv``;
a v4.17-era book3s_64_mmu_radix.c (``kvm_unmap_radix`` with ``psize =
1ul << shift``; found by its text in the code corpus, its tree not
identified); Linux 5.11.0 (mirror CompressionDuck/linux-5.11) for v6.13's
``kvmppc_core_commit_memory_region_hv`` → ``kvmppc_radix_flush_memslot``,
``kvmppc_unmap_pte`` and ``large_enable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmsim.hooktypes import DirtyCaps
from kvmsim.host.constants import PTE_DIRTY, PTE_PRESENT
from kvmsim.kvm.dirty import mark_page_dirty, mark_page_dirty_in_slot

if TYPE_CHECKING:
    from kvmsim_plugins.ppc_radix.mmu import RadixState

    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot

CAPS = DirtyCaps(
    modes=("dirty_bit",),
    missing={
        "wp": "radix dirty logging harvests the partition-scoped C bits; nothing is "
        "write-protected",
        "pml": "pml is an Intel VMX feature; POWER9 radix tracks stores with C bits",
        "ring": "powerpc has no KVM_CAP_DIRTY_LOG_RING (x86 from v5.11, arm64 from v6.1)",
        "manual_protect": "powerpc does not select KVM_GENERIC_DIRTYLOG_READ_PROTECT: "
        "no KVM_CLEAR_DIRTY_LOG",
        "initially_set": "no KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 on powerpc",
    },
)


def enable(kvm: Kvm, slot: Memslot, on: bool) -> bool:
    """``kvmppc_core_commit_memory_region_hv``: v6.13 flushes the slot when
    ``KVM_MEM_LOG_DIRTY_PAGES`` changes (``kvmppc_radix_flush_memslot``),
    so that logging meets base pages and, after it, large ones come back;
    earlier versions do nothing."""
    st: RadixState = kvm.arch
    if st.version == "v6.13":
        flush_memslot(kvm, slot)
    return True


def flush_memslot(kvm: Kvm, slot: Memslot) -> None:
    """``kvmppc_radix_flush_memslot``: under ``mmu_lock``, every present
    entry over the slot's pages is unmapped (``kvmppc_unmap_pte``, its C
    marked in the bitmap), then ``mmu_notifier_seq`` is bumped so that a
    fault that read the old slot retries."""
    st: RadixState = kvm.arch
    tree = st.tree
    ps = tree.page_shift
    task = kvm.mm.current
    n = 0
    kvm.mmu_lock.lock(task)
    try:
        gpa = slot.base_gfn << ps
        end = (slot.base_gfn + slot.npages) << ps
        while gpa < end:
            table, idx, shift = tree.find_pte(gpa)
            v = None if table is None else table.get(idx)
            if table is not None and isinstance(v, int) and v & PTE_PRESENT:
                size = 1 << (shift or ps)
                table.pop(idx)
                tree.forget(gpa & ~(size - 1), v, shift or ps)
                kvm.stage2_changed(gpa)
                unmapped(kvm, slot, gpa, shift, v)
                n += 1
            gpa += 1 << ps
        kvm.mmu_notifier_seq += 1
    finally:
        kvm.mmu_lock.unlock(task)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvmppc_radix_flush_memslot", slot=slot.id, unmapped=n)


def unmapped(kvm: Kvm, slot: Memslot | None, gpa: int, shift: int, old: int) -> None:
    """What unmapping entry ``old`` (reached at ``gpa``, ``shift`` 0 for a
    base page) leaves in the slot's bitmap when it had C: v4.15/v4.16
    ``kvm_unmap_radix`` pass ``1 << (shift - PAGE_SHIFT)`` to
    ``kvmppc_update_dirty_map``, which takes bytes and rounds them up to one
    page; later versions pass the entry's size in bytes, counted from the
    page ``gpa`` names."""
    if not old & PTE_DIRTY:
        return
    st: RadixState = kvm.arch
    ps = st.tree.page_shift
    npages = 1 << (shift - ps) if shift else 1
    if st.version in ("v4.15", "v4.16"):
        npages = (npages + (1 << ps) - 1) >> ps  # a count read as bytes: one page
    if slot is None:
        mark_page_dirty(kvm, gpa >> ps, npages)
    else:
        mark_page_dirty_in_slot(kvm, slot, gpa >> ps, npages)


def replaced(kvm: Kvm, base: int, size: int, old: int) -> None:
    """``kvmppc_create_pte`` removing a present entry (a large one in the
    way, or v4.15/v4.16 invalidating a base page before rewriting it): its
    C goes to the bitmap for the whole entry, from its start (v4.16
    ``kvmppc_update_dirty_map(memslot, gfn, PMD_SIZE)``, ``mark_page_dirty``;
    v4.17+ ``kvmppc_unmap_pte`` of the aligned gpa)."""
    if old & PTE_DIRTY:
        ps = kvm.page_shift
        mark_page_dirty(kvm, base >> ps, max(1, size >> ps))


def sync(kvm: Kvm, slot: Memslot) -> bool:
    """``kvm_vm_ioctl_get_dirty_log_hv`` → ``kvmppc_hv_get_dirty_log_radix``
    into the buffer the ioctl ORs with the bitmap (here: into the bitmap the
    core then reads and clears)."""
    st: RadixState = kvm.arch
    tree = st.tree
    ps = tree.page_shift
    locked = st.version not in ("v4.15", "v4.16")
    task = kvm.mm.current
    found: list[tuple[int, int]] = []
    i = 0
    while i < slot.npages:
        gpa = (slot.base_gfn + i) << ps
        table, idx, shift = tree.find_pte(gpa)
        v = None if table is None else table.get(idx)
        npages = 0
        if table is not None and isinstance(v, int) and v & PTE_PRESENT and v & PTE_DIRTY:
            # kvm_radix_test_clear_dirty: C cleared (kvmppc_radix_update_pte), tlbie
            npages = 1 << (shift - ps) if shift else 1
            if locked:
                kvm.mmu_lock.lock(task)
            try:
                cur = table.get(idx)
                if isinstance(cur, int):
                    tree.hits.pop(cur, None)
                    table[idx] = cur & ~PTE_DIRTY
                    kvm.stage2_changed(gpa)
            finally:
                if locked:
                    kvm.mmu_lock.unlock(task)
        if npages:
            found.append((i, npages))  # set_dirty_bits(map, i, npages)
            i += npages
        else:
            i += 1
    for i, npages in found:
        mark_page_dirty_in_slot(kvm, slot, slot.base_gfn + i, npages)
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvmppc_hv_get_dirty_log_radix",
            slot=slot.id,
            dirty=[hex((slot.base_gfn + i) << ps) for i, _ in found],
            pages=sum(n for _, n in found),
        )
    return True
