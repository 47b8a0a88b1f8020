"""``kvmsim crosscheck``'s flags, apart from the command so that building
the CLI parser loads nothing of the backend."""

from __future__ import annotations

import argparse

DEFAULT_STRATEGY = "follow_pfn_2024"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "scenario",
        nargs="*",
        help="scenario files, builtin names or globs (default: every expressible builtin)",
    )
    p.add_argument("--strategy", help=f"strategy the model runs (default {DEFAULT_STRATEGY})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
