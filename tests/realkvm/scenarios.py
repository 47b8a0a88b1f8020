"""Scenario text the realkvm tests share: one 4M vma in slot 0, a store first."""

from __future__ import annotations


def one_slot(vma: str, steps: str = "", head: str = 'arch = "x86_ept"') -> str:
    """A scenario over vma "ram" (4M, *vma* lines) at gpa 0, whose step 0
    stores 3 to gpa 0x1000, then *steps*."""
    return f"""name = "t"
{head}
[[vma]]
name = "ram"
size = "4M"
{vma}
[[memslot]]
gpa = 0
vma = "ram"
[[step]]
do = "access"
gpa = 0x1000
op = "write"
value = 3
{steps}"""
