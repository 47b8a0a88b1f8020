"""Which parts of a scenario the real kernel can reproduce, decided before
anything is created (pure: no /dev/kvm needed, so it is unit-tested anywhere).

A scenario is refused whole when its set-up cannot be built from userspace
(a driver's PFNMAP vma, a device, hugetlbfs without a pool, too much
memory); otherwise each step gets an action or the reason it is
``unsupported`` (or ``not_comparable``, for an observable the host's MMU
does not have).  A step after an unsupported host event is unsupported too:
the real host did not change where the model did, so the states part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from attrs import frozen

from kvmsim.realkvm import guest
from kvmsim.realkvm.host import SHMEM_ENABLED, SHMEM_THP_POLICIES, HostInfo
from kvmsim.scenario.model import DirtySpec, Scenario, StepSpec, VmaSpec

PAGE: Final = 4096
THP_SIZE: Final = 2 << 20
#: the default ceiling on what a scenario may map (bytes); also at most half
#: of MemAvailable
DEFAULT_MEM_LIMIT: Final = 1 << 30

#: what each step kind does on the real host, or why it cannot
ACCESS, HOST, DIRTY_LOG = "access", "host", "dirty_log"
HOST_STEPS: Final = ("munmap", "mprotect", "host_write", "host_read", "madvise", "punch_hole")
_NO_SYSCALL: Final = {
    "poison": "poison: MADV_HWPOISON would poison a real frame of this host "
    "(CAP_SYS_ADMIN, CONFIG_MEMORY_FAILURE); not taken",
    "split_thp": "split_thp: no system call splits a THP's PMD in place without "
    "also changing the mapping",
    "swap_out": "swap_out: reclaim of one chosen page to swap cannot be forced from userspace",
    "async_pf": "async_pf: the generated guest has no async page-fault handler "
    "(MSR_KVM_ASYNC_PF_EN)",
    "apf_complete": "apf_complete: the generated guest has no async page-fault handler",
    "device_reset": "device_reset: no emulated device on the real host",
}
_PFN_BACKINGS: Final = ("pfnmap_linear", "pfnmap_fault", "mixedmap", "device")


@frozen
class StepPlan:
    """One step: what to do (``action``) or, with ``status``, why not."""

    index: int
    action: str | None  # ACCESS, HOST, DIRTY_LOG or None
    status: str | None = None  # "unsupported" / "not_comparable" when action is None
    reason: str = ""


@frozen
class Plan:
    """A scenario as the real host will run it."""

    scenario: Scenario
    refused: str  # why nothing of it runs ("" when it runs)
    steps: tuple[StepPlan, ...]
    vcpus: int = 1

    @property
    def runs(self) -> bool:
        return not self.refused


def mem_limit(host: HostInfo, limit: int | None = None) -> int:
    """What one scenario may map on this host."""
    cap = DEFAULT_MEM_LIMIT if limit is None else limit
    return min(cap, host.mem_available // 2) if host.mem_available else cap


def _vma_refusal(v: VmaSpec, i: int, host: HostInfo) -> str:
    where = f"vma[{i}] {v.name!r}"
    if v.backing in _PFN_BACKINGS:
        return (
            f"{where}: backing {v.backing!r} needs a driver's VM_IO/VM_PFNMAP mapping, "
            "which userspace cannot create"
        )
    if v.backing == "hugetlbfs":
        if v.huge != THP_SIZE:
            return f"{where}: hugetlbfs pages of {v.huge >> 10}K: only the 2M pool is used"
        need = v.size // THP_SIZE
        if host.hugepages_free < need:
            return (
                f"{where}: hugetlbfs needs {need} free 2M huge pages, the host has "
                f"{host.hugepages_free} (/proc/sys/vm/nr_hugepages)"
            )
    if v.backing == "anon" and v.shared:
        return (
            f"{where}: a real MAP_SHARED|MAP_ANONYMOUS mapping is shmem, not the model's "
            "anon + VM_SHARED; use backing = 'shmem'"
        )
    if v.huge and v.backing == "shmem" and host.shmem_thp not in SHMEM_THP_POLICIES:
        # memfd_create's file lives on shm_mnt, whose huge policy is the
        # sysfs knob; a tmpfs mount with huge= would need a mount (not taken)
        found = f"[{host.shmem_thp}]" if host.shmem_thp else "no readable knob"
        return (
            f"{where}: THP on shmem needs {SHMEM_ENABLED} to be "
            f"{', '.join(SHMEM_THP_POLICIES[:-1])} or {SHMEM_THP_POLICIES[-1]}; "
            f"this host has {found}"
        )
    if v.huge and v.backing == "anon" and v.huge != THP_SIZE:
        return f"{where}: THP of {v.huge >> 10}K: x86-64 THPs are 2M"
    if v.pgoff and v.backing == "anon":
        return f"{where}: pgoff on anonymous memory has no real counterpart"
    return ""


def _step_refusal(s: StepSpec, host: HostInfo, slots: dict[int, object]) -> tuple[str, str, str]:
    """(action, status, reason) for one step, before state is considered."""
    if s.at is not None:
        return (
            "",
            "unsupported",
            f"race placement at = {s.at!r}: a host event cannot be placed inside a real fault",
        )
    if s.do == "access":
        width = int(s.params.get("width", 8))  # type: ignore[call-overload]
        if s.op == "exec":
            return "", "unsupported", "exec: the guest would run code from scenario memory"
        if width not in (4, 8):
            return (
                "",
                "unsupported",
                f"width {width}: the generated guest does 4- and 8-byte accesses",
            )
        if "ea" in s.params and s.params["ea"] != s.gpa:
            return "", "unsupported", "ea differs from gpa: x86 guests here are identity-mapped"
        if (s.gpa or 0) + width > guest.GUEST_LIMIT:
            return "", "unsupported", f"gpa {s.gpa:#x}: the guest identity-maps only the low 4 GiB"
        return ACCESS, "", ""
    if s.do in HOST_STEPS:
        return HOST, "", ""
    if s.do == "dirty_log":
        action = s.params.get("action")
        if action not in ("enable", "disable", "get") or s.params.get("slot") not in slots:
            return "", "unsupported", "dirty_log: an action or slot the model rejects"
        return DIRTY_LOG, "", ""
    if s.do == "migrate":
        if host.numa_nodes < 2:
            return "", "unsupported", "migrate: this host has one NUMA node, nowhere to move a page"
        return "", "unsupported", "migrate: move_pages is not in the backend yet"
    if s.do == "age":
        if not host.tdp:
            return (
                "",
                "not_comparable",
                (f"age: EPT accessed bits; {host.module} is a shadow MMU, which has none"),
            )
        test = s.params.get("young") == "test"
        what = "khugepaged's test_young" if test else "reclaim's clear_young"
        return "", "unsupported", f"age: {what} cannot be triggered on one range"
    if s.do in _NO_SYSCALL:
        return "", "unsupported", _NO_SYSCALL[s.do]
    return "", "unsupported", f"{s.do}: no real-kernel translation for this step kind"


def plan(
    scenario: Scenario, host: HostInfo, *, arch: str = "x86_ept", limit: int | None = None
) -> Plan:
    """Decide what of *scenario* runs on *host* (see the module docstring)."""
    steps = scenario.steps
    if scenario.arch not in (None, arch):
        return _refuse(scenario, f"arch {scenario.arch!r}: only x86 scenarios run on /dev/kvm")
    if scenario.devices:
        kinds = ", ".join(d.kind for d in scenario.devices)
        return _refuse(scenario, f"device {kinds}: not on the real host")
    if scenario.dirty != DirtySpec():
        # the backend logs with KVM_GET_DIRTY_LOG only (the host's PML choice is its own)
        return _refuse(scenario, "[dirty]: manual protect, rings and modes are not in the backend")
    if scenario.uffd:
        # without the registration the real guest would map what the model's handler resolves
        return _refuse(scenario, "[[uffd]]: userfaultfd is not in the /dev/kvm backend yet")
    for i, v in enumerate(scenario.vmas):
        why = _vma_refusal(v, i, host)
        if why:
            return _refuse(scenario, why)
    for m in scenario.memslots:
        if m.gpa + m.size > guest.GUEST_LIMIT:
            return _refuse(
                scenario, f"memslot[{m.index}] ends above 4 GiB, where the system area is"
            )
    need = sum(v.size for v in scenario.vmas)
    allowed = mem_limit(host, limit)
    if need > allowed:
        return _refuse(
            scenario,
            f"needs {need >> 20} MiB of mappings, more than the {allowed >> 20} MiB allowed here",
        )
    accesses = sum(1 for s in steps if s.do == "access")
    if accesses > guest.MAX_STEPS:
        return _refuse(
            scenario, f"{accesses} accesses: the guest code page holds {guest.MAX_STEPS}"
        )
    vcpus = 1 + max((s.vcpu for s in steps), default=0)
    if vcpus > guest.MAX_VCPUS:
        return _refuse(scenario, f"{vcpus} vcpus: the system area holds {guest.MAX_VCPUS}")
    slots: dict[int, object] = {m.index: m for m in scenario.memslots}
    out: list[StepPlan] = []
    broken: int | None = None  # first unsupported host event
    backings = {v.name: v.backing for v in scenario.vmas}
    for s in steps:
        action, status, reason = _step_refusal(s, host, slots)
        if s.do == "punch_hole" and backings.get(s.vma or "") == "hugetlbfs":
            action, status, reason = (
                "",
                "unsupported",
                "punch_hole on hugetlbfs: the backend maps it MAP_ANONYMOUS|MAP_HUGETLB, "
                "which has no fd to fallocate",
            )
        if action and broken is not None:
            out.append(
                StepPlan(
                    s.index,
                    None,
                    "unsupported",
                    f"follows step {broken}, which the real host could not do",
                )
            )
            continue
        if not action and status == "unsupported" and s.do != "access" and broken is None:
            broken = s.index
        out.append(StepPlan(s.index, action or None, status or None, reason))
    return Plan(scenario, "", tuple(out), vcpus)


def _refuse(scenario: Scenario, reason: str) -> Plan:
    steps = tuple(StepPlan(s.index, None, "unsupported", reason) for s in scenario.steps)
    return Plan(scenario, reason, steps)


def expressible(scenarios: Sequence[Scenario], host: HostInfo) -> list[Scenario]:
    """The scenarios the backend can express at all (the default set)."""
    return [sc for sc in scenarios if plan(sc, host).runs]
