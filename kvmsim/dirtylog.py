"""The ``dirty_log`` scenario step an arch plugin may offer
(``KVM_SET_USER_MEMORY_REGION`` toggling ``KVM_MEM_LOG_DIRTY_PAGES``, and
``KVM_GET_DIRTY_LOG``): its keys, and the comparison of the gpas a
``get`` reported with the step's ``expect_dirty`` (the gpas a correct
kernel reports).  How the arch harvests dirty pages is its own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, cast

from kvmsim.errors import ScenarioError
from kvmsim.hooktypes import StepResult
from kvmsim.scenario.model import StepKind

if TYPE_CHECKING:
    from kvmsim.kvm.core import Kvm
    from kvmsim.kvm.memslot import Memslot
    from kvmsim.scenario.model import StepSpec

DIRTY_LOG_STEP: Final = StepKind(
    "dirty_log",
    {"slot": int, "action": str, "expect_dirty": list, "pml": bool},
    required=("slot", "action"),
)
DIRTY_ACTIONS: Final = ("enable", "get", "disable")


def dirty_log_action(step: StepSpec) -> str:
    """The step's ``action``, checked."""
    action = str(step.params["action"])
    if action not in DIRTY_ACTIONS:
        raise ScenarioError(
            "unknown dirty_log action",
            key=f"step[{step.index}].action",
            expected=", ".join(DIRTY_ACTIONS),
            got=action,
        )
    return action


def dirty_log_slot(kvm: Kvm, step: StepSpec) -> Memslot:
    """The memslot the step's ``slot`` names (its id: file order from 0)."""
    sid = step.params["slot"]
    for s in kvm.memslots.slots:
        if s.id == sid:
            return s
    raise ScenarioError(
        f"no memslot with id {sid} (memslots are numbered in file order from 0)",
        key=f"step[{step.index}].slot",
    )


def dirty_log_result(step: StepSpec, gpas: tuple[int, ...]) -> StepResult:
    """The result of a ``get`` that reported ``gpas`` (sorted), failing the
    step's expectation when ``expect_dirty`` names other gpas."""
    want = step.params.get("expect_dirty")
    got_s = [hex(g) for g in gpas]
    if want is not None:
        items = list(cast(Iterable[object], want))
        if not all(isinstance(g, int) and not isinstance(g, bool) for g in items):
            raise ScenarioError(
                "wrong type",
                key=f"step[{step.index}].expect_dirty",
                expected="an array of guest physical addresses (integers)",
                got=want,
            )
        expected = tuple(sorted(cast(list[int], items)))
        if expected != gpas:
            return StepResult(
                outcome="done",
                detail=f"dirty gpas {got_s}",
                expect_failures=(
                    f"expect_dirty: expected {[hex(g) for g in expected]}, got {got_s}",
                ),
            )
    return StepResult(outcome="done", detail=f"dirty gpas {got_s}")
