"""The comparative matrix: every scenario under every applicable (arch, strategy).

:func:`plan` discovers what to run — arches and strategies through the
registry's entry points, scenarios through every ``kvmsim.scenarios`` library —
and :func:`run` runs the cells (in this process, in ``jobs`` processes, or on
a dask.distributed cluster) and classifies each one against the scenario's
expectations and its recorded known defects (``[[known]]``, see
:mod:`kvmsim.scenario.loader`):

``pass``
    every expectation held and no unexpected checker fired;
``kfail``
    the run failed exactly as a ``[[known]]`` record for this strategy says
    (a historical bug the strategy reproduces, faithfully);
``xpass``
    a ``[[known]]`` record applies but the run passed: the strategy no
    longer reproduces its bug, so the model or the record is wrong;
``fail``
    the run failed and matches no record: a simulator regression, or a
    defect nobody has recorded yet;
``error``
    something raised inside the cell (a plugin bug, or a scenario the arch
    cannot set up); the message names the plugins, the step and the last
    trace event, and every other cell still runs.

The matrix run is "green" (:attr:`MatrixResult.ok`) when no cell is
``fail``, ``xpass`` or ``error``.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

from attrs import define, field, frozen

from kvmsim.dirtylog import dirty_unsupported
from kvmsim.errors import KvmsimError, ScenarioError, UsageError, did_you_mean
from kvmsim.hooktypes import DirtyCaps
from kvmsim.scenario.model import DirtySpec

__all__ = [
    "STATUSES",
    "CellResult",
    "CellSpec",
    "Column",
    "ColumnFacts",
    "MatrixPlan",
    "MatrixResult",
    "ScenarioEntry",
    "classify",
    "library_scenarios",
    "plan",
    "run",
    "run_cell",
    "runnable_columns",
    "scenario_entry",
]

#: Cell statuses, in the order summaries list them.
STATUSES: Final = ("pass", "kfail", "fail", "xpass", "error")
#: Statuses that make a matrix run fail.
FAILING: Final = frozenset({"fail", "xpass", "error"})
#: Trace events kept per cell when traces are asked for (HTML, pytest).
TRACE_CAP: Final = 400
#: Bound on every event of a run; the cell already says them.
_BOUND_KEYS: Final = ("scenario", "arch", "strategy")


# ------------------------------------------------------------------ the plan


@frozen
class Column:
    """One (arch, strategy) pair the strategy applies to."""

    arch: str
    strategy: str

    @property
    def label(self) -> str:
        return f"{self.arch}/{self.strategy}"


@frozen
class ScenarioEntry:
    """A scenario file found in a library.

    :param name: the scenario's ``name`` (the row), or the file stem when the
        file does not load.
    :param path: the file.
    :param library: the ``kvmsim.scenarios`` entry-point name that shipped it.
    :param arch: the scenario's ``arch``; ``None`` runs it on every arch.
    :param error: why it cannot be loaded (its cells become ``error``).
    :param needs_linux: the first host release whose set-up ioctls the
        scenario needs (a userfaultfd MINOR registration); None: any.
    """

    name: str
    path: str
    library: str
    arch: str | None = None
    readonly_memslots: bool = False
    error: str | None = None
    dirty: DirtySpec | None = None  # a [dirty] set-up some versions lack
    needs_linux: tuple[int, int] | None = None


@frozen
class CellSpec:
    """One cell to run: picklable, so it can cross to a worker process."""

    scenario: str
    path: str
    arch: str
    strategy: str
    error: str | None = None  # set when the scenario cannot be loaded


@frozen
class MatrixPlan:
    """What :func:`run` will run, in display order."""

    scenarios: tuple[ScenarioEntry, ...]
    columns: tuple[Column, ...]
    cells: tuple[CellSpec, ...]
    notes: tuple[str, ...] = ()


def plural(n: int, noun: str) -> str:
    """``1 scenario``, ``2 scenarios``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _walk(node: Traversable, found: list[Path]) -> None:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            if child.name != "__pycache__":
                _walk(child, found)
        elif child.name.endswith(".toml"):
            found.append(Path(str(child)))


