"""Build a simulation from a scenario and run it step by step.

One :class:`Simulation` = one scenario under one (arch, strategy): the
process's shared plugin set for those names (:func:`kvmsim.registry.plugin_set`),
and its own host model, VM and tracer.  Host events run as task ``qemu``,
guest accesses as the vcpu's thread (``vcpu0``...).  A simulated oops or
deadlock ends the run (a real one would end the task); a livelock does not
(QEMU's signal gets the vcpu out of the loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from attrs import define, field

from kvmsim import dirtylog, uffdsteps
from kvmsim.checks import CheckContext, Finding, run_checks
from kvmsim.checks.incremental import StepChecks
from kvmsim.cmodel import KernelOops
from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import StepResult, unsupported
from kvmsim.host import Mm, PhysMem, map_backing
from kvmsim.host.rwsem import Deadlock
from kvmsim.hoststeps import run_host_step
from kvmsim.kvm.core import Kvm
from kvmsim.kvm.memslot import KVM_MEM_READONLY, Memslot
from kvmsim.kvm.vcpu import guest_access
from kvmsim.registry import Dispatcher, build_manager, plugin_set
from kvmsim.scenario import load_scenario, parse_scenario
from kvmsim.scenario.model import Scenario, StepSpec
from kvmsim.scenario.sizes import format_size
from kvmsim.trace import Tracer

HOST_TASK = "qemu"


@define
class Verdict:
    """A checker's verdict: its stable name, the step, a sentence, and the
    trace event (sequence number and name) it followed."""

    name: str
    step: int
    detail: str
    event: str | None = None
    event_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "step": self.step, "detail": self.detail}


@define
class StepReport:
    """What one step did and whether it met its expectations."""

    index: int
    do: str
    outcome: str | None = None
    pfn: int | None = None
    writable: bool | None = None
    page_size: int | None = None
    value: int | None = None
    faults: int | None = None  # stage-2 faults the access took
    young: bool | None = None  # an age step's answer
    uffd_faults: int | None = None  # userfaultfd messages read by the step's end
    verdicts: list[str] = field(factory=list)
    expect_failures: list[str] = field(factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "do": self.do,
            "outcome": self.outcome,
            "pfn": self.pfn,
            "writable": self.writable,
            "page_size": self.page_size,
            "value": self.value,
            "young": self.young,
            "verdicts": list(self.verdicts),
            "expect_failures": list(self.expect_failures),
        }


@define
class RunReport:
    """The result of one run; ``to_json`` is the ``--json`` contract."""

    scenario: str
    arch: str
    strategy: str
    steps: list[StepReport]
    verdicts: list[Verdict]
    events: list[dict[str, Any]]
    unexpected: list[str] = field(factory=list)

    @property
    def passed(self) -> bool:
        return not self.unexpected and all(not s.expect_failures for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "arch": self.arch,
            "strategy": self.strategy,
            "passed": self.passed,
            "steps": [s.to_json() for s in self.steps],
            "verdicts": [v.to_json() for v in self.verdicts],
        }


class Simulation:
    """One scenario under one arch and strategy, ready to :meth:`run`.

    :param scenario: the loaded scenario.
    :param arch: the arch name (default: the scenario's ``arch``).
    :param strategy: the strategy name.
    :param trace: record the decision trace.
    :param extra_plugins: more plugin objects to register (tests, observers).
    :param direct: let the dispatcher call single hot impls directly.
    :raises PluginError: for unknown or unfit plugin names.
    :raises ScenarioError: for a scenario this arch cannot set up.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        arch: str | None = None,
        strategy: str,
        trace: bool = False,
        extra_plugins: Iterable[object] = (),
        direct: bool = True,
        disabled: Iterable[str] = (),
    ) -> None:
        arch = arch or scenario.arch
        if not arch:
            raise ScenarioError(
                "the scenario names no arch; pass --arch", file=scenario.source, key="arch"
            )
        self.scenario = scenario
        self.arch = arch
        self.strategy = strategy
        devices = [d.kind for d in scenario.devices]
        extra = list(extra_plugins)
        if extra:  # observers and test plugins: a manager of this run's own
            self.pm, self.arch_info, self.strategy_info = build_manager(
                arch=arch,
                strategy=strategy,
                devices=devices,
                extra_plugins=extra,
                disabled=disabled,
            )
            self.hooks = Dispatcher(self.pm, direct=direct)
        else:  # built once per process, shared read-only by every run
            ps = plugin_set(
                arch=arch, strategy=strategy, devices=devices, disabled=disabled, direct=direct
            )
            self.pm, self.arch_info, self.strategy_info = ps.pm, ps.arch_info, ps.strategy_info
            self.hooks = ps.hooks.copy()
        self.tracer = Tracer(trace, scenario=scenario.name, arch=arch, strategy=strategy)
        self.phys = PhysMem(self.arch_info.page_shift)
        self.mm = Mm(self.phys, self.tracer)
        self.mm.current = HOST_TASK
        self.mm.linux = self.strategy_info.linux_for(arch)
        self.kvm = Kvm(
            mm=self.mm,
            phys=self.phys,
            hooks=self.hooks,
            strategy=self.strategy_info,
            arch_name=arch,
            tracer=self.tracer,
        )
        self.kvm.nr_vcpus = 1 + max((s.vcpu for s in scenario.steps), default=0)
        self._vmas: dict[str, Any] = {}
        self._step_result: StepResult | None = None  # what the last plugin step returned
        self._seen: set[tuple[str, Any]] = set()
        self.schedule_decisions: list[Any] = []  # a concurrent run's (Decision, choice)
        # its segments' footprints (explore's reduction): per decision, the
        # segment that ended there; and the last segment
        self.schedule_footprints: tuple[list[Any], Any] = ([], None)
        self._setup()

    # ------------------------------------------------------------- set-up

    def _err(self, message: str, key: str) -> ScenarioError:
        return ScenarioError(message, file=self.scenario.source, key=key)

    def _setup(self) -> None:
        sc = self.scenario
        kvm = self.kvm
        hook = self.hooks.hook
        page = 1 << self.phys.page_shift
        for i, dev in enumerate(sc.devices):
            obj = hook.device_init(kvm=kvm, spec=dev)
            if obj is None:
                raise self._err(f"no device plugin accepted kind {dev.kind!r}", f"device[{i}].kind")
            kvm.devices[dev.kind] = obj
        for i, v in enumerate(sc.vmas):
            if v.size % page:
                raise self._err(
                    f"size {format_size(v.size)} is not a multiple of the host page size "
                    f"{format_size(page)} on {self.arch}",
                    f"vma[{i}].size",
                )
            if v.backing == "device":
                device = kvm.devices.get(v.device or "")
                if device is None:
                    raise self._err(f"no [[device]] of kind {v.device!r}", f"vma[{i}].device")
                vma = hook.device_mmap(kvm=kvm, device=device, spec=v)
                if vma is None:
                    raise self._err(f"device {v.device!r} cannot be mmapped", f"vma[{i}].device")
            else:
                vma = map_backing(
                    self.mm,
                    name=v.name,
                    size=v.size,
                    backing=v.backing,
                    prot=v.prot,
                    shared=v.shared,
                    huge_shift=v.huge.bit_length() - 1 if v.huge else 0,
                    populate=v.populate,
                    pgoff=v.pgoff,
                    pfn_kind=v.pfn_kind or "mmio",
                    fault_retry=v.fault_retry,
                )
            self._vmas[v.name] = vma
        shift = self.phys.page_shift
        why = unsupported(sc, self.arch_info)
        if why is not None:
            bad = next((m.index for m in sc.memslots if m.readonly), 0)
            raise self._err(why, f"memslot[{bad}].readonly")
        why = uffdsteps.unsupported_mode(sc, self.mm.linux)
        if why is not None:
            # a userfaultfd mode this kernel does not have
            key = f"uffd[{next(u.index for u in sc.uffd if u.mode == 'minor')}].mode"
            raise self._err(why, key)
        uffdsteps.setup(self)
        for ms in sc.memslots:
            key = f"memslot[{ms.index}]"
            for what, val in (("gpa", ms.gpa), ("offset", ms.offset), ("size", ms.size)):
                if val % page:
                    raise self._err(
                        f"{what} {val:#x} is not aligned to the host page size "
                        f"{format_size(page)} on {self.arch}",
                        f"{key}.{what}",
                    )
            vma = self._vmas[ms.vma]
            kvm.memslots.add(
                Memslot(
                    id=ms.index,
                    base_gfn=ms.gpa >> shift,
                    npages=ms.size >> shift,
                    userspace_addr=vma.start + ms.offset,
                    flags=KVM_MEM_READONLY if ms.readonly else 0,
                    vma=ms.vma,
                ),
                key=key,
            )
        kvm.arch = hook.arch_init(kvm=kvm)
        dirtylog.configure(kvm, sc)
        if self.tracer.enabled:
            self.tracer.emit(
                "setup",
                vmas={n: [hex(v.start), hex(v.end)] for n, v in self._vmas.items()},
                memslots=[(hex(s.base_gfn << shift), s.npages) for s in kvm.memslots.slots],
                handler=kvm.handler,
            )

    # -------------------------------------------------------------- steps

    def vma(self, name: str) -> Any:
        return self._vmas[name]

    def _host_event(self, step: StepSpec, task: str = HOST_TASK) -> Callable[[], None]:
        """The host event a step names, as a callable run as ``task`` (``qemu``;
        a concurrent scenario's host actor runs as itself)."""
        mm = self.mm
        do = step.do

        def run() -> None:
            prev = mm.current
            mm.current = task
            try:
                if self.tracer.enabled:
                    self.tracer.emit("host_event", do=do, vma=step.vma, offset=hex(step.offset))
                r = run_host_step(self, step)
                if r is not None:
                    self._step_result = r
            finally:
                mm.current = prev

        return run

    def _access(self, step: StepSpec, report: StepReport) -> None:
        mm = self.mm
        mm.current = f"vcpu{step.vcpu}"
        gpa = step.gpa if step.gpa is not None else 0
        params = step.params
        ea = cast(int, params.get("ea", gpa))
        value = cast(int, params.get("value", 0))
        width = cast(int, params.get("width", 8))
        self.kvm.access_params[step.vcpu] = params
        try:
            r = guest_access(self.kvm, step.vcpu, gpa, ea, step.op or "read", value, width)
        finally:
            mm.current = HOST_TASK
            del self.kvm.access_params[step.vcpu]
        report.outcome = r.outcome
        report.detail = r.detail
        report.value = r.value
        report.faults = r.faults
        t = r.translation
        if t is not None and t.pfn is not None:
            report.pfn = t.pfn
            report.writable = t.writable
            report.page_size = t.page_size

    def run(self) -> RunReport:
        """Run every step; never raises for what the simulated kernel does.

        A concurrent scenario runs as actors (:mod:`kvmsim.explore.runtime`)
        under its ``[[schedule]]``, or in file order without one."""
        if self.scenario.concurrent:
            from kvmsim.explore.runtime import run_concurrent

            return run_concurrent(self)
        sc = self.scenario
        tr = self.tracer
        steps: list[StepReport] = []
        verdicts: list[Verdict] = []
        unexpected: list[str] = []
        pending: list[tuple[str, StepSpec]] = []
        dead = False
        for step in sc.steps:
            report = StepReport(step.index, step.do)
            steps.append(report)
            if dead:
                report.detail = "not run: the kernel already oopsed or deadlocked"
                continue
            if tr.enabled:
                tr.bind_step(vcpu=step.vcpu if step.do == "access" else None, step=step.index)
            try:
                if step.at is not None and step.do != "access":
                    self.mm.race_points[step.at] = self._host_event(step)
                    pending.append((step.at, step))
                    report.outcome = "armed"
                    report.detail = f"fires at {step.at} in the next fault"
                    continue
                if step.do == "access":
                    self._access(step, report)
                    for point, _ in pending:
                        if point in self.mm.race_points:
                            # the fault path never reached the point: run it now
                            if tr.enabled:
                                tr.emit("race_point_not_reached", point=point)
                            self.mm.race_points.pop(point)()
                    pending.clear()
                else:
                    self._step_result = None
                    self._host_event(step)()
                    # a plugin step may report its own outcome, detail and
                    # failed expectations (an hcall's expect_ret)
                    res = self._step_result
                    report.outcome = res.outcome if res is not None and res.outcome else "done"
                    if res is not None:
                        report.detail = res.detail or report.detail
                        report.value = res.value
                        report.expect_failures.extend(res.expect_failures)
                        report.young = res.young
            except KernelOops as exc:
                report.outcome = "oops"
                report.detail = str(exc)
                dead = True
                if tr.enabled:
                    tr.emit("oops", what=exc.what, kind=exc.kind)
            except Deadlock as exc:
                report.outcome = "deadlock"
                report.detail = str(exc)
                dead = True
                if tr.enabled:
                    tr.emit("deadlock", detail=str(exc))
            report.uffd_faults = uffdsteps.faults_read(self.mm)
            self._check(step, report, verdicts)
            self._expect(step, report, unexpected)
        return RunReport(sc.name, self.arch, self.strategy, steps, verdicts, tr.events, unexpected)

    def _check(self, step: StepSpec, report: StepReport, verdicts: list[Verdict]) -> None:
        checks: StepChecks | None = getattr(self, "_checks", None)
        if checks is None:
            checks = self._checks = StepChecks(self.kvm)
        armed = step.at is not None and step.do != "access"
        ctx = checks.context(step.do, armed, report.outcome, report.detail)
        findings: list[Finding] = run_checks(ctx)
        checks.done(ctx)
        last = self.tracer.last()
        for f in findings:
            k = (f.name, f.key)
            if k in self._seen:
                continue
            self._seen.add(k)
            if f.name not in report.verdicts:
                report.verdicts.append(f.name)
            v = Verdict(
                f.name,
                step.index,
                f.detail,
                None if last is None else last.get("event"),
                None if last is None else last.get("seq"),
            )
            verdicts.append(v)
            if self.tracer.enabled:
                self.tracer.emit("verdict", name=f.name, detail=f.detail)

    def _expect(self, step: StepSpec, report: StepReport, unexpected: list[str]) -> None:
        exp = step.expect
        fails = report.expect_failures
        expected_verdicts = set(exp.verdicts or ()) if exp is not None else set()
        for name in report.verdicts:
            if name not in expected_verdicts:
                unexpected.append(f"step {step.index}: {name}")
        if exp is None:
            return
        if exp.outcome is not None and report.outcome != exp.outcome:
            fails.append(f"outcome: expected {exp.outcome}, got {report.outcome}")
        if exp.writable is not None and report.writable != exp.writable:
            fails.append(f"writable: expected {exp.writable}, got {report.writable}")
        if exp.page_size is not None and report.page_size != exp.page_size:
            got = None if report.page_size is None else format_size(report.page_size)
            fails.append(f"page_size: expected {format_size(exp.page_size)}, got {got}")
        if exp.frame is not None:
            self._expect_frame(step, report, exp.frame, fails)
        if exp.value is not None and report.value != exp.value:
            got = None if report.value is None else hex(report.value)
            fails.append(f"value: expected {exp.value:#x}, got {got}")
        if exp.young is not None and report.young != exp.young:
            fails.append(f"young: expected {exp.young}, got {report.young}")
        if exp.uffd_faults is not None and report.uffd_faults != exp.uffd_faults:
            fails.append(f"uffd_faults: expected {exp.uffd_faults}, got {report.uffd_faults}")
        if exp.verdicts is not None:
            missing = sorted(set(exp.verdicts) - set(report.verdicts))
            if missing:
                fails.append(f"verdicts: expected {', '.join(missing)} to fire")

    def _expect_frame(
        self, step: StepSpec, report: StepReport, frame: object, fails: list[str]
    ) -> None:
        if frame == "none":
            if report.pfn is not None:
                fails.append(f"frame: expected none, got pfn {report.pfn:#x}")
            return
        if frame == "host":
            ctx = CheckContext(self.kvm)
            hva = ctx.gpa_to_hva(step.gpa or 0)
            host = None if hva is None else ctx.host_frame(hva)[0]
            if host is None or report.pfn != host:
                got = "nothing" if report.pfn is None else f"pfn {report.pfn:#x}"
                want = "no host frame" if host is None else f"pfn {host:#x}"
                fails.append(f"frame: expected the host's frame ({want}), got {got}")
            return
        if report.pfn != frame:
            fails.append(f"frame: expected pfn {frame}, got {report.pfn}")


def run_scenario(
    scenario: Scenario, *, arch: str | None = None, strategy: str, trace: bool = False
) -> RunReport:
    """Build and run one simulation."""
    return Simulation(scenario, arch=arch, strategy=strategy, trace=trace).run()


def build_sim(
    scenario: str | Path,
    *,
    arch: str | None = None,
    strategy: str,
    extra_plugins: Iterable[object] = (),
    trace: bool = True,
    direct: bool = True,
) -> Simulation:
    """A simulation from a scenario path, or from TOML text (anything with a
    newline); what the ``make_sim`` fixture and ``kvmsim bench`` build."""
    # the loader takes the installed plugins' step kinds (hcall...) by default
    if isinstance(scenario, str) and "\n" in scenario:
        sc = parse_scenario(scenario, "<test>")
    else:
        sc = load_scenario(scenario)
    return Simulation(
        sc, arch=arch, strategy=strategy, trace=trace, extra_plugins=extra_plugins, direct=direct
    )


__all__ = [
    "RunReport",
    "Simulation",
    "StepReport",
    "StepResult",
    "Verdict",
    "build_sim",
    "run_scenario",
]
