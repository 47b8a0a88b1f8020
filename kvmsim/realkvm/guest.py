"""The guest: page tables, segment state and per-step code, as bytes.

Why this shape (learned on a ``kvm_pvm`` host, issue 19): a paravirtual KVM
emulates real mode, 32-bit mode and 64-bit supervisor code instruction by
instruction, so such an access never reaches ``hva_to_pfn``.  64-bit user
code (CPL 3) runs natively, so the guest is long mode at CPL 3 with 4-level
page tables identity-mapping the low 4 GiB in 2 MiB pages, Accessed and
Dirty preset (a clean guest PTE makes the shadow MMU map loads read-only and
changes what the dirty log reports).  Each step is one load or store and an
``out`` to :data:`STEP_PORT`, so every step ends in ``KVM_EXIT_IO`` and the
value a load saw is left in ``rax``.

The system area (tables and code) is a memslot of its own at
:data:`SYS_GPA`, above everything a scenario may name, so it never overlaps
a scenario memslot.
"""

from __future__ import annotations

import functools
import struct
from typing import Final

from kvmsim.realkvm import kvmapi as k

SYS_GPA: Final = 1 << 32  # 4 GiB: mapped by PDPT[4]
SYS_SIZE: Final = 0x10000
GUEST_LIMIT: Final = 1 << 32  # scenario gpas must be below this (identity-mapped)
SYS_SLOT: Final = 0x7F00  # memslot id of the system area
TSS_OFFSET: Final = 0x7000  # the (all-zero) TSS page
CODE_OFFSET: Final = 0x8000  # code page inside the system area
CODE_SIZE: Final = 0x1000  # one page, faulted in by the warm-up run
STEP_CODE: Final = 32  # bytes of code per step
MAX_STEPS: Final = CODE_SIZE // STEP_CODE - 1  # the last slot is the warm-up
MAX_VCPUS: Final = 8  # a bound on what one scenario may ask for
STEP_PORT: Final = 0x10
WARMUP_PORT: Final = 0x11

# Page-table entry bits: present, writable, user, accessed, dirty, 2M page.
_P, _W, _U, _A, _D, _PS = 1, 2, 4, 0x20, 0x40, 0x80
_TABLE: Final = _P | _W | _U | _A
_LEAF_2M: Final = _P | _W | _U | _A | _D | _PS

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE: Final = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
RFLAGS_IOPL3: Final = 0x3002  # IOPL 3 lets CPL 3 use out; bit 1 is always set
USER_CS: Final = 0x33
USER_DS: Final = 0x2B


@functools.cache
def page_tables() -> bytes:
    """PML4, PDPT, four PDs for the low 4 GiB, and one PD for the system area,
    laid out from offset 0 of the system area (7 pages)."""
    pml4, pdpt = SYS_GPA, SYS_GPA + 0x1000
    out = bytearray(7 * 0x1000)
    struct.pack_into("<Q", out, 0, pdpt | _TABLE)
    for i in range(5):
        struct.pack_into("<Q", out, 0x1000 + 8 * i, (pml4 + 0x2000 + 0x1000 * i) | _TABLE)
    for i in range(4):
        base = 0x2000 + 0x1000 * i
        struct.pack_into(
            "<512Q", out, base, *(((i << 30) + (j << 21)) | _LEAF_2M for j in range(512))
        )
    struct.pack_into("<Q", out, 0x6000, SYS_GPA | _LEAF_2M)
    return bytes(out)


def load(gpa: int, width: int = 8) -> bytes:
    """``mov rax, [gpa]`` (or ``mov eax``), then ``out STEP_PORT, al``."""
    op = b"\x48\xa1" if width == 8 else b"\xa1"
    return op + struct.pack("<Q", gpa) + bytes((0xE6, STEP_PORT))


def store(gpa: int, value: int, width: int = 8) -> bytes:
    """``mov rax, value``; ``mov [gpa], rax`` (or ``eax``); ``out STEP_PORT, al``."""
    op = b"\x48\xa3" if width == 8 else b"\xa3"
    return (
        b"\x48\xb8"
        + struct.pack("<Q", value & (2**64 - 1))
        + op
        + struct.pack("<Q", gpa)
        + bytes((0xE6, STEP_PORT))
    )


def touch_loop(base: int, count: int, stride: int) -> bytes:
    """A store to each of *count* pages from *base*, *stride* apart, then
    ``out STEP_PORT``: ``mov rdi, base; mov rcx, count; 1: mov [rdi], al;
    add rdi, stride; dec rcx; jnz 1b; out``."""
    body = b"\x88\x07" + b"\x48\x81\xc7" + struct.pack("<i", stride) + b"\x48\xff\xc9"
    jnz = b"\x75" + struct.pack("<b", -(len(body) + 2))
    return (
        b"\x48\xbf"
        + struct.pack("<Q", base)
        + b"\x48\xb9"
        + struct.pack("<Q", count)
        + body
        + jnz
        + bytes((0xE6, STEP_PORT))
    )


def warmup() -> bytes:
    """``out WARMUP_PORT, al``: the first run faults the code page in alone."""
    return bytes((0xE6, WARMUP_PORT))


def code_gpa(slot: int) -> int:
    """The guest address of step code slot *slot* (the warm-up is the last)."""
    return SYS_GPA + CODE_OFFSET + slot * STEP_CODE


def warmup_gpa() -> int:
    return code_gpa(MAX_STEPS)


def _segment(selector: int, type_: int, dpl: int, *, code: bool, s: int = 1) -> bytes:
    db, long_ = (0, 1) if code else (1, 0)
    return k.SEGMENT.pack(0, 0xFFFFFFFF, selector, type_, 1, dpl, db, s, long_, 1, 0, 0)


@functools.cache
def sregs() -> bytes:
    """``struct kvm_sregs`` for 64-bit user mode with the tables above."""
    cs = _segment(USER_CS, 0xB, 3, code=True)
    ds = _segment(USER_DS, 0x3, 3, code=False)
    # A busy 64-bit TSS and an unusable LDT: what VM entry checks want.  The
    # TSS lies in the system area: kvm_pvm reads it at entry, and a TSS at
    # gpa 0 with no memslot there triple-faults the guest.
    tr = k.SEGMENT.pack(SYS_GPA + TSS_OFFSET, 0x67, 0x40, 0xB, 1, 0, 0, 0, 0, 0, 0, 0)
    ldt = k.SEGMENT.pack(0, 0, 0, 0x2, 0, 0, 0, 0, 0, 0, 0, 1)
    segs = cs + ds + ds + ds + ds + ds + tr + ldt  # cs ds es fs gs ss tr ldt
    tables = k.DTABLE.pack(0, 0xFFFF) + k.DTABLE.pack(0, 0)
    cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    tail = k.SREGS_TAIL.pack(cr0, 0, SYS_GPA, CR4_PAE, 0, EFER_LME | EFER_LMA, 0, 0, 0, 0, 0)
    return segs + tables + tail


def regs(rip: int, rax: int = 0) -> bytes:
    """``struct kvm_regs`` entering at *rip* with IOPL 3."""
    r = [0] * 18
    r[k.REG_RAX] = rax
    r[k.REG_RIP] = rip
    r[k.REG_RFLAGS] = RFLAGS_IOPL3
    return k.REGS.pack(*r)
