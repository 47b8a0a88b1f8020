"""Generic dirty logging (virt/kvm/kvm_main.c, virt/kvm/dirty_ring.c): each
logging slot's dirty bitmap, the per-vcpu dirty rings, and the ioctls
userspace harvests with — ``KVM_GET_DIRTY_LOG`` (``kvm_get_dirty_log_protect``),
``KVM_CLEAR_DIRTY_LOG`` (``kvm_clear_dirty_log_protect``) and
``KVM_RESET_DIRTY_RINGS`` after collecting the rings.  The arch is reached
through the dirty-logging hooks (:mod:`kvmsim.hookspecs`): it syncs what its
hardware logged into the bitmap and re-arms the pages a harvest took.

Every harvest is also judged against the ground truth of guest stores
(:class:`~kvmsim.kvm.ledger.StoreLedger`): what it should have reported.

Read from: Linux 5.11.0 (mirror CompressionDuck/linux-5.11: kvm_main.c
``mark_page_dirty_in_slot``, ``kvm_get_dirty_log_protect``,
``kvm_clear_dirty_log_protect``, ``kvm_vm_ioctl_reset_dirty_pages``;
dirty_ring.c; x86.c ``vcpu_enter_guest``'s soft-full exit) and 4.16.13
(mirror lizuobin/linux-4.16.13_tiny4412: the same get without manual
protect and rings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from kvmsim.cmodel import KernelOops
from kvmsim.kvm.ledger import StoreLedger
from kvmsim.kvm.memslot import KVM_MEM_LOG_DIRTY_PAGES

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot

BITS_PER_LONG: Final = 64
KVM_DIRTY_RING_RSVD_ENTRIES: Final = 64
"""Entries a ring keeps free past its soft limit (dirty_ring.h, v5.11): a
vcpu that dirties a few more pages before it can exit does not overrun it."""
KVM_DIRTY_RING_MAX_ENTRIES: Final = 65536
KVM_DIRTY_GFN_SIZE: Final = 16  # sizeof(struct kvm_dirty_gfn)
DEFAULT_RING_SIZE: Final = 4096
"""Entries per ring when a ring scenario gives no ``ring_size`` (QEMU's
documented ``dirty-ring-size`` example)."""


class DirtyRing:
    """``struct kvm_dirty_ring`` of one vcpu: ``size`` entries of
    (slot, offset, flags) used as a circular buffer; ``dirty_index`` counts
    pushes, ``reset_index`` resets.  Userspace collects an entry by setting
    its RESET flag (``harvested``)."""

    __slots__ = ("dirty_index", "entries", "reset_index", "size", "soft_limit")

    def __init__(self, size: int, reserved: int) -> None:
        self.size = size
        self.soft_limit = size - reserved
        self.dirty_index = 0
        self.reset_index = 0
        # index & (size - 1) → [slot, offset, state]; state 0 invalid,
        # 1 dirtied (KVM_DIRTY_GFN_F_DIRTY), 2 collected (KVM_DIRTY_GFN_F_RESET)
        self.entries: dict[int, list[int]] = {}

    def used(self) -> int:
        return self.dirty_index - self.reset_index

    def soft_full(self) -> bool:
        """``kvm_dirty_ring_soft_full``."""
        return self.used() >= self.soft_limit

    def full(self) -> bool:
        return self.used() >= self.size


class Bitmap:
    """A slot's ``dirty_bitmap``: 64-bit words by index (absent: zero)."""

    __slots__ = ("words",)

    def __init__(self) -> None:
        self.words: dict[int, int] = {}

    def set(self, rel: int) -> None:
        """``set_bit_le``."""
        i = rel >> 6
        self.words[i] = self.words.get(i, 0) | 1 << (rel & 63)

    def set_range(self, start: int, end: int) -> None:
        for rel in range(start, end):
            self.set(rel)

    def xchg(self, i: int) -> int:
        """``xchg(&word[i], 0)``."""
        return self.words.pop(i, 0)

    def fetch_andnot(self, i: int, mask: int) -> int:
        """``mask & atomic_long_fetch_andnot(mask, &word[i])``: the bits of
        ``mask`` that were set, now clear."""
        old = self.words.get(i, 0)
        new = old & ~mask
        if new:
            self.words[i] = new
        else:
            self.words.pop(i, None)
        return old & mask

    def pages(self) -> tuple[int, ...]:
        """Every set bit, ascending."""
        out: list[int] = []
        for i in sorted(self.words):
            out.extend(_mask_pages(i << 6, self.words[i]))
        return tuple(out)

    def __contains__(self, rel: int) -> bool:
        return bool(self.words.get(rel >> 6, 0) >> (rel & 63) & 1)

    def __len__(self) -> int:
        return sum(bin(w).count("1") for w in self.words.values())


