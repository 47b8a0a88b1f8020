"""HPTE, SLB and hypercall encodings, and the small pure helpers KVM builds on
(arch/powerpc/include/asm/book3s/64/mmu-hash.h, asm/kvm_book3s_64.h,
asm/hvcall.h, asm/reg.h, asm/kvm_host.h of v4.16).

HPTEs are kept in the pre-ISA-3.0 ("old") layout.  POWER9 stores the segment
size in the second doubleword instead (``hpte_old_to_new_v/r``), but KVM
converts to the old layout before every decision and back before every
store, so the conversion changes no outcome and is not modelled.
"""

from __future__ import annotations

from typing import Final

# ---------------------------------------------------------------- first dword (v)
HPTE_V_SSIZE_SHIFT: Final = 62
HPTE_V_1TB_SEG: Final = 0x4000_0000_0000_0000
HPTE_V_AVPN_SHIFT: Final = 7
HPTE_V_AVPN: Final = 0x3FFF_FFFF_FFFF_FF80
HPTE_V_HVLOCK: Final = 0x40  # KVM software bit: the entry is locked
HPTE_V_ABSENT: Final = 0x20  # KVM software bit: entered, but not present for the hardware
HPTE_V_BOLTED: Final = 0x10
HPTE_V_LARGE: Final = 0x04  # L: the page size is in the second dword's LP field
HPTE_V_SECONDARY: Final = 0x02  # H: entered in the secondary PTEG
HPTE_V_VALID: Final = 0x01

# --------------------------------------------------------------- second dword (r)
HPTE_R_PP0: Final = 0x8000_0000_0000_0000
HPTE_R_TS: Final = 0x4000_0000_0000_0000
HPTE_R_KEY_HI: Final = 0x3000_0000_0000_0000
HPTE_R_RPN_SHIFT: Final = 12
HPTE_R_RPN: Final = 0x0FFF_FFFF_FFFF_F000
HPTE_R_PP: Final = 0x3
HPTE_R_N: Final = 0x4  # no-execute
HPTE_R_G: Final = 0x8  # guarded
HPTE_R_M: Final = 0x10  # memory coherence required
HPTE_R_I: Final = 0x20  # cache-inhibited
HPTE_R_W: Final = 0x40  # write-through
HPTE_R_WIMG: Final = 0x78
HPTE_R_C: Final = 0x80  # changed
HPTE_R_R: Final = 0x100  # referenced
HPTE_R_KEY_LO: Final = 0xE00
HPTE_R_KEY: Final = HPTE_R_KEY_LO | HPTE_R_KEY_HI
HPTE_GR_MODIFIED: Final = 1 << 62  # guest_rpte software bit
HPTE_GR_RESERVED: Final = HPTE_GR_MODIFIED

# PP encodings (PP0 is the top bit of r)
PP_RWXX: Final = 0  # supervisor read/write, user none
PP_RWRX: Final = 1
PP_RWRW: Final = 2
PP_RXRX: Final = 3
PP_RXXX: Final = HPTE_R_PP0 | 2  # supervisor read, user none

# ------------------------------------------------------------------------- SLB
SID_SHIFT: Final = 28  # 256M segments
SLB_VSID_SHIFT: Final = 12
SLB_VSID_B: Final = 0xC000_0000_0000_0000
SLB_VSID_KS: Final = 0x800
SLB_VSID_KP: Final = 0x400
SLB_VSID_L: Final = 0x100
SLB_VSID_LP: Final = 0x30
SLB_VSID_LP_00: Final = 0x00
SLB_VSID_LP_01: Final = 0x10
SLB_BASE_PAGE_SHIFT: Final = (24, 16, 34, 20)  # indexed by LP >> 4 (book3s_hv_rm_mmu.c)

# ----------------------------------------------------------- DSISR / SRR1 bits
DSISR_NOHPTE: Final = 0x4000_0000
DSISR_PROTFAULT: Final = 0x0800_0000
DSISR_ISSTORE: Final = 0x0200_0000
DSISR_KEYFAULT: Final = 0x0020_0000
SRR1_ISI_NOPT: Final = 0x4000_0000  # same bit as DSISR_NOHPTE
SRR1_ISI_N_OR_G: Final = 0x1000_0000
SRR1_ISI_PROT: Final = 0x0800_0000

# -------------------------------------------------------------------- hcalls
H_SUCCESS: Final = 0
H_FUNCTION: Final = -2
H_PARAMETER: Final = -4
H_NOT_FOUND: Final = -5
H_PTEG_FULL: Final = -6
H_EXACT: Final = 1 << (63 - 24)
H_AVPN: Final = 1 << (63 - 32)
H_ANDCOND: Final = 1 << (63 - 33)
HCALL_NAMES: Final = {
    H_SUCCESS: "H_SUCCESS",
    H_FUNCTION: "H_FUNCTION",
    H_PARAMETER: "H_PARAMETER",
    H_NOT_FOUND: "H_NOT_FOUND",
    H_PTEG_FULL: "H_PTEG_FULL",
}

# ---------------------------------------------------------- reverse map word
KVMPPC_RMAP_RC_SHIFT: Final = 32
KVMPPC_RMAP_REFERENCED: Final = HPTE_R_R << KVMPPC_RMAP_RC_SHIFT
KVMPPC_RMAP_CHANGED: Final = HPTE_R_C << KVMPPC_RMAP_RC_SHIFT
KVMPPC_RMAP_PRESENT: Final = 0x1_0000_0000
KVMPPC_RMAP_INDEX: Final = 0xFFFF_FFFF

