"""``kvmsim bench``: throughput and memory of the fault path (issue 11).

Workloads, modelled on the kernel's KVM selftests
(``tools/testing/selftests/kvm``):

- ``demand_paging`` (demand_paging_test): N vcpus, each writing every page
  of its own slice of guest memory once; every access is a first-touch
  stage-2 fault that faults the host page in through ``hva_to_pfn``.
- ``reaccess``: demand-page everything (untimed), then access every page
  again; every access is a translate hit.  Also reports raw ``translate``
  calls per second (the arch hook alone, what the hit target is about), and
  the memory per page after the re-access rounds
  (``bytes_per_page_after_rounds``: what caching hit Translations costs).
- ``dirty_log`` (dirty_log_test; every arch with dirty logging):
  demand-page, enable dirty logging on the slot, then rounds of "every
  vcpu writes its slice, then QEMU harvests" (``KVM_GET_DIRTY_LOG``, or a
  dirty-ring reap), through the core ``dirty_log`` step, once per
  mechanism the (arch, version) has (``mechanisms``: pages dirtied per
  second and the harvest's cost per round, side by side).
- ``matrix``: the whole scenario matrix (:mod:`kvmsim.matrix`), timed.
- ``dispatch``: the demand-paging fault path three ways in one run: as
  shipped (the per-simulation Dispatcher), hand-wired with direct calls to
  the plugins' functions, and through pluggy's relay on every call.
- ``runs``: whole scenarios (set-up, every step, the checkers) run again
  and again in one process: runs per second, and the memory grown over
  the first and the second half of the runs (flat when a finished
  simulation frees everything).  One scenario (``--scenario NAME``,
  default :data:`RUNS_SCENARIO`) or every builtin one (``--scenario all``)
  that applies to the (arch, strategy).
- ``explore``: bounded-exhaustive exploration (``kvmsim explore``) of a
  race-free base (``--scenario NAME``, default :data:`EXPLORE_SCENARIO`;
  ``all`` for every concurrent builtin scenario) under the column given,
  or every column it applies to without ``--arch``/``--strategy``;
  ``--jobs`` spreads the schedules: schedules per second, classes found, and
  the memory grown (flat: nothing is kept per schedule but the classes).
- ``trace_off``: demand paging with tracing off, as shipped and in a copy
  of the packages with every trace guard and emit removed
  (:mod:`kvmsim.tracestrip`), each in its own process, interleaved.

Every figure is wall time of one process, or with ``--instructions``
(demand_paging, trace_off) instructions per fault counted by callgrind;
nothing here is asserted by a unit test (tests/bench checks the JSON's
shape and the arithmetic).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmsim.errors import UsageError
from kvmsim.scenario.sizes import format_size, parse_size

WORKLOADS = (
    "demand_paging",
    "reaccess",
    "dirty_log",
    "matrix",
    "dispatch",
    "trace_off",
    "runs",
    "explore",
)
EXPLORE_SCENARIO = "gen-base-munmap-first-touch"
RUNS_SCENARIO = "gen-race-munmap-before-create-pte"
RUNS_ARCH = "x86_ept"  # the run-cost issue's reference column
KEYS = (
    "workload",
    "arch",
    "strategy",
    "page_size",
    "pages",
    "vcpus",
    "trace",
    "seconds",
    "faults_per_s",
    "hits_per_s",
    "bytes_per_page",
)

_SCENARIO = """
name = "bench-{workload}"
description = "anonymous guest RAM for kvmsim bench"
arch = "{arch}"
[[vma]]
name = "ram"
size = {size}
backing = "{backing}"
prot = "rw"
{huge}
[[memslot]]
gpa = 0
vma = "ram"
"""


def _rss() -> int:
    """Resident set size now, in bytes (Linux ``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Mem:
    """Memory grown by a workload: RSS by default, tracemalloc on request
    (exact Python allocations, but it slows everything ~2x)."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.tracemalloc: Any = None
        gc.collect()
        if exact:
            import tracemalloc  # not at the top: ``kvmsim --help`` imports this module

            self.tracemalloc = tracemalloc
            tracemalloc.start()
            self.base = self.tracemalloc.get_traced_memory()[0]
        else:
            self.base = _rss()

    def now(self) -> int:
        """Growth so far; measuring goes on."""
        if self.exact:
            return self.tracemalloc.get_traced_memory()[0] - self.base
        return max(0, _rss() - self.base)

    def grown(self) -> int:
        if self.exact:
            cur = self.tracemalloc.get_traced_memory()[0]
            self.tracemalloc.stop()
            return cur - self.base
        return max(0, _rss() - self.base)


def _build(
    args: Any, *, direct: bool = True, trace: bool | None = None, extra: str = ""
) -> tuple[Any, int, int]:
    """The simulation for one guest of ``args.mem`` bytes: ``(sim, pages,
    page_size)``, where a page is the arch's base page or ``--page-size``."""
    from kvmsim.registry import build_manager
    from kvmsim.runner import build_sim

    _, a_info, _ = build_manager(arch=args.arch, strategy=args.strategy)
    base = 1 << a_info.page_shift
    psize = args.page_size or base
    if psize < base or psize & (psize - 1):
        raise UsageError(
            f"--page-size {format_size(psize)}: {args.arch} pages are {format_size(base)}; "
            "give the base page size or a larger power of two (a hugetlbfs backing)"
        )
    if args.mem < psize or args.mem % psize:
        raise UsageError(
            f"--mem {format_size(args.mem)}: must be a positive multiple of the page size "
            f"{format_size(psize)}"
        )
    huge = f'huge = "{psize >> 10}K"' if psize > base else ""
    text = _SCENARIO.format(
        workload=args.workload,
        arch=args.arch,
        size=args.mem,
        backing="hugetlbfs" if psize > base else "anon",
        huge=huge,
    )
    sim = build_sim(
        text + extra,
        strategy=args.strategy,
        trace=args.trace if trace is None else trace,
        direct=direct,
    )
    sim.kvm.nr_vcpus = args.vcpus
    return sim, args.mem // psize, psize


def _slices(pages: int, vcpus: int, psize: int) -> list[tuple[int, range]]:
    """Each vcpu's slice of guest memory, as demand_paging_test splits it."""
    per = pages // vcpus
    out = []
    for v in range(vcpus):
        lo = v * per
        hi = pages if v == vcpus - 1 else lo + per
        out.append((v, range(lo * psize, hi * psize, psize)))
    return out


def _touch(sim: Any, slices: list[tuple[int, range]], op: str = "write") -> tuple[int, int]:
    """Every vcpu accesses every page of its slice once: ``(faults, accesses)``.

    :raises RuntimeError: an access did not complete through stage 2 (the
        benchmark measures the mapped path only).
    """
    from kvmsim.kvm.vcpu import guest_access

    kvm = sim.kvm
    mm = sim.mm
    faults = 0
    n = 0
    for vcpu, gpas in slices:
        mm.current = f"vcpu{vcpu}"
        for gpa in gpas:
            r = guest_access(kvm, vcpu, gpa, gpa, op)
            if r.outcome != "mapped":
                raise RuntimeError(f"access to {gpa:#x} ended {r.outcome}: {r.detail}")
            faults += r.faults
        n += len(gpas)
    mm.current = "qemu"
    return faults, n


def _finish_trace(sim: Any) -> float:
    """Write the run's trace as JSON Lines (to a temp file); seconds spent."""
    from kvmsim.trace import write_trace

    t0 = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        write_trace(Path(d) / "bench.jsonl", sim.tracer.events)
    return time.perf_counter() - t0


def _result(args: Any, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "workload": args.workload,
        "arch": args.arch,
        "strategy": args.strategy,
        "page_size": None,
        "pages": None,
        "vcpus": args.vcpus,
        "trace": bool(args.trace),
        "seconds": None,
        "faults_per_s": None,
        "hits_per_s": None,
        "bytes_per_page": None,
    }
    out.update(kw)
    return out


def _rate(n: int, dt: float) -> float:
    return round(n / dt, 1) if dt > 0 else 0.0


# ---------------------------------------------------------------- workloads


def demand_paging(args: Any) -> dict[str, Any]:
    if getattr(args, "instructions", False):
        r, per = _instructions_per_fault(None, args)
        r.update(instructions_per_fault=round(per))
        return r
    sim, pages, psize = _build(args)
    mem = _Mem(args.tracemalloc)  # after set-up: per-simulation state is not per page
    sl = _slices(pages, args.vcpus, psize)
    t0 = time.perf_counter()
    faults, _ = _touch(sim, sl)
    dt = time.perf_counter() - t0
    if args.trace:
        dt += _finish_trace(sim)
    grown = mem.grown()
    return _result(
        args,
        page_size=psize,
        pages=pages,
        seconds=round(dt, 4),
        faults_per_s=_rate(faults, dt),
        bytes_per_page=round(grown / pages, 1),
        faults=faults,
        us_per_fault=round(dt / faults * 1e6, 2) if faults else None,
        memory_method="tracemalloc" if args.tracemalloc else "rss",
    )


def reaccess(args: Any) -> dict[str, Any]:
    sim, pages, psize = _build(args)
    mem = _Mem(args.tracemalloc)  # after set-up: per-simulation state is not per page
    sl = _slices(pages, args.vcpus, psize)
    _touch(sim, sl)
    grown = mem.now()
    rounds = max(1, args.rounds)
    t0 = time.perf_counter()
    faults = 0
    hits = 0
    for _ in range(rounds):
        f, n = _touch(sim, sl, "read")
        faults += f
        hits += n - f
    dt = time.perf_counter() - t0
    # what re-accessing added (an arch's cache of hit Translations)
    grown_after = mem.grown()
    # the translate hook alone on mapped addresses (the arch's walk)
    kvm = sim.kvm
    translate = kvm.hooks.translate
    t1 = time.perf_counter()
    ncalls = 0
    for _ in range(rounds):
        for vcpu, gpas in sl:
            for gpa in gpas:
                translate(kvm=kvm, vcpu=vcpu, gpa=gpa, ea=gpa, op="read")
            ncalls += len(gpas)
    dt_t = time.perf_counter() - t1
    if args.trace:
        dt += _finish_trace(sim)
    return _result(
        args,
        page_size=psize,
        pages=pages,
        seconds=round(dt, 4),
        faults_per_s=_rate(faults, dt) if faults else None,
        hits_per_s=_rate(hits, dt),
        bytes_per_page=round(grown / pages, 1),
        bytes_per_page_after_rounds=round(grown_after / pages, 1),
        translate_per_s=_rate(ncalls, dt_t),
        rounds=rounds,
        memory_method="tracemalloc" if args.tracemalloc else "rss",
    )


def dirty_log(args: Any) -> dict[str, Any]:
    """Every mechanism the (arch, version) has, side by side: per mode,
    pages dirtied per second (the stores of the timed rounds) and the
    harvest's cost per round; the top-level figures are the default
    mode's (what this workload measured before it had modes)."""
    sim, _, _ = _build(args, trace=False)
    caps = sim.kvm.dirty.caps
    if caps is None:
        raise UsageError(
            f"--workload dirty_log: arch {args.arch!r} has no dirty logging (try --arch x86_ept)"
        )
    runs = [_dirty_log_mode(args, mode) for mode in caps.modes]
    out = dict(runs[0])
    out["mechanisms"] = runs
    return out


def _dirty_log_mode(args: Any, mode: str) -> dict[str, Any]:
    """dirty_log_test for one mechanism: demand-page (untimed), enable
    logging, then rounds of "every vcpu writes its slice, then QEMU
    harvests" (KVM_GET_DIRTY_LOG, or a ring reap)."""
    from kvmsim.dirtylog import run_step as run_dirty_step
    from kvmsim.scenario.model import Params, StepSpec

    ring = mode == "ring"
    extra = f'\n[dirty]\nmode = "{mode}"\n' + ("ring_size = 65536\n" if ring else "")
    sim, pages, psize = _build(args, extra=extra)
    mem = _Mem(args.tracemalloc)  # after set-up: per-simulation state is not per page
    sl = _slices(pages, args.vcpus, psize)
    _touch(sim, sl)
    grown = mem.grown()
    kvm = sim.kvm
    idx = [0]

    def ioctl(action: str) -> Any:
        idx[0] += 1
        params: dict[str, object] = {"action": action}
        if action != "reap":
            params["slot"] = 0
        step = StepSpec(idx[0], "dirty_log", params=Params.of(params))
        r = run_dirty_step(kvm, step)
        if r.outcome != "done":
            raise RuntimeError(f"dirty_log {action}: {r}")
        return r

    sim.mm.current = "qemu"
    ioctl("enable")
    rounds = max(1, args.rounds)
    faults = 0
    hits = 0
    dt_store = dt_harvest = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        f, n = _touch(sim, sl)
        t1 = time.perf_counter()
        faults += f
        hits += n - f
        sim.mm.current = "qemu"
        ioctl("reap" if ring else "get")
        dt_store += t1 - t0
        dt_harvest += time.perf_counter() - t1
    dt = dt_store + dt_harvest
    if args.trace:
        dt += _finish_trace(sim)
    lost = len(kvm.dirty.ledger.lost)
    return _result(
        args,
        mode=mode,
        page_size=psize,
        pages=pages,
        seconds=round(dt, 4),
        faults_per_s=_rate(faults, dt),
        hits_per_s=_rate(hits, dt) if hits else None,
        pages_dirtied_per_s=_rate(pages * rounds, dt_store),
        harvest_ms_per_round=round(1000 * dt_harvest / rounds, 3),
        lost_dirty=lost,
        bytes_per_page=round(grown / pages, 1),
        rounds=rounds,
        faults=faults,
        memory_method="tracemalloc" if args.tracemalloc else "rss",
    )


def matrix(args: Any) -> dict[str, Any]:
    from kvmsim import matrix as mx

    p = mx.plan(
        arches=[args.arch] if args.arch_given else None,
        strategies=[args.strategy] if args.strategy_given else None,
    )
    t0 = time.perf_counter()
    res = mx.run(p, jobs=args.jobs, trace=args.trace)
    dt = time.perf_counter() - t0
    out = _result(args, seconds=round(dt, 3))
    out.update(
        arch=args.arch if args.arch_given else None,
        strategy=args.strategy if args.strategy_given else None,
        vcpus=None,
        cells=len(p.cells),
        cells_per_s=_rate(len(p.cells), dt),
        jobs=args.jobs,
        summary=res.summary_line(),
    )
    return out


class _HandWired:
    """The hot hooks wired by hand to the plugins' functions (what the
    Dispatcher would be if it cost nothing); every other hook via pluggy."""

    def __init__(self, pm: Any) -> None:
        from kvmsim.registry import HOT_HOOKS

        self.hook = pm.hook
        for name in HOT_HOOKS:
            impls = getattr(pm.hook, name).get_hookimpls()
            fn = impls[0].function if len(impls) == 1 else getattr(pm.hook, name)
            setattr(self, name, fn)
        self.notifier_invalidate = pm.hook.notifier_invalidate
        self.notifier_change_pte = pm.hook.notifier_change_pte

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hook, name)


