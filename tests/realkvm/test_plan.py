"""What the real host can reproduce, decided without /dev/kvm."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from kvmsim.realkvm import host as realhost
from kvmsim.realkvm import kvmapi as k
from kvmsim.realkvm.backend import RealVm
from kvmsim.realkvm.host import SHMEM_ENABLED, SHMEM_THP_POLICIES, HostInfo, shmem_thp_policy
from kvmsim.realkvm.plan import THP_SIZE, plan
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


# ---------------------------------------------------------------- shmem THP

SHMEM_THP = 'backing = "shmem"\nshared = true\nhuge = "2M"'


@pytest.mark.parametrize(
    ("policy", "found"), [("never", "[never]"), ("deny", "[deny]"), ("", "no readable knob")]
)
def test_shmem_thp_is_unsupported_where_the_knob_allows_none(policy: str, found: str) -> None:
    # shmem_getpage_gfp: never and deny give no huge page whatever the advice
    p = plan(sc(SHMEM_THP), attrs.evolve(SHADOW, shmem_thp=policy))  # type: ignore[arg-type]
    assert not p.runs
    assert SHMEM_ENABLED in p.refused and found in p.refused
    assert p.refused.startswith("vma[0] 'ram': THP on shmem")
    assert all(s.status == "unsupported" and s.reason == p.refused for s in p.steps)


@pytest.mark.parametrize("policy", SHMEM_THP_POLICIES)
def test_shmem_thp_runs_where_the_knob_honours_the_advice(policy: str) -> None:
    p = plan(sc(SHMEM_THP), attrs.evolve(SHADOW, shmem_thp=policy))  # type: ignore[arg-type]
    assert p.runs and [s.action for s in p.steps] == ["access"]


def test_shmem_without_huge_needs_no_knob() -> None:
    assert plan(sc('backing = "shmem"\nshared = true'), SHADOW).runs  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("always within_size advise [never] deny force\n", "never"),
        ("always within_size [advise] never deny force\n", "advise"),
        ("[always] within_size advise never deny force\n", "always"),
        ("always within_size advise never deny [force]\n", "force"),
        ("garbage\n", ""),
    ],
)
def test_the_knob_reader_takes_the_bracketed_word(tmp_path: Path, text: str, policy: str) -> None:
    knob = tmp_path / "shmem_enabled"
    knob.write_text(text)
    assert shmem_thp_policy(str(knob)) == policy


def test_an_absent_knob_reads_as_empty(tmp_path: Path) -> None:
    assert shmem_thp_policy(str(tmp_path / "absent")) == ""


def test_the_probe_records_the_knob(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(realhost, "shmem_thp_policy", lambda: "within_size")
    info = realhost.probe(dev=str(tmp_path / "no-kvm"))
    assert not info.usable and info.shmem_thp == "within_size"


@pytest.mark.parametrize(
    ("vma", "advice"),
    [
        (SHMEM_THP, k.MADV_HUGEPAGE),
        ('backing = "shmem"\nshared = true', k.MADV_NOHUGEPAGE),
        ('backing = "file"', k.MADV_NOHUGEPAGE),
        ('backing = "anon"\nhuge = "2M"', k.MADV_HUGEPAGE),
        ('backing = "anon"', k.MADV_NOHUGEPAGE),
    ],
)
def test_the_backend_advises_each_mapping_as_the_scenario_says(
    monkeypatch: pytest.MonkeyPatch, vma: str, advice: int
) -> None:
    # the translation of huge = "2M": a memfd (or tmpfs file) mapping with
    # MADV_HUGEPAGE; anything else VM_NOHUGEPAGE, so that shmem_enabled=always
    # or force gives no THP the model lacks.  Real mappings, no /dev/kvm.
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(k, "madvise", lambda a, n, adv: calls.append((a, n, adv)))
    spec = sc(vma).vmas[0]  # type: ignore[attr-defined]
    m = RealVm._map(object.__new__(RealVm), spec)
    try:
        assert calls == [(m.addr, spec.size, advice)]
        assert m.addr % THP_SIZE == 0  # do_set_pmd needs the 2M alignment
        assert (m.fd is not None) == (spec.backing != "anon")
    finally:
        m.unmap_all()
