"""The out-of-tree example arch plugin, installed as a user would install it:
discovered, registered, and its matrix column holding up on the generic
builtin scenarios (those without an ``arch`` key)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kvmsim.host.userfaultfd import scenario_min_linux
from kvmsim.registry import discover
from kvmsim.runner import RunReport, Simulation
from kvmsim.scenario import builtin_scenarios, load_scenario
from kvmsim.scenario.model import Scenario

pytestmark = pytest.mark.usefixtures("arm64_installed")

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = "generic_v4_16"
#: The example's own scenario library, in the order ``kvmsim scenarios`` lists it.
OWN = (
    "arm64-age-young",
    "arm64-dirty-base",
    "arm64-dirty-log",
    "arm64-exec-then-store",
    "arm64-nisv-readonly-store",
    "arm64-nisv-to-user",
    "arm64-thp-block",
)

# Where v4.16 arm64 itself differs from a correct kernel on a generic
# scenario: scenario → the verdicts the faithful model must produce.
ARM64_V4_16_DEFECTS = {
    # user_mem_abort rounds the gfn down to 2M for a hugetlbfs vma and maps a
    # block without checking that the memslot's hva and IPA agree modulo 2M;
    # "KVM: arm/arm64: Fix unintended stage 2 PMD mappings" (v4.20) added it
    "gen-hugetlb-2m-misaligned": {"wrong_frame"},
    # ... nor that the block lies inside the memslot (the same v4.20 fix)
    "gen-hugetlb-2m-partial-memslot": {"outside_memslot"},
}


def kvmsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmsim.cli", *args], capture_output=True, text=True, timeout=300
    )


def generic_scenarios() -> list[Scenario]:
    out = []
    for path in builtin_scenarios():
        sc = load_scenario(path)
        # (and none whose set-up needs a newer kernel than v4.16's: userfaultfd MINOR)
        if not sc.arch and not sc.devices and scenario_min_linux(sc) is None:
            out.append(sc)
    return out


def run(sc: Scenario, arch: str, strategy: str = STRATEGY) -> RunReport:
    return Simulation(sc, arch=arch, strategy=strategy).run()


def verdicts(report: RunReport) -> set[str]:
    return {v.name for v in report.verdicts}


def known(sc: Scenario, arch: str, strategy: str, report: RunReport) -> bool:
    """A ``[[known]]`` record of the scenario explains this failure."""
    got = tuple(sorted(verdicts(report)))
    return any(k.applies(strategy, arch) and k.verdicts == got for k in sc.known)


def test_kvmsim_plugins_lists_it_from_its_distribution() -> None:
    r = kvmsim("plugins", "--json")
    assert r.returncode == 0, r.stderr
    rows = {(row["kind"], row["name"]): row for row in json.loads(r.stdout)}
    row = rows[("arch", "arm64")]
    assert row["distribution"] == "kvmsim-arm64"
    assert row["module"] == "kvmsim_arm64"
    assert "error" not in row
    # the hooks an arch must implement (hookspecs: "Implemented by: every arch plugin")
    for hook in ("arch_info", "arch_init", "translate", "handle_page_fault", "create_pte"):
        assert hook in row["hooks"]
    assert {"notifier_invalidate", "stage2_mappings"} <= set(row["hooks"])


def test_in_process_discovery_sees_it() -> None:
    entry = discover()["arch"]["arm64"]
    assert (entry.dist, entry.value) == ("kvmsim-arm64", "kvmsim_arm64")


def test_generic_scenarios_on_arm64() -> None:
    """Every generic scenario passes on arm64 under generic_v4_16, unless the
    failure is a recorded defect of the strategy ([[known]], or the same
    verdicts on a builtin arch: the strategy's fault, not the arch's) or of
    v4.16 arm64 itself (ARM64_V4_16_DEFECTS)."""
    scenarios = generic_scenarios()
    assert any(sc.name == "anon-write-first-touch" for sc in scenarios)
    reference = next(a for a in ("x86_ept", "ppc_radix_4k", "ppc_radix") if a in discover()["arch"])
    unexplained = []
    for sc in scenarios:
        report = run(sc, "arm64")
        if sc.name in ARM64_V4_16_DEFECTS:
            assert verdicts(report) == ARM64_V4_16_DEFECTS[sc.name], sc.name
            continue
        if report.passed or known(sc, "arm64", STRATEGY, report):
            continue
        ref = run(sc, reference)
        if not ref.passed and verdicts(ref) == verdicts(report):
            continue
        unexplained.append((sc.name, sorted(verdicts(report)), report.to_json()["steps"]))
    assert not unexplained


def test_first_touch_scenario_passes_exactly() -> None:
    # the acceptance scenario: no defect of any kind applies to it
    sc = next(sc for sc in generic_scenarios() if sc.name == "anon-write-first-touch")
    assert run(sc, "arm64").passed


def test_kvmsim_run_cli_on_arm64() -> None:
    r = kvmsim("run", "anon-write-first-touch", "--arch", "arm64", "--strategy", STRATEGY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("PASS")


def test_documented_run_of_the_examples_own_scenario() -> None:
    # writing-plugins.md section 9, as written: the name comes from the
    # example's scenario library, the arch from the scenario
    r = kvmsim("run", "arm64-thp-block", "--strategy", STRATEGY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("PASS")
    lines = kvmsim("scenarios").stdout.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("arm64 (kvmsim-arm64 "))
    assert lines[i + 1 : i + 1 + len(OWN)] == [f"  {name}" for name in OWN]


def test_matrix_column() -> None:
    if "matrix" not in kvmsim("--help").stdout:
        pytest.skip("kvmsim matrix is not there yet")
    r = kvmsim(
        "matrix", "--arch", "arm64", "--strategy", STRATEGY, "--format", "json",
        "--no-progress", "--jobs", "1",
    )  # fmt: skip
    # every cell passes or reproduces a recorded v4.16 arm64 defect
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    cells: list[dict[str, Any]] = json.loads(r.stdout)["cells"]
    by_name = {c["scenario"]: c for c in cells if c["arch"] == "arm64"}
    generic = {sc.name for sc in generic_scenarios()}
    assert generic <= set(by_name)
    assert by_name["anon-write-first-touch"]["status"] == "pass"
    assert not [c for c in by_name.values() if c["status"] == "error"]
    for name, expected in ARM64_V4_16_DEFECTS.items():
        assert set(by_name[name]["verdicts"]) == expected
    # the example's own library (kvmsim.scenarios entry point) runs and passes
    own = {n: c for n, c in by_name.items() if n.startswith("arm64-")}
    assert set(own) == set(OWN)
    # recorded defects and differences of the older kernels: v4.16's
    # test_young and range ageing (kernel-notes §L.8); no NISV exit before
    # c726200dd106 (v5.5)
    statuses = {n: c["status"] for n, c in own.items()}
    assert statuses == {
        "arm64-age-young": "kfail",
        "arm64-dirty-base": "pass",
        "arm64-dirty-log": "pass",
        "arm64-exec-then-store": "pass",
        "arm64-nisv-readonly-store": "pass",
        "arm64-nisv-to-user": "kfail",
        "arm64-thp-block": "pass",
    }


def test_the_example_distributions_own_tests_pass(arm64_installed: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider", "tests"],
        cwd=arm64_installed,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_the_example_scenarios_validate_against_the_installed_schema() -> None:
    """With the example installed, ``kvmsim schema`` knows its access key
    (``isv``), its step kind and its outcomes, and its scenarios validate."""
    from kvmsim.scenario.schema import json_schema
    from tests.scenario.jsonschema_subset import validate

    schema = json_schema()
    assert "isv" in schema["$defs"]["step_access"]["properties"]
    assert "enosys" in schema["$defs"]["expect"]["properties"]["outcome"]["enum"]
    for path in sorted((ROOT / "examples").glob("*/*/scenarios/*.toml")):
        assert validate(tomllib.loads(path.read_text()), schema) == [], path.stem
