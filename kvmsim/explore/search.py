"""Schedule search: every schedule within a preemption bound, or random ones.

A schedule is the list of choices the scheduler made, one per decision
(:class:`~kvmsim.explore.runtime.Decision`).  Runs are stateless: each
schedule runs from scratch, replaying a prefix of choices and taking the
default after it, so the search keeps nothing per schedule but the
failure classes.

- ``exhaustive``: a depth-first enumeration of every schedule with at most
  ``bound`` preemptions (choosing another actor at a yield point while the
  running one could go on; choices at a step's end, at the start or after
  a block are free), as CHESS-style bounded search does.  No partial-order
  reduction yet: schedules that differ only in the order of independent
  steps each run.
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

import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

from attrs import define, field, frozen

from kvmsim.explore.runtime import Decision, run_concurrent
from kvmsim.scenario.model import Scenario, Switch

MODES = ("exhaustive", "random")


@frozen
class Outcome:
    """One schedule's run: its choices, the switches that replay it, its
    preemptions ``(actor, point, to)`` and what it found."""

    choices: tuple[str, ...]
    switches: tuple[Switch, ...]
    preemptions: tuple[tuple[str, str, str], ...]
    verdicts: tuple[str, ...]
    error: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.verdicts) or self.error is not None


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


def run_with(
    scenario: Scenario,
    arch: str,
    strategy: str,
    choose: Any,
    *,
    trace: bool = False,
    extra_plugins: Sequence[object] = (),
) -> tuple[Outcome, list[tuple[Decision, str]], Any]:
    """Run ``scenario`` under the chooser ``choose``: the outcome (its
    choices, the switches that replay it, its preemptions, its verdicts),
    the decisions and the run's report (None when a plugin raised)."""
    from kvmsim.runner import Simulation

    sim = Simulation(
        scenario, arch=arch, strategy=strategy, trace=trace, extra_plugins=extra_plugins
    )
    error = None
    report = None
    try:
        report = run_concurrent(sim, choose)
        verdicts = tuple(sorted({v.name for v in report.verdicts}))
    except Exception as exc:  # a plugin raised inside this schedule: its own class
        error = f"{type(exc).__name__}: {exc}"
        verdicts = ("error",)
    decisions = list(sim.schedule_decisions)
    switches = tuple(
        Switch(actor=d.actor or "", at=d.point, run=c, nth=d.nth)
        for d, c in decisions
        if c != d.default
    )
    pre = tuple((d.actor or "", d.point, c) for d, c in decisions if d.preemptive and c != d.actor)
    out = Outcome(tuple(c for _, c in decisions), switches, pre, verdicts, error)
    return out, decisions, report


def _children(
    prefix: tuple[str, ...],
    out: Outcome,
    decisions: list[tuple[Decision, str]],
    bound: int,
) -> list[tuple[str, ...]]:
    """The prefixes of the subtrees below ``prefix``'s run: at every decision
    past the prefix, each other runnable actor the bound still allows."""
    found: list[tuple[str, ...]] = []
    used = 0
    for i, (d, chosen) in enumerate(decisions):
        if i >= len(prefix):
            for alt in reversed(d.runnable):
                if alt == chosen:
                    continue
                cost = 1 if d.preemptive and alt != d.actor else 0
                if used + cost <= bound:
                    found.append((*out.choices[:i], alt))
        if d.preemptive and chosen != d.actor:
            used += 1
    return found


def exhaustive(
    scenario: Scenario,
    arch: str,
    strategy: str,
    bound: int,
    roots: Sequence[tuple[str, ...]] = ((),),
    extra_plugins: Sequence[object] = (),
) -> Iterator[Outcome]:
    """Every schedule with at most ``bound`` preemptions in the subtrees
    ``roots`` (default: the whole tree), each exactly once, depth first
    (``extra_plugins``: registered in every run, e.g. a seeded bug)."""
    stack = list(reversed(roots))
    while stack:
        prefix = stack.pop()
        out, decisions, _ = run_schedule(
            scenario, arch, strategy, prefix, extra_plugins=extra_plugins
        )
        yield out
        stack.extend(_children(prefix, out, decisions, bound))


