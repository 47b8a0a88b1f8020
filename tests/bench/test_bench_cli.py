"""Smoke tests of ``kvmsim bench``: every workload runs tiny through the CLI
and prints one JSON object with the documented keys and types.  Timings are
never asserted (they belong to benchmarks, not unit tests)."""

from __future__ import annotations

import json

import pytest

from kvmsim.bench import KEYS
from kvmsim.cli import main

# workload -> (arch, extra flags); dirty_log needs x86_ept's dirty_log step
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
        ["--workload", "dirty_log", "--arch", "ppc_radix", "--mem", "1M"],
        ["--workload", "reaccess", "--instructions"],  # only the fault workloads count
        ["--workload", "trace_off", "--instructions", "--arch", "x86_ept", "--mem", "4K"],
    ],
)
def test_bad_flags_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["bench", *argv, "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvmsim:"), err
