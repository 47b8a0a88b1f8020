"""The builtin crosscheck on this host's /dev/kvm (marker ``realkvm``).

These skip, saying why, where /dev/kvm is absent or unusable, so CI stays
green anywhere; where it is usable they fail on any disagreement that
kvmsim/realkvm/known.toml does not record, and on fewer comparable steps
than :data:`COMPARED_FLOOR` (so they cannot pass by skipping everything).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kvmsim.cli import main
from kvmsim.realkvm import guest
from kvmsim.realkvm.backend import RealVm, drain
from kvmsim.realkvm.host import SHMEM_THP_POLICIES, probe
from kvmsim.realkvm.plan import Plan, plan
from kvmsim.scenario import parse_scenario

from .scenarios import one_slot

HOST = probe()
pytestmark = [
    pytest.mark.realkvm,
    pytest.mark.skipif(not HOST.usable, reason=f"no usable /dev/kvm: {HOST.reason}"),
]

#: steps compared (agree or known) by the builtin crosscheck on a shadow-MMU
#: host; 184 agree on kvm_pvm 6.18 (docs/crosscheck.md)
COMPARED_FLOOR = 160


def crosscheck_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    rc = main(["crosscheck", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def test_builtin_crosscheck_has_no_unrecorded_disagreement(
    capsys: pytest.CaptureFixture[str],
) -> None:
    start = time.perf_counter()
    rc, doc = crosscheck_json(capsys)
    elapsed = time.perf_counter() - start
    bad = [
        f"{r['scenario']} step {s['index']}: {s['reason']} (real {s['real']}, model {s['model']})"
        for r in doc["results"]
        for s in r["steps"]
        if s["status"] == "disagree"
    ]
    assert not bad, "\n".join(bad)
    assert rc == 0
    summary = doc["summary"]
    assert summary["agree"] + summary["known"] >= COMPARED_FLOOR, summary
    assert doc["module"] == HOST.module and doc["kernel"] == HOST.kernel
    assert set(doc["results"][0]) == {"scenario", "strategy", "steps"}
    assert set(doc["results"][0]["steps"][0]) >= {"index", "real", "model", "status", "reason"}
    assert elapsed < 10, f"the builtin crosscheck took {elapsed:.1f} s"


def test_every_kvm_scenario_is_crosschecked_in_full(capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc = crosscheck_json(capsys, "kvm-*")
    assert rc == 0
    assert len(doc["results"]) >= 11
    results = doc["results"]
    if HOST.shmem_thp not in SHMEM_THP_POLICIES:
        # kvm-memfd-thp needs shmem THPs, which this host's policy refuses:
        # every step unsupported, saying so (and nothing else may be)
        (thp,) = [r for r in results if r["scenario"] == "kvm-memfd-thp"]
        assert all(
            s["status"] == "unsupported" and "shmem_enabled" in s["reason"] for s in thp["steps"]
        )
        results = [r for r in results if r is not thp]
    statuses = {s["status"] for r in results for s in r["steps"]}
    assert "unsupported" not in statuses and "disagree" not in statuses


def test_a_named_scenario_the_host_cannot_express_is_unsupported_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, doc = crosscheck_json(capsys, "xive-tima")
    assert rc == 0
    steps = doc["results"][0]["steps"]
    assert all(s["status"] == "unsupported" and "only x86" in s["reason"] for s in steps)


def _fds_and_maps() -> tuple[int, int]:
    drain()  # VM fds are closed on a thread of their own
    return len(os.listdir("/proc/self/fd")), len(Path("/proc/self/maps").read_text().splitlines())


def _baseline(p: Plan) -> tuple[int, int]:
    """fds and mappings after one whole run of *p*: the process's first VM
    also starts the reaper thread (its stack is a mapping) and fills caches."""
    with RealVm(p) as vm:
        vm.run()
    return _fds_and_maps()


SCENARIO = one_slot(
    'backing = "{backing}"\nshared = {shared}',
    '[[step]]\ndo = "munmap"\nvma = "ram"\noffset = 0x200000\nsize = "4K"\n',
)


@pytest.mark.parametrize(
    ("backing", "shared"), [("anon", "false"), ("shmem", "true"), ("file", "false")]
)
def test_every_fd_and_mapping_is_released(backing: str, shared: str) -> None:
    p = plan(parse_scenario(SCENARIO.format(backing=backing, shared=shared), "<t>"), HOST)
    before = _baseline(p)
    for _ in range(3):
        with RealVm(p) as vm:
            assert vm.run()[0].outcome == "mapped"  # type: ignore[union-attr]
    assert _fds_and_maps() == before


def test_a_failing_set_up_releases_what_it_took(monkeypatch: pytest.MonkeyPatch) -> None:
    p = plan(parse_scenario(SCENARIO.format(backing="shmem", shared="true"), "<t>"), HOST)
    before = _baseline(p)
    monkeypatch.setattr(guest, "warmup", lambda: b"\xf4")  # hlt at CPL 3: #GP, no port exit
    with pytest.raises(Exception, match="warm-up"):
        with RealVm(p, timeout=0.5):
            pass
    assert _fds_and_maps() == before


def test_a_guest_that_never_exits_is_reported_as_a_hang() -> None:
    p = plan(parse_scenario(SCENARIO.format(backing="anon", shared="false"), "<t>"), HOST)
    start = time.perf_counter()
    with RealVm(p, timeout=0.2, code={0: b"\xeb\xfe"}) as vm:  # jmp $
        obs = vm.run()
    assert obs[0] is not None and obs[0].outcome == "hang"
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("vma", "discard", "frame"),
    [
        # the page is gone: a load maps the zero page
        ('backing = "anon"', 'do = "madvise"\nadvice = "dontneed"', "zero"),
        # lazily freed but not reclaimed: the same page, same value
        ('backing = "anon"', 'do = "madvise"\nadvice = "free"', "4k same@0"),
        # a hole in the memfd: a new zero-filled page (even if the allocator
        # hands the freed frame out again)
        ('backing = "shmem"\nshared = true', 'do = "punch_hole"', "4k new"),
        ('backing = "shmem"\nshared = true', 'do = "madvise"\nadvice = "remove"', "4k new"),
    ],
)
def test_discards_on_the_real_host(vma: str, discard: str, frame: str) -> None:
    steps = (
        f'[[step]]\n{discard}\nvma = "ram"\noffset = 0x1000\nsize = "4K"\n'
        '[[step]]\ndo = "access"\ngpa = 0x1000\nop = "read"\n'
    )
    p = plan(parse_scenario(one_slot(vma, steps), "<t>"), HOST)
    with RealVm(p) as vm:
        store, done, load = vm.run()
    assert store is not None and store.outcome == "mapped"
    assert done is not None and done.outcome == "done"
    assert load is not None and load.outcome == "mapped" and load.frame == frame
    assert load.value == (3 if "same" in frame else 0)


def test_a_disagreement_exits_1_and_names_the_observable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import attrs

    import kvmsim.realkvm.command as command

    real_model = command.run_model

    def off_by_one(sc, **kw):  # type: ignore[no-untyped-def]
        obs, passed = real_model(sc, **kw)
        return [
            attrs.evolve(o, value=o.value + 1) if o.value is not None else o for o in obs
        ], passed

    monkeypatch.setattr(command, "run_model", off_by_one)
    rc, doc = crosscheck_json(capsys, "kvm-anon-read-write")
    assert rc == 1
    step1 = doc["results"][0]["steps"][1]
    assert step1["status"] == "disagree" and step1["reason"] == "differs in value"
    assert doc["summary"]["disagree"] == 2


def test_a_vma_failing_to_map_releases_the_ones_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = one_slot('backing = "anon"') + '[[vma]]\nname = "b"\nsize = "4M"\nbacking = "shmem"\n'
    p = plan(parse_scenario(text, "<t>"), HOST)
    before = _baseline(p)

    def no_memfd(name: str, flags: int = 0) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", no_memfd)  # the second vma (shmem) fails
    with pytest.raises(OSError, match="Too many open files"):
        with RealVm(p):
            pass
    assert _fds_and_maps() == before
