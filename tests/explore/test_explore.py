"""Concurrent scenarios and the explorer: file order is the sequential
meaning, a [[schedule]] replays a placement, the search finds a seeded bug
and nothing on a correct column, and every class replays to its verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvmsim import hookimpl
from kvmsim.cli import main
from kvmsim.explore.search import exhaustive, explore, run_schedule
from kvmsim.kvm.core import Kvm
from kvmsim.matrix import library_files
from kvmsim.runner import Simulation
from kvmsim.scenario import load_scenario, parse_scenario
from kvmsim.trace import to_jsonl

BASE = "gen-base-munmap-first-touch"
PATHS = {p.stem: p for _, p in library_files()}


def _base_text() -> str:
    return PATHS[BASE].read_text(encoding="utf-8")


def _sequential(text: str) -> str:
    return text.replace("concurrent = true\n", "")


def _events(report: object) -> list[dict[str, object]]:
    # the scheduler's own events are the only ones a sequential run lacks
    return [e for e in report.events if e["event"] != "schedule"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("arch", "strategy"),
    [("x86_ept", "generic_v4_16"), ("ppc_radix", "ppc_original"), ("ppc_hpt", "upstream_final")],
)
def test_file_order_is_the_sequential_meaning(arch: str, strategy: str) -> None:
    text = _base_text()
    conc = Simulation(parse_scenario(text, "c"), arch=arch, strategy=strategy, trace=True).run()
    seq = Simulation(
        parse_scenario(_sequential(text), "c"), arch=arch, strategy=strategy, trace=True
    ).run()
    assert [s.to_json() for s in conc.steps] == [s.to_json() for s in seq.steps]
    assert conc.passed and seq.passed
    strip = [{k: v for k, v in e.items() if k != "seq"} for e in _events(conc)]
    assert strip == [{k: v for k, v in e.items() if k != "seq"} for e in seq.events]


SWITCH = """
[[schedule]]
actor = "vcpu0"
at = "before_create_pte"
run = "qemu"
"""


def test_a_schedule_replays_the_hand_placed_race() -> None:
    # the same race as gen-race-munmap-before-create-pte's `at` placement:
    # mmu_notifier_retry rejects the pfn and the retry finds no vma (efault)
    placed = load_scenario(PATHS["gen-race-munmap-before-create-pte"])
    want = Simulation(placed, arch="x86_ept", strategy="generic_v4_16").run()
    sc = parse_scenario(_base_text() + SWITCH, "s")
    got = Simulation(sc, arch="x86_ept", strategy="generic_v4_16").run()
    assert want.steps[2].outcome == got.steps[1].outcome == "efault"
    assert got.verdicts == [] and want.verdicts == []
    # the expectations describe the file order only: not checked here, and
    # with no verdict the run passes
    assert got.steps[1].expect_failures == [] and got.passed


def test_exhaustive_runs_each_schedule_once_and_bound_zero_has_no_preemption() -> None:
    sc = load_scenario(PATHS[BASE])
    seen = [o.choices for o in exhaustive(sc, "x86_ept", "generic_v4_16", 1)]
    assert len(seen) == len(set(seen))
    zero = list(exhaustive(sc, "x86_ept", "generic_v4_16", 0))
    assert zero and all(not o.preemptions for o in zero)
    assert len(zero) < len(seen)


def test_a_correct_column_is_explored_clean() -> None:
    e = explore(load_scenario(PATHS[BASE]), "x86_ept", "follow_pfn_2024", bound=2)
    assert e.schedules > 50 and e.classes == ()


def test_seeded_bug_no_mmu_notifier_retry_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # drop the guard: the fault path never notices the invalidation, so a
    # munmap between hva_to_pfn and the install leaves a stale entry on the
    # freed frame; a bound of 1 already reaches it
    monkeypatch.setattr(Kvm, "mmu_notifier_retry", lambda self, mmu_seq: False)
    e = explore(load_scenario(PATHS[BASE]), "x86_ept", "generic_v4_16", bound=2)
    found = {v for c in e.classes for v in c.verdicts}
    assert found & {"stale_mapping", "wrong_frame"}, e.classes
    best = min(e.classes, key=lambda c: len(c.best.preemptions))
    assert len(best.best.preemptions) == 1


def test_random_mode_is_reproducible_and_finds_the_seeded_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Kvm, "mmu_notifier_retry", lambda self, mmu_seq: False)
    sc = load_scenario(PATHS[BASE])
    a = explore(sc, "x86_ept", "generic_v4_16", mode="random", runs=150, seed=7)
    b = explore(sc, "x86_ept", "generic_v4_16", mode="random", runs=150, seed=7)
    assert [(c.verdicts, c.schedules, c.best) for c in a.classes] == [
        (c.verdicts, c.schedules, c.best) for c in b.classes
    ]
    assert {v for c in a.classes for v in c.verdicts} & {"stale_mapping", "wrong_frame"}


def test_cli_classes_replay_to_the_same_verdicts_and_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["explore", BASE, "--arch", "x86_ept", "--strategy", "paolo_refactor"]
    assert main([*argv, "--json", "--output", str(tmp_path)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenario"] == BASE and doc["mode"] == "exhaustive" and doc["bound"] == 2
    (res,) = doc["results"]
    assert res["classes"] and res["schedules"] > 0
    for c in res["classes"]:
        path = Path(c["replay"])
        sc = load_scenario(path)
        r1 = Simulation(sc, arch="x86_ept", strategy="paolo_refactor", trace=True).run()
        r2 = Simulation(sc, arch="x86_ept", strategy="paolo_refactor", trace=True).run()
        assert sorted({v.name for v in r1.verdicts}) == c["verdicts"]
        assert to_jsonl(r1.events) == to_jsonl(r2.events)
        assert main(["run", str(path), "--arch", "x86_ept", "--strategy", "paolo_refactor"]) == 1
    capsys.readouterr()


def test_run_schedule_trace_equals_the_replay_file() -> None:
    from kvmsim.explore.command import replay_text
    from kvmsim.explore.search import Classes

    sc = load_scenario(PATHS[BASE])
    out, _, report = run_schedule(sc, "x86_ept", "generic_v4_16", (), trace=True)
    assert out.choices and report is not None
    classes = Classes()
    forced = run_schedule(sc, "x86_ept", "paolo_refactor", ("qemu", "qemu"), trace=True)
    classes.add(forced[0])
    (cls,) = classes.folded()
    text = replay_text(_base_text(), BASE, "x86_ept", "paolo_refactor", cls)
    replay = parse_scenario(text, "r")
    again = Simulation(replay, arch="x86_ept", strategy="paolo_refactor", trace=True).run()
    assert sorted({v.name for v in again.verdicts}) == list(cls.verdicts)
    assert to_jsonl(again.events) == to_jsonl(forced[2].events)


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["explore", "gen-race-munmap-before-create-pte"], "concurrent = true"),
        (["explore", BASE, "--bound", "-1"], "--bound"),
        (["explore", BASE, "--runs", "5"], "--runs"),
        (["explore", "no-such-base-*"], "no scenario"),
    ],
)
def test_explore_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str], what: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and what in err[0]


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('\n[[schedule]]\nactor = "vcpu9"\nat = "before_create_pte"\nrun = "qemu"\n', "actor"),
        ('\n[[schedule]]\nactor = "vcpu0"\nat = "nowhere"\nrun = "qemu"\n', "at"),
        ('\n[[schedule]]\nactor = "vcpu0"\nat = "hva_to_pfn"\nrun = "qemu"\nnth = 0\n', "nth"),
        ('\n[[schedule]]\nat = "hva_to_pfn"\nrun = "qemu"\n', "actor"),
    ],
)
def test_bad_schedule_entries(extra: str, key: str) -> None:
    from kvmsim.errors import ScenarioError

    with pytest.raises(ScenarioError, match=rf"schedule\[0\]\.{key}"):
        parse_scenario(_base_text() + extra, "x.toml")


def test_sequential_scenarios_refuse_actors_and_schedules() -> None:
    from kvmsim.errors import ScenarioError

    with pytest.raises(ScenarioError, match="schedule"):
        parse_scenario(_sequential(_base_text()) + SWITCH, "x.toml")
    with pytest.raises(ScenarioError, match=r"step\[0\]\.actor"):
        parse_scenario(
            _sequential(_base_text()).replace(
                'do = "host_write"', 'do = "host_write"\nactor = "b"'
            ),
            "x.toml",
        )


def test_points_command_lists_every_point(capsys: pytest.CaptureFixture[str]) -> None:
    from kvmsim.points import PLACEMENTS, POINTS
    from kvmsim.registry import plugin_points

    assert main(["points"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [*POINTS, *PLACEMENTS, *sorted(plugin_points())]


class _PointPlugin:
    """A plugin whose modelled code reaches a point of its own (here: just
    before the arch's create_pte takes mmu_lock)."""

    def __init__(self, arch: object) -> None:
        self.arch = arch

    @hookimpl
    def yield_points(self) -> dict[str, str]:
        return {"seeded_window": "a test point, just before the install"}

    @hookimpl
    def create_pte(self, kvm: Any, gpa: int, pte: int, level: int, mmu_seq: int) -> int:
        kvm.fire_point("seeded_window")
        r: int = self.arch.create_pte(kvm=kvm, gpa=gpa, pte=pte, level=level, mmu_seq=mmu_seq)
        return r


MUNMAP_PLACED = """
name = "placed"
description = "a first-touch store and QEMU's munmap placed inside its fault"

[[vma]]
name = "ram"
size = "1M"
backing = "anon"

[[memslot]]
gpa = 0x0
vma = "ram"

[[step]]
do = "host_write"
vma = "ram"
offset = 0x10000

[[step]]
do = "munmap"
vma = "ram"
offset = 0x0
size = "256K"
at = "{at}"

[[step]]
do = "access"
gpa = 0x10000
op = "write"
"""

# the same munmap placed at a plugin's own point
PLACED = MUNMAP_PLACED.replace("{at}", "seeded_window")


def test_plugin_points_are_found_listed_and_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    import kvmsim_plugins.x86_ept as ept

    from kvmsim import registry
    from kvmsim.errors import ScenarioError

    plugin = _PointPlugin(ept)

    class _Ep:
        def load(self) -> object:
            return plugin

    entry = registry.PluginEntry("device", "pointdev", "x", "tests", "0", _Ep())  # type: ignore[arg-type]
    found = {k: dict(v) for k, v in registry.discover().items()}
    found["device"]["pointdev"] = entry
    monkeypatch.setattr(registry, "discover", lambda: found)
    monkeypatch.setattr(registry, "_points_cache", None)
    assert registry.plugin_points() == {
        "seeded_window": ("device:pointdev", "a test point, just before the install")
    }
    sc = parse_scenario(PLACED, "p")  # the loader takes the plugin's point by default
    assert sc.steps[1].at == "seeded_window"
    with pytest.raises(ScenarioError, match=r"step\[1\]\.at"):
        parse_scenario(PLACED, "p", points=())
    r = Simulation(sc, arch="x86_ept", strategy="generic_v4_16", extra_plugins=[plugin]).run()
    # the munmap runs at the plugin's point, between hva_to_pfn and the
    # install: the retry under mmu_lock rejects the pfn, the refault finds
    # no vma (as at before_create_pte)
    assert r.steps[1].outcome == "armed" and r.steps[2].outcome == "efault"
    assert r.verdicts == []
    monkeypatch.setattr(registry, "_points_cache", None)


def test_docs_points_table_matches_the_code() -> None:
    from kvmsim.points import POINTS

    text = (Path(__file__).parents[2] / "docs" / "explore.md").read_text(encoding="utf-8")
    table = text.split("<!-- points:begin -->")[1].split("<!-- points:end -->")[0]
    rows = [line for line in table.strip().splitlines()[2:]]
    got = {r.split("|")[1].strip().strip("`"): r.split("|")[2].strip() for r in rows}
    assert got == dict(POINTS)


def test_bench_explore_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--workload", "explore", "--arch", "x86_ept", "--strategy", "follow_pfn_2024"]
    argv += ["--bound", "1"]
    assert main([*argv, "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert (obj["workload"], obj["arch"], obj["scenario"]) == ("explore", "x86_ept", BASE)
    assert obj["columns"] == 1 and obj["bound"] == 1 and obj["classes"] == 0
    want = len(list(exhaustive(load_scenario(PATHS[BASE]), "x86_ept", "follow_pfn_2024", 1)))
    assert obj["schedules"] == want
    assert obj["schedules_per_s"] == pytest.approx(want / obj["seconds"], rel=0.02)


@pytest.mark.parametrize("mode", ["exhaustive", "random"])
def test_spreading_over_processes_finds_the_same_classes(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from kvmsim.explore.search import explore_parallel

    # the seeded bug gives classes to compare (fork carries the patch along)
    monkeypatch.setattr(Kvm, "mmu_notifier_retry", lambda self, mmu_seq: False)
    sc = load_scenario(PATHS[BASE])
    cols = [(sc, "x86_ept", "generic_v4_16"), (sc, "ppc_radix", "generic_v4_16")]
    kw = {"mode": mode, "bound": 2, "runs": 60, "seed": 3}
    one = [explore(s, a, st, **kw) for s, a, st in cols]  # type: ignore[arg-type]
    two = explore_parallel(cols, 2, **kw)  # type: ignore[arg-type]
    for a, b in zip(one, two, strict=True):
        assert a.schedules == b.schedules
        assert [(c.verdicts, c.sites, c.best, c.schedules) for c in a.classes] == [
            (c.verdicts, c.sites, c.best, c.schedules) for c in b.classes
        ]
        assert a.classes


def test_seeded_bug_reference_dropped_before_install_is_found() -> None:
    import kvmsim_plugins.strategies.follow_pfn_2024 as f24

    from tests.explore.seeded import EarlyPut

    sc = load_scenario(PATHS[BASE])
    clean = explore(sc, "x86_ept", "follow_pfn_2024", bound=2)
    assert clean.classes == ()
    seeded = explore(sc, "x86_ept", "follow_pfn_2024", bound=2, extra_plugins=[EarlyPut(f24)])
    found = {v for c in seeded.classes for v in c.verdicts}
    assert found & {"refcount_underflow", "stale_mapping", "wrong_frame"}, seeded.classes


@pytest.mark.parametrize("seed", ["retry_before_lock", "seq_after_gup"])
def test_seeded_bugs_in_the_handler_are_found(seed: str) -> None:
    import kvmsim_plugins.strategies.generic_v4_16 as g416
    import kvmsim_plugins.x86_ept as ept

    from tests.explore.seeded import RetryBeforeLock, SeqAfterGup

    sc = load_scenario(PATHS[BASE])
    plugin = RetryBeforeLock(ept) if seed == "retry_before_lock" else SeqAfterGup(ept, g416)
    clean = explore(sc, "x86_ept", "generic_v4_16", bound=2)
    assert clean.classes == ()
    seeded = explore(sc, "x86_ept", "generic_v4_16", bound=2, extra_plugins=[plugin])
    found = {v for c in seeded.classes for v in c.verdicts}
    assert found & {"stale_mapping", "wrong_frame"}, seeded.classes


def test_a_dask_cluster_finds_the_same_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    from kvmsim.explore.search import explore_parallel

    monkeypatch.setattr(Kvm, "mmu_notifier_retry", lambda self, mmu_seq: False)
    sc = load_scenario(PATHS[BASE])
    cols = [(sc, "x86_ept", "generic_v4_16")]
    (local,) = [explore(s, a, st, bound=1) for s, a, st in cols]
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        (remote,) = explore_parallel(cols, 1, bound=1, scheduler=cluster.scheduler_address)
    assert remote.schedules == local.schedules and local.classes
    assert [(c.verdicts, c.sites, c.best, c.schedules) for c in remote.classes] == [
        (c.verdicts, c.sites, c.best, c.schedules) for c in local.classes
    ]


def test_explore_scheduler_that_is_not_dask(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import kvmsim.matrix as mx

    monkeypatch.setattr(mx, "SCHEDULER_TIMEOUT", 0.5)
    argv = ["explore", BASE, "--arch", "x86_ept", "--strategy", "generic_v4_16"]
    with socket.socket() as srv:  # listens, never greets: what an HTTP port does
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        rc = main([*argv, "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scheduler" in err[0]


def test_mmu_lock_released_is_after_the_install_before_the_put() -> None:
    """A munmap placed at ``mmu_lock_released`` runs after the v4.16 x86
    fault installed its SPTE and before it dropped its page reference: the
    notifier zaps the new SPTE (the unmap's own reference goes, the page
    survives on KVM's until the put), the guest re-executes the store and
    the new fault finds no vma.  Placed at ``before_create_pte`` the same
    munmap comes before any SPTE: the retry check rejects the pfn."""

    def run(at: str) -> tuple[list[str], Any, Simulation]:
        sc = parse_scenario(MUNMAP_PLACED.replace("{at}", at), "p")
        sim = Simulation(sc, arch="x86_ept", strategy="generic_v4_16", trace=True)
        report = sim.run()
        return [str(e["event"]) for e in report.events], report, sim

    names, report, sim = run("mmu_lock_released")
    unmap = names.index("mmu_notifier_invalidate_range_start")
    assert "kvm_mmu_set_spte" in names[:unmap] and "kvm_unmap_rmapp" in names[unmap:]
    assert report.steps[2].outcome == "efault" and report.verdicts == []
    assert sim.phys.others_refs() == {} and sim.phys.freed
    names, report, _ = run("before_create_pte")
    assert "kvm_mmu_set_spte" not in names and "kvm_unmap_rmapp" not in names
    assert report.steps[2].outcome == "efault" and report.verdicts == []
