"""``kvmsim bench --workload demand_paging --backend kvm``: the model's
demand-paging workload on this host's /dev/kvm, beside the model's figure.

Real side: one VM over anonymous memory of ``--mem`` (MADV_NOHUGEPAGE, or
MADV_HUGEPAGE with ``--page-size 2M``); one vcpu runs a generated loop that
stores to the first byte of every page, so each store is a first touch that
goes through KVM's fault path (``kvm_faultin_pfn`` → ``hva_to_pfn`` →
``handle_mm_fault``) and installs a leaf.  faults/s = pages / the KVM_RUN's
wall time.  Then ``vm_runs_per_s``: whole one-access crosscheck VMs
(create, set up, run, tear down) per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from kvmsim.errors import UsageError
from kvmsim.realkvm import guest
from kvmsim.realkvm.backend import RealVm, drain
from kvmsim.realkvm.host import probe
from kvmsim.realkvm.plan import THP_SIZE, mem_limit, plan
from kvmsim.scenario import parse_scenario

VM_RUNS: Final = 200  # VMs created for vm_runs_per_s
_TOUCH = """name = "bench-kvm"
arch = "x86_ept"
[[vma]]
name = "ram"
size = {size}
backing = "anon"
{huge}
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "access"
gpa = 0
op = "write"
"""


def kvm_demand_paging(args: Any, model: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Real faults/s and VM runs/s, with *model*'s result for the same flags."""
    host = probe()
    if not host.usable:
        raise UsageError(f"--backend kvm: no usable /dev/kvm: {host.reason}")
    psize = args.page_size or 4096
    if psize not in (4096, THP_SIZE):
        raise UsageError(f"--page-size {psize}: --backend kvm backs guest RAM with 4K or 2M (THP)")
    if args.vcpus != 1:
        raise UsageError("--vcpus: --backend kvm touches the pages with one vcpu")
    size = args.mem
    if size % psize or size > guest.GUEST_LIMIT:
        raise UsageError(f"--mem {size}: a multiple of the page size, at most 4G")
    huge = 'huge = "2M"' if psize == THP_SIZE else ""
    p = plan(parse_scenario(_TOUCH.format(size=size, huge=huge), "<bench>"), host)
    if not p.runs:
        raise UsageError(f"--mem: {p.refused} (allowed: {mem_limit(host) >> 20} MiB)")
    pages = size // psize
    loop = guest.touch_loop(0, pages, psize)
    real = _touch_all(p, loop)
    small = plan(parse_scenario(_TOUCH.format(size='"4M"', huge=""), "<bench>"), host)
    runs_dt = _vm_runs(small, 1)
    runs_dt2 = _vm_runs(small, 2)
    m = model(args)
    real_rate = pages / real if real else None
    return {
        "workload": "demand_paging",
        "backend": "kvm",
        "kernel": host.kernel,
        "module": host.module,
        "page_size": psize,
        "pages": pages,
        "seconds": round(real, 4),
        "faults_per_s": None if real_rate is None else round(real_rate, 1),
        "vm_runs_per_s": round(VM_RUNS / runs_dt, 1),
        "vm_runs_per_s_2_threads": round(VM_RUNS / runs_dt2, 1),
        "model_arch": args.arch,
        "model_strategy": args.strategy,
        "model_faults_per_s": m.get("faults_per_s"),
        "model_to_real": (
            round(m["faults_per_s"] / real_rate, 4) if real_rate and m.get("faults_per_s") else None
        ),
    }


def _vm_runs(p: Any, threads: int) -> float:
    """Seconds for :data:`VM_RUNS` one-access VMs on *threads* threads (a
    VM's set-up waits on SRCU grace periods, so two overlap; off the main
    thread a run has no alarm)."""

    def some(n: int) -> None:
        for _ in range(n):
            with RealVm(p) as vm:
                vm.run()

    t0 = time.perf_counter()
    if threads == 1:
        some(VM_RUNS)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(some, VM_RUNS // threads) for _ in range(threads)]:
                f.result()
    drain()
    return time.perf_counter() - t0


def _touch_all(p: Any, loop: bytes) -> float:
    """Run *loop* as step 0's code; the KVM_RUN's wall time in seconds."""
    with RealVm(p, timeout=60.0, code={0: loop}) as vm:
        t0 = time.perf_counter()
        obs = vm.run()
        dt = time.perf_counter() - t0
    if obs[0] is None or obs[0].outcome != "mapped":
        raise UsageError(f"--backend kvm: the touch loop ended in {obs[0]}")
    return dt
