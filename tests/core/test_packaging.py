"""pyproject.toml lists every package folder (the plugins folder is mapped to
``kvmsim_plugins``, so setuptools cannot find them by itself), and declares
every builtin plugin module as an entry point."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages(folder: str, name: str) -> set[str]:
    base = ROOT / folder
    return {
        ".".join([name, *p.parent.relative_to(base).parts])
        for p in base.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_every_package_folder_is_listed() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = _packages("kvmsim", "kvmsim") | _packages("plugins", "kvmsim_plugins")
    assert found == listed, {"missing": found - listed, "stale": listed - found}


def test_builtin_plugins_are_entry_points_of_existing_modules() -> None:
    eps = PYPROJECT["project"]["entry-points"]
    for group in ("kvmsim.arch", "kvmsim.strategy", "kvmsim.device"):
        for name, target in eps[group].items():
            parts = target.split(".")
            assert parts[0] == "kvmsim_plugins", (group, name)
            path = ROOT / "plugins" / Path(*parts[1:])
            assert path.with_suffix(".py").exists() or (path / "__init__.py").exists(), target
