"""Arm64 stage-2 descriptors, VTCR_EL2 geometry and ESR_EL2 syndromes.

Values are the architecture's (Arm ARM D5, and arch/arm64/include/asm/
pgtable-hwdef.h, pgtable-prot.h, memory.h, esr.h, kvm_arm.h of v4.16).  A
descriptor is a plain ``int``, exactly the 64-bit value the hardware reads.

Geometry: KVM of v4.16 programs ``VTCR_EL2.T0SZ = 24`` (a 40-bit IPA space,
``KVM_PHYS_SHIFT``) and, for the 4K granule, ``SL0 = 1`` (the walk starts at
level 1).  Levels 1, 2 and 3 each resolve 9 bits of the IPA, except that 40
bits need 10 at level 1: the architecture concatenates two level-1 tables
for that, so the initial lookup has 1024 entries.  Level-1 and level-2
entries are a table or a block (1G, 2M); level-3 entries are pages (4K).
"""

from __future__ import annotations

from typing import Final

PAGE_SHIFT: Final = 12  # the host kernel's PAGE_SHIFT: 4K pages

# VTCR_EL2 as KVM v4.16 sets it for the 4K granule (the fields we model).
VTCR_T0SZ: Final = 24  # VTCR_EL2_T0SZ_40B
VTCR_SL0: Final = 1  # VTCR_EL2_SL0_LVL1
IPA_BITS: Final = 64 - VTCR_T0SZ  # 40
START_LEVEL: Final = 2 - VTCR_SL0  # for 4K: SL0 0 → level 2, 1 → level 1, 2 → level 0
LAST_LEVEL: Final = 3
BITS_PER_LEVEL: Final = PAGE_SHIFT - 3  # 512 eight-byte descriptors per 4K table


def level_shift(level: int) -> int:
    """The IPA bit a level's index starts at: level 3 → 12, 2 → 21, 1 → 30."""
    return PAGE_SHIFT + BITS_PER_LEVEL * (LAST_LEVEL - level)


L1_SHIFT: Final = level_shift(1)  # 30: a level-1 block is 1G
L2_SHIFT: Final = level_shift(2)  # 21: a level-2 block is 2M (PMD_SIZE)
L3_SHIFT: Final = level_shift(3)  # 12: a level-3 page is 4K
PMD_SIZE: Final = 1 << L2_SHIFT
PUD_SIZE: Final = 1 << L1_SHIFT
L1_ENTRIES: Final = 1 << (IPA_BITS - L1_SHIFT)  # 1024: two concatenated tables
TABLE_ENTRIES: Final = 1 << BITS_PER_LEVEL  # 512

# kvmsim's create_pte ``level`` (0 = base page, 1 = 2M, 2 = 1G) ↔ the
# architecture's lookup level of the leaf.
HW_LEVEL: Final = (3, 2, 1)

# --------------------------------------------------------------- descriptors

DESC_VALID: Final = 1 << 0
DESC_TABLE_OR_PAGE: Final = 1 << 1  # bits[1:0] = 0b11: table (L1/L2) or page (L3)
TYPE_MASK: Final = 0b11
TYPE_BLOCK: Final = 0b01  # levels 1 and 2
TYPE_PAGE: Final = 0b11  # level 3

MEMATTR_SHIFT: Final = 2  # MemAttr[3:0] at bits [5:2]
MEMATTR_MASK: Final = 0xF << MEMATTR_SHIFT
MT_S2_NORMAL: Final = 0xF  # Normal, outer and inner write-back cacheable
MT_S2_DEVICE_nGnRE: Final = 0x1  # Device-nGnRE

S2AP_R: Final = 1 << 6  # S2AP[0]: reads allowed (PTE_S2_RDONLY)
S2AP_W: Final = 1 << 7  # S2AP[1]: writes allowed (with S2AP_R: PTE_S2_RDWR)
SH_INNER: Final = 3 << 8  # SH[1:0] = inner shareable (PTE_SHARED)
AF: Final = 1 << 10  # access flag: clear → Access flag fault on any access
XN: Final = 1 << 54  # XN[1] (PTE_S2_XN = 2 << 53): instruction fetch not allowed
OA_MASK: Final = ((1 << 48) - 1) & ~((1 << PAGE_SHIFT) - 1)  # output address [47:12]

# _PROT_DEFAULT (page type, AF, inner shareable) plus S2 attributes, read-only,
# execute-never: PAGE_S2 and PAGE_S2_DEVICE of v4.16.
_PROT_DEFAULT: Final = TYPE_PAGE | AF | SH_INNER
PAGE_S2: Final = _PROT_DEFAULT | (MT_S2_NORMAL << MEMATTR_SHIFT) | S2AP_R | XN
PAGE_S2_DEVICE: Final = _PROT_DEFAULT | (MT_S2_DEVICE_nGnRE << MEMATTR_SHIFT) | S2AP_R | XN