class DirtyLog:
    """The VM's dirty-logging state (what virt/kvm keeps in ``struct kvm``,
    its memslots and vcpus).

    :ivar mode: the mechanism (``[dirty] mode`` or the arch's default).
    :ivar manual_protect: ``kvm->manual_dirty_log_protect`` is set.
    :ivar initially_set: ... with ``KVM_DIRTY_LOG_INITIALLY_SET``.
    :ivar ring_size: entries per vcpu ring (``kvm->dirty_ring_size``); 0: no rings.
    :ivar bitmaps: slot id → the relative gfns marked dirty; a slot is here
        exactly while it logs (``memslot->dirty_bitmap``; with rings the
        kernel allocates none, the model keeps an empty set as the flag).
    :ivar rings: vcpu → its ring (rings only).
    :ivar reports: (step, slot id, gpas) per harvest that returned pages to
        userspace (``-1`` as the slot of a ring reap).
    :ivar overflows: what a full ring or log buffer dropped, one sentence each.
    :ivar ledger: the ground truth of guest stores.
    """

    __slots__ = (
        "bitmaps",
        "caps",
        "initially_set",
        "last_get",
        "ledger",
        "manual_protect",
        "mode",
        "overflows",
        "reports",
        "ring_size",
        "rings",
        "step",
    )

    def __init__(self) -> None:
        self.mode = ""
        self.manual_protect = False
        self.initially_set = False
        self.ring_size = 0
        self.bitmaps: dict[int, Bitmap] = {}
        self.rings: dict[int, DirtyRing] = {}
        self.reports: list[tuple[int, int, tuple[int, ...]]] = []
        self.overflows: list[str] = []
        self.ledger = StoreLedger()
        self.step = -1  # the step the next report belongs to
        self.caps: object = None  # the arch's DirtyCaps, once configured
        self.last_get: dict[int, set[int]] = {}
        """slot id → what its last get returned (userspace's bitmap, which
        QEMU passes back to KVM_CLEAR_DIRTY_LOG)."""

    def logging(self, slot_id: int) -> bool:
        return slot_id in self.bitmaps

    def ring(self, vcpu: int) -> DirtyRing:
        """The vcpu's ring, allocated at its creation (``kvm_vm_ioctl_create_vcpu``)."""
        r = self.rings.get(vcpu)
        if r is None:
            r = self.rings[vcpu] = DirtyRing(self.ring_size, KVM_DIRTY_RING_RSVD_ENTRIES)
        return r


def running_vcpu(kvm: Kvm) -> int | None:
    """``kvm_get_running_vcpu``: the vcpu whose thread runs now, if any."""
    task = kvm.mm.current
    if task.startswith("vcpu") and task[4:].isdigit():
        return int(task[4:])
    return None


def mark_page_dirty_in_slot(kvm: Kvm, slot: Memslot | None, gfn: int, npages: int = 1) -> None:
    """``mark_page_dirty_in_slot`` for ``npages`` pages from ``gfn`` (POWER
    marks a whole large page at once: ``kvmppc_update_dirty_map``): set the
    bits of a logging slot, or push one ring entry per page."""
    d = kvm.dirty
    if slot is None or not slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
        return
    bitmap = d.bitmaps.get(slot.id)
    if bitmap is None:
        return
    rel = gfn - slot.base_gfn
    if not d.ring_size:
        bitmap.set_range(rel, min(rel + npages, slot.npages))
        return
    vcpu = running_vcpu(kvm)
    if vcpu is None:
        # kvm_dirty_ring_get(): no running vcpu to take the ring of (v5.11
        # dereferences it; later kernels WARN and drop the page)
        raise KernelOops("kvm_dirty_ring_push without a running vcpu", "null_deref")
    for r in range(rel, min(rel + npages, slot.npages)):
        dirty_ring_push(kvm, d.ring(vcpu), slot.id, r)


