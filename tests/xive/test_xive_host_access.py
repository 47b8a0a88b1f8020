"""QEMU's own loads and stores on the XIVE ESB and TIMA pages (``host_read``
and ``host_write`` through its mapping of the device file; kernel-notes
§G.4).  QEMU's PTE and the guest's stage-2 entry hold the same hardware ESB
page, so a host access must do exactly what the same guest access does: the
tests run each one both ways from the same state and compare the device,
and check the PQ transitions themselves against §G.1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kvmsim_plugins.xive import esb
from kvmsim_plugins.xive.device import XiveDevice
from kvmsim_plugins.xive.tima import TM_QW1_OS, TM_SPC_ACK_OS_REG

from kvmsim.host.constants import PTE_PFN_SHIFT, PTE_PRESENT, PTE_SPECIAL
from kvmsim.runner import RunReport, Simulation

STRATEGY = "generic_v4_16"
PAGE = 1 << 16  # ppc_radix: 64K pages
ESB_GPA = 0x6_0000_0000
TIMA_GPA = 0x6_0100_0000

HEAD = """
name = "t"
arch = "ppc_radix"

[[device]]
kind = "xive"
sources = 4
priority = 6
{device}

[[vma]]
name = "esb"
size = "512K"
backing = "device"
device = "xive"
prot = "rw"
shared = true
pgoff = 4

[[vma]]
name = "tima"
size = "256K"
backing = "device"
device = "xive"
prot = "rw"
shared = true
pgoff = 0

[[memslot]]
gpa = 0x6_0000_0000
vma = "esb"

[[memslot]]
gpa = 0x6_0100_0000
vma = "tima"
"""


def host(do: str, vma: str, offset: int, **kv: int) -> str:
    extra = "".join(f"{k} = {v:#x}\n" for k, v in kv.items())
    return f'\n[[step]]\ndo = "{do}"\nvma = "{vma}"\noffset = {offset:#x}\n{extra}'


def guest(gpa: int, op: str, **kv: int) -> str:
    extra = "".join(f"{k} = {v:#x}\n" for k, v in kv.items())
    return f'\n[[step]]\ndo = "access"\ngpa = {gpa:#x}\nop = "{op}"\n{extra}'


def run(
    make_sim: Callable[..., Simulation], *steps: str, device: str = ""
) -> tuple[Simulation, RunReport]:
    sim = make_sim(HEAD.format(device=device) + "".join(steps), strategy=STRATEGY)
    return sim, sim.run()


def dev_of(sim: Simulation) -> XiveDevice:
    dev = sim.kvm.devices["xive"]
    assert isinstance(dev, XiveDevice)
    return dev


def state(sim: Simulation) -> Any:
    """What the device holds: every source's PQ, the event queues, the rings."""
    dev = dev_of(sim)
    return (
        [s.ipi_data.pq for s in dev.sources],
        {k: [(e.eisn, e.priority) for e in q] for k, q in dev.queues.items()},
        {v: r.regs() for v, r in dev.rings.items()},
    )


def set_pq(source: int, pq: int) -> str:
    """QEMU puts a source in a PQ state first (a load at SET_PQ_xx)."""
    return host("host_read", "esb", (2 * source + 1) * PAGE + esb.set_pq_offset(pq))


# The management-page operations (§G.1), each as (op, offset in the page, value stored)
MGMT_OPS = [
    ("read", esb.XIVE_ESB_LOAD_EOI, 0),
    ("read", esb.XIVE_ESB_GET, 0),
    *[("read", esb.set_pq_offset(pq), 0) for pq in range(4)],
    ("write", 0x000, 0),  # a store at 0x000-0x3ff triggers
    ("write", esb.XIVE_ESB_STORE_EOI, 0),  # Store EOI: ignored unless supported
    ("write", esb.XIVE_ESB_SET_PQ_10, 0),  # a store at SET_PQ_10 sets 10
]


@pytest.mark.parametrize("start", range(4), ids=lambda p: f"PQ{p:02b}")
@pytest.mark.parametrize(("op", "off", "value"), MGMT_OPS)
@pytest.mark.parametrize("store_eoi", [False, True])
def test_a_host_management_access_is_the_guest_access(
    make_sim: Callable[..., Simulation],
    start: int,
    op: str,
    off: int,
    value: int,
    store_eoi: bool,
) -> None:
    # source 1's management page is page 3 of the ESB vma
    device = f"store_eoi = {str(store_eoi).lower()}"
    pre = set_pq(1, start)
    by_host, rh = run(
        make_sim,
        pre,
        host("host_read" if op == "read" else "host_write", "esb", 3 * PAGE + off)
        + ("" if op == "read" else f"value = {value}\n"),
        device=device,
    )
    by_guest, rg = run(
        make_sim, pre, guest(ESB_GPA + 3 * PAGE + off, op, value=value), device=device
    )
    assert rh.passed and rg.passed, (rh.to_json(), rg.to_json())
    assert rg.steps[1].outcome == "mmio"
    assert state(by_host) == state(by_guest)
    if op == "read":
        assert rh.steps[1].value == rg.steps[1].value is not None


