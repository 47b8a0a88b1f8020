"""Scenario files: the TOML schema, its loader, and the builtin library.

>>> from kvmsim.scenario import load_scenario
>>> scenario = load_scenario("my-scenario.toml")  # doctest: +SKIP

Every problem in a scenario file raises one :class:`~kvmsim.errors.ScenarioError`
naming the file, the key path and what was expected there.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmsim.scenario.loader import CORE_STEP_KINDS, load_scenario, parse_scenario
    from kvmsim.scenario.model import (
        BACKINGS,
        CORE_STEP_KEYS,
        EXPECT_KEYS,
        OPS,
        OUTCOMES,
        PFN_BACKINGS,
        PFN_KINDS,
        PROTS,
        RACE_POINTS,
        VERDICTS,
        DeviceKind,
        Devices,
        DeviceSpec,
        Expect,
        KnownDefect,
        MemslotSpec,
        Params,
        Scenario,
        StepKind,
        StepSpec,
        VmaSpec,
    )
    from kvmsim.scenario.sizes import PAGE_SIZE, format_size, parse_size

# Names are imported on first use (PEP 562), so that a light module such as
# ``kvmsim.scenario.sizes`` (which the CLI's parser needs) does not pull in
# the loader and the attrs model classes.
_FROM = {
    "CORE_STEP_KINDS": "loader",
    "load_scenario": "loader",
    "parse_scenario": "loader",
    "PAGE_SIZE": "sizes",
    "format_size": "sizes",
    "parse_size": "sizes",
}


def __getattr__(name: str) -> Any:
    if name not in __all__ or name == "builtin_scenarios":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{_FROM.get(name, 'model')}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BACKINGS",
    "CORE_STEP_KEYS",
    "CORE_STEP_KINDS",
    "EXPECT_KEYS",
    "OPS",
    "OUTCOMES",
    "PAGE_SIZE",
    "PFN_BACKINGS",
    "PFN_KINDS",
    "PROTS",
    "RACE_POINTS",
    "VERDICTS",
    "DeviceKind",
    "DeviceSpec",
    "Devices",
    "Expect",
    "KnownDefect",
    "MemslotSpec",
    "Params",
    "Scenario",
    "StepKind",
    "StepSpec",
    "VmaSpec",
    "builtin_scenarios",
    "format_size",
    "load_scenario",
    "parse_scenario",
    "parse_size",
]


def builtin_scenarios() -> list[Path]:
    """Every ``*.toml`` under :mod:`kvmsim.scenario.library`, sorted.

    The library must be installed as plain files (not zipped), which is how
    the project installs it; the paths can be passed to :func:`load_scenario`.
    """
    found: list[Path] = []

    def walk(node: Traversable) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child)
            elif child.name.endswith(".toml"):
                found.append(Path(str(child)))

    walk(resources.files("kvmsim.scenario.library"))
    return sorted(found)