def library_files() -> list[tuple[str, Path]]:
    """Every ``*.toml`` of every ``kvmsim.scenarios`` library: (library, path)."""
    from kvmsim.registry import scenario_packages

    out: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for lib, module in scenario_packages():
        found: list[Path] = []
        _walk(resources.files(module), found)
        for p in found:
            if p not in seen:
                seen.add(p)
                out.append((lib, p))
    return out


def library_dists() -> dict[str, str]:
    """Each scenario library's distribution and version (``kvmsim 0.1.0``)."""
    from importlib.metadata import entry_points

    from kvmsim.registry import SCENARIO_GROUP, _dist_of

    return {ep.name: " ".join(_dist_of(ep)) for ep in entry_points(group=SCENARIO_GROUP)}


_loaded: dict[str, Any] = {}


def load_library_scenario(path: str) -> Any:
    """Load one scenario with every discovered device and plugin step kind
    (cached per process: a worker loads each file once)."""
    sc = _loaded.get(path)
    if sc is None:
        from kvmsim.registry import scenario_schema
        from kvmsim.scenario import load_scenario

        # the loader takes every installed plugin's step kinds by default
        sc = load_scenario(path, devices=scenario_schema()[1])
        _loaded[path] = sc
    return sc


def scenario_entry(sc: Any, path: str, library: str) -> ScenarioEntry:
    """The row of a loaded scenario: what :func:`plan` (and ``kvmsim
    explore``, through :func:`runnable_columns`) needs to decide where it
    runs."""
    from kvmsim.host.userfaultfd import scenario_min_linux

    return ScenarioEntry(
        sc.name,
        path,
        library,
        sc.arch,
        any(m.readonly for m in sc.memslots),
        dirty=None if sc.dirty == DirtySpec() else sc.dirty,
        needs_linux=scenario_min_linux(sc),
    )


def library_scenarios(files: Iterable[tuple[str, Path]] | None = None) -> list[ScenarioEntry]:
    """Load every library scenario; one that does not load is kept with its
    error (so the matrix shows it rather than silently dropping it)."""
    entries: list[ScenarioEntry] = []
    names: dict[str, ScenarioEntry] = {}
    for lib, path in library_files() if files is None else files:
        try:
            sc = load_library_scenario(str(path))
        except KvmsimError as exc:
            entries.append(ScenarioEntry(path.stem, str(path), lib, error=str(exc)))
            continue
        entry = scenario_entry(sc, str(path), lib)
        prev = names.get(sc.name)
        if prev is not None:
            entry = ScenarioEntry(
                f"{sc.name} ({lib}:{path.name})",
                str(path),
                lib,
                sc.arch,
                error=f"scenario name {sc.name!r} is also used by {prev.path}",
            )
        names.setdefault(sc.name, entry)
        entries.append(entry)
    return sorted(entries, key=lambda e: e.name)


def _columns(arches: Sequence[str] | None, strategies: Sequence[str] | None) -> list[Column]:
    from kvmsim.registry import discover, info_of, load

    found = discover()
    all_arches = sorted(found.get("arch", {}))
    all_strats = sorted(found.get("strategy", {}))
    for kind, wanted, available in (
        ("arch", arches, all_arches),
        ("strategy", strategies, all_strats),
    ):
        for name in wanted or ():
            if name not in available:
                from kvmsim.registry import lookup

                lookup(kind, name)  # raises the usual error with close matches
    use_arches = [a for a in all_arches if not arches or a in arches]
    use_strats = [s for s in all_strats if not strategies or s in strategies]
    applies: dict[str, Callable[[str], bool]] = {}
    for s in use_strats:
        try:
            info = info_of("strategy", load(found["strategy"][s]))
            applies[s] = info.applies_to
        except Exception:
            # A broken strategy gets a column on every arch; its cells say why.
            applies[s] = lambda _arch: True
    return [Column(a, s) for a in use_arches for s in use_strats if applies[s](a)]


