"""``kvmsim explore``: the command (called from :mod:`kvmsim.cli`).

Exit 0 when no failure class was found, 1 when some was, 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kvmsim.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "scenario",
        nargs="+",
        help="a concurrent scenario file, a builtin name, or a glob of builtin names",
    )
    p.add_argument("--arch", action="append", metavar="ARCH", help="only this arch (repeatable)")
    p.add_argument(
        "--strategy", action="append", metavar="NAME", help="only this strategy (repeatable)"
    )
    p.add_argument(
        "--bound", type=int, default=2, metavar="K", help="exhaustive: preemptions (default 2)"
    )
    p.add_argument("--mode", choices=("exhaustive", "random"), default="exhaustive")
    p.add_argument("--runs", type=int, metavar="N", help="random: schedules (default 1000)")
    p.add_argument("--depth", type=int, default=3, metavar="D", help="random: PCT depth (3)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random: seed (default 0)")
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="spread the schedules over N processes"
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="spread the schedules over a dask.distributed cluster instead of processes",
    )
    p.add_argument(
        "--no-por",
        dest="por",
        action="store_false",
        help="exhaustive: run every schedule, without the partial-order reduction",
    )
    p.add_argument("--output", metavar="DIR", help="write each class as a replay scenario here")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _targets(args: argparse.Namespace) -> list[tuple[str, str, str, Any]]:
    """``(name, path, source text, scenario)`` for every SCENARIO argument."""
    import fnmatch

    from kvmsim.registry import scenario_schema
    from kvmsim.scenario import load_scenario
    from kvmsim.scenario.loader import parse_scenario

    out: list[tuple[str, str, str, Any]] = []
    library: dict[str, Path] | None = None
    for arg in args.scenario:
        p = Path(arg)
        paths: list[Path]
        if p.exists() or p.suffix == ".toml" or "/" in arg:
            paths = [p]
        else:
            if library is None:
                from kvmsim.matrix import library_files

                library = {f.stem: f for _, f in library_files()}
            paths = [library[n] for n in sorted(library) if fnmatch.fnmatchcase(n, arg)]
            if not paths:
                raise UsageError(f"explore: no scenario file or library name matches {arg!r}")
        for path in paths:
            sc = load_scenario(path, devices=scenario_schema()[1])
            if not sc.concurrent:
                raise UsageError(
                    f"{path}: nothing concurrent to explore: the scenario needs "
                    "concurrent = true at the top"
                )
            if sc.schedule:
                raise UsageError(
                    f"{path}: schedule: explore starts from a scenario without [[schedule]] "
                    "(it writes the schedules it finds)"
                )
            text = path.read_text(encoding="utf-8")
            parse_scenario(text, str(path), devices=scenario_schema()[1])
            out.append((sc.name, str(path), text, sc))
    return out


def _columns(
    args: argparse.Namespace, sc: Any, path: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """The (arch, strategy) columns to explore ``sc`` under, and a note for
    each column left out because userspace could not set the scenario up on
    that kernel (the matrix's own decision: :func:`kvmsim.matrix.runnable_columns`)."""
    from kvmsim import matrix as mx

    cols = mx._columns(args.arch, args.strategy)
    entry = mx.scenario_entry(sc, path, "")
    facts = mx.ColumnFacts.of(cols, dirty=entry.dirty is not None)
    out: list[tuple[str, str]] = []
    notes: list[str] = []
    for c, note in mx.runnable_columns(entry, cols, facts):
        if note is None:
            out.append((c.arch, c.strategy))
        elif note not in notes:
            notes.append(note)
    return out, notes


def replay_text(source: str, sc_name: str, arch: str, strategy: str, cls: Any) -> str:
    """The scenario text with the class's smallest schedule appended."""
    lines = [
        source.rstrip("\n"),
        "",
        f"# kvmsim explore: {cls.explanation()}",
        f"# found under arch {arch}, strategy {strategy}; replay with",
        f"#   kvmsim run THIS_FILE --arch {arch} --strategy {strategy}",
    ]
    for sw in cls.best.switches:
        lines.append("")
        lines.append("[[schedule]]")
        if sw.at != "start":
            lines.append(f"actor = {json.dumps(sw.actor)}")
        lines.append(f"at = {json.dumps(sw.at)}")
        if sw.nth != 1:
            lines.append(f"nth = {sw.nth}")
        lines.append(f"run = {json.dumps(sw.run)}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _progress(total: int, name: str) -> Iterator[Callable[[], None]]:
    """A progress bar over the columns on a terminal's stderr; nothing
    otherwise (a pipe, a file, CI)."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(f"exploring {name}", total=total)
        yield lambda: bar.advance(task)


def _one(job: tuple[Any, str, str, dict[str, Any]]) -> Any:
    from kvmsim.explore.search import explore

    sc, arch, strategy, kw = job
    return explore(sc, arch, strategy, **kw)


def explore_command(args: argparse.Namespace) -> int:
    if args.bound < 0:
        raise UsageError(f"--bound {args.bound}: at least 0")
    if args.runs is not None and args.mode != "random":
        raise UsageError("--runs: only with --mode random")
    if args.runs is not None and args.runs < 1:
        raise UsageError(f"--runs {args.runs}: at least 1")
    if args.depth < 1:
        raise UsageError(f"--depth {args.depth}: at least 1")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: at least 1")
    out_dir = Path(args.output) if args.output else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output {out_dir}: not a directory")
    kw = {
        "mode": args.mode,
        "bound": args.bound,
        "runs": args.runs or 1000,
        "seed": args.seed,
        "depth": args.depth,
        "por": args.por,
    }
    results: list[dict[str, Any]] = []
    found = 0
    notes: list[str] = []
    for name, src, text, sc in _targets(args):
        columns, skipped = _columns(args, sc, src)
        notes.extend(skipped)
        jobs = [(sc, a, s, kw) for a, s in columns]
        if not jobs:
            why = f": {skipped[0]}" if len(skipped) == 1 else ""
            raise UsageError(f"{name}: no (arch, strategy) applies{why}")
        if args.jobs > 1 or args.scheduler:
            from kvmsim.explore.search import explore_parallel

            explored = explore_parallel(
                [(sc, a, s) for sc, a, s, _ in jobs],
                args.jobs,
                scheduler=args.scheduler,
                **kw,
            )
        else:
            explored = []
            with _progress(len(jobs), name) as advance:
                for j in jobs:
                    explored.append(_one(j))
                    advance()
        for e in explored:
            classes = []
            for i, c in enumerate(e.classes, start=1):
                replay = None
                if out_dir is not None:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    path = out_dir / f"{name}--{e.arch}--{e.strategy}--class{i}.toml"
                    path.write_text(replay_text(text, name, e.arch, e.strategy, c), "utf-8")
                    replay = str(path)
                classes.append(
                    {
                        "id": i,
                        "verdicts": list(c.verdicts),
                        "schedules": c.schedules,
                        "explanation": c.explanation(),
                        "replay": replay,
                    }
                )
            found += len(classes)
            results.append(
                {
                    "scenario": name,
                    "arch": e.arch,
                    "strategy": e.strategy,
                    "schedules": e.schedules,
                    "seconds": round(e.seconds, 3),
                    "classes": classes,
                    "por": e.por,
                    "redundant": e.redundant,
                }
            )
    names = sorted({r["scenario"] for r in results})
    doc = {
        "scenario": names[0] if len(names) == 1 else names,
        "mode": args.mode,
        "bound": args.bound,
        "results": results,
        "notes": notes,
    }
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        _table(doc)
        for note in notes:
            print(f"kvmsim explore: {note}", file=sys.stderr)
    return 1 if found else 0


def _table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"kvmsim explore ({doc['mode']}, bound {doc['bound']})")
    for col in ("scenario", "arch", "strategy", "schedules", "pruned", "classes", "seconds"):
        t.add_column(col)
    for r in doc["results"]:
        t.add_row(
            r["scenario"],
            r["arch"],
            r["strategy"],
            str(r["schedules"]),
            str(r["redundant"]) if r["por"] else "-",
            str(len(r["classes"])),
            f"{r['seconds']:.2f}",
        )
    console = Console(file=sys.stdout)
    console.print(t)
    for r in doc["results"]:
        for c in r["classes"]:
            where = f" -> {c['replay']}" if c["replay"] else ""
            console.print(
                f"{r['scenario']} {r['arch']} {r['strategy']} class {c['id']}: "
                f"{c['explanation']} ({c['schedules']} schedules){where}",
                markup=False,
                highlight=False,
            )


__all__ = ["add_arguments", "explore_command", "replay_text"]
