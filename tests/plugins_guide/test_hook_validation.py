"""An installed out-of-tree plugin with a misspelled hook or a wrong
argument is refused when a simulation registers it, with one clear error
naming the plugin and the hook (kvmsim.registry.build_manager → PluginError)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmsim import registry
from kvmsim.errors import PluginError

from .conftest import pip_install, pip_uninstall

GOOD = (Path(__file__).resolve().parents[2] / "examples/kvmsim-arm64/kvmsim_arm64").as_posix()

MODULES = {
    # the arm64 hooks, plus one whose name is misspelled
    "kvmsim_badarch/typo.py": """
        from kvmsim import hookimpl
        from kvmsim_arm64 import *  # noqa: F403
        from kvmsim_arm64 import arch_info as _info


        @hookimpl
        def arch_info():
            return _info()


        @hookimpl
        def notifier_invalidat(kvm, start, end):
            pass
    """,
    # translate with an argument the spec does not have
    "kvmsim_badarch/args.py": """
        from kvmsim import hookimpl
        from kvmsim_arm64 import *  # noqa: F403
        from kvmsim_arm64 import arch_info as _info


        @hookimpl
        def arch_info():
            return _info()


        @hookimpl
        def translate(kvm, vcpu, gpa, ea, op, asid):
            return None
    """,
    "kvmsim_badarch/__init__.py": "",
}

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "kvmsim-badarch"
version = "0.1.0"
dependencies = ["kvmsim", "kvmsim-arm64"]

[project.entry-points."kvmsim.arch"]
badarch_typo = "kvmsim_badarch.typo"
badarch_args = "kvmsim_badarch.args"

[tool.setuptools]
packages = ["kvmsim_badarch"]
"""


@pytest.fixture(scope="module")
def badarch(arm64_installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    src = tmp_path_factory.mktemp("badarch")
    (src / "pyproject.toml").write_text(PYPROJECT)
    for rel, text in MODULES.items():
        (src / rel).parent.mkdir(exist_ok=True)
        (src / rel).write_text(textwrap.dedent(text))
    pip_install(src)
    try:
        yield
    finally:
        pip_uninstall("kvmsim-badarch")


@pytest.mark.usefixtures("badarch")
def test_misspelled_hook_is_refused_naming_it() -> None:
    with pytest.raises(PluginError) as exc:
        registry.build_manager(arch="badarch_typo", strategy="generic_v4_16")
    text = str(exc.value)
    assert "notifier_invalidat" in text and "unknown hook" in text
    assert "kvmsim_badarch.typo" in text  # the plugin is named


@pytest.mark.usefixtures("badarch")
def test_wrong_argument_is_refused_naming_it() -> None:
    with pytest.raises(PluginError) as exc:
        registry.build_manager(arch="badarch_args", strategy="generic_v4_16")
    text = str(exc.value)
    assert "kvmsim_badarch.args" in text and "translate" in text and "asid" in text


@pytest.mark.usefixtures("badarch")
@pytest.mark.parametrize(
    ("arch", "word"),
    [("badarch_typo", "notifier_invalidat"), ("badarch_args", "asid")],
)
def test_the_cli_reports_it_as_bad_input(arch: str, word: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kvmsim.cli", "run", "anon-write-first-touch",
         "--arch", arch, "--strategy", "generic_v4_16"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # exit 2 (bad input), a message naming the hook, never a traceback
    assert r.returncode == 2, r.stderr
    assert word in r.stderr and "Traceback" not in r.stderr