def dispatch(args: Any) -> dict[str, Any]:
    """The demand-paging fault path three ways, interleaved (best of
    ``--rounds``), so the machine's state affects all three alike."""
    modes: dict[str, Callable[[], Any]] = {
        "dispatcher": lambda: _build(args, trace=False),
        "direct": lambda: _hand_wired(args),
        "pluggy": lambda: _build(args, direct=False, trace=False),
    }
    best: dict[str, float] = {}
    pages = psize = faults = 0
    for _ in range(max(1, args.rounds)):
        for mode, make in modes.items():
            sim, pages, psize = make()
            sl = _slices(pages, args.vcpus, psize)
            gc.collect()
            t0 = time.perf_counter()
            faults, _ = _touch(sim, sl)
            dt = time.perf_counter() - t0
            best[mode] = min(best.get(mode, dt), dt)
            del sim
    rates = {m: _rate(faults, dt) for m, dt in best.items()}
    return _result(
        args,
        page_size=psize,
        pages=pages,
        trace=False,
        seconds=round(best["dispatcher"], 4),
        faults_per_s=rates["dispatcher"],
        direct_faults_per_s=rates["direct"],
        pluggy_faults_per_s=rates["pluggy"],
        dispatcher_vs_direct=round(best["dispatcher"] / best["direct"], 3),
        pluggy_vs_direct=round(best["pluggy"] / best["direct"], 3),
    )


