"""The /dev/kvm ABI and the libc calls the backend needs, standard library only.

Constants and struct layouts are those of ``include/uapi/linux/kvm.h`` and
``arch/x86/include/uapi/asm/kvm.h`` (x86-64).  ``KVM_RUN`` and the memory
calls go through ctypes: ``fcntl.ioctl`` retries ``EINTR`` by itself, which
would turn the alarm that ends a hung ``KVM_RUN`` into an endless retry, and
the ``mmap`` module hides the address the memslots need.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from typing import Final

# ioctl numbers: _IO(KVMIO, n) and _IOR/_IOW with the struct size encoded.
KVMIO: Final = 0xAE


def _io(nr: int) -> int:
    return (KVMIO << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (KVMIO << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_GET_API_VERSION: Final = _io(0x00)
KVM_CREATE_VM: Final = _io(0x01)
KVM_CHECK_EXTENSION: Final = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE: Final = _io(0x04)
KVM_CREATE_VCPU: Final = _io(0x41)
KVM_GET_DIRTY_LOG: Final = _iow(0x42, 16)
KVM_SET_USER_MEMORY_REGION: Final = _iow(0x46, 32)
KVM_RUN: Final = _io(0x80)
KVM_GET_REGS: Final = _ior(0x81, 144)
KVM_SET_REGS: Final = _iow(0x82, 144)
KVM_GET_SREGS: Final = _ior(0x83, 312)
KVM_SET_SREGS: Final = _iow(0x84, 312)
KVM_GET_STATS_FD: Final = _io(0xCE)

KVM_API_VERSION: Final = 12
KVM_CAP_READONLY_MEM: Final = 81
KVM_CAP_BINARY_STATS_FD: Final = 203

KVM_MEM_LOG_DIRTY_PAGES: Final = 1 << 0
KVM_MEM_READONLY: Final = 1 << 1

# struct kvm_run: exit_reason at 8, the exit union at 32.
KVM_EXIT_IO: Final = 2
KVM_EXIT_HLT: Final = 5
KVM_EXIT_MMIO: Final = 6
KVM_EXIT_SHUTDOWN: Final = 8
KVM_EXIT_FAIL_ENTRY: Final = 9
KVM_EXIT_INTR: Final = 10
KVM_EXIT_INTERNAL_ERROR: Final = 17
KVM_EXIT_MEMORY_FAULT: Final = 39
RUN_EXIT_REASON: Final = 8
RUN_IO: Final = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
RUN_MMIO: Final = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
RUN_UNION: Final = 32

# struct kvm_regs: rax..r15, rip, rflags (18 u64).
REGS: Final = struct.Struct("<18Q")
REG_RAX: Final = 0
REG_RSP: Final = 6
REG_RIP: Final = 16
REG_RFLAGS: Final = 17

# struct kvm_segment and kvm_sregs (x86-64).
SEGMENT: Final = struct.Struct(
    "<QIH9Bx"
)  # base limit selector type present dpl db s l g avl unusable
DTABLE: Final = struct.Struct("<QH6x")
SREGS_TAIL: Final = struct.Struct("<7Q4Q")  # cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap

# struct kvm_userspace_memory_region and kvm_dirty_log.
MEMORY_REGION: Final = struct.Struct("<IIQQQ")  # slot flags gpa size uaddr
DIRTY_LOG: Final = struct.Struct("<IIQ")  # slot pad bitmap

# The binary stats file (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD").
STATS_HEADER: Final = struct.Struct("<IIIIII")  # flags name_size num_desc id_off desc_off data_off
STATS_DESC: Final = struct.Struct("<IhHII")  # flags exponent size offset bucket_size

# mm constants (include/uapi/asm-generic/mman*.h, x86-64).
PROT_NONE: Final = 0
PROT_READ: Final = 1
PROT_WRITE: Final = 2
PROT_EXEC: Final = 4
MAP_SHARED: Final = 0x01
MAP_PRIVATE: Final = 0x02
MAP_FIXED: Final = 0x10
MAP_ANONYMOUS: Final = 0x20
MAP_NORESERVE: Final = 0x4000
MAP_POPULATE: Final = 0x8000
MAP_HUGETLB: Final = 0x40000
MADV_DONTNEED: Final = 4
MADV_FREE: Final = 8
MADV_REMOVE: Final = 9
MADV_HUGEPAGE: Final = 14
MADV_NOHUGEPAGE: Final = 15
FALLOC_FL_KEEP_SIZE: Final = 1
FALLOC_FL_PUNCH_HOLE: Final = 2
MAP_FAILED: Final = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mmap.restype = ctypes.c_void_p
for _name in ("munmap", "madvise"):
    getattr(_libc, _name).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int][
        : 2 if _name == "munmap" else 3
    ]
    getattr(_libc, _name).restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def ioctl(
    fd: int, request: int, arg: int | bytes | bytearray | ctypes.Array[ctypes.c_char] = 0
) -> int:
    """One ioctl through libc (no EINTR retry); an integer *arg* is passed as is."""
    if isinstance(arg, int):
        return _check(_libc.ioctl(fd, request, ctypes.c_void_p(arg)), f"ioctl {request:#x}")
    if isinstance(arg, (bytes, bytearray)):
        buf = ctypes.create_string_buffer(bytes(arg), len(arg))
        ret = _check(_libc.ioctl(fd, request, buf), f"ioctl {request:#x}")
        if isinstance(arg, bytearray):
            arg[:] = buf.raw
        return ret
    return _check(_libc.ioctl(fd, request, arg), f"ioctl {request:#x}")


def kvm_run(vcpu_fd: int) -> int:
    """``KVM_RUN`` once; returns 0 or the negative errno (EINTR not retried)."""
    ret = _libc.ioctl(vcpu_fd, KVM_RUN, None)
    return -ctypes.get_errno() if ret < 0 else ret


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, addr: int = 0) -> int:
    """``mmap``; the mapping's address."""
    ret = _libc.mmap(addr or None, length, prot, flags, fd, offset)
    if ret is None or ret == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    return int(ret)


def munmap(addr: int, length: int) -> None:
    _check(_libc.munmap(addr, length), "munmap")


def mprotect(addr: int, length: int, prot: int) -> None:
    _check(_libc.mprotect(addr, length, prot), "mprotect")


def madvise(addr: int, length: int, advice: int) -> None:
    _check(_libc.madvise(addr, length, advice), "madvise")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_libc.fallocate(fd, mode, offset, length), "fallocate")


def poke64(addr: int, value: int) -> None:
    """Store 8 bytes at *addr* of this process (the caller knows it is mapped writable)."""
    ctypes.c_uint64.from_address(addr).value = value & (2**64 - 1)


_UINTS: Final = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


def poke(addr: int, value: int, width: int) -> None:
    """Store *width* bytes at *addr* of this process (mapped writable)."""
    _UINTS[width].from_address(addr).value = value & ((1 << (8 * width)) - 1)


def peek(addr: int, width: int) -> int:
    """Load *width* bytes at *addr* of this process (mapped readable)."""
    return int(_UINTS[width].from_address(addr).value)
