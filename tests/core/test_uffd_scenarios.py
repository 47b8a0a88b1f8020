"""Userfaultfd in scenarios: [[uffd]] and the handler's steps, bad input,
the sequential meaning (the handler's step runs inside the fault it
serves), the concurrent one (the faulting task is blocked until the
handler's actor acts), kernels without MINOR, and the explorer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvmsim import matrix as mx
from kvmsim.cli import main
from kvmsim.errors import ScenarioError
from kvmsim.explore.search import explore
from kvmsim.host import fault, userfaultfd
from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario

HEAD = """
name = "u"
{extra}
[[vma]]
name = "ram"
size = "2M"
backing = "{backing}"
{vma_extra}

[[vma]]
name = "file"
size = "64K"
backing = "file"

[[memslot]]
gpa = 0x0
vma = "ram"
"""

UFFD = """
[[uffd]]
vma = "ram"
offset = 0x10000
size = "64K"
"""

ACCESS = """
[[step]]
do = "access"
gpa = 0x10000
op = "read"
"""


def _text(body: str, *, backing: str = "anon", extra: str = "", vma_extra: str = "") -> str:
    return HEAD.format(backing=backing, extra=extra, vma_extra=vma_extra) + body


def _run(text: str, arch: str = "ppc_radix", strategy: str = "generic_v4_16") -> object:
    return Simulation(parse_scenario(text, "t"), arch=arch, strategy=strategy, trace=True).run()


BAD = [
    # a uffd step with no registered range
    ('[[step]]\ndo = "uffd_copy"\nvma = "ram"\n', "step[0].vma", "no [[uffd]] registers"),
    (
        UFFD + '[[step]]\ndo = "uffd_copy"\nvma = "ram"\noffset = 0x20000\n',
        "step[0].vma",
        "-ENOENT",
    ),
    (
        UFFD + '[[step]]\ndo = "uffd_continue"\nvma = "ram"\noffset = 0x10000\n',
        "step[0].vma",
        "MINOR",
    ),
    ('[[uffd]]\nvma = "file"\n', "uffd[0].vma", "vma_can_userfault"),
    ('[[uffd]]\nvma = "ram"\nmode = "minor"\n', "uffd[0].mode", "MINOR"),
    ('[[uffd]]\nvma = "ram"\nmode = "major"\n', "uffd[0].mode", "unknown mode"),
    ('[[uffd]]\nvma = "ram"\nlength = 1\n', "uffd[0].length", "unknown key"),
    ('[[uffd]]\nvma = "ram"\noffset = 0x400000\n', "uffd[0].offset", "outside vma"),
    (
        '[[uffd]]\nvma = "ram"\nsize = "64K"\nsigbus = true\n'
        '[[uffd]]\nvma = "ram"\noffset = 0x10000\n',
        "uffd[1].sigbus",
        "UFFD_FEATURE_SIGBUS",
    ),
    ('[[uffd]]\nvma = "ram"\nsigbus = 1\n', "uffd[0].sigbus", "true or false"),
    ('[[step]]\ndo = "pwrite"\nvma = "ram"\n', "step[0].vma", "needs a file"),
    (
        UFFD + '[[step]]\ndo = "munmap"\nvma = "ram"\nexpect = { uffd_faults = 1 }\n',
        "step[0].expect.uffd_faults",
        "",
    ),
    (
        UFFD + '[[step]]\ndo = "uffd_copy"\nvma = "ram"\noffset = 0x10000\nvalue = -1\n',
        "step[0].value",
        "negative",
    ),
]


@pytest.mark.parametrize(("body", "key", "words"), BAD, ids=[b[1] + b[2] for b in BAD])
def test_bad_input_names_the_key(body: str, key: str, words: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(_text(body), "bad.toml")
    assert e.value.key == key and words in str(e.value)


def test_hugetlbfs_ranges_and_zeropage() -> None:
    huge = 'huge = "2M"\nshared = true'
    with pytest.raises(ScenarioError) as e:
        parse_scenario(_text(UFFD, backing="hugetlbfs", vma_extra=huge), "h")
    assert e.value.key == "uffd[0].offset"
    reg = '[[uffd]]\nvma = "ram"\n'
    for body, key in (
        ('[[step]]\ndo = "uffd_zeropage"\nvma = "ram"\nsize = "2M"\n', "step[0].do"),
        ('[[step]]\ndo = "uffd_copy"\nvma = "ram"\n', "step[0].size"),  # one 4K page
    ):
        with pytest.raises(ScenarioError) as e:
            parse_scenario(_text(reg + body, backing="hugetlbfs", vma_extra=huge), "h")
        assert e.value.key == key


def test_cli_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(_text('[[step]]\ndo = "uffd_zeropage"\nvma = "ram"\n'))
    assert main(["run", str(p), "--arch", "x86_ept", "--strategy", "generic_v4_16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step[0].vma" in err and "uffd_zeropage" in err


def test_sequential_the_step_runs_inside_the_fault_it_serves() -> None:
    body = (
        UFFD
        + ACCESS
        + 'expect = { outcome = "mapped", value = 0x42 }\n'
        + '[[step]]\ndo = "uffd_copy"\nvma = "ram"\noffset = 0x10000\nvalue = 0x42\n'
        + "expect = { uffd_faults = 1 }\n"
    )
    r = _run(_text(body))
    assert r.passed, r.unexpected  # type: ignore[attr-defined]
    events = [e["event"] for e in r.events]  # type: ignore[attr-defined]
    # the copy ran inside step 0 (before the access ended), not at step 1
    assert events.index("UFFDIO_COPY") < events.index("host_event")
    assert "ran earlier" in r.steps[1].detail  # type: ignore[attr-defined]


def test_sequential_nobody_serves_the_fault() -> None:
    r = _run(_text(UFFD + ACCESS))
    assert r.steps[0].outcome == "deadlock"  # type: ignore[attr-defined]


def test_a_copy_before_the_access_is_prefetching() -> None:
    body = (
        UFFD
        + '[[step]]\ndo = "uffd_copy"\nvma = "ram"\noffset = 0x10000\nvalue = 5\n'
        + "expect = { uffd_faults = 0 }\n"
        + ACCESS
        + 'expect = { outcome = "mapped", value = 5, uffd_faults = 0 }\n'
    )
    r = _run(_text(body), arch="x86_ept", strategy="follow_pfn_2024")
    assert r.passed, r.steps  # type: ignore[attr-defined]


def test_concurrent_the_fault_is_blocked_until_the_handler_acts() -> None:
    body = (
        UFFD
        + ACCESS
        + 'expect = { outcome = "mapped", value = 9 }\n'
        + '[[step]]\ndo = "uffd_copy"\nactor = "uffd"\nvma = "ram"\noffset = 0x10000\nvalue = 9\n'
        + "expect = { uffd_faults = 1 }\n"
    )
    sim = Simulation(
        parse_scenario(_text(body, extra="concurrent = true"), "c"),
        arch="ppc_hpt",
        strategy="upstream_final",
        trace=True,
    )
    r = sim.run()
    assert r.passed
    blocked = [d for d, _ in sim.schedule_decisions if d.point == "blocked"]
    assert blocked and blocked[0].actor == "vcpu0" and blocked[0].runnable == ("uffd",)


MINOR = """
[[uffd]]
vma = "ram"
mode = "minor"

