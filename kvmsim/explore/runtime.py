"""One concurrent run: a scenario's steps as actors, switched at yield points.

Each actor (``vcpu<N>`` for accesses, ``qemu`` or a named host actor for
host steps) runs its steps in file order inside a greenlet.  Whenever it
reaches a yield point (:mod:`kvmsim.points`), ends a step, or must wait for
a lock another actor holds, it hands control back to the scheduler, which
asks its chooser who runs next.  An actor waiting for ``mmap_sem`` or
``mmu_lock`` is not runnable until the holder releases it; when nobody is
runnable but somebody waits, the waiter gets the ``deadlock`` outcome.

The default choice (what a scenario without ``[[schedule]]`` runs, and
what every choice a schedule does not name falls back to): at a yield point
the running actor goes on; at a step's end, or when the running actor
blocks, an actor in the middle of a step resumes first (the earliest in
file order), else the actor owning the earliest step not yet started.  Run
without switches, that is the scenario's file order, step by step.

The checkers run when no actor is in the middle of a step (and at the
end): the state between two halves of a fault is not a state the kernel
promises anything about.  An actor that oopses or deadlocks stops there
(its later steps do not run); the other actors go on, as the other tasks
of a machine whose kernel oopsed in one task do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from attrs import Factory, define, field
from greenlet import GreenletExit, getcurrent, greenlet

from kvmsim import footprint
from kvmsim.cmodel import KernelOops
from kvmsim.host.rwsem import Deadlock
from kvmsim.scenario.model import StepSpec, Switch
from kvmsim.uffdsteps import faults_read

if TYPE_CHECKING:
    from kvmsim.runner import RunReport, Simulation, StepReport

#: Pseudo-points where a choice is free (no preemption): the run's start,
#: an actor's step end, an actor blocking on a lock.  ``guest_retry`` (a
#: vcpu back in the guest to re-execute its access) is a pseudo-point too,
#: but not free: the vcpu could go on, so running another there costs a
#: preemption, as at a yield point, unless the vcpu spins (then it is not
#: runnable and the switch is forced).  Were it free, two vcpus retrying
#: during one invalidation would branch at every RESUME, unbounded.
START = "start"
STEP_END = "step_end"
BLOCKED = "blocked"
RETRY = "guest_retry"
FREE = (START, STEP_END, BLOCKED)
#: RESUMEs of one access after which its vcpu counts as spinning.
SPIN_FREE = 2
#: What an actor hands back when its step is over (progress, spinning or not).
_ENDS = ("step_end", "done", "dead")


@define
class Decision:
    """One choice the scheduler asks for (read-only by convention: not
    frozen, whose set-up costs several times more, at every yield point).

    :param index: its number in this run (0 is the start).
    :param actor: the actor that reached the point (None at the start).
    :param point: a yield point name or one of :data:`FREE`.
    :param nth: how many times ``actor`` has reached ``point`` (1 = first).
    :param runnable: the actors that may run now, in actor order.
    :param default: what the default rule picks.
    :param preemptive: see the attribute.
    """

    index: int
    actor: str | None
    point: str
    nth: int
    runnable: tuple[str, ...]
    default: str
    preemptive: bool = field(
        default=Factory(lambda d: d.point not in FREE and d.actor in d.runnable, takes_self=True)
    )
    """Choosing another actor here is a preemption (the running actor could
    have gone on).  Computed when not given; the scheduler gives it (the
    search asks it several times per decision)."""


class Chooser(Protocol):
    def __call__(self, d: Decision) -> str: ...


def default_chooser(d: Decision) -> str:
    return d.default


def schedule_chooser(switches: Sequence[Switch]) -> Chooser:
    """Follow a scenario's ``[[schedule]]``; the default elsewhere."""
    table = {(s.actor, s.at, s.nth): s.run for s in switches}

    def choose(d: Decision) -> str:
        run = table.get((d.actor or "", d.point, d.nth))
        return run if run is not None and run in d.runnable else d.default

    return choose


@define
class Actor:
    """One actor: its steps, its greenlet and where it stands."""

    name: str
    steps: list[StepSpec]
    order: int  # position of its first step in the file (actor order)
    glet: Any = None
    pos: int = 0  # steps started
    mid: bool = False  # inside a step
    done: bool = False
    blocked_on: Any = None
    spinning: bool = False
    spins: int = 0  # RESUMEs of the current access in a row
    arrivals: dict[str, int] = field(factory=dict)
    task: str = ""  # mm.current when it was switched out (a kworker it runs, say)
    host: bool = False  # inside a host step (its segments are opaque to the reduction)


class _Stop(GreenletExit):
    """Ends an abandoned actor (the run is over) without running its code on."""