def _hand_wired(args: Any) -> tuple[Any, int, int]:
    sim, pages, psize = _build(args, trace=False)
    sim.hooks = sim.kvm.hooks = _HandWired(sim.pm)
    return sim, pages, psize


_CHILD = """
import json, sys
from pathlib import Path
import kvmsim, kvmsim_plugins
from kvmsim.bench import demand_paging
root = Path(sys.argv[1]).resolve() if sys.argv[1] else None
for mod in (kvmsim, kvmsim_plugins) if root else ():
    if root not in Path(mod.__path__[0]).resolve().parents:
        sys.exit(f"{mod.__name__} was imported from {mod.__path__[0]}, not the copy in {root}")
args = type("Args", (), json.loads(sys.argv[2]))()
print(json.dumps(demand_paging(args)))
"""


def _child_figures(
    root: Path | None, args: Any, mem: int, *, count: bool = False
) -> dict[str, Any]:
    """Run demand paging of ``mem`` bytes in a fresh interpreter on the
    packages under ``root`` (None: the installed ones); with ``count``, under
    callgrind, adding the process's instruction count as ``instructions``."""
    import re
    import shutil
    import subprocess

    fields = {k: getattr(args, k) for k in ("workload", "arch", "strategy", "page_size", "vcpus")}
    # trace_off always runs untraced; demand_paging --trace counts the trace too
    fields.update(mem=mem, trace=args.workload != "trace_off" and args.trace, tracemalloc=False)
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every child
    cmd = [sys.executable, "-c", _CHILD, str(root or ""), json.dumps(fields)]
    if count:
        valgrind = shutil.which("valgrind")
        if valgrind is None:
            raise UsageError("--instructions needs valgrind (callgrind) on PATH")
        cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
    import tempfile

    with tempfile.TemporaryDirectory() as empty:
        proc = subprocess.run(
            cmd,
            env=env,
            # ``-c`` puts the working directory first on sys.path
            cwd=empty if root is None else root,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"bench child failed (exit {proc.returncode}): {last}")
    result: dict[str, Any] = json.loads(proc.stdout)
    if count:
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if m is None:
            raise RuntimeError("bench child: callgrind printed no instruction count")
        result["instructions"] = int(m.group(1))
    return result