[[step]]
do = "pwrite"
vma = "ram"
offset = 0x10000
value = 3
"""


@pytest.mark.parametrize(
    ("strategy", "ok"), [("refcount_guarded", False), ("follow_pfn_2024", True)]
)
def test_minor_on_shmem_needs_v5_14(strategy: str, ok: bool) -> None:
    text = _text(
        MINOR
        + ACCESS
        + 'expect = { outcome = "mapped", value = 3 }\n'
        + '[[step]]\ndo = "uffd_continue"\nvma = "ram"\noffset = 0x10000\n',
        backing="shmem",
        vma_extra="shared = true",
    )
    if ok:
        assert _run(text, arch="x86_ept", strategy=strategy).passed  # type: ignore[attr-defined]
        return
    for arch in ("x86_ept", "ppc_radix"):  # with and without read-only memslots
        with pytest.raises(ScenarioError) as e:
            _run(text, arch=arch, strategy=strategy)
        assert e.value.key == "uffd[0].mode" and "v5.14" in str(e.value)


def test_the_matrix_leaves_out_kernels_without_minor() -> None:
    p = mx.plan(scenarios=["uffd-minor-continue-shmem"])
    assert {c.strategy for c in p.cells} == {"follow_pfn_2024"}
    assert any("needs Linux v5.14" in n for n in p.notes)


def _library(name: str) -> object:
    (cell,) = mx.plan(scenarios=[name], arches=["x86_ept"], strategies=["generic_v4_16"]).cells
    return mx.load_library_scenario(cell.path)


@pytest.mark.parametrize(
    ("arch", "strategy"), [("x86_ept", "generic_v4_16"), ("ppc_radix", "follow_pfn_2024")]
)
def test_two_vcpus_and_a_copy_explore_clean(arch: str, strategy: str) -> None:
    found = explore(_library("uffd-base-copy-two-vcpus"), arch, strategy, bound=1)
    assert not found.classes


def test_a_lost_wake_up_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded bug: handle_userfault checking the page table *before* it
    queues the message, the order the kernel avoids (kernel-notes §U.2): a
    copy between the check and the queueing wakes nobody, and the fault
    then sleeps for ever.  The correct order is explored clean above."""
    check = userfaultfd.userfaultfd_must_wait
    handle = userfaultfd.handle_userfault

    def check_then_queue(mm: Any, vma: Any, address: int, flags: int, reason: int) -> int:
        stale = check(mm, vma, address & ~(mm.page_size - 1))
        userfaultfd.userfaultfd_must_wait = lambda *a: stale  # type: ignore[assignment]
        try:
            return handle(mm, vma, address, flags, reason)
        finally:
            userfaultfd.userfaultfd_must_wait = check

    monkeypatch.setattr(fault, "handle_userfault", check_then_queue)
    found = explore(_library("uffd-base-copy-two-vcpus"), "ppc_radix", "generic_v4_16", bound=1)
    assert any("deadlock" in c.verdicts for c in found.classes)


