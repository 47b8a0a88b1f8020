"""What a guest load returns (``expect.value``), and the loader's checks of it.

Expectations from the kernel: a never-written anonymous page reads 0 (the
zero page, or a zeroed new page: ``do_anonymous_page``), a COW break copies
the old contents (``wp_page_copy`` → ``__wp_page_copy_user``), a store
through a shared file mapping lands in the page cache page every mapping of
the file sees (``do_shared_fault``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmsim.cli import main
from kvmsim.errors import ScenarioError
from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario
from kvmsim.scenario.model import HOST_WRITE_VALUE

HEAD = """name = "v"
arch = "x86_ept"
[[vma]]
name = "ram"
size = "4M"
backing = "{backing}"
shared = {shared}
[[memslot]]
gpa = 0
vma = "ram"
"""


def run(steps: str, backing: str = "anon", shared: str = "false") -> list[object]:
    text = HEAD.format(backing=backing, shared=shared) + steps
    sc = parse_scenario(text, "<t>")
    report = Simulation(sc, strategy="follow_pfn_2024").run()
    assert report.passed, [s.expect_failures for s in report.steps]
    return [s.value for s in report.steps]


def access(op: str, gpa: int, **kv: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in kv.items())
    return f'[[step]]\ndo = "access"\nop = "{op}"\ngpa = {gpa:#x}\n{extra}'


def test_fresh_anon_reads_zero_and_a_store_is_read_back() -> None:
    values = run(
        access("read", 0x1000, expect="{ value = 0 }")
        + access("write", 0x1000, value="0x1234")
        + access("read", 0x1000, expect="{ value = 0x1234 }")
        + access("read", 0x1008, expect="{ value = 0 }")
    )
    assert values == [0, None, 0x1234, 0]


def test_host_write_through_a_shared_memfd_is_what_the_guest_reads() -> None:
    steps = (
        access("read", 0x2000)
        + '[[step]]\ndo = "host_write"\nvma = "ram"\noffset = 0x2000\n'
        + access("read", 0x2000, expect=f"{{ value = {HOST_WRITE_VALUE} }}")
        + '[[step]]\ndo = "host_write"\nvma = "ram"\noffset = 0x3000\nvalue = 7\n'
        + access("read", 0x3000, expect="{ value = 7 }")
    )
    assert run(steps, backing="shmem", shared="true")[2] == HOST_WRITE_VALUE


def test_a_failed_value_expectation_fails_the_run() -> None:
    sc = parse_scenario(
        HEAD.format(backing="anon", shared="false")
        + access("read", 0x1000, expect="{ value = 5 }"),
        "<t>",
    )
    report = Simulation(sc, strategy="follow_pfn_2024").run()
    assert not report.passed
    assert report.steps[0].expect_failures == ["value: expected 0x5, got 0x0"]


@pytest.mark.parametrize(
    ("expect", "op", "says"),
    [
        ('{ value = "x" }', "read", "wrong type"),
        ("{ value = -1 }", "read", "must not be negative"),
        ("{ value = 18446744073709551616 }", "read", "wider than a load"),
        ("{ value = 1 }", "write", "only a load sees one"),
        ('{ outcome = "efault", value = 1 }', "read", "returns no value"),
    ],
)
def test_bad_values_are_one_clear_error(expect: str, op: str, says: str) -> None:
    text = HEAD.format(backing="anon", shared="false") + access(op, 0, expect=expect)
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "f.toml")
    assert says in str(info.value)
    assert "f.toml" in str(info.value)


def test_a_bad_value_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(
        HEAD.format(backing="anon", shared="false") + access("read", 0, expect='{ value = "x" }')
    )
    assert main(["run", str(f), "--strategy", "follow_pfn_2024"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step[0].expect.value" in err


def test_prot_none_is_accepted_and_faults() -> None:
    sc = parse_scenario(
        HEAD.format(backing="anon", shared="false").replace(
            'backing = "anon"', 'backing = "anon"\nprot = "none"'
        )
        + access("read", 0x1000, expect='{ outcome = "efault" }'),
        "<t>",
    )
    assert Simulation(sc, strategy="follow_pfn_2024").run().passed


def test_a_swapped_out_page_comes_back_with_its_contents() -> None:
    # reclaim writes the page to its swap slot; do_swap_page reads it back
    # into a new frame (swap_read_folio), so the guest sees what it stored
    steps = (
        access("write", 0x1000, value="0x77")
        + '[[step]]\ndo = "swap_out"\nvma = "ram"\noffset = 0x1000\n'
        + access("read", 0x1000, expect="{ value = 0x77 }")
    )
    assert run(steps)[2] == 0x77


def test_an_evicted_file_page_is_read_back_with_its_contents() -> None:
    # reclaim of a shared file page: written back, dropped from the page
    # cache; filemap_fault reads it into a new page
    steps = (
        access("write", 0x1000, value="0x99")
        + '[[step]]\ndo = "swap_out"\nvma = "ram"\noffset = 0x1000\n'
        + access("read", 0x1000, expect="{ value = 0x99 }")
    )
    assert run(steps, backing="file", shared="true")[2] == 0x99
