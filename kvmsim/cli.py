"""The ``kvmsim`` command.

Exit codes: 0 every expectation held and no checker fired; 1 an expectation
failed or a checker fired; 2 bad input (a scenario, a plugin name, a flag);
3 a plugin raised an unexpected exception (a bug in kvmsim or a plugin).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from kvmsim.errors import KvmsimError, UsageError, did_you_mean

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _load(path: str) -> object:
    from kvmsim.registry import scenario_schema
    from kvmsim.scenario import load_scenario

    # plugin step kinds are the loader's default; devices are checked too
    return load_scenario(path, devices=scenario_schema()[1])


def _resolve_scenario(arg: str) -> str:
    """A path, or the name of a builtin scenario (without ``.toml``)."""
    p = Path(arg)
    if p.exists() or p.suffix == ".toml" or "/" in arg:
        return arg
    from kvmsim.scenario import builtin_scenarios

    names = {path.stem: path for path in builtin_scenarios()}
    if arg in names:
        return str(names[arg])
    hint = did_you_mean(arg, sorted(names))
    if hint:  # a misspelt library name, not a file: say what it may have meant
        raise UsageError(f"no file or library scenario {arg!r}{hint} (see kvmsim scenarios)")
    return arg


def cmd_run(args: argparse.Namespace) -> int:
    from kvmsim.runner import Simulation
    from kvmsim.scenario.model import Scenario
    from kvmsim.trace import write_trace

    scenario = _load(_resolve_scenario(args.scenario))
    assert isinstance(scenario, Scenario)
    sim = Simulation(
        scenario,
        arch=args.arch,
        strategy=args.strategy,
        trace=bool(args.trace),
        disabled=args.disable_plugin or (),
    )
    report = sim.run()
    if args.trace:
        write_trace(Path(args.trace), report.events)
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    else:
        _print_report(report)
    return EXIT_OK if report.passed else EXIT_FAILED


def _print_report(report: object) -> None:
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
    from kvmsim.scenario import builtin_scenarios

    for p in builtin_scenarios():
        print(p.stem)
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
    from kvmsim.points import POINTS

    for name, where in POINTS.items():
        print(f"{name:<24} {where}")
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
    p = _Parser(prog="kvmsim", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run one scenario under one arch and strategy")
    r.add_argument("scenario", help="a scenario file, or the name of a builtin scenario")
    r.add_argument("--arch", help="arch plugin (default: the scenario's arch)")
    r.add_argument("--strategy", required=True, help="strategy plugin")
    r.add_argument("--trace", metavar="FILE", help="write the trace (.jsonl or Chrome .json)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--disable-plugin", action="append", metavar="NAME")
    r.set_defaults(func=cmd_run)
    pl = sub.add_parser("plugins", help="list discovered plugins")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)
    sc = sub.add_parser("scenarios", help="list builtin scenarios")
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
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("kvmsim: a command is required (see kvmsim --help)")
        if getattr(args, "trace", None) and Path(args.trace).suffix not in (".json", ".jsonl"):
            raise UsageError(f"--trace {args.trace}: the file must end in .jsonl or .json")
        return int(args.func(args))
    except KvmsimError as exc:
        print(f"kvmsim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a plugin or kvmsim bug: one line, not a traceback
        print(
            f"kvmsim: internal error: {type(exc).__name__}: {exc} "
            "(a bug in kvmsim or a plugin; please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
