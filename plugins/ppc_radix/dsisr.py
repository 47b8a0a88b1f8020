"""DSISR bits of a POWER9 hypervisor data storage interrupt
(arch/powerpc/include/asm/reg.h; what sets them: kernel-notes §L.2)."""

from typing import Final

DSISR_NOHPTE: Final = 0x40000000  # no valid entry in the partition-scoped walk
DSISR_PROTFAULT: Final = 0x08000000  # present leaf does not allow the access
DSISR_BADACCESS: Final = 0x04000000
DSISR_ISSTORE: Final = 0x02000000
DSISR_KEYFAULT: Final = 0x00200000
DSISR_UNSUPP_MMU: Final = 0x00080000
DSISR_SET_RC: Final = 0x00040000  # R or C must be set in the leaf: POWER9 leaves it to software
DSISR_PRTABLE_FAULT: Final = 0x00020000
DSISR_BAD_DIRECT_ST: Final = 0x80000000
DSISR_ATTR_CONFLICT: Final = 0x20000000
DSISR_BAD_EXT_CTRL: Final = 0x00100000
DSISR_ICSWX_NO_CT: Final = 0x00004000
DSISR_BAD_COPYPASTE: Final = 0x00000008
DSISR_BAD_AMO: Final = 0x00000004
DSISR_BAD_CI_LDST: Final = 0x00000002
# DSISR_BAD_FAULT_64S (v4.17 reg.h): DSISR_BAD_FAULT_32S (BAD_DIRECT_ST,
# BADACCESS, BAD_EXT_CTRL) plus ATTR_CONFLICT, UNSUPP_MMU, PRTABLE_FAULT,
# ICSWX_NO_CT, BAD_COPYPASTE, BAD_AMO, BAD_CI_LDST.  PRTABLE_FAULT being in
# it means a SET_RC fault on a guest page-table access takes the full path.
DSISR_BAD_FAULT_64S: Final = (
    DSISR_BAD_DIRECT_ST
    | DSISR_BADACCESS
    | DSISR_BAD_EXT_CTRL
    | DSISR_ATTR_CONFLICT
    | DSISR_UNSUPP_MMU
    | DSISR_PRTABLE_FAULT
    | DSISR_ICSWX_NO_CT
    | DSISR_BAD_COPYPASTE
    | DSISR_BAD_AMO
    | DSISR_BAD_CI_LDST
)

# HISI causes, reported in HSRR1 (reg.h SRR1_ISI_*; kernel-notes §L.2).  The host's exit
# handler (kvmppc_handle_exit_hv, H_INST_STORAGE) discards them and calls the
# fault handler with fault_dsisr = 0 in v4.15.1, v4.16.13 and v4.17.
SRR1_ISI_NOPT: Final = 0x40000000  # no valid entry
SRR1_ISI_N_OR_G: Final = 0x10000000  # no-execute or guarded
SRR1_ISI_PROT: Final = 0x08000000  # other protection fault

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
