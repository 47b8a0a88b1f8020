"""The kvmsim command: run KVM stage-2 fault-path scenarios under historical hva_to_pfn strategies.

Exit codes: 0 every expectation held and no checker fired; 1 an expectation
failed or a checker fired; 2 bad input (a scenario, a plugin name, a flag);
3 a plugin raised an unexpected exception (a bug in kvmsim or a plugin).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from kvmsim.errors import KvmsimError, UsageError, did_you_mean

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
#: What a shell reports for a process a closed pipe ended (128 + SIGPIPE).
EXIT_PIPE = 128 + signal.SIGPIPE

DESCRIPTION = """\
kvmsim: an executable model of how a KVM host resolves a guest's stage-2
page fault, with each historical hva_to_pfn strategy as a plugin.

exit status: 0 every expectation held and no checker fired; 1 an expectation
failed or a checker fired; 2 bad input (a scenario, a plugin name, a flag, a
path); 3 a plugin raised (run with --debug for the traceback)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        # main() prefixes "kvmsim: error: "; the sub-command is in the hint
        raise UsageError(f"{message} (see {self.prog} --help)")


def _load(path: str) -> object:
    from kvmsim.registry import scenario_schema
    from kvmsim.scenario import load_scenario

    # plugin step kinds are the loader's default; devices are checked too
    return load_scenario(path, devices=scenario_schema()[1])


def _resolve_scenario(arg: str) -> str:
    """A path, or the name of a scenario in any installed library."""
    from kvmsim.matrix import resolve_scenario

    return resolve_scenario(arg)


def _check_disabled(names: Sequence[str] | None) -> list[str]:
    """``--disable-plugin`` names, each a discovered plugin of some kind."""
    from kvmsim.registry import discover

    known = sorted({n for by_name in discover().values() for n in by_name})
    for name in names or ():
        if name not in known:
            raise UsageError(
                f"--disable-plugin {name}: no such plugin{did_you_mean(name, known)} "
                f"(available: {', '.join(known)}; see kvmsim plugins)"
            )
    return list(names or ())


def cmd_run(args: argparse.Namespace) -> int:
    from kvmsim.matrix import classify
    from kvmsim.runner import Simulation
    from kvmsim.scenario.model import Scenario
    from kvmsim.trace import write_trace

    trace = Path(args.trace) if args.trace else None
    if trace is not None:
        from kvmsim.outfile import check_target

        check_target(trace, "--trace")  # before the run, not after it
    disabled = _check_disabled(args.disable_plugin)
    scenario = _load(_resolve_scenario(args.scenario))
    assert isinstance(scenario, Scenario)
    sim = None
    try:
        sim = Simulation(
            scenario,
            arch=args.arch,
            strategy=args.strategy,
            trace=trace is not None,
            disabled=disabled,
        )
        report = sim.run()
    except KvmsimError as exc:
        if exc.exit_code != EXIT_INTERNAL:
            raise  # bad input: one line, exit 2
        return _crashed(args, exc, scenario, sim, disabled)
    except Exception as exc:
        return _crashed(args, exc, scenario, sim, disabled)
    if trace is not None:
        write_trace(trace, report.events)
    status, reason = classify(report, scenario, report.arch, report.strategy)
    if args.json:
        doc = report.to_json()
        doc["status"] = status  # the matrix's cell status (kfail, xpass...)
        doc["known"] = reason  # the [[known]] record's reason, if one applies
        print(json.dumps(doc, sort_keys=True))
    else:
        _print_report(report, status, reason)
    return EXIT_OK if report.passed else EXIT_FAILED


def _crashed(
    args: argparse.Namespace, exc: BaseException, scenario: Any, sim: Any, disabled: list[str]
) -> int:
    """A plugin raised (or returned the wrong type) during ``kvmsim run``:
    one line naming the plugin, hook, step and the plugin's own frame; the
    trace up to the failure when ``--trace`` was given; exit 3."""
    from kvmsim.matrix import error_context
    from kvmsim.report.crash import describe
    from kvmsim.trace import write_trace

    if sim is not None and sim.tracer.enabled:
        step = sim.tracer.step
    else:  # runs are deterministic: a traced re-run fails at the same place
        again, step, _ = error_context(
            scenario,
            sim.arch if sim else (args.arch or scenario.arch),
            args.strategy,
            disabled=disabled,
        )
        sim = sim or again
    pm = sim.pm if sim is not None else _manager_of(args, scenario, disabled)
    parts = [describe(exc, pm, step)]
    if args.trace and sim is not None and sim.tracer.enabled:
        write_trace(Path(args.trace), sim.tracer.events)
        parts.append(f"the trace up to it is in {args.trace}")
    if not args.debug:
        parts.append("--debug shows the traceback")
    print("kvmsim: " + "; ".join(parts), file=sys.stderr)  # one line
    if args.debug:
        traceback.print_exception(exc, file=sys.stderr)
    return EXIT_INTERNAL


