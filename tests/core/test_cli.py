"""The command line: exit codes, one-line errors, --json and --trace contracts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmsim.cli import main

GOOD = """
name = "cli-good"
arch = "ppc_radix"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0x0
vma = "ram"
[[step]]
do = "access"
gpa = 0x10000
op = "write"
expect = { outcome = "mapped", writable = true, frame = "host" }
"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_good_scenario_exits_0_and_json_has_the_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        ["run", write(tmp_path, GOOD), "--strategy", "generic_v4_16", "--json"], capsys
    )
    assert code == 0
    doc = json.loads(out)
    assert set(doc) >= {"scenario", "arch", "strategy", "passed", "steps", "verdicts"}
    assert doc["passed"] is True and doc["scenario"] == "cli-good"
    step = doc["steps"][0]
    assert set(step) >= {
        "index",
        "do",
        "outcome",
        "pfn",
        "writable",
        "page_size",
        "verdicts",
        "expect_failures",
    }
    assert step["outcome"] == "mapped" and step["writable"] is True
    assert step["page_size"] == 65536 and isinstance(step["pfn"], int)


def test_failed_expectation_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = GOOD.replace("writable = true", "writable = false")
    code, out, _ = run_cli(["run", write(tmp_path, bad), "--strategy", "generic_v4_16"], capsys)
    assert code == 1
    assert "EXPECTATION FAILED: writable" in out


BAD_INPUTS = {
    "toml-syntax": (GOOD.replace('size = "1M"', 'size = "1M'), "s.toml"),
    "unknown-key": (
        GOOD.replace('backing = "anon"', 'backing = "anon"\ncolour = 1'),
        "vma[0].colour",
    ),
    "wrong-type": (GOOD.replace("gpa = 0x10000", 'gpa = "high"'), "step[0].gpa"),
    "outside-vma": (
        GOOD + '\n[[step]]\ndo = "munmap"\nvma = "ram"\noffset = 0x200000\n',
        "step[1]",
    ),
    "memslot-missing-vma": (
        GOOD.replace('vma = "ram"\n[[step]]', 'vma = "rom"\n[[step]]'),
        "memslot[0].vma",
    ),
    "unknown-device": (GOOD + '\n[[device]]\nkind = "nosuchdev"\n', "device[0].kind"),
    "unknown-step": (GOOD + '\n[[step]]\ndo = "teleport"\n', "step[1].do"),
    "memslot-not-page-aligned": (GOOD.replace("gpa = 0x0", "gpa = 0x1000"), "memslot[0].gpa"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_scenario_exits_2_with_key_path_and_no_traceback(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, key = BAD_INPUTS[case]
    path = write(tmp_path, text)
    code, out, err = run_cli(["run", path, "--strategy", "generic_v4_16"], capsys)
    assert code == 2, (out, err)
    assert key in err, err
    assert "s.toml" in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "X", "--strategy", "nosuch"], "unknown strategy 'nosuch'"),
        (["run", "X", "--strategy", "generic_v4_16", "--arch", "nosuch"], "unknown arch"),
        (["run", "X", "--strategy", "generic_v4_16", "--bogus"], "unrecognized arguments"),
        (["run", "X"], "--strategy"),
        (["run", "X", "--strategy", "generic_v4_16", "--trace", "t.txt"], ".jsonl or .json"),
        (
            ["run", "gen-anon-write", "--strategy", "generic_v4_16"],
            "did you mean gen-thp-write, gen-anon-write-first-touch",
        ),
        ([], "a command is required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_flags_and_names_exit_2_in_one_line(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [write(tmp_path, GOOD) if a == "X" else a for a in args]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["run", str(tmp_path / "none.toml"), "--strategy", "generic_v4_16"], capsys
    )
    assert code == 2 and "none.toml" in err


def test_trace_files_are_written_and_deterministic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD)
    for name in ("a.jsonl", "b.jsonl", "c.json"):
        assert (
            main(["run", path, "--strategy", "generic_v4_16", "--trace", str(tmp_path / name)]) == 0
        )
    capsys.readouterr()
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    events = [json.loads(line) for line in a.decode().splitlines()]
    assert any(e["event"] == "hva_to_pfn" for e in events)
    from tests.core.test_trace import check_chrome

    check_chrome(json.loads((tmp_path / "c.json").read_text()))


def test_plugins_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["plugins", "--json"], capsys)
    assert code == 0
    rows = {(r["kind"], r["name"]): r for r in json.loads(out)}
    assert ("arch", "ppc_radix") in rows
    row = rows[("strategy", "generic_v4_16")]
    assert row["distribution"] == "kvmsim" and row["arches"] == ["*"]
    assert "hva_to_pfn" in row["hooks"] and row["description"]


def test_console_script_is_installed() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kvmsim.cli", "plugins"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and "ppc_radix" in r.stdout
