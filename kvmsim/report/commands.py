"""The ``kvmsim matrix`` and ``kvmsim diff`` commands (called from :mod:`kvmsim.cli`)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from kvmsim.errors import UsageError


def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", action="append", metavar="ARCH", help="only this arch (repeatable)")
    p.add_argument(
        "--strategy", action="append", metavar="NAME", help="only this strategy (repeatable)"
    )
    p.add_argument(
        "--scenario", action="append", metavar="GLOB", help="only scenarios matching (repeatable)"
    )
    p.add_argument(
        "--format", choices=("table", "markdown", "json", "html"), default="table", dest="fmt"
    )
    p.add_argument("--output", metavar="FILE", help="write there (atomically), not to stdout")
    p.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: CPUs)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the cells on a dask cluster")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--suggest-known",
        action="store_true",
        help="print a [[known]] record draft for every failing cell (review before use)",
    )


def add_diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="a library scenario name or a scenario file")
    p.add_argument("--strategy", action="append", required=True, metavar="NAME")
    p.add_argument("--arch", help="the arch (default: the scenario's, or the only one)")
    p.add_argument("--width", type=int, help="output width (default: the terminal's)")


def write_atomic(path: Path, text: str) -> None:
    """Write *text* to *path* through a temporary file and a rename, so a
    reader never sees a half-written report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _progress(total: int, enabled: bool) -> Any:
    """A rich progress bar on stderr (a no-op context when disabled)."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    prog = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    return prog


def matrix_command(args: argparse.Namespace) -> int:
    from kvmsim import matrix
    from kvmsim.report import render

    jobs = args.jobs if args.jobs is not None else matrix.default_jobs()
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be at least 1")
    plan = matrix.plan(arches=args.arch, strategies=args.strategy, scenarios=args.scenario)
    if not plan.cells:
        raise UsageError("nothing to run: no scenario applies to the selected arches")
    show = not args.no_progress and sys.stderr.isatty()
    trace = args.fmt == "html"
    bar = _progress(len(plan.cells), show)
    with bar as prog:
        if prog is not None:
            task = prog.add_task("matrix", total=len(plan.cells))

            def advance(n: int) -> None:
                prog.advance(task, n)

        else:
            advance = None  # type: ignore[assignment]
        result = matrix.run(
            plan,
            jobs=min(jobs, len(plan.cells)),
            scheduler=args.scheduler,
            trace=trace,
            progress=advance,
        )
    color = (
        args.fmt == "table"
        and not args.output
        and sys.stdout.isatty()
        and not os.environ.get("NO_COLOR")
    )
    import shutil

    from kvmsim.report.text import DEFAULT_WIDTH

    # the terminal's width (COLUMNS wins, as everywhere); a file or a pipe
    # gets DEFAULT_WIDTH
    width = shutil.get_terminal_size((DEFAULT_WIDTH, 40)).columns
    text = render(result, args.fmt, color=color, width=width)
    if args.output:
        write_atomic(Path(args.output), text)
    else:
        sys.stdout.write(text)
    if args.suggest_known:
        sys.stdout.write(suggest_known(result))
    print(f"{result.summary_line()} in {result.seconds:.1f} s", file=sys.stderr)
    return 0 if result.ok else 1


def suggest_known(result: Any) -> str:
    """Draft ``[[known]]`` records for the failing cells (to review: a record
    claims the strategy's kernel really behaves so, with a reason)."""
    out: list[str] = []
    paths = {e.name: e.path for e in result.plan.scenarios}
    for c in result.ordered():
        if c.status != "fail":
            continue
        out.append(f"# {paths.get(c.scenario, c.scenario)}")
        out.append("[[known]]")
        out.append(f'strategy = "{c.strategy}"')
        out.append(f'arch = "{c.arch}"')
        out.append("verdicts = [" + ", ".join(f'"{v}"' for v in c.verdicts) + "]")
        fails: dict[int, list[str]] = {}
        for f in c.failures:
            if f.startswith("step "):
                idx, rest = f[5:].split(": ", 1)
                fails.setdefault(int(idx), []).append(rest.split(":", 1)[0])
        if fails:
            outs = ", ".join(f'{i} = "{c.outcomes[i] or "none"}"' for i in sorted(fails))
            out.append(f"outcomes = {{ {outs} }}")
            fl = ", ".join(
                f"{i} = [" + ", ".join(f'"{k}"' for k in sorted(set(v))) + "]"
                for i, v in sorted(fails.items())
            )
            out.append(f"failures = {{ {fl} }}")
        out.append(
            'reason = "TODO: the kernel function and version (or docs/kernel-notes.md '
            'section, as kernel-notes §X.n) this follows from"'
        )
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


def diff_command(args: argparse.Namespace) -> int:
    from kvmsim import matrix
    from kvmsim.registry import discover
    from kvmsim.report.diff import align, render
    from kvmsim.runner import Simulation

    if len(args.strategy) != 2:
        raise UsageError("kvmsim diff: give exactly two --strategy options")
    p = Path(args.scenario)
    if p.suffix == ".toml" or p.exists():
        sc = matrix.load_library_scenario(str(p))
    else:
        sc = matrix.load_library_scenario(matrix.find_entry(args.scenario).path)
    arch = args.arch or sc.arch
    if arch is None:
        arches = sorted(discover().get("arch", {}))
        if len(arches) != 1:
            raise UsageError(
                f"scenario {sc.name!r} runs on every arch; pick one with --arch "
                f"({', '.join(arches)})"
            )
        arch = arches[0]
    sides = []
    for s in args.strategy:
        sides.append((s, Simulation(sc, arch=arch, strategy=s, trace=True).run()))
    d = align(sides[0][1].events, sides[1][1].events)
    sys.stdout.write(render(sc.name, arch, sides, d, width=args.width))
    return 0
