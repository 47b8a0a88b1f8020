"""Issue 22.7 and 22.8: output paths that cannot be written are one line and
exit 2 (before the run, and with no temporary file left behind); a closed
pipe ends the command quietly; report files get the mode a plain ``open``
would give them."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmsim import outfile
from kvmsim.errors import UsageError
from kvmsim.report.commands import write_atomic

from .conftest import GOOD, ONE_CELL, run_cli


def scenario(tmp_path: Path) -> str:
    p = tmp_path / "s.toml"
    p.write_text(GOOD.format(name="s", extra=""))
    return str(p)


def leftovers(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


@pytest.mark.parametrize("option", ["--output", "--trace"])
def test_a_directory_as_output_is_one_line_exit_2(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.json"
    target.mkdir()
    if option == "--output":
        args = [*ONE_CELL, "--output", str(target)]
    else:
        args = ["run", scenario(tmp_path), "--strategy", "generic_v4_16", "--trace", str(target)]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err == f"kvmsim: error: {option} {target}: is a directory; name a file\n"
    assert out == ""  # refused before anything ran
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("option", ["--output", "--trace"])
def test_a_path_below_a_file_is_one_line_exit_2(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain").write_text("")
    target = tmp_path / "plain" / "out.jsonl"
    if option == "--output":
        args = [*ONE_CELL, "--output", str(target)]
    else:
        args = ["run", scenario(tmp_path), "--strategy", "generic_v4_16", "--trace", str(target)]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith(f"kvmsim: error: {option} {target}: ") and err.count("\n") == 1
    assert "not a directory" in err


def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outfile.os, "replace", full)
    with pytest.raises(UsageError, match=r"--output .*report.md: cannot write: No space left"):
        write_atomic(tmp_path / "report.md", "text")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_027")
def test_reports_and_traces_honour_the_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "m.md"
    trace = tmp_path / "t.jsonl"
    assert run_cli([*ONE_CELL, "--format", "markdown", "--output", str(report)], capsys)[0] == 0
    run = ["run", scenario(tmp_path), "--strategy", "generic_v4_16", "--trace", str(trace)]
    assert run_cli(run, capsys)[0] == 0
    plain = tmp_path / "plain"
    plain.write_text("")  # what open() gives under this umask
    for p in (report, trace):
        assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o640


def test_rewriting_a_report_keeps_its_mode(tmp_path: Path) -> None:
    p = tmp_path / "r.md"
    p.write_text("old")
    p.chmod(0o604)
    write_atomic(p, "new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o604


def kvmsim_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run kvmsim with stdout a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(
            [sys.executable, "-m", "kvmsim.cli", *args],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(w)


@pytest.mark.parametrize(
    "args",
    [
        ["scenarios"],
        ["plugins"],
        ["run", "gen-noslot-mmio", "--strategy", "generic_v4_16", "--arch", "ppc_radix", "--json"],
        ONE_CELL,
    ],
    ids=["scenarios", "plugins", "run", "matrix"],
)
def test_a_closed_pipe_ends_quietly(args: list[str]) -> None:
    res = kvmsim_into_closed_pipe(*args)
    assert res.stderr == ""
    assert res.returncode == 128 + 13  # as a shell reports a tool that SIGPIPE ended


def test_head_takes_the_first_line() -> None:
    res = subprocess.run(
        f"{sys.executable} -m kvmsim.cli scenarios | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.stdout.count("\n") == 1 and res.stderr == ""
