"""The core never imports the backend; building the CLI parser loads none of it."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {m for m in out.split() if m.startswith("kvmsim.realkvm")}


def test_the_core_does_not_import_realkvm() -> None:
    code = (
        "import kvmsim.runner, kvmsim.matrix, kvmsim.registry, kvmsim.scenario, kvmsim.bench\n"
        "from kvmsim.runner import build_sim\n"
        "from kvmsim.scenario import builtin_scenarios\n"
        "path = next(p for p in builtin_scenarios() if p.stem == 'kvm-thp')\n"
        "build_sim(path, strategy='follow_pfn_2024').run()"
    )
    assert loaded_after(code) == set()


def test_the_cli_parser_loads_only_the_flags() -> None:
    assert loaded_after("import kvmsim.cli\nkvmsim.cli.build_parser()") == {
        "kvmsim.realkvm",
        "kvmsim.realkvm.args",
    }
