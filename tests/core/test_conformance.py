"""Every entry point of every group loads, registers, passes check_pending,
and (every arch with every strategy) runs the generic scenario; the dispatcher's direct
calls give exactly the traces pluggy's calls give."""

from __future__ import annotations

import pytest

from kvmsim.hooktypes import ArchInfo, DeviceInfo, StrategyInfo, unsupported
from kvmsim.registry import Dispatcher, build_manager, discover, info_of, load
from kvmsim.runner import Simulation
from kvmsim.scenario import builtin_scenarios, load_scenario
from kvmsim.trace import to_jsonl

ENTRIES = [(kind, name) for kind, names in sorted(discover().items()) for name in sorted(names)]
ARCHES = sorted(discover()["arch"])
STRATEGIES = {n: info_of("strategy", load(e)) for n, e in sorted(discover()["strategy"].items())}
PAIRS = [(a, s) for a in ARCHES for s, info in STRATEGIES.items() if info.applies_to(a)]
GENERIC = next(p for p in builtin_scenarios() if p.stem == "anon-write-first-touch")


@pytest.mark.parametrize(("kind", "name"), ENTRIES)
def test_entry_point_loads_and_describes_itself(kind: str, name: str) -> None:
    plugin = load(discover()[kind][name])
    info = info_of(kind, plugin)
    expected = {"arch": ArchInfo, "strategy": StrategyInfo, "device": DeviceInfo}[kind]
    assert isinstance(info, expected)
    assert info.name == name, "the entry-point name is the name users type"
    assert info.description and "\n" not in info.description
    if kind == "strategy":
        assert info.arches, "a strategy declares the arches it applies to"


@pytest.mark.parametrize(("arch", "strategy"), PAIRS)
def test_every_arch_strategy_pair_registers_and_runs(arch: str, strategy: str) -> None:
    pm, a_info, _ = build_manager(arch=arch, strategy=strategy)
    pm.check_pending()
    assert a_info.name == arch
    report = Simulation(load_scenario(GENERIC), arch=arch, strategy=strategy).run()
    assert [s.outcome for s in report.steps] != [None, None]


ARCH_INFO = {n: info_of("arch", load(e)) for n, e in sorted(discover()["arch"].items())}


def _scenarios() -> list[tuple[str, str, str]]:
    out = []
    for path in builtin_scenarios():
        sc = load_scenario(path)
        for arch in [sc.arch] if sc.arch else ARCHES:
            if unsupported(sc, ARCH_INFO[arch]) is not None:
                continue  # userspace cannot set it up there (the runner refuses it)
            for strat, info in STRATEGIES.items():
                # the first strategy whose kernel can set the scenario up
                if info.applies_to(arch) and unsupported(sc, ARCH_INFO[arch], info) is None:
                    out.append((str(path), arch, strat))
                    break
    return out


@pytest.mark.parametrize(("path", "arch", "strategy"), _scenarios())
def test_direct_dispatch_gives_identical_traces(path: str, arch: str, strategy: str) -> None:
    sc = load_scenario(path)
    direct = Simulation(sc, arch=arch, strategy=strategy, trace=True, direct=True)
    hooked = Simulation(sc, arch=arch, strategy=strategy, trace=True, direct=False)
    assert isinstance(direct.hooks, Dispatcher)
    assert direct.hooks.hva_to_pfn is not direct.pm.hook.hva_to_pfn
    assert hooked.hooks.hva_to_pfn is hooked.pm.hook.hva_to_pfn
    a, b = direct.run(), hooked.run()
    assert to_jsonl(a.events) == to_jsonl(b.events)
    assert a.to_json() == b.to_json()
