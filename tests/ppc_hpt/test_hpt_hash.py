"""HPT geometry, hash and PTEG placement, against values worked out by hand
from the Power ISA hash definition (256M segments: primary hash = VSID xor
the page index of the EA within its segment; secondary hash = its ones'
complement; PTEG index = hash & htab_hash_mask) and KVM's sizing
(kvmppc_hpt_npte / kvmppc_hpt_mask, KVM_DEFAULT_HPT_ORDER = 24)."""

from __future__ import annotations

from kvmsim_plugins.ppc_hpt.hpt import GUEST_VSID_BASE, HptState, guest_hpte_v, hpt_hash
from kvmsim_plugins.ppc_hpt.hpte import (
    HPTE_V_LARGE,
    HPTE_V_SECONDARY,
    HPTE_V_VALID,
    actual_pgsz,
)

from kvmsim.testing import build_sim

HAND = """
name = "hash"
description = "placement"
arch = "ppc_hpt"
[[vma]]
name = "ram"
size = "64M"
backing = "anon"
[[memslot]]
gpa = 0
vma = "ram"
"""


def test_kvm_default_hpt_geometry() -> None:
    # order 24: 2^24 bytes of 16-byte HPTEs = 2^20 HPTEs; 128-byte PTEGs =
    # 2^17 PTEGs, so htab_hash_mask = 0x1ffff
    st = HptState(16, "v5.7")
    assert st.npte == 1 << 20
    assert st.mask == 0x1FFFF
    assert GUEST_VSID_BASE == 0x12340


def test_primary_and_secondary_hash_64k_by_hand() -> None:
    # ea 0x12340000: ESID = ea >> 28 = 1, so VSID = 0x12340 + 1 = 0x12341.
    # Offset in the segment = 0x12340000 & 0x0fffffff = 0x02340000;
    # 64K pages: page index = 0x02340000 >> 16 = 0x234.
    # primary hash = 0x12341 ^ 0x00234 = 0x12175 (0x341 ^ 0x234 = 0x175);
    # & 0x1ffff = 0x12175 -> PTEG 0x12175, first HPTE index 0x12175 * 8 = 0x90ba8.
    # secondary = ~0x12175 & 0x1ffff = 0x1ffff ^ 0x12175 = 0x0de8a -> index 0x6f450.
    assert hpt_hash(0x12341, 0x12340000, 16, 0x1FFFF) == 0x12175
    assert 0x12175 ^ 0x1FFFF == 0x0DE8A
    # The AVPN the guest puts in the first dword: va = VSID << 28 | offset =
    # 0x1234_1234_0000; va >> 16 = 0x12341234, >> 7 more = 0x246824 (va >> 23);
    # << 7 = 0x12341200 (the low 7 bits of va >> 16 are implied by the hash),
    # plus L and V.  KVM's search computes the same value from the SLB:
    # (VSID << 12 | offset >> 16) & ~0x7f = 0x12341234 & ~0x7f = 0x12341200.
    assert guest_hpte_v(0x12340000, 0x12341, 16) == 0x12341200 | HPTE_V_LARGE | HPTE_V_VALID


def test_primary_hash_16m_by_hand() -> None:
    # ea 0x31000000: ESID 3, VSID 0x12343; offset 0x01000000; 16M pages:
    # page index = 0x01000000 >> 24 = 1; hash = 0x12343 ^ 1 = 0x12342 -> index 0x91a10.
    # AVPN: va = 0x1234_3100_0000, va >> 23 = 0x246862, its low bit cleared
    # for a 16M page (va bit 23 lies inside the page; already 0) -> << 7 =
    # 0x12343100.  KVM: (0x12343000 | 0x100) & ~0xff = 0x12343100.
    assert hpt_hash(0x12343, 0x31000000, 24, 0x1FFFF) == 0x12342
    assert guest_hpte_v(0x31000000, 0x12343, 24) == 0x12343100 | HPTE_V_LARGE | HPTE_V_VALID


def test_h_enter_lands_in_the_hand_computed_pteg_then_the_secondary() -> None:
    from kvmsim_plugins.ppc_hpt.hcall import guest_h_enter
    from kvmsim_plugins.ppc_hpt.hpte import HPTE_R_M

    sim = build_sim(HAND, strategy="generic_v4_16")
    kvm = sim.kvm
    st: HptState = kvm.arch
    # the same ea entered nine times (different real pages): the primary
    # PTEG 0x12175 fills its eight slots, the ninth goes to the secondary
    idx = [
        guest_h_enter(kvm, 0x12340000, 0x10000 * (i + 1), 16, HPTE_R_M, True, True)
        for i in range(9)
    ]
    assert [i for _, i in idx[:8]] == [0x90BA8 + k for k in range(8)]
    # the ninth goes to the secondary PTEG 0x0de8a (index 0x6f450), with H set
    assert idx[8] == (0, 0x0DE8A * 8)
    assert st.v[0x6F450] & HPTE_V_SECONDARY
    # the search (hardware and kvmppc_hv_find_lock_hpte) finds the first one
    # (the entries are absent: no host page is mapped yet)
    from kvmsim_plugins.ppc_hpt.hpte import HPTE_V_ABSENT

    assert st.search(0x12340000, st.slb_v(0x12340000), HPTE_V_VALID | HPTE_V_ABSENT) == 0x90BA8


def test_hardware_search_finds_the_entry_and_its_size() -> None:
    sim = build_sim(
        HAND
        + """
[[step]]
do = "hcall"
call = "H_ENTER"
ea = 0x12340000
gpa = 0x10000
expect_ret = "H_SUCCESS"
""",
        strategy="generic_v4_16",
    )
    report = sim.run()
    assert report.passed
    st: HptState = sim.kvm.arch
    # absent (no host page yet): only a search that accepts ABSENT finds it
    from kvmsim_plugins.ppc_hpt.hpte import HPTE_V_ABSENT

    slb_v = st.slb_v(0x12340000)
    assert st.search(0x12340000, slb_v, HPTE_V_VALID) == -1
    assert st.search(0x12345678, slb_v, HPTE_V_VALID | HPTE_V_ABSENT) == 0x90BA8
    assert actual_pgsz(st.v[0x90BA8], st.guest_rpte[0x90BA8]) == 0x10000
