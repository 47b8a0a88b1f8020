"""Tests of the arm64 plugin, written with kvmsim's pytest fixtures
(``make_sim`` / ``run_sim`` come with kvmsim through its ``pytest11`` entry point).

Each expectation is what Linux v4.16 virt/kvm/arm/mmu.c and the Arm
architecture say, cited per test; run them with ``pytest`` after
``pip install -e .`` (or ``pip install .``).
"""

from __future__ import annotations

from typing import Any

from kvmsim_arm64.desc import (
    AF,
    FSC_FAULT,
    MT_S2_NORMAL,
    S2AP_R,
    S2AP_W,
    XN,
    MT_S2_DEVICE_nGnRE,
    make_esr,
    memattr,
)

STRATEGY = "generic_v4_16"

RAM = """
name = "{name}"
description = "arm64 plugin test"

[[vma]]
name = "ram"
size = "{size}"
backing = "{backing}"
prot = "{prot}"
{extra}

[[memslot]]
gpa = {gpa}
vma = "ram"
offset = {offset}
{slot_extra}
"""


def ram(
    *steps: str,
    backing: str = "anon",
    size: str = "64M",
    extra: str = "",
    gpa: int = 0,
    offset: int = 0,
    slot_extra: str = "",
    prot: str = "rw",
) -> str:
    head = RAM.format(
        name="t",
        prot=prot,
        size=size,
        backing=backing,
        extra=extra,
        gpa=hex(gpa),
        offset=hex(offset),
        slot_extra=slot_extra,
    )
    return head + "".join(steps)


def access(gpa: int, op: str) -> str:
    return f'\n[[step]]\ndo = "access"\ngpa = {gpa:#x}\nop = "{op}"\n'


def leaf(sim: Any, ipa: int) -> int:
    """The stage-2 descriptor covering ``ipa`` (0 when none)."""
    table, idx, _level = sim.kvm.arch.lookup(ipa)
    return 0 if table is None else int(table.get(idx, 0))


def events(report: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in report.events if e["event"] == name]


def test_esr_of_a_store_translation_fault_at_level_3() -> None:
    # EC 0x24 (DABT from a lower EL), IL, WnR, DFSC 0b000111: the ESR_EL2 value
    # Linux prints for such an abort
    assert make_esr("write", FSC_FAULT, 3) == 0x92000047


def test_first_store_maps_a_writable_normal_page(make_sim: Any) -> None:
    sim = make_sim(ram(access(0x10000, "write")), arch="arm64", strategy=STRATEGY)
    report = sim.run()
    assert report.passed, report.to_json()
    step = report.steps[0]
    assert (step.outcome, step.writable, step.page_size) == ("mapped", True, 4096)
    desc = leaf(sim, 0x10000)
    # user_mem_abort: PAGE_S2 (Normal WB, AF, XN) made writable (S2AP RW)
    assert memattr(desc) == MT_S2_NORMAL
    assert desc & S2AP_R and desc & S2AP_W and desc & AF and desc & XN
    # the walk started at level 1 (SL0 = 1): nothing was there yet
    assert events(report, "kvm_guest_fault")[0]["what"] == "DABT write translation fault L1"


def test_store_after_load_is_a_permission_fault(run_sim: Any) -> None:
    report = run_sim(
        ram(access(0x10000, "read"), access(0x10000, "write")),
        arch="arm64",
        strategy=STRATEGY,
    )
    # the load maps the zero page read-only (v4.16 hva_to_pfn: no write upgrade
    # on untouched anon memory); the store takes a level-3 permission fault,
    # and its write gup breaks COW, whose MMU-notifier invalidation unmaps the
    # zero-page entry and bumps the sequence: mmu_notifier_retry refuses the
    # install, the guest faults again (translation, tables freed) and gets
    # the new page writable
    assert report.steps[0].writable is False
    assert report.steps[1].writable is True
    faults = [e["what"] for e in events(report, "kvm_guest_fault")]
    assert faults == [
        "DABT read translation fault L1",
        "DABT write permission fault L3",
        "DABT write translation fault L1",
    ]
    # kvm_release_pfn_clean skips the PG_reserved zero page: the gup reference
    # leaks (kernel-notes §L.1), as on x86 v4.16
    assert "refcount_leak" in report.steps[0].verdicts


def test_hugetlbfs_2m_maps_a_block(run_sim: Any) -> None:
    report = run_sim(
        ram(access(0x212345, "write"), backing="hugetlbfs", extra='huge = "2M"'),
        arch="arm64",
        strategy=STRATEGY,
    )
    # vma_kernel_pagesize == PMD_SIZE: stage2_set_pmd_huge with a 2M block
    assert report.passed, report.to_json()
    assert report.steps[0].page_size == 2 << 20


def test_hugetlbfs_misaligned_memslot_maps_the_wrong_frames(run_sim: Any) -> None:
    report = run_sim(
        ram(
            access(0x10000, "write"),
            backing="hugetlbfs",
            extra='huge = "2M"',
            offset=0x1000,
            size="4M",
            slot_extra='size = "2M"',
        ),
        arch="arm64",
        strategy=STRATEGY,
    )
    # v4.16 rounds the gfn down to 2M and maps a block without checking that
    # the memslot's hva and IPA agree modulo 2M (the check came in v4.20), so
    # the block is off by the 4K misalignment
    assert "wrong_frame" in report.steps[0].verdicts


def test_thp_is_mapped_with_a_block(run_sim: Any) -> None:
    report = run_sim(
        ram(access(0x234000, "write"), extra='huge = "2M"'),
        arch="arm64",
        strategy=STRATEGY,
    )
    # transparent_hugepage_adjust: a PMD-mapped THP gives a 2M block; the
    # reference moves from the subpage to the head and is released
    assert report.passed, report.to_json()
    assert report.steps[0].page_size == 2 << 20
    assert events(report, "transparent_hugepage_adjust")


