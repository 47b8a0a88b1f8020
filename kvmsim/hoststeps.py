"""The core host steps: what each scenario step kind that is not a guest
access does to the host model.

One function per kind, found through :data:`HOST_STEPS`; the runner (and
the explorer's host actors) call :func:`run_host_step`.  A kind that is not
here is a plugin's (``arch_step``, then ``device_step``).  A function gets
the simulation, the step and the range the step names (start hva, length)
and returns a :class:`~kvmsim.hooktypes.StepResult` when it has an outcome
or expectations of its own to report, else None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

from kvmsim import dirtylog
from kvmsim.checks import CheckContext
from kvmsim.hooktypes import StepResult
from kvmsim.host import events
from kvmsim.scenario.model import HOST_WRITE_VALUE, StepSpec

if TYPE_CHECKING:
    from kvmsim.runner import Simulation

__all__ = ["HOST_STEPS", "HostStep", "run_host_step"]

#: (simulation, step, start hva or None without a vma, length) → result
HostStep = Callable[["Simulation", StepSpec, "int | None", int], "StepResult | None"]


def _munmap(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    assert start is not None
    sim.mm.munmap(start, length)


def _mprotect(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    assert start is not None
    sim.mm.mprotect(start, length, step.prot or "r")


def _poison(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    assert start is not None
    ctx = CheckContext(sim.kvm)
    pfn, _ = ctx.host_frame(start)
    if pfn is None:
        # memory_failure needs a frame: fault the page in first
        events.host_write(sim.mm, start)
        pfn, _ = ctx.host_frame(start)
    if pfn is None:
        raise sim._err(
            f"nothing is mapped at {step.vma} + {step.offset:#x} to poison and "
            "a host write cannot fault a page in there; populate the vma "
            "or poison a writable page",
            f"step[{step.index}]",
        )
    events.memory_failure(sim.mm, pfn)


def _migrate(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    assert start is not None
    events.migrate_page(sim.mm, start)


def _split_thp(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    assert start is not None
    events.split_thp(sim.mm, start)


def _host_write(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    assert start is not None
    value = step.params.get("value", HOST_WRITE_VALUE)
    events.host_write(sim.mm, start, cast(int, value))


def _device_reset(sim: Simulation, step: StepSpec, start: int | None, length: int) -> StepResult:
    r = sim.hooks.hook.device_step(kvm=sim.kvm, step=step)
    if r is None:
        raise sim._err("no device handled this step", f"step[{step.index}].do")
    return cast(StepResult, r)


def _dirty_log(sim: Simulation, step: StepSpec, start: int | None, length: int) -> StepResult:
    return dirtylog.run_step(sim.kvm, step, sim.scenario.source)


#: The core host step kinds (the loader's CORE_STEP_KINDS declares their keys).
HOST_STEPS: Mapping[str, HostStep] = {
    "munmap": _munmap,
    "mprotect": _mprotect,
    "poison": _poison,
    "migrate": _migrate,
    "split_thp": _split_thp,
    "host_write": _host_write,
    "device_reset": _device_reset,
    "dirty_log": _dirty_log,
}


def run_host_step(sim: Simulation, step: StepSpec) -> StepResult | None:
    """Run one host step on ``sim``: a core kind from :data:`HOST_STEPS`, else
    the arch's ``arch_step``, else a device's ``device_step``."""
    fn = HOST_STEPS.get(step.do)
    if fn is not None:
        vma = sim._vmas.get(step.vma or "")
        start = None if vma is None else int(vma.start) + step.offset
        length = step.size if step.size is not None else (1 << sim.phys.page_shift)
        return fn(sim, step, start, length)
    hook = sim.hooks.hook
    r = hook.arch_step(kvm=sim.kvm, vcpu=step.vcpu, step=step)
    if r is None:
        r = hook.device_step(kvm=sim.kvm, step=step)
    if r is None:
        raise sim._err(f"no plugin handles step {step.do!r}", f"step[{step.index}].do")
    return cast(StepResult, r)
