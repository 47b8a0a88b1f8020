"""Issue 22.4: ``kvmsim run`` gives the matrix's status of the run: KFAIL with
the ``[[known]]`` reason when the failure is exactly the recorded one, XPASS
when a recorded defect did not happen; the exit status is unchanged (0 only
when every expectation held and no checker fired)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmsim.matrix import resolve_scenario
from kvmsim.scenario import load_scenario

from .conftest import GOOD, run_cli


def test_a_recorded_defect_is_kfail_with_its_reason(capsys: pytest.CaptureFixture[str]) -> None:
    # the README's example: v4.15's PFNMAP branch maps vm_pgoff + offset
    args = ["run", "xive-esb-eoi", "--strategy", "ppc_original", "--arch", "ppc_radix"]
    (rec,) = load_scenario(resolve_scenario("xive-esb-eoi")).known_for("ppc_original", "ppc_radix")
    code, out, _ = run_cli(args, capsys)
    assert code == 1  # the expectations failed: pinned, whatever the record says
    assert out.splitlines()[-1] == f"KFAIL: {rec.reason}"
    code, out, _ = run_cli([*args, "--json"], capsys)
    doc = json.loads(out)
    assert code == 1 and doc["passed"] is False
    assert doc["status"] == "kfail" and doc["known"] == rec.reason


def with_known(reason: str) -> str:
    """The passing scenario, with a record claiming a wrong_frame defect."""
    return GOOD.format(
        name="s",
        extra='[[known]]\nstrategy = "generic_v4_16"\narch = "ppc_radix"\n'
        f'verdicts = ["wrong_frame"]\nreason = "{reason}"\n',
    )


def test_a_failure_unlike_the_record_is_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the record claims a verdict that does not fire; the run fails otherwise
    text = with_known("a defect of another shape").replace("writable = true", "writable = false")
    (tmp_path / "s.toml").write_text(text)
    code, out, _ = run_cli(["run", str(tmp_path / "s.toml"), "--strategy", "generic_v4_16"], capsys)
    assert code == 1 and out.splitlines()[-1] == "FAIL"


def test_a_defect_that_did_not_happen_is_xpass_and_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s.toml").write_text(with_known("a made-up defect"))
    args = ["run", str(tmp_path / "s.toml"), "--strategy", "generic_v4_16"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0  # every expectation held and no checker fired
    assert out.splitlines()[-1] == "XPASS: known defect did not reproduce: a made-up defect"
    code, out, _ = run_cli([*args, "--json"], capsys)
    assert code == 0 and json.loads(out)["status"] == "xpass"
    # and without a record, plain PASS
    (tmp_path / "p.toml").write_text(GOOD.format(name="p", extra=""))
    code, out, _ = run_cli(["run", str(tmp_path / "p.toml"), "--strategy", "generic_v4_16"], capsys)
    assert code == 0 and out.splitlines()[-1] == "PASS"
