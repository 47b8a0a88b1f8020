"""The partial-order reduction loses no failure: the distinct failure
classes found with it and without it are the same, on every builtin
race-free base, on the seeded bugs and on scenarios where it must prune
(two vcpus on different pages); columns it cannot key run unreduced."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest

from kvmsim.explore.search import Exploration, explore, explore_parallel, por_applies
from kvmsim.footprint import OPAQUE, Footprint
from kvmsim.kvm.core import Kvm
from kvmsim.matrix import library_files
from kvmsim.registry import scenario_schema
from kvmsim.scenario import load_scenario

BASES = ("gen-base-*", "xive-base-*", "*-dirty-base-*")

TWO_VCPUS = """
name = "por-two-vcpus"
description = "two vcpus store to pages in different 2M regions QEMU populated; QEMU unmaps vcpu1's"
concurrent = true

[[vma]]
name = "ram"
size = "4M"
backing = "anon"

[[memslot]]
gpa = 0x0
vma = "ram"

[[step]]
do = "host_write"
vma = "ram"
offset = 0x10000

[[step]]
do = "host_write"
vma = "ram"
offset = 0x210000

[[step]]
do = "access"
vcpu = 0
gpa = 0x10000
op = "write"

[[step]]
do = "access"
vcpu = 1
gpa = 0x210000
op = "read"
{extra}
"""

UNMAP = """
[[step]]
do = "munmap"
vma = "ram"
offset = 0x210000
size = "64K"
"""


def _classes(e: Exploration) -> set[tuple[str, ...]]:
    return {c.verdicts for c in e.classes}


def _library(pattern: str) -> list[Path]:
    return [f for _, f in library_files() if fnmatch.fnmatchcase(f.stem, pattern)]


def _load(path: Path) -> Any:
    return load_scenario(path, devices=scenario_schema()[1])


def _columns(sc: Any) -> list[tuple[str, str]]:
    """The columns ``kvmsim explore`` runs (those the matrix runs)."""
    import argparse

    from kvmsim.explore.command import _columns as cols

    return cols(argparse.Namespace(arch=None, strategy=None), sc, str(sc.source))[0]


def _bases() -> list[Path]:
    return sorted({p for pat in BASES for p in _library(pat)})


def _same(sc: Any, arch: str, strategy: str, bound: int, **kw: Any) -> tuple[Any, Any]:
    plain = explore(sc, arch, strategy, bound=bound, por=False, **kw)
    por = explore(sc, arch, strategy, bound=bound, **kw)
    assert not plain.por and plain.redundant == 0
    assert _classes(por) == _classes(plain), (sc.name, arch, strategy, por.classes, plain.classes)
    # the reduction runs a subset of what the plain search runs
    assert por.schedules <= plain.schedules
    return plain, por


@pytest.mark.parametrize("path", _bases(), ids=lambda p: p.stem)
def test_bases_bound_1_same_classes_with_and_without_por(path: Path) -> None:
    sc = _load(path)
    for arch, strategy in _columns(sc):
        plain, por = _same(sc, arch, strategy, 1)
        if not por_applies(sc, arch, strategy):
            # nothing keyed: every segment opaque, the same schedules run
            assert not por.por and por.redundant == 0 and por.schedules == plain.schedules


@pytest.mark.parametrize(
    ("name", "arch", "strategy"),
    [
        ("gen-base-munmap-first-touch", "x86_ept", "follow_pfn_2024"),
        ("gen-base-mprotect-write", "x86_ept", "generic_v4_16"),
        ("gen-base-migrate-first-touch", "x86_ept", "follow_pfn_2024"),
    ],
)
def test_some_bases_bound_2_same_classes(name: str, arch: str, strategy: str) -> None:
    _same(_load(_library(name)[0]), arch, strategy, 2)


def test_seeded_no_retry_same_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Kvm, "mmu_notifier_retry", lambda self, mmu_seq: False)
    sc = _load(_library("gen-base-munmap-first-touch")[0])
    plain, _ = _same(sc, "x86_ept", "generic_v4_16", 2)
    assert plain.classes


def test_seeded_early_put_same_classes() -> None:
    from kvmsim.registry import discover, load
    from tests.explore.seeded import EarlyPut

    f24 = load(discover()["strategy"]["follow_pfn_2024"])
    sc = _load(_library("gen-base-munmap-first-touch")[0])
    plain, por = _same(sc, "x86_ept", "follow_pfn_2024", 2, extra_plugins=[EarlyPut(f24)])
    assert plain.classes and por.por


@pytest.mark.parametrize("seed", ["retry_before_lock", "seq_after_gup"])
def test_seeded_handler_bugs_same_classes(seed: str) -> None:
    from kvmsim.registry import discover, load
    from tests.explore.seeded import RetryBeforeLock, SeqAfterGup

    arch = load(discover()["arch"]["x86_ept"])
    strat = load(discover()["strategy"]["generic_v4_16"])
    plugin = RetryBeforeLock(arch) if seed == "retry_before_lock" else SeqAfterGup(arch, strat)
    sc = _load(_library("gen-base-munmap-first-touch")[0])
    plain, por = _same(sc, "x86_ept", "generic_v4_16", 2, extra_plugins=[plugin])
    assert plain.classes
    assert not por.por  # state of their own across yield points: not keyed


def _two(tmp_path: Path, extra: str = "") -> Any:
    p = tmp_path / "two.toml"
    p.write_text(TWO_VCPUS.replace("{extra}", extra), encoding="utf-8")
    return _load(p)


@pytest.mark.parametrize("strategy", ["generic_v4_16", "follow_pfn_2024"])
def test_two_vcpus_on_different_pages_prune(tmp_path: Path, strategy: str) -> None:
    sc = _two(tmp_path)
    plain, por = _same(sc, "x86_ept", strategy, 1)
    assert por.por and por.redundant > 0
    assert por.schedules < plain.schedules


def test_two_vcpus_and_an_unmap_with_a_bug_same_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Kvm, "mmu_notifier_retry", lambda self, mmu_seq: False)
    sc = _two(tmp_path, UNMAP)
    plain, por = _same(sc, "x86_ept", "generic_v4_16", 1)
    assert plain.classes
    assert por.redundant > 0 and por.schedules < plain.schedules


def test_spread_over_processes_same_as_one_with_por(tmp_path: Path) -> None:
    sc = _two(tmp_path, UNMAP)
    one = explore(sc, "x86_ept", "generic_v4_16", bound=1)
    (two,) = explore_parallel([(sc, "x86_ept", "generic_v4_16")], 2, bound=1)
    assert (one.schedules, one.redundant, one.por) == (two.schedules, two.redundant, two.por)
    assert [(c.verdicts, c.sites, c.schedules) for c in one.classes] == [
        (c.verdicts, c.sites, c.schedules) for c in two.classes
    ]


def test_independence() -> None:
    a = Footprint(frozenset({("pt", 1)}), frozenset({("page", 5)}))
    b = Footprint(frozenset({("pt", 1)}), frozenset({("page", 6)}))
    c = Footprint(frozenset(), frozenset({("pt", 1)}))
    whole = Footprint(frozenset(), frozenset({("s2",)}))
    leaf = Footprint(frozenset({("s2", 3)}), frozenset())
    assert a.independent(b) and b.independent(a)
    assert not a.independent(c) and not c.independent(a)
    assert not whole.independent(leaf) and not leaf.independent(whole)
    assert leaf.independent(Footprint(frozenset({("s2", 3)}), frozenset()))
    assert not OPAQUE.independent(Footprint()) and not Footprint().independent(OPAQUE)


def test_two_vcpus_retrying_through_one_invalidation_stay_bounded(tmp_path: Path) -> None:
    """Both vcpus retry while QEMU's munmap is between its notifier calls.
    Were ``guest_retry`` a free choice, or a spinner's retry progress that
    wakes the other spinner, the search would branch at every RESUME and
    not end."""
    from kvmsim.explore.runtime import RETRY, Decision

    assert Decision(3, "vcpu0", RETRY, 1, ("qemu", "vcpu0"), "vcpu0").preemptive
    assert not Decision(3, "vcpu0", RETRY, 4, ("qemu",), "qemu").preemptive  # spinning
    sc = _two(tmp_path, UNMAP)
    e = explore(sc, "x86_ept", "generic_v4_16", bound=1)
    assert 0 < e.schedules < 2000
    assert all(len(c.best.preemptions) <= 1 for c in e.classes)
    # the one failure: vcpu1 reading before QEMU's store maps the zero page,
    # whose gup reference v4.16 never drops (kernel-notes §L.1)
    assert _classes(e) == {("refcount_leak",)}


def _footprints_after(sc: Any, prefix: tuple[str, ...], record_from: int | None) -> list[Any]:
    from kvmsim.explore.search import _SleepChooser, run_with

    chooser = _SleepChooser(prefix, {}, 2)
    if record_from is not None:
        chooser.record_from = record_from
    run_with(sc, "x86_ept", "follow_pfn_2024", chooser, record=True)
    sched = chooser.sched
    return [*sched.before[len(prefix) :], sched.tail]


@pytest.mark.parametrize("name", ["gen-base-munmap-first-touch", "por-two-vcpus"])
def test_recording_paused_through_a_prefix_records_the_same_after_it(
    tmp_path: Path, name: str
) -> None:
    """A schedule replaying a prefix records from the prefix's last decision
    on; every footprint the search reads (those after the prefix, and the
    last segment's) is the one a run recording from its start records, for
    every prefix that branches off the default run."""
    from kvmsim.explore.search import run_schedule

    sc = _two(tmp_path) if name == "por-two-vcpus" else _load(_library(name)[0])
    _, decisions, _ = run_schedule(sc, "x86_ept", "follow_pfn_2024", ())
    prefixes = [
        (*(c for _, c in decisions[:i]), alt)
        for i, (d, chosen) in enumerate(decisions)
        for alt in d.runnable
        if alt != chosen
    ]
    assert len(prefixes) > 5
    keyed = 0
    for prefix in prefixes:
        paused = _footprints_after(sc, prefix, None)
        full = _footprints_after(sc, prefix, 0)
        assert paused == full, prefix
        keyed += sum(1 for f in full if not f.opaque and (f.reads or f.writes))
    assert keyed  # the comparison saw keys, not only opaque segments
