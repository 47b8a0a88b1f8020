"""The KVM XIVE native device (arch/powerpc/kvm/book3s_xive_native.c, v5.2+;
kernel-notes §G.1-G.3) as far as the stage-2 fault path sees it: sources
with their ESB page pairs at MMIO frames, the TIMA OS page, the device file's
``mmap`` with its two fault handlers, and the passthrough switch that unmaps
a source's ESB pages.

Behind the ESB frames sits a minimal router and presenter: a forwarded
event is queued on the target vcpu's event queue for the source's priority
and raises that priority in the vcpu's OS ring (:mod:`.tima`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define, field
from kvmsim_plugins.xive import esb
from kvmsim_plugins.xive.tima import TM_QW1_OS, TM_SPC_ACK_OS_REG, OsRing

from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import HOST_VCPU, MmioResult
from kvmsim.host.constants import (
    PTE_CACHE_BITS,
    PTE_NONCACHED,
    VM_FAULT_NOPAGE,
    VM_FAULT_SIGBUS,
    VM_IO,
    VM_PFNMAP,
)
from kvmsim.host.drivers import unmap_mapping_range, vmf_insert_pfn
from kvmsim.host.vma import File, Vma, VmFault, VmOps
from kvmsim.trace import DISABLED, Tracer

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.scenario.model import DeviceSpec, VmaSpec

KVM_XIVE_TIMA_PAGE_OFFSET = 0
KVM_XIVE_ESB_PAGE_OFFSET = 4
# KVMPPC_XIVE_NR_IRQS = KVMPPC_XICS_NR_IRQS: 1024 sources per ICS, 1024 ICSes
KVMPPC_XIVE_NR_IRQS = 1 << 20
MASKED = 0xFF  # act_priority of a source routed nowhere
TIMA_PAGES = 4  # HW, HV, OS, USER views
TIMA_OS_PAGE = 2

# what a frame of the device is: the kind of page, its source, its data
TRIG = "trig"
EOI = "eoi"
TIMA_OS = "tima_os"


@define(slots=True)
class IrqData:
    """``struct xive_irq_data``: one hardware interrupt's ESB pages and the
    PQ bits behind them.  ``trig_page`` 0 models firmware that gives no
    separate trigger page (the fault handler then WARNs and SIGBUSes)."""

    hw_irq: int
    trig_page: int  # pfn, 0 = none
    eoi_page: int  # pfn
    pq: int = esb.PQ_OFF
    store_eoi: bool = False


@define(slots=True)
class IrqState:
    """``struct kvmppc_xive_irq_state``: a guest source, its IPI and, while
    passed through, the host device interrupt's data."""

    number: int
    ipi_data: IrqData
    pt_data: IrqData | None = None
    act_server: int = 0
    act_priority: int = MASKED

    def select(self) -> IrqData:
        """``kvmppc_xive_select_irq``: the passthrough data while passed through."""
        return self.pt_data if self.pt_data is not None else self.ipi_data


@define(slots=True)
class EqEntry:
    """One event queue entry: the source's EISN (the guest irq number)."""

    eisn: int
    priority: int


