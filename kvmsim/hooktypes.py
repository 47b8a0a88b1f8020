"""The values that cross hooks.

All frozen attrs classes (slotted, hashable): a plugin never mutates what it
was given, it returns a new value.  See :mod:`kvmsim.hookspecs` for who
produces and who consumes each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

# ---------------------------------------------------------------- info values


@frozen(kw_only=True)
class ArchInfo:
    """What an arch plugin is.

    :param name: the entry-point name users type (``ppc_radix``).
    :param description: one line for ``kvmsim plugins``.
    :param page_shift: the host kernel's PAGE_SHIFT on this arch (16 for ppc64
        with 64K pages, 12 for x86-64); the host model and gfns use it.
    :param page_sizes: the stage-2 leaf sizes the arch can install, in bytes.
    :param readonly_memslots: ``KVM_MEM_READONLY`` is accepted (the arch
        defines ``__KVM_HAVE_READONLY_MEM``: x86, arm, arm64, mips; not
        powerpc, where ``KVM_SET_USER_MEMORY_REGION`` fails with -EINVAL).
    :param handler_sources: per fault-handler version, where it was read (the
        ``Read from:`` paragraph of its module, :mod:`kvmsim.sources`).
    """

    name: str
    description: str
    page_shift: int
    page_sizes: tuple[int, ...]
    readonly_memslots: bool = True
    handler_sources: Mapping[str, str] = field(factory=dict, hash=False)


def unsupported(scenario: Any, arch: ArchInfo, strategy: StrategyInfo | None = None) -> str | None:
    """Why ``arch`` (under ``strategy``'s kernel, when given) cannot set
    ``scenario`` up as userspace asked, or None.

    The runner refuses such a scenario (a bad input: the ioctl would fail) and
    the matrix leaves the cell out.
    """
    if not arch.readonly_memslots:
        for ms in scenario.memslots:
            if ms.readonly:
                return (
                    f"{arch.name} has no read-only memslots: KVM_SET_USER_MEMORY_REGION "
                    "rejects KVM_MEM_READONLY with -EINVAL (no __KVM_HAVE_READONLY_MEM)"
                )
    uffd = getattr(scenario, "uffd", None)
    if strategy is not None and uffd:
        from kvmsim.host.userfaultfd import register_unsupported

        return register_unsupported(scenario, strategy.linux_for(arch.name))
    return None


@frozen(kw_only=True)
class StrategyInfo:
    """What a strategy plugin is.

    :param name: the entry-point name users type (``generic_v4_16``).
    :param description: one line for ``kvmsim plugins``.
    :param arches: the arch names it applies to; ``("*",)`` means every arch.
    :param handlers: per arch, which kernel version of that arch's fault
        handler surrounds this strategy (``{"ppc_radix": "v4.17"}``); an arch
        plugin reads its own entry to choose its flow.  ``"*"`` is the default.
    :param kernel: the kernel release or patch the strategy reproduces.
    :param source: where it was read (the ``Read from:`` paragraph of its
        module, :mod:`kvmsim.sources`).
    :param linux: per arch (``"*"`` the default), the Linux release whose
        host mm the strategy's kernel ran (``"v5.13"``), for the host
        behaviours that differ by release (userfaultfd modes, gup retries);
        none given means the host model's base, v4.16.
    """

    name: str
    description: str
    arches: tuple[str, ...]
    handlers: Mapping[str, str] = field(factory=dict, hash=False)
    kernel: str = ""
    source: str = ""
    linux: Mapping[str, str] = field(factory=dict, hash=False)

    def applies_to(self, arch: str) -> bool:
        return "*" in self.arches or arch in self.arches

    def handler_for(self, arch: str) -> str:
        """The handler version this strategy selects on ``arch``."""
        return self.handlers.get(arch) or self.handlers.get("*", "")

    def linux_for(self, arch: str) -> tuple[int, int]:
        """The host mm release on ``arch`` as (major, minor): ``linux``'s
        entry, else its ``"*"``, else (4, 16)."""
        return linux_version(self.linux.get(arch) or self.linux.get("*") or "v4.16")


def linux_version(text: str) -> tuple[int, int]:
    """``"v5.13"`` → (5, 13); a third part (``"v4.16.13"``) is ignored."""
    parts = text.lstrip("v").split(".")
    return int(parts[0]), int(parts[1])


@frozen(kw_only=True)
class DeviceInfo:
    """What a device plugin is: its name (the scenario's ``kind``) and a line."""

    name: str
    description: str


# ------------------------------------------------------------ the fault path


@frozen(kw_only=True)
class Stage2Fault:
    """A stage-2 translation fault, as the hardware reports it.

    :param gpa: the guest physical (real) address.
    :param ea: the guest effective / virtual address (equal to gpa when the
        scenario gives none).
    :param op: ``read``, ``write`` or ``exec``.
    :param code: the arch's fault code (radix: the HDSISR bits; EPT: the exit
        qualification; HPT: the DSISR image).
    :param kind: a short arch-specific name for traces (``hdsi``, ``ept_violation``).
    """

    gpa: int
    ea: int
    op: str
    code: int
    kind: str


@frozen(kw_only=True)
class Translation:
    """The result of ``translate``: a hit (``pfn`` set) or a ``fault``.

    On a hit, ``pfn`` is the host frame of the accessed byte's page,
    ``page_size`` the stage-2 leaf size, ``writable`` and ``noncached`` the
    leaf's permission and cache attribute.
    """

    pfn: int | None = None
    page_size: int = 0
    writable: bool = False
    noncached: bool = False
    fault: Stage2Fault | None = None


# Outcomes of handle_page_fault (what the vcpu loop does next).
RESUME = "resume"  # re-enter the guest: the access is retried
MMIO = "mmio"  # exit to userspace for MMIO emulation at ``gpa``
EFAULT = "efault"  # KVM_RUN returns -EFAULT (or another errno) to userspace
SIGBUS = "sigbus"  # the vcpu thread got SIGBUS (hwpoison)
GUEST_FAULT = "guest_fault"  # a storage interrupt was delivered to the guest
ASYNC_PF = "async_pf"  # x86: the guest was told "page not present"
FAULT_OUTCOMES = (RESUME, MMIO, EFAULT, SIGBUS, GUEST_FAULT, ASYNC_PF)


@frozen(kw_only=True)
class FaultResult:
    """The result of ``handle_page_fault``.

    :param action: one of :data:`FAULT_OUTCOMES`.
    :param ret: the kernel's return value (``RESUME_GUEST``, ``-EFAULT``...),
        for the trace.
    :param detail: a few words for the report.
    """

    action: str
    ret: int = 0
    detail: str = ""


# hva_to_pfn statuses
OK = "ok"
RETRY = "retry"  # the caller must re-enter the guest (-EAGAIN, mmap_sem dropped)
ERR_FAULT = "efault"  # KVM_PFN_ERR_FAULT
ERR_HWPOISON = "hwpoison"  # KVM_PFN_ERR_HWPOISON
ERR_RO_FAULT = "ro_fault"  # KVM_PFN_ERR_RO_FAULT
NOSLOT = "noslot"  # KVM_PFN_NOSLOT
ASYNC = "async"  # *async = true: the fault needs I/O
STATUSES = (OK, RETRY, ERR_FAULT, ERR_HWPOISON, ERR_RO_FAULT, NOSLOT, ASYNC)


@frozen(kw_only=True)
class HvaToPfnRequest:
    """The arguments of ``hva_to_pfn`` (virt/kvm/kvm_main.c), plus what the
    PPC handlers that inline their own resolution know.

    :param vcpu: the faulting vcpu's index.
    :param slot: the memslot (:class:`kvmsim.kvm.memslot.Memslot`).
    :param gfn: the faulting guest frame number (host PAGE_SIZE units).
    :param gpa: the faulting guest physical address.
    :param hva: ``gfn_to_hva_memslot`` of the gfn (may be an error hva).
    :param write_fault: the access is a store.
    :param atomic: the caller cannot sleep.
    :param async_: the caller passed a non-NULL ``async`` pointer.
    :param writable: the caller passed a non-NULL ``writable`` pointer (it
        accepts a write upgrade on a read fault).
    :param page_out: the caller passed a ``struct page **`` (Paolo's sketch).
    :param psize: the guest page size the arch needs mapped, in bytes (the HPT
        handler's HPTE size, which its inline VM_PFNMAP test uses); 0 if none.
    """

    vcpu: int
    slot: Any
    gfn: int
    gpa: int
    hva: int
    write_fault: bool
    atomic: bool = False
    async_: bool = False
    writable: bool = False
    page_out: bool = False
    psize: int = 0


@frozen(kw_only=True)
class HvaToPfnResult:
    """What ``hva_to_pfn`` (or the handler's inline equivalent) produced.

    :param status: one of :data:`STATUSES`.
    :param pfn: the frame, or a ``KVM_PFN_ERR_*`` value for errors.  pfn 0 is
        a real pfn.
    :param page: the ``struct page *`` the caller will release, as a pfn, or
        None when the code hands back no page pointer; may be a C hazard
        (``UNINIT``) in a buggy strategy.
    :param writable: ``*writable`` as the code left it.
    :param map_shift: a host mapping-size hint (log2 bytes), 0 when none.
    :param prot: the pgprot bits the code took from the vma (the PPC PFNMAP
        branch uses ``vm_page_prot``), or None.
    :param ret: the code's integer return when it is not a pfn (for example
        ``-EAGAIN``), for the trace.
    """

    status: str
    pfn: int
    page: Any = None
    writable: bool = False
    map_shift: int = 0
    prot: int | None = None
    ret: int = 0


@frozen(kw_only=True)
class Stage2Mapping:
    """One present stage-2 leaf, for checkers.

    :param gpa: the leaf's base guest physical address.
    :param size: its size in bytes.
    :param pfn: the host frame of its first byte.
    :param writable: the leaf allows stores.
    :param noncached: the leaf is cache-inhibited.
    :param mmu_seq: the ``mmu_notifier_seq`` the fault that installed it read.
    """

    gpa: int
    size: int
    pfn: int
    writable: bool
    noncached: bool
    mmu_seq: int


#: The ``vcpu`` of an ``mmio_access`` a host task (QEMU) made through its own
#: mapping of a device page: no vcpu runs on the CPU that accessed it.
HOST_VCPU = -1


@frozen(kw_only=True)
class MmioResult:
    """A device's answer to an MMIO access: the value a load returns."""

    value: int = 0
    detail: str = ""


@frozen(kw_only=True)
class StepResult:
    """The result of a plugin-provided scenario step.

    :param outcome: the step's outcome for the report (``done`` when None).
    :param detail: a few words for the report.
    :param expect_failures: expectations of the step's own keys that did not
        hold (for example an hcall's ``expect_ret``), one sentence each; the
        runner adds them to the step's expectation failures.
    :param young: an ageing step's answer (``expect.young`` is checked
        against it); None for any other step.
    :param value: what the step read (a ``host_read``'s load), reported as
        the step's ``value`` and checked against ``expect.value``.
    """

    outcome: str | None = None
    detail: str = ""
    expect_failures: tuple[str, ...] = ()
    young: bool | None = None
    value: int | None = None


@frozen(kw_only=True)
class DirtyCaps:
    """What dirty logging an arch offers in the selected handler version
    (the ``dirty_log_caps`` hook).

    :param modes: the mechanisms a scenario may choose (``[dirty] mode``,
        :data:`kvmsim.scenario.model.DIRTY_MODES`), the version's default first.
    :param manual_protect: ``KVM_CLEAR_DIRTY_LOG`` and
        ``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT`` exist (the arch selects
        ``KVM_GENERIC_DIRTYLOG_READ_PROTECT``, v5.0+).
    :param initially_set: ``KVM_DIRTY_LOG_INITIALLY_SET`` exists
        (``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2``).
    :param missing: why a mode or feature (``manual_protect``,
        ``initially_set``) the version lacks is missing, one sentence each;
        the scenario error that refuses it quotes it.
    """

    modes: tuple[str, ...]
    manual_protect: bool = False
    initially_set: bool = False
    missing: Mapping[str, str] = field(factory=dict, hash=False)

    @property
    def default(self) -> str:
        return self.modes[0]