def _dirty_caps(columns: Iterable[Column]) -> dict[Column, DirtyCaps | None]:
    """Each column's dirty-logging capabilities (the ``dirty_log_caps`` of
    its arch at the handler version its strategy selects), read from an
    empty simulation; a column that cannot build one is left out (its
    cells report why)."""
    from kvmsim.runner import Simulation
    from kvmsim.scenario import parse_scenario

    empty = parse_scenario('name = "dirty-caps"\n', "<dirty-caps>", step_kinds={})
    out: dict[Column, DirtyCaps | None] = {}
    for c in columns:
        try:
            sim = Simulation(empty, arch=c.arch, strategy=c.strategy)
        except KvmsimError:
            continue
        caps = sim.kvm.hooks.hook.dirty_log_caps(kvm=sim.kvm)
        out[c] = caps if isinstance(caps, DirtyCaps) else None
    return out


def _strategy_linux(columns: Iterable[Column]) -> dict[Column, tuple[int, int]]:
    """Each column's host mm release (``StrategyInfo.linux_for``); a strategy
    that does not load counts as the newest (its cells report why)."""
    from kvmsim.registry import discover, info_of, load

    out: dict[Column, tuple[int, int]] = {}
    for c in columns:
        try:
            info = info_of("strategy", load(discover()["strategy"][c.strategy]))
            out[c] = info.linux_for(c.arch)
        except KvmsimError:
            out[c] = (99, 0)
    return out


def _readonly_memslot_arches(arches: Iterable[str]) -> dict[str, bool]:
    """Which arches accept ``KVM_MEM_READONLY`` (``ArchInfo.readonly_memslots``);
    an arch that does not load is given the benefit of the doubt (its cells
    report why it does not load)."""
    from kvmsim.registry import discover, info_of, load

    out: dict[str, bool] = {}
    for a in arches:
        try:
            out[a] = bool(info_of("arch", load(discover()["arch"][a])).readonly_memslots)
        except KvmsimError:
            out[a] = True
    return out


@frozen
class ColumnFacts:
    """What decides whether a scenario can be set up under a column: the
    arch's read-only memslots, the column's dirty-logging capabilities and
    its host release.  Built once per set of columns."""

    readonly_ok: dict[str, bool]
    dirty_caps: dict[Column, DirtyCaps | None]
    linux: dict[Column, tuple[int, int]]

    @classmethod
    def of(cls, columns: Sequence[Column], *, dirty: bool) -> ColumnFacts:
        """:param dirty: some scenario has a ``[dirty]`` set-up (the
        capabilities cost a simulation per column, so only then)."""
        return cls(
            _readonly_memslot_arches({c.arch for c in columns}),
            _dirty_caps(columns) if dirty else {},
            _strategy_linux(columns),
        )


def runnable_columns(
    entry: ScenarioEntry, columns: Sequence[Column], facts: ColumnFacts
) -> list[tuple[Column, str | None]]:
    """The columns of ``entry``'s arch, each with None when the scenario runs
    there or the note saying why userspace could not even set it up on that
    kernel (the matrix lists the notes; ``kvmsim explore`` skips those
    columns the same way)."""
    out: list[tuple[Column, str | None]] = []
    for c in columns:
        if entry.arch is not None and entry.arch != c.arch:
            continue
        out.append((c, _not_run(entry, c, facts)))
    return out


def _not_run(e: ScenarioEntry, c: Column, facts: ColumnFacts) -> str | None:
    if e.readonly_memslots and not facts.readonly_ok[c.arch]:
        # userspace cannot create the VM: KVM_MEM_READONLY is -EINVAL there
        return f"{e.name}: {c.arch} has no read-only memslots; not run there"
    if e.dirty is not None and c in facts.dirty_caps:
        why = dirty_unsupported(e.dirty, facts.dirty_caps[c], c.arch)
        if why is not None:
            # userspace's KVM_ENABLE_CAP fails on that kernel
            return f"{e.name}: not run on {c.arch}/{c.strategy}: {why}"
    if e.needs_linux is not None and facts.linux[c] < e.needs_linux:
        # UFFDIO_REGISTER fails on that kernel: the VMM cannot set up
        major, minor = e.needs_linux
        return f"{e.name}: needs Linux v{major}.{minor}; not run under older kernels"
    return None