def mark_page_dirty(kvm: Kvm, gfn: int, npages: int = 1) -> None:
    """``mark_page_dirty`` / ``kvm_vcpu_mark_page_dirty``: the slot holding ``gfn``."""
    mark_page_dirty_in_slot(kvm, kvm.memslots.gfn_to_memslot(gfn), gfn, npages)


def dirty_ring_push(kvm: Kvm, ring: DirtyRing, slot: int, offset: int) -> None:
    """``kvm_dirty_ring_push``: the entry at ``dirty_index`` gets (slot,
    offset) and the DIRTY flag.  A full ring is overwritten (the kernel only
    WARNs): the entry it held is lost."""
    idx = ring.dirty_index & (ring.size - 1)
    if ring.full():
        old = ring.entries.get(idx)
        kvm.dirty.overflows.append(
            f"dirty ring full: the entry of slot {old[0] if old else '?'} page "
            f"{old[1] if old else '?'} was overwritten by page {offset} of slot {slot}"
        )
    ring.entries[idx] = [slot, offset, 1]
    ring.dirty_index += 1
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_dirty_ring_push", slot=slot, offset=offset, used=ring.used())


# ---------------------------------------------------------------- slot flags


def set_logging(kvm: Kvm, slot: Memslot, enable: bool) -> Memslot:
    """``KVM_SET_USER_MEMORY_REGION`` toggling ``KVM_MEM_LOG_DIRTY_PAGES``
    (``__kvm_set_memory_region``, ``KVM_MR_FLAGS_ONLY``): allocate the
    bitmap (all set with ``KVM_DIRTY_LOG_INITIALLY_SET``; none with rings),
    install the new slot, then ``kvm_arch_commit_memory_region``; disabling
    frees the bitmap after the arch's commit.  Returns the new slot."""
    d = kvm.dirty
    flags = (
        slot.flags | KVM_MEM_LOG_DIRTY_PAGES if enable else slot.flags & ~KVM_MEM_LOG_DIRTY_PAGES
    )
    new = kvm.memslots.set_flags(slot, flags)
    if enable:
        bitmap = d.bitmaps[new.id] = Bitmap()
        if d.initially_set and not d.ring_size:
            bitmap.set_range(0, new.npages)  # bitmap_set(dirty_bitmap, 0, npages)
        kvm.hooks.hook.dirty_log_enable(kvm=kvm, slot=new, enable=True)
        # stores from now on are judged: QEMU copies every page once after
        # logging is on (the bulk stage), which covers the ones before
        d.ledger.start(new.id)
    else:
        kvm.hooks.hook.dirty_log_enable(kvm=kvm, slot=new, enable=False)
        d.bitmaps.pop(new.id, None)
        d.ledger.stop(new.id)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_set_memory_region", slot=new.id, log_dirty_pages=enable)
    return new


# ------------------------------------------------------------------ bitmaps


def _mask_pages(offset: int, mask: int) -> list[int]:
    """The pages of a word's set bits: ``offset + i`` for bit ``i``."""
    out = []
    i = 0
    while mask:
        if mask & 1:
            out.append(offset + i)
        mask >>= 1
        i += 1
    return out


