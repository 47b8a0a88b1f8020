"""x86 asynchronous page faults (virt/kvm/async_pf.c, arch/x86/kvm/x86.c,
mmu.c; v4.16).

When ``hva_to_pfn`` reports that the page needs I/O (``*async = true``),
``try_async_pf`` queues a work item instead of sleeping in the vcpu thread:

- ``kvm_arch_setup_async_pf`` → ``kvm_setup_async_pf``: at most
  ``ASYNC_PF_PER_VCPU`` outstanding; the work runs ``async_pf_execute``
  later; ``kvm_arch_async_page_not_present`` records the gfn and either
  injects a #PF with reason "page not present" and a token (the guest has
  written ``MSR_KVM_ASYNC_PF_EN`` with the enable bit: it schedules another
  task) or, when the guest has not enabled async PF, halts the vcpu
  (``KVM_REQ_APF_HALT``) until the page is there.
- A second fault on a gfn whose work is still queued halts the vcpu too.
- ``async_pf_execute`` (a kworker): ``get_user_pages_remote(FOLL_WRITE)``
  with **no page array** (``pages = NULL``, so no page reference is taken
  at all in v4.16) and a ``locked`` pointer, so it may drop ``mmap_sem`` to
  wait for the I/O; then it puts the work on the vcpu's done list.
- ``kvm_check_async_pf_completion`` (each ``vcpu_run`` iteration): for each
  done work, ``kvm_arch_async_page_ready`` re-runs the fault as a prefault
  (error code 0, so the page is mapped before the guest touches it), then
  ``kvm_arch_async_page_present`` clears the gfn, injects "page ready" with
  the token when async PF is enabled, and un-halts the vcpu.

The model runs the kworker deterministically: at an explicit
``apf_complete`` step, or at once when the vcpu halts (it can only proceed
after the work is done).  Guest CPL, ``send_user_only``, nested guests and
interrupt windows are not modelled: ``kvm_can_do_async_pf`` is true.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from attrs import define, field

from kvmsim import footprint
from kvmsim.cmodel import OutParam
from kvmsim.host import gup
from kvmsim.host.constants import FOLL_WRITE
from kvmsim.kvm.pfn import kvm_is_error_hva

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm

ASYNC_PF_PER_VCPU: Final = 64
KVM_ASYNC_PF_ENABLED: Final = 1 << 0
KVM_PV_REASON_PAGE_NOT_PRESENT: Final = 1
KVM_PV_REASON_PAGE_READY: Final = 2
KWORKER: Final = "kworker/apf"


@define(slots=True)
class ApfWork:
    """``struct kvm_async_pf``: one outstanding async fault."""

    token: int
    gfn: int
    gva: int
    hva: int
    done: bool = False


@define(slots=True)
class ApfVcpu:
    """``vcpu->arch.apf`` and ``vcpu->async_pf``.

    :param msr_val: ``MSR_KVM_ASYNC_PF_EN`` as the guest wrote it.
    :param gfns: the gfns with an outstanding work (``apf.gfns`` hash).
    :param queue: outstanding works, in order (``async_pf.queue``).
    :param events: what the guest was told: ``("not_present" | "ready", token, gfn)``.
    :param halt_requested: ``KVM_REQ_APF_HALT`` pending.
    """

    vcpu: int
    msr_val: int = 0
    next_id: int = 0
    gfns: set[int] = field(factory=set)
    queue: list[ApfWork] = field(factory=list)
    events: list[tuple[str, int, int]] = field(factory=list)
    halt_requested: bool = False
    halts: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.msr_val & KVM_ASYNC_PF_ENABLED)


def kvm_pv_enable_async_pf(kvm: Kvm, vcpu: int, enable: bool) -> None:
    """``kvm_pv_enable_async_pf`` (a guest ``wrmsr`` of ``MSR_KVM_ASYNC_PF_EN``);
    disabling clears the completion queue and the gfn hash."""
    footprint.opaque()  # async PF state is not recorded: POR treats it as touching all
    a: ApfVcpu = kvm.arch.vcpu_apf(vcpu)
    a.msr_val = KVM_ASYNC_PF_ENABLED if enable else 0
    if not enable:
        # kvm_clear_async_pf_completion_queue: cancel_work_sync on the works
        # not yet run, free the done ones; kvm_async_pf_hash_reset.
        a.queue.clear()
        a.gfns.clear()
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_pv_enable_async_pf", vcpu=vcpu, msr_val=a.msr_val)


def kvm_find_async_pf_gfn(a: ApfVcpu, gfn: int) -> bool:
    """``kvm_find_async_pf_gfn``."""
    return gfn in a.gfns


def kvm_arch_setup_async_pf(kvm: Kvm, vcpu: int, gva: int, gfn: int, hva: int) -> bool:
    """``kvm_arch_setup_async_pf`` → ``kvm_setup_async_pf``: queue the work
    and tell the guest (or halt the vcpu).  False: do the fault synchronously."""
    footprint.opaque()  # async PF state is not recorded: POR treats it as touching all
    a: ApfVcpu = kvm.arch.vcpu_apf(vcpu)
    token = (a.next_id << 12) | vcpu  # arch.token = (apf.id++ << 12) | vcpu_id
    a.next_id += 1
    if len(a.queue) >= ASYNC_PF_PER_VCPU:
        return False
    if kvm_is_error_hva(hva):
        return False
    work = ApfWork(token=token, gfn=gfn, gva=gva, hva=hva)
    a.queue.append(work)
    kvm_arch_async_page_not_present(kvm, a, work)
    return True


def kvm_arch_async_page_not_present(kvm: Kvm, a: ApfVcpu, work: ApfWork) -> None:
    """``kvm_arch_async_page_not_present``: remember the gfn; inject
    "page not present" if the guest enabled async PF, else halt."""
    footprint.opaque()  # async PF state is not recorded: POR treats it as touching all
    a.gfns.add(work.gfn)
    tr = kvm.tracer
    if not a.enabled:
        a.halt_requested = True
        if tr.enabled:
            tr.emit("kvm_async_pf_not_present", token=hex(work.token), gva=hex(work.gva), halt=True)
        return
    a.events.append(("not_present", work.token, work.gfn))
    if tr.enabled:
        tr.emit(
            "kvm_async_pf_not_present",
            token=hex(work.token),
            gva=hex(work.gva),
            reason="KVM_PV_REASON_PAGE_NOT_PRESENT",
        )


def async_pf_execute(kvm: Kvm, work: ApfWork) -> None:
    """``async_pf_execute`` on a kworker: fault the page in for write, with
    no page array (no reference taken), allowed to drop ``mmap_sem`` to wait."""
    footprint.opaque()  # async PF state is not recorded: POR treats it as touching all
    mm = kvm.mm
    prev = mm.current
    mm.current = KWORKER
    try:
        mm.mmap_sem.down_read(KWORKER)
        locked = OutParam("locked", 1)
        ret = gup.get_user_pages_locked(mm, work.hva, 1, FOLL_WRITE, None, locked)
        if locked.get():
            mm.mmap_sem.up_read(KWORKER)
    finally:
        mm.current = prev
    work.done = True
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvm_async_pf_completed", addr=hex(work.hva), gva=hex(work.gva), gup_ret=ret
        )


def run_pending_work(kvm: Kvm, vcpu: int) -> int:
    """Let the kworker run every queued work of ``vcpu`` not yet run."""
    a: ApfVcpu = kvm.arch.vcpu_apf(vcpu)
    n = 0
    for work in list(a.queue):
        if not work.done:
            async_pf_execute(kvm, work)
            n += 1
    return n


def kvm_check_async_pf_completion(kvm: Kvm, vcpu: int) -> int:
    """``kvm_check_async_pf_completion``: for each done work, prefault the
    page (``kvm_arch_async_page_ready``) and tell the guest
    (``kvm_arch_async_page_present``).  Returns how many completed."""
    from kvmsim_plugins.x86_ept.handler import mmu_page_fault

    a: ApfVcpu = kvm.arch.vcpu_apf(vcpu)
    n = 0
    while True:
        work = next((w for w in a.queue if w.done), None)
        if work is None:
            break
        # kvm_arch_async_page_ready: direct map, so always re-fault
        # (mmu->page_fault with prefault = true)
        mmu_page_fault(kvm, vcpu, work.gva, 0, True)
        kvm_arch_async_page_present(kvm, a, work)
        a.queue.remove(work)
        n += 1
    return n


def kvm_arch_async_page_present(kvm: Kvm, a: ApfVcpu, work: ApfWork) -> None:
    """``kvm_arch_async_page_present``: forget the gfn; "page ready" with the
    token if async PF is enabled; the vcpu is runnable again."""
    footprint.opaque()  # async PF state is not recorded: POR treats it as touching all
    a.gfns.discard(work.gfn)
    if a.enabled:
        a.events.append(("ready", work.token, work.gfn))
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvm_async_pf_ready",
            token=hex(work.token),
            gva=hex(work.gva),
            injected="KVM_PV_REASON_PAGE_READY" if a.enabled else None,
        )


def apf_halt(kvm: Kvm, vcpu: int) -> None:
    """``KVM_REQ_APF_HALT`` in ``vcpu_enter_guest``: the vcpu is halted
    (``apf.halted``) and blocks until a completion is ready; the kworker
    runs meanwhile.  Then ``vcpu_run`` checks the completions and resumes."""
    footprint.opaque()  # async PF state is not recorded: POR treats it as touching all
    a: ApfVcpu = kvm.arch.vcpu_apf(vcpu)
    a.halt_requested = False
    a.halts += 1
    if kvm.tracer.enabled:
        kvm.tracer.emit("kvm_apf_halt", vcpu=vcpu, queued=len(a.queue))
    run_pending_work(kvm, vcpu)
    kvm_check_async_pf_completion(kvm, vcpu)
