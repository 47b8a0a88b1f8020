"""Range-based notifier retry: until v5.12 (x86 v4.16 here, and PPC in every
version) an invalidation in progress forces a retry whatever it covers
(``mmu_notifier_retry``); x86 v5.13 retries only for an hva in the range
(``mmu_notifier_retry_hva``, with ``kvm_inc_notifier_count`` tracking the
union of nested ranges), v6.13 only for a gfn in the range
(``mmu_invalidate_retry_gfn``).  An invalidation that ended since
``mmu_seq`` was read retries in every version."""

from __future__ import annotations

from typing import Any

import pytest

from kvmsim.kvm.core import INVALID_GFN, track_range
from kvmsim.scenario import builtin_scenarios
from tests.x86_ept.test_ept_paths import HEAD, _access

LIB = {p.stem: p for p in builtin_scenarios()}
UNRELATED = "gen-race-unrelated-invalidation-in-flight"


def _faults(report: Any) -> int:
    return sum(1 for e in report.events if e["event"] == "kvm_page_fault" and e.get("ph") == "B")


@pytest.mark.parametrize(
    ("arch", "strategy", "retries"),
    [
        ("x86_ept", "generic_v4_16", 1),  # v4.16: retried on any invalidation
        ("x86_ept", "refcount_guarded", 0),  # v5.13: hva outside the range
        ("x86_ept", "follow_pfn_2024", 0),  # v6.13: gfn outside the range
        ("ppc_radix", "follow_pfn_2024", 1),  # PPC never went range-based
        ("ppc_hpt", "follow_pfn_2024", 1),
    ],
)
def test_an_unrelated_invalidation_in_flight(
    make_sim: Any, arch: str, strategy: str, retries: int
) -> None:
    text = LIB[UNRELATED].read_text()
    quiet = make_sim(text.replace('at = "across_create_pte"', ""), arch=arch, strategy=strategy)
    sim = make_sim(text, arch=arch, strategy=strategy)
    report = sim.run()
    assert report.passed, report.to_json()
    # the retry is one more fault than the same steps without the race take
    assert _faults(report) - _faults(quiet.run()) == retries
    # the held end ran after the fault: the count is back to 0, seq moved
    assert (sim.kvm.mmu_notifier_count, sim.kvm.mmu_notifier_seq) == (0, 1)


SAME_PAGE = (
    HEAD
    + '[[step]]\ndo = "host_write"\nvma = "ram"\noffset = 0x10000\n'
    + '[[step]]\ndo = "mprotect"\nvma = "ram"\noffset = 0x10000\nsize = "4K"\n'
    + 'prot = "r"\nat = "across_create_pte"\n'
    + _access(0x10000, "write")
)


@pytest.mark.parametrize("strategy", ["generic_v4_16", "refcount_guarded", "follow_pfn_2024"])
def test_an_invalidation_of_the_faulting_page_in_flight_retries(
    make_sim: Any, strategy: str
) -> None:
    # every version retries when the fault's own hva/gfn is being invalidated;
    # the retried store then meets the read-only vma
    report = make_sim(SAME_PAGE, strategy=strategy).run()
    retries = [e for e in report.events if e["event"] == "mmu_notifier_retry"]
    assert len(retries) == 1
    assert report.steps[2].outcome == "efault"
    assert not report.verdicts


def test_nested_invalidations_widen_both_ranges(make_sim: Any) -> None:
    kvm = make_sim(HEAD, strategy="follow_pfn_2024").kvm
    base = kvm.memslots.gfn_to_memslot(0).userspace_addr
    kvm.mmu_notifier_count = 1
    track_range(kvm, base + 0x5000, base + 0x6000)
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (5, 6)
    kvm.mmu_notifier_count = 2
    track_range(kvm, base + 0x1000, base + 0x2000)
    assert (kvm.mmu_notifier_range_start, kvm.mmu_notifier_range_end) == (
        base + 0x1000,
        base + 0x6000,
    )
    assert (kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end) == (1, 6)
    seq = kvm.mmu_notifier_seq
    # in the union's hull (gfn 3) retries, outside does not; a whole-VM check always does
    assert kvm.mmu_invalidate_retry_gfn(seq, 3)
    assert not kvm.mmu_invalidate_retry_gfn(seq, 6)
    assert kvm.mmu_notifier_retry_hva(seq, base + 0x3000)
    assert not kvm.mmu_notifier_retry_hva(seq, base + 0x6000)
    assert kvm.mmu_notifier_retry(seq)
    # a finished invalidation (seq moved) retries everywhere
    kvm.mmu_notifier_count = 0
    assert kvm.mmu_invalidate_retry_gfn(seq - 1, 100)
    assert not kvm.mmu_invalidate_retry_gfn(seq, 100)


def test_an_invalidation_outside_every_memslot_has_no_gfn_range(make_sim: Any) -> None:
    kvm = make_sim(HEAD, strategy="follow_pfn_2024").kvm
    kvm.mmu_notifier_count = 1
    track_range(kvm, 0x10, 0x20)
    assert kvm.mmu_invalidate_range_start == INVALID_GFN
    # v6.13 warns and retries when counting with no gfn range
    assert kvm.mmu_invalidate_retry_gfn(kvm.mmu_notifier_seq, 0)