def split(
    scenario: Scenario, arch: str, strategy: str, bound: int
) -> tuple[Outcome, list[tuple[str, ...]]]:
    """The default schedule's run and the subtrees below it: units that
    :func:`exhaustive` explores independently (in other processes)."""
    out, decisions, _ = run_schedule(scenario, arch, strategy, ())
    return out, _children((), out, decisions, bound)


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
) -> Exploration:
    """Explore one column; see the module docstring.  ``extra_plugins``
    (exhaustive mode) are registered in every run."""
    t0 = time.perf_counter()
    gen = (
        exhaustive(scenario, arch, strategy, bound, extra_plugins=extra_plugins)
        if mode == "exhaustive"
        else pct(scenario, arch, strategy, runs, depth, seed)
    )
    classes = Classes()
    n = 0
    for o in gen:
        n += 1
        if o.failed:
            classes.add(o)
    return Exploration(arch, strategy, n, time.perf_counter() - t0, tuple(classes.folded()))


Unit = tuple[Scenario, str, str, dict[str, Any]]


def _map_processes(units: list[Unit], jobs: int) -> list[tuple[int, list[Outcome]]]:
    from concurrent.futures import ProcessPoolExecutor

    from kvmsim.matrix import _pool_context

    with ProcessPoolExecutor(jobs, mp_context=_pool_context()) as pool:
        return list(pool.map(_unit, units))


def _map_dask(units: list[Unit], scheduler: str) -> list[tuple[int, list[Outcome]]]:
    """The units on a dask.distributed cluster, as the matrix's cells go
    (the same probe of the address first: one line, exit 2, never a hang)."""
    from kvmsim.matrix import connect_scheduler

    client = connect_scheduler(scheduler)
    try:
        futures = client.map(_unit, units, pure=False)
        return list(client.gather(futures))
    finally:
        client.close()


def _unit(job: Unit) -> tuple[int, list[Outcome]]:
    sc, arch, strategy, kw = job
    gen = (
        exhaustive(sc, arch, strategy, kw["bound"], kw["roots"])
        if "roots" in kw
        else pct(sc, arch, strategy, kw["runs"], kw["depth"], kw["seed"])
    )
    n = 0
    failed = []
    for o in gen:
        n += 1
        if o.failed:
            failed.append(o)
    return n, failed


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
    failed: list[list[Outcome]] = [[] for _ in columns]
    for k, (sc, arch, strategy) in enumerate(columns):
        if mode == "exhaustive":
            root, kids = split(sc, arch, strategy, bound)
            counts[k] = 1
            if root.failed:
                failed[k].append(root)
            per = max(1, len(kids) // max(1, jobs * 4))  # several subtrees per unit
            for i in range(0, len(kids), per):
                units.append((sc, arch, strategy, {"bound": bound, "roots": kids[i : i + per]}))
                owner.append(k)
        else:
            per = max(1, runs // max(1, jobs * 4))
            for i in range(0, runs, per):
                r = range(i, min(runs, i + per))
                units.append((sc, arch, strategy, {"runs": r, "depth": depth, "seed": seed}))
                owner.append(k)
    done = _map_dask(units, scheduler) if scheduler else _map_processes(units, jobs)
    for k, (n, outs) in zip(owner, done, strict=True):
        counts[k] += n
        failed[k].extend(outs)
    seconds = time.perf_counter() - t0
    out = []
    for k, (_, arch, strategy) in enumerate(columns):
        classes = Classes()
        for o in sorted(failed[k], key=lambda o: o.choices):
            classes.add(o)
        out.append(Exploration(arch, strategy, counts[k], seconds, tuple(classes.folded())))
    return out


__all__ = [
    "MODES",
    "Classes",
    "Exploration",
    "FailureClass",
    "Outcome",
    "explore",
    "explore_parallel",
    "run_schedule",
    "run_with",
    "split",
]
