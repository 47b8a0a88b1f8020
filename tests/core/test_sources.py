"""Every module of a modelled kernel version names where it was read: a
``Read from:`` paragraph in its docstring (kvmsim.sources), handed on by the
plugins' info and tabulated in docs/strategies.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kvmsim import registry
from kvmsim.sources import read_from

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    [
        *ROOT.glob("plugins/*/handler*.py"),
        *(p for p in ROOT.glob("plugins/strategies/*.py") if p.name != "__init__.py"),
        *ROOT.glob("examples/kvmsim-arm64/kvmsim_arm64/abort*.py"),
    ]
)


def test_the_module_list_is_not_empty() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in MODULES}
    assert "plugins/x86_ept/handler_v5_13.py" in names
    assert "plugins/strategies/follow_pfn_2024.py" in names
    assert "examples/kvmsim-arm64/kvmsim_arm64/abort_later.py" in names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_handler_and_strategy_module_names_its_source(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    source = read_from(doc)
    # a tree or a commit/tag/blob: at least a version-looking token
    assert source, f"{path}: no 'Read from:' paragraph in the module docstring"
    assert any(ch.isdigit() for ch in source), f"{path}: 'Read from:' names no version"


def test_read_from_takes_the_paragraph_only() -> None:
    doc = "Title.\n\nRead from: Linux 4.16.13,\n  virt/kvm/kvm_main.c.\n\nLater text."
    assert read_from(doc) == "Linux 4.16.13, virt/kvm/kvm_main.c."
    assert read_from("no source here") == ""
    assert read_from(None) == ""


@pytest.mark.parametrize(
    ("arch", "versions"),
    [
        ("ppc_radix", {"v4.15", "v4.16", "v4.17", "v6.13"}),
        ("ppc_hpt", {"v4.15", "v4.16", "v5.7", "v6.13"}),
        ("x86_ept", {"v4.16", "v5.13", "v6.13"}),
    ],
)
def test_each_arch_hands_on_a_source_per_handler_version(arch: str, versions: set[str]) -> None:
    info = registry.info_of("arch", registry.load(registry.lookup("arch", arch)))
    assert set(info.handler_sources) == versions
    assert all(info.handler_sources.values())


def test_each_builtin_strategy_hands_on_its_source() -> None:
    for name in sorted(registry.discover()["strategy"]):
        info = registry.info_of("strategy", registry.load(registry.lookup("strategy", name)))
        assert info.source, name
