"""Running the matrix: errors inside cells, processes, dask, the CLI contracts."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmsim import hookimpl, registry
from kvmsim.cli import main
from kvmsim.matrix import CellSpec, ScenarioEntry, library_scenarios, plan, run, run_cell

from .conftest import ANON_WRITE, ZERO_READ

ROOT = Path(__file__).resolve().parents[2]


class Boom:
    """An extra plugin that raises inside a broadcast hook (the munmap's
    notifier invalidation), as a buggy observer or device would."""

    @hookimpl
    def notifier_invalidate(self, kvm: object, start: int, end: int) -> None:
        raise RuntimeError("boom in notifier")


def test_a_raising_plugin_makes_an_error_cell_with_its_context(
    make_library: Callable[[dict[str, str]], list[ScenarioEntry]],
) -> None:
    (entry,) = make_library({"w": ANON_WRITE.format(name="w", known="")})
    spec = CellSpec(entry.name, entry.path, "ppc_radix", "generic_v4_16")
    cell = run_cell(spec, extra_plugins=[Boom()])
    assert cell.status == "error"
    assert "RuntimeError: boom in notifier" in cell.message
    # it names the step (the munmap is step 1), the last trace event and the plugins
    assert "step 1" in cell.message and "after trace event" in cell.message
    assert "strategy generic_v4_16" in cell.message
    assert run_cell(spec).status == "pass"


STRAT = """
from kvmsim import hookimpl
from kvmsim.hooktypes import StrategyInfo

@hookimpl
def strategy_info():
    return StrategyInfo(name="boomstrat", description="raises", arches=("*",))

@hookimpl
def hva_to_pfn(kvm, request):
    raise ValueError("strategy exploded")
"""


def test_a_raising_strategy_errors_its_cells_and_the_rest_completes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_library: Callable[[dict[str, str]], list[ScenarioEntry]],
) -> None:
    info = tmp_path / "boomstrat-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: boomstrat\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[kvmsim.strategy]\nboomstrat = boomstrat_matrix_mod\n")
    (tmp_path / "boomstrat_matrix_mod.py").write_text(textwrap.dedent(STRAT))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset_cache()
    try:
        lib = make_library({"w": ANON_WRITE.format(name="w", known="")})
        res = run(
            plan(arches=["ppc_radix"], strategies=["boomstrat", "generic_v4_16"], entries=lib)
        )
        by = {c.strategy: c for c in res.ordered()}
        assert by["boomstrat"].status == "error"
        assert "ValueError: strategy exploded" in by["boomstrat"].message
        assert by["generic_v4_16"].status == "pass"
        assert not res.ok
    finally:
        monkeypatch.undo()
        registry.reset_cache()


def _lib(make_library: Callable[[dict[str, str]], list[ScenarioEntry]]) -> list[ScenarioEntry]:
    return make_library(
        {
            f"s{i}": (ZERO_READ if i % 2 else ANON_WRITE).format(name=f"s{i}", known="")
            for i in range(4)
        }
    )


def test_jobs_give_the_same_results(
    make_library: Callable[[dict[str, str]], list[ScenarioEntry]],
) -> None:
    p = plan(entries=_lib(make_library))
    one = run(p, jobs=1).to_json()
    two = run(p, jobs=2).to_json()
    assert one == two and one["cells"]


def test_dask_cluster_gives_the_same_results(
    make_library: Callable[[dict[str, str]], list[ScenarioEntry]],
) -> None:
    distributed = pytest.importorskip("distributed")
    p = plan(entries=_lib(make_library))
    local = run(p).to_json()
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        remote = run(p, scheduler=cluster.scheduler_address).to_json()
    assert remote == local


def test_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["matrix", "--scenario", "gen-anon-*", "--format", "json", "--jobs", "1"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"cells", "summary"}
    assert set(out["summary"]) == {"pass", "kfail", "fail", "xpass", "error"}
    assert sum(out["summary"].values()) == len(out["cells"]) > 0
    for c in out["cells"]:
        assert isinstance(c["scenario"], str) and c["scenario"].startswith("gen-anon-")
        assert isinstance(c["arch"], str) and isinstance(c["strategy"], str)
        assert c["status"] in out["summary"]
        assert all(isinstance(v, str) for v in c["verdicts"])
        assert all(o is None or isinstance(o, str) for o in c["outcomes"])
    bad = {"fail", "xpass", "error"}
    assert rc == (1 if any(c["status"] in bad for c in out["cells"]) else 0)


def test_output_is_written_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "m.md"
    main(["matrix", "--scenario", "gen-noslot-mmio", "--format", "markdown", "--output", str(out)])
    assert capsys.readouterr().out == ""
    text = out.read_text()
    assert "| gen-noslot-mmio |" in text and "Legend:" in text
    assert [p.name for p in out.parent.iterdir()] == ["m.md"]  # no temporary left


def test_table_and_filters(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "matrix",
            "--scenario",
            "gen-noslot-mmio",
            "--arch",
            "ppc_radix",
            "--strategy",
            "generic_v4_16",
        ]
    )
    cap = capsys.readouterr()
    assert "gen-noslot-mmio" in cap.out and "generic_v4_16" in cap.out and "legend" in cap.out
    assert "1 cell (1 scenario x 1 arch/strategy column)" in cap.err  # singular


def test_bad_matrix_arguments_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--strategy", "generic_v416"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["matrix", "--scenario", "no-such-*"]) == 2
    assert "no scenario matches" in capsys.readouterr().err
    assert main(["matrix", "--format", "yaml"]) == 2


def test_library_has_at_least_30_scenarios() -> None:
    entries = library_scenarios()
    assert len(entries) >= 30
    assert not [e for e in entries if e.error], [e.error for e in entries if e.error]
    generic = [e for e in entries if e.name.startswith("gen-")]
    # the generic ones run on every arch, so they must not name one
    assert generic and all(e.arch is None for e in generic)


def test_diff_marks_the_first_divergence(capsys: pytest.CaptureFixture[str]) -> None:
    # generic_v4_16 (behind the v4.17 handler) and ppc_original (v4.15) take
    # different gup paths for the same read fault (A.3 vs B.2), so the
    # traces diverge, and only the former leaks the zero page (L.1)
    rc = main(
        [
            "diff",
            "gen-anon-read-first-touch",
            "--strategy",
            "generic_v4_16",
            "--strategy",
            "ppc_original",
            "--arch",
            "ppc_radix",
            "--width",
            "160",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "first divergence at row" in out
    assert sum(1 for line in out.splitlines() if line.startswith(">> ")) == 1
    assert "generic_v4_16: FAILED" in out and "ppc_original: PASSED" in out
    assert "verdict refcount_leak" in out


def test_diff_of_a_strategy_with_itself_is_identical(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "diff",
            "gen-noslot-mmio",
            "--strategy",
            "generic_v4_16",
            "--strategy",
            "generic_v4_16",
            "--arch",
            "ppc_radix",
        ]
    )
    assert "identical" in capsys.readouterr().out


def test_cli_module_runs() -> None:
    import subprocess

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvmsim.cli",
            "matrix",
            "--scenario",
            "gen-noslot-mmio",
            "--format",
            "json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(r.stdout)["cells"], r.stderr
