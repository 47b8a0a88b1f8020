"""Fixtures that install out-of-tree distributions into the test environment.

The example ``examples/kvmsim-arm64`` is copied to a temporary directory (so
the build leaves nothing in the source tree), installed with pip
(``--no-deps --no-build-isolation``: offline, with the venv's setuptools)
once per session, and uninstalled at the end so other tests' plugin lists
are not polluted.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmsim import registry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kvmsim-arm64"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def pip_install(path: Path) -> None:
    r = pip("install", "--no-deps", "--no-build-isolation", str(path))
    assert r.returncode == 0, f"pip install {path} failed:\n{r.stdout}\n{r.stderr}"
    importlib.invalidate_caches()
    registry.reset_cache()


def pip_uninstall(*dists: str) -> None:
    pip("uninstall", "-y", *dists)
    importlib.invalidate_caches()
    registry.reset_cache()


@pytest.fixture(scope="session")
def arm64_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example distribution (its build writes next to it)."""
    dst = tmp_path_factory.mktemp("example") / "kvmsim-arm64"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    return dst


@pytest.fixture(scope="session")
def arm64_installed(arm64_source: Path) -> Iterator[Path]:
    """kvmsim-arm64 installed for the session; uninstalled afterwards."""
    pip_install(arm64_source)
    try:
        yield arm64_source
    finally:
        pip_uninstall("kvmsim-arm64")