def _manager_of(args: argparse.Namespace, scenario: Any, disabled: list[str]) -> Any:
    """The run's plugins, registered again (when its set-up raised, there is
    no simulation to take them from), or None if that fails too."""
    from kvmsim.registry import build_manager

    try:
        pm, _, _ = build_manager(
            arch=args.arch or scenario.arch,
            strategy=args.strategy,
            devices=[d.kind for d in scenario.devices],
            disabled=disabled,
        )
    except Exception:
        return None
    return pm


def _print_report(report: object, status: str, reason: str) -> None:
    from kvmsim.runner import RunReport
    from kvmsim.scenario.sizes import format_size

    assert isinstance(report, RunReport)
    print(f"{report.scenario}  arch={report.arch}  strategy={report.strategy}")
    for s in report.steps:
        bits = [f"step {s.index:>2} {s.do:<12}", f"{s.outcome or '-':<10}"]
        if s.pfn is not None:
            bits.append(f"pfn={s.pfn:#x}")
        if s.writable is not None:
            bits.append("rw" if s.writable else "ro")
        if s.page_size:
            bits.append(format_size(s.page_size))
        if s.verdicts:
            bits.append("verdicts=" + ",".join(s.verdicts))
        print("  " + "  ".join(bits))
        if s.detail:
            print(f"           {s.detail}")
        for f in s.expect_failures:
            print(f"           EXPECTATION FAILED: {f}")
    for v in report.verdicts:
        where = f" (after trace event {v.event} #{v.event_seq})" if v.event else ""
        print(f"  verdict {v.name} at step {v.step}: {v.detail}{where}")
    # the matrix's word for it: a recorded known defect reproduced exactly is
    # KFAIL, one that did not reproduce XPASS (the exit status stays as it was)
    if status in ("kfail", "xpass"):
        print(f"{status.upper()}: {reason}")
    else:
        print("PASS" if report.passed else "FAIL")


def cmd_plugins(args: argparse.Namespace) -> int:
    from kvmsim.registry import describe_all

    rows = describe_all()
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return EXIT_OK
    for r in rows:
        arches = f" [{', '.join(r['arches'])}]" if r.get("arches") else ""
        desc = r.get("description") or r.get("error", "")
        print(f"{r['kind']:<9} {r['name']:<18} {r['distribution']} {r['version']}{arches}")
        print(f"          {desc}")
        if r.get("hooks"):
            print(f"          hooks: {', '.join(r['hooks'])}")
    return EXIT_OK


