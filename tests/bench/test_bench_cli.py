"""Smoke tests of ``kvmsim bench``: every workload runs tiny through the CLI
and prints one JSON object with the documented keys and types.  Timings are
never asserted (they belong to benchmarks, not unit tests)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from kvmsim.bench import KEYS
from kvmsim.cli import main

# workload -> (arch, extra flags)
CASES = {
    "demand_paging": ("ppc_radix", ["--vcpus", "2"]),
    "reaccess": ("x86_ept", []),
    "dirty_log": ("x86_ept", ["--rounds", "2"]),
    "dispatch": ("x86_ept", []),
    "trace_off": ("x86_ept", []),
}

NUMBER = (int, float)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # one JSON object, one line
    obj = json.loads(out[0])
    assert isinstance(obj, dict)
    return obj


def _check_types(obj: dict[str, object]) -> None:
    assert set(KEYS) <= set(obj)
    assert isinstance(obj["workload"], str)
    assert isinstance(obj["trace"], bool)
    assert isinstance(obj["seconds"], NUMBER)
    for k in ("page_size", "pages", "vcpus"):
        assert obj[k] is None or isinstance(obj[k], int)
    for k in ("faults_per_s", "hits_per_s", "bytes_per_page"):
        assert obj[k] is None or isinstance(obj[k], NUMBER)


@pytest.mark.parametrize(
    ("arch", "strategy", "modes"),
    [
        ("x86_ept", "generic_v4_16", ["wp", "pml"]),
        ("x86_ept", "follow_pfn_2024", ["wp", "pml", "ring"]),
        ("ppc_radix", "upstream_final", ["dirty_bit"]),
        ("ppc_hpt", "upstream_final", ["dirty_bit"]),
    ],
)
def test_dirty_log_runs_every_mechanism_side_by_side(
    capsys: pytest.CaptureFixture[str], arch: str, strategy: str, modes: list[str]
) -> None:
    argv = ["bench", "--workload", "dirty_log", "--arch", arch, "--strategy", strategy]
    obj = _run(capsys, [*argv, "--mem", "1M", "--rounds", "2", "--json"])
    mechs = obj["mechanisms"]
    assert isinstance(mechs, list)
    assert [m["mode"] for m in mechs] == modes
    for m in mechs:
        _check_types(m)
        # every store of every round is reported: none lost, and the rate
        # counts the pages of the timed rounds
        assert m["lost_dirty"] == 0
        assert m["pages_dirtied_per_s"] > 0 and m["harvest_ms_per_round"] >= 0
    assert obj["mode"] == modes[0]  # the top level is the default mechanism


@pytest.mark.parametrize("workload", sorted(CASES))
def test_workload_json(capsys: pytest.CaptureFixture[str], workload: str) -> None:
    arch, extra = CASES[workload]
    argv = ["bench", "--workload", workload, "--arch", arch, "--strategy", "generic_v4_16"]
    obj = _run(capsys, [*argv, "--mem", "4M", "--json", *extra])
    _check_types(obj)
    assert obj["workload"] == workload
    assert obj["arch"] == arch
    assert obj["strategy"] == "generic_v4_16"
    assert isinstance(obj["pages"], int) and obj["pages"] > 0
    assert obj["faults_per_s"] is not None or obj["hits_per_s"] is not None
    if workload == "reaccess":  # what the re-access rounds added (an arch's hit cache)
        after = obj["bytes_per_page_after_rounds"]
        assert isinstance(after, NUMBER) and isinstance(obj["bytes_per_page"], NUMBER)
    if workload == "trace_off":  # the copy without trace calls really lost some
        assert isinstance(obj["trace_sites_removed"], int) and obj["trace_sites_removed"] > 100
        assert isinstance(obj["removed_faults_per_s"], NUMBER)


def test_demand_paging_traced(capsys: pytest.CaptureFixture[str]) -> None:
    obj = _run(
        capsys,
        [
            "bench",
            "--workload",
            "demand_paging",
            "--arch",
            "x86_ept",
            "--mem",
            "1M",
            "--trace",
            "--json",
        ],
    )
    _check_types(obj)
    assert obj["trace"] is True
    # 4K pages on x86: 1M is 256 pages, each one first-touch fault
    assert obj["pages"] == 256 and obj["page_size"] == 4096


def test_matrix_json(capsys: pytest.CaptureFixture[str]) -> None:
    # one arch and one strategy keep the matrix small; keys as for the others
    obj = _run(
        capsys,
        [
            "bench",
            "--workload",
            "matrix",
            "--arch",
            "x86_ept",
            "--strategy",
            "generic_v4_16",
            "--json",
        ],
    )
    _check_types(obj)
    assert obj["workload"] == "matrix"
    assert isinstance(obj["cells"], int) and obj["cells"] > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--workload", "nope"],
        ["--mem", "lots"],
        ["--mem", "6K", "--arch", "ppc_radix"],  # not a multiple of 64K pages
        ["--vcpus", "0"],
        ["--arch", "no_such_arch"],
        ["--page-size", "8K", "--arch", "ppc_radix"],  # below the 64K base page
        ["--workload", "reaccess", "--instructions"],  # only the fault workloads count
        ["--workload", "trace_off", "--instructions", "--arch", "x86_ept", "--mem", "4K"],
    ],
)
def test_bad_flags_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["bench", *argv, "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvmsim:"), err


FAKE_VALGRIND = """#!{python}
# Stands in for valgrind: runs the command after the two callgrind options
# and reports 5000 + 300 instructions per fault the child took.
import json, subprocess, sys
proc = subprocess.run(sys.argv[3:], capture_output=True, text=True)
sys.stdout.write(proc.stdout)
sys.stderr.write(proc.stderr)
if proc.returncode == 0:
    faults = json.loads(proc.stdout)["faults"]
    sys.stderr.write(f"==1== Collected : {{5000 + 300 * faults}}\\n")
sys.exit(proc.returncode)
"""


def _fake_valgrind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "valgrind"
    fake.write_text(FAKE_VALGRIND.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.parametrize("workload", ["demand_paging", "trace_off"])
def test_instructions_per_fault_is_the_difference_of_two_runs(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workload: str,
) -> None:
    # a run of --mem and one of half: the fixed 5000 cancels, 300 per fault stays
    _fake_valgrind(tmp_path, monkeypatch)
    argv = ["bench", "--workload", workload, "--arch", "x86_ept", "--mem", "2M"]
    obj = _run(capsys, [*argv, "--instructions", "--json"])
    _check_types(obj)
    assert obj["pages"] == 512
    if workload == "demand_paging":
        assert obj["instructions_per_fault"] == 300
    else:
        assert obj["instructions_per_fault"] == obj["removed_instructions_per_fault"] == 300
        assert obj["off_vs_removed_instructions"] == 1.0


def test_instructions_without_valgrind_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    argv = ["bench", "--arch", "x86_ept", "--mem", "64K", "--instructions", "--json"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "valgrind" in err[0], err


def test_table_keeps_small_figures_readable() -> None:
    from kvmsim.bench import format_table

    table = format_table(
        {"seconds": 0.0227, "faults_per_s": 12345.6, "off_vs_removed": 1.012, "pages": 4096}
    )
    rows = dict(line.split(None, 1) for line in table.splitlines())
    assert rows == {
        "seconds": "0.0227",  # not rounded away to 0.0
        "faults_per_s": "12,345.6",
        "off_vs_removed": "1.012",
        "pages": "4,096",
    }
