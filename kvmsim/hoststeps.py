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
from kvmsim.hooktypes import HOST_VCPU, StepResult
from kvmsim.host import events, madvise
from kvmsim.host.ageing import notify_clear_young, notify_test_young
from kvmsim.host.constants import (
    VM_FAULT_HWPOISON,
    VM_FAULT_HWPOISON_LARGE,
    VM_FAULT_SIGBUS,
    VM_FAULT_SIGSEGV,
)
from kvmsim.kvm.vcpu import device_mmio
from kvmsim.scenario.model import HOST_WRITE_VALUE, StepSpec
from kvmsim.uffdsteps import UFFD_STEPS

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


def _device_io(sim: Simulation) -> events.DeviceIo:
    """QEMU's load or store on a frame with no ``struct page``: the same
    device access a guest's makes (:func:`kvmsim.kvm.vcpu.device_mmio`),
    from a CPU that runs no vcpu (:data:`~kvmsim.hooktypes.HOST_VCPU`)."""
    kvm = sim.kvm

    def io(pfn: int, offset: int, op: str, width: int, value: int) -> int | None:
        r = device_mmio(kvm, HOST_VCPU, pfn, offset, op, width, value)
        return None if r is None else r.value

    return io


def _signal(ret: int) -> str:
    """What the VMM process got from a failed user fault, for the report."""
    if ret & VM_FAULT_SIGSEGV:
        return "SIGSEGV"
    if ret & (VM_FAULT_SIGBUS | VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE):
        return "SIGBUS"
    return ""


def _host_write(sim: Simulation, step: StepSpec, start: int | None, length: int) -> StepResult:
    assert start is not None
    value = cast(int, step.params.get("value", HOST_WRITE_VALUE))
    width = cast(int, step.params.get("width", 8))
    ret = events.host_write(sim.mm, start, value, width, _device_io(sim))
    sig = _signal(ret)
    return StepResult(detail=f"the store got {sig}" if sig else f"stored {value:#x}")


def _host_read(sim: Simulation, step: StepSpec, start: int | None, length: int) -> StepResult:
    """QEMU loads through its own mapping (``events.host_read``); the value
    is the step's, for ``expect.value``."""
    assert start is not None
    width = cast(int, step.params.get("width", 8))
    ret, value = events.host_read(sim.mm, start, width, _device_io(sim))
    sig = _signal(ret)
    if sig:
        detail = f"the load got {sig}"
    elif value is None:
        detail = "no device answered the load"
    else:
        detail = f"read {value:#x}"
    return StepResult(detail=detail, value=value)


def _age(sim: Simulation, step: StepSpec, start: int | None, length: int) -> StepResult:
    """Ask the secondary MMUs whether the range was used: ``clear_young``
    (the default, which also clears) or ``test_young``; the answer is the
    step's ``young`` (kernel-notes §L.8)."""
    assert start is not None
    if step.params.get("young", "clear") == "test":
        young = notify_test_young(sim.mm, start, start + length)
    else:
        young = notify_clear_young(sim.mm, start, start + length)
    return StepResult(outcome="done", detail="young" if young else "old", young=young)


def _madvise(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    assert start is not None
    behavior = madvise.ADVICE[str(step.params["advice"])]
    ret = madvise.sys_madvise(sim.mm, start, length, behavior)
    if ret:  # a refusal the loader could not foresee (an earlier mprotect, munmap)
        why = madvise.madvise_error(sim.mm, start, behavior, ret)
        raise sim._err(f"{why} (vma {step.vma!r} + {step.offset:#x})", f"step[{step.index}].advice")


def _punch_hole(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    vma = sim.vma(step.vma or "")
    ret = madvise.punch_hole(sim.mm, vma, step.offset, length)
    if ret:
        why = madvise.punch_hole_error(vma, ret)
        raise sim._err(f"{why} (vma {step.vma!r} + {step.offset:#x})", f"step[{step.index}].vma")


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
    "host_read": _host_read,
    "age": _age,
    "madvise": _madvise,
    "punch_hole": _punch_hole,
    "device_reset": _device_reset,
    "dirty_log": _dirty_log,
    **UFFD_STEPS,  # the userfaultfd handler's ioctls and pwrite
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
