"""Fixtures for testing kvmsim plugins (a pytest plugin, entry point ``pytest11``).

Third-party plugin authors get them by installing kvmsim:

- ``make_sim(text_or_path, *, arch=None, strategy, extra_plugins=(), trace=True)``
  builds a :class:`kvmsim.runner.Simulation` from a scenario file or TOML text.
- ``run_sim(...)``: the same, already run, returning the
  :class:`kvmsim.runner.RunReport`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvmsim.runner import RunReport, Simulation, build_sim


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


# ------------------------------------------------------------ the matrix
#
# A test that takes the ``kvmsim_cell`` fixture is parametrised over the
# comparative matrix: one pytest test per (scenario, arch, strategy) cell,
# each failing with its decision trace in the report.  Narrow it with the
# marker::
#
#     @pytest.mark.kvmsim_matrix(strategy="generic_v4_16", scenario="gen-*")
#     def test_cell(kvmsim_cell):
#         assert_cell(kvmsim_cell)

MATRIX_MARKER = "kvmsim_matrix"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MATRIX_MARKER}(arch=None, strategy=None, scenario=None): parametrise the "
        "kvmsim_cell fixture over these matrix cells (names or lists; scenario takes globs)",
    )


def _listify(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kvmsim_cell" not in metafunc.fixturenames:
        return
    from kvmsim.matrix import plan

    marker = metafunc.definition.get_closest_marker(MATRIX_MARKER)
    kw: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    p = plan(
        arches=_listify(kw.get("arch")),
        strategies=_listify(kw.get("strategy")),
        scenarios=_listify(kw.get("scenario")),
    )
    metafunc.parametrize(
        "kvmsim_cell",
        list(p.cells),
        ids=[f"{c.scenario}-{c.arch}-{c.strategy}" for c in p.cells],
        indirect=True,
    )


@pytest.fixture
def kvmsim_cell(request: pytest.FixtureRequest) -> Any:
    """One matrix cell, already run with its trace (a
    :class:`kvmsim.matrix.CellResult`); only in tests parametrised over the
    matrix (take this fixture; narrow with ``@pytest.mark.kvmsim_matrix``)."""
    from kvmsim.matrix import run_cell

    spec = getattr(request, "param", None)
    if spec is None:
        pytest.fail("kvmsim_cell is parametrised by the kvmsim plugin; do not call it directly")
    return run_cell(spec, trace=True)


def format_cell(cell: Any, *, max_events: int = 200) -> str:
    """A cell's status, failures, step outcomes and decision trace, as text."""
    from kvmsim.report.diff import event_text

    lines = [f"{cell.scenario} [{cell.arch}/{cell.strategy}]: {cell.status}"]
    if cell.message:
        lines.append(f"  {cell.message}")
    lines += [f"  {f}" for f in cell.failures]
    if cell.verdicts:
        lines.append(f"  verdicts: {', '.join(cell.verdicts)}")
    lines.append("  step outcomes: " + ", ".join(f"{i}:{o}" for i, o in enumerate(cell.outcomes)))
    events = cell.trace or []
    lines.append(f"  decision trace ({len(events)} events):")
    lines += [f"    {e.get('seq', '')!s:>4} {event_text(e)}" for e in events[-max_events:]]
    return "\n".join(lines)


def assert_cell(cell: Any) -> None:
    """Fail the test unless the cell is ``pass`` or ``kfail`` (a recorded
    known defect), with the cell's trace in the failure report."""
    if cell.status not in ("pass", "kfail"):
        pytest.fail(format_cell(cell), pytrace=False)
