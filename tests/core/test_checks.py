"""Each checker fires on a crafted state and stays silent on a healthy one.

The crafted stage-2 state comes from a test plugin whose ``stage2_mappings``
answers before the arch's (pluggy calls the last registered first), so the
checkers are tested without depending on any arch's bugs.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvmsim import hookimpl
from kvmsim.checks import CheckContext, run_checks
from kvmsim.hooktypes import Stage2Mapping
from kvmsim.runner import Simulation
from kvmsim.testing import build_sim

SCENARIO = """
name = "checks"
arch = "ppc_radix"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[vma]]
name = "rofile"
size = "1M"
backing = "file"
prot = "r"
populate = true
[[memslot]]
gpa = 0x0
vma = "ram"
[[memslot]]
gpa = 0x100000
vma = "rofile"
[[step]]
do = "access"
gpa = 0x10000
op = "write"
"""

PAGE = 0x10000


class Crafted:
    """Answers stage2_mappings with whatever a test puts in ``maps``."""

    def __init__(self) -> None:
        self.maps: list[Stage2Mapping] | None = None

    @hookimpl
    def stage2_mappings(self, kvm: Any) -> list[Stage2Mapping] | None:
        return self.maps


@pytest.fixture
def sim() -> tuple[Simulation, Crafted]:
    crafted = Crafted()
    s = build_sim(SCENARIO, strategy="generic_v4_16", extra_plugins=[crafted], trace=False)
    report = s.run()
    assert report.steps[0].outcome == "mapped"
    return s, crafted


def names(s: Simulation, outcome: str | None = None) -> set[str]:
    return {f.name for f in run_checks(CheckContext(s.kvm, outcome))}


def host_pfn(s: Simulation, gpa: int) -> int:
    ctx = CheckContext(s.kvm)
    hva = ctx.gpa_to_hva(gpa)
    assert hva is not None
    pfn, _ = ctx.host_frame(hva)
    assert pfn is not None
    return pfn


def leaf(
    gpa: int, pfn: int, *, writable: bool = True, noncached: bool = False, seq: int = 0
) -> Stage2Mapping:
    return Stage2Mapping(
        gpa=gpa, size=PAGE, pfn=pfn, writable=writable, noncached=noncached, mmu_seq=seq
    )


def test_healthy_state_is_silent(sim: tuple[Simulation, Crafted]) -> None:
    s, c = sim
    assert names(s) == set()  # the arch's own mapping after a correct write fault
    c.maps = [leaf(0x10000, host_pfn(s, 0x10000))]
    assert names(s) == set()


def test_wrong_frame_and_outside_memslot(sim: tuple[Simulation, Crafted]) -> None:
    s, c = sim
    c.maps = [leaf(0x10000, 4)]  # a kernel frame, as ppc_original's vm_pgoff + 4
    assert names(s) == {"wrong_frame", "outside_memslot"}
    c.maps = [leaf(0x10000, host_pfn(s, 0x100000))]  # another memslot's frame
    assert names(s) == {"wrong_frame"}


def test_outside_memslot_for_an_unslotted_gpa(sim: tuple[Simulation, Crafted]) -> None:
    s, c = sim
    c.maps = [leaf(0x4000_0000, host_pfn(s, 0x10000))]
    assert names(s) == {"outside_memslot"}


def test_mapping_over_nothing_is_a_wrong_frame(sim: tuple[Simulation, Crafted]) -> None:
    s, c = sim
    c.maps = [leaf(0x20000, host_pfn(s, 0x10000))]  # the host maps nothing at 0x20000
    assert names(s) == {"wrong_frame"}
    c.maps = [leaf(0x20000, 4)]  # ... and a kernel frame that backs no memslot
    assert names(s) == {"wrong_frame", "outside_memslot"}


def test_stale_mapping_after_an_invalidation_it_survived(sim: tuple[Simulation, Crafted]) -> None:
    s, c = sim
    pfn = host_pfn(s, 0x10000)
    hva = CheckContext(s.kvm).gpa_to_hva(0x10000)
    assert hva is not None
    s.kvm.invalidations.append((5, hva, hva + PAGE))
    c.maps = [leaf(0x10000, pfn, seq=4)]  # resolved before that invalidation ended
    assert "stale_mapping" in names(s)
    c.maps = [leaf(0x10000, pfn, seq=5)]  # resolved after it: fine
    assert names(s) == set()


def test_refcount_leak_and_underflow(sim: tuple[Simulation, Crafted]) -> None:
    s, _ = sim
    pfn = host_pfn(s, 0x10000)
    s.phys.get_page(pfn)
    assert names(s) == {"refcount_leak"}
    s.phys.put_page(pfn)
    assert names(s) == set()
    s.phys.put_page(pfn)  # drops the host's own reference
    assert "refcount_underflow" in names(s)


def test_lock_leak_for_mmap_sem_and_mmu_lock(sim: tuple[Simulation, Crafted]) -> None:
    s, _ = sim
    s.mm.mmap_sem.down_read("vcpu0")
    assert names(s) == {"lock_leak"}
    s.mm.mmap_sem.up_read("vcpu0")
    s.kvm.mmu_lock.lock("vcpu0")
    assert names(s) == {"lock_leak"}
    s.kvm.mmu_lock.unlock("vcpu0")
    assert names(s) == set()


@pytest.mark.parametrize("outcome", ["oops", "deadlock", "livelock"])
def test_outcome_verdicts(sim: tuple[Simulation, Crafted], outcome: str) -> None:
    s, _ = sim
    assert names(s, outcome) == {outcome}
    assert names(s, "mapped") == set()


def test_write_to_readonly(sim: tuple[Simulation, Crafted]) -> None:
    s, c = sim
    pfn = host_pfn(s, 0x100000)  # a read-only file page
    c.maps = [leaf(0x100000, pfn, writable=True)]
    assert names(s) == {"write_to_readonly"}
    c.maps = [leaf(0x100000, pfn, writable=False)]
    assert names(s) == set()


def test_poison_mapped(sim: tuple[Simulation, Crafted]) -> None:
    s, c = sim
    pfn = host_pfn(s, 0x10000)
    c.maps = [leaf(0x10000, pfn)]
    s.phys.SetPageHWPoison(pfn)
    assert "poison_mapped" in names(s)


def test_cache_attr_mismatch_both_ways(sim: tuple[Simulation, Crafted]) -> None:
    s, c = sim
    c.maps = [leaf(0x10000, host_pfn(s, 0x10000), noncached=True)]
    assert names(s) == {"cache_attr_mismatch"}
    mmio = s.phys.alloc_mmio(1)
    c.maps = [leaf(0x10000, mmio, noncached=False)]
    assert "cache_attr_mismatch" in names(s)
