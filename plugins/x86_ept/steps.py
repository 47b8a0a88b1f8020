"""Scenario steps the x86 EPT plugin adds.

- ``swap_out`` (``vma``, ``offset``, ``size``; one page by default): host
  reclaim makes each page of the range need I/O on its next fault
  (``Mm.mark_needs_io``: anonymous pages go to swap, file pages leave the
  page cache), with the MMU-notifier calls reclaim makes.  This is how a
  scenario gets a page that ``FOLL_NOWAIT`` gup cannot fault in, so that
  ``hva_to_pfn`` sets ``*async``.
- ``async_pf`` (``vcpu``, ``enable`` = true): the guest writes
  ``MSR_KVM_ASYNC_PF_EN`` (``kvm_pv_enable_async_pf``).
- ``apf_complete`` (``vcpu``): the kworker runs the vcpu's queued async-PF
  work (``async_pf_execute``), then the vcpu's next entry processes the
  completions: the page is prefaulted and "page ready" is injected
  (``kvm_check_async_pf_completion``).
- ``age`` and ``dirty_log`` are core steps now (kvmsim.hoststeps): the plugin
  answers ``age`` with ``notifier_age_gfn``
  (:func:`kvmsim_plugins.x86_ept.ept.age_gfn_range`) and ``dirty_log``
  through the dirty-logging hooks (:mod:`kvmsim_plugins.x86_ept.dirty`).
- ``nx_huge_pages`` (``enabled`` = true): the administrator writes the
  ``kvm.nx_huge_pages`` module parameter (the iTLB multihit workaround,
  v5.4; on by default on affected CPUs).  ``set_nx_huge_pages`` zaps every
  SPTE of the VM (``kvm_mmu_zap_all_fast``) when the value changes; from
  then on huge leaves are mapped non-executable and an instruction fetch is
  mapped with 4K pages.  v4.16 has no such parameter: nothing changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from kvmsim_plugins.x86_ept import apf
from kvmsim_plugins.x86_ept.ept import (
    EptState,
    unmap_hva_range,
)

from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import StepResult
from kvmsim.scenario.model import FieldType, StepKind
from kvmsim.scenario.sizes import PAGE_SIZE

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.scenario.model import StepSpec

_RANGE: Final[Mapping[str, FieldType]] = {"vma": str, "offset": int, "size": (int, str)}

STEP_KINDS: Final = (
    StepKind("swap_out", _RANGE, required=("vma",), default_size=PAGE_SIZE),
    StepKind("async_pf", {"vcpu": int, "enable": bool}),
    StepKind("apf_complete", {"vcpu": int}),
    StepKind("nx_huge_pages", {"enabled": bool}),
)
NAMES: Final = frozenset(k.name for k in STEP_KINDS)


def arch_step(kvm: Kvm, vcpu: int, step: StepSpec) -> StepResult | None:
    """Run one of this plugin's steps; None for any other."""
    do = step.do
    if do not in NAMES:
        return None
    if do == "swap_out":
        return _swap_out(kvm, step)
    if do == "async_pf":
        apf.kvm_pv_enable_async_pf(kvm, vcpu, bool(step.params.get("enable", True)))
        return StepResult(outcome="done")
    if do == "apf_complete":
        return _apf_complete(kvm, vcpu)
    return _nx_huge_pages(kvm, bool(step.params.get("enabled", True)))


def _nx_huge_pages(kvm: Kvm, enabled: bool) -> StepResult:
    st: EptState = kvm.arch
    if st.version == "v4.16":
        return StepResult(outcome="done", detail="no kvm.nx_huge_pages before v5.4: no effect")
    if enabled != st.nx_huge_pages:
        st.nx_huge_pages = enabled
        # set_nx_huge_pages → kvm_mmu_zap_all_fast: every SPTE goes
        task = kvm.mm.current
        kvm.mmu_lock.lock(task)
        try:
            for start, end in _slot_ranges(kvm):
                unmap_hva_range(kvm, start, end)
        finally:
            kvm.mmu_lock.unlock(task)
    if kvm.tracer.enabled:
        kvm.tracer.emit("set_nx_huge_pages", enabled=enabled)
    return StepResult(outcome="done")


def _slot_ranges(kvm: Kvm) -> list[tuple[int, int]]:
    shift = kvm.page_shift
    return [(s.userspace_addr, s.userspace_addr + (s.npages << shift)) for s in kvm.memslots.slots]


def _range(kvm: Kvm, step: StepSpec) -> tuple[int, int]:
    vma = next((v for v in kvm.mm.vmas if v.name == step.vma), None)
    if vma is None:
        raise ScenarioError(
            f"vma {step.vma!r} is not mapped any more", key=f"step[{step.index}].vma"
        )
    start = vma.start + step.offset
    size = step.size if step.size is not None else PAGE_SIZE
    return start, start + size


def _swap_out(kvm: Kvm, step: StepSpec) -> StepResult:
    start, end = _range(kvm, step)
    ps = kvm.mm.page_size
    for hva in range(start & ~(ps - 1), end, ps):
        kvm.mm.mark_needs_io(hva)
    if kvm.tracer.enabled:
        kvm.tracer.emit("swap_out", start=hex(start), end=hex(end))
    return StepResult(outcome="done", detail=f"{(end - start) // ps} page(s) need I/O")


def _apf_complete(kvm: Kvm, vcpu: int) -> StepResult:
    mm = kvm.mm
    ran = apf.run_pending_work(kvm, vcpu)
    prev = mm.current
    mm.current = f"vcpu{vcpu}"
    try:
        done = apf.kvm_check_async_pf_completion(kvm, vcpu)
    finally:
        mm.current = prev
    return StepResult(outcome="done", detail=f"{ran} work item(s) ran, {done} page(s) ready")