@define(slots=True, kw_only=True)
class XiveDevice:
    """A ``kvm_device`` of type KVM_DEV_TYPE_XIVE with its private
    ``struct kvmppc_xive``.

    :param sources: the guest sources 0 .. N-1.
    :param tima_os: ``xive_tima_os``: the pfn of the TIMA OS view.
    :param file: the device file (its address_space is ``xive->mapping``
        once mmapped).
    :param mapping: the saved ``f_mapping`` (None before the first mmap).
    :param frames: pfn → (kind, source index, irq data) for every frame the
        device owns; a frame keeps driving its own interrupt even after the
        source switched to other pages.
    :param rings: per vcpu, the OS ring of its thread context.
    :param queues: per (vcpu, priority), the event queue entries delivered.
    """

    sources: list[IrqState]
    tima_os: int
    file: File
    mapping: File | None = None
    frames: dict[int, tuple[str, int, IrqData | None]] = field(factory=dict)
    rings: dict[int, OsRing] = field(factory=dict)
    queues: dict[tuple[int, int], list[EqEntry]] = field(factory=dict)
    tracer: Tracer = DISABLED
    next_hw_irq: int = 0x1000
    trace: list[tuple[str, int, str]] = field(factory=list)

    # ------------------------------------------------------------ helpers

    def ring(self, vcpu: int) -> OsRing:
        r = self.rings.get(vcpu)
        if r is None:
            r = self.rings[vcpu] = OsRing()
        return r

    def new_irq_data(self, kvm: Kvm, owner: str, trig_page: bool, store_eoi: bool) -> IrqData:
        """Two MMIO frames (no struct page) for one hardware interrupt's ESB pair."""
        base = kvm.phys.alloc_mmio(2, owner=owner)
        hw = self.next_hw_irq
        self.next_hw_irq += 1
        return IrqData(
            hw_irq=hw,
            trig_page=base if trig_page else 0,
            eoi_page=base + 1,
            store_eoi=store_eoi,
        )

    def claim(self, irq: int, xd: IrqData) -> None:
        if xd.trig_page:
            self.frames[xd.trig_page] = (TRIG, irq, xd)
        self.frames[xd.eoi_page] = (EOI, irq, xd)

    # ------------------------------------------------------------ router / presenter

    def notify(self, kvm: Kvm, irq: int) -> None:
        """The source forwarded an event: route it by the source's
        configuration (EAS) to the target's event queue and presenter."""
        st = self.sources[irq]
        if st.act_priority == MASKED:
            self._note("event_dropped", irq, "source routed nowhere (MASKED)")
            return
        prio = st.act_priority
        self.queues.setdefault((st.act_server, prio), []).append(EqEntry(irq, prio))
        self.ring(st.act_server).pipr_update(prio)
        self._note("event_queued", irq, f"server {st.act_server} priority {prio}")

    def trigger(self, kvm: Kvm, irq: int, xd: IrqData) -> None:
        old = xd.pq
        xd.pq, notify = esb.esb_trigger(old)
        self._note("esb_trigger", irq, f"PQ {esb.PQ_NAMES[old]}->{esb.PQ_NAMES[xd.pq]}")
        if notify:
            self.notify(kvm, irq)

    def eoi(self, kvm: Kvm, irq: int, xd: IrqData) -> bool:
        old = xd.pq
        xd.pq, notify = esb.esb_eoi(old)
        self._note("esb_eoi", irq, f"PQ {esb.PQ_NAMES[old]}->{esb.PQ_NAMES[xd.pq]}")
        if notify:
            self.notify(kvm, irq)
        return notify

    def _note(self, event: str, irq: int, detail: str) -> None:
        """Record a device decision (kept for tests) and trace it."""
        self.trace.append((event, irq, detail))
        if self.tracer.enabled:
            self.tracer.emit(event, irq=irq, detail=detail)

    # ------------------------------------------------------------ MMIO

    def _mgmt_load(self, kvm: Kvm, irq: int, xd: IrqData, off: int, who: str) -> int:
        """A load on the EOI/management page (kernel-notes §G.1); ``xive_vm_esb_load`` when
        the kernel does it.  Returns the loaded value."""
        if off < esb.XIVE_ESB_GET:  # 0x000-0x7ff: load EOI, returns the notify bit
            return 1 if self.eoi(kvm, irq, xd) else 0
        if off < esb.XIVE_ESB_SET_PQ_00:  # 0x800-0xbff: read PQ
            return xd.pq
        old = xd.pq
        xd.pq = (off >> 8) & 0x3  # 0xc00/0xd00/0xe00/0xf00 (+0xff)
        self._note("esb_set_pq", irq, f"{who}: PQ {esb.PQ_NAMES[old]}->{esb.PQ_NAMES[xd.pq]}")
        return old

    def mmio(
        self, kvm: Kvm, vcpu: int, pfn: int, offset: int, op: str, size: int, value: int
    ) -> MmioResult | None:
        """A load or store reaching one of the device's frames: a guest's
        through stage 2, or QEMU's through its own mapping (``vcpu`` =
        ``HOST_VCPU``).  Both are the same MMIO to the same ESB or TIMA page
        (kernel-notes §G.4), so both take this path; only the TIMA, a
        per-thread view, depends on who accesses it."""
        owned = self.frames.get(pfn)
        if owned is None:
            return None
        kind, irq, xd = owned
        load = op != "write"
        if xd is None:
            if vcpu == HOST_VCPU:
                return self._tima_host(offset, load)
            return self._tima(kvm, vcpu, offset, load, size, value)
        who = "host" if vcpu == HOST_VCPU else "guest"
        if xd is not self.sources[irq].select():
            # the source switched pages (passthrough) and a stale stage-2
            # entry still reaches the old ones: they drive the old interrupt
            self._note("esb_stale_frame", irq, f"pfn {pfn:#x} is not the source's page")
        off = offset & 0xFFF
        if kind == TRIG:
            if load:
                return MmioResult(value=esb.all_ones(size), detail="load from a trigger page")
            self.trigger(kvm, irq, xd)
            return MmioResult(value=0, detail=f"trigger irq {irq}")
        if load:
            v = self._mgmt_load(kvm, irq, xd, off, who)
            return MmioResult(value=v, detail=f"ESB load {off:#x} irq {irq}")
        if off < esb.XIVE_ESB_STORE_EOI:
            self.trigger(kvm, irq, xd)
            return MmioResult(value=0, detail=f"trigger irq {irq} (management page)")
        if off < esb.XIVE_ESB_GET:
            if not xd.store_eoi:
                return MmioResult(value=0, detail="store EOI not supported: ignored")
            self.eoi(kvm, irq, xd)
            return MmioResult(value=0, detail=f"store EOI irq {irq}")
        if off >= esb.XIVE_ESB_SET_PQ_00:
            old = xd.pq
            xd.pq = (off >> 8) & 0x3
            change = f"{esb.PQ_NAMES[old]}->{esb.PQ_NAMES[xd.pq]}"
            self._note("esb_set_pq", irq, f"{who} store: PQ {change}")
            return MmioResult(value=0, detail=f"ESB store {off:#x} irq {irq}")
        return MmioResult(value=0, detail=f"invalid ESB store at {off:#x}: ignored")

    def _tima_host(self, offset: int, load: bool) -> MmioResult:
        """QEMU's access to the TIMA OS page through its own mapping.  The
        TIMA shows the thread context of the hardware thread that accesses
        it, and a vcpu's OS context is in a thread only while that vcpu runs
        there (``kvmppc_xive_push_vcpu`` at guest entry, ``_pull_vcpu`` at
        exit): a QEMU thread in host user mode reaches no vcpu's ring, so no
        vcpu's pending interrupt is accepted or CPPR changed.  What such a
        load returns is not modelled (0)."""
        off = offset & 0xFFF
        self._note("tima_host", -1, f"{'load' if load else 'store'} at {off:#x}: no vcpu context")
        return MmioResult(value=0, detail="TIMA access from a host thread: no vcpu context")

    def _tima(
        self, kvm: Kvm, vcpu: int, offset: int, load: bool, size: int, value: int
    ) -> MmioResult:
        """A guest access to the TIMA OS view, as the accessing vcpu's thread."""
        ring = self.ring(vcpu)
        off = offset & 0xFFF
        if load and off == TM_SPC_ACK_OS_REG:
            v = ring.accept()
            self._note("tm_ack_os", vcpu, f"ack returned {v:#06x}")
            return MmioResult(value=v & esb.all_ones(size), detail="TM_SPC_ACK_OS_REG")
        if TM_QW1_OS <= off < TM_QW1_OS + 8 and off + size <= TM_QW1_OS + 8:
            i = off - TM_QW1_OS
            if load:
                return MmioResult(
                    value=int.from_bytes(ring.regs()[i : i + size], "big"), detail="QW1 load"
                )
            if i == 1 and size == 1:  # TM_QW1_OS + TM_CPPR
                ring.set_cppr(value & 0xFF)
                return MmioResult(value=0, detail=f"CPPR set to {ring.cppr:#x}")
        if load:
            return MmioResult(value=0, detail=f"TIMA load at {off:#x} not modelled")
        return MmioResult(value=0, detail=f"TIMA store at {off:#x} ignored")

    # ------------------------------------------------------------ mmap and faults

    def esb_fault(self, vmf: VmFault) -> int:
        """``xive_native_esb_fault``: page pair of the irq, even = trigger,
        odd = EOI/management; insert the pfn and return NOPAGE whatever
        ``vmf_insert_pfn`` said (the kernel ignores its result)."""
        vma = vmf.vma
        page_offset = vmf.pgoff - vma.pgoff
        irq = page_offset // 2
        # kvmppc_xive_find_source: no source block, or a source never set up
        # (its ipi_data has no pages, caught by the WARN below): SIGBUS both ways
        if irq >= len(self.sources):
            self._note("esb_fault", irq, "source not found: VM_FAULT_SIGBUS")
            return VM_FAULT_SIGBUS
        xd = self.sources[irq].select()
        page = xd.eoi_page if page_offset % 2 else xd.trig_page
        if not page:
            self._note("esb_fault", irq, "WARN_ON(!page): VM_FAULT_SIGBUS")
            return VM_FAULT_SIGBUS
        vmf_insert_pfn(vma, vmf.address, page)
        self._note("esb_fault", irq, f"inserted pfn {page:#x}")
        return VM_FAULT_NOPAGE

    def tima_fault(self, vmf: VmFault) -> int:
        """``xive_native_tima_fault``: only the OS view (page 2) is mapped;
        HW, HV and USER (pages 0, 1, 3) and beyond SIGBUS."""
        page = vmf.pgoff - vmf.vma.pgoff
        if page == TIMA_OS_PAGE:
            vmf_insert_pfn(vmf.vma, vmf.address, self.tima_os)
            return VM_FAULT_NOPAGE
        self._note("tima_fault", page, "VM_FAULT_SIGBUS")
        return VM_FAULT_SIGBUS

    def mmap(self, kvm: Kvm, spec: VmaSpec) -> Vma:
        """``kvmppc_xive_native_mmap``: a fixed offset selects TIMA (at most 4
        pages) or ESB (at most 2 per possible irq); VM_IO|VM_PFNMAP,
        ``pgprot_noncached_wc``, nothing populated, and the file's
        address_space saved for ``reset_mapped``."""
        npages = spec.size >> kvm.page_shift
        if spec.pgoff == KVM_XIVE_TIMA_PAGE_OFFSET:
            limit, ops = TIMA_PAGES, VmOps(self.tima_fault, "xive_native_tima_vmops")
        elif spec.pgoff == KVM_XIVE_ESB_PAGE_OFFSET:
            limit, ops = KVMPPC_XIVE_NR_IRQS * 2, VmOps(self.esb_fault, "xive_native_esb_vmops")
        else:
            raise ScenarioError(
                f"kvmppc_xive_native_mmap returns -EINVAL for vma {spec.name!r}: pgoff "
                f"{spec.pgoff} is neither the TIMA ({KVM_XIVE_TIMA_PAGE_OFFSET}) nor the "
                f"ESB ({KVM_XIVE_ESB_PAGE_OFFSET}) offset",
                key=f"vma {spec.name}.pgoff",
            )
        if npages > limit:
            raise ScenarioError(
                f"kvmppc_xive_native_mmap returns -EINVAL for vma {spec.name!r}: "
                f"{npages} pages, at most {limit} at pgoff {spec.pgoff}",
                key=f"vma {spec.name}.size",
            )
        vma = kvm.mm.mmap(
            spec.size,
            prot=spec.prot,
            shared=spec.shared,
            file=self.file,
            pgoff=spec.pgoff,
            extra_flags=VM_IO | VM_PFNMAP,
            ops=ops,
            name=spec.name,
        )
        vma.page_prot = (vma.page_prot & ~PTE_CACHE_BITS) | PTE_NONCACHED
        vma.private_data = self
        self.mapping = self.file
        return vma

    # ------------------------------------------------------------ passthrough

    def reset_mapped(self, kvm: Kvm, irq: int) -> int:
        """``kvmppc_xive_native_reset_mapped``: unmap the irq's two ESB pages
        from every mapping of the device file (MMU notifiers fire), so the
        next access faults and the handler picks the current pages."""
        if irq >= KVMPPC_XIVE_NR_IRQS:
            return -22  # -EINVAL
        if self.mapping is not None:
            ps = kvm.page_shift
            unmap_mapping_range(
                self.mapping, (KVM_XIVE_ESB_PAGE_OFFSET + irq * 2) << ps, 2 << ps, True
            )
        self._note("reset_mapped", irq, "ESB pages unmapped")
        return 0

    def lock_and_mask(self, kvm: Kvm, st: IrqState) -> tuple[int, bool]:
        """``xive_lock_and_mask`` (MSI): PQ = 10 on the current data so no
        new event is forwarded; returns (guest priority, old P)."""
        old = self._mgmt_load(kvm, st.number, st.select(), esb.XIVE_ESB_SET_PQ_10, "kernel")
        return st.act_priority, bool(old & esb.ESB_VAL_P)

    def set_mapped(self, kvm: Kvm, irq: int) -> None:
        """``kvmppc_xive_set_mapped``: the source starts passthrough.  The host
        interrupt is parked (``irq_set_vcpu_affinity``: PQ 10); the source is
        masked, the IPI turned hard off (SET_PQ_01), ``reset_mapped`` called,
        then the source switches to the host device interrupt's ESB pages and,
        if the guest had it enabled and nothing was pending, EOIs it
        (``xive_vm_source_eoi``: SET_PQ_00, re-trigger if Q was set).  The
        locking (``sb->lock`` held across, the fault handler's own
        ``select_irq`` outside it) is not modelled."""
        st = self.sources[irq]
        if st.pt_data is not None:
            return
        # The host device's interrupt, enabled by its host driver (PQ 00);
        # irq_set_vcpu_affinity (host xive_irq_set_vcpu_affinity) first parks
        # it at PQ 10 so that it sends nothing more.
        pt = self.new_irq_data(kvm, f"xive:pt:{irq}", True, False)
        pt.pq = esb.PQ_RESET
        self.claim(irq, pt)
        self._mgmt_load(kvm, irq, pt, esb.XIVE_ESB_SET_PQ_10, "host irq_set_vcpu_affinity")
        prio, old_p = self.lock_and_mask(kvm, st)
        self._mgmt_load(kvm, irq, st.ipi_data, esb.XIVE_ESB_SET_PQ_01, "kernel")
        self.reset_mapped(kvm, irq)
        st.pt_data = pt
        if prio != MASKED and not old_p:
            self.source_eoi(kvm, irq, pt)

    def clr_mapped(self, kvm: Kvm, irq: int) -> None:
        """``kvmppc_xive_clr_mapped``: the source leaves passthrough.  Mask;
        if P was set, PQ = 11 on the device interrupt (so the host resends
        it); forget it; ``reset_mapped``; the IPI gets PQ = 10 if the source
        was masked or pending, else 00.  What ``irq_set_vcpu_affinity(NULL)``
        does to the host interrupt afterwards is not modelled (the guest no
        longer reaches its pages)."""
        st = self.sources[irq]
        pt = st.pt_data
        if pt is None:
            return
        prio, old_p = self.lock_and_mask(kvm, st)
        if old_p:
            self._mgmt_load(kvm, irq, pt, esb.XIVE_ESB_SET_PQ_11, "kernel")
        st.pt_data = None
        self.reset_mapped(kvm, irq)
        pq = esb.XIVE_ESB_SET_PQ_10 if prio == MASKED or old_p else esb.XIVE_ESB_SET_PQ_00
        self._mgmt_load(kvm, irq, st.ipi_data, pq, "kernel")

    def source_eoi(self, kvm: Kvm, irq: int, xd: IrqData) -> None:
        """``xive_vm_source_eoi`` for an MSI: SET_PQ_00, and a trigger if Q was set."""
        old = self._mgmt_load(kvm, irq, xd, esb.XIVE_ESB_SET_PQ_00, "kernel")
        if old & esb.ESB_VAL_Q:
            self.trigger(kvm, irq, xd)


