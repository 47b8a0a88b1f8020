"""Plugin-defined step kinds reach the arch's ``arch_step``, else a device's
``device_step``; what the plugin returns becomes the step's report."""

from __future__ import annotations

from typing import Any

import pytest

from kvmsim import hookimpl
from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import StepResult
from kvmsim.runner import Simulation
from kvmsim.scenario import parse_scenario
from kvmsim.scenario.model import StepKind

TEXT = """
name = "steps"
arch = "ppc_radix"
[[vma]]
name = "ram"
size = "1M"
backing = "anon"
[[memslot]]
gpa = 0x0
vma = "ram"
[[step]]
do = "poke"
count = 3
"""

POKE = StepKind("poke", {"count": int}, required=("count",))


class DevicePoke:
    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    def device_step(self, kvm: Any, step: Any) -> StepResult | None:
        if step.do != "poke":
            return None
        self.seen.append(int(step.params["count"]))
        return StepResult(outcome="poked", detail="device did it", expect_failures=("x",))


def test_a_device_step_kind_reaches_device_step() -> None:
    sc = parse_scenario(TEXT, "steps.toml", step_kinds={"poke": POKE})
    dev = DevicePoke()
    report = Simulation(sc, strategy="generic_v4_16", extra_plugins=[dev]).run()
    assert dev.seen == [3]
    step = report.steps[0]
    assert (step.outcome, step.detail, step.expect_failures) == ("poked", "device did it", ["x"])
    assert not report.passed  # the plugin's own expectation failure fails the run


def test_a_step_kind_nobody_handles_is_a_clear_error() -> None:
    sc = parse_scenario(TEXT, "steps.toml", step_kinds={"poke": POKE})
    with pytest.raises(ScenarioError) as e:
        Simulation(sc, strategy="generic_v4_16").run()
    assert e.value.key == "step[0].do" and "poke" in str(e.value)
