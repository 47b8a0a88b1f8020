"""The model's side of a crosscheck: the same scenario under the model,
with the same observables recorded after every step."""

from __future__ import annotations

from typing import Any

from kvmsim.checks import CheckContext
from kvmsim.realkvm.obs import FrameLabeller, Obs, sorted_gpas
from kvmsim.runner import Simulation, StepReport, Verdict
from kvmsim.scenario.model import Scenario, StepSpec

_HUGE_ZERO_PAGES = 512  # the huge zero page is one 2M compound page


class ObservedSimulation(Simulation):
    """A :class:`~kvmsim.runner.Simulation` that also records, after each
    step, the observables the real host can show (see :mod:`.obs`)."""

    def __init__(self, scenario: Scenario, **kw: Any) -> None:
        super().__init__(scenario, **kw)
        self.observed: dict[int, Obs] = {}
        self._labeller = FrameLabeller()

    def _check(self, step: StepSpec, report: StepReport, verdicts: list[Verdict]) -> None:
        super()._check(step, report, verdicts)
        self.observed[step.index] = self._observe(step, report)

    def _label(self, index: int, pfn: int | None) -> str | None:
        if pfn is None:
            return None
        phys = self.phys
        hz = phys.huge_zero_pfn
        zero = pfn == phys.zero_pfn or (hz is not None and hz <= pfn < hz + _HUGE_ZERO_PAGES)
        thp = phys.PageTransCompound(pfn) and not phys.PageHuge(pfn)
        return self._labeller.label(index, pfn, zero=zero, thp=thp)

    def _observe(self, step: StepSpec, report: StepReport) -> Obs:
        if step.do == "access":
            mapped = report.outcome == "mapped"
            return Obs(
                report.outcome,
                value=report.value,
                frame=self._label(step.index, report.pfn) if mapped else None,
                leaf=report.page_size if mapped and report.faults else None,
                faulted=bool(report.faults),
            )
        if step.do in ("host_write", "host_read"):
            vma = self.vma(step.vma or "")
            pfn = CheckContext(self.kvm).host_frame(vma.start + step.offset)[0]
            return Obs(report.outcome, value=report.value, frame=self._label(step.index, pfn))
        if step.do == "dirty_log" and step.params.get("action") == "get":
            reports = self.kvm.dirty.reports
            mine = [gpas for i, _, gpas in reports if i == step.index]
            return Obs(report.outcome, dirty=sorted_gpas(mine[0]) if mine else None)
        return Obs(report.outcome)


def run_model(scenario: Scenario, *, arch: str, strategy: str) -> tuple[list[Obs], bool]:
    """The model's observables per step, and whether the run passed."""
    sim = ObservedSimulation(scenario, arch=arch, strategy=strategy)
    report = sim.run()
    # an armed race event, or a step not run after an oops, is not checked
    obs = [sim.observed.get(s.index) or Obs(s.outcome) for s in report.steps]
    return obs, report.passed
