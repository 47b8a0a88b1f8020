"""DSISR bits of a POWER9 hypervisor data storage interrupt
(arch/powerpc/include/asm/reg.h; what sets them: kernel-semantics L.2)."""

from typing import Final

DSISR_NOHPTE: Final = 0x40000000  # no valid entry in the partition-scoped walk
DSISR_PROTFAULT: Final = 0x08000000  # present leaf does not allow the access
DSISR_BADACCESS: Final = 0x04000000
DSISR_ISSTORE: Final = 0x02000000
DSISR_KEYFAULT: Final = 0x00200000
DSISR_UNSUPP_MMU: Final = 0x00080000
DSISR_SET_RC: Final = 0x00040000  # R or C must be set in the leaf: POWER9 leaves it to software
DSISR_PRTABLE_FAULT: Final = 0x00020000
# DSISR_BAD_FAULT_64S (v4.17): the bits that are never a plain translation miss
DSISR_BAD_FAULT_64S: Final = (
    0x80000000 | 0x04000000 | 0x00400000 | 0x00200000 | 0x00100000 | 0x00080000
)

NAMES: Final = {
    DSISR_NOHPTE: "NOHPTE",
    DSISR_PROTFAULT: "PROTFAULT",
    DSISR_BADACCESS: "BADACCESS",
    DSISR_ISSTORE: "ISSTORE",
    DSISR_KEYFAULT: "KEYFAULT",
    DSISR_UNSUPP_MMU: "UNSUPP_MMU",
    DSISR_SET_RC: "SET_RC",
    DSISR_PRTABLE_FAULT: "PRTABLE_FAULT",
}


def dsisr_names(dsisr: int) -> str:
    """``0x42000000`` → ``"NOHPTE|ISSTORE"``."""
    return "|".join(n for bit, n in NAMES.items() if dsisr & bit) or "0"