@pytest.mark.parametrize(
    ("arch", "strategy", "leak"),
    [
        ("x86_ept", "generic_v4_16", True),  # FOLL_NOWAIT first, v4.16 follow_hugetlb_page
        ("x86_ept", "refcount_guarded", False),  # v5.13: the v5.0 fix is in
        ("ppc_radix", "generic_v4_16", False),  # synchronous gup: no FOLL_NOWAIT
    ],
)
def test_hugetlbfs_copy_and_the_nowait_lock_leak(arch: str, strategy: str, leak: bool) -> None:
    """uffd-hugetlbfs-missing-copy: the copy serves the huge page's fault
    everywhere; only x86's async try on a pre-v5.0 kernel leaks a read hold
    of mmap_sem (kernel-notes §U.4)."""
    sc = _library("uffd-hugetlbfs-missing-copy")
    r = Simulation(sc, arch=arch, strategy=strategy, trace=True).run()  # type: ignore[arg-type]
    assert r.steps[0].outcome == "mapped" and r.steps[0].value == 0x1234
    found = {v.name for v in r.verdicts}
    assert found == ({"lock_leak"} if leak else set()), found
    assert r.passed is not leak
    events = r.events
    nowait = [e for e in events if e.get("why", "").startswith("FAULT_FLAG_RETRY_NOWAIT")]
    assert bool(nowait) is (arch == "x86_ept")
    copies = [e for e in events if e["event"] == "UFFDIO_COPY"]
    assert len(copies) == 1 and copies[0]["len"] == 1 << 21 and copies[0]["woken"] == 1


HOST_READ = """
[[step]]
do = "host_read"
vma = "ram"
offset = 0x10000
"""


def test_sequential_a_host_load_is_served_like_a_guest_fault() -> None:
    """QEMU's load waits in handle_userfault (kernel-notes §U.7): the
    handler's next step covering the page runs inside it; the counter
    counts the message on the host_read step."""
    body = (
        UFFD
        + HOST_READ
        + "expect = { value = 0x42, uffd_faults = 1 }\n"
        + '[[step]]\ndo = "uffd_copy"\nvma = "ram"\noffset = 0x10000\nvalue = 0x42\n'
    )
    r = _run(_text(body), arch="x86_ept", strategy="generic_v4_16")
    assert r.passed, r.unexpected  # type: ignore[attr-defined]
    assert "ran earlier, inside qemu's fault" in r.steps[1].detail  # type: ignore[attr-defined]


