"""``kvmsim crosscheck``: builtin (or named) scenarios on this host's
``/dev/kvm``, each step compared with the model (docs/crosscheck.md).

Exit codes: 0 nothing disagrees; 1 something does; 2 bad input; 4 no usable
``/dev/kvm`` (one line saying why).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Sequence
from typing import Any, Final

from attrs import define, field

from kvmsim.errors import UsageError
from kvmsim.realkvm.args import DEFAULT_STRATEGY
from kvmsim.realkvm.backend import RealError, RealVm, drain
from kvmsim.realkvm.compare import (
    DISAGREE,
    STATUSES,
    UNSUPPORTED,
    KnownDifference,
    StepResult,
    compare_step,
    load_known,
)
from kvmsim.realkvm.host import HostInfo, probe
from kvmsim.realkvm.modelside import run_model
from kvmsim.realkvm.plan import Plan, plan
from kvmsim.scenario.model import Scenario

EXIT_NO_KVM: Final = 4
ARCH: Final = "x86_ept"


@define
class ScenarioResult:
    scenario: str
    strategy: str
    steps: list[StepResult] = field(factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "strategy": self.strategy,
            "steps": [s.to_json() for s in self.steps],
        }


def crosscheck_scenario(
    sc: Scenario,
    host: HostInfo,
    *,
    strategy: str = DEFAULT_STRATEGY,
    known: tuple[KnownDifference, ...] = (),
    the_plan: Plan | None = None,
) -> ScenarioResult:
    """Run *sc* on the real host and in the model; compare every step."""
    p = the_plan or plan(sc, host, arch=ARCH)
    result = ScenarioResult(sc.name, strategy)
    if not p.runs:
        result.steps = [
            StepResult(s.index, s.do, None, None, UNSUPPORTED, p.refused) for s in sc.steps
        ]
        return result
    model, _ = run_model(sc, arch=ARCH, strategy=strategy)
    try:
        with RealVm(p) as vm:
            real = vm.run()
    except (OSError, RealError) as exc:
        reason = f"the real host refused the set-up: {exc}"
        result.steps = [
            StepResult(s.index, s.do, None, None, UNSUPPORTED, reason) for s in sc.steps
        ]
        return result
    for s, sp, r, m in zip(sc.steps, p.steps, real, model, strict=True):
        if sp.action is None:
            result.steps.append(
                StepResult(s.index, s.do, None, m, sp.status or UNSUPPORTED, sp.reason)
            )
            continue
        result.steps.append(
            compare_step(
                s.index,
                s.do,
                r,
                m,
                scenario=sc.name,
                module=host.module,
                kernel=host.kernel,
                known=known,
            )
        )
    return result


def summary(results: Sequence[ScenarioResult]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        for s in r.steps:
            counts[s.status] += 1
    return counts


def _named(args: Sequence[str]) -> list[Scenario]:
    """Scenarios named on the command line (files, builtin names or globs
    over builtin names), loaded: bad input fails here, before the probe."""
    from kvmsim.cli import _load, _resolve_scenario
    from kvmsim.scenario import builtin_scenarios

    builtin = {p.stem: p for p in builtin_scenarios()}
    out: list[Scenario] = []
    for a in args:
        if any(c in a for c in "*?[") and "/" not in a:
            names = fnmatch.filter(sorted(builtin), a)
            if not names:
                raise UsageError(
                    f"crosscheck: no builtin scenario matches {a!r} (see kvmsim scenarios)"
                )
            paths = [str(builtin[n]) for n in names]
        else:
            paths = [_resolve_scenario(a)]
        for path in paths:
            sc = _load(path)
            assert isinstance(sc, Scenario)
            out.append(sc)
    return out


def _expressible(host: HostInfo) -> list[Scenario]:
    """Every builtin scenario the backend can express on *host*."""
    from kvmsim.cli import _load
    from kvmsim.scenario import builtin_scenarios

    loaded = [_load(str(path)) for path in builtin_scenarios()]
    return [sc for sc in loaded if isinstance(sc, Scenario) and plan(sc, host, arch=ARCH).runs]


def crosscheck_command(args: argparse.Namespace) -> int:
    from kvmsim.registry import build_manager

    strategy = args.strategy or DEFAULT_STRATEGY
    build_manager(arch=ARCH, strategy=strategy)  # an unknown or unfit name: exit 2 here
    named = _named(args.scenario or ())
    host = probe()
    if not host.usable:
        print(f"kvmsim: crosscheck: no usable /dev/kvm: {host.reason}", file=sys.stderr)
        return EXIT_NO_KVM
    scenarios = named or _expressible(host)
    known = load_known()
    try:
        results = [
            crosscheck_scenario(sc, host, strategy=strategy, known=known) for sc in scenarios
        ]
    finally:
        drain()  # every VM destroyed before the command returns
    counts = summary(results)
    if args.json:
        print(
            json.dumps(
                {
                    "kernel": host.kernel,
                    "module": host.module,
                    "results": [r.to_json() for r in results],
                    "summary": counts,
                },
                sort_keys=True,
            )
        )
    else:
        _print_table(results, host, counts)
    return 1 if counts[DISAGREE] else 0


def _print_table(results: Sequence[ScenarioResult], host: HostInfo, counts: dict[str, int]) -> None:
    mmu = "EPT/NPT" if host.tdp else "shadow MMU"
    print(f"kernel {host.kernel}  module {host.module} ({mmu})  arch {ARCH}")
    rows = [("scenario", "step", "real", "model", "status")]
    for r in results:
        for s in r.steps:
            real = "-" if s.real is None else s.real.render()
            model = "-" if s.model is None else s.model.render()
            status = s.status + (f": {s.reason}" if s.reason else "")
            rows.append((r.scenario, f"{s.index} {s.do}", real, model, status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    print(
        f"{sum(len(r.steps) for r in results)} steps in {len(results)} scenarios: "
        + ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in STATUSES)
    )
