"""The userfaultfd handler in a scenario: ``[[uffd]]`` registration at
set-up, the handler's steps (``uffd_copy``, ``uffd_zeropage``,
``uffd_continue``, ``uffd_wake``) and ``pwrite``, which fills a file's page
cache the way a VMM prepares pages for MINOR faults.

Who runs the handler's steps:

- a concurrent scenario: the step's actor (``actor = "uffd"``, or ``qemu``
  by default), when the scheduler runs it; a task waiting in
  ``handle_userfault`` is blocked until a step wakes it;
- a sequential scenario: a task (a vcpu's fault, or QEMU's own
  ``host_read`` / ``host_write``) that must wait in ``handle_userfault``
  cannot wait for later steps in file order, so the handler's first step
  not yet run whose range covers the fault's address runs right there, as
  the handler thread answering that fault would (task ``uffd``); at its own
  place in the file that step then does nothing more.  A waiting task with
  no such step left would sleep for ever: the step ends in ``deadlock``.

The handler reads one fault message per step (the oldest queued one in the
step's range) before its ioctl: ``expect = { uffd_faults = N }`` on a step
is the number of messages read so far in the run, as the kernel selftests'
``uffd_faults`` counter (an access, a ``host_read`` / ``host_write`` and the
handler's steps can expect it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from kvmsim.hooktypes import StepResult
from kvmsim.host import userfaultfd as uffd
from kvmsim.host.constants import VM_HUGETLB
from kvmsim.host.fileio import file_write
from kvmsim.scenario.loader import UFFD_STEP_KINDS
from kvmsim.scenario.model import StepSpec

if TYPE_CHECKING:
    from kvmsim.host.mm import Mm
    from kvmsim.runner import Simulation

__all__ = ["HANDLER_TASK", "UFFD_STEPS", "faults_read", "setup", "unsupported_mode"]

#: The task that runs the handler's steps inside a sequential run's fault.
HANDLER_TASK = "uffd"

_ERRNO = {0: "0", -11: "-EAGAIN", -14: "-EFAULT", -17: "-EEXIST", -22: "-EINVAL", -2: "-ENOENT"}


def setup(sim: Simulation) -> None:
    """``UFFDIO_REGISTER`` of every ``[[uffd]]`` range, as the VMM does
    before the guest runs; in a sequential run, waiting faults are served
    by the handler's next step (see the module docstring)."""
    sc = sim.scenario
    if not sc.uffd:
        return
    mm = sim.mm
    for u in sc.uffd:
        start = int(sim.vma(u.vma).start) + u.offset
        ret = uffd.userfaultfd_register(mm, start, start + u.size, uffd.UFFD_MODES[u.mode])
        if ret:
            raise sim._err(
                f"UFFDIO_REGISTER of {u.vma} + {u.offset:#x} fails with {_ERRNO.get(ret, ret)} "
                f"on {sim.arch} under {sim.strategy}",
                f"uffd[{u.index}].vma",
            )
    ctx = mm.uffd
    assert ctx is not None
    ctx.sigbus = sc.uffd[0].sigbus  # UFFDIO_API's features (no fault has run yet)
    if not sc.concurrent:
        ctx.serve = _Server(sim).serve


class _Server:
    """A sequential run's handler: runs the first uffd step not yet run
    that covers a waiting fault."""

    __slots__ = ("sim",)

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def serve(self, uwq: uffd.UffdWait) -> bool:
        sim = self.sim
        done = _done(sim)
        for step in sim.scenario.steps:
            if step.do not in UFFD_STEP_KINDS or step.index in done:
                continue
            start, length = _range(sim, step)
            if not start <= uwq.address < start + length:
                continue
            done[step.index] = uwq.task
            mm = sim.mm
            if sim.tracer.enabled:
                sim.tracer.emit(
                    "uffd_handler",
                    handler_step=step.index,
                    do=step.do,
                    serves=uwq.task,
                    address=uwq.address,
                )
            prev = mm.current
            mm.current = HANDLER_TASK
            try:
                _ioctl(sim, step, start, length)
            finally:
                mm.current = prev
            return True
        return False


def unsupported_mode(scenario: Any, linux: tuple[int, int]) -> str | None:
    """Why ``linux``'s UFFDIO_REGISTER refuses a ``[[uffd]]`` of ``scenario``."""
    return uffd.register_unsupported(scenario, linux) if scenario.uffd else None


def faults_read(mm: Mm) -> int:
    """The fault messages the handler has read so far (0 without a userfaultfd)."""
    ctx = mm.uffd
    return 0 if ctx is None else int(ctx.faults_read)


def _done(sim: Simulation) -> dict[int, str]:
    """Steps already run inside a fault: index → the task they served."""
    done: dict[int, str] | None = getattr(sim, "_uffd_served", None)
    if done is None:
        done = {}
        sim._uffd_served = done  # type: ignore[attr-defined]
    return done


def _range(sim: Simulation, step: StepSpec) -> tuple[int, int]:
    """The step's hva range, its length rounded up to the vma's page size
    (a host page, or the huge page of a hugetlbfs vma)."""
    vma = sim.vma(step.vma or "")
    start = int(vma.start) + step.offset
    unit = 1 << (vma.huge_shift if vma.flags & VM_HUGETLB else sim.phys.page_shift)
    if start & (unit - 1):
        raise sim._err(
            f"offset {step.offset:#x} is not aligned to the vma's page size "
            f"{unit:#x} on {sim.arch}",
            f"step[{step.index}].offset",
        )
    size = step.size or unit
    return start, (size + unit - 1) & ~(unit - 1)


def _ioctl(sim: Simulation, step: StepSpec, start: int, length: int) -> int:
    mm = sim.mm
    if step.do == "uffd_copy":
        return uffd.userfaultfd_copy(mm, start, length, cast(int, step.params.get("value", 0)))
    if step.do == "uffd_zeropage":
        return uffd.userfaultfd_zeropage(mm, start, length)
    if step.do == "uffd_continue":
        return uffd.userfaultfd_continue(mm, start, length)
    return uffd.userfaultfd_wake(mm, start, length)


def _uffd_step(sim: Simulation, step: StepSpec, start: int | None, length: int) -> StepResult:
    done = _done(sim)
    served = done.get(step.index)
    if served is not None:
        return StepResult(detail=f"ran earlier, inside {served}'s fault")
    # run once: an armed step (at = ...) fires here and must not serve again
    done[step.index] = sim.mm.current
    lo, n = _range(sim, step)
    ret = _ioctl(sim, step, lo, n)
    return StepResult(detail=f"{step.do}: {_ERRNO.get(ret, ret)}")


def _pwrite(sim: Simulation, step: StepSpec, start: int | None, length: int) -> None:
    vma = sim.vma(step.vma or "")
    f = vma.file
    assert f is not None
    index = vma.pgoff + (step.offset >> sim.phys.page_shift)
    page = file_write(sim.phys, f, index, cast(int, step.params.get("value", 0)))
    if sim.tracer.enabled:
        sim.tracer.emit("pwrite", file=f.name, index=index, pfn=page)


#: step kind → what it does (merged into :data:`kvmsim.hoststeps.HOST_STEPS`)
UFFD_STEPS = {
    "uffd_copy": _uffd_step,
    "uffd_zeropage": _uffd_step,
    "uffd_continue": _uffd_step,
    "uffd_wake": _uffd_step,
    "pwrite": _pwrite,
}