def test_sequential_a_host_access_nobody_serves_is_a_deadlock() -> None:
    r = _run(_text(UFFD + HOST_READ + ACCESS))
    assert r.steps[0].outcome == "deadlock" and "SIGBUS" not in r.steps[0].detail  # type: ignore[attr-defined]
    assert "userfaultfd" in r.steps[0].detail  # type: ignore[attr-defined]
    assert r.steps[1].detail.startswith("not run")  # type: ignore[attr-defined]


def test_concurrent_qemu_is_blocked_until_the_handler_acts() -> None:
    body = (
        UFFD
        + HOST_READ.replace('do = "host_read"', 'do = "host_read"\nactor = "qemu"')
        + "expect = { value = 9 }\n"
        + '[[step]]\ndo = "uffd_copy"\nactor = "uffd"\nvma = "ram"\noffset = 0x10000\nvalue = 9\n'
        + "expect = { uffd_faults = 1 }\n"
    )
    sim = Simulation(
        parse_scenario(_text(body, extra="concurrent = true"), "c"),
        arch="x86_ept",
        strategy="follow_pfn_2024",
        trace=True,
    )
    r = sim.run()
    assert r.passed, r.unexpected
    blocked = [d for d, _ in sim.schedule_decisions if d.point == "blocked"]
    assert blocked and blocked[0].actor == "qemu" and blocked[0].runnable == ("uffd",)


@pytest.mark.parametrize(
    ("arch", "strategy", "v5_7"),
    [
        ("x86_ept", "generic_v4_16", False),
        ("ppc_radix", "upstream_final", False),  # the radix handler's v4.17
        ("ppc_hpt", "upstream_final", True),  # the HPT handler's v5.7
        ("x86_ept", "refcount_guarded", True),
    ],
)
def test_host_store_woken_before_the_copy_per_release(arch: str, strategy: str, v5_7: bool) -> None:
    sc = _library("uffd-host-write-wake-before-copy")
    r = Simulation(sc, arch=arch, strategy=strategy).run()  # type: ignore[arg-type]
    assert not r.verdicts
    assert r.passed is v5_7
    store = r.steps[0]
    assert ("SIGBUS" in store.detail) is not v5_7
    assert store.uffd_faults == (2 if v5_7 else 1)
    assert r.steps[3].value == (0x99 if v5_7 else 0x77)


@pytest.mark.parametrize(
    ("arch", "strategy"), [("x86_ept", "generic_v4_16"), ("ppc_hpt", "upstream_final")]
)
def test_qemu_a_vcpu_and_a_copy_explore_clean(arch: str, strategy: str) -> None:
    found = explore(_library("uffd-base-host-access-copy"), arch, strategy, bound=1)
    assert not found.classes


def test_uffd_feature_sigbus_on_a_synchronous_handler() -> None:
    """UFFD_FEATURE_SIGBUS: the vcpu's gup gets VM_FAULT_SIGBUS instead of
    waiting (-EFAULT out of KVM_RUN, kernel-notes §U.6), QEMU's store gets
    SIGBUS, no message is queued; a copy then makes both work."""
    body = (
        '[[uffd]]\nvma = "ram"\nsigbus = true\n'
        + ACCESS
        + 'expect = { outcome = "efault", uffd_faults = 0 }\n'
        + '[[step]]\ndo = "host_write"\nvma = "ram"\noffset = 0x20000\nvalue = 5\n'
        + '[[step]]\ndo = "uffd_copy"\nvma = "ram"\noffset = 0x10000\nvalue = 7\n'
        + "expect = { uffd_faults = 0 }\n"
        + ACCESS
        + 'expect = { outcome = "mapped", value = 7 }\n'
    )
    r = _run(_text(body), arch="ppc_radix", strategy="generic_v4_16")
    assert r.passed, r.unexpected  # type: ignore[attr-defined]
    assert "SIGBUS" in r.steps[1].detail  # type: ignore[attr-defined]
