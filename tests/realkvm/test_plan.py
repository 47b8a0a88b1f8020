"""What the real host can reproduce, decided without /dev/kvm."""

from __future__ import annotations

import pytest

from kvmsim.realkvm.host import HostInfo
from kvmsim.realkvm.plan import plan
from kvmsim.scenario import parse_scenario

from .scenarios import one_slot

SHADOW = HostInfo(True, "", "6.18.0", "kvm_pvm", 0, 1, 8 << 30)
EPT = HostInfo(True, "", "6.18.0", "kvm_intel", 4, 2, 8 << 30)


def sc(vma: str = 'backing = "anon"', steps: str = "", head: str = "") -> object:
    text = one_slot(vma, steps, head)
    return parse_scenario(text, "<t>")


@pytest.mark.parametrize(
    ("vma", "says"),
    [
        ('backing = "pfnmap_linear"', "VM_IO/VM_PFNMAP"),
        ('backing = "hugetlbfs"\nhuge = "2M"', "free 2M huge pages, the host has 0"),
        ('backing = "anon"\nshared = true', "use backing = 'shmem'"),
    ],
)
def test_set_ups_userspace_cannot_build_are_refused_whole(vma: str, says: str) -> None:
    p = plan(sc(vma), SHADOW)  # type: ignore[arg-type]
    assert not p.runs and says in p.refused
    assert all(s.status == "unsupported" and says in s.reason for s in p.steps)


def test_hugetlbfs_runs_where_a_pool_exists() -> None:
    assert plan(sc('backing = "hugetlbfs"\nhuge = "2M"'), EPT).runs  # type: ignore[arg-type]


def test_other_arches_and_devices_are_refused() -> None:
    assert "only x86" in plan(sc(head='arch = "ppc_radix"'), SHADOW).refused  # type: ignore[arg-type]


def test_more_memory_than_allowed_is_refused_before_anything_runs() -> None:
    p = plan(sc(), SHADOW, limit=1 << 20)  # type: ignore[arg-type]
    assert "needs 4 MiB of mappings, more than the 1 MiB allowed" in p.refused


STEP = '[[step]]\ndo = "{do}"\nvma = "ram"\n{extra}\n'
LATER = '[[step]]\ndo = "access"\ngpa = 0x1000\nop = "read"\n'


@pytest.mark.parametrize(
    ("do", "extra", "says"),
    [
        ("poison", "", "MADV_HWPOISON"),
        ("migrate", "", "one NUMA node"),
        ("split_thp", "", "split_thp"),
        ("munmap", 'at = "after_hva_to_pfn"', "race placement"),
    ],
)
def test_host_events_the_host_cannot_do_are_unsupported_and_so_is_what_follows(
    do: str, extra: str, says: str
) -> None:
    p = plan(sc(steps=STEP.format(do=do, extra=extra) + LATER), SHADOW)  # type: ignore[arg-type]
    assert p.runs
    assert [s.action for s in p.steps] == ["access", None, None]
    assert says in p.steps[1].reason
    assert p.steps[2].reason == "follows step 1, which the real host could not do"


def test_supported_host_events_and_dirty_log_get_actions() -> None:
    steps = (
        STEP.format(do="munmap", extra='size = "4K"')
        + STEP.format(do="mprotect", extra='prot = "none"')
        + STEP.format(do="host_write", extra="")
        + STEP.format(do="host_read", extra="width = 4")
        + '[[step]]\ndo = "dirty_log"\nslot = 0\naction = "enable"\n'
    )
    p = plan(sc(steps=steps), SHADOW)  # type: ignore[arg-type]
    assert [s.action for s in p.steps] == [
        "access",
        "host",
        "host",
        "host",
        "host",
        "dirty_log",
    ]


def test_discard_steps_get_actions() -> None:
    steps = (
        STEP.format(do="madvise", extra='advice = "dontneed"\nsize = "4K"')
        + STEP.format(do="madvise", extra='advice = "free"\nsize = "4K"')
        + LATER
    )
    p = plan(sc(steps=steps), SHADOW)  # type: ignore[arg-type]
    assert [s.action for s in p.steps] == ["access", "host", "host", "access"]
    shm = 'backing = "shmem"\nshared = true'
    remove = STEP.format(do="madvise", extra='advice = "remove"\nsize = "4K"')
    steps = remove + STEP.format(do="punch_hole", extra='size = "4K"')
    p = plan(sc(shm, steps=steps), SHADOW)  # type: ignore[arg-type]
    assert [s.action for s in p.steps] == ["access", "host", "host"]


def test_a_hole_in_hugetlbfs_is_unsupported_for_want_of_an_fd() -> None:
    huge = 'backing = "hugetlbfs"\nhuge = "2M"\nshared = true'
    p = plan(sc(huge, steps=STEP.format(do="punch_hole", extra="") + LATER), EPT)  # type: ignore[arg-type]
    assert p.runs
    assert [s.action for s in p.steps] == ["access", None, None]
    assert "no fd to fallocate" in p.steps[1].reason


def test_ept_accessed_bits_are_not_comparable_on_a_shadow_mmu_only() -> None:
    steps = STEP.format(do="age", extra="")
    shadow = plan(sc(steps=steps, head='arch = "x86_ept"'), SHADOW).steps[1]  # type: ignore[arg-type]
    ept = plan(sc(steps=steps, head='arch = "x86_ept"'), EPT).steps[1]  # type: ignore[arg-type]
    assert shadow.status == "not_comparable" and "kvm_pvm is a shadow MMU" in shadow.reason
    assert ept.status == "unsupported"


def test_accesses_the_guest_cannot_make() -> None:
    p = plan(sc(steps='[[step]]\ndo = "access"\ngpa = 0x100000000\nop = "read"\n'), SHADOW)  # type: ignore[arg-type]
    assert "low 4 GiB" in p.steps[1].reason
    p = plan(sc(steps='[[step]]\ndo = "access"\ngpa = 0x1000\nop = "exec"\n'), SHADOW)  # type: ignore[arg-type]
    assert p.steps[1].reason.startswith("exec:")
