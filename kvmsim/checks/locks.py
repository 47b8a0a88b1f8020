"""``lock_leak``: a lock is still held once the step returned.

Between steps nothing may hold ``mmap_sem`` or ``mmu_lock``: every path that
takes one must drop it before returning to the guest or to userspace.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvmsim.checks.context import CheckContext, Finding


def check(ctx: CheckContext) -> Iterator[Finding]:
    kvm = ctx.kvm
    for task, mode in sorted(kvm.mm.mmap_sem.held_by().items()):
        yield Finding(
            "lock_leak",
            ("mmap_sem", task, mode),
            f"mmap_sem held for {mode} by {task} after the step returned",
        )
    if kvm.mmu_lock.holder is not None:
        yield Finding(
            "lock_leak",
            ("mmu_lock", kvm.mmu_lock.holder),
            f"kvm->mmu_lock held by {kvm.mmu_lock.holder} after the step returned",
        )