# ------------------------------------------------------------- HPT geometry
KVM_DEFAULT_HPT_ORDER: Final = 24  # 16MB HPT, what KVM allocates when QEMU asks for none
PPC_MIN_HPT_ORDER: Final = 18
PPC_MAX_HPT_ORDER: Final = 46
HPTES_PER_GROUP: Final = 8


PAGE_SIZES = (1 << 12, 1 << 16, 1 << 24)
"""The HPTE page sizes the model enters: 4K (a quarter-sixteenth of a host
page: the entry maps that 4K piece of the 64K frame), 64K (the base page)
and 16M."""


def hpte_page_shifts(v: int, r: int) -> int:
    """``kvmppc_hpte_page_shifts``: the LP decoding of POWER7/8/9.  Returns
    the shift, or ``(actual << 8) + base`` for mixed page sizes, or 0."""
    if not v & HPTE_V_LARGE:
        return 12
    lphi = (r >> 16) & 0xF
    lp = (r >> 12) & 0xF
    if lp == 0:
        return 0 if lphi else 24
    if lp == 1:
        return 16
    if lp == 3:
        return 0 if lphi else 34
    if lp == 7:
        return (16 << 8) + 12
    if lp == 8:
        if not lphi:
            return (24 << 8) + 16
        if lphi == 3:
            return (24 << 8) + 12
    return 0


def hpte_base_page_shift(v: int, r: int) -> int:
    """``kvmppc_hpte_base_page_shift``."""
    return hpte_page_shifts(v, r) & 0xFF


def hpte_actual_page_shift(v: int, r: int) -> int:
    """``kvmppc_hpte_actual_page_shift``."""
    s = hpte_page_shifts(v, r)
    return s >> 8 if s >= 0x100 else s


def actual_pgsz(v: int, r: int) -> int:
    """``kvmppc_actual_pgsz``: the page size an HPTE maps, 0 for a bad encoding."""
    s = hpte_actual_page_shift(v, r)
    return 1 << s if s else 0


def hpte_rpn(ptel: int, psize: int, page_shift: int) -> int:
    """``hpte_rpn``: the frame number (PAGE_SIZE units) of the base of the
    page an HPTE second dword maps."""
    return ((ptel & HPTE_R_RPN) & ~(psize - 1)) >> page_shift


def hpte_is_writable(ptel: int) -> bool:
    """``hpte_is_writable``: PP allows a supervisor store."""
    pp = ptel & (HPTE_R_PP0 | HPTE_R_PP)
    return pp not in (PP_RXRX, PP_RXXX)


def hpte_make_readonly(ptel: int) -> int:
    """``hpte_make_readonly``."""
    if ptel & HPTE_R_PP0 or (ptel & HPTE_R_PP) == PP_RWXX:
        return (ptel & ~HPTE_R_PP) | PP_RXXX
    return ptel | PP_RXRX


def hpte_cache_flags_ok(ptel: int, is_ci: bool) -> bool:
    """``hpte_cache_flags_ok``: cacheable host memory wants WIMG = M (SAO,
    W|I|M, counts as M on ISA 2.06+); cache-inhibited host memory wants I set
    and W clear."""
    wimg = ptel & HPTE_R_WIMG
    if wimg == (HPTE_R_W | HPTE_R_I | HPTE_R_M):
        wimg = HPTE_R_M
    if not is_ci:
        return wimg == HPTE_R_M
    if wimg & HPTE_R_W:
        return False
    return bool(wimg & HPTE_R_I)


def hpte_read_permission(pp: int, key: int) -> bool:
    """``hpte_read_permission``."""
    if key:
        return PP_RWRX <= pp <= PP_RXRX
    return True


def hpte_write_permission(pp: int, key: int) -> bool:
    """``hpte_write_permission``."""
    if key:
        return pp == PP_RWRW
    return pp <= PP_RWRW


def pgsize_lp_encoding(base_shift: int, actual_shift: int) -> int:
    """``kvmppc_pgsize_lp_encoding``: the LP field value, -1 if unsupported."""
    table = {12: {12: 0, 16: 7, 24: 0x38}, 16: {16: 1, 24: 8}}
    if base_shift == 24:
        return 0
    return table.get(base_shift, {}).get(actual_shift, -1)


def slb_pgsize_encoding(psize: int) -> int:
    """``slb_pgsize_encoding``: the SLB L|LP bits for a segment base page size."""
    senc = 0
    if psize > 0x1000:
        senc = SLB_VSID_L
        if psize == 0x10000:
            senc |= SLB_VSID_LP_01
    return senc


def is_mmio_hpte(v: int, r: int) -> bool:
    """``is_mmio_hpte``: an absent entry with storage key 31 (emulated MMIO)."""
    return bool(v & HPTE_V_ABSENT) and (r & HPTE_R_KEY) == HPTE_R_KEY


def wimg_bits(text: str) -> int:
    """Scenario WIMG letters (``"M"``, ``"IG"``...) to HPTE bits; raises ValueError."""
    bits = {"W": HPTE_R_W, "I": HPTE_R_I, "M": HPTE_R_M, "G": HPTE_R_G}
    out = 0
    for ch in text.upper():
        if ch not in bits:
            raise ValueError(ch)
        out |= bits[ch]
    return out


def wimg_name(r: int) -> str:
    """HPTE WIMG bits as letters, for traces."""
    return (
        "".join(
            c
            for c, b in (("W", HPTE_R_W), ("I", HPTE_R_I), ("M", HPTE_R_M), ("G", HPTE_R_G))
            if r & b
        )
        or "-"
    )