def cmd_scenarios(args: argparse.Namespace) -> int:
    from kvmsim.matrix import library_dists, library_files

    by_lib: dict[str, list[str]] = {}
    for lib, path in library_files():
        by_lib.setdefault(lib, []).append(path.stem)
    dists = library_dists()
    for lib, names in by_lib.items():
        print(f"{lib} ({dists.get(lib, '?')}):")
        for name in sorted(names):
            print(f"  {name}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from kvmsim.scenario.schema import json_schema

    print(json.dumps(json_schema(), indent=1, sort_keys=True))
    return EXIT_OK


def cmd_matrix(args: argparse.Namespace) -> int:
    from kvmsim.report.commands import matrix_command

    return matrix_command(args)


def cmd_diff(args: argparse.Namespace) -> int:
    from kvmsim.report.commands import diff_command

    return diff_command(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from kvmsim.bench import bench_command

    return bench_command(args)


def cmd_explore(args: argparse.Namespace) -> int:
    from kvmsim.explore.command import explore_command

    return explore_command(args)


def cmd_points(args: argparse.Namespace) -> int:
    from kvmsim.points import PLACEMENTS, POINTS
    from kvmsim.registry import plugin_points

    for name, where in POINTS.items():
        print(f"{name:<24} {where}")
    for name, where in PLACEMENTS.items():
        print(f"{name:<24} {where}")
    for name, (plugin, where) in sorted(plugin_points().items()):
        print(f"{name:<24} ({plugin}) {where}")
    return EXIT_OK


def cmd_crosscheck(args: argparse.Namespace) -> int:
    from kvmsim.realkvm.command import crosscheck_command

    return crosscheck_command(args)


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from kvmsim.scaffold import write_skeleton

    out = write_skeleton(args.kind, args.name, Path(args.output) if args.output else None)
    print(f"wrote {args.kind} plugin {args.name!r} to {out}; next: pip install -e {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="kvmsim", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run one scenario under one arch and strategy")
    r.add_argument("scenario", help="a scenario file, or the name of a library scenario")
    r.add_argument("--arch", help="arch plugin (default: the scenario's arch)")
    r.add_argument("--strategy", required=True, help="strategy plugin")
    r.add_argument("--trace", metavar="FILE", help="write the trace (.jsonl or Chrome .json)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument(
        "--disable-plugin",
        action="append",
        metavar="NAME",
        help="do not register this plugin (a device, say); repeatable",
    )
    r.add_argument("--debug", action="store_true", help="show the traceback if a plugin raises")
    r.set_defaults(func=cmd_run)
    pl = sub.add_parser("plugins", help="list discovered plugins")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)
    sc = sub.add_parser("scenarios", help="list the scenarios of every installed library")
    sc.set_defaults(func=cmd_scenarios)
    sch = sub.add_parser(
        "schema", help="print the scenario format as a JSON Schema (draft 2020-12)"
    )
    sch.set_defaults(func=cmd_schema)
    np_ = sub.add_parser("new-plugin", help="write a ready-to-install plugin skeleton")
    np_.add_argument("kind", choices=("arch", "strategy", "device"), help="plugin kind")
    np_.add_argument("name", help="plugin name (the entry-point name users type)")
    np_.add_argument("--output", metavar="DIR", help="directory to create (default ./kvmsim-NAME)")
    np_.set_defaults(func=cmd_new_plugin)
    from kvmsim.report.commands import add_diff_arguments, add_matrix_arguments

    mx = sub.add_parser("matrix", help="every scenario under every applicable arch and strategy")
    add_matrix_arguments(mx)
    mx.set_defaults(func=cmd_matrix)
    df = sub.add_parser("diff", help="two strategies' decision traces side by side")
    add_diff_arguments(df)
    df.add_argument("--debug", action="store_true", help="show the traceback if a plugin raises")
    df.set_defaults(func=cmd_diff)
    from kvmsim.bench import add_arguments as add_bench_arguments

    bn = sub.add_parser("bench", help="time the fault path: faults/s, hits/s, bytes per page")
    add_bench_arguments(bn)
    bn.set_defaults(func=cmd_bench)
    from kvmsim.explore.command import add_arguments as add_explore_arguments

    ex = sub.add_parser("explore", help="try every interleaving of a concurrent scenario")
    add_explore_arguments(ex)
    ex.set_defaults(func=cmd_explore)
    pt = sub.add_parser("points", help="list the yield points (race placements)")
    pt.set_defaults(func=cmd_points)

    from kvmsim.realkvm.args import add_arguments as add_crosscheck_arguments

    cc = sub.add_parser(
        "crosscheck", help="scenarios on this host's /dev/kvm, compared with the model"
    )
    add_crosscheck_arguments(cc)
    cc.set_defaults(func=cmd_crosscheck)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("a command is required (see kvmsim --help)")
        if getattr(args, "trace", None) and Path(args.trace).suffix not in (".json", ".jsonl"):
            raise UsageError(f"--trace {args.trace}: the file must end in .jsonl or .json")
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except KvmsimError as exc:
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a plugin or kvmsim bug: one line, not a traceback
        print(
            f"kvmsim: internal error: {type(exc).__name__}: {exc} "
            "(a bug in kvmsim or a plugin; please report it"
            + ("" if getattr(args, "debug", False) else "; --debug shows the traceback")
            + ")",
            file=sys.stderr,
        )
        if getattr(args, "debug", False):
            traceback.print_exception(exc, file=sys.stderr)
        return EXIT_INTERNAL


def _closed_pipe() -> int:
    """The reader went away (``kvmsim scenarios | head -1``): stop quietly,
    with the status a shell shows for a tool SIGPIPE ended.  What is still
    buffered goes to /dev/null, so the interpreter's last flush cannot fail
    again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no real file (tests)
        pass
    return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