MODEL_MAX_SOURCES = 1 << 16
"""Sources one simulated device may have: each is set up eagerly, so more
would cost seconds before the first step (a documented model limit)."""


def create(kvm: Kvm, spec: DeviceSpec, where: str) -> XiveDevice:
    """KVM_CREATE_DEVICE plus the set-up QEMU and the guest do before the
    scenario starts: ``sources`` sources (KVM_DEV_XIVE_GRP_SOURCE) each with
    an IPI whose ESB pair is two MMIO frames, configured
    (KVM_DEV_XIVE_GRP_SOURCE_CONFIG) to ``server`` at ``priority`` and, unless
    ``masked``, enabled by the guest (PQ = 00; QEMU and set_source leave it
    at 01).  ``trigger_page = false`` models firmware giving no trigger page."""
    sources = _int(spec, "sources", 16, where, lo=1, hi=KVMPPC_XIVE_NR_IRQS)
    if sources > MODEL_MAX_SOURCES:
        raise ScenarioError(
            f"the model sets every source up at once (an IPI and its ESB pair each) and "
            f"simulates at most {MODEL_MAX_SOURCES}; the kernel accepts {KVMPPC_XIVE_NR_IRQS}",
            key=f"{where}.sources",
            expected=f"an integer in 1..{MODEL_MAX_SOURCES}",
            got=sources,
        )
    priority = _int(spec, "priority", 6, where, lo=0, hi=7)
    server = _int(spec, "server", 0, where, lo=0, hi=1 << 16)
    masked = _bool(spec, "masked", False, where)
    trig = _bool(spec, "trigger_page", True, where)
    store_eoi = _bool(spec, "store_eoi", False, where)
    ps = kvm.page_shift
    dev = XiveDevice(
        sources=[],
        tima_os=kvm.phys.alloc_mmio(1, owner="xive:tima_os"),
        file=File(name="kvm-xive-native", size=(KVM_XIVE_ESB_PAGE_OFFSET + 2 * sources) << ps),
        tracer=kvm.tracer,
    )
    dev.file.private_data = dev
    dev.frames[dev.tima_os] = (TIMA_OS, -1, None)
    for irq in range(sources):
        ipi = dev.new_irq_data(kvm, f"xive:ipi:{irq}", trig, store_eoi)
        ipi.pq = esb.PQ_OFF if masked else esb.PQ_RESET
        st = IrqState(
            number=irq,
            ipi_data=ipi,
            act_server=server,
            act_priority=MASKED if masked else priority,
        )
        dev.sources.append(st)
        dev.claim(irq, ipi)
    return dev


def _int(spec: DeviceSpec, key: str, default: int, where: str, *, lo: int, hi: int) -> int:
    v = spec.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ScenarioError(
            "wrong value", key=f"{where}.{key}", expected=f"an integer in {lo}..{hi}", got=v
        )
    return v


def _bool(spec: DeviceSpec, key: str, default: bool, where: str) -> bool:
    v = spec.get(key, default)
    if not isinstance(v, bool):
        raise ScenarioError("wrong type", key=f"{where}.{key}", expected="true or false", got=v)
    return v
