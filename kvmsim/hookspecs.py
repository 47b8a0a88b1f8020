"""Every kvmsim hook: the plugin author's manual.

kvmsim has three kinds of plugin, each found through its own entry-point
group: an **arch** (``kvmsim.arch``) owns the stage-2 MMU and the fault
handler around ``hva_to_pfn``; a **strategy** (``kvmsim.strategy``) answers
``hva_to_pfn`` as one kernel version's code did; a **device**
(``kvmsim.device``) provides MMIO frames and the vmas that map them.  A
simulation registers exactly one arch, one strategy and the scenario's
devices, each in its own :class:`pluggy.PluginManager`.

Write implementations with ``from kvmsim import hookimpl``.  Hooks are called
with keyword arguments; an implementation may accept fewer arguments than the
spec, never more, and never with defaults.  In a firstresult hook ``None``
means only "not mine".

Fault path, in order: ``translate`` → (on a fault) ``handle_page_fault``, which
calls ``hva_to_pfn`` (through ``kvm.gfn_to_pfn_memslot``, or ``kvm.hva_to_pfn``
for a handler that calls it directly) and ``create_pte``; host events reach
the arch through ``notifier_invalidate``.  Where the results of
``translate``, ``handle_page_fault`` and ``hva_to_pfn`` come back into the
core, their type is checked: a wrong one is reported as the returning
plugin's bug (:class:`kvmsim.errors.HookResultError`, exit 3), not as an
error in whatever read it next.

Yield points.  Where the modelled kernel can be preempted, or another CPU
can act on state that matters, the code says so with
``kvm.fire_point(name)`` (or ``mm.fire_point(name)`` in host code).  A
sequential scenario may place a host event there (``at = name``); a
concurrent one (``concurrent = true``) lets ``kvmsim explore`` switch to
another actor there.  The core reaches the points of
:data:`kvmsim.points.POINTS` (``kvmsim points`` lists them; an arch handler
must reach ``after_hva_to_pfn`` right after resolving the pfn and
``before_create_pte`` just before taking ``mmu_lock`` to install);
``mmap_sem`` and ``kvm->mmu_lock`` reach theirs by themselves and, in a
concurrent run, make a waiter unrunnable instead of raising ``Deadlock``;
so does a task sleeping in ``handle_userfault`` until the userfaultfd
handler's step wakes it (:mod:`kvmsim.host.userfaultfd`).
A host unmap reaches ``invalidate_range_start``, ``host_pte_changed``,
``invalidate_range_end``, ``tlb_flush`` and ``page_freed`` in that order; a
plugin whose own host-side code unmaps gathers its pages in a
:class:`kvmsim.host.tlb.MmuGather` so its frees come after the flush too.
A plugin may reach a point of its own name; declared with ``yield_points``
it is an ``at`` value and a ``[[schedule]]`` point like the core's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from kvmsim.hooktypes import (
        ArchInfo,
        DeviceInfo,
        DirtyCaps,
        FaultResult,
        HvaToPfnRequest,
        HvaToPfnResult,
        MmioResult,
        Stage2Fault,
        Stage2Mapping,
        StepResult,
        StrategyInfo,
        Translation,
    )
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot
    from kvmsim.scenario.model import DeviceKind, DeviceSpec, StepKind, StepSpec, VmaSpec

PROJECT = "kvmsim"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ------------------------------------------------------------------- arch


@hookspec(firstresult=True)
def arch_info() -> ArchInfo:
    """Describe the arch: name, one-line description, host PAGE_SHIFT, stage-2 leaf sizes.

    Implemented by: every arch plugin.
    Called: once at discovery (``kvmsim plugins``) and when a simulation is built,
    before the host model exists (its page size comes from here).
    Models: nothing in the kernel; it is the arch's identity card.

    :returns: an :class:`~kvmsim.hooktypes.ArchInfo`.

    firstresult
    """


@hookspec(firstresult=True)
def arch_init(kvm: Kvm) -> Any:
    """Create the arch's per-VM stage-2 state (an empty partition-scoped
    table, HPT or EPT) and anything the fault handler keeps per VM.

    Implemented by: every arch plugin.
    Called: once per simulation, after the host model, the memslots and the
    devices exist and before the first step; the core stores the result as
    ``kvm.arch``.
    Models: ``kvm_arch_init_vm`` (kvmppc_core_init_vm_hv, kvm_arch_init_vm on x86).

    :param kvm: the VM (:class:`kvmsim.kvm.core.Kvm`).
    :returns: the arch state object (any type the arch chooses).

    firstresult
    """


@hookspec(firstresult=True)
def translate(kvm: Kvm, vcpu: int, gpa: int, ea: int, op: str) -> Translation:
    """Walk the stage-2 structure for one guest access, as the hardware does.

    Implemented by: every arch plugin.
    Called: by the vcpu loop for every guest access and again after every
    fault that resumes the guest; no lock held.  Hardware side effects (x86
    EPT setting A/D bits) happen here; POWER9 radix sets no R/C bits itself
    but faults with SET_RC.
    Models: the MMU walk (POWER9 partition-scoped radix walk, HPT search,
    EPT walk).

    :param kvm: the VM.
    :param vcpu: the accessing vcpu's index.
    :param gpa: guest physical (real) address of the access.
    :param ea: guest effective / virtual address (equal to gpa unless the
        scenario gives one; HPT translates from it).
    :param op: ``read``, ``write`` or ``exec``.
    :returns: a :class:`~kvmsim.hooktypes.Translation`: a hit with the host
        pfn, leaf size and attributes, or a ``fault`` carrying the arch's fault code.
        A hit's Translation may be shared between calls; callers must not
        rely on its identity.  (An arch may return a cached frozen
        Translation for an unchanged leaf, dropping it whenever it changes
        or zaps that leaf; side effects of a hit, such as EPT A/D bits,
        still happen on every call.)

    firstresult
    """


@hookspec(firstresult=True)
def handle_page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    """Handle a stage-2 fault: the arch's fault handler, of the kernel version
    the selected strategy names (``StrategyInfo.handlers``).

    Implemented by: every arch plugin.
    Called: by the vcpu loop when ``translate`` returned a fault; no lock held,
    ``kvm->srcu`` notionally held.  It must read ``kvm.mmu_notifier_seq``
    before resolving the pfn, call ``kvm.fire_point("after_hva_to_pfn")``
    right after resolving it and ``kvm.fire_point("before_create_pte")`` just
    before installing (a scenario's ``across_create_pte`` event starts there
    and ends only after this hook returned: the version's retry check, e.g.
    ``kvm.mmu_notifier_retry`` or the range-based
    ``kvm.mmu_notifier_retry_hva`` / ``kvm.mmu_invalidate_retry_gfn``, sees
    it in progress), and release page references as its kernel version does.
    Models: ``kvmppc_book3s_radix_page_fault``, ``kvmppc_book3s_hv_page_fault``,
    ``tdp_page_fault``.

    :param kvm: the VM.
    :param vcpu: the faulting vcpu.
    :param fault: what ``translate`` reported.
    :returns: a :class:`~kvmsim.hooktypes.FaultResult` whose ``action`` tells
        the vcpu loop what happens next (resume, mmio, efault, sigbus,
        guest_fault, async_pf).

    firstresult
    """


@hookspec(firstresult=True)
def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    """Install one stage-2 leaf.

    Implemented by: every arch plugin (called by its own fault handler through
    ``kvm.hooks.create_pte`` so that another plugin could observe or replace it).
    Called: from the fault handler with no lock held; takes ``kvm.mmu_lock``
    itself and checks ``kvm.mmu_notifier_retry(mmu_seq)`` under it.
    Models: ``kvmppc_create_pte`` (radix), the HPTE install of
    ``kvmppc_book3s_hv_page_fault`` (HPT), ``mmu_set_spte`` (x86).

    :param kvm: the VM.
    :param gpa: guest physical address of the leaf.
    :param pte: the new entry, in the arch's own encoding (the arch documents it).
    :param level: 0 for the base page size, 1 for the next level up (2M),
        2 for the one above (1G); the arch's own numbering beyond that.
    :param mmu_seq: the ``mmu_notifier_seq`` the handler read before resolving the pfn.
    :returns: 0 on success, ``-EAGAIN`` when an invalidation raced (the guest
        retries), ``-ENOMEM``, or ``-EBUSY`` (v4.15/v4.16 radix: a page-table
        page is in the way of a large leaf).

    firstresult
    """


@hookspec
def notifier_invalidate(kvm: Kvm, start: int, end: int) -> None:
    """Tear down every stage-2 entry that maps host virtual addresses in ``[start, end)``.

    Implemented by: every arch plugin (and any plugin that caches translations).
    Called: by the core's MMU-notifier subscriber from
    ``invalidate_range_start``, under ``kvm.mmu_lock``, with
    ``mmu_notifier_count`` already raised.  Entries hold no page reference,
    so nothing is released here.
    Models: ``kvm_unmap_hva_range`` (``kvm_unmap_radix`` per gfn, HPT rmap walk,
    ``kvm_unmap_rmapp`` on x86).

    :param kvm: the VM.
    :param start: first host virtual address of the range.
    :param end: first address past the range.
    :returns: nothing.

    broadcast
    """


@hookspec
def notifier_age_gfn(kvm: Kvm, slot: Memslot, start: int, end: int, test: bool) -> bool:
    """Age the stage-2 entries of one memslot's guest frames ``[start, end)``
    (clear their accessed bits and say whether any was set), or with
    ``test`` only say whether any is set.

    Implemented by: arch plugins that model ageing (an arch that implements
    neither this nor :func:`notifier_age` is never young), each as its
    kernel version does it: which entries of the range it visits, which bit
    is the accessed one, whether it flushes.
    Called: by the core's MMU-notifier subscriber, under ``kvm.mmu_lock``,
    once per memslot the host range overlaps (kernel-notes §L.8): from
    ``clear_young`` with ``test`` false and every gfn the hva range touches;
    from ``test_young`` with ``test`` true and the one gfn at its address.
    The answers are ORed.  A cleared entry that the guest uses again is
    made young by the hardware or by a fault, as the arch has it.
    Models: ``kvm_age_gfn`` / ``kvm_test_age_gfn`` (v5.13+, after the
    generic memslot walk ``kvm_handle_hva_range``); before v5.13 the arch's
    ``kvm_age_hva`` / ``kvm_test_age_hva`` after its own, equivalent,
    memslot walk (``kvm_age_radix`` / ``kvm_age_rmapp`` per gfn on ppc,
    ``kvm_age_rmapp`` on x86, ``kvm_age_hva_handler`` on arm).

    :param kvm: the VM.
    :param slot: the memslot (:class:`kvmsim.kvm.memslot.Memslot`).
    :param start: first guest frame number (in ``kvm.page_shift`` pages).
    :param end: first guest frame number past the range.
    :param test: true for ``test_young`` (change nothing), false for
        ``clear_young``.
    :returns: clear: true if any entry visited was young before it was
        cleared; test: true if any entry visited is young.

    broadcast
    """


@hookspec
def notifier_age(kvm: Kvm, start: int, end: int) -> bool:
    """Age the stage-2 entries over host virtual addresses ``[start, end)``:
    clear their accessed (R) bits and say whether any was set.  Superseded
    by :func:`notifier_age_gfn`, which also answers ``test_young``; kept for
    plugins written against it (implement one of the two, not both).

    Implemented by: arch plugins written before :func:`notifier_age_gfn`;
    optional.
    Called: by the core's MMU-notifier subscriber from ``clear_young``
    (reclaim, page_idle; kernel-notes §L.4, §L.8), under ``kvm.mmu_lock``,
    after :func:`notifier_age_gfn`; never from ``test_young``.
    Models: ``kvm_age_hva`` (the arch walks the memslots itself).

    :param kvm: the VM.
    :param start: first host virtual address of the range.
    :param end: first address past the range.
    :returns: true if any entry in the range was young.

    broadcast
    """


@hookspec
def notifier_change_pte(kvm: Kvm, hva: int, pte: int) -> None:
    """A host PTE changed in place (COW break, KSM merge).

    Implemented by: arch plugins that model ``kvm_set_spte_hva``; optional.
    Called: by the core's subscriber from ``change_pte`` (always inside an
    invalidate start/end pair, so the entry is already gone), under ``kvm.mmu_lock``.
    Models: ``kvm_set_spte_hva``.

    :param kvm: the VM.
    :param hva: the host virtual address whose PTE changed.
    :param pte: the new host PTE (an int, see :mod:`kvmsim.host.pte`).
    :returns: nothing.

    broadcast
    """


@hookspec(firstresult=True)
def stage2_mappings(kvm: Kvm) -> list[Stage2Mapping]:
    """List every present stage-2 leaf.

    Implemented by: every arch plugin.
    Called: by the checkers after each step, and by reports; no lock needed
    (the simulation is stopped).
    Models: nothing: it is the checkers' window on the arch's state.

    :param kvm: the VM.
    :returns: the leaves as :class:`~kvmsim.hooktypes.Stage2Mapping`, in gpa order.

    firstresult
    """


@hookspec(firstresult=True)
def stage2_mappings_in(kvm: Kvm, start: int, end: int) -> list[Stage2Mapping]:
    """List the present stage-2 leaves overlapping a guest physical range.

    Implemented by: arch plugins that report their stage-2 changes; optional.
    An arch implementing it promises to call ``kvm.stage2_changed(gpa)`` with
    an address inside every leaf it installs or changes (a removed leaf needs
    no report), from any path: the checkers then judge after each step only
    the leaves reported, those over host pages that changed and those an
    invalidation reached, instead of every leaf.  Without it the checkers
    judge every leaf after every step (correct, but quadratic in a long run).
    Called: by the checkers after each step; no lock needed (the simulation
    is stopped).
    Models: nothing: it is the checkers' window on the arch's state.

    :param kvm: the VM.
    :param start: first guest physical address of the range.
    :param end: first address past the range.
    :returns: the leaves as :class:`~kvmsim.hooktypes.Stage2Mapping`, in gpa
        order, each as :func:`stage2_mappings` gives it.

    firstresult
    """


# ------------------------------------------------------------ dirty logging
#
# The core owns what virt/kvm owns: the ``dirty_log`` step, each slot's dirty
# bitmap, the dirty rings, KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG /
# KVM_RESET_DIRTY_RINGS (:mod:`kvmsim.kvm.dirty`) and the ground truth of
# guest stores the ``lost_dirty`` checker judges them by.  An arch with
# logging implements ``dirty_log_caps`` and ``dirty_log_enable``, and the
# two callbacks its kernel has among ``dirty_log_sync`` and
# ``dirty_log_protect``; its fault path marks pages with
# :func:`kvmsim.kvm.dirty.mark_page_dirty` (``mark_page_dirty_in_slot``).
# ``kvm.dirty.mode`` is the mechanism the scenario chose (or the default).


@hookspec(firstresult=True)
def dirty_log_caps(kvm: Kvm) -> DirtyCaps | None:
    """Say which dirty-logging mechanisms the selected handler version has.

    Implemented by: arch plugins with dirty logging.
    Called: once per simulation, after ``arch_init``, to check the scenario's
    ``[dirty]`` table (a mode or feature the version lacks is a scenario
    error quoting ``missing``) and to choose the default mode.
    Models: ``KVM_CHECK_EXTENSION`` of ``KVM_CAP_DIRTY_LOG_RING``,
    ``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2``; the host's ``enable_pml``.

    :param kvm: the VM (``kvm.arch`` knows the version).
    :returns: a :class:`~kvmsim.hooktypes.DirtyCaps`; None: no dirty logging
        (a ``dirty_log`` step is then a scenario error).

    firstresult
    """


@hookspec(firstresult=True)
def dirty_log_enable(kvm: Kvm, slot: Memslot, enable: bool) -> bool | None:
    """``KVM_MEM_LOG_DIRTY_PAGES`` was set on (``enable``) or cleared from a
    memslot: prepare the stage-2 tables for the mechanism ``kvm.dirty.mode``.

    Implemented by: arch plugins with dirty logging.
    Called: by the core's ``dirty_log`` step after it allocated (enable) or
    before it freed (disable) the slot's bitmap, with no lock held (take
    ``kvm.mmu_lock`` as the kernel does); ``kvm.dirty.initially_set`` says
    whether the bitmap starts all set.
    Models: ``kvm_arch_commit_memory_region`` for a flags-only change
    (x86 ``kvm_mmu_slot_apply_flags``: write-protect, or with PML clear D
    bits; on disable zap collapsible SPTEs; POWER: nothing, or flush
    large leaves).

    :param kvm: the VM.
    :param slot: the memslot (its ``flags`` already carry the new state).
    :param enable: logging is being turned on.
    :returns: True (None only from a plugin that does not handle it).

    firstresult
    """


@hookspec(firstresult=True)
def dirty_log_sync(kvm: Kvm, slot: Memslot) -> bool | None:
    """Move what the hardware logged into the slot's bitmap before a
    harvest reads it (mark pages with :func:`kvmsim.kvm.dirty.mark_page_dirty`).

    Implemented by: arches whose hardware logs on its own (Intel PML;
    POWER's R/C change bits, harvested and cleared here).
    Called: at the start of every ``get``, ``clear`` and ring reap, with no
    lock held.
    Models: ``kvm_arch_sync_dirty_log`` (x86 ``kvm_flush_pml_buffers``;
    POWER ``kvmppc_hv_get_dirty_log_radix`` / ``_hpt`` into the bitmap).

    :param kvm: the VM.
    :param slot: the slot being harvested.
    :returns: True (None: nothing to sync).

    firstresult
    """


@hookspec(firstresult=True)
def dirty_log_protect(kvm: Kvm, slot: Memslot, gfn_offset: int, mask: int) -> bool | None:
    """Re-arm logging for the pages a harvest took: bit ``i`` of ``mask``
    is page ``gfn_offset + i`` of the slot (a 64-bit word, as the kernel's).

    Implemented by: arches with ``KVM_GENERIC_DIRTYLOG_READ_PROTECT`` (x86).
    Called: with ``kvm.mmu_lock`` held by the core (do not take it), from a
    non-manual ``get`` per non-zero bitmap word, from ``clear`` per word it
    cleared, from a ring reset per coalesced run of entries.
    Models: ``kvm_arch_mmu_enable_log_dirty_pt_masked``.

    :param kvm: the VM.
    :param slot: the memslot.
    :param gfn_offset: first page of the word, relative to the slot.
    :param mask: which pages of the word.
    :returns: True (None: the arch re-arms nothing this way).

    firstresult
    """


@hookspec(firstresult=True)
def arch_step(kvm: Kvm, vcpu: int, step: StepSpec) -> StepResult | None:
    """Run a scenario step of a kind the arch added (``step_kinds``), such as
    an HPT ``hcall`` or an x86 ``swap_out``.

    Implemented by: arch plugins that add step kinds.
    Called: by the runner for a step whose ``do`` is not a core kind; the
    host task is the vcpu's thread.
    Models: the hypercall or ioctl the step names.

    :param kvm: the VM.
    :param vcpu: the step's vcpu.
    :param step: the step.
    :returns: a :class:`~kvmsim.hooktypes.StepResult`, or None if the step is not this plugin's.

    firstresult
    """


@hookspec
def step_kinds() -> list[StepKind]:
    """Declare scenario step kinds this plugin adds (their extra keys and types).

    Implemented by: arch and device plugins that add steps.
    Called: when a scenario is loaded, so the loader can validate the steps.
    Models: nothing.

    A kind named ``access`` does not add a step kind: it extends the core
    guest access with keys of the plugin's own that describe the accessing
    instruction (only its ``fields`` count; a key the core or another plugin
    already has is a :class:`~kvmsim.errors.PluginError`).  Such keys land
    in ``StepSpec.params``, and while the access runs they are in
    ``kvm.access_params[vcpu]`` (with ``width``, ``value`` and ``ea``), where
    the arch's ``translate`` and ``handle_page_fault`` read them; the arm64
    example's ``isv`` (the data abort's ESR_EL2.ISV) is one.

    :returns: a list of :class:`kvmsim.scenario.model.StepKind`.

    broadcast
    """


@hookspec
def yield_points() -> dict[str, str]:
    """Declare the yield points this plugin's code reaches with
    ``kvm.fire_point(name)`` beyond the core's (:data:`kvmsim.points.POINTS`),
    so that a scenario may name them as ``at`` values and in
    ``[[schedule]]`` entries, and ``kvmsim points`` lists them.

    Implemented by: any plugin (arch, strategy, device) whose modelled
    kernel code has a window of its own worth racing against.
    Called: once per process, when scenarios are loaded and by
    ``kvmsim points``; never on the fault path.
    Models: nothing (a point names a place in the modelled function).

    :returns: point name → where it is reached and what has happened there.
        A name the core already defines, or that an earlier plugin (by kind,
        then name) declared, is ignored.

    broadcast
    """


@hookspec
def outcomes() -> dict[str, str]:
    """Declare the outcomes this plugin's code can end a step in beyond the
    core's (:data:`kvmsim.scenario.model.OUTCOMES`): a
    ``FaultResult.action`` of ``handle_page_fault`` that is none of
    :data:`kvmsim.hooktypes.FAULT_OUTCOMES` (the vcpu loop reports an
    unknown action as the access's outcome, unchanged), or a ``StepResult``
    outcome of a plugin step.  A declared outcome may be expected
    (``expect = { outcome = ... }``) and recorded (``known.outcomes``), and
    appears as any other in reports, the matrix and ``--json``.

    Implemented by: any plugin whose steps end in something the core has no
    word for (the arm64 example's ``enosys``: KVM_RUN failed with ENOSYS).
    Called: once per process, when scenarios are loaded and their schema
    built; never on the fault path.
    Models: nothing (an outcome names what userspace saw).

    :returns: outcome name → what userspace saw.  A core name, or one an
        earlier plugin (by kind, then name) declared, is ignored.

    broadcast
    """


# --------------------------------------------------------------- strategy


@hookspec(firstresult=True)
def strategy_info() -> StrategyInfo:
    """Describe the strategy: name, description, the arches it applies to, the
    fault-handler version it selects on each arch, and the kernel it reproduces.
    ``linux`` names the host mm release per arch: the host model follows it
    where releases differ (userfaultfd MINOR, gup's retries after
    VM_FAULT_RETRY; kernel-notes §U), and a scenario whose set-up that release
    cannot do (a MINOR registration before v5.13/v5.14) does not run there.

    Implemented by: every strategy plugin.
    Called: at discovery and when a simulation is built (an arch the strategy
    does not apply to is refused with the list of arches it does).
    Models: nothing.

    :returns: a :class:`~kvmsim.hooktypes.StrategyInfo`.

    firstresult
    """


@hookspec(firstresult=True)
def hva_to_pfn(kvm: Kvm, request: HvaToPfnRequest) -> HvaToPfnResult:
    """Resolve a host virtual address to a host frame, as one kernel version's
    code does: its gup variants, vma walk, ``hva_to_pfn_remapped`` or inline
    PFNMAP arithmetic, with the references and locks that code takes.

    Implemented by: every strategy plugin (exactly one per simulation).
    Called: by the arch's fault handler, with no lock held (``mmap_sem`` is
    taken and dropped inside, unless the modelled code leaks it); after
    ``mmu_notifier_seq`` was read.  For v4.15/v4.16 PPC handlers it stands for
    the handler's own gup-then-PFNMAP block; for later handlers it is the
    generic ``hva_to_pfn`` reached from ``__gfn_to_pfn_memslot``.
    Models: ``hva_to_pfn`` (virt/kvm/kvm_main.c) and its helpers, version by version.

    :param kvm: the VM (host model at ``kvm.mm``, frames at ``kvm.phys``).
    :param request: the call's arguments (:class:`~kvmsim.hooktypes.HvaToPfnRequest`).
    :returns: a :class:`~kvmsim.hooktypes.HvaToPfnResult`: status, pfn or
        error pfn, the page pointer the caller releases, writable, size hint,
        vma pgprot.  C hazards (an uninitialised page pointer) raise
        :class:`kvmsim.cmodel.KernelOops` where the C code would use them.

    firstresult
    """


# ----------------------------------------------------------------- device


@hookspec(firstresult=True)
def device_info() -> DeviceInfo:
    """Describe the device: its kind (as scenarios name it) and a line.

    Implemented by: every device plugin.
    Called: at discovery.
    Models: nothing.

    :returns: a :class:`~kvmsim.hooktypes.DeviceInfo`.

    firstresult
    """


@hookspec(firstresult=True)
def device_kind() -> DeviceKind:
    """Declare the keys this device accepts in a ``[[device]]`` table and in
    ``device_reset`` steps, so the scenario loader can check them.

    Implemented by: device plugins that take keys beyond ``kind``.
    Called: when a scenario is loaded (once per process; the result is cached).
    Models: nothing.

    :returns: a :class:`kvmsim.scenario.model.DeviceKind` named as the device.

    firstresult
    """


@hookspec(firstresult=True)
def device_init(kvm: Kvm, spec: DeviceSpec) -> Any:
    """Create a device instance from a scenario's ``[[device]]`` table:
    allocate its MMIO frames (``kvm.phys.alloc_mmio``) and its state.

    Implemented by: every device plugin.
    Called: once per ``[[device]]`` entry, after the host model exists and
    before the vmas are mapped.
    Models: the device's creation (KVM_CREATE_DEVICE and its set-up attributes).

    :param kvm: the VM.
    :param spec: the device table (``spec.kind``, ``spec.params``).
    :returns: the device object, or None when ``spec.kind`` is not this plugin's.

    firstresult
    """


@hookspec(firstresult=True)
def device_mmap(kvm: Kvm, device: Any, spec: VmaSpec) -> Any:
    """Map a ``backing = "device"`` vma of this device into the host mm, as the
    device's ``mmap`` file operation does (flags, vm_page_prot, vm_ops).

    Implemented by: device plugins whose devices can be mmapped.
    Called: during set-up, for each device vma, as task ``qemu`` holding no lock.
    Models: the device file's ``mmap`` (``kvmppc_xive_native_mmap``).

    :param kvm: the VM.
    :param device: the instance ``device_init`` returned for ``spec.device``.
    :param spec: the vma's scenario table (size, pgoff...).
    :returns: the new :class:`kvmsim.host.vma.Vma`, or None if not this plugin's device.

    firstresult
    """


@hookspec(firstresult=True)
def mmio_access(
    kvm: Kvm, vcpu: int, pfn: int, offset: int, op: str, size: int, value: int
) -> MmioResult | None:
    """A load or store reached a device frame: a guest's through a stage-2
    mapping, or a host task's (QEMU's) through its own mapping of the page.

    Implemented by: device plugins.
    Called: by the vcpu loop after a translate hit on a frame without a
    ``struct page`` (``pfn_valid`` false), with no lock held; and by the
    ``host_write`` / ``host_read`` steps when QEMU's PTE maps such a frame
    (after the host fault that populated it, ``mmap_sem`` held for read).
    Both go through :func:`kvmsim.kvm.vcpu.device_mmio`: on the machine they
    are the same bus access, so a device answers both with the same code
    (loads keep their side effects).
    Models: the device's MMIO behaviour (XIVE ESB loads/stores, TIMA).

    :param kvm: the VM.
    :param vcpu: the accessing vcpu, or :data:`kvmsim.hooktypes.HOST_VCPU`
        (-1) for a host task: a device whose view depends on the accessing
        CPU (the XIVE TIMA) must treat it as a CPU running no vcpu, and
        never index per-vcpu state with it.
    :param pfn: the host frame reached.
    :param offset: byte offset in that frame.
    :param op: ``read``, ``write`` or ``exec``.
    :param size: access size in bytes.
    :param value: the value stored (0 for loads).
    :returns: an :class:`~kvmsim.hooktypes.MmioResult`, or None if the frame is not this device's.

    firstresult
    """


@hookspec(firstresult=True)
def device_step(kvm: Kvm, step: StepSpec) -> StepResult | None:
    """Run a device step: ``device_reset``, and the step kinds the device
    declared with ``step_kinds`` (tried after ``arch_step`` declined).

    Implemented by: device plugins.
    Called: by the runner, as task ``qemu``.
    Models: the ioctl or device event the step names (for XIVE, a source
    leaving or entering passthrough, which unmaps its ESB pages).

    :param kvm: the VM.
    :param step: the step (``step.params`` has the device-specific keys).
    :returns: a :class:`~kvmsim.hooktypes.StepResult`, or None if not this plugin's.

    firstresult
    """
