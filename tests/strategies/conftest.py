"""Helpers for the strategy tests: small radix scenarios written inline."""

from __future__ import annotations

MMAP_BASE = 0x1000_0000  # the host model places the first vma here (2M aligned)
PAGE = 0x10000  # ppc64 PAGE_SIZE (64K)


def pfnmap_scenario(
    *,
    backing: str = "pfnmap_fault",
    pfn_kind: str = "mmio",
    prot: str = "rw",
    shared: bool = True,
    pgoff: int = 0,
    fault_retry: int = 0,
    steps: str = "",
    readonly: bool = False,
) -> str:
    """One 4-page device vma mapped at gpa 0x1000_0000, then ``steps``."""
    return f"""
name = "strat-test"
description = "strategy unit scenario"
arch = "ppc_radix"

[[vma]]
name = "dev"
size = "256K"
backing = "{backing}"
prot = "{prot}"
shared = {str(shared).lower()}
pfn_kind = "{pfn_kind}"
pgoff = {pgoff}
{f"fault_retry = {fault_retry}" if fault_retry else ""}

[[memslot]]
gpa = 0x1000_0000
vma = "dev"
readonly = {str(readonly).lower()}
{steps}
"""


def access(gpa: int, op: str = "read") -> str:
    return f'\n[[step]]\ndo = "access"\ngpa = {gpa:#x}\nop = "{op}"\n'


def host_step(do: str, offset: int = 0, size: int | None = None) -> str:
    s = f'\n[[step]]\ndo = "{do}"\nvma = "dev"\noffset = {offset:#x}\n'
    if size is not None:
        s += f"size = {size:#x}\n"
    return s


def events(report: object, name: str) -> list[dict[str, object]]:
    return [e for e in report.events if e["event"] == name]  # type: ignore[attr-defined]
