"""Instructions per first-touch fault, a git revision against the working
tree (not a test: run it by hand; needs valgrind).

    python benchmarks/instructions_ab.py HEAD ppc_radix 64M
    python benchmarks/instructions_ab.py HEAD x86_ept 4M

Both trees are copied out (``kvmsim`` and ``plugins`` as ``kvmsim_plugins``)
and measured as ``kvmsim bench --instructions`` measures: callgrind, a run of
the given size minus a run of half of it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import types
from pathlib import Path

from kvmsim.bench import _instructions_per_fault
from kvmsim.scenario.sizes import parse_size
from kvmsim.tracestrip import copy_packages

REPO = Path(__file__).resolve().parents[1]


def _export(rev: str | None, root: Path) -> None:
    """``kvmsim`` and ``kvmsim_plugins`` of ``rev`` (None: the working tree) under ``root``."""
    if rev is None:
        packages = {"kvmsim": REPO / "kvmsim", "kvmsim_plugins": REPO / "plugins"}
        copy_packages(packages, root, strip=False)
        return
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "kvmsim", "plugins"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    (root / "plugins").rename(root / "kvmsim_plugins")


def main(rev: str, arch: str, mem: str) -> None:
    args = types.SimpleNamespace(
        workload="demand_paging",
        arch=arch,
        strategy="generic_v4_16",
        page_size=None,
        vcpus=1,
        mem=parse_size(mem, "mem", align=1),
        trace=False,
    )
    per = {}
    with tempfile.TemporaryDirectory() as d:
        for name, src in ((rev, rev), ("work tree", None)):
            root = Path(d) / ("base" if src else "work")
            _export(src, root)
            _, per[name] = _instructions_per_fault(root, args)
            print(f"{name}: {per[name]:,.0f} instructions per fault")
    print(f"work tree / {rev} = {per['work tree'] / per[rev]:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python benchmarks/instructions_ab.py REV ARCH MEM")
    main(*sys.argv[1:])