class Scheduler:
    """Runs one simulation's actors under ``chooser`` (see module docstring)."""

    def __init__(self, sim: Simulation, chooser: Chooser) -> None:
        self.sim = sim
        self.chooser = chooser
        self.decisions: list[tuple[Decision, str]] = []
        by_name: dict[str, Actor] = {}
        for step in sim.scenario.steps:
            name = step.actor_name(step.do == "access")
            a = by_name.get(name)
            if a is None:
                a = by_name[name] = Actor(name, [], step.index)
            a.steps.append(step)
        self.actors = sorted(by_name.values(), key=lambda a: a.order)
        self.by_name = by_name
        self.current: Actor | None = None
        self.over = False
        self.dead = False
        self.main: Any = None
        self._pending = ""  # the last decision's choice
        self._decided = False  # the last point() made a decision
        # partial-order reduction: the footprint of the segment that ended
        # at each decision (None before the first), and of the last one.
        # A chooser that replays a prefix needs none before its decision
        # ``record_from`` (``before[i]`` for i <= record_from stays opaque):
        # recording pauses until then (the recording classes stay installed,
        # so whatever is bound early records once resumed; every recording
        # site reads footprint.REC when it records)
        self.rec = footprint.REC
        self._record_from = 0
        self._paused: footprint.Recorder | None = None
        start = getattr(chooser, "record_from", 0)
        if self.rec is not None and start > 0:
            self._record_from, self._paused = start, self.rec
            self.rec = footprint.REC = None
        self.before: list[footprint.Footprint | None] = []
        self.tail: footprint.Footprint = footprint.OPAQUE
        bind = getattr(chooser, "bind", None)
        if bind is not None:
            bind(self)

    # ---------------------------------------------------- called by actors

    def point(self, name: str) -> None:
        """A yield point reached by the running actor: decided here, and only
        a choice of another actor switches (most choices let it go on; a
        switch copies the greenlet's stack)."""
        if self.over:
            raise _Stop
        cur = self.current
        assert cur is not None
        runnable = self._runnable()
        if runnable:
            _, name_ = self._decide(runnable, name, cur)
            if name_ == cur.name:
                if cur.spins <= SPIN_FREE:
                    self._progress()
                return
        # (the loop follows the decision made here, if any: who may run
        # cannot change before it sees this message)
        self._decided = bool(runnable)
        self.main.switch(("point", name))

    def block(self, lock: object) -> None:
        """The running actor must wait for ``lock``; returns when it may try again."""
        if self.over:
            raise _Stop
        if self.rec is not None:
            _lock_key(self.rec, lock)
        self.main.switch(("block", lock))

    def spin(self) -> None:
        """The running vcpu returns to the guest to retry its access: it waits
        for another actor to make progress (fairness: the other CPUs run on
        while it spins), unless nobody else can run."""
        if self.over:
            raise _Stop
        self.main.switch(("spin", None))

    def released(self, lock: object) -> None:
        """``lock`` was released: its waiters may try again."""
        if self.rec is not None and getattr(lock, "name", None) not in _KEYED_LOCKS:
            self.rec.all()  # the keyed locks' own release records it
        for a in self.actors:
            if a.blocked_on is lock:
                a.blocked_on = None

    # ---------------------------------------------------- the loop

    def _runnable(self) -> list[Actor]:
        # the actors neither done nor blocked, in actor order; the spinning
        # ones only when nobody else is left (one pass: asked at every point)
        going: list[Actor] = []
        spinning: list[Actor] = []
        for a in self.actors:
            if not a.done and a.blocked_on is None:
                (spinning if a.spinning else going).append(a)
        return going or spinning

    def _progress(self) -> None:
        # somebody made progress: the spinners may look again.  A spinner's
        # own retry loop is not progress: two vcpus spinning on one
        # invalidation would otherwise wake each other for ever, each
        # wake-up a free choice of the search
        for a in self.actors:
            if a.spinning:
                a.spinning = False
                if self.rec is not None:
                    self.rec.all()  # who may run changed: not described by keys

    def _decide(self, runnable: list[Actor], point: str, cur: Actor | None) -> tuple[Decision, str]:
        """Record one decision and the chooser's answer."""
        decisions = self.decisions
        if cur is None:
            nth, actor = 1, None
        else:
            arrivals = cur.arrivals
            nth = arrivals[point] = arrivals.get(point, 0) + 1
            actor = cur.name
        fp = self._close(cur)
        self.before.append(fp if decisions else None)
        if self._paused is not None and len(decisions) == self._record_from:
            # the segment starting at this decision is the first one asked for
            self._paused.take()  # (starts empty)
            self.rec = footprint.REC = self._paused
            self._paused = None
        names = tuple([a.name for a in runnable])
        if point not in FREE and cur is not None and actor in names:
            default = actor  # the running actor goes on (the usual case)
            preemptive = True
        else:
            default = self._default(runnable)
            preemptive = False
        d = Decision(len(decisions), actor, point, nth, names, default, preemptive)
        name = self.chooser(d)
        if name not in names:
            raise ValueError(f"chooser picked {name!r}, not runnable at {d}")
        decisions.append((d, name))
        self._pending = name
        return d, name

    def _close(self, cur: Actor | None) -> footprint.Footprint:
        """The footprint of the segment ``cur`` ran up to now."""
        rec = self.rec
        if rec is None:
            return footprint.OPAQUE
        if cur is None or cur.host:
            rec.all()
        elif self.sim.kvm.mmu_lock.holder is not None:
            rec.writes.add(footprint.S2)  # a holder's work is stage-2 work
        return rec.take()

    def _default(self, runnable: list[Actor]) -> str:
        """The default where the running actor cannot simply go on (see
        :meth:`_decide`): the actor mid-step, else the next step's owner."""
        mid = [a for a in runnable if a.mid]
        if mid:
            return min(mid, key=lambda a: a.steps[a.pos - 1].index).name
        fresh = [a for a in runnable if a.pos < len(a.steps)]
        return min(fresh, key=lambda a: a.steps[a.pos].index).name

    def _body(self, actor: Actor, run_step: Callable[[StepSpec], bool]) -> Callable[[], Any]:
        def body() -> Any:
            for step in actor.steps:
                actor.pos += 1
                actor.mid = True
                # (a step's start and end need no key: a checker pass, which
                # depends on who is inside a step, is opaque).  ``host`` is
                # kept while recording pauses too: a host step may span the
                # decision where it resumes
                if step.do != "access":
                    actor.host = True
                    if self.rec is not None:
                        self.rec.all()
                alive = run_step(step)
                actor.mid = False
                if actor.host:
                    if self.rec is not None:
                        self.rec.all()
                    actor.host = False
                if not alive:
                    return ("dead", None)
                if actor.pos < len(actor.steps):
                    self.main.switch(("step_end", None))
            return ("done", None)

        return body

    def run(self, run_step: Callable[[StepSpec], bool], quiescent: Callable[[], None]) -> None:
        """Run every actor to its end (or until the kernel dies)."""
        sim = self.sim
        mm, kvm = sim.mm, sim.kvm
        self.main = getcurrent()
        for a in self.actors:
            a.glet = greenlet(self._body(a, run_step), parent=self.main)
        mm.sched = kvm.mmu_lock.sched = mm.mmap_sem.sched = self
        point, cur = START, None
        decided: str | None = None  # a choice point() already made
        try:
            while True:
                runnable = self._runnable()
                if not runnable:
                    waiting = [a for a in self.actors if not a.done]
                    if not waiting:
                        break
                    # nobody can run and somebody waits: the last to block dies
                    victim = cur if cur is not None and cur in waiting else waiting[0]
                    mm.current = victim.task or victim.name
                    self.current = victim
                    lock = victim.blocked_on
                    victim.blocked_on = None
                    if self.rec is not None:
                        self.rec.all()
                    msg = victim.glet.throw(
                        Deadlock(getattr(lock, "name", "lock"), victim.name, _holders(lock))
                    )
                    victim.task = mm.current
                    cur = victim
                else:
                    if decided is None:
                        _, name = self._decide(runnable, point, cur)
                    else:
                        name, decided = decided, None
                    nxt = self.by_name[name]
                    if sim.tracer.enabled and (cur is None or nxt is not cur):
                        sim.tracer.emit(
                            "schedule", point=point, to=name, by=None if cur is None else cur.name
                        )
                    mm.current = nxt.task or name
                    self.current = nxt
                    msg = nxt.glet.switch()
                    nxt.task = mm.current
                    if msg[0] in _ENDS or (msg[0] != "spin" and nxt.spins <= SPIN_FREE):
                        self._progress()
                    cur = nxt
                kind, arg = msg
                if kind == "point":
                    point = arg
                    if self._decided:
                        decided = self._pending  # point() recorded the decision
                elif kind == "block":
                    cur.blocked_on = arg
                    point = BLOCKED
                elif kind == "spin":
                    # the first RESUMEs are the fault handled (an HPT fault
                    # takes two); beyond them the access makes no progress
                    # alone: let the others run
                    cur.spins += 1
                    cur.spinning = cur.spins > SPIN_FREE
                    if cur.spinning and self.rec is not None:
                        self.rec.all()
                    point = RETRY
                elif kind == "step_end":
                    point = STEP_END
                    cur.spins = 0
                    if not any(a.mid for a in self.actors):
                        if self.rec is not None:
                            self.rec.all()  # the checkers read everything
                        quiescent()
                elif kind == "done":
                    cur.done = True
                    point = STEP_END
                    if not any(a.mid for a in self.actors):
                        if self.rec is not None:
                            self.rec.all()  # the checkers read everything
                        quiescent()
                else:  # "dead": this task oopsed or deadlocked; the others go on
                    if self.rec is not None:
                        self.rec.all()
                    self.dead = True
                    cur.done = True
                    point = STEP_END
                    if not any(a.mid for a in self.actors):
                        if self.rec is not None:
                            self.rec.all()  # the checkers read everything
                        quiescent()
            self.tail = self._close(cur)
        finally:
            self.over = True
            mm.sched = kvm.mmu_lock.sched = mm.mmap_sem.sched = None
            for a in self.actors:
                if a.glet is not None and not a.glet.dead:
                    try:
                        a.glet.throw(_Stop)
                    except _Stop:
                        pass
            mm.current = "qemu"


