"""Schedule search: every schedule within a preemption bound, or random ones.

A schedule is the list of choices the scheduler made, one per decision
(:class:`~kvmsim.explore.runtime.Decision`).  Runs are stateless: each
schedule runs from scratch, replaying a prefix of choices and taking the
default after it, so the search keeps nothing per schedule but the
failure classes.

- ``exhaustive``: a depth-first enumeration of every schedule with at most
  ``bound`` preemptions (choosing another actor at a yield point while the
  running one could go on; choices at a step's end, at the start or after
  a block are free), as CHESS-style bounded search does, with sleep sets
  (Godefroid) over segment footprints (:mod:`kvmsim.footprint`): a
  schedule that differs from one already run only in the order of two
  independent segments is not run (counted as ``redundant``).  See
  :func:`_eligible` for when a sleeping actor is allowed to stay asleep
  under the preemption bound.
- ``random``: PCT (Burckhardt et al., ASPLOS 2010): random actor
  priorities, and ``depth - 1`` random decisions at which the running
  actor drops to the lowest priority; reproducible from the seed.

A failing schedule (a verdict fired, or the run raised) belongs to a class
keyed by its verdicts and the preemptions that led there; each class keeps
its smallest schedule (fewest preemptions, then fewest non-default
choices), and a class whose preemptions include another class's with the
same verdicts is folded into it.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from attrs import define, field, frozen

from kvmsim import footprint
from kvmsim.explore.runtime import Decision, run_concurrent
from kvmsim.footprint import Footprint
from kvmsim.scenario.model import DirtySpec, Scenario, Switch

if TYPE_CHECKING:
    from kvmsim.registry import PluginEntry

MODES = ("exhaustive", "random")

#: A sleep set: actor -> the footprint of its next segment.
Sleep = dict[str, Footprint]
#: A sibling already explored at a decision: (actor, footprint of its
#: segment there, preemptions its choice cost there and right after).
Entry = tuple[str, Footprint, int]


@frozen
class Outcome:
    """One schedule's run: its choices, the switches that replay it, its
    preemptions ``(actor, point, to)`` and what it found."""

    choices: tuple[str, ...]
    switches: tuple[Switch, ...]
    preemptions: tuple[tuple[str, str, str], ...]
    verdicts: tuple[str, ...]
    error: str | None = None
    redundant: bool = False  # sleep-set blocked: equivalent to a schedule already run

    @property
    def failed(self) -> bool:
        return (bool(self.verdicts) or self.error is not None) and not self.redundant


def run_schedule(
    scenario: Scenario,
    arch: str,
    strategy: str,
    prefix: Sequence[str],
    *,
    trace: bool = False,
    extra_plugins: Sequence[object] = (),
) -> tuple[Outcome, list[tuple[Decision, str]], Any]:
    """Run ``scenario`` choosing ``prefix[i]`` at decision ``i`` (the default
    beyond it, or where the prefix names an actor that cannot run)."""

    def choose(d: Decision) -> str:
        if d.index < len(prefix) and prefix[d.index] in d.runnable:
            return prefix[d.index]
        return d.default

    return run_with(scenario, arch, strategy, choose, trace=trace, extra_plugins=extra_plugins)


def _cost(d: Decision, choice: str) -> int:
    return 1 if d.preemptive and choice != d.actor else 0


class _SleepChooser:
    """Replays ``prefix``, then keeps a sleep set: the default unless it is
    asleep, else the first runnable actor awake within the bound; when every
    runnable actor within the bound is asleep the run is *blocked*
    (equivalent to a schedule already run): it ends on defaults, unjudged.

    ``sleep`` is the sleep set at the prefix's last decision, before its
    choice ran; each segment run from there wakes the sleepers it is not
    independent of."""

    def __init__(self, prefix: Sequence[str], sleep: Sleep, bound: int) -> None:
        self.prefix = prefix
        self.sleep = dict(sleep)
        self.bound = bound
        self.used = 0
        self.choices: list[str] = []
        self.sleeps: list[Sleep | None] = []
        self.blocked: int | None = None  # the decision where it blocked
        self.sched: Any = None
        # the first decision whose following segment's footprint is asked
        # for (the sleep set, the new sibling entry, the children all look
        # at or after the prefix's last decision)
        self.record_from = max(0, len(prefix) - 1)

    def bind(self, sched: Any) -> None:
        self.sched = sched

    def __call__(self, d: Decision) -> str:
        i = d.index
        n = len(self.prefix)
        if i >= n and i > 0 and self.sleep:
            fp = self.sched.before[i]
            ran = self.choices[i - 1]
            fp = fp if fp is not None else footprint.OPAQUE
            self.sleep = {a: f for a, f in self.sleep.items() if a != ran and f.independent(fp)}
        if i < n:
            c = self.prefix[i] if self.prefix[i] in d.runnable else d.default
            self.sleeps.append(None)
        else:
            s = self.sleep
            self.sleeps.append(s)  # (never changed in place: replaced above)
            c = d.default
            if self.blocked is None and c in s:
                pick = None
                for a in d.runnable:
                    if a not in s and self.used + _cost(d, a) <= self.bound:
                        pick = a
                        break
                if pick is None:
                    self.blocked = i
                else:
                    c = pick
        self.used += _cost(d, c)
        self.choices.append(c)
        return c


def _eligible(
    arch: str, strategy: str, scenario: Scenario, extra_plugins: Sequence[object]
) -> bool:
    """Whether the reduction may key this column's segments: the arch, the
    strategy and every extra plugin declare ``FOOTPRINTS = True`` (their
    code touches shared state only through recorded objects), and the
    scenario uses nothing the recorders do not describe (devices, dirty
    logging, userfaultfd).  Otherwise every segment is opaque."""
    if scenario.devices or scenario.uffd or scenario.dirty != _NO_DIRTY:
        return False
    from kvmsim.registry import discover

    found = discover()
    return _declares_footprints(found["arch"][arch], found["strategy"][strategy]) and all(
        getattr(m, "FOOTPRINTS", False) is True for m in extra_plugins
    )


_NO_DIRTY = DirtySpec()  # a scenario without a [dirty] table


@functools.cache
def _declares_footprints(*entries: PluginEntry) -> bool:
    """Whether these plugins declare ``FOOTPRINTS = True`` (asked once per
    plugin entry: every schedule of a column asks)."""
    from kvmsim.registry import load

    return all(getattr(load(e), "FOOTPRINTS", False) is True for e in entries)


def run_with(
    scenario: Scenario,
    arch: str,
    strategy: str,
    choose: Any,
    *,
    trace: bool = False,
    extra_plugins: Sequence[object] = (),
    record: bool = False,
) -> tuple[Outcome, list[tuple[Decision, str]], Any]:
    """Run ``scenario`` under the chooser ``choose``: the outcome (its
    choices, the switches that replay it, its preemptions, its verdicts),
    the decisions and the run's report (None when a plugin raised).
    ``record``: record segment footprints (when the column is eligible);
    a chooser with a ``bind`` method sees them on the scheduler."""
    from kvmsim.explore import recorders
    from kvmsim.runner import Simulation

    sim = Simulation(
        scenario, arch=arch, strategy=strategy, trace=trace, extra_plugins=extra_plugins
    )
    error = None
    report = None
    recording = record and _eligible(arch, strategy, scenario, extra_plugins)
    if recording:
        recorders.install(sim)
    try:
        report = run_concurrent(sim, choose)
        verdicts = tuple(sorted({v.name for v in report.verdicts}))
    except Exception as exc:  # a plugin raised inside this schedule: its own class
        error = f"{type(exc).__name__}: {exc}"
        verdicts = ("error",)
    finally:
        if recording:
            recorders.uninstall(sim)

    decisions = list(sim.schedule_decisions)
    switches = tuple(
        Switch(actor=d.actor or "", at=d.point, run=c, nth=d.nth)
        for d, c in decisions
        if c != d.default
    )
    pre = tuple((d.actor or "", d.point, c) for d, c in decisions if d.preemptive and c != d.actor)
    redundant = getattr(choose, "blocked", None) is not None
    out = Outcome(tuple(c for _, c in decisions), switches, pre, verdicts, error, redundant)
    return out, decisions, report


#: One subtree to explore: the choices that lead to it (the last one is
#: its first choice), the sleep set at that decision, the siblings explored
#: there before it (a list the siblings fill in as they run, in one
#: process; a tuple when fixed in advance), and what its choice cost there.
Kid = tuple[tuple[str, ...], Sleep, "list[Entry] | tuple[Entry, ...]", int]


def _children(
    prefix: tuple[str, ...],
    out: Outcome,
    decisions: list[tuple[Decision, str]],
    bound: int,
    chooser: _SleepChooser,
    stats: list[int],
) -> list[Kid]:
    """The subtrees below ``prefix``'s run: at every decision past the
    prefix, each other runnable actor the bound still allows and that is not
    asleep there (``stats[0]`` counts those skipped asleep).  Nothing at or
    after a decision where the run was blocked.  The root run's children
    see only the root run's own choice as an explored sibling (so that
    subtrees spread over processes get the same sleep sets as in one)."""
    found: list[Kid] = []
    used = 0
    sched = chooser.sched
    before, tail = sched.before, sched.tail
    n = len(prefix)
    share = n > 0
    stop = chooser.blocked if chooser.blocked is not None else len(decisions)
    for i, (d, chosen) in enumerate(decisions[:stop]):
        if i < n:  # inside the prefix: only what its choices cost
            used += _cost(d, chosen)
            continue
        asleep = chooser.sleeps[i] or {}
        nxt = decisions[i + 1][0] if i + 1 < len(decisions) else None
        cq = 1 if nxt is not None and nxt.preemptive else 0
        fp = before[i + 1] if i + 1 < len(decisions) else tail
        fp = fp if fp is not None else footprint.OPAQUE
        mine: Entry = (chosen, fp, _cost(d, chosen) + cq)
        entries: list[Entry] | tuple[Entry, ...] = [mine] if share else (mine,)
        for alt in reversed(d.runnable):
            if alt == chosen:
                continue
            cost = _cost(d, alt)
            if used + cost > bound:
                continue
            if alt in asleep:
                stats[0] += 1
                continue
            found.append(((*out.choices[:i], alt), asleep, entries, cost))
        used += _cost(d, chosen)
    return found


def _sleep_of(kid: Kid) -> Sleep:
    """The sleep set a subtree starts with: the one at its decision, and the
    siblings explored there before it that may sleep (:func:`_eligible_entry`)."""
    prefix, asleep, entries, cost = kid
    me = prefix[-1]
    sleep = dict(asleep)
    for actor, fp, c in entries:
        if actor != me and c <= cost:
            sleep[actor] = fp
    return sleep


def _record_entry(kid: Kid, chooser: _SleepChooser, decisions: list[tuple[Decision, str]]) -> None:
    """After a subtree's first run: its choice joins its siblings' entries."""
    prefix, _, entries, cost = kid
    if not isinstance(entries, list):
        return
    k = len(prefix) - 1
    sched = chooser.sched
    nxt = decisions[k + 1][0] if k + 1 < len(decisions) else None
    fp = sched.before[k + 1] if k + 1 < len(decisions) else sched.tail
    cq = 1 if nxt is not None and nxt.preemptive else 0
    entries.append((prefix[-1], fp if fp is not None else footprint.OPAQUE, cost + cq))


def _run_kid(
    scenario: Scenario,
    arch: str,
    strategy: str,
    prefix: tuple[str, ...],
    sleep: Sleep,
    bound: int,
    por: bool,
    extra_plugins: Sequence[object],
) -> tuple[Outcome, list[tuple[Decision, str]], _SleepChooser]:
    chooser = _SleepChooser(prefix, sleep, bound)
    out, decisions, _ = run_with(
        scenario, arch, strategy, chooser, extra_plugins=extra_plugins, record=por
    )
    return out, decisions, chooser


def exhaustive(
    scenario: Scenario,
    arch: str,
    strategy: str,
    bound: int,
    roots: Sequence[Kid | tuple[str, ...]] = ((),),
    extra_plugins: Sequence[object] = (),
    *,
    por: bool = True,
    stats: list[int] | None = None,
) -> Iterator[Outcome]:
    """Every schedule with at most ``bound`` preemptions in the subtrees
    ``roots`` (default: the whole tree), each exactly once, depth first
    (``extra_plugins``: registered in every run, e.g. a seeded bug); with
    ``por``, but one of each class of schedules equivalent up to the order
    of independent segments.  ``stats[0]`` counts the redundant subtrees
    skipped and runs blocked."""
    st = stats if stats is not None else [0]
    stack: list[Kid] = [
        r if len(r) == 4 and isinstance(r[0], tuple) else (tuple(r), {}, (), 0)  # type: ignore[misc]
        for r in reversed(roots)
    ]
    while stack:
        kid = stack.pop()
        prefix = kid[0]
        sleep = _sleep_of(kid) if prefix and por else {}
        out, decisions, chooser = _run_kid(
            scenario, arch, strategy, prefix, sleep, bound, por, extra_plugins
        )
        if prefix:
            _record_entry(kid, chooser, decisions)
        if out.redundant:
            st[0] += 1
        yield out
        stack.extend(_children(prefix, out, decisions, bound, chooser, st))


def split(
    scenario: Scenario, arch: str, strategy: str, bound: int, por: bool = True
) -> tuple[Outcome, list[Kid], int]:
    """The default schedule's run and the subtrees below it: units that
    :func:`exhaustive` explores independently (in other processes); and the
    redundant subtrees skipped there."""
    st = [0]
    out, decisions, chooser = _run_kid(scenario, arch, strategy, (), {}, bound, por, ())
    return out, _children((), out, decisions, bound, chooser, st), st[0]


class _Pct:
    """One PCT schedule's chooser: the highest-priority runnable actor; at
    each change point the running actor drops below every other."""

    def __init__(self, actors: list[str], changes: set[int], depth: int, rng: random.Random):
        order = rng.sample(actors, len(actors))
        self.prio = {a: p for p, a in enumerate(order, start=depth)}
        self.changes = changes
        self.low = depth - 1

    def __call__(self, d: Decision) -> str:
        if d.index in self.changes and d.actor in self.prio:
            self.prio[d.actor] = self.low
            self.low -= 1
        prio = self.prio
        return max(d.runnable, key=lambda name: prio.get(name, -1))


def pct(
    scenario: Scenario,
    arch: str,
    strategy: str,
    runs: int | range,
    depth: int,
    seed: int,
) -> Iterator[Outcome]:
    """PCT schedules of bug depth ``depth``: run ``n`` (of ``range(runs)``,
    or of the range given) draws its priorities from ``(seed, n)`` alone, so
    any split of the runs gives the same schedules."""
    _, decisions, _ = run_schedule(scenario, arch, strategy, ())
    k = max(1, len(decisions))
    actors = sorted({a for d, _ in decisions for a in d.runnable})
    for n in runs if isinstance(runs, range) else range(runs):
        rng = random.Random(f"{seed}:{n}")
        changes = set(rng.sample(range(1, k + 1), min(k, max(0, depth - 1))))
        yield run_with(scenario, arch, strategy, _Pct(actors, changes, depth, rng))[0]


@define
class FailureClass:
    """Schedules that failed the same way: the verdicts and preemption sites
    of the smallest one, and how many schedules were folded in."""

    verdicts: tuple[str, ...]
    sites: frozenset[tuple[str, str, str]]
    best: Outcome
    schedules: int = 1
    error: str | None = None

    def explanation(self) -> str:
        what = ", ".join(self.verdicts)
        if self.error is not None:
            what = f"a plugin raised ({self.error})"
        if not self.best.preemptions:
            return f"{what} without any preemption (a step order alone)"
        how = "; then ".join(
            f"{actor} preempted at {point} and {to} runs"
            for actor, point, to in self.best.preemptions
        )
        return f"{what} when {how}"


def _size(o: Outcome) -> tuple[int, int, int]:
    return (len(o.preemptions), len(o.switches), len(o.choices))


@define
class Classes:
    """Failure classes by root cause (see module docstring)."""

    by_key: dict[tuple[tuple[str, ...], frozenset[tuple[str, str, str]]], FailureClass] = field(
        factory=dict
    )

    def add(self, o: Outcome) -> None:
        key = (o.verdicts, frozenset(o.preemptions))
        c = self.by_key.get(key)
        if c is None:
            self.by_key[key] = FailureClass(o.verdicts, key[1], o, 1, o.error)
            return
        c.schedules += 1
        if (_size(o), o.choices) < (_size(c.best), c.best.choices):
            c.best = o  # the order schedules arrive in never matters

    def folded(self) -> list[FailureClass]:
        """Classes with supersets folded into their subsets, smallest first."""
        items = sorted(
            self.by_key.values(), key=lambda c: (len(c.sites), _size(c.best), c.best.choices)
        )
        kept: list[FailureClass] = []
        for c in items:
            home = next((k for k in kept if k.verdicts == c.verdicts and k.sites <= c.sites), None)
            if home is None:
                kept.append(FailureClass(c.verdicts, c.sites, c.best, c.schedules, c.error))
            else:
                home.schedules += c.schedules
        return sorted(kept, key=lambda c: (c.verdicts, sorted(c.sites)))


@frozen
class Exploration:
    """What exploring one (scenario, arch, strategy) found."""

    arch: str
    strategy: str
    schedules: int
    seconds: float
    classes: tuple[FailureClass, ...]
    por: bool = False  # the reduction keyed this column's segments
    redundant: int = 0  # subtrees and runs it found equivalent to ones run


def por_applies(
    scenario: Scenario, arch: str, strategy: str, extra_plugins: Sequence[object] = ()
) -> bool:
    """Whether the reduction can key this column's segments (see :func:`_eligible`)."""
    return _eligible(arch, strategy, scenario, extra_plugins)


