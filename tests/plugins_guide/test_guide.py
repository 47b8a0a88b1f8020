"""docs/writing-plugins.md covers what the example uses, and the example uses
only kvmsim's documented public API (no private module, no private name)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kvmsim import hookspecs

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "writing-plugins.md").read_text()
EXAMPLE = ROOT / "examples" / "kvmsim-arm64" / "kvmsim_arm64"
SOURCES = sorted(EXAMPLE.rglob("*.py"))

# The guide's "public API" table, as module names.
PUBLIC = {
    "kvmsim",
    "kvmsim.hooktypes",
    "kvmsim.errors",
    "kvmsim.cmodel",
    "kvmsim.kvm.pfn",
    "kvmsim.kvm.tables",
    "kvmsim.kvm.dirty",
    "kvmsim.host",
    "kvmsim.host.constants",
    "kvmsim.host.pte",
    "kvmsim.scenario",
    "kvmsim.registry",
    "kvmsim.runner",
    "kvmsim.testing",
    "kvmsim.sources",
}
TYPING_ONLY = {"kvmsim.kvm.core", "kvmsim.kvm.memslot"}
STDLIB = {"__future__", "typing"}


def imports(path: Path) -> list[tuple[str, str, bool]]:
    """(module, name, under TYPE_CHECKING) for every ``from M import N`` / ``import M``."""
    tree = ast.parse(path.read_text())
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded |= {id(n) for b in node.body for n in ast.walk(b)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                out.append((node.module or "", alias.name, id(node) in guarded))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, "", id(node) in guarded))
    return out


ALL_IMPORTS = [(p.name, *imp) for p in SOURCES for imp in imports(p)]


def test_the_example_has_sources() -> None:
    assert {"__init__.py", "abort.py", "mmu.py", "desc.py"} <= {p.name for p in SOURCES}


@pytest.mark.parametrize(("file", "module", "name", "typing_only"), ALL_IMPORTS)
def test_example_imports_only_public_api(
    file: str, module: str, name: str, typing_only: bool
) -> None:
    if module in STDLIB or module.split(".")[0] == "kvmsim_arm64":
        return
    assert not any(part.startswith("_") for part in module.split(".")), (file, module)
    assert not name.startswith("_"), f"{file}: private name {module}.{name}"
    if module in TYPING_ONLY:
        assert typing_only, f"{file}: {module} is for annotations only (TYPE_CHECKING)"
        return
    assert module in PUBLIC, f"{file}: {module} is not a documented public module"


def test_every_public_module_is_in_the_guide() -> None:
    for module in PUBLIC | TYPING_ONLY:
        assert f"`{module}`" in GUIDE, module


def test_every_kvmsim_name_the_example_imports_is_in_the_guide() -> None:
    missing = sorted(
        {
            f"{module}.{name}"
            for _f, module, name, _t in ALL_IMPORTS
            if module.startswith("kvmsim")
            and not module.startswith("kvmsim_arm64")
            and f"`{name}`" not in GUIDE
            and name not in GUIDE
        }
    )
    assert not missing


def test_every_kvm_attribute_and_method_the_example_uses_is_in_the_guide() -> None:
    text = "\n".join(p.read_text() for p in SOURCES)
    used = set(re.findall(r"\bkvm\.(\w+(?:\.\w+)?)", text))
    missing = []
    for attr in sorted(used):
        head, _, sub = attr.partition(".")
        if head == "arch":
            continue  # the arch's own state (what its arch_init returned)
        # kvm.x is documented as `kvm.x`; kvm.phys.f / kvm.mm.f as `f` in kvm.x's row
        if f"kvm.{head}" not in GUIDE or (sub and f"`{sub}`" not in GUIDE and sub not in GUIDE):
            missing.append(attr)
    assert not missing


def test_every_hook_has_a_section_in_the_guide() -> None:
    hooks = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "kvmsim_spec")]
    assert "translate" in hooks
    for hook in hooks:
        assert f"### {hook}" in GUIDE or f"`{hook}" in GUIDE, hook


def test_documented_commands_are_the_issue_s() -> None:
    assert "kvmsim matrix --arch arm64" in GUIDE
    assert "kvmsim run my-scenario.toml --arch arm64 --strategy generic_v4_16" in GUIDE
    assert "kvmsim new-plugin" in GUIDE


def test_python_blocks_of_the_guide_parse() -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE, flags=re.S)
    assert len(blocks) >= 10
    for block in blocks:
        ast.parse(block.replace("\n    ...\n", "\n    pass\n"))
