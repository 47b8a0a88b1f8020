"""POWER9 hashed page table (HPT) MMU under KVM HV, with the fault handler of
v4.15/v4.16, v5.7 or v6.13 as the selected strategy names.

The guest owns the HPT's contents: it enters translations with the
``H_ENTER`` hypercall and removes them with ``H_REMOVE``.  KVM fills an
entry in with the host real address when the host page is present, or
leaves it *absent* so that the first access faults into
``kvmppc_book3s_hv_page_fault``; the reverse map from guest frames to
entries lets MMU-notifier invalidations make entries absent again.

Scenario steps for this arch (``arch = "ppc_hpt"``):

``do = "hcall"`` — the guest issues a hypercall.  Keys:

- ``call``: ``"H_ENTER"`` or ``"H_REMOVE"``.
- ``ea``: the effective address of the guest page (required).
- ``gpa``: H_ENTER: the guest real address the page maps (required for H_ENTER).
- ``psize``: H_ENTER: ``"64K"`` (default), ``"16M"`` or ``"4K"`` (a 4K
  base-page segment: the entry maps one 4K piece of a 64K host page, the
  piece the guest real address names).
- ``wimg``: H_ENTER: the WIMG letters, ``"M"`` (default: cacheable), ``"I"``,
  ``"IG"``, ``"WIMG"``...
- ``pp``: H_ENTER: ``"rw"`` (default, supervisor read/write) or ``"r"``
  (supervisor read-only).
- ``exec``: H_ENTER: false sets N (no-execute); default true.
- ``expect_ret``: the return a correct kernel gives (``"H_SUCCESS"``,
  ``"H_PARAMETER"``, ``"H_PTEG_FULL"``, ``"H_NOT_FOUND"``); a different
  return is an expectation failure of the step.
- ``vcpu``: the issuing vcpu.

Dirty logging (the core ``dirty_log`` step, mode ``dirty_bit``): the
hardware's HPTE C bits, harvested by ``kvmppc_hv_get_dirty_log_hpt``
(:func:`dirty_log_sync`).

The guest hashes like Linux: primary PTEG first, the secondary one when the
primary is full; H_REMOVE uses H_AVPN on the slot H_ENTER returned.

``do = "access"`` — ``ea`` is the address translated (through the guest SLB
and the HPT); ``gpa`` is the guest real address the scenario expects that
entry to map (``expect.frame = "host"`` compares against the host frame
behind it).  An access whose ``ea`` equals its ``gpa`` (the default when
``ea`` is omitted) is to the guest's linear mapping: when no entry is found
the guest's own DSI handler (``hash_page``) H_ENTERs it on demand (64K,
read/write; WIMG M for RAM, I|G for a memslot QEMU backs with a
VM_IO/VM_PFNMAP/VM_MIXEDMAP vma, which the guest knows as a device region),
so scenarios written for other arches run here too.

RAM is different: a Linux guest bolts its whole linear mapping at boot
(``htab_initialize`` → ``htab_bolt_mapping``, H_ENTER per page), long before
any scenario step.  So at ``arch_init`` (after the scenario's set-up, before
step 0) the guest H_ENTERs every page of a RAM memslot the host already
maps (those entries go in valid and are on the rmap chains, so later
invalidations make them absent); every other RAM page had no host PTE at
boot and so was entered *absent*.  Absent entries are on no rmap chain and
nothing in the host changes them, so the model enters them lazily, at the
page's first access, with ``at_boot`` (the host page table of boot, not of
now): a page QEMU touches later (``host_write``) still faults into
``kvmppc_book3s_hv_page_fault`` on first guest access, as on real hardware.
Device regions are ``ioremap``ped, which on hash only sets the Linux PTE:
their HPTEs really are inserted at first access.

Guest SLB model: 256M segments, ea → va one to one, VSID
``GUEST_VSID_BASE + ESID`` (0x12340 + ESID), supervisor key 0 (a kernel
segment), segment base page size 64K unless the first H_ENTER into the
segment is a 16M page.  HPT size: ``KVM_DEFAULT_HPT_ORDER`` (2^24 bytes,
2^17 PTEGs), what KVM allocates when userspace asks for no other size.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvmsim_plugins.ppc_hpt import handler
from kvmsim_plugins.ppc_hpt.hcall import guest_h_enter, guest_h_remove, hcall_name
from kvmsim_plugins.ppc_hpt.hpt import HptState
from kvmsim_plugins.ppc_hpt.hpte import (
    DSISR_NOHPTE,
    H_SUCCESS,
    HCALL_NAMES,
    HPTE_R_G,
    HPTE_R_I,
    HPTE_R_M,
    PAGE_SIZES,
    wimg_bits,
)

from kvmsim import hookimpl
from kvmsim.errors import PluginError, ScenarioError
from kvmsim.hooktypes import (
    ArchInfo,
    DirtyCaps,
    FaultResult,
    Stage2Mapping,
    StepResult,
    Translation,
)
from kvmsim.host.constants import VM_IO, VM_MIXEDMAP, VM_PFNMAP
from kvmsim.kvm.dirty import mark_page_dirty_in_slot
from kvmsim.scenario.model import StepKind
from kvmsim.scenario.sizes import parse_size
from kvmsim.sources import read_from

if TYPE_CHECKING:
    from kvmsim.hooktypes import Stage2Fault
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot
    from kvmsim.scenario.model import StepSpec

NAME = "ppc_hpt"
PAGE_SHIFT = 16  # ppc64 distributions build with 64K pages
VERSIONS = ("v4.15", "v4.16", "v5.7", "v6.13")
# the module holding each version's body
VERSION_MODULES = {
    "v4.15": "handler_v4_15",
    "v4.16": "handler_v4_15",
    "v5.7": "handler_v5_7",
    "v6.13": "handler_v6_13",
}

HCALL_STEP = StepKind(
    "hcall",
    {
        "vcpu": int,
        "call": str,
        "ea": int,
        "gpa": int,
        "psize": (int, str),
        "wimg": str,
        "pp": str,
        "exec": bool,
        "expect_ret": str,
    },
    required=("call", "ea"),
)


@hookimpl
def arch_info() -> ArchInfo:
    return ArchInfo(
        name=NAME,
        description="POWER9 hashed page table (KVM HV): H_ENTER, absent HPTEs, rmap; "
        "fault handler v4.15/v4.16/v5.7/v6.13",
        page_shift=PAGE_SHIFT,
        page_sizes=PAGE_SIZES,
        readonly_memslots=False,  # no __KVM_HAVE_READONLY_MEM on powerpc
        handler_sources={
            v: read_from(importlib.import_module(f"{__name__}.{m}").__doc__)
            for v, m in VERSION_MODULES.items()
        },
    )


@hookimpl
def arch_init(kvm: Kvm) -> Any:
    version = kvm.handler or "v5.7"
    if version not in VERSIONS:
        raise PluginError(
            f"ppc_hpt has no fault handler version {version!r} "
            f"(strategy {kvm.strategy.name!r}); it has {', '.join(VERSIONS)}"
        )
    st = HptState(kvm.page_shift, version)
    kvm.arch = st
    _bolt_linear_mapping(kvm, st)
    return st


def _is_device_slot(kvm: Kvm, gpa: int) -> bool | None:
    """None: no memslot; True: QEMU backs it with a VM_IO/VM_PFNMAP/VM_MIXEDMAP
    vma (a device region in the guest's device tree); False: RAM."""
    slot = kvm.memslots.gfn_to_memslot(gpa >> kvm.page_shift)
    if slot is None:
        return None
    vma = kvm.mm.find_vma(slot.userspace_addr)
    return vma is not None and bool(vma.flags & (VM_IO | VM_PFNMAP | VM_MIXEDMAP))


def _bolt_linear_mapping(kvm: Kvm, st: HptState) -> None:
    """The guest's boot: ``htab_bolt_mapping`` of its RAM (64K pages, WIMG M,
    read/write).  Only pages with a host PTE are entered here; the others
    went in absent, which the model realises at first touch (package
    docstring)."""
    ps = kvm.page_shift
    pgtable = kvm.mm.pgtable
    prev = kvm.mm.current
    kvm.mm.current = "vcpu0"
    try:
        for slot in kvm.memslots.slots:
            if _is_device_slot(kvm, slot.base_gfn << ps):
                continue
            start = slot.userspace_addr
            end = start + (slot.npages << ps)
            hvas = {hva for hva, _pte in pgtable.ptes_in(start, end)}
            for hva, shift, _e in pgtable.huge_in(start, end):
                lo, hi = max(hva, start), min(hva + (1 << shift), end)
                hvas.update(range(lo, hi, 1 << ps))
            for hva in sorted(hvas):
                gpa = (slot.base_gfn << ps) + (hva - start)
                st.bolted.add(gpa)
                guest_h_enter(kvm, gpa, gpa, 16, HPTE_R_M, True, True)
    finally:
        kvm.mm.current = prev


@hookimpl
def translate(kvm: Kvm, vcpu: int, gpa: int, ea: int, op: str) -> Translation:
    st: HptState = kvm.arch
    return st.translate(kvm, gpa, ea, op)


@hookimpl
def handle_page_fault(kvm: Kvm, vcpu: int, fault: Stage2Fault) -> FaultResult:
    res = handler.page_fault(kvm, vcpu, fault)
    if (
        res.action == "guest_fault"
        and fault.ea == fault.gpa
        and fault.kind == "hdsi"
        and res.ret > 0
        and res.ret & DSISR_NOHPTE
    ):
        return _guest_hash_page(kvm, fault)
    return res


def _guest_hash_page(kvm: Kvm, fault: Stage2Fault) -> FaultResult:
    """The guest's DSI handler for its linear mapping: H_ENTER the page
    (64K, read/write) and return to the faulting access.  The guest maps
    RAM cacheable (WIMG M) and device memory as ``ioremap`` does (I|G); it
    knows which is which from the device tree, where QEMU describes a
    memslot backed by a VM_IO/VM_PFNMAP/VM_MIXEDMAP vma as a device region."""
    st: HptState = kvm.arch
    device = _is_device_slot(kvm, fault.gpa)
    wimg = HPTE_R_I | HPTE_R_G if device else HPTE_R_M
    page = fault.gpa & ~0xFFFF
    # RAM not bolted yet: the boot-time H_ENTER, made when there was no host PTE
    at_boot = device is False and page not in st.bolted
    if device is False:
        st.bolted.add(page)
    ret, index = guest_h_enter(kvm, fault.ea, fault.gpa, 16, wimg, True, True, at_boot=at_boot)
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "guest_hash_page",
            ea=hex(fault.ea),
            ret=hcall_name(ret),
            index=hex(index),
            bolted_at_boot=at_boot,
        )
    if ret != H_SUCCESS:
        return FaultResult(
            action="guest_fault", ret=ret, detail=f"guest hash_page: H_ENTER {hcall_name(ret)}"
        )
    return FaultResult(action="resume", ret=0, detail="guest hash_page entered the page")


