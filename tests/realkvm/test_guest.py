"""The generated guest, byte by byte (no /dev/kvm needed).

Encodings from the Intel SDM: ``REX.W A1 moffs64`` (mov rax, [moffs64]),
``REX.W B8 imm64`` (mov rax, imm64), ``REX.W A3 moffs64`` (mov [moffs64],
rax), ``E6 ib`` (out imm8, al).
"""

from __future__ import annotations

import struct

from kvmsim.realkvm import guest
from kvmsim.realkvm import kvmapi as k


def test_load_is_mov_rax_moffs64_then_out() -> None:
    code = guest.load(0x123456789)
    assert code == b"\x48\xa1" + (0x123456789).to_bytes(8, "little") + b"\xe6\x10"
    assert guest.load(0x1000, 4)[:1] == b"\xa1"  # no REX.W: eax


def test_store_loads_the_value_then_stores_rax() -> None:
    code = guest.store(0x2000, 0x1122334455667788)
    assert code[:2] == b"\x48\xb8" and code[2:10] == (0x1122334455667788).to_bytes(8, "little")
    assert code[10:12] == b"\x48\xa3" and code[12:20] == (0x2000).to_bytes(8, "little")
    assert code[20:] == b"\xe6\x10"
    assert len(code) <= guest.STEP_CODE


def test_page_tables_identity_map_the_low_4g_with_2m_pages_a_and_d_set() -> None:
    pt = guest.page_tables()
    pml4 = struct.unpack_from("<Q", pt, 0)[0]
    assert pml4 & ~0xFFF == guest.SYS_GPA + 0x1000
    for gib in range(4):
        pdpte = struct.unpack_from("<Q", pt, 0x1000 + 8 * gib)[0]
        pd = (pdpte & ~0xFFF) - guest.SYS_GPA
        for j in (0, 1, 511):
            e = struct.unpack_from("<Q", pt, pd + 8 * j)[0]
            assert e & ~0xFFF == (gib << 30) + (j << 21)  # identity
            assert e & 0xE7 == 0xE7  # present, writable, user, accessed, dirty, 2M
    sys_pd = (struct.unpack_from("<Q", pt, 0x1000 + 8 * 4)[0] & ~0xFFF) - guest.SYS_GPA
    assert struct.unpack_from("<Q", pt, sys_pd)[0] & ~0xFFF == guest.SYS_GPA


def test_sregs_are_64_bit_user_mode() -> None:
    raw = guest.sregs()
    assert len(raw) == 312  # sizeof(struct kvm_sregs) on x86-64
    cs = k.SEGMENT.unpack_from(raw, 0)
    assert cs[2] == 0x33 and cs[5] == 3 and cs[8] == 1  # selector, dpl 3, L
    ds = k.SEGMENT.unpack_from(raw, k.SEGMENT.size)
    assert ds[2] == 0x2B and ds[5] == 3
    tr = k.SEGMENT.unpack_from(raw, 6 * k.SEGMENT.size)
    assert tr[0] == guest.SYS_GPA + guest.TSS_OFFSET  # never gpa 0 (kvm_pvm reads it)
    cr0, _, cr3, cr4, _, efer = k.SREGS_TAIL.unpack_from(raw, 8 * 24 + 32)[:6]
    assert cr0 & 1 << 31 and cr4 & 1 << 5 and efer & 0x500 == 0x500 and cr3 == guest.SYS_GPA


def test_regs_enter_at_rip_with_iopl_3() -> None:
    r = k.REGS.unpack(guest.regs(0x1234, 7))
    assert r[k.REG_RIP] == 0x1234 and r[k.REG_RAX] == 7 and r[k.REG_RFLAGS] >> 12 & 3 == 3


def test_ioctl_numbers_encode_the_struct_sizes() -> None:
    # include/uapi/linux/kvm.h values on x86-64
    assert k.KVM_RUN == 0xAE80
    assert k.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert k.KVM_GET_DIRTY_LOG == 0x4010AE42
    assert k.KVM_GET_REGS == 0x8090AE81
    assert k.KVM_SET_SREGS == 0x4138AE84
