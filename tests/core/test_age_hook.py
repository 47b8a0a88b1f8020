"""KVM's young callbacks reach the arch through ``notifier_age_gfn``, once per
memslot the host range overlaps, with the gfns the range touches
(``kvm_handle_hva_range``; kernel-notes §L.8), under ``mmu_lock``; the older
hva-range hook ``notifier_age`` still hears ``clear_young``."""

from __future__ import annotations

from typing import Any

from kvmsim import hookimpl
from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario

TWO_SLOTS = """name = "two"
arch = "x86_ept"
[[vma]]
name = "ram"
size = "2M"
backing = "anon"
[[memslot]]
gpa = 0x0
vma = "ram"
size = "1M"
[[memslot]]
gpa = 0x40000000
vma = "ram"
offset = 0x100000
"""


class Recorder:
    """A test plugin beside the arch: what the core asks, and under which lock."""

    def __init__(self, young: bool) -> None:
        self.young = young
        self.gfn_calls: list[tuple[int, int, int, bool, object]] = []
        self.hva_calls: list[tuple[int, int]] = []

    @hookimpl
    def notifier_age_gfn(self, kvm: Any, slot: Any, start: int, end: int, test: bool) -> bool:
        self.gfn_calls.append((slot.id, start, end, test, kvm.mmu_lock.holder))
        return self.young

    @hookimpl
    def notifier_age(self, kvm: Any, start: int, end: int) -> bool:
        self.hva_calls.append((start, end))
        return False


def sim_with(rec: Recorder) -> Simulation:
    return Simulation(
        parse_scenario(TWO_SLOTS, "<t>"), strategy="generic_v4_16", extra_plugins=[rec]
    )


def test_clear_young_asks_each_memslot_for_the_gfns_the_range_touches() -> None:
    rec = Recorder(young=False)
    sim = sim_with(rec)
    mm = sim.mm
    base = sim.vma("ram").start
    # from the last 4K of slot 0 (gfn 0xff) plus one byte into slot 1
    start, end = base + 0xFF000, base + 0x100001
    assert mm.notifiers.clear_young(mm, start, end) is False
    assert rec.gfn_calls == [
        (0, 0xFF, 0x100, False, "qemu"),
        (1, 0x40000, 0x40001, False, "qemu"),
    ]
    assert rec.hva_calls == [(start, end)]
    assert sim.kvm.mmu_lock.holder is None


def test_test_young_asks_the_one_gfn_at_the_address() -> None:
    rec = Recorder(young=True)
    sim = sim_with(rec)
    mm = sim.mm
    base = sim.vma("ram").start
    assert mm.notifiers.test_young(mm, base + 0x100000 + 0x2345) is True
    assert rec.gfn_calls == [(1, 0x40002, 0x40003, True, "qemu")]
    assert rec.hva_calls == []  # the hva-range hook never hears test_young


def test_any_young_answer_makes_the_range_young() -> None:
    rec = Recorder(young=True)
    sim = sim_with(rec)
    mm = sim.mm
    base = sim.vma("ram").start
    assert mm.notifiers.clear_young(mm, base, base + 0x200000) is True
    assert [c[0] for c in rec.gfn_calls] == [0, 1]  # every slot is asked