@pytest.mark.parametrize(
    ("start", "off", "ret", "after"),
    [
        # SET_PQ_xx returns the old PQ and sets xx
        (0b00, esb.XIVE_ESB_SET_PQ_01, 0b00, 0b01),
        (0b11, esb.XIVE_ESB_SET_PQ_00, 0b11, 0b00),
        # GET has no side effect
        (0b10, esb.XIVE_ESB_GET, 0b10, 0b10),
        # LOAD_EOI: 10 -> 00 (nothing to forward: 0); 11 -> 10, forwarded again: 1
        (0b10, esb.XIVE_ESB_LOAD_EOI, 0, 0b00),
        (0b11, esb.XIVE_ESB_LOAD_EOI, 1, 0b10),
        # a masked source stays masked
        (0b01, esb.XIVE_ESB_LOAD_EOI, 0, 0b01),
    ],
)
def test_host_loads_have_the_esb_side_effects(
    make_sim: Callable[..., Simulation], start: int, off: int, ret: int, after: int
) -> None:
    sim, report = run(
        make_sim,
        set_pq(1, start),
        host("host_read", "esb", 3 * PAGE + off),
        guest(ESB_GPA + 3 * PAGE + esb.XIVE_ESB_GET, "read"),
    )
    assert report.steps[1].value == ret
    assert dev_of(sim).sources[1].ipi_data.pq == after
    # the guest's next load sees what QEMU's left
    assert report.steps[2].value == after


def test_a_host_trigger_store_routes_the_event_to_the_vcpu(
    make_sim: Callable[..., Simulation],
) -> None:
    sim, report = run(make_sim, host("host_write", "esb", 2 * PAGE, value=0))
    assert report.passed and report.steps[0].value is None  # a store reads nothing
    dev = dev_of(sim)
    # 00 -> 10 and forwarded: queued for server 0 at priority 6, PIPR 6 < CPPR
    assert dev.sources[1].ipi_data.pq == esb.PQ_PENDING
    assert [(e.eisn, e.priority) for e in dev.queues[(0, 6)]] == [(1, 6)]
    assert dev.ring(0).pipr == 6 and dev.ring(0).line
    # a second host store while pending only sets Q
    sim, _report = run(
        make_sim,
        host("host_write", "esb", 2 * PAGE, value=0),
        host("host_write", "esb", 2 * PAGE, value=0),
    )
    assert dev_of(sim).sources[1].ipi_data.pq == esb.PQ_QUEUED
    assert len(dev_of(sim).queues[(0, 6)]) == 1


def test_a_host_load_from_a_trigger_page_changes_nothing(
    make_sim: Callable[..., Simulation],
) -> None:
    sim, report = run(make_sim, host("host_read", "esb", 2 * PAGE))
    # an invalid load: all ones, as the guest's (xive_source_esb_read)
    assert report.steps[0].value == (1 << 64) - 1
    assert dev_of(sim).sources[1].ipi_data.pq == esb.PQ_RESET


def test_host_tima_accesses_reach_no_vcpu_context(make_sim: Callable[..., Simulation]) -> None:
    os_page = 2 * PAGE
    sim, report = run(
        make_sim,
        guest(ESB_GPA + 2 * PAGE, "write"),  # an interrupt pending for vcpu 0
        host("host_read", "tima", os_page + TM_SPC_ACK_OS_REG, width=2),
        host("host_write", "tima", os_page + TM_QW1_OS + 1, width=1, value=0),
        guest(TIMA_GPA + os_page + TM_SPC_ACK_OS_REG, "read", width=2),
    )
    assert report.passed, report.to_json()
    # QEMU's ack accepted nothing and its CPPR store changed no vcpu's CPPR:
    # the guest's ack still accepts priority 6 (NSR 0x80 before, CPPR 6)
    assert report.steps[3].value == 0x8006
    assert set(dev_of(sim).rings) == {0}


def test_a_host_access_faults_the_device_page_in(make_sim: Callable[..., Simulation]) -> None:
    sim, _report = run(make_sim, host("host_read", "esb", 3 * PAGE + esb.XIVE_ESB_GET))
    dev = dev_of(sim)
    pte, _ = sim.mm.pgtable.find_linux_pte(sim.vma("esb").start + 3 * PAGE)
    # handle_mm_fault -> xive_native_esb_fault -> vmf_insert_pfn: a special PTE
    assert pte is not None and pte & PTE_PRESENT and pte & PTE_SPECIAL
    assert pte >> PTE_PFN_SHIFT == dev.sources[1].ipi_data.eoi_page
    assert [d for e, _, d in dev.trace if e == "esb_fault"]


def test_a_host_load_from_an_unmappable_tima_page_is_sigbus(
    make_sim: Callable[..., Simulation],
) -> None:
    # xive_native_tima_fault maps only the OS page: page 0 (HW) is SIGBUS
    _sim, report = run(make_sim, host("host_read", "tima", 0x10, width=8))
    assert report.steps[0].value is None
    assert "SIGBUS" in report.steps[0].detail


def test_after_passthrough_qemu_reaches_the_new_esb_pages(
    make_sim: Callable[..., Simulation],
) -> None:
    reset = '\n[[step]]\ndo = "device_reset"\ndevice = "xive"\nsource = 1\n'
    get = host("host_read", "esb", 3 * PAGE + esb.XIVE_ESB_GET)
    sim, report = run(make_sim, get, reset, get)
    st = dev_of(sim).sources[1]
    assert st.pt_data is not None
    # reset_mapped unmapped QEMU's PTE too (unmap_mapping_range on the device
    # file): the next load faults and reads the passthrough interrupt's PQ
    # (00 after set_mapped's source EOI), not the IPI's, turned off (01)
    assert report.steps[0].value == esb.PQ_RESET
    assert st.ipi_data.pq == esb.PQ_OFF
    assert report.steps[2].value == st.pt_data.pq == esb.PQ_RESET
    pte, _ = sim.mm.pgtable.find_linux_pte(sim.vma("esb").start + 3 * PAGE)
    assert pte is not None and pte >> PTE_PFN_SHIFT == st.pt_data.eoi_page
