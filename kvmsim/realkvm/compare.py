"""Compare the real host's observables with the model's, step by step.

Statuses: ``agree``; ``disagree`` (an observable both sides showed differs);
``known`` (it differs exactly as a record of :file:`known.toml` says, for
this kernel release or module); ``not_comparable`` (nothing both sides
showed, or the access never reached KVM's fault path); ``unsupported`` (the
host cannot reproduce the step, with the reason).
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from typing import Any, Final

from attrs import frozen

from kvmsim.realkvm.obs import Obs

AGREE, DISAGREE, KNOWN, NOT_COMPARABLE, UNSUPPORTED = (
    "agree",
    "disagree",
    "known",
    "not_comparable",
    "unsupported",
)
STATUSES: Final = (AGREE, DISAGREE, NOT_COMPARABLE, UNSUPPORTED, KNOWN)
#: the observables compared, in order; each compared only when both sides have it
OBSERVABLES: Final = ("outcome", "value", "frame", "leaf", "dirty")


@frozen
class StepResult:
    """One step's comparison (the ``steps`` items of ``--json``)."""

    index: int
    do: str
    real: Obs | None
    model: Obs | None
    status: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "do": self.do,
            "real": None if self.real is None else self.real.to_json(),
            "model": None if self.model is None else self.model.to_json(),
            "status": self.status,
            "reason": self.reason,
        }


@frozen
class KnownDifference:
    """A recorded difference between the model and a real kernel."""

    scenario: str
    step: int
    observable: str  # one of OBSERVABLES
    reason: str
    module: str | None = None  # only on this vendor module
    kernel: str | None = None  # only on kernel releases matching this regex

    def applies(self, scenario: str, step: int, module: str, kernel: str) -> bool:
        return (
            self.scenario == scenario
            and self.step == step
            and (self.module is None or self.module == module)
            and (self.kernel is None or re.match(self.kernel, kernel) is not None)
        )


def load_known(text: str | None = None) -> tuple[KnownDifference, ...]:
    """The records of :file:`kvmsim/realkvm/known.toml` (or of *text*)."""
    if text is None:
        text = resources.files("kvmsim.realkvm").joinpath("known.toml").read_text()
    doc = tomllib.loads(text)
    out = []
    for i, t in enumerate(doc.get("known", [])):
        missing = {"scenario", "step", "observable", "reason"} - set(t)
        if missing or t["observable"] not in OBSERVABLES:
            raise ValueError(f"known.toml: known[{i}] needs scenario, step, observable, reason")
        out.append(
            KnownDifference(
                t["scenario"],
                t["step"],
                t["observable"],
                t["reason"],
                t.get("module"),
                t.get("kernel"),
            )
        )
    return tuple(out)


def _differs(real: Obs, model: Obs) -> list[str]:
    out = []
    for name in OBSERVABLES:
        a, b = getattr(real, name), getattr(model, name)
        if a is not None and b is not None and a != b:
            out.append(name)
    return out


def _shared(real: Obs, model: Obs) -> list[str]:
    return [
        n for n in OBSERVABLES if getattr(real, n) is not None and getattr(model, n) is not None
    ]


def compare_step(
    index: int,
    do: str,
    real: Obs | None,
    model: Obs | None,
    *,
    scenario: str,
    module: str,
    kernel: str,
    known: tuple[KnownDifference, ...] = (),
) -> StepResult:
    """Compare one step whose plan ran it (*real* None: the host could not)."""
    if real is None:
        return StepResult(
            index, do, None, model, UNSUPPORTED, "the host could not do this step safely"
        )
    if model is None:
        return StepResult(index, do, real, None, NOT_COMPARABLE, "the model did not run this step")
    diff = _differs(real, model)
    if (
        do == "access"
        and model.faulted
        and real.faulted is False
        and real.outcome == model.outcome == "mapped"
    ):
        # the access never reached KVM's fault path (a prefetched neighbour
        # SPTE, or an emulated instruction): the model's fault was not tested
        return StepResult(
            index, do, real, model, NOT_COMPARABLE, "pf_taken did not rise: no fault reached KVM"
        )
    if diff:
        recs = [
            kd
            for kd in known
            if kd.observable in diff and kd.applies(scenario, index, module, kernel)
        ]
        if {kd.observable for kd in recs} == set(diff):
            return StepResult(index, do, real, model, KNOWN, "; ".join(kd.reason for kd in recs))
        return StepResult(index, do, real, model, DISAGREE, "differs in " + ", ".join(diff))
    if not _shared(real, model):
        return StepResult(index, do, real, model, NOT_COMPARABLE, "no observable on both sides")
    return StepResult(index, do, real, model, AGREE)
