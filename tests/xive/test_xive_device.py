"""The device's ESB MMIO layer (real offsets, G.1), its fault handlers (G.2)
and its bad-input errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kvmsim_plugins.xive import esb
from kvmsim_plugins.xive.device import XiveDevice

from kvmsim.errors import ScenarioError
from kvmsim.host.constants import VM_FAULT_NOPAGE, VM_FAULT_SIGBUS
from kvmsim.host.vma import Vma, VmFault
from kvmsim.runner import Simulation
from kvmsim.scenario import builtin_scenarios

EOI_SCENARIO = next(p for p in builtin_scenarios() if p.stem == "xive-esb-eoi")

# G.1 again, as (old PQ) -> (PQ after a trigger store, events forwarded),
# (PQ after a load EOI, value the load returns, events forwarded)
MMIO_TABLE = {
    0b00: ((0b10, 1), (0b00, 0, 0)),
    0b10: ((0b11, 0), (0b00, 0, 0)),
    0b11: ((0b11, 0), (0b10, 1, 1)),
    0b01: ((0b01, 0), (0b01, 0, 0)),
}


@pytest.fixture
def sim(make_sim: Callable[..., Simulation]) -> Simulation:
    return make_sim(EOI_SCENARIO, strategy="generic_v4_16")


def _dev(sim: Simulation) -> XiveDevice:
    dev = sim.kvm.devices["xive"]
    assert isinstance(dev, XiveDevice)
    return dev


def _load(sim: Simulation, pfn: int, off: int, size: int = 8) -> int:
    r = _dev(sim).mmio(sim.kvm, 0, pfn, off, "read", size, 0)
    assert r is not None
    return r.value


def _store(sim: Simulation, pfn: int, off: int, value: int = 0) -> None:
    assert _dev(sim).mmio(sim.kvm, 0, pfn, off, "write", 8, value) is not None


def _events(dev: XiveDevice) -> int:
    return sum(len(q) for q in dev.queues.values())


@pytest.mark.parametrize("old", sorted(MMIO_TABLE))
def test_pq_through_the_esb_offsets(sim: Simulation, old: int) -> None:
    dev = _dev(sim)
    xd = dev.sources[0].ipi_data
    (trig_pq, trig_events), (eoi_pq, eoi_value, eoi_events) = MMIO_TABLE[old]
    # SET_PQ_xx loads return the previous PQ (initially 00: enabled source)
    assert _load(sim, xd.eoi_page, esb.set_pq_offset(old)) == 0b00
    assert _load(sim, xd.eoi_page, esb.XIVE_ESB_GET) == old
    _store(sim, xd.trig_page, 0)
    assert _load(sim, xd.eoi_page, esb.XIVE_ESB_GET) == trig_pq
    assert _events(dev) == trig_events
    _load(sim, xd.eoi_page, esb.set_pq_offset(old))
    before = _events(dev)
    assert _load(sim, xd.eoi_page, esb.XIVE_ESB_LOAD_EOI) == eoi_value
    assert _load(sim, xd.eoi_page, esb.XIVE_ESB_GET) == eoi_pq
    assert _events(dev) - before == eoi_events


def test_other_esb_accesses(sim: Simulation) -> None:
    dev = _dev(sim)
    xd = dev.sources[3].ipi_data
    # a load from the trigger page is invalid and returns all ones
    assert _load(sim, xd.trig_page, 0x800) == (1 << 64) - 1
    assert _load(sim, xd.trig_page, 0x800, 2) == 0xFFFF
    # a store to 0x000-0x3ff of the management page triggers
    _store(sim, xd.eoi_page, 0x000)
    assert xd.pq == 0b10
    # store EOI (0x400) is ignored when the source does not support it
    _store(sim, xd.eoi_page, esb.XIVE_ESB_STORE_EOI)
    assert xd.pq == 0b10
    # stores at 0xc00-0xfff set PQ; only the low 12 bits of the offset count
    _store(sim, xd.eoi_page, 0x1_0000 - 0x1000 + esb.XIVE_ESB_SET_PQ_01)
    assert xd.pq == 0b01
    # a frame the device does not own is not its business
    assert dev.mmio(sim.kvm, 0, 12345, 0, "read", 8, 0) is None


def test_store_eoi_when_supported(make_sim: Callable[..., Simulation]) -> None:
    text = EOI_SCENARIO.read_text().replace("priority = 6", "store_eoi = true")
    sim = make_sim(text, strategy="generic_v4_16")
    xd = _dev(sim).sources[0].ipi_data
    _store(sim, xd.trig_page, 0)
    _store(sim, xd.eoi_page, esb.XIVE_ESB_STORE_EOI)
    assert xd.pq == 0b00


def test_masked_sources_drop_events(make_sim: Callable[..., Simulation]) -> None:
    # QEMU and set_source leave a source at PQ 01 routed nowhere
    text = EOI_SCENARIO.read_text().replace("priority = 6", "masked = true")
    sim = make_sim(text, strategy="generic_v4_16")
    dev = _dev(sim)
    xd = dev.sources[1].ipi_data
    assert xd.pq == 0b01
    _store(sim, xd.trig_page, 0)
    assert xd.pq == 0b01 and not dev.queues
    # enabled but routed nowhere (MASKED in the EAS): the event is dropped
    _load(sim, xd.eoi_page, esb.XIVE_ESB_SET_PQ_00)
    _store(sim, xd.trig_page, 0)
    assert xd.pq == 0b10 and not dev.queues


def test_fault_handlers(sim: Simulation) -> None:
    dev = _dev(sim)
    esb_vma, tima_vma = sim.vma("esb"), sim.vma("tima")
    ps = sim.kvm.page_shift

    def vmf(vma: Vma, page: int) -> VmFault:
        # what do_fault hands the handler: vmf->pgoff = vm_pgoff + page index
        return VmFault(vma, vma.start + (page << ps), vma.pgoff + page, 0)

    # G.2 TIMA: 0 HW and 1 HV forbidden, 2 OS inserted, 3 USER and beyond forbidden
    assert [dev.tima_fault(vmf(tima_vma, p)) for p in (0, 1, 3, 4)] == [VM_FAULT_SIGBUS] * 4
    assert dev.tima_fault(vmf(tima_vma, 2)) == VM_FAULT_NOPAGE
    # ESB: beyond the last source (4 sources = pages 0-7) SIGBUS
    assert dev.esb_fault(vmf(esb_vma, 8)) == VM_FAULT_SIGBUS
    assert dev.esb_fault(vmf(esb_vma, 7)) == VM_FAULT_NOPAGE
    # a PTE already there (-EBUSY inside vmf_insert_pfn) still gives NOPAGE
    assert dev.esb_fault(vmf(esb_vma, 7)) == VM_FAULT_NOPAGE


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("pgoff = 4", "pgoff = 8", "neither the TIMA"),
        ('size = "256K"', 'size = "320K"', "at most 4"),
        ("sources = 4", "sources = 0", "wrong value"),
        ("sources = 4", 'sources = "four"', "wrong value"),
        # the kernel takes 2^20; the model sets each up eagerly (issue 22 fuzzing)
        ("sources = 4", "sources = 798720", "simulates at most 65536"),
        ("priority = 6", "priority = 8", "wrong value"),
        ("priority = 6", "masked = 1", "wrong type"),
    ],
)
def test_bad_device_input_is_one_scenario_error(
    make_sim: Callable[..., Simulation], old: str, new: str, message: str
) -> None:
    text = EOI_SCENARIO.read_text()
    assert old in text
    with pytest.raises(ScenarioError) as e:
        make_sim(text.replace(old, new, 1), strategy="generic_v4_16")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "extra", ["source = 4", 'source = "x"', "irq = -1", "source = 1\npassthrough = 3", ""]
)
def test_bad_reset_is_one_scenario_error(make_sim: Callable[..., Simulation], extra: str) -> None:
    text = EOI_SCENARIO.read_text() + f'\n[[step]]\ndo = "device_reset"\ndevice = "xive"\n{extra}\n'
    with pytest.raises(ScenarioError) as e:
        make_sim(text, strategy="generic_v4_16").run()
    assert "step[6]" in str(e.value)
