"""The pytest plugin: a user's suite parametrised over the matrix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_TESTS = """
import pytest
from kvmsim.testing import assert_cell

@pytest.mark.kvmsim_matrix(arch="ppc_radix", strategy=["generic_v4_16", "ppc_original"],
                           scenario="gen-anon-read-first-touch")
def test_cell(kvmsim_cell):
    assert_cell(kvmsim_cell)

def test_fails_with_trace(kvmsim_cell):
    kvmsim_cell.status = "fail"  # force the failure report
    assert_cell(kvmsim_cell)

test_fails_with_trace = pytest.mark.kvmsim_matrix(
    arch="ppc_radix", strategy="generic_v4_16", scenario="gen-noslot-mmio")(test_fails_with_trace)
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )


def test_each_cell_is_a_test_with_its_trace_in_the_report(tmp_path: Path) -> None:
    out = _pytest(tmp_path).stdout
    # one test per cell, named after it
    assert "test_cell[gen-anon-read-first-touch-ppc_radix-generic_v4_16]" in out
    assert "test_cell[gen-anon-read-first-touch-ppc_radix-ppc_original]" in out
    # a failing cell's report carries its decision trace
    assert "FAILED" in out and "test_fails_with_trace[gen-noslot-mmio" in out
    assert "decision trace" in out and "kvm_page_fault" in out


def test_the_marker_is_registered(tmp_path: Path) -> None:
    assert "kvmsim_matrix" in _pytest(tmp_path, "--markers").stdout
