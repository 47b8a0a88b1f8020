"""Issue 22.1: every command resolves scenario names from every installed
scenario library (``kvmsim.scenarios`` entry points), not only the builtin
one, and ``kvmsim scenarios`` lists them by library."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import GOOD, run_cli

FakeDist = Callable[[str, str, dict[str, str]], Path]


def library(fake_dist: FakeDist, dist: str, package: str, names: list[str]) -> None:
    files = {f"{package}/__init__.py": ""}
    for n in names:
        files[f"{package}/{n}.toml"] = GOOD.format(name=n, extra="")
    fake_dist(dist, f"[kvmsim.scenarios]\n{dist} = {package}\n", files)


def test_run_diff_and_scenarios_see_another_library(
    fake_dist: FakeDist, capsys: pytest.CaptureFixture[str]
) -> None:
    library(fake_dist, "extralib", "extralib_scenarios", ["extra-store"])
    code, out, err = run_cli(["run", "extra-store", "--strategy", "generic_v4_16"], capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith("extra-store  arch=ppc_radix")
    assert out.rstrip().endswith("PASS")
    code, out, err = run_cli(
        ["diff", "extra-store", "--strategy", "generic_v4_16", "--strategy", "upstream_final"],
        capsys,
    )
    assert code == 0, err
    assert "extra-store" in out
    code, out, _ = run_cli(["scenarios"], capsys)
    assert code == 0
    lines = out.splitlines()
    # one heading per library, naming its distribution, its scenarios below it
    i = lines.index("extralib (extralib 1.0):")
    assert lines[i + 1] == "  extra-store"
    builtin = next(n for n, line in enumerate(lines) if line.startswith("builtin (kvmsim "))
    assert "  anon-write-first-touch" in lines[builtin:]
    # a misspelt name is offered the other library's scenario too
    code, _, err = run_cli(["run", "extra-stor", "--strategy", "generic_v4_16"], capsys)
    assert code == 2 and "did you mean extra-store?" in err


def test_a_name_in_two_libraries_is_an_error_naming_both(
    fake_dist: FakeDist, capsys: pytest.CaptureFixture[str]
) -> None:
    library(fake_dist, "liba", "liba_scenarios", ["twin"])
    library(fake_dist, "libb", "libb_scenarios", ["twin"])
    code, _, err = run_cli(["run", "twin", "--strategy", "generic_v4_16"], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert "more than one library" in err and "liba (" in err and "libb (" in err


def test_a_scenario_named_unlike_its_file_resolves_by_name(
    fake_dist: FakeDist, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_dist(
        "oddlib",
        "[kvmsim.scenarios]\noddlib = oddlib_scenarios\n",
        {
            "oddlib_scenarios/__init__.py": "",
            "oddlib_scenarios/file-name.toml": GOOD.format(name="scenario-name", extra=""),
        },
    )
    code, out, err = run_cli(["run", "scenario-name", "--strategy", "generic_v4_16"], capsys)
    assert code == 0, err
    assert out.startswith("scenario-name ")
