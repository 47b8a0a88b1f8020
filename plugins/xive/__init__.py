"""The XIVE interrupt controller as a kvmsim device (``kind = "xive"``).

Models the KVM XIVE native device (arch/powerpc/kvm/book3s_xive_native.c;
kernel-notes §G.1-G.3): per-source ESB page pairs and the TIMA OS page
at MMIO frames without struct page, mmapped by QEMU as VM_IO|VM_PFNMAP vmas
that fault handlers populate on demand, which is exactly the kind of vma the
2018 RFC was about.

Scenario keys of a ``[[device]]`` with ``kind = "xive"`` (all optional):
``sources`` (int, default 16), ``priority`` (0-7, default 6), ``server``
(vcpu, default 0), ``masked`` (bool: sources start at PQ = 01 and routed
nowhere), ``trigger_page`` (bool, default true; false = no separate trigger
page), ``store_eoi`` (bool).  Device vmas: ``backing = "device"``,
``device = "xive"``, ``shared = true``, ``pgoff = 0`` (TIMA, up to 4 pages)
or ``pgoff = 4`` (ESB, two pages per source).

``device_reset`` step (``device = "xive"``, ``source = N``, optional
``passthrough = true|false``): source N enters (default) or leaves
passthrough, i.e. ``kvmppc_xive_set_mapped`` / ``kvmppc_xive_clr_mapped``
with their call of ``kvmppc_xive_native_reset_mapped``: the IPI is turned
hard off (SET_PQ_01), the source's two ESB pages are unmapped from the
device file's mappings with ``unmap_mapping_range`` (MMU notifiers: the
stage-2 entries go), and the source now uses other ESB pages (new MMIO
frames: the host device interrupt's), which the next fault inserts.  It is
**not** the KVM_DEV_XIVE_RESET control, which masks sources and frees queues
but unmaps nothing (kernel-notes §G.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmsim_plugins.xive.device import XiveDevice, create

from kvmsim import hookimpl
from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import DeviceInfo, MmioResult, StepResult
from kvmsim.scenario.model import DeviceKind

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.scenario.model import DeviceSpec, StepSpec, VmaSpec

NAME = "xive"

#: The scenario keys of a xive ``[[device]]`` and of its ``device_reset``
#: steps, for :func:`kvmsim.scenario.load_scenario` (``devices={...}``).
DEVICE_KIND = DeviceKind(
    NAME,
    fields={
        "sources": int,
        "priority": int,
        "server": int,
        "masked": bool,
        "trigger_page": bool,
        "store_eoi": bool,
    },
    reset_fields={"source": int, "irq": int, "passthrough": bool},
)


@hookimpl
def device_info() -> DeviceInfo:
    return DeviceInfo(
        name=NAME,
        description="POWER9 XIVE native device: ESB and TIMA MMIO pages, PQ state machine",
    )


@hookimpl
def device_kind() -> DeviceKind:
    return DEVICE_KIND


@hookimpl
def device_init(kvm: Kvm, spec: DeviceSpec) -> Any:
    if spec.kind != NAME:
        return None
    return create(kvm, spec, "device[xive]")


@hookimpl
def device_mmap(kvm: Kvm, device: Any, spec: VmaSpec) -> Any:
    if not isinstance(device, XiveDevice):
        return None
    return device.mmap(kvm, spec)


@hookimpl
def mmio_access(
    kvm: Kvm, vcpu: int, pfn: int, offset: int, op: str, size: int, value: int
) -> MmioResult | None:
    dev = kvm.devices.get(NAME)
    if not isinstance(dev, XiveDevice):
        return None
    return dev.mmio(kvm, vcpu, pfn, offset, op, size, value)


@hookimpl
def device_step(kvm: Kvm, step: StepSpec) -> StepResult | None:
    """``device_reset``: ``kvmppc_xive_set_mapped`` (``passthrough = true``,
    the default) or ``kvmppc_xive_clr_mapped`` (false) of ``source`` (or
    ``irq``), each calling ``kvmppc_xive_native_reset_mapped``."""
    if step.do != "device_reset" or step.params.get("device") != NAME:
        return None
    dev = kvm.devices.get(NAME)
    assert isinstance(dev, XiveDevice)
    key = "source" if "source" in step.params else "irq"
    irq = step.params.get(key)
    where = f"step[{step.index}]"
    if isinstance(irq, bool) or not isinstance(irq, int):
        raise ScenarioError(
            "a xive device_reset names the source",
            key=f"{where}.source",
            expected="an integer source number",
            got=irq,
        )
    if not 0 <= irq < len(dev.sources):
        raise ScenarioError(
            "no such source",
            key=f"{where}.{key}",
            expected=f"0..{len(dev.sources) - 1}",
            got=irq,
        )
    passthrough = step.params.get("passthrough", True)
    if not isinstance(passthrough, bool):
        raise ScenarioError(
            "wrong type", key=f"{where}.passthrough", expected="true or false", got=passthrough
        )
    if passthrough:
        dev.set_mapped(kvm, irq)
        return StepResult(outcome="done", detail=f"source {irq} entered passthrough")
    dev.clr_mapped(kvm, irq)
    return StepResult(outcome="done", detail=f"source {irq} left passthrough")