def plan(
    *,
    arches: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    scenarios: Sequence[str] | None = None,
    entries: Sequence[ScenarioEntry] | None = None,
) -> MatrixPlan:
    """Decide the rows, columns and cells.

    :param arches: only these arches (default: every discovered arch).
    :param strategies: only these strategies.
    :param scenarios: globs on scenario names (``gen-*``); default all.
    :param entries: the scenarios (default: every library's).
    :raises PluginError: an unknown arch or strategy name.
    :raises UsageError: the globs match no scenario.
    """
    columns = _columns(arches, strategies)
    all_entries = list(library_scenarios() if entries is None else entries)
    if scenarios:
        rows = [e for e in all_entries if any(fnmatch.fnmatchcase(e.name, g) for g in scenarios)]
        if not rows:
            raise UsageError(
                f"no scenario matches {', '.join(scenarios)} "
                f"(there are {len(all_entries)}; see kvmsim scenarios)"
            )
    else:
        rows = all_entries
    known_arches = {c.arch for c in columns}
    facts = ColumnFacts.of(columns, dirty=any(e.dirty for e in rows))
    notes: list[str] = []
    cells: list[CellSpec] = []
    for e in rows:
        if e.arch is not None and e.arch not in known_arches and e.error is None:
            if not arches:
                notes.append(f"{e.name}: arch {e.arch!r} is not installed; not run")
            continue
        for c, note in runnable_columns(e, columns, facts):
            if note is None:
                cells.append(CellSpec(e.name, e.path, c.arch, c.strategy, e.error))
            elif note not in notes:
                notes.append(note)
    used = {c.scenario for c in cells}
    return MatrixPlan(
        tuple(e for e in rows if e.name in used), tuple(columns), tuple(cells), tuple(notes)
    )


# ------------------------------------------------------------------ one cell


@define
class CellResult:
    """The outcome of one cell (the JSON contract is :meth:`to_json`)."""

    scenario: str
    arch: str
    strategy: str
    status: str  # one of STATUSES
    verdicts: list[str] = field(factory=list)  # checker verdicts fired, sorted
    outcomes: list[str | None] = field(factory=list)  # per step
    failures: list[str] = field(factory=list)  # "step N: <expect failure>"
    message: str = ""  # error: what raised; kfail/xpass: the known defect's reason
    steps: list[dict[str, Any]] = field(factory=list)  # RunReport step dicts
    trace: list[dict[str, Any]] | None = None
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.scenario, self.arch, self.strategy)

    def mismatch_keys(self) -> list[str]:
        """The ``expect`` keys that failed, once each, in order."""
        out: list[str] = []
        for f in self.failures:
            k = f.split(": ", 1)[-1].split(":", 1)[0]
            if k not in out:
                out.append(k)
        return out

    def to_json(self, *, full: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "scenario": self.scenario,
            "arch": self.arch,
            "strategy": self.strategy,
            "status": self.status,
            "verdicts": list(self.verdicts),
            "outcomes": list(self.outcomes),
            "failures": list(self.failures),
            "message": self.message,
        }
        if full:
            d["steps"] = self.steps
            d["trace"] = self.trace
        return d


