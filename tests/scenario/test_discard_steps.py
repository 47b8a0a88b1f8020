"""The ``madvise`` and ``punch_hole`` steps: what the loader refuses (one
line naming the step and key, with the kernel's errno), what a run refuses
when earlier steps changed the vma, and that a good step runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmsim.cli import main
from kvmsim.errors import ScenarioError
from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario

FILE = "bad.toml"


def scenario(vma: str, steps: str) -> str:
    size = "" if "size" in vma else 'size = "1M"'
    return f"""name = "t"
arch = "x86_ept"
[[vma]]
name = "ram"
{size}
{vma}
[[memslot]]
gpa = 0
vma = "ram"
{steps}
[[step]]
do = "access"
gpa = 0x1000
op = "read"
"""


def step(do: str, **kv: str) -> str:
    return f'[[step]]\ndo = "{do}"\nvma = "ram"\n' + "".join(f"{k} = {v}\n" for k, v in kv.items())


def refused(text: str, key: str, *says: str) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, FILE)
    shown = str(info.value)
    assert info.value.key == key, shown
    assert shown.startswith(f"{FILE}: {key}: ") and "\n" not in shown
    for word in says:
        assert word in shown, shown
    return shown


def test_punch_hole_on_anonymous_private_memory_is_eopnotsupp() -> None:
    refused(
        scenario('backing = "anon"', step("punch_hole")),
        "step[0].vma",
        "fallocate(PUNCH_HOLE)",
        "fails with EOPNOTSUPP",
        "'ram'",
    )


def test_a_madvise_range_outside_the_vma() -> None:
    refused(
        scenario('backing = "anon"', step("madvise", advice='"dontneed"', offset="0x100000")),
        "step[0].offset",
        "outside vma 'ram'",
    )
    refused(
        scenario(
            'backing = "anon"',
            step("madvise", advice='"dontneed"', offset="0xff000", size='"8K"'),
        ),
        "step[0].size",
        "runs past the end of vma 'ram'",
    )


def test_an_unknown_advice() -> None:
    refused(
        scenario('backing = "anon"', step("madvise", advice='"dontned"')),
        "step[0].advice",
        "unknown advice",
        "did you mean 'dontneed'",
    )


def test_madvise_needs_an_advice() -> None:
    refused(scenario('backing = "anon"', step("madvise")), "step[0].advice", "missing required")


@pytest.mark.parametrize(
    ("vma", "advice", "errno"),
    [
        ('backing = "hugetlbfs"\nhuge = "2M"\nsize = "2M"', "dontneed", "EINVAL"),
        ('backing = "pfnmap_linear"', "free", "EINVAL"),
        ('backing = "shmem"\nshared = true', "free", "EINVAL"),
        ('backing = "anon"', "remove", "EINVAL"),
        ('backing = "shmem"', "remove", "EACCES"),
        ('backing = "shmem"\nshared = true\nprot = "r"', "remove", "EACCES"),
        ('backing = "mixedmap"\nshared = true', "remove", "ENODEV"),
        ('backing = "file"\nshared = true', "remove", "not modelled"),
    ],
)
def test_what_the_kernel_refuses_on_the_vma(vma: str, advice: str, errno: str) -> None:
    text = scenario(vma, step("madvise", advice=f'"{advice}"', size='"4K"'))
    refused(text, "step[0].advice", f"MADV_{advice.upper()}", errno)


def test_punch_hole_on_a_read_only_file_is_ebadf() -> None:
    refused(scenario('backing = "file"', step("punch_hole")), "step[0].vma", "EBADF")


@pytest.mark.parametrize(
    "vma",
    ['backing = "shmem"', 'backing = "shmem"\nshared = true', 'backing = "anon"\nshared = true'],
)
def test_punch_hole_on_shmem_loads(vma: str) -> None:
    parse_scenario(scenario(vma, step("punch_hole", size='"64K"')), FILE)


def test_a_refusal_only_a_run_can_see_is_bad_input_too() -> None:
    # mprotect makes the shared mapping read-only first: MADV_REMOVE is EACCES
    text = scenario(
        'backing = "shmem"\nshared = true',
        step("mprotect", prot='"r"') + step("madvise", advice='"remove"'),
    )
    sim = Simulation(parse_scenario(text, FILE), strategy="follow_pfn_2024")
    with pytest.raises(ScenarioError) as info:
        sim.run()
    shown = str(info.value)
    assert info.value.key == "step[1].advice"
    assert "fails with EACCES" in shown and "shared writable" in shown
    # an munmap'd range: ENOMEM
    text = scenario('backing = "anon"', step("munmap") + step("madvise", advice='"free"'))
    with pytest.raises(ScenarioError, match="ENOMEM"):
        Simulation(parse_scenario(text, FILE), strategy="follow_pfn_2024").run()


def test_punch_hole_after_munmap_still_reaches_the_file() -> None:
    # the fd outlives the mapping: the hole is punched in the file all the same
    text = scenario(
        'backing = "shmem"\nshared = true',
        step("host_write", value="7") + step("munmap") + step("punch_hole", size='"4K"'),
    )
    sim = Simulation(parse_scenario(text, FILE), strategy="follow_pfn_2024")
    f = sim.vma("ram").file
    report = sim.run()
    assert [s.outcome for s in report.steps] == ["done", "done", "done", "efault"]
    # QEMU's page left the cache (munmap alone keeps it there) and was freed
    assert f.cache == {}
    assert [p for p in sim.phys.freed if sim.phys.owner_of(p) == "pagecache:ram"]


def test_the_cli_says_it_in_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(scenario('backing = "anon"', step("punch_hole")))
    code = main(["run", str(path), "--strategy", "follow_pfn_2024"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"kvmsim: error: {path}: step[0].vma: ")
    assert "EOPNOTSUPP" in line