#: Locks whose every acquisition and release the recorders see.
_KEYED_LOCKS = ("kvm->mmu_lock", "mmap_sem")


def _lock_key(rec: footprint.Recorder, lock: object) -> None:
    name = getattr(lock, "name", None)
    if name in _KEYED_LOCKS:
        rec.writes.add(("lock", name))
    else:  # a migration wait, a userfaultfd wait queue: not keyed
        rec.all()


def _holders(lock: object) -> dict[str, str]:
    held = getattr(lock, "held_by", None)
    if callable(held):
        return dict(held())
    holder = getattr(lock, "holder", None)
    return {holder: "spin"} if holder else {}


def run_concurrent(sim: Simulation, chooser: Chooser | None = None) -> RunReport:
    """Run ``sim``'s concurrent scenario under ``chooser`` (default: its
    ``[[schedule]]``, else the file order); judged by the checkers and the
    scenario's ``expect`` as :meth:`Simulation.run` judges a sequential one."""
    from kvmsim.runner import RunReport, StepReport, Verdict

    sc = sim.scenario
    tr = sim.tracer
    reports: dict[int, StepReport] = {s.index: StepReport(s.index, s.do) for s in sc.steps}
    verdicts: list[Verdict] = []
    unexpected: list[str] = []
    finished: list[StepSpec] = []
    sched = Scheduler(sim, chooser or schedule_chooser(sc.schedule))

    def run_step(step: StepSpec) -> bool:
        report = reports[step.index]
        if tr.enabled:
            tr.bind_step(vcpu=step.vcpu if step.do == "access" else None, step=step.index)
        alive = True
        try:
            if step.do == "access":
                sim._access(step, report)
            else:
                sim._step_result = None
                sim._host_event(step, task=sched.current.name if sched.current else "qemu")()
                res = sim._step_result
                report.outcome = res.outcome if res is not None and res.outcome else "done"
                if res is not None:
                    report.detail = res.detail or report.detail
                    report.value = res.value
                    report.expect_failures.extend(res.expect_failures)
                    report.young = res.young
        except KernelOops as exc:
            report.outcome, report.detail, alive = "oops", str(exc), False
            if tr.enabled:
                tr.emit("oops", what=exc.what, kind=exc.kind)
        except Deadlock as exc:
            report.outcome, report.detail, alive = "deadlock", str(exc), False
            if tr.enabled:
                tr.emit("deadlock", detail=str(exc))
        report.uffd_faults = faults_read(sim.mm)
        finished.append(step)
        return alive

    def quiescent() -> None:
        # the state a step's expectations describe is the state right after
        # it (and the steps that ended with it)
        for step in finished:
            sim._check(step, reports[step.index], verdicts)
            sim._expect(step, reports[step.index], unexpected)
        finished.clear()

    sched.run(run_step, quiescent)
    quiescent()
    for s in sc.steps:
        r = reports[s.index]
        if r.outcome is None and not r.detail:
            r.detail = "not run: the kernel already oopsed or deadlocked"
            sim._expect(s, r, unexpected)
    # ``expect`` holds for the file order only: under any other schedule
    # no expectation is checked and every verdict is unexpected
    if any(choice != d.default for d, choice in sched.decisions):
        unexpected = [f"step {s.index}: {n}" for s in sc.steps for n in reports[s.index].verdicts]
        for r in reports.values():
            r.expect_failures.clear()
    sim.schedule_decisions = sched.decisions
    sim.schedule_footprints = (sched.before, sched.tail)
    steps = [reports[s.index] for s in sc.steps]
    return RunReport(sc.name, sim.arch, sim.strategy, steps, verdicts, tr.events, unexpected)


__all__ = [
    "BLOCKED",
    "FREE",
    "START",
    "STEP_END",
    "Chooser",
    "Decision",
    "Scheduler",
    "default_chooser",
    "run_concurrent",
    "schedule_chooser",
]