def pfn_pte(pfn: int, prot: int) -> int:
    """``pfn_pte``: a level-3 page descriptor for ``pfn``."""
    return ((pfn << PAGE_SHIFT) & OA_MASK) | prot


def pmd_mkhuge(desc: int) -> int:
    """``pmd_mkhuge``: turn a page descriptor into a block descriptor (bit 1 clear)."""
    return desc & ~DESC_TABLE_OR_PAGE


def s2_mkwrite(desc: int) -> int:
    """``kvm_s2pte_mkwrite`` / ``kvm_s2pmd_mkwrite``: S2AP read-write."""
    return desc | S2AP_R | S2AP_W


def s2_mkexec(desc: int) -> int:
    """``kvm_s2pte_mkexec`` / ``kvm_s2pmd_mkexec``: clear XN."""
    return desc & ~XN


def desc_pfn(desc: int) -> int:
    """The output address of a descriptor, as a pfn (``pte_pfn``)."""
    return (desc & OA_MASK) >> PAGE_SHIFT


def memattr(desc: int) -> int:
    return (desc & MEMATTR_MASK) >> MEMATTR_SHIFT


def is_noncached(desc: int) -> bool:
    """Device memory (MemAttr[3:2] = 0b00) or outer non-cacheable Normal (0b01)."""
    return (memattr(desc) >> 2) in (0b00, 0b01)


def is_device(desc: int) -> bool:
    """MemAttr says Device (what ``KVM_S2PTE_FLAG_IS_IOMAP`` goes with)."""
    return (memattr(desc) >> 2) == 0b00


def describe(desc: int) -> str:
    """A short readable form for traces: ``RW X AF Normal`` ..."""
    perm = ("R" if desc & S2AP_R else "-") + ("W" if desc & S2AP_W else "-")
    ex = "X" if not desc & XN else "XN"
    af = "AF" if desc & AF else "af=0"
    attr = {MT_S2_NORMAL: "Normal-WB", MT_S2_DEVICE_nGnRE: "Device-nGnRE"}.get(
        memattr(desc), f"MemAttr={memattr(desc):#x}"
    )
    return f"{perm} {ex} {af} {attr}"


# ------------------------------------------------------------------ ESR_EL2

ESR_EC_SHIFT: Final = 26
EC_IABT_LOW: Final = 0x20  # instruction abort from a lower exception level
EC_DABT_LOW: Final = 0x24  # data abort from a lower exception level
ESR_IL: Final = 1 << 25  # 32-bit instruction
ESR_ISV: Final = 1 << 24  # data abort: the instruction syndrome (SAS, SRT, ...) is valid
ESR_SAS_SHIFT: Final = 22  # data abort, ISV set: access size, log2 bytes
ESR_WNR: Final = 1 << 6  # data abort caused by a write
ESR_FSC: Final = 0x3F
ESR_FSC_TYPE: Final = 0x3C  # the fault type without its level
FSC_FAULT: Final = 0x04  # translation fault, level in bits [1:0]
FSC_ACCESS: Final = 0x08  # access flag fault
FSC_PERM: Final = 0x0C  # permission fault

_FSC_NAMES: Final = {FSC_FAULT: "translation", FSC_ACCESS: "access flag", FSC_PERM: "permission"}


def make_esr(op: str, fsc_type: int, level: int, *, isv: bool = False, width: int = 8) -> int:
    """The ESR_EL2 of a stage-2 abort: EC (IABT/DABT from a lower EL), IL,
    WnR for a store, and the fault status code with its lookup level; for a
    data abort with ``isv`` (a load or store of one general-purpose register
    without writeback, the only ones the architecture gives a syndrome for
    at stage 2) ISV and SAS, the access size (SRT, SSE, SF and AR are not
    modelled)."""
    if op == "exec":
        return (EC_IABT_LOW << ESR_EC_SHIFT) | ESR_IL | fsc_type | level
    wnr = ESR_WNR if op == "write" else 0
    iss = ESR_ISV | ((width.bit_length() - 1) << ESR_SAS_SHIFT) if isv else 0
    return (EC_DABT_LOW << ESR_EC_SHIFT) | ESR_IL | iss | wnr | fsc_type | level


def esr_ec(esr: int) -> int:
    return (esr >> ESR_EC_SHIFT) & 0x3F


def esr_describe(esr: int) -> str:
    """``DABT write translation fault L3`` and the like, for traces."""
    kind = "IABT" if esr_ec(esr) == EC_IABT_LOW else "DABT"
    rw = "" if kind == "IABT" else (" write" if esr & ESR_WNR else " read")
    name = _FSC_NAMES.get(esr & ESR_FSC_TYPE, f"FSC {esr & ESR_FSC:#x}")
    nisv = " (no ISV)" if kind == "DABT" and not esr & ESR_ISV else ""
    return f"{kind}{rw} {name} fault L{esr & 3}{nisv}"
