"""Every command works on a plain ``pip install .``: nothing outside the
test extra's packages may be needed by the CLI.  Each command runs in a
fresh interpreter where pytest, hypothesis, dask and distributed cannot be
imported (``kvmsim bench`` once needed pytest through ``kvmsim.testing``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BLOCKED = ("pytest", "_pytest", "hypothesis", "dask", "distributed", "pluggy_testing")

PROGRAM = f"""
import sys
sys.modules.update(dict.fromkeys({BLOCKED!r}))  # None: `import x` fails
from kvmsim.cli import main
sys.exit(main(sys.argv[1:]))
"""

COMMANDS = {
    "plugins": ["plugins"],
    "scenarios": ["scenarios"],
    "run": [
        "run",
        "gen-anon-write-first-touch",
        "--arch",
        "x86_ept",
        "--strategy",
        "generic_v4_16",
        "--json",
    ],
    "matrix": ["matrix", "--arch", "x86_ept", "--strategy", "generic_v4_16", "--jobs", "1"],
    "diff": [
        "diff",
        "gen-anon-write-first-touch",
        "--arch",
        "x86_ept",
        "--strategy",
        "generic_v4_16",
        "--strategy",
        "follow_pfn_2024",
        "--width",
        "100",
    ],
    "bench": ["bench", "--arch", "x86_ept", "--mem", "1M", "--json"],
}


def _kvmsim(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_runs_without_test_packages(command: str, tmp_path: Path) -> None:
    proc = _kvmsim(COMMANDS[command], tmp_path)
    assert "ModuleNotFoundError" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr


def test_new_plugin_runs_without_test_packages(tmp_path: Path) -> None:
    proc = _kvmsim(["new-plugin", "strategy", "mine", "--output", str(tmp_path / "p")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p" / "pyproject.toml").is_file()
