"""Fixtures for testing kvmsim plugins (a pytest plugin, entry point ``pytest11``).

Third-party plugin authors get them by installing kvmsim:

- ``make_sim(text_or_path, *, arch=None, strategy, extra_plugins=(), trace=True)``
  builds a :class:`kvmsim.runner.Simulation` from a scenario file or TOML text.
- ``run_sim(...)``: the same, already run, returning the
  :class:`kvmsim.runner.RunReport`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from kvmsim.runner import RunReport, Simulation
from kvmsim.scenario import load_scenario, parse_scenario


def build_sim(
    scenario: str | Path,
    *,
    arch: str | None = None,
    strategy: str,
    extra_plugins: Iterable[object] = (),
    trace: bool = True,
    direct: bool = True,
) -> Simulation:
    """A simulation from a scenario path, or from TOML text (anything with a newline)."""
    if isinstance(scenario, str) and "\n" in scenario:
        sc = parse_scenario(scenario, "<test>")
    else:
        sc = load_scenario(scenario)
    return Simulation(
        sc, arch=arch, strategy=strategy, trace=trace, extra_plugins=extra_plugins, direct=direct
    )


@pytest.fixture
def make_sim() -> Callable[..., Simulation]:
    """Factory fixture: ``make_sim(scenario, arch=..., strategy=..., extra_plugins=[...])``."""
    return build_sim


@pytest.fixture
def run_sim() -> Callable[..., RunReport]:
    """Factory fixture: like ``make_sim`` but returns the finished run's report."""

    def _run(*args: Any, **kwargs: Any) -> RunReport:
        return build_sim(*args, **kwargs).run()

    return _run
