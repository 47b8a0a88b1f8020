"""Dirty logging of the arm64 plugin (kvmsim_arm64/dirty.py): write
protection and the bitmap in every modelled version, and v6.13's eager
page splitting (KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, off by default).

Each expectation is what virt/kvm/arm/mmu.c (4.16.13) and
arch/arm64/kvm/mmu.c (5.12.9 for v5.13, 6.13.7) do, cited per test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kvmsim_arm64 import dirty
from kvmsim_arm64.desc import L2_SHIFT, S2AP_W
from test_arm64 import access, events, leaf

from kvmsim.cli import main

ALL = ("generic_v4_16", "refcount_guarded", "follow_pfn_2024")
V6_13 = "follow_pfn_2024"
SCENARIOS = Path(__file__).resolve().parents[1] / "kvmsim_arm64" / "scenarios"

HEAD = """
name = "t"
arch = "arm64"
{dirty}
[[vma]]
name = "ram"
size = "64M"
backing = "{backing}"
huge = "2M"

[[memslot]]
gpa = 0x4000_0000
vma = "ram"
"""


def scenario(*steps: str, dirty_table: str = "", backing: str = "anon") -> str:
    return HEAD.format(dirty=dirty_table, backing=backing) + "".join(steps)


def log(action: str, extra: str = "") -> str:
    return f'\n[[step]]\ndo = "dirty_log"\nslot = 0\naction = "{action}"\n{extra}'


def cap(chunk: int, name: str = dirty.EAGER_SPLIT) -> str:
    return f'\n[[step]]\ndo = "enable_cap"\ncap = "{name}"\nchunk_size = {chunk:#x}\n'


def host_write(offset: int) -> str:
    return f'\n[[step]]\ndo = "host_write"\nvma = "ram"\noffset = {offset:#x}\n'


def reports(sim: Any) -> list[tuple[int, ...]]:
    return [g for _, _, g in sim.kvm.dirty.reports]


def pages_of_block(sim: Any, ipa: int) -> dict[int, int] | None:
    """The level-3 table where the 2M block at ``ipa`` was, or None (a block)."""
    l2 = sim.kvm.arch.l1[(ipa >> 30) & 1023]
    e = l2.get((ipa >> L2_SHIFT) & 511)
    return e if isinstance(e, dict) else None


@pytest.mark.parametrize("strategy", ALL)
def test_library_scenarios_pass_in_file_order(run_sim: Any, strategy: str) -> None:
    for name in ("arm64-dirty-log", "arm64-dirty-base"):
        report = run_sim(SCENARIOS / f"{name}.toml", arch="arm64", strategy=strategy)
        assert report.passed and not report.verdicts, (name, report.to_json())


@pytest.mark.parametrize("strategy", ALL)
def test_enabling_write_protects_a_block_whole(make_sim: Any, strategy: str) -> None:
    # kvm_mmu_wp_memory_region → stage2_wp_range: a block is made read-only
    # as a whole (stage2_wp_pmds / kvm_pgtable_stage2_wrprotect)
    sim = make_sim(
        scenario(host_write(0x20_0000), access(0x4020_0000, "write"), log("enable")),
        arch="arm64",
        strategy=strategy,
    )
    report = sim.run()
    assert report.passed, report.to_json()
    assert pages_of_block(sim, 0x4020_0000) is None  # still a 2M block
    assert not leaf(sim, 0x4020_0000) & S2AP_W
    (wp,) = events(report, "kvm_mmu_wp_memory_region")
    assert wp["write_protected"] == 1


@pytest.mark.parametrize("strategy", ALL)
def test_hugetlbfs_while_logging_maps_pages(make_sim: Any, strategy: str) -> None:
    # v4.16: vma_kernel_pagesize == PMD_SIZE && !logging_active; later:
    # logging_active sets force_pte and vma_shift = PAGE_SHIFT
    text = scenario(log("enable"), access(0x4020_3000, "write"), backing="hugetlbfs")
    report = make_sim(text, arch="arm64", strategy=strategy).run()
    assert report.passed, report.to_json()
    assert report.steps[1].page_size == 4096 and report.steps[1].writable


@pytest.mark.parametrize("strategy", ALL)
def test_a_harvest_protects_from_the_first_to_the_last_page_of_a_word(
    make_sim: Any, strategy: str
) -> None:
    # kvm_mmu_write_protect_pt_masked: stage2_wp_range(__ffs(mask),
    # __fls(mask) + 1): a clean page between two dirty ones is protected too
    steps = [host_write(0x10000 + i * 0x1000) for i in range(3)]
    steps += [log("enable")]
    steps += [access(0x4001_0000 + i * 0x1000, "write") for i in range(3)]
    # the middle page was mapped writable and stored to before this get
    steps += [log("get")]
    sim = make_sim(scenario(*steps), arch="arm64", strategy=strategy)
    report = sim.run()
    assert report.passed and not report.verdicts, report.to_json()
    assert reports(sim) == [(0x4001_0000, 0x4001_1000, 0x4001_2000)]
    assert not any(leaf(sim, 0x4001_0000 + i * 0x1000) & S2AP_W for i in range(3))


@pytest.mark.parametrize("strategy", ALL)
def test_without_the_harvest_protection_a_store_is_lost(
    run_sim: Any, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the checker sees it: a harvest that re-arms nothing leaves the page
    # writable, and the store after it is never reported
    monkeypatch.setattr(dirty, "stage2_wp_range", lambda kvm, start, end: 0)
    report = run_sim(SCENARIOS / "arm64-dirty-base.toml", arch="arm64", strategy=strategy)
    assert "lost_dirty" in {v.name for v in report.verdicts}


def test_v4_16_has_no_manual_protect(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(scenario(log("enable"), dirty_table="[dirty]\nmanual_protect = true\n"))
    assert main(["run", str(path), "--arch", "arm64", "--strategy", "generic_v4_16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manual_protect" in err[0] and "v5.0" in err[0]


# ------------------------------------------------------------ eager splitting (v6.13)


def _block_then_enable(chunk: int | None, dirty_table: str = "") -> str:
    steps = [] if chunk is None else [cap(chunk)]
    steps += [host_write(0x20_0000), access(0x4020_0000, "write"), log("enable")]
    return scenario(*steps, dirty_table=dirty_table)


def test_eager_split_is_off_by_default(make_sim: Any) -> None:
    # split_page_chunk_size = KVM_ARM_EAGER_SPLIT_CHUNK_SIZE_DEFAULT (0):
    # kvm_mmu_split_huge_pages returns at once; the block stays, read-only,
    # and a store replaces it by a table holding the one page
    text = _block_then_enable(None) + access(0x4020_1000, "write")
    sim = make_sim(text, arch="arm64", strategy=V6_13)
    report = sim.run()
    assert report.passed, report.to_json()
    assert not events(report, "kvm_pgtable_stage2_split")
    table = pages_of_block(sim, 0x4020_0000)
    assert table is not None and sorted(table) == [1]


def test_eager_split_on_enable_splits_the_protected_block(make_sim: Any) -> None:
    # kvm_arch_commit_memory_region (6.13.7): kvm_mmu_wp_memory_region, then
    # kvm_mmu_split_memory_region: 512 read-only pages with the block's
    # frames; a store takes a permission fault at level 3, which
    # user_mem_abort relaxes in place (fault_granule == PAGE_SIZE) and marks
    text = _block_then_enable(0x20_0000) + access(0x4020_1000, "write") + log("get")
    sim = make_sim(text, arch="arm64", strategy=V6_13)
    report = sim.run()
    assert report.passed and not report.verdicts, report.to_json()
    (split,) = events(report, "kvm_pgtable_stage2_split")
    assert split["step"] == 3 and split["size"] == 1 << 21
    table = pages_of_block(sim, 0x4020_0000)
    assert table is not None and len(table) == 512
    # the pages are the block's, in order, all read-only again once the get
    # re-protected the one stored to
    first = table[0]
    assert all(table[i] == first + (i << 12) for i in range(512))
    assert not any(d & S2AP_W for d in table.values())
    assert report.steps[4].writable and report.steps[4].page_size == 4096
    (relax,) = events(report, "kvm_pgtable_stage2_relax_perms")
    assert relax["step"] == 4 and relax["level"] == 3
    assert reports(sim) == [(0x4020_1000,)]


def test_eager_split_on_clear_with_initially_set(make_sim: Any) -> None:
    # initially-set: enable neither protects nor splits; a clear of pages
    # [0x200, 0x240) write-protects from the first to one past the last
    # (the block meeting it, whole) and then splits the blocks there
    # (kvm_arch_mmu_enable_log_dirty_pt_masked, 6.13.7), so all 512 pages
    # come out read-only.  Pages not cleared stay set in the bitmap.
    table = "[dirty]\nmanual_protect = true\ninitially_set = true\n"
    text = _block_then_enable(0x20_0000, table)
    text += log("get") + log("clear", "first = 512\nnum = 64\n")
    text += access(0x4020_1000, "write") + access(0x4025_0000, "write") + log("get")
    sim = make_sim(text, arch="arm64", strategy=V6_13)
    report = sim.run()
    assert report.passed and not report.verdicts, report.to_json()
    assert not [e for e in events(report, "kvm_pgtable_stage2_split") if e["step"] == 3]
    (split,) = [e for e in events(report, "kvm_pgtable_stage2_split") if e["step"] == 5]
    assert split["ipa"] == hex(0x4020_0000)
    pages = {0x4000_0000 + (p << 12) for p in range(64 << 8)}
    cleared = {0x4000_0000 + (p << 12) for p in range(0x200, 0x240)}
    first, second = reports(sim)
    assert set(first) == pages
    assert set(second) == (pages - cleared) | {0x4020_1000}


@pytest.mark.parametrize(
    ("strategy", "text", "why"),
    [
        ("refcount_guarded", cap(0x20_0000), "before v6.2"),
        ("generic_v4_16", cap(0x20_0000), "before v6.2"),
        (V6_13, cap(0x3000), "not a block size"),
        (V6_13, host_write(0) + cap(0x20_0000), "memslots already"),
    ],
)
def test_eager_split_cap_refused(make_sim: Any, strategy: str, text: str, why: str) -> None:
    # kvm_vm_ioctl_enable_cap: -EINVAL unless the kernel has the cap, the
    # size is 0 or a block size, and no memslot exists yet
    report = make_sim(scenario(text), arch="arm64", strategy=strategy).run()
    step = report.steps[-1]
    assert step.outcome == "einval" and why in step.detail, step


def test_chunk_size_on_another_cap_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "t.toml"
    path.write_text(scenario(cap(0x20_0000, name="arm_nisv_to_user")))
    assert main(["run", str(path), "--arch", "arm64", "--strategy", V6_13]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chunk_size" in err[0] and "step[0]" in err[0]


@pytest.mark.parametrize("strategy", ALL)
def test_the_base_explores_clean(strategy: str) -> None:
    # QEMU's enable and gets interleaved with the vcpu's stores and the
    # fault path's yield points: no schedule loses a store (bound 1 here;
    # docs/dirty-tracking.md gives the bound-2 run)
    from kvmsim.explore.search import explore
    from kvmsim.scenario import load_scenario

    sc = load_scenario(SCENARIOS / "arm64-dirty-base.toml")
    found = explore(sc, "arm64", strategy, bound=1)
    assert found.classes == (), [(c.verdicts, c.explanation()) for c in found.classes]