def get_dirty_log(kvm: Kvm, slot: Memslot) -> tuple[int, ...]:
    """``kvm_vm_ioctl_get_dirty_log`` → ``kvm_get_dirty_log_protect``:
    ``kvm_arch_sync_dirty_log``; then without manual protect, under
    ``mmu_lock``, each non-zero word is exchanged for 0 and its pages
    re-armed (``kvm_arch_mmu_enable_log_dirty_pt_masked``); with manual
    protect the bitmap is returned as it is.  Returns the relative gfns."""
    d = kvm.dirty
    seq = d.ledger.begin((slot.id,))
    kvm.hooks.hook.dirty_log_sync(kvm=kvm, slot=slot)
    bitmap = d.bitmaps[slot.id]
    if d.manual_protect:
        got = bitmap.pages()
        j = d.ledger.peek(slot.id, got, seq, "KVM_GET_DIRTY_LOG")
    else:
        out: list[int] = []
        task = kvm.mm.current
        protect = kvm.hooks.hook.dirty_log_protect
        kvm.mmu_lock.lock(task)
        try:
            for i in range((slot.npages + BITS_PER_LONG - 1) // BITS_PER_LONG):
                if not bitmap.words.get(i):
                    continue
                mask = bitmap.xchg(i)  # xchg(&dirty_bitmap[i], 0)
                offset = i * BITS_PER_LONG
                out.extend(_mask_pages(offset, mask))
                protect(kvm=kvm, slot=slot, gfn_offset=offset, mask=mask)
        finally:
            kvm.mmu_lock.unlock(task)
        got = tuple(sorted(out))
        j = d.ledger.consume(slot.id, got, seq, "KVM_GET_DIRTY_LOG")
    _traced(kvm, "kvm_get_dirty_log", slot, got, j.lost, j.spurious)
    return got


def clear_dirty_log(kvm: Kvm, slot: Memslot, first: int, num: int, passed: set[int]) -> int:
    """``kvm_clear_dirty_log_protect`` for pages ``[first, first + num)``
    with userspace's bitmap ``passed`` (relative gfns): sync, then under
    ``mmu_lock`` per word clear the passed bits that are set
    (``atomic_long_fetch_andnot``) and re-arm those pages.  Returns how
    many pages were cleared."""
    d = kvm.dirty
    d.ledger.begin((slot.id,))
    kvm.hooks.hook.dirty_log_sync(kvm=kvm, slot=slot)
    bitmap = d.bitmaps[slot.id]
    want = {r for r in passed if first <= r < first + num}
    user = Bitmap()
    for r in want:
        user.set(r)
    n = 0
    task = kvm.mm.current
    protect = kvm.hooks.hook.dirty_log_protect
    kvm.mmu_lock.lock(task)
    try:
        for i in sorted(user.words):
            # mask &= atomic_long_fetch_andnot(mask, &dirty_bitmap[i])
            mask = bitmap.fetch_andnot(i, user.words[i])
            if mask:
                n += bin(mask).count("1")
                protect(kvm=kvm, slot=slot, gfn_offset=i * BITS_PER_LONG, mask=mask)
    finally:
        kvm.mmu_lock.unlock(task)
    d.ledger.cleared(slot.id, want)
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvm_clear_dirty_log", slot=slot.id, first=first, num=num, cleared=n, passed=len(want)
        )
    return n


# -------------------------------------------------------------------- rings


def reap_dirty_rings(kvm: Kvm) -> dict[int, tuple[int, ...]]:
    """What QEMU does with the rings (``kvm_dirty_ring_reap``): kick the
    vcpus (their exits sync the arch's hardware log), collect every vcpu's
    dirtied entries in order (marking each collected), then
    ``KVM_RESET_DIRTY_RINGS``.  Returns the relative gfns per slot."""
    d = kvm.dirty
    logging = sorted(d.bitmaps)
    seq = d.ledger.begin(logging)
    for sid in logging:
        slot = kvm.memslots.by_id(sid)
        if slot is not None:
            kvm.hooks.hook.dirty_log_sync(kvm=kvm, slot=slot)
    got: dict[int, set[int]] = {sid: set() for sid in logging}
    for vcpu in sorted(d.rings):
        ring = d.rings[vcpu]
        i = ring.reset_index
        while True:  # kvm_dirty_ring_reap_one: until the first entry not dirtied
            e = ring.entries.get(i & (ring.size - 1))
            if e is None or e[2] != 1:
                break
            got.setdefault(e[0], set()).add(e[1])
            e[2] = 2
            i += 1
    cleared = kvm_vm_ioctl_reset_dirty_pages(kvm)
    out = {sid: tuple(sorted(rels)) for sid, rels in sorted(got.items())}
    for sid, rels in out.items():
        j = d.ledger.consume(sid, rels, seq, "dirty ring reap")
        slot = kvm.memslots.by_id(sid)
        if slot is not None:
            _traced(kvm, "kvm_dirty_ring_reap", slot, rels, j.lost, j.spurious)
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_reset_dirty_rings", cleared=cleared)
    return out