def explore(
    scenario: Scenario,
    arch: str,
    strategy: str,
    *,
    mode: str = "exhaustive",
    bound: int = 2,
    runs: int = 1000,
    seed: int = 0,
    depth: int = 3,
    extra_plugins: Sequence[object] = (),
    por: bool = True,
) -> Exploration:
    """Explore one column; see the module docstring.  ``extra_plugins``
    (exhaustive mode) are registered in every run; ``por``: the sleep-set
    reduction (exhaustive mode, where the column is eligible)."""
    t0 = time.perf_counter()
    exh = mode == "exhaustive"
    por = exh and por and por_applies(scenario, arch, strategy, extra_plugins)
    st = [0]
    gen = (
        exhaustive(scenario, arch, strategy, bound, extra_plugins=extra_plugins, por=por, stats=st)
        if exh
        else pct(scenario, arch, strategy, runs, depth, seed)
    )
    classes = Classes()
    n = 0
    for o in gen:
        if o.redundant:
            continue
        n += 1
        if o.failed:
            classes.add(o)
    return Exploration(
        arch, strategy, n, time.perf_counter() - t0, tuple(classes.folded()), por, st[0]
    )


Unit = tuple[Scenario, str, str, dict[str, Any]]


def _map_processes(units: list[Unit], jobs: int) -> list[tuple[int, list[Outcome], int]]:
    from concurrent.futures import ProcessPoolExecutor

    from kvmsim.matrix import _pool_context

    with ProcessPoolExecutor(jobs, mp_context=_pool_context()) as pool:
        return list(pool.map(_unit, units))