@hookimpl
def create_pte(kvm: Kvm, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
    return handler.install(kvm, gpa, pte, level, mmu_seq)


@hookimpl
def notifier_invalidate(kvm: Kvm, start: int, end: int) -> None:
    st: HptState | None = kvm.arch
    if st is not None:
        st.unmap_hva_range(kvm, start, end)


@hookimpl
def notifier_age_gfn(kvm: Kvm, start: int, end: int, test: bool) -> bool:
    """``kvm_age_rmapp`` / ``kvm_test_age_rmapp`` through the rmap chains."""
    st: HptState | None = kvm.arch
    return st is not None and st.age_gfn_range(kvm, start, end, test)


@hookimpl
def notifier_change_pte(kvm: Kvm, hva: int, pte: int) -> None:
    """``kvm_set_spte_hva_hv``: HPT just unmaps the page (the next access faults)."""
    st: HptState | None = kvm.arch
    if st is not None:
        st.unmap_hva_range(kvm, hva, hva + 1)


@hookimpl
def stage2_mappings(kvm: Kvm) -> list[Stage2Mapping]:
    st: HptState = kvm.arch
    return st.mappings()


@hookimpl
def stage2_mappings_in(kvm: Kvm, start: int, end: int) -> list[Stage2Mapping]:
    st: HptState = kvm.arch
    return st.mappings_in(start, end)


@hookimpl
def step_kinds() -> list[StepKind]:
    return [HCALL_STEP]


@hookimpl
def arch_step(kvm: Kvm, vcpu: int, step: StepSpec) -> StepResult | None:
    if step.do != "hcall":
        return None
    p = step.params
    key = f"step[{step.index}]"
    call = str(p.get("call", "")).upper()
    ea = int(p["ea"])  # type: ignore[call-overload]
    expect = p.get("expect_ret")
    if expect is not None and str(expect).upper() not in HCALL_NAMES.values():
        raise ScenarioError(
            "unknown hcall return",
            key=f"{key}.expect_ret",
            expected=", ".join(HCALL_NAMES.values()),
            got=expect,
        )
    prev = kvm.mm.current
    kvm.mm.current = f"vcpu{vcpu}"
    try:
        if call == "H_ENTER":
            if step.gpa is None:
                raise ScenarioError("H_ENTER needs the guest real address", key=f"{key}.gpa")
            psize = parse_size(p.get("psize", "64K"), f"{key}.psize")
            if psize not in PAGE_SIZES:
                raise ScenarioError(
                    "unsupported HPTE page size",
                    key=f"{key}.psize",
                    expected="4K, 64K or 16M",
                    got=p.get("psize"),
                )
            try:
                wimg = wimg_bits(str(p.get("wimg", "M")))
            except ValueError:
                raise ScenarioError(
                    "not WIMG letters",
                    key=f"{key}.wimg",
                    expected="letters of W, I, M, G",
                    got=p.get("wimg"),
                ) from None
            pp = str(p.get("pp", "rw"))
            if pp not in ("rw", "r"):
                raise ScenarioError("unknown PP", key=f"{key}.pp", expected="'rw' or 'r'", got=pp)
            pshift = psize.bit_length() - 1
            st: HptState = kvm.arch
            seg = st.seg_shift.get(ea >> 28)
            if seg is not None and seg != pshift:
                raise ScenarioError(
                    f"the segment of ea {ea:#x} already has base page size {1 << seg:#x}; "
                    "the modelled guest gives each 256M segment one page size",
                    key=f"{key}.ea",
                )
            if ea & (psize - 1) or step.gpa & (psize - 1):
                raise ScenarioError(
                    "ea and gpa must be aligned to the page size",
                    key=f"{key}.ea",
                )
            ret, index = guest_h_enter(
                kvm, ea, step.gpa, pshift, wimg, pp == "rw", bool(p.get("exec", True))
            )
            detail = f"H_ENTER → {hcall_name(ret)}" + (
                f" at index {index:#x}" if index >= 0 else ""
            )
        elif call == "H_REMOVE":
            ret = guest_h_remove(kvm, ea)
            detail = f"H_REMOVE → {hcall_name(ret)}"
        else:
            raise ScenarioError(
                "unknown hypercall",
                key=f"{key}.call",
                expected="'H_ENTER' or 'H_REMOVE'",
                got=p.get("call"),
            )
    finally:
        kvm.mm.current = prev
    failures: tuple[str, ...] = ()
    if expect is not None and hcall_name(ret) != str(expect).upper():
        failures = (f"expect_ret: expected {str(expect).upper()}, got {hcall_name(ret)}",)
    return StepResult(outcome="done", detail=detail, expect_failures=failures)


@hookimpl
def dirty_log_caps(kvm: Kvm) -> DirtyCaps:
    """HPT tracks stores with the hardware's C bits: ``dirty_bit`` only;
    POWER has no ``KVM_GENERIC_DIRTYLOG_READ_PROTECT`` (no KVM_CLEAR_DIRTY_LOG)
    and no dirty ring in any modelled version."""
    return DirtyCaps(
        modes=("dirty_bit",),
        missing={
            "wp": "HPT dirty logging harvests HPTE C bits; nothing is write-protected",
            "pml": "pml is an Intel VMX feature; HPT tracks stores with C bits",
            "ring": "powerpc has no KVM_CAP_DIRTY_LOG_RING (x86 from v5.11, arm64 from v6.1)",
            "manual_protect": "powerpc does not select KVM_GENERIC_DIRTYLOG_READ_PROTECT: "
            "no KVM_CLEAR_DIRTY_LOG",
            "initially_set": "no KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 on powerpc",
        },
    )


@hookimpl
def dirty_log_enable(kvm: Kvm, slot: Memslot, enable: bool) -> bool:
    """``kvmppc_core_commit_memory_region_hv``: nothing for HPT (the C bits
    track stores; the bitmap the core allocated collects what unmapped
    HPTEs harvested, ``kvmppc_update_dirty_map``)."""
    return True


@hookimpl
def dirty_log_sync(kvm: Kvm, slot: Memslot) -> bool:
    """``kvm_vm_ioctl_get_dirty_log_hv`` → ``kvmppc_hv_get_dirty_log_hpt``:
    ``kvm_test_clear_dirty_npages`` for every page of the slot, each dirty
    HPTE marking as many pages as it maps (``set_dirty_bits``) into the
    buffer the ioctl then ORs with the slot's bitmap; the model marks the
    bitmap itself, which the core then reads and clears.  Not modelled:
    the VPA/DTL dirty harvest."""
    st: HptState = kvm.arch
    dirty: list[tuple[int, int]] = []
    for i in range(slot.npages):
        n = st.test_clear_dirty_npages(kvm, slot.base_gfn + i)
        if n:
            dirty.append((i, n))
    for i, n in dirty:
        mark_page_dirty_in_slot(kvm, slot, slot.base_gfn + i, n)
    if kvm.tracer.enabled:
        kvm.tracer.emit(
            "kvmppc_hv_get_dirty_log_hpt",
            slot=slot.id,
            dirty=[hex((slot.base_gfn + i) << kvm.page_shift) for i, _ in dirty],
        )
    return True
