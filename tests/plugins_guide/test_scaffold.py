"""``kvmsim new-plugin KIND NAME``: the skeletons install and their own
generated tests pass as generated."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kvmsim.cli import main
from kvmsim.errors import UsageError
from kvmsim.scaffold import KINDS, render, write_skeleton

from .conftest import pip, pip_uninstall


@pytest.mark.parametrize("kind", KINDS)
def test_skeleton_declares_its_entry_point(kind: str) -> None:
    files = render(kind, "demo")
    meta = tomllib.loads(files["pyproject.toml"])
    assert meta["project"]["name"] == "kvmsim-demo"
    assert meta["project"]["dependencies"] == ["kvmsim"]
    assert meta["project"]["entry-points"][f"kvmsim.{kind}"] == {"demo": "kvmsim_demo"}
    assert set(files) == {
        "pyproject.toml",
        "README.md",
        "kvmsim_demo/__init__.py",
        "tests/test_demo.py",
    }
    for rel, text in files.items():
        if rel.endswith(".py"):
            compile(text, rel, "exec")  # valid Python as generated


def test_bad_kind_name_or_output_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown plugin kind"):
        render("cpu", "demo")
    with pytest.raises(UsageError, match="not usable"):
        render("arch", "Demo-1")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("")
    with pytest.raises(UsageError, match="not an empty directory"):
        write_skeleton("arch", "demo", tmp_path / "x")
    # the CLI turns them into one line and exit 2
    assert main(["new-plugin", "arch", "Demo-1"]) == 2
    assert main(["new-plugin", "cpu", "demo"]) == 2


def test_generated_skeletons_install_and_pass_their_tests(tmp_path: Path) -> None:
    dirs = []
    for kind in KINDS:
        out = tmp_path / f"kvmsim-g{kind}"
        assert main(["new-plugin", kind, f"g{kind}", "--output", str(out)]) == 0
        dirs.append(out)
    r = pip("install", "--no-deps", "--no-build-isolation", *map(str, dirs))
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        from kvmsim import registry

        registry.reset_cache()
        found = registry.discover()
        assert "garch" in found["arch"]
        assert "gstrategy" in found["strategy"]
        assert "gdevice" in found["device"]
        t = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider",
             "--rootdir", str(tmp_path), *(str(d / "tests") for d in dirs)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-2000:]
        assert "3 passed" in t.stdout
    finally:
        pip_uninstall(*(f"kvmsim-g{kind}" for kind in KINDS))
