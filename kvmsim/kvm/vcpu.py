"""The guest-access loop: translate → fault handler → retry (the vcpu run
loop of ``kvmppc_vcpu_run_hv`` / ``vcpu_enter_guest``, reduced to one access).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define

from kvmsim import footprint
from kvmsim.hooktypes import MMIO, RESUME, FaultResult, MmioResult, Translation
from kvmsim.kvm.dirty import ring_full_exit

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm

LIVELOCK_LIMIT = 32
"""Faults on one access after which the access is declared a livelock.  A
correct handler needs at most a handful (absent entry, then SET_RC)."""

MAPPED = "mapped"
LIVELOCK = "livelock"


@define
class AccessResult:
    """How one guest access ended (read-only by convention: not frozen,
    whose set-up costs more than the rest of a hit).

    :param outcome: ``mapped`` (completed through a stage-2 mapping of RAM),
        ``mmio`` (completed on an I/O frame through stage 2, or by an exit to
        userspace for emulation), ``efault``, ``sigbus``, ``guest_fault``,
        ``async_pf`` or ``livelock``.
    :param translation: the final translate hit, if the access completed
        through stage 2.
    :param faults: how many stage-2 faults the access took.
    :param detail: the handler's last words.
    :param value: what a load returned: the page's contents for RAM (0 where
        nothing was stored: a fresh or zero page), a device's reply for MMIO;
        ``None`` for a store, or an MMIO load no device answered.
    """

    outcome: str
    translation: Translation | None
    faults: int
    detail: str = ""
    value: int | None = None


def device_mmio(
    kvm: Kvm, vcpu: int, pfn: int, offset: int, op: str, size: int, value: int
) -> MmioResult | None:
    """A load or store reached a frame with no ``struct page``: the device
    owning it performs it (the ``mmio_access`` hook), or nobody answers
    (None).  A guest access through its stage-2 entry and a host task's
    through its own mapping (``vcpu`` = :data:`~kvmsim.hooktypes.HOST_VCPU`,
    a ``host_write`` / ``host_read`` step) both come here: on the machine
    both are the same bus access to the same device page, so the model has
    one path for them."""
    r = kvm.hooks.hook.mmio_access(
        kvm=kvm, vcpu=vcpu, pfn=pfn, offset=offset, op=op, size=size, value=value
    )
    tr = kvm.tracer
    if tr.enabled:
        tr.emit(
            "device_mmio",
            pfn=hex(pfn),
            offset=hex(offset),
            op=op,
            vcpu=vcpu,
            claimed=r is not None,
        )
    return r  # type: ignore[no-any-return]


def guest_access(
    kvm: Kvm, vcpu: int, gpa: int, ea: int, op: str, value: int = 0, size: int = 8
) -> AccessResult:
    """Run one guest access to completion (or to the livelock bound)."""
    hooks = kvm.hooks
    translate = hooks.translate
    handle = hooks.handle_page_fault
    tr = kvm.tracer
    phys = kvm.phys
    ram_pages = phys.ram_pages
    mm = kvm.mm
    for n in range(LIVELOCK_LIMIT):
        t = translate(kvm=kvm, vcpu=vcpu, gpa=gpa, ea=ea, op=op)
        # an explored run's footprint recorder (None otherwise), read here
        # and not once per access: recording may resume in the fault
        rec = footprint.REC
        if rec is not None:  # the walk may set the leaf's accessed/dirty bits
            footprint.stage2(gpa, t.page_size or 0, True)
        if not isinstance(t, Translation):
            raise hooks.bad_result("translate", t)  # the arch's bug, not the loop's
        fault = t.fault
        if fault is None:
            pfn = t.pfn
            assert pfn is not None
            if not 0 <= pfn < ram_pages:  # pfn_valid, inline (PhysMem.pfn_valid)
                footprint.opaque()  # devices record nothing
                offset = gpa & ((1 << kvm.page_shift) - 1)
                r = device_mmio(kvm, vcpu, pfn, offset, op, size, value)
                # a frame with no struct page is I/O: the access is MMIO
                # performed by the device through the stage-2 mapping
                return AccessResult(MMIO, t, n, value=None if r is None else r.value)
            # the access is performed on the frame stage 2 maps (a stale
            # entry reads and writes the old frame, as the real CPU would);
            # PhysMem.read_word / write_word, inlined for the hit path
            if rec is not None:
                rec.writes.add(("page", pfn))
            if op == "read":
                contents = phys.contents
                # positional (detail, value): cheaper than keywords on this path
                if not contents:
                    return AccessResult(MAPPED, t, n, "", 0)
                shift = kvm.page_shift
                addr = (pfn << shift) | (gpa & ((1 << shift) - 1))
                return AccessResult(MAPPED, t, n, "", contents.get(addr, 0))
            if op == "write":
                if value or phys.contents:
                    phys.write_word(pfn, gpa & ((1 << kvm.page_shift) - 1), value, size)
                if kvm.dirty.ledger.slots:  # a slot logs: the store is ground truth
                    record_store(kvm, gpa)
            return AccessResult(MAPPED, t, n)
        if tr.enabled:
            tr.emit(
                "kvm_page_fault",
                ph="B",
                gpa=hex(gpa),
                op=op,
                kind=fault.kind,
                code=hex(fault.code),
                mmu_notifier_seq=kvm.mmu_notifier_seq,
                mmu_notifier_count=kvm.mmu_notifier_count,
            )
        r = handle(kvm=kvm, vcpu=vcpu, fault=fault)
        if not isinstance(r, FaultResult):
            raise hooks.bad_result("handle_page_fault", r)
        if mm.held_ends:
            # an invalidation that straddled the fault's retry check ends now
            mm.release_held_ends()
        if tr.enabled:
            tr.emit("kvm_page_fault", ph="E", action=r.action, ret=r.ret, detail=r.detail)
        if r.action == RESUME:
            if kvm.dirty.rings:
                ring_full_exit(kvm, vcpu)  # vcpu_enter_guest: KVM_EXIT_DIRTY_RING_FULL
            sched = mm.sched
            if sched is not None:  # the guest re-executes: other CPUs go on meanwhile
                sched.spin()
            continue
        if r.action == MMIO:
            return AccessResult(MMIO, None, n + 1, r.detail)
        return AccessResult(r.action, None, n + 1, r.detail)
    if tr.enabled:
        tr.emit("livelock", gpa=hex(gpa), faults=LIVELOCK_LIMIT)
    return AccessResult(LIVELOCK, None, LIVELOCK_LIMIT, "no progress")


def record_store(kvm: Kvm, gpa: int) -> None:
    """A guest store to RAM at ``gpa`` completed: the ground truth the
    ``lost_dirty`` checker judges harvests by (per base page, whatever the
    leaf size or the arch's mechanism)."""
    gfn = gpa >> kvm.page_shift
    slot = kvm.memslots.gfn_to_memslot(gfn)
    if slot is not None:
        kvm.dirty.ledger.store(slot.id, gfn - slot.base_gfn)