def classify(report: Any, scenario: Any, arch: str, strategy: str) -> tuple[str, str]:
    """(status, message) of a finished run (a :class:`~kvmsim.runner.RunReport`)
    against *scenario*'s ``[[known]]`` records for *strategy* on *arch*."""
    records = scenario.known_for(strategy, arch)
    if report.passed:
        if records:
            return "xpass", f"known defect did not reproduce: {records[0].reason}"
        return "pass", ""
    verdicts = tuple(sorted({v.name for v in report.verdicts}))
    outcomes = {s.index: s.outcome for s in report.steps}
    failed: dict[int, tuple[str, ...]] = {}
    for s in report.steps:
        if s.expect_failures:
            failed[s.index] = tuple(sorted({f.split(":", 1)[0] for f in s.expect_failures}))
    for rec in records:
        if rec.verdicts != verdicts:
            continue
        if any((outcomes.get(i) or "none") != o for i, o in rec.outcomes):
            continue
        if any(failed.get(i, ()) != keys for i, keys in rec.failures):
            continue
        return "kfail", rec.reason
    return "fail", ""


def _trim(events: list[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    """Drop what every event repeats; keep the first and last events if long."""
    slim = [{k: v for k, v in e.items() if k not in _BOUND_KEYS} for e in events]
    if len(slim) <= cap:
        return slim
    head = cap // 4
    tail = cap - head - 1
    gap = {"event": "...", "omitted": len(slim) - head - tail}
    return [*slim[:head], gap, *slim[-tail:]]


def where_raised(exc: BaseException) -> str:
    """The innermost frame of a traceback, as ``module:function:line``."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"{Path(f.filename).name}:{f.name}:{f.lineno}"


def error_context(
    sc: Any,
    arch: str,
    strategy: str,
    *,
    extra_plugins: Sequence[object] = (),
    disabled: Sequence[str] = (),
) -> tuple[Any, int | None, str | None]:
    """Re-run a run that raised, with the trace on, to find the step it
    raised in and the last event before (runs are deterministic, so it fails
    again): ``(simulation or None, step or None, "event #seq" or None)``."""
    from kvmsim.runner import Simulation

    sim = None
    try:
        sim = Simulation(
            sc,
            arch=arch,
            strategy=strategy,
            trace=True,
            extra_plugins=extra_plugins,
            disabled=disabled,
        )
        sim.run()
    except Exception:
        pass
    if sim is None:
        return None, None, None
    last = sim.tracer.last()
    event = None if last is None else f"{last.get('event')} #{last.get('seq')}"
    return sim, sim.tracer.step, event


def run_cell(
    spec: CellSpec,
    *,
    trace: bool = False,
    trace_cap: int = TRACE_CAP,
    extra_plugins: Sequence[object] = (),
) -> CellResult:
    """Run one cell; never raises for anything a plugin or scenario does."""
    from kvmsim.runner import Simulation

    t0 = time.perf_counter()
    res = CellResult(spec.scenario, spec.arch, spec.strategy, "error")
    if spec.error is not None:
        res.message = spec.error
        return res
    try:
        sc = load_library_scenario(spec.path)
    except Exception as exc:
        res.message = f"{type(exc).__name__}: {exc}"
        return res
    try:
        sim = Simulation(
            sc, arch=spec.arch, strategy=spec.strategy, trace=trace, extra_plugins=extra_plugins
        )
        report = sim.run()
    except KvmsimError as exc:
        # bad plugin name, a scenario this arch cannot set up: one line
        res.message = str(exc)
        res.seconds = time.perf_counter() - t0
        return res
    except Exception as exc:
        again, step, event = error_context(
            sc, spec.arch, spec.strategy, extra_plugins=extra_plugins
        )
        devices = [d.kind for d in sc.devices]
        where = [f"plugins: arch {spec.arch}, strategy {spec.strategy}"]
        if devices:
            where.append(f"devices {', '.join(devices)}")
        if extra_plugins:
            where.append(f"{len(extra_plugins)} extra")
        ctx = []
        if step is not None:
            ctx.append(f"step {step}")
        if event is not None:
            ctx.append(f"after trace event {event}")
        at = where_raised(exc)
        if again is not None:
            from kvmsim.report.crash import culprit

            found = culprit(exc, again.pm)
            if found is not None:  # the plugin's own frame, in its hook
                ctx.insert(0, f"plugin {found[0]} in hook {found[1]}")
                at = found[2]
        res.message = (
            f"{type(exc).__name__}: {exc}"
            + (f" ({'; '.join(ctx)})" if ctx else "")
            + f" [{'; '.join(where)}]"
            + (f" at {at}" if at else "")
        )
        res.seconds = time.perf_counter() - t0
        return res
    res.status, res.message = classify(report, sc, spec.arch, spec.strategy)
    res.verdicts = sorted({v.name for v in report.verdicts})
    res.outcomes = [s.outcome for s in report.steps]
    res.failures = [f"step {s.index}: {f}" for s in report.steps for f in s.expect_failures]
    res.failures += [f"unexpected verdict at {u}" for u in report.unexpected]
    res.steps = [s.to_json() for s in report.steps]
    if trace:
        res.trace = _trim(report.events, trace_cap)
    res.seconds = time.perf_counter() - t0
    return res


def run_batch(
    specs: Sequence[CellSpec], trace: bool = False, trace_cap: int = TRACE_CAP
) -> list[CellResult]:
    """Run cells in order (the unit sent to a worker process or dask task)."""
    return [run_cell(s, trace=trace, trace_cap=trace_cap) for s in specs]


# ------------------------------------------------------------------ the whole


@define
class MatrixResult:
    """All cells of a run, with what it was asked to run."""

    plan: MatrixPlan
    cells: dict[tuple[str, str, str], CellResult]
    seconds: float = 0.0
    jobs: int = 1

    @property
    def summary(self) -> dict[str, int]:
        counts = Counter(c.status for c in self.cells.values())
        return {s: counts.get(s, 0) for s in STATUSES}

    @property
    def ok(self) -> bool:
        return not any(c.status in FAILING for c in self.cells.values())

    def ordered(self) -> list[CellResult]:
        """Cells in plan order (rows, then columns)."""
        return [
            self.cells[(s.scenario, s.arch, s.strategy)]
            for s in self.plan.cells
            if (s.scenario, s.arch, s.strategy) in self.cells
        ]

    def cell(self, scenario: str, column: Column) -> CellResult | None:
        return self.cells.get((scenario, column.arch, column.strategy))

    def summary_line(self) -> str:
        s = self.summary
        parts = ", ".join(f"{n} {k}" for k, n in s.items())
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{verdict}: {plural(len(self.cells), 'cell')} "
            f"({plural(len(self.plan.scenarios), 'scenario')} x "
            f"{plural(len(self.plan.columns), 'arch/strategy column')}): {parts}"
        )

    def to_json(self, *, full: bool = False) -> dict[str, Any]:
        return {
            "cells": [c.to_json(full=full) for c in self.ordered()],
            "summary": self.summary,
        }


def _batches(cells: Sequence[CellSpec], jobs: int) -> list[list[CellSpec]]:
    """Group cells by scenario (a worker then loads each file once), split so
    that there are several batches per worker for balance."""
    by_sc: dict[str, list[CellSpec]] = {}
    for c in cells:
        by_sc.setdefault(c.path, []).append(c)
    target = max(1, len(cells) // max(1, jobs * 8))
    out: list[list[CellSpec]] = []
    for group in by_sc.values():
        for i in range(0, len(group), target):
            out.append(group[i : i + target])
    # largest first: fewer stragglers at the end
    return sorted(out, key=len, reverse=True)


def _pool_context() -> Any:
    import multiprocessing as mp

    # fork inherits the plugins the parent already imported (fast start);
    # where it is unavailable or unsafe, the platform default.
    if sys.platform == "linux" and sys.version_info < (3, 12):
        return mp.get_context("fork")
    return mp.get_context("forkserver" if sys.platform == "linux" else None)


#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _set_pdeathsig(sig: int) -> bool:
    """Ask Linux to send *sig* to this process when its parent exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a pid reused by another user
        return True
    return True


def _watch_parent(matrix_pid: int, ppid: int, period: float = 1.0) -> None:
    """Fallback where prctl is unavailable: poll, and end with the parent."""
    import threading

    def watch() -> None:
        while os.getppid() == ppid and _alive(matrix_pid):
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name="kvmsim-parent-watch", daemon=True).start()


def _worker_init(matrix_pid: int) -> None:
    """Runs first in every worker process: the worker ends with the matrix
    process whatever ended it (SIGTERM from ``timeout`` or CI, SIGKILL, a
    crash), rather than wait for ever on the task queue (which the worker
    itself holds open).  With forkserver the parent is the fork server,
    which exits when the matrix process does."""
    import signal

    # a forked worker inherits the parent's SIGTERM handler: take the default
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ppid = os.getppid()
    if not _set_pdeathsig(signal.SIGKILL):
        _watch_parent(matrix_pid, ppid)
    if os.getppid() != ppid or not _alive(matrix_pid):
        os._exit(1)  # the parent died before prctl took effect


@contextmanager
def _workers_end_on_sigterm() -> Iterator[None]:
    """While the pool runs, SIGTERM first terminates the worker processes,
    then takes its previous effect (by default, ending this process)."""
    import multiprocessing
    import signal
    import threading

    prev = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or prev in (
        signal.SIG_IGN,
        None,
    ):
        # not ours to handle, or whoever started us wants SIGTERM ignored
        yield
        return

    def on_term(signum: int, _frame: Any) -> None:
        for child in multiprocessing.active_children():
            child.terminate()
        signal.signal(signal.SIGTERM, prev)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


def run(
    matrix_plan: MatrixPlan,
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    trace: bool = False,
    trace_cap: int = TRACE_CAP,
    progress: Callable[[int], None] | None = None,
) -> MatrixResult:
    """Run every cell of *matrix_plan*.

    :param jobs: worker processes (1: in this process).
    :param scheduler: a dask.distributed scheduler address; the cells run on
        that cluster's workers instead (``pip install 'kvmsim[dask]'``).
    :param trace: keep each cell's decision trace (capped at *trace_cap* events).
    :param progress: called with the number of cells just finished.
    """
    t0 = time.perf_counter()
    cells = matrix_plan.cells
    results: list[CellResult] = []
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: at least 1")
    if scheduler:
        results = _run_dask(cells, scheduler, jobs, trace, trace_cap, progress)
    elif jobs == 1 or len(cells) <= 1:
        for spec in cells:
            results.append(run_cell(spec, trace=trace, trace_cap=trace_cap))
            if progress is not None:
                progress(1)
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with (
            ProcessPoolExecutor(
                max_workers=jobs,
                mp_context=_pool_context(),
                initializer=_worker_init,
                initargs=(os.getpid(),),
            ) as pool,
            _workers_end_on_sigterm(),
        ):
            futures = [pool.submit(run_batch, b, trace, trace_cap) for b in _batches(cells, jobs)]
            for fut in as_completed(futures):
                done = fut.result()
                results.extend(done)
                if progress is not None:
                    progress(len(done))
    by_key = {r.key: r for r in results}
    return MatrixResult(matrix_plan, by_key, time.perf_counter() - t0, jobs)


def _run_dask(
    cells: Sequence[CellSpec],
    scheduler: str,
    jobs: int,
    trace: bool,
    trace_cap: int,
    progress: Callable[[int], None] | None,
) -> list[CellResult]:
    from distributed import as_completed

    client = connect_scheduler(scheduler)
    results: list[CellResult] = []
    try:
        nworkers = max(1, len(client.scheduler_info().get("workers", {})))
        batches = _batches(cells, max(jobs, nworkers))
        futures = client.map(run_batch, batches, trace=trace, trace_cap=trace_cap, pure=False)
        for fut in as_completed(futures):
            done = fut.result()
            results.extend(done)
            if progress is not None:
                progress(len(done))
    finally:
        client.close()
    return results


def connect_scheduler(scheduler: str) -> Any:
    """A ``distributed.Client`` on *scheduler*, after :func:`probe_scheduler`
    (the matrix's and the explorer's ``--scheduler``).

    :raises UsageError: dask.distributed is missing, or the address is not
        a dask scheduler or cannot be reached: one line.
    """
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'kvmsim[dask]'") from None
    probe_scheduler(scheduler)
    try:
        return Client(scheduler, timeout=SCHEDULER_TIMEOUT)
    except (OSError, TimeoutError, MemoryError, ValueError) as exc:
        raise UsageError(f"--scheduler {scheduler}: cannot connect: {exc}") from None


#: Seconds a ``--scheduler`` address has to accept and greet (each).
SCHEDULER_TIMEOUT: float = 10.0
#: A dask handshake is a few hundred bytes; a length word beyond this is not one.
_HANDSHAKE_MAX = 1 << 20


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Check, within *timeout* seconds, that a ``tcp://`` address (or a bare
    ``host:port``) answers as a dask scheduler does before dask is handed
    it: a scheduler sends its handshake first, a frame whose 8-byte
    little-endian length word is small.  An HTTP server sends nothing (dask
    would wait for ever), another service sends text (whose first bytes dask
    would read as a length of petabytes: MemoryError).  Other schemes (tls,
    ucx) are left to dask.

    :raises UsageError: one line naming the address and what it did.
    """
    import socket
    import struct

    timeout = SCHEDULER_TIMEOUT if timeout is None else timeout
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise UsageError(
            f"--scheduler {address}: expected tcp://HOST:PORT (a dask scheduler's address)"
        )

    def fail(why: str) -> UsageError:
        return UsageError(f"--scheduler {address}: {why}")

    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            head = b""
            while len(head) < 8:
                chunk = sock.recv(8 - len(head))
                if not chunk:
                    raise fail("the connection was closed without a dask handshake")
                head += chunk
    except TimeoutError:
        raise fail(f"no dask handshake within {timeout:g} s (not a dask scheduler?)") from None
    except OSError as exc:
        raise fail(f"cannot connect: {exc.strerror or exc}") from None
    (length,) = struct.unpack("<Q", head)
    if not 0 < length <= _HANDSHAKE_MAX:
        raise fail(f"answers {head!r}..., not a dask handshake (not a dask scheduler?)")


def default_jobs() -> int:
    """Worker processes by default: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_scenario(arg: str) -> str:
    """The file a ``SCENARIO`` argument names: a path as given, or the name of
    a scenario in any installed library (``kvmsim.scenarios`` entry points),
    by file name and then by its ``name`` key.  A name in two libraries, or a
    misspelt one, is an error; anything else is returned for the loader to
    report ("cannot read the file")."""
    p = Path(arg)
    if p.exists() or p.suffix == ".toml" or "/" in arg or os.sep in arg:
        return arg
    files = library_files()
    hits = [(lib, path) for lib, path in files if path.stem == arg]
    if not hits:  # a library whose file names differ from the scenario names
        hits = [
            (e.library, Path(e.path))
            for e in library_scenarios(files)
            if e.name == arg and e.error is None
        ]
    if len(hits) == 1:
        return str(hits[0][1])
    if hits:
        where = ", ".join(f"{lib} ({path})" for lib, path in hits)
        raise UsageError(f"scenario {arg!r} is in more than one library: {where}; give its file")
    hint = did_you_mean(arg, sorted({path.stem for _, path in files}))
    if hint:  # a misspelt library name, not a file: say what it may have meant
        raise UsageError(f"no file or library scenario {arg!r}{hint} (see kvmsim scenarios)")
    return arg


def find_entry(name: str) -> ScenarioEntry:
    """A library scenario by name (for ``kvmsim diff``)."""
    entries = library_scenarios()
    for e in entries:
        if e.name == name:
            if e.error:
                raise ScenarioError(f"scenario {name!r} cannot be loaded: {e.error}")
            return e
    hint = did_you_mean(name, (e.name for e in entries))
    raise UsageError(f"no library scenario {name!r}{hint} (see kvmsim scenarios)")
