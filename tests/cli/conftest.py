"""Helpers for the command-line tests: in-process runs and fake distributions."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmsim import matrix, registry
from kvmsim.cli import main

#: A scenario every strategy of the generic family passes on ppc_radix: a
#: store to untouched anon memory maps a writable host page.
GOOD = """
name = "{name}"
arch = "ppc_radix"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0x0
vma = "ram"
[[step]]
do = "access"
gpa = 0x10000
op = "write"
expect = {{ outcome = "mapped", writable = true, frame = "host" }}
{extra}
"""


#: A one-cell matrix (fast).
ONE_CELL = [
    "matrix",
    "--scenario",
    "gen-noslot-mmio",
    "--arch",
    "ppc_radix",
    "--strategy",
    "generic_v4_16",
    "--no-progress",
]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake_dist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str, dict[str, str]], Path]]:
    """Install a distribution the way pip would leave it (a ``*.dist-info``
    with ``entry_points.txt``, and its files) on ``sys.path`` for one test."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(name: str, entry_points: str, files: dict[str, str]) -> Path:
        info = site / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
        for rel, text in files.items():
            p = site / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(textwrap.dedent(text))
        registry.reset_cache()
        return site

    yield make
    # forget the modules imported from it: another test may reuse their names
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(site)):
            del sys.modules[name]
    registry.reset_cache()
    matrix._loaded.clear()
