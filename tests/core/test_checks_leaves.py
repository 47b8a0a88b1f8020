"""Every base page of a stage-2 leaf is judged.

A property test builds random leaves (1 to 16 base pages, anywhere in a
guest space with two memslots and holes), a random host page table (base
PTEs and larger entries, present or not, frames drawn from a small pool so
that right, wrong and foreign frames all occur) and random invalidations,
and compares :func:`kvmsim.checks.leaves.scan_leaf` (run by run) and the
``frames``/``stale`` checkers with a brute-force walk of every base page.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmsim import hookimpl
from kvmsim.checks import CheckContext, frames, stale
from kvmsim.checks.leaves import LeafScan, host_frame, scan_leaf, slot_frames
from kvmsim.hooktypes import Stage2Mapping
from kvmsim.host.constants import PTE_PRESENT, PTE_READ, PTE_WRITE
from kvmsim.host.pte import mk_pte
from kvmsim.runner import Simulation
from kvmsim.testing import build_sim

PAGE = 0x1000
ARCHES = sorted(e.name for e in entry_points(group="kvmsim.arch"))
# two memslots on one 128K vma, misaligned to each other, holes between and after
SCENARIO = """
name = "leaves"
arch = "x86_ept"
[[vma]]
name = "ram"
size = "128K"
backing = "anon"
[[memslot]]
gpa = 0x0
size = "32K"
offset = 0x8000
vma = "ram"
[[memslot]]
gpa = 0xc000
size = "48K"
offset = 0x0
vma = "ram"
"""
GUEST_PAGES = 0x20  # the leaves live in [0, 128K) of guest space
POOL = 48  # frames drawn from [BASE_PFN, BASE_PFN + POOL)


class Crafted:
    def __init__(self) -> None:
        self.maps: list[Stage2Mapping] = []

    @hookimpl
    def stage2_mappings(self, kvm: Any) -> list[Stage2Mapping] | None:
        return self.maps


def _sim() -> tuple[Simulation, Crafted]:
    c = Crafted()
    return build_sim(SCENARIO, strategy="generic_v4_16", extra_plugins=[c], trace=False), c


SIM, CRAFTED = _sim()
VMA = SIM.vma("ram")
BASE_PFN = 0x100


@st.composite
def states(draw: st.DrawFn) -> tuple[list[Stage2Mapping], list[tuple[int, int, int]], list[Any]]:
    leaves = []
    for _ in range(draw(st.integers(1, 3))):
        order = draw(st.integers(0, 4))
        gpa = draw(st.integers(0, GUEST_PAGES - 1)) >> order << order
        leaves.append(
            Stage2Mapping(
                gpa=gpa * PAGE,
                size=PAGE << order,
                pfn=BASE_PFN + draw(st.integers(0, POOL - 1)),
                writable=True,
                noncached=False,
                mmu_seq=draw(st.integers(-1, 3)),
            )
        )
    host = []
    for _ in range(draw(st.integers(0, 24))):
        order = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
        page = draw(st.integers(0, 31)) >> order << order
        present = draw(st.booleans()) or draw(st.booleans())
        bits = (PTE_PRESENT | PTE_READ | PTE_WRITE) if present else PTE_WRITE
        pfn = BASE_PFN + draw(st.integers(0, POOL - 1))
        host.append((order, VMA.start + page * PAGE, mk_pte(pfn, bits)))
    invals = []
    for seq in range(draw(st.integers(0, 3))):
        a = draw(st.integers(0, 31))
        b = draw(st.integers(a + 1, 32))
        invals.append((seq + 1, VMA.start + a * PAGE, VMA.start + b * PAGE))
    return leaves, invals, host


def _install(sim: Simulation, invals: list[tuple[int, int, int]], host: list[Any]) -> None:
    pgt = sim.mm.pgtable
    for hva, shift, _ in list(pgt.items()):
        if shift:
            pgt.clear_huge(hva, shift)
        else:
            pgt.clear_pte(hva)
    for order, hva, pte in host:
        if order:
            pgt.set_huge(hva, 12 + order, pte)
        else:
            pgt.set_pte(hva, pte)
    sim.kvm.invalidations[:] = invals


def brute(sim: Simulation, m: Stage2Mapping) -> LeafScan:
    """The per-base-page walk: every page's memslot, host frame and invalidations."""
    kvm = sim.kvm
    ctx = CheckContext(kvm)
    inside = set()
    for slot in kvm.memslots.slots:
        for i in range(slot.npages):
            pfn, _ = host_frame(kvm, slot.userspace_addr + i * PAGE)
            if pfn is not None:
                inside.add(pfn)
    later = [inv for inv in kvm.invalidations if inv[0] > m.mmu_seq]
    pages = []
    for i in range(m.size // PAGE):
        gpa, pfn = m.gpa + i * PAGE, m.pfn + i
        pages.append((gpa, pfn, ctx.gpa_to_hva(gpa)))
    out = LeafScan()
    out.stale = next(
        (inv for inv in later if any(h is not None and inv[1] <= h < inv[2] for _, _, h in pages)),
        None,
    )
    for gpa, pfn, hva in pages:
        if hva is None:
            out.noslot = out.noslot or (gpa, pfn)
            continue
        host, _ = host_frame(kvm, hva)
        if host is None:
            if any(s <= hva < e for _, s, e in later):
                continue
            out.nothing = out.nothing or (gpa, pfn, hva)
            if pfn not in inside:
                out.nothing_outside = out.nothing_outside or (gpa, pfn)
        elif host != pfn:
            out.other = out.other or (gpa, pfn, hva, host)
            if pfn not in inside:
                out.other_outside = out.other_outside or (gpa, pfn)
    return out


def _findings(sim: Simulation) -> set[tuple[str, Any]]:
    ctx = CheckContext(sim.kvm)
    return {(f.name, f.key) for f in (*frames.check(ctx), *stale.check(ctx))}


def _brute_findings(sim: Simulation, maps: list[Stage2Mapping]) -> set[tuple[str, Any]]:
    out: set[tuple[str, Any]] = set()
    for m in maps:
        b = brute(sim, m)
        if b.noslot:
            out.add(("outside_memslot", ("noslot", *b.noslot)))
        if b.other:
            out.add(("wrong_frame", b.other[:2]))
        if b.nothing:
            out.add(("wrong_frame", b.nothing[:2]))
        for o in (b.other_outside, b.nothing_outside):
            if o:
                out.add(("outside_memslot", ("frame", *o)))
        if b.stale:
            out.add(("stale_mapping", (m.gpa, m.pfn, m.mmu_seq)))
    return out


@settings(max_examples=120, deadline=None)
@given(states())
def test_scan_matches_the_per_page_walk(state: Any) -> None:
    maps, invals, host = state
    _install(SIM, invals, host)
    CRAFTED.maps = maps
    for m in maps:
        assert scan_leaf(SIM.kvm, m, lambda: slot_frames(SIM.kvm)) == brute(SIM, m), m
    assert _findings(SIM) == _brute_findings(SIM, maps)


def _fresh(host: list[Any], invals: list[tuple[int, int, int]] = []) -> Simulation:  # noqa: B006
    sim, _ = _sim()
    _install(sim, invals, host)
    return sim


def _names(sim: Simulation, m: Stage2Mapping) -> set[str]:
    ctx = CheckContext(sim.kvm, mappings=[m])
    return {f.name for f in (*frames.check(ctx), *stale.check(ctx))}


def _leaf(gpa: int, pages: int, pfn: int, seq: int = 0, size: int = PAGE) -> Stage2Mapping:
    return Stage2Mapping(
        gpa=gpa, size=pages * size, pfn=pfn, writable=True, noncached=False, mmu_seq=seq
    )


def _rw(pfn: int) -> int:
    return mk_pte(pfn, PTE_PRESENT | PTE_READ | PTE_WRITE)


def test_a_leaf_whose_last_page_the_host_does_not_map_is_a_wrong_frame() -> None:
    # gpa 0xc000.. is hva start+0..: the host maps the first 3 of 4 pages
    sim = _fresh([(0, VMA.start + i * PAGE, _rw(BASE_PFN + i)) for i in range(3)])
    assert _names(sim, _leaf(0xC000, 3, BASE_PFN)) == set()
    assert _names(sim, _leaf(0xC000, 4, BASE_PFN)) == {"wrong_frame", "outside_memslot"}


def test_a_leaf_whose_middle_page_the_host_maps_elsewhere_is_a_wrong_frame() -> None:
    pfns = [BASE_PFN, BASE_PFN + 1, BASE_PFN + 9, BASE_PFN + 3]
    sim = _fresh([(0, VMA.start + i * PAGE, _rw(p)) for i, p in enumerate(pfns)])
    # page 2 maps BASE_PFN + 2, which the host maps nowhere in the slots
    assert _names(sim, _leaf(0xC000, 4, BASE_PFN)) == {"wrong_frame", "outside_memslot"}


def test_a_leaf_reaching_past_its_memslot_is_outside_memslot() -> None:
    sim = _fresh([(2, VMA.start + 0x8000, _rw(BASE_PFN))])  # 16K at the slot-0 hva
    assert _names(sim, _leaf(0x0, 4, BASE_PFN)) == set()
    # 0x0-0x8000 is slot 0, 0x8000-0xc000 is no slot's
    sim = _fresh([(3, VMA.start + 0x8000, _rw(BASE_PFN))])
    assert _names(sim, _leaf(0x0, 16, BASE_PFN)) >= {"outside_memslot"}


def test_a_leaf_whose_later_page_was_invalidated_is_stale() -> None:
    host = [(0, VMA.start + i * PAGE, _rw(BASE_PFN + i)) for i in range(3)]
    inval = [(1, VMA.start + 3 * PAGE, VMA.start + 4 * PAGE)]
    sim = _fresh(host, inval)
    assert _names(sim, _leaf(0xC000, 4, BASE_PFN, seq=0)) == {"stale_mapping"}
    assert _names(sim, _leaf(0xC000, 4, BASE_PFN, seq=1)) == {"wrong_frame", "outside_memslot"}


ARCH_SCENARIO = """
name = "leaf-per-arch"
[[vma]]
name = "ram"
size = "4M"
backing = "anon"
[[memslot]]
gpa = 0x0
size = "2M"
vma = "ram"
[[step]]
do = "host_write"
vma = "ram"
offset = 0
"""


@pytest.mark.parametrize("arch", ARCHES)
def test_every_arch_judges_every_base_page(arch: str) -> None:
    c = Crafted()
    sim = build_sim(ARCH_SCENARIO, arch=arch, strategy="generic_v4_16", extra_plugins=[c])
    sim.run()
    page = 1 << sim.kvm.page_shift
    pfn, _ = host_frame(sim.kvm, sim.vma("ram").start)
    assert pfn is not None
    c.maps = [_leaf(0, 1, pfn, size=page)]
    assert _names(sim, c.maps[0]) == set()
    # a two-page leaf: the host maps nothing at its second page's hva
    assert _names(sim, _leaf(0, 2, pfn, size=page)) >= {"wrong_frame"}
    # a leaf reaching one page past the 2M memslot
    assert "outside_memslot" in _names(sim, _leaf(0x200000 - page, 2, pfn, size=page))