def _instructions_per_fault(root: Path | None, args: Any) -> tuple[dict[str, Any], float]:
    """Instructions per fault under callgrind: the difference between a
    run of ``--mem`` and one of half that, so start-up and set-up cancel
    out.  Returns the ``--mem`` run's figures (its wall-time figures are
    callgrind's, ~100x slow) and the instructions per fault."""
    small = _child_figures(root, args, args.mem // 2, count=True)
    big = _child_figures(root, args, args.mem, count=True)
    per = (big["instructions"] - small["instructions"]) / (big["faults"] - small["faults"])
    return big, per


def trace_off(args: Any) -> dict[str, Any]:
    """Tracing off as shipped vs the same packages with the trace calls
    removed, each in a fresh interpreter (neither inherits the other's
    caches).  Wall time: interleaved, best of ``--rounds``.  With
    ``--instructions``: instructions per fault under callgrind
    (:func:`_instructions_per_fault`), repeatable whatever else the machine
    runs."""
    import kvmsim_plugins

    import kvmsim
    from kvmsim.tracestrip import copy_packages

    packages = {
        "kvmsim": Path(kvmsim.__path__[0]),
        "kvmsim_plugins": Path(kvmsim_plugins.__path__[0]),
    }
    best: dict[str, dict[str, Any]] = {}
    per_fault: dict[str, float] = {}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        roots = {"shipped": Path(d) / "shipped", "removed": Path(d) / "removed"}
        copy_packages(packages, roots["shipped"], strip=False)
        sites = copy_packages(packages, roots["removed"], strip=True)
        if args.instructions:
            for mode, root in roots.items():
                best[mode], per_fault[mode] = _instructions_per_fault(root, args)
        else:
            for _ in range(max(1, args.rounds)):
                for mode, root in roots.items():
                    r = _child_figures(root, args, args.mem)
                    if mode not in best or r["seconds"] < best[mode]["seconds"]:
                        best[mode] = r
    shipped, removed = best["shipped"], best["removed"]
    if shipped["faults"] != removed["faults"]:
        # the guards are false with tracing off: removing them must change nothing
        raise RuntimeError(
            f"trace_off: {shipped['faults']} faults as shipped, {removed['faults']} without trace"
        )
    out = _result(
        args,
        page_size=shipped["page_size"],
        pages=shipped["pages"],
        trace=False,
        seconds=shipped["seconds"],
        faults_per_s=shipped["faults_per_s"],
        removed_faults_per_s=removed["faults_per_s"],
        off_vs_removed=round(shipped["seconds"] / removed["seconds"], 3),
        trace_sites_removed=sites,
    )
    if per_fault:
        out.update(
            instructions_per_fault=round(per_fault["shipped"]),
            removed_instructions_per_fault=round(per_fault["removed"]),
            off_vs_removed_instructions=round(per_fault["shipped"] / per_fault["removed"], 4),
        )
    return out


def _runs_scenarios(args: Any) -> list[tuple[str, Any]]:
    """``(name, scenario)`` for ``--scenario`` under the selected column,
    loaded as the matrix loads them."""
    from kvmsim import matrix as mx

    wanted = args.scenario or RUNS_SCENARIO
    p = mx.plan(
        arches=[args.arch],
        strategies=[args.strategy],
        scenarios=None if wanted == "all" else [wanted],
    )
    cells = [c for c in p.cells if c.error is None]
    if not cells:
        raise UsageError(
            f"--scenario {wanted}: does not apply to arch {args.arch!r} with strategy "
            f"{args.strategy!r}"
        )
    return [(c.scenario, mx.load_library_scenario(c.path)) for c in cells]


def runs(args: Any) -> dict[str, Any]:
    """Whole-scenario runs per second, the run-cost issue's workload: each
    run builds its own host, VM and tracer over the process's shared plugin
    set, runs every step and the checkers, and is dropped.  The first run of
    each scenario (which builds the plugin set) is not timed."""
    from kvmsim.runner import Simulation

    chosen = _runs_scenarios(args)
    n = args.runs
    arch, strategy, trace = args.arch, args.strategy, args.trace

    def one(sc: Any) -> None:
        Simulation(sc, arch=arch, strategy=strategy, trace=trace).run()

    for _, sc in chosen:  # warm-up: plugin sets, first-use imports
        one(sc)
    order = [sc for _, sc in chosen]
    k = len(order)
    mem = _Mem(args.tracemalloc)
    half = n // 2
    t0 = time.perf_counter()
    for i in range(half):
        one(order[i % k])
    t_half = time.perf_counter()
    first_half = mem.now()
    for i in range(half, n):
        one(order[i % k])
    dt = time.perf_counter() - t0
    second = time.perf_counter() - t_half
    total = mem.grown()
    return _result(
        args,
        vcpus=None,
        scenario=args.scenario or RUNS_SCENARIO,
        scenarios=len(chosen),
        runs=n,
        seconds=round(dt, 4),
        runs_per_s=_rate(n, dt),
        us_per_run=round(dt / n * 1e6, 1),
        second_half_runs_per_s=_rate(n - half, second),
        memory_first_half=first_half,
        memory_second_half=max(0, total - first_half),
        bytes_per_run_second_half=round(max(0, total - first_half) / max(1, n - half), 2),
        memory_method="tracemalloc" if args.tracemalloc else "rss",
    )


def _explore_column(job: tuple[str, str, str, int, bool]) -> tuple[int, int, int]:
    from kvmsim import matrix as mx
    from kvmsim.explore.search import explore

    path, arch, strategy, bound, por = job
    e = explore(mx.load_library_scenario(path), arch, strategy, bound=bound, por=por)
    return e.schedules, len(e.classes), e.redundant


def explore_bench(args: Any) -> dict[str, Any]:
    """Schedules per second of ``kvmsim explore``'s exhaustive search."""
    from kvmsim import matrix as mx

    wanted = args.scenario or EXPLORE_SCENARIO
    p = mx.plan(
        arches=[args.arch] if args.arch_given else None,
        strategies=[args.strategy] if args.strategy_given else None,
        scenarios=None if wanted == "all" else [wanted],
    )
    jobs = []
    for c in p.cells:
        if c.error is None and mx.load_library_scenario(c.path).concurrent:
            jobs.append((c.path, c.arch, c.strategy, args.bound, getattr(args, "por", True)))
    if not jobs:
        raise UsageError(f"--scenario {wanted}: no concurrent builtin scenario applies")
    if args.jobs == 1:
        # warm-up, as the runs workload does: each column's plugin set and
        # first-use imports, out of the timed search (one default schedule)
        from kvmsim.explore.search import run_schedule

        for path, arch, strategy, _, _ in jobs:
            run_schedule(mx.load_library_scenario(path), arch, strategy, ())
    mem = _Mem(args.tracemalloc)
    t0 = time.perf_counter()
    if args.jobs > 1:
        from kvmsim.explore.search import explore_parallel

        cols = [(mx.load_library_scenario(p), a, s) for p, a, s, _, _ in jobs]
        done = [
            (e.schedules, len(e.classes), e.redundant)
            for e in explore_parallel(
                cols, args.jobs, bound=args.bound, por=getattr(args, "por", True)
            )
        ]
    else:
        done = [_explore_column(j) for j in jobs]
    dt = time.perf_counter() - t0
    n = sum(d[0] for d in done)
    out = _result(args, vcpus=None, seconds=round(dt, 4))
    out.update(
        arch=args.arch if args.arch_given else None,
        strategy=args.strategy if args.strategy_given else None,
        scenario=wanted,
        columns=len(jobs),
        bound=args.bound,
        jobs=args.jobs,
        schedules=n,
        schedules_per_s=_rate(n, dt),
        classes=sum(d[1] for d in done),
        por=getattr(args, "por", True),
        redundant=sum(d[2] for d in done),
        memory_grown=mem.grown(),
        memory_method="tracemalloc" if args.tracemalloc else "rss",
    )
    return out


RUNNERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "demand_paging": demand_paging,
    "reaccess": reaccess,
    "dirty_log": dirty_log,
    "matrix": matrix,
    "dispatch": dispatch,
    "trace_off": trace_off,
    "runs": runs,
    "explore": explore_bench,
}