def kvm_vm_ioctl_reset_dirty_pages(kvm: Kvm) -> int:
    """``KVM_RESET_DIRTY_RINGS``: ``kvm_dirty_ring_reset`` on every vcpu's ring."""
    return sum(kvm_dirty_ring_reset(kvm, kvm.dirty.rings[v]) for v in sorted(kvm.dirty.rings))


def kvm_dirty_ring_reset(kvm: Kvm, ring: DirtyRing) -> int:
    """``kvm_dirty_ring_reset``: from ``reset_index``, every collected entry
    is invalidated and its page re-armed, consecutive pages of one slot
    coalesced into a 64-page mask (forwards, or backwards while the mask
    does not overflow) per ``kvm_reset_dirty_gfn``."""
    count = 0
    cur_slot = cur_off = mask = 0
    first = True
    while True:
        e = ring.entries.get(ring.reset_index & (ring.size - 1))
        if e is None or e[2] != 2:
            break
        nslot, noff = e[0], e[1]
        e[2] = 0
        ring.reset_index += 1
        count += 1
        if not first and nslot == cur_slot:
            delta = noff - cur_off
            if 0 <= delta < BITS_PER_LONG:
                mask |= 1 << delta
                continue
            if -BITS_PER_LONG < delta < 0 and (mask << -delta) >> BITS_PER_LONG == 0:
                cur_off = noff
                mask = (mask << -delta) | 1
                continue
        if not first:
            _reset_dirty_gfn(kvm, cur_slot, cur_off, mask)
        cur_slot, cur_off, mask = nslot, noff, 1
        first = False
    if not first:
        _reset_dirty_gfn(kvm, cur_slot, cur_off, mask)
    return count


def _reset_dirty_gfn(kvm: Kvm, sid: int, offset: int, mask: int) -> None:
    """``kvm_reset_dirty_gfn``: a slot that still exists and holds the range
    gets its pages re-armed under ``mmu_lock``."""
    slot = kvm.memslots.by_id(sid)
    if slot is None or offset + mask.bit_length() - 1 >= slot.npages:
        return
    task = kvm.mm.current
    kvm.mmu_lock.lock(task)
    try:
        kvm.hooks.hook.dirty_log_protect(kvm=kvm, slot=slot, gfn_offset=offset, mask=mask)
    finally:
        kvm.mmu_lock.unlock(task)


def ring_full_exit(kvm: Kvm, vcpu: int) -> bool:
    """Before the vcpu enters the guest again (``vcpu_enter_guest``): a
    soft-full ring exits with ``KVM_EXIT_DIRTY_RING_FULL`` and QEMU's vcpu
    thread reaps every ring before it calls ``KVM_RUN`` again
    (``kvm_dirty_ring_reap``).  True if that happened."""
    d = kvm.dirty
    ring = d.rings.get(vcpu)
    if ring is None or not ring.soft_full():
        return False
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_dirty_ring_exit", vcpu=vcpu, used=ring.used())
    for sid, rels in reap_dirty_rings(kvm).items():
        slot = kvm.memslots.by_id(sid)
        base = 0 if slot is None else slot.base_gfn
        d.reports.append((d.step, sid, tuple((base + r) << kvm.page_shift for r in rels)))
    return True


def _traced(
    kvm: Kvm, event: str, slot: Memslot, rels: tuple[int, ...], lost: tuple[int, ...], spurious: int
) -> None:
    if kvm.tracer.enabled:
        shift = kvm.page_shift
        kvm.tracer.emit(
            event,
            slot=slot.id,
            dirty=[hex((slot.base_gfn + r) << shift) for r in rels],
            lost=[hex((slot.base_gfn + r) << shift) for r in lost],
            spurious=spurious,
        )


__all__ = [
    "DEFAULT_RING_SIZE",
    "KVM_DIRTY_GFN_SIZE",
    "KVM_DIRTY_RING_MAX_ENTRIES",
    "KVM_DIRTY_RING_RSVD_ENTRIES",
    "Bitmap",
    "DirtyLog",
    "DirtyRing",
    "clear_dirty_log",
    "get_dirty_log",
    "mark_page_dirty",
    "mark_page_dirty_in_slot",
    "reap_dirty_rings",
    "ring_full_exit",
    "set_logging",
]
