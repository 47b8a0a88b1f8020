"""The builtin xive scenarios on ppc_radix (64K pages), under the strategies
that resolve fault-populated PFNMAP vmas and under ppc_original (v4.15)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
from kvmsim_plugins.xive.device import XiveDevice

from kvmsim import hookimpl
from kvmsim.host.constants import PTE_NONCACHED, PTE_PFN_SHIFT, PTE_PRESENT, PTE_SPECIAL
from kvmsim.registry import discover
from kvmsim.runner import RunReport, Simulation
from kvmsim.scenario import builtin_scenarios, load_scenario

LIB = {p.stem: p for p in builtin_scenarios() if p.stem.startswith("xive-")}
ESB_GPA = 0x6_0000_0000
PAGE = 1 << 16

# Strategies whose hva_to_pfn runs the vma's fault handler and reads the PTE
# (hva_to_pfn_remapped: follow_pfn, fixup_user_fault).  The RFC-era ones come
# from the strategies work; a missing entry point is skipped, not failed.
RESOLVING = ["generic_v4_16", "cedric_rfc", "cedric_reviewed", "upstream_final"]


def _need(strategy: str) -> None:
    if strategy not in discover()["strategy"]:
        pytest.skip(f"strategy {strategy!r} has no entry point yet")


def _run(
    make_sim: Callable[..., Simulation], name: str, strategy: str, **kw: Any
) -> tuple[Simulation, RunReport]:
    sim = make_sim(LIB[name], strategy=strategy, **kw)
    return sim, sim.run()


def _dev(sim: Simulation) -> XiveDevice:
    dev = sim.kvm.devices["xive"]
    assert isinstance(dev, XiveDevice)
    return dev


def _mappings(sim: Simulation) -> dict[int, Any]:
    return {m.gpa: m for m in sim.hooks.hook.stage2_mappings(kvm=sim.kvm)}


def test_library_has_the_xive_scenarios() -> None:
    assert set(LIB) >= {
        "xive-esb-eoi",
        "xive-esb-host-touched",
        "xive-esb-device-reset",
        "xive-esb-beyond-last-source",
        "xive-tima",
    }


@pytest.mark.parametrize("strategy", RESOLVING)
@pytest.mark.parametrize("name", sorted(LIB))
def test_scenarios_pass_under_resolving_strategies(
    run_sim: Callable[..., RunReport], name: str, strategy: str
) -> None:
    # Their expectations are what a kernel that runs the fault handler and
    # reads the PTE does (A.8, C.1, G.2); every such strategy must meet them.
    _need(strategy)
    report = run_sim(LIB[name], strategy=strategy)
    known = load_scenario(LIB[name]).known_for(strategy, "ppc_radix")
    if known:  # a race the handler version loses (the v4.17 PTE re-read): as recorded
        assert sorted({v.name for v in report.verdicts}) == list(known[0].verdicts)
        return
    assert report.passed, [(s.index, s.outcome, s.expect_failures) for s in report.steps]
    assert not report.verdicts


def test_trigger_queue_ack_eoi(make_sim: Callable[..., Simulation]) -> None:
    sim, report = _run(make_sim, "xive-esb-eoi", "generic_v4_16")
    dev = _dev(sim)
    values = [s.value for s in report.steps]
    # G.3 QW1 bytes after the trigger: NSR.EO (0x80), CPPR 0xff, IPB bit of
    # priority 6 (1 << 1), LSMFB/ACK_CNT/INC/AGE 0, PIPR 6
    qw1 = bytes((0x80, 0xFF, 0x02, 0, 0, 0, 0, 6))
    # ACK_OS_REG returns (NSR before << 8) | new CPPR; GET returns PQ: 10 while
    # pending; load EOI of 10 returns 0 (no re-notify, G.1); then PQ 00
    assert values == [0, int.from_bytes(qw1, "big"), 0x8006, 0b10, 0, 0b00]
    ipi = dev.sources[1].ipi_data
    assert ipi.pq == 0b00
    assert [(e.eisn, e.priority) for e in dev.queues[(0, 6)]] == [(1, 6)]
    ring = dev.ring(0)
    assert ring.cppr == 6 and ring.ipb == 0 and not ring.line
    # the guest reached the device's frames through stage 2 (no struct page)
    assert report.steps[0].pfn == ipi.trig_page
    assert report.steps[4].pfn == ipi.eoi_page
    assert report.steps[1].pfn == dev.tima_os
    # C.1: with no struct page the v4.17 handler copies the host PTE, so the
    # stage-2 entries are cache-inhibited (pgprot_noncached_wc of the vma)
    maps = _mappings(sim)
    assert maps and all(m.noncached for m in maps.values())
    # every page reached its fault handler once, through fixup_user_fault
    faults = [d for e, _, d in dev.trace if e == "esb_fault"]
    assert faults == [f"inserted pfn {ipi.trig_page:#x}", f"inserted pfn {ipi.eoi_page:#x}"]
    names = [e["event"] for e in report.events]
    assert "fixup_user_fault" in names


def test_mmap_is_pfnmap_noncached_and_unpopulated(make_sim: Callable[..., Simulation]) -> None:
    # G.2 kvmppc_xive_native_mmap: VM_IO|VM_PFNMAP, noncached, nothing populated
    from kvmsim.host.constants import VM_IO, VM_PFNMAP

    sim = make_sim(LIB["xive-esb-eoi"], strategy="generic_v4_16")
    dev = _dev(sim)
    for name, ops in (("esb", "xive_native_esb_vmops"), ("tima", "xive_native_tima_vmops")):
        vma = sim.vma(name)
        assert vma.flags & (VM_IO | VM_PFNMAP) == VM_IO | VM_PFNMAP
        assert vma.page_prot & PTE_NONCACHED
        assert vma.ops.name == ops
        assert vma.file is dev.file and vma in dev.file.mapping
        assert not list(sim.mm.pgtable.ptes_in(vma.start, vma.end))
    assert dev.mapping is dev.file


def test_host_touched_page_is_not_faulted_again(make_sim: Callable[..., Simulation]) -> None:
    sim, report = _run(make_sim, "xive-esb-host-touched", "generic_v4_16")
    dev = _dev(sim)
    assert report.passed
    ipi = dev.sources[0].ipi_data
    # the host load faulted page 1 in (do_read_fault -> esb fault): a
    # special, cache-inhibited PTE to the EOI frame
    pte, _ = sim.mm.pgtable.find_linux_pte(sim.vma("esb").start + PAGE)
    assert pte is not None and pte & PTE_PRESENT and pte & PTE_SPECIAL
    assert pte >> PTE_PFN_SHIFT == ipi.eoi_page and pte & PTE_NONCACHED
    # page 0 by the guest, page 1 by QEMU: the guest's EOI found the PTE with
    # follow_pfn and did not need the fault handler (A.8)
    faults = [d for e, _, d in dev.trace if e == "esb_fault"]
    assert len(faults) == 2
    assert report.steps[2].pfn == ipi.eoi_page
    assert report.steps[2].value == 0 and ipi.pq == 0b00


class _AfterReset:
    """Observer: the stage-2 leaves right after each device_reset step."""

    def __init__(self) -> None:
        self.after: list[dict[int, Any]] = []

    @hookimpl(wrapper=True)
    def device_step(self, kvm: Any, step: Any) -> Generator[None, Any, Any]:
        result = yield
        self.after.append({m.gpa: m for m in kvm.hooks.hook.stage2_mappings(kvm=kvm)})
        return result


def test_device_reset_unmaps_and_switches_pages(make_sim: Callable[..., Simulation]) -> None:
    obs = _AfterReset()
    sim, report = _run(make_sim, "xive-esb-device-reset", "generic_v4_16", extra_plugins=[obs])
    dev = _dev(sim)
    st = dev.sources[2]
    assert report.passed and not report.verdicts
    eoi_gpa = ESB_GPA + 5 * PAGE
    # before: the first EOI went to the IPI's EOI frame
    assert report.steps[1].pfn == st.ipi_data.eoi_page
    # G.2 reset_mapped: unmap_mapping_range of pages 4-5 -> MMU notifier ->
    # the stage-2 entries of both gpas are gone, other sources untouched
    (after,) = obs.after
    assert eoi_gpa not in after and ESB_GPA + 4 * PAGE not in after
    # set_mapped turned the IPI hard off (SET_PQ_01 after the SET_PQ_10 mask)
    assert st.ipi_data.pq == 0b01
    # the next EOI faulted and reached the passed-through interrupt's page
    assert st.pt_data is not None
    assert report.steps[3].pfn == st.pt_data.eoi_page != st.ipi_data.eoi_page
    # set_mapped EOIed the enabled source (xive_vm_source_eoi: SET_PQ_00):
    # the load EOI of 00 returns 0 and GET reads 00
    assert [report.steps[3].value, report.steps[4].value] == [0, 0b00]
    assert _mappings(sim)[eoi_gpa].pfn == st.pt_data.eoi_page


def test_leaving_passthrough_returns_to_the_ipi(make_sim: Callable[..., Simulation]) -> None:
    text = LIB["xive-esb-device-reset"].read_text() + (
        '\n[[step]]\ndo = "device_reset"\ndevice = "xive"\nsource = 2\npassthrough = false\n'
        f'\n[[step]]\ndo = "access"\ngpa = {ESB_GPA + 5 * PAGE + 0x800:#x}\nop = "read"\n'
        'expect = { outcome = "mmio", verdicts = [] }\n'
    )
    sim = make_sim(text, strategy="generic_v4_16")
    report = sim.run()
    st = _dev(sim).sources[2]
    assert report.passed and st.pt_data is None
    # clr_mapped: the source was enabled and not pending, so the IPI is
    # re-enabled with SET_PQ_00 and the guest's GET on the IPI page reads 00
    assert report.steps[-1].pfn == st.ipi_data.eoi_page
    assert report.steps[-1].value == 0b00


def test_beyond_last_source_is_efault(make_sim: Callable[..., Simulation]) -> None:
    # G.2: no source -> VM_FAULT_SIGBUS; F.5: fixup_user_fault -> -EFAULT;
    # A.8/A.3: KVM_PFN_ERR_FAULT; C.1: the handler returns -EFAULT
    sim, report = _run(make_sim, "xive-esb-beyond-last-source", "generic_v4_16")
    assert report.steps[1].outcome == "efault" and report.steps[1].pfn is None
    assert ("esb_fault", 5, "source not found: VM_FAULT_SIGBUS") in _dev(sim).trace
    assert ESB_GPA + 11 * PAGE not in _mappings(sim)


def test_tima_cppr_ack_and_forbidden_views(make_sim: Callable[..., Simulation]) -> None:
    sim, report = _run(make_sim, "xive-tima", "generic_v4_16")
    assert report.passed
    # G.3: CPPR 5; priority 3 < 5 is signalled: NSR.EO, IPB bit 1 << 4, PIPR 3
    qw1 = bytes((0x80, 5, 0x10, 0, 0, 0, 0, 3))
    assert report.steps[2].value == int.from_bytes(qw1, "big")
    assert report.steps[3].value == 0x8003
    # page 0 (HW view): xive_native_tima_fault SIGBUS -> -EFAULT
    assert report.steps[4].outcome == "efault"
    assert ("tima_fault", 0, "VM_FAULT_SIGBUS") in _dev(sim).trace


def test_no_trigger_page_sigbus(make_sim: Callable[..., Simulation]) -> None:
    # G.2: trig_page 0 (firmware gave none): WARN_ON(!page) -> SIGBUS -> -EFAULT,
    # while the EOI page of the same source still works
    text = LIB["xive-esb-eoi"].read_text().replace("priority = 6", "trigger_page = false")
    sim = make_sim(text, strategy="generic_v4_16")
    report = sim.run()
    assert report.steps[0].outcome == "efault"
    assert report.steps[4].outcome == "mmio"


# ------------------------------------------------------------------ ppc_original


def test_ppc_original_maps_host_ram_untouched(make_sim: Callable[..., Simulation]) -> None:
    # B.2 step 10 / J.1: gup fails on the PFNMAP vma, so pfn = vm_pgoff +
    # offset = 4 + page index, a host RAM frame, with the vma's pgprot
    # (cache-inhibited, writable); the PTE is never consulted (B.6).
    _need("ppc_original")
    sim, report = _run(make_sim, "xive-esb-eoi", "ppc_original")
    dev = _dev(sim)
    assert not report.passed
    s0 = report.steps[0]
    assert s0.outcome == "mapped" and s0.pfn == 4 + 2 and s0.writable
    # QEMU never touched the page, so the host maps nothing there: a stage-2
    # entry over an unmapped hva is a wrong frame (stale.py); pfn 6 is a
    # kernel frame that backs no memslot (outside_memslot); and RAM mapped
    # cache-inhibited is a cache attribute mismatch
    assert set(s0.verdicts) == {"wrong_frame", "outside_memslot", "cache_attr_mismatch"}
    # TIMA OS page: vm_pgoff 0 + 2 = pfn 2, host RAM too
    assert report.steps[1].pfn == 2 and report.steps[1].outcome == "mapped"
    # the interrupt controller never saw any of it
    assert not [t for t in dev.trace if t[0] in ("esb_trigger", "esb_eoi", "tm_ack_os")]
    assert dev.sources[1].ipi_data.pq == 0b00


def test_ppc_original_maps_host_ram_touched(make_sim: Callable[..., Simulation]) -> None:
    _need("ppc_original")
    _, report = _run(make_sim, "xive-esb-host-touched", "ppc_original")
    s1, s2 = report.steps[1], report.steps[2]
    assert (s1.pfn, s2.pfn) == (4, 5)
    # page 0 untouched: as above
    assert set(s1.verdicts) == {"wrong_frame", "outside_memslot", "cache_attr_mismatch"}
    # page 1 touched by QEMU: the host PTE maps the ESB frame but stage 2
    # maps RAM frame 5 (wrong_frame), which backs no memslot (outside_memslot)
    assert set(s2.verdicts) == {"wrong_frame", "outside_memslot", "cache_attr_mismatch"}


def test_ppc_original_tima_hw_page_and_beyond_last_source(
    make_sim: Callable[..., Simulation],
) -> None:
    _need("ppc_original")
    _, tima = _run(make_sim, "xive-tima", "ppc_original")
    # TIMA page 0: vm_pgoff 0 + 0 = pfn 0, which the handler's `if (!pfn)`
    # takes for failure: -EFAULT (B.2 step 10, B.6) -- right by accident
    assert tima.steps[4].outcome == "efault"
    _, beyond = _run(make_sim, "xive-esb-beyond-last-source", "ppc_original")
    # no fault handler runs, so no SIGBUS: RAM frame 4 + 11 is mapped instead
    assert beyond.steps[1].outcome == "mapped" and beyond.steps[1].pfn == 15


def test_scenarios_run_by_name_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from kvmsim.cli import main

    assert main(["run", "xive-esb-eoi", "--strategy", "generic_v4_16"]) == 0
    assert "mmio" in capsys.readouterr().out


def test_library_paths_are_files() -> None:
    assert all(isinstance(p, Path) and p.is_file() for p in LIB.values())


@pytest.mark.parametrize("strategy", RESOLVING)
def test_reset_racing_the_fault_is_retried(
    make_sim: Callable[..., Simulation], strategy: str
) -> None:
    # F.8/A.10: reset_mapped's unmap fires between hva_to_pfn and create_pte;
    # B.4 step 2: mmu_notifier_retry under mmu_lock -> -EAGAIN, nothing
    # installed; the guest faults again and the handler inserts the new page
    _need(strategy)
    sim, report = _run(make_sim, "xive-esb-reset-race", strategy)
    st = _dev(sim).sources[1]
    assert report.passed and not report.verdicts
    assert st.pt_data is not None and report.steps[1].pfn == st.pt_data.eoi_page
    creates = [e for e in report.events if e["event"] == "kvmppc_create_pte"]
    assert [e["ret"] for e in creates] == ["-EAGAIN", 0]
    # the retried GET reads the passed-through interrupt's PQ: 00 after set_mapped's EOI
    assert report.steps[1].value == 0b00


def test_ppc_original_ignores_the_reset(make_sim: Callable[..., Simulation]) -> None:
    # J.1: the v4.15 handler's pfn does not depend on the PTE or the device:
    # after the retry it maps RAM frame 4 + 3 again, never the new ESB page
    _need("ppc_original")
    _, report = _run(make_sim, "xive-esb-reset-race", "ppc_original")
    assert report.steps[1].outcome == "mapped" and report.steps[1].pfn == 7
    assert set(report.steps[1].verdicts) == {
        "wrong_frame",
        "outside_memslot",
        "cache_attr_mismatch",
    }