# ---------------------------------------------------------------- CLI


def add_arguments(p: Any) -> None:
    """The ``kvmsim bench`` flags."""
    p.add_argument("--workload", default="demand_paging", choices=WORKLOADS)
    p.add_argument("--arch", default=None, help="arch plugin (default ppc_radix)")
    p.add_argument("--strategy", default=None, help="strategy plugin (default generic_v4_16)")
    p.add_argument("--mem", default="256M", help="guest memory, e.g. 4M, 1G (default 256M)")
    p.add_argument(
        "--page-size", default=None, help="backing page size (default: the arch's base page)"
    )
    p.add_argument("--vcpus", type=int, default=1, help="vcpus sharing the memory (default 1)")
    p.add_argument(
        "--rounds", type=int, default=1, help="re-access/dirty rounds; dispatch, trace_off: repeats"
    )
    p.add_argument("--jobs", type=int, default=1, help="matrix worker processes (default 1)")
    p.add_argument(
        "--scenario",
        default=None,
        metavar="NAME",
        help=(
            f"runs, explore: a builtin scenario, or 'all' (default {RUNS_SCENARIO}, "
            f"{EXPLORE_SCENARIO})"
        ),
    )
    p.add_argument(
        "--runs", type=int, default=2000, metavar="N", help="runs: how many (default 2000)"
    )
    p.add_argument(
        "--bound", type=int, default=2, metavar="K", help="explore: preemptions (default 2)"
    )
    p.add_argument(
        "--no-por",
        dest="por",
        action="store_false",
        help="explore: without the partial-order reduction",
    )
    p.add_argument(
        "--trace",
        dest="tracing",  # not ``trace``: the CLI reads that as a trace file name
        action="store_true",
        help="record the trace and write it as JSON Lines (to a temp file)",
    )
    p.add_argument(
        "--tracemalloc", action="store_true", help="exact Python allocation figures (slower)"
    )
    p.add_argument(
        "--instructions",
        action="store_true",
        help="demand_paging, trace_off: instructions per fault under callgrind (slow, repeatable)",
    )
    p.add_argument(
        "--backend",
        choices=("model", "kvm"),
        default="model",
        help="kvm: demand_paging on this host's /dev/kvm, beside the model (x86_ept)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _size(value: str, flag: str) -> int:
    from kvmsim.errors import ScenarioError

    try:
        return parse_size(value, flag, align=1)
    except ScenarioError as exc:
        raise UsageError(f"{flag} {value!r}: {exc.args[0] if exc.args else exc}") from None


def run_bench(args: Any) -> dict[str, Any]:
    """Check the flags, run the workload, return its figures."""
    args.trace = bool(getattr(args, "tracing", False))
    args.arch_given = args.arch is not None
    args.strategy_given = args.strategy is not None
    kvm = getattr(args, "backend", "model") == "kvm"
    if kvm and args.workload != "demand_paging":
        raise UsageError(f"--backend kvm: only --workload demand_paging, not {args.workload}")
    default_arch = "x86_ept" if kvm or args.workload in ("runs", "explore") else "ppc_radix"
    args.arch = args.arch or default_arch
    args.strategy = args.strategy or ("follow_pfn_2024" if kvm else "generic_v4_16")
    args.mem = _size(args.mem, "--mem")
    args.page_size = _size(args.page_size, "--page-size") if args.page_size else None
    if args.vcpus < 1:
        raise UsageError(f"--vcpus {args.vcpus}: at least 1")
    if args.rounds < 1:
        raise UsageError(f"--rounds {args.rounds}: at least 1")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: at least 1")
    if getattr(args, "runs", 2000) < 1:
        raise UsageError(f"--runs {args.runs}: at least 1")
    if getattr(args, "scenario", None) is not None and args.workload not in ("runs", "explore"):
        raise UsageError("--scenario: only for --workload runs or explore")
    if getattr(args, "bound", 2) < 0:
        raise UsageError(f"--bound {args.bound}: at least 0")
    args.instructions = bool(getattr(args, "instructions", False))
    if args.instructions and args.workload not in ("demand_paging", "trace_off"):
        raise UsageError("--instructions: only for --workload demand_paging or trace_off")
    if args.workload not in ("matrix", "explore"):
        # unknown or unfit plugin names: the registry's one-line PluginError
        from kvmsim.registry import build_manager

        _, a_info, _ = build_manager(arch=args.arch, strategy=args.strategy)
        psize = args.page_size or 1 << a_info.page_shift
        if args.instructions and (args.mem // 2) % psize:
            raise UsageError(
                f"--mem {format_size(args.mem)}: --instructions also runs half of it, "
                f"which must be a multiple of the page size {format_size(psize)}"
            )
    if kvm:
        from kvmsim.realkvm.bench import kvm_demand_paging

        return kvm_demand_paging(args, RUNNERS["demand_paging"])
    return RUNNERS[args.workload](args)


def format_table(r: dict[str, Any]) -> str:
    """One result as an aligned two-column table."""
    rows = []
    for k, v in r.items():
        if k == "mechanisms" and isinstance(v, list):
            # side by side: one line per mechanism
            v = "; ".join(
                f"{m['mode']}: {m['pages_dirtied_per_s']:,.1f} pages/s, "
                f"harvest {m['harvest_ms_per_round']:.4g} ms/round, lost {m['lost_dirty']}"
                for m in v
            )
        elif isinstance(v, float):
            # rates with a thousands separator; small figures (seconds,
            # ratios) keep four significant digits
            v = f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"
        elif isinstance(v, int) and not isinstance(v, bool) and k in ("pages", "faults", "runs"):
            v = f"{v:,}"
        elif k == "page_size" and v:
            v = format_size(v)
        rows.append((k, "-" if v is None else str(v)))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def bench_command(args: Any) -> int:
    """``kvmsim bench``: exit 0, or 2 for bad flags (raised as UsageError)."""
    r = run_bench(args)
    if args.json:
        print(json.dumps(r, sort_keys=True))
    else:
        print(format_table(r))
    sys.stdout.flush()
    return 0


__all__ = ["KEYS", "WORKLOADS", "add_arguments", "bench_command", "run_bench"]
