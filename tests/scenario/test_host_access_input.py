"""Bad ``host_read`` / ``host_write`` steps: one line naming the file, the
step key and what was expected (exit 2 from the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmsim.cli import main
from kvmsim.errors import ScenarioError
from kvmsim.scenario import parse_scenario

FILE = "bad.toml"
HEAD = """name = "t"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
"""


def step(**kv: str) -> str:
    return "\n[[step]]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())


def bad(text: str, key: str, says: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(HEAD + text, FILE)
    shown = str(info.value)
    assert info.value.key == key, shown
    assert shown.startswith(f"{FILE}: {key}: ") and "\n" not in shown, shown
    assert says in shown, shown


def test_host_read_needs_a_vma() -> None:
    bad(step(do='"host_read"', offset="0x10"), "step[0].vma", "missing required key")
    bad(step(do='"host_read"', vma='"rom"'), "step[0].vma", "no vma of this name")


def test_host_read_outside_the_vma() -> None:
    bad(step(do='"host_read"', vma='"ram"', offset="0x100000"), "step[0].offset", "outside vma")


def test_host_access_width_must_be_an_access_size() -> None:
    for do in ('"host_read"', '"host_write"'):
        bad(step(do=do, vma='"ram"', width="3"), "step[0].width", "not an access size")
        bad(step(do=do, vma='"ram"', width='"8"'), "step[0].width", "wrong type")


def test_host_access_offset_is_aligned_to_its_width() -> None:
    bad(
        step(do='"host_read"', vma='"ram"', offset="0x802", width="4"),
        "step[0].offset",
        "a 4-byte access must be aligned to 4 bytes",
    )
    # any byte offset of the page is fine for a 1-byte access
    sc = parse_scenario(HEAD + step(do='"host_read"', vma='"ram"', offset="0x803", width="1"), FILE)
    assert (sc.steps[0].offset, sc.steps[0].params["width"]) == (0x803, 1)


def test_host_write_value_fits_in_its_width() -> None:
    bad(
        step(do='"host_write"', vma='"ram"', width="2", value="0x10000"),
        "step[0].value",
        "does not fit in 2 byte(s)",
    )


def test_host_read_expects_only_a_value_and_verdicts() -> None:
    bad(
        step(do='"host_read"', vma='"ram"', expect='{ outcome = "mapped" }'),
        "step[0].expect.outcome",
        "not a guest access",
    )
    bad(step(do='"host_read"', vma='"ram"', value="1"), "step[0].value", "unknown key")


def test_an_armed_host_read_cannot_expect_a_value() -> None:
    later = step(do='"access"', gpa="0x1000", op='"read"')
    bad(
        step(do='"host_read"', vma='"ram"', at='"after_hva_to_pfn"', expect="{ value = 0 }")
        + later,
        "step[0].expect.value",
        "reports no value",
    )


def test_the_command_line_says_it_in_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "t.toml"
    f.write_text(HEAD + step(do='"host_read"', vma='"ram"', width="16"))
    assert main(["run", str(f), "--strategy", "generic_v4_16", "--arch", "ppc_radix"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step[0].width" in err and "Traceback" not in err
