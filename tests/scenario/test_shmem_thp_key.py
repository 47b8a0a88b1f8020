"""``huge`` on a shmem vma: a shmem THP (MADV_HUGEPAGE under the advise
policy); on a backing where the kernel has no THP it is bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmsim.cli import main
from kvmsim.errors import ScenarioError
from kvmsim.scenario import parse_scenario


def scenario(vma: str) -> str:
    return f"""name = "t"
arch = "x86_ept"
[[vma]]
name = "ram"
size = "4M"
{vma}
[[memslot]]
gpa = 0
vma = "ram"
"""


@pytest.mark.parametrize("shared", ["true", "false"])
def test_huge_on_shmem_is_the_thp_size(shared: str) -> None:
    sc = parse_scenario(scenario(f'backing = "shmem"\nshared = {shared}\nhuge = "2M"'), "t.toml")
    assert sc.vmas[0].huge == 2 << 20


@pytest.mark.parametrize(
    ("vma", "says"),
    [
        ('backing = "pfnmap_linear"\nhuge = "2M"', "backing 'pfnmap_linear'"),
        ('backing = "pfnmap_fault"\nhuge = "2M"', "backing 'pfnmap_fault'"),
        ('backing = "mixedmap"\nhuge = "2M"', "backing 'mixedmap'"),
        ('backing = "file"\nhuge = "2M"', "a regular file's page cache gets no THP"),
        ('backing = "shmem"\nshared = true\nhuge = "1G"', "shmem huge pages are PMD-sized"),
        ('backing = "shmem"\nshared = true\nhuge = "64K"', "shmem huge pages are PMD-sized"),
    ],
)
def test_huge_where_the_kernel_has_no_such_thp_is_refused(vma: str, says: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(scenario(vma), "t.toml")
    line = str(exc.value)
    assert "\n" not in line and "vma[0].huge" in line and says in line


def test_the_cli_says_it_in_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(scenario('backing = "pfnmap_linear"\nhuge = "2M"'))
    code = main(["run", str(path), "--strategy", "follow_pfn_2024"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"kvmsim: error: {path}: vma[0].huge: ")


def test_the_docs_vma_example_loads_as_a_shmem_thp() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "scenarios.md").read_text()
    blocks = re.findall(r"```toml\n(\[\[vma\]\].*?)```", doc, re.S)
    (thp,) = [b for b in blocks if 'backing = "shmem"' in b and "huge" in b]
    text = 'name = "t"\n' + thp + '[[memslot]]\ngpa = 0\nvma = "guest"\n'
    (vma,) = parse_scenario(text, "docs/scenarios.md").vmas
    assert (vma.backing, vma.shared, vma.huge) == ("shmem", True, 2 << 20)
