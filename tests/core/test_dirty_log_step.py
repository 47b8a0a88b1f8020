"""The core ``dirty_log`` step: bad input is one line naming the step and
key, exit 2 (issue 23, "Bad input"); the [dirty] table; every store between
two harvests is reported by the second (issue 23, acceptance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmsim.cli import main
from kvmsim.testing import build_sim

HEAD = """
name = "dl"
arch = "{arch}"
{dirty}
[[vma]]
name = "ram"
size = "4M"
backing = "anon"

[[memslot]]
gpa = 0x0
vma = "ram"
"""


def _text(steps: str, *, arch: str = "x86_ept", dirty: str = "") -> str:
    return HEAD.format(arch=arch, dirty=dirty) + steps


def _step(action: str, extra: str = "", slot: int | None = 0) -> str:
    s = "" if slot is None else f"slot = {slot}\n"
    return f'\n[[step]]\ndo = "dirty_log"\n{s}action = "{action}"\n{extra}'


def _store(gpa: int, vcpu: int = 0) -> str:
    return f'\n[[step]]\ndo = "access"\ngpa = {gpa:#x}\nop = "write"\nvcpu = {vcpu}\n'


def _cli(tmp_path: Path, text: str, strategy: str, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "dl.toml"
    path.write_text(text)
    code = main(["run", str(path), "--strategy", strategy])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


BAD = [
    # (what, scenario, strategy, the step and key the line names, words)
    ("no such slot", _text(_step("get", slot=3)), "generic_v4_16", "step[0].slot", "no memslot"),
    ("get, not logging", _text(_step("get")), "generic_v4_16", "step[0].slot", "not enabled"),
    (
        "disable, not logging",
        _text(_step("disable")),
        "generic_v4_16",
        "step[0].slot",
        "not enabled",
    ),
    (
        "clear beyond the slot",
        _text(
            _step("enable") + _step("get") + _step("clear", "first = 960\nnum = 128\n"),
            dirty="[dirty]\nmanual_protect = true\n",
        ),
        "refcount_guarded",
        "step[2].num",
        "run past memslot 0 (1024 pages)",
    ),
    (
        "clear start not a whole word",
        _text(_step("enable") + _step("clear", "first = 3\n")),
        "refcount_guarded",
        "step[1].first",
        "whole bitmap words",
    ),
    (
        "ring before v5.11",
        _text(_step("enable"), dirty='[dirty]\nmode = "ring"\n'),
        "generic_v4_16",
        "dirty.mode",
        "KVM_CAP_DIRTY_LOG_RING came in v5.11",
    ),
    (
        "manual protect before v5.0",
        _text(_step("enable"), dirty="[dirty]\nmanual_protect = true\n"),
        "generic_v4_16",
        "dirty.manual_protect",
        "came in v5.0",
    ),
    (
        "clear before v5.0",
        _text(_step("enable") + _step("clear")),
        "generic_v4_16",
        "step[1].action",
        "KVM_CLEAR_DIRTY_LOG",
    ),
    (
        "reap without a ring",
        _text(_step("enable") + _step("reap", slot=None)),
        "refcount_guarded",
        "step[1].action",
        "no dirty ring",
    ),
    (
        "get with a ring",
        _text(_step("enable") + _step("get"), dirty='[dirty]\nmode = "ring"\n'),
        "refcount_guarded",
        "step[1].action",
        "-ENXIO",
    ),
    (
        "PML on POWER",
        _text(_step("enable", "pml = true\n"), arch="ppc_hpt"),
        "generic_v4_16",
        "step[0].pml",
        "Intel VMX feature",
    ),
    (
        "a mode x86 lacks",
        _text(_step("enable"), dirty='[dirty]\nmode = "dirty_bit"\n'),
        "generic_v4_16",
        "dirty.mode",
        "no harvest of EPT dirty bits",
    ),
    (
        "ring of a wrong size",
        _text(_step("enable"), dirty='[dirty]\nmode = "ring"\nring_size = 100\n'),
        "refcount_guarded",
        "dirty.ring_size",
        "power of two",
    ),
    (
        "a reap names a slot",
        _text(_step("reap"), dirty='[dirty]\nmode = "ring"\n'),
        "refcount_guarded",
        "step[0].slot",
        "every ring",
    ),
]


@pytest.mark.parametrize(("scenario", "strategy", "key", "words"), [b[1:] for b in BAD])
def test_bad_dirty_log_input_is_one_line_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    scenario: str,
    strategy: str,
    key: str,
    words: str,
) -> None:
    err = _cli(tmp_path, scenario, strategy, capsys)
    assert f": {key}: " in err and words in err, err


def _reports(text: str, strategy: str) -> list[tuple[int, tuple[int, ...]]]:
    sim = build_sim(text, strategy=strategy)
    report = sim.run()
    assert report.passed and not report.verdicts, report.to_json()
    return [(step, gpas) for step, _, gpas in sim.kvm.dirty.reports]


@pytest.mark.parametrize(
    ("strategy", "dirty"),
    [
        ("generic_v4_16", ""),
        ("generic_v4_16", '[dirty]\nmode = "pml"\n'),
        ("refcount_guarded", '[dirty]\nmode = "pml"\n'),
        ("follow_pfn_2024", ""),
    ],
)
def test_every_store_between_two_gets_is_in_the_second(strategy: str, dirty: str) -> None:
    steps = _store(0x1000) + _step("enable") + _store(0x2000) + _store(0x1000)
    steps += _step("get", "expect_dirty = [0x1000, 0x2000]\n")
    steps += _store(0x2000, vcpu=1) + _store(0x3000) + _step("get")
    reports = _reports(_text(steps, dirty=dirty), strategy)
    assert reports[0] == (4, (0x1000, 0x2000))
    # a page mapped writable by a fault is marked too (set_spte): a superset
    assert {0x2000, 0x3000} <= set(reports[1][1])


@pytest.mark.parametrize("strategy", ["refcount_guarded", "follow_pfn_2024"])
@pytest.mark.parametrize("initially_set", [False, True])
def test_manual_protect_get_reads_and_clear_rearms(strategy: str, initially_set: bool) -> None:
    dirty = "[dirty]\nmanual_protect = true\n" + ("initially_set = true\n" if initially_set else "")
    steps = _step("enable") + _store(0x1000) + _step("get") + _step("get")
    steps += _step("clear") + _step("get") + _store(0x1000) + _step("get")
    reports = _reports(_text(steps, dirty=dirty), strategy)
    first, again, after_clear, after_store = (g for _, g in reports)
    assert 0x1000 in first and first == again  # a get clears nothing
    assert after_clear == ()  # the clear took every page the get returned
    assert after_store == (0x1000,)  # re-armed: the store faulted and was marked
    if initially_set:
        assert len(first) == 1024  # every page of the slot starts dirty


def test_the_ring_reaps_stores_and_a_full_ring_exits() -> None:
    # 256 entries (a 4K page of them), soft limit 256 - 64: the 192nd push
    # makes the vcpu exit with KVM_EXIT_DIRTY_RING_FULL and QEMU reap
    steps = _step("enable")
    for i in range(200):
        steps += _store(0x1000 * (i + 1))
    steps += _step("reap", slot=None)
    text = _text(steps, dirty='[dirty]\nmode = "ring"\nring_size = 256\n')
    sim = build_sim(text, strategy="refcount_guarded")
    report = sim.run()
    assert report.passed and not report.verdicts, report.to_json()
    exits = [e for e in report.events if e["event"] == "kvm_dirty_ring_exit"]
    assert len(exits) == 1 and exits[0]["used"] == 192
    reaped = [g for _, _, g in sim.kvm.dirty.reports]
    # the reset write-protected the page whose fault filled the ring before
    # its store completed: the store faults again and pushes it again
    assert [len(r) for r in reaped] == [192, 9]
    assert reaped[1][0] == 0x1000 * 192
    assert sorted(set(reaped[0] + reaped[1])) == [0x1000 * (i + 1) for i in range(200)]


def test_a_ring_overwritten_when_full_is_an_overflow_verdict() -> None:
    # kvm_dirty_ring_push only WARNs on a full ring: the oldest uncollected
    # entry is overwritten (a vcpu dirtying past the reserve without exiting)
    from kvmsim.checks import CheckContext
    from kvmsim.checks.lostdirty import check
    from kvmsim.kvm.dirty import DirtyRing, dirty_ring_push

    sim = build_sim(
        _text(_step("enable"), dirty='[dirty]\nmode = "ring"\n'), strategy="refcount_guarded"
    )
    sim.run()
    ring = DirtyRing(4, 1)
    for off in range(5):
        dirty_ring_push(sim.kvm, ring, 0, off)
    found = list(check(CheckContext(sim.kvm)))
    assert [f.name for f in found] == ["dirty_log_overflow"]
    assert "page 0 was overwritten by page 4" in found[0].detail