def test_thp_with_a_misaligned_memslot_is_mapped_with_pages(run_sim: Any) -> None:
    report = run_sim(
        ram(access(0x234000, "write"), extra='huge = "2M"', gpa=0x1000, slot_extra='size = "32M"'),
        arch="arm64",
        strategy=STRATEGY,
    )
    # userspace_addr and base_gfn disagree modulo 2M: force_pte
    assert report.passed, report.to_json()
    assert report.steps[0].page_size == 4096


def test_pfnmap_mmio_is_mapped_device_ngnre(make_sim: Any) -> None:
    sim = make_sim(
        ram(
            access(0x3000, "write"),
            backing="pfnmap_linear",
            size="64K",
            extra='pfn_kind = "mmio"\nshared = true',
        ),
        arch="arm64",
        strategy=STRATEGY,
    )
    report = sim.run()
    # kvm_is_device_pfn (!pfn_valid): PAGE_S2_DEVICE; the access then reaches
    # the device through stage 2 (outcome mmio) and nothing is mapped cacheable
    assert report.passed, report.to_json()
    assert report.steps[0].outcome == "mmio"
    assert memattr(leaf(sim, 0x3000)) == MT_S2_DEVICE_nGnRE
    assert not report.verdicts


def test_store_to_a_readonly_memslot_exits_to_userspace(run_sim: Any) -> None:
    report = run_sim(
        ram(access(0x1000, "write"), slot_extra="readonly = true"),
        arch="arm64",
        strategy=STRATEGY,
    )
    # kvm_handle_guest_abort: write_fault && !writable → io_mem_abort
    assert report.steps[0].outcome == "mmio"


def test_outside_memslots_data_is_mmio_and_fetch_is_a_prefetch_abort(run_sim: Any) -> None:
    report = run_sim(
        ram(access(0x8000_0000, "read"), access(0x8000_0000, "exec"), size="2M"),
        arch="arm64",
        strategy=STRATEGY,
    )
    # no memslot: a data abort goes to userspace, an instruction abort is
    # injected back into the guest (kvm_inject_pabt)
    assert [s.outcome for s in report.steps] == ["mmio", "guest_fault"]


def test_fetch_clears_xn_and_a_later_store_keeps_it(make_sim: Any) -> None:
    sim = make_sim(
        ram(
            access(0x5000, "exec"),
            access(0x5000, "write"),
            backing="file",
            size="1M",
            prot="rwx",
            extra="shared = true",
        ),
        arch="arm64",
        strategy=STRATEGY,
    )
    report = sim.run()
    # a shared file page is write-notified: the fetch maps it read-only with
    # XN clear; the store's permission fault (page_mkwrite, no invalidation)
    # keeps execute (stage2_is_exec) while adding write
    assert report.passed, report.to_json()
    assert report.steps[0].writable is False
    desc = leaf(sim, 0x5000)
    assert not desc & XN and desc & S2AP_W
    faults = [e["what"] for e in events(report, "kvm_guest_fault")]
    assert faults == ["IABT translation fault L1", "DABT write permission fault L3"]


def test_munmap_unmaps_stage2_and_the_next_access_fails(make_sim: Any) -> None:
    text = ram(
        access(0x10000, "write"),
        '\n[[step]]\ndo = "munmap"\nvma = "ram"\noffset = 0x10000\nsize = "4K"\n',
        access(0x10000, "read"),
    )
    sim = make_sim(text, arch="arm64", strategy=STRATEGY)
    report = sim.run()
    # kvm_unmap_hva_range clears the page; user_mem_abort then finds no vma
    assert leaf(sim, 0x10000) == 0
    assert report.steps[2].outcome == "efault"
    assert not report.verdicts


def test_poisoned_page_sends_sigbus(run_sim: Any) -> None:
    text = ram(
        access(0x10000, "write"),
        '\n[[step]]\ndo = "poison"\nvma = "ram"\noffset = 0x10000\n',
        access(0x10000, "read"),
    )
    report = run_sim(text, arch="arm64", strategy=STRATEGY)
    # KVM_PFN_ERR_HWPOISON → kvm_send_hwpoison_signal
    assert report.steps[2].outcome == "sigbus"
    assert events(report, "kvm_send_hwpoison_signal")[0]["si_addr_lsb"] == 12


def test_aged_page_takes_an_access_flag_fault(make_sim: Any) -> None:
    sim = make_sim(ram(access(0x10000, "write")), arch="arm64", strategy=STRATEGY)
    sim.run()
    mm = sim.mm
    hva = sim.vma("ram").start + 0x10000
    # clear_young → kvm_age_hva clears AF on the first IPA of the range
    assert mm.notifiers.clear_young(mm, hva, hva + 4096) is True
    assert not leaf(sim, 0x10000) & AF
    t = sim.hooks.translate(kvm=sim.kvm, vcpu=0, gpa=0x10000, ea=0x10000, op="read")
    assert t.fault is not None and t.fault.code & 0x3F == 0x0B  # access flag fault, level 3
    r = sim.hooks.handle_page_fault(kvm=sim.kvm, vcpu=0, fault=t.fault)
    assert r.action == "resume" and leaf(sim, 0x10000) & AF


def test_builtin_generic_scenario_passes(run_sim: Any) -> None:
    from kvmsim.scenario import builtin_scenarios

    path = next(p for p in builtin_scenarios() if p.stem == "anon-write-first-touch")
    assert run_sim(path, arch="arm64", strategy=STRATEGY).passed