def _map_dask(units: list[Unit], scheduler: str) -> list[tuple[int, list[Outcome], int]]:
    """The units on a dask.distributed cluster, as the matrix's cells go
    (the same probe of the address first: one line, exit 2, never a hang)."""
    from kvmsim.matrix import connect_scheduler

    client = connect_scheduler(scheduler)
    try:
        futures = client.map(_unit, units, pure=False)
        return list(client.gather(futures))
    finally:
        client.close()


def _unit(job: Unit) -> tuple[int, list[Outcome], int]:
    sc, arch, strategy, kw = job
    st = [0]
    gen = (
        exhaustive(sc, arch, strategy, kw["bound"], kw["roots"], por=kw["por"], stats=st)
        if "roots" in kw
        else pct(sc, arch, strategy, kw["runs"], kw["depth"], kw["seed"])
    )
    n = 0
    failed = []
    for o in gen:
        if o.redundant:
            continue
        n += 1
        if o.failed:
            failed.append(o)
    return n, failed, st[0]


def explore_parallel(
    columns: Sequence[tuple[Scenario, str, str]],
    jobs: int,
    *,
    mode: str = "exhaustive",
    bound: int = 2,
    runs: int = 1000,
    seed: int = 0,
    depth: int = 3,
    scheduler: str | None = None,
    por: bool = True,
) -> list[Exploration]:
    """:func:`explore` of several columns with their schedules spread over
    ``jobs`` processes, or over a dask.distributed cluster's workers when
    ``scheduler`` names one (exhaustive: subtrees of the schedule tree;
    random: ranges of run numbers).  The classes, their counts and their
    smallest schedules are those one process finds, whatever the spread."""
    t0 = time.perf_counter()
    units: list[Unit] = []
    owner: list[int] = []
    counts = [0] * len(columns)
    redundant = [0] * len(columns)
    pors = [False] * len(columns)
    failed: list[list[Outcome]] = [[] for _ in columns]
    for k, (sc, arch, strategy) in enumerate(columns):
        if mode == "exhaustive":
            pors[k] = p = por and por_applies(sc, arch, strategy)
            root, kids, redundant[k] = split(sc, arch, strategy, bound, p)
            counts[k] = 1
            if root.failed:
                failed[k].append(root)
            per = max(1, len(kids) // max(1, jobs * 4))  # several subtrees per unit
            for i in range(0, len(kids), per):
                kw = {"bound": bound, "roots": kids[i : i + per], "por": p}
                units.append((sc, arch, strategy, kw))
                owner.append(k)
        else:
            per = max(1, runs // max(1, jobs * 4))
            for i in range(0, runs, per):
                r = range(i, min(runs, i + per))
                units.append((sc, arch, strategy, {"runs": r, "depth": depth, "seed": seed}))
                owner.append(k)
    done = _map_dask(units, scheduler) if scheduler else _map_processes(units, jobs)
    for k, (n, outs, red) in zip(owner, done, strict=True):
        counts[k] += n
        redundant[k] += red
        failed[k].extend(outs)
    seconds = time.perf_counter() - t0
    out = []
    for k, (_, arch, strategy) in enumerate(columns):
        classes = Classes()
        for o in sorted(failed[k], key=lambda o: o.choices):
            classes.add(o)
        out.append(
            Exploration(
                arch,
                strategy,
                counts[k],
                seconds,
                tuple(classes.folded()),
                pors[k],
                redundant[k],
            )
        )
    return out


__all__ = [
    "MODES",
    "Classes",
    "Exploration",
    "FailureClass",
    "Outcome",
    "explore",
    "explore_parallel",
    "por_applies",
    "run_schedule",
    "run_with",
    "split",
]
