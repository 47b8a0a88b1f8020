"""What this host offers: the probe of ``/dev/kvm``, the binary stats files,
and frame identity from procfs (``pagemap``, ``kpageflags``).

Stats format: ``KVM_GET_STATS_FD`` (Documentation/virt/kvm/api.rst): a
header, descriptors with names, then u64 data.  Frame identity:
Documentation/admin-guide/mm/pagemap.rst (bit 63 present, bits 0-54 the pfn
when the reader has CAP_SYS_ADMIN; kpageflags bits below).
"""

from __future__ import annotations

import os
import platform
import struct
from pathlib import Path
from typing import Final

from attrs import frozen

from kvmsim.realkvm import kvmapi as k

DEV_KVM: Final = "/dev/kvm"
#: vendor modules, in the order they are reported when several are loaded
VENDOR_MODULES: Final = ("kvm_intel", "kvm_amd", "kvm_pvm")
#: modules whose MMU is two-dimensional paging (EPT/NPT); others shadow the guest's tables
TDP_MODULES: Final = ("kvm_intel", "kvm_amd")

#: the shmem huge policy of shm_mnt, which memfds and MAP_SHARED|MAP_ANONYMOUS use
SHMEM_ENABLED: Final = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
#: the policies under which MADV_HUGEPAGE gets a shmem THP (shmem_getpage_gfp:
#: within_size falls through to advise; always and force need no advice)
SHMEM_THP_POLICIES: Final = ("always", "within_size", "advise", "force")

KPF_THP: Final = 22
KPF_ZERO_PAGE: Final = 24
PM_PRESENT: Final = 1 << 63
PM_PFN_MASK: Final = (1 << 55) - 1


@frozen
class HostInfo:
    """The probe's answer: usable or not (and why), with what was found."""

    usable: bool
    reason: str  # why not usable ("" when usable)
    kernel: str
    module: str  # the vendor module loaded, or "none"
    hugepages_free: int = 0  # free 2M hugetlb pages
    numa_nodes: int = 1
    mem_available: int = 0  # bytes
    shmem_thp: str = ""  # the selected shmem_enabled policy ("" when unreadable)

    @property
    def tdp(self) -> bool:
        """EPT/NPT (not a shadow MMU)."""
        return self.module in TDP_MODULES


def _read_int(path: str, default: int = 0) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _meminfo(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def shmem_thp_policy(path: str = SHMEM_ENABLED) -> str:
    """The selected word of *path* (``always within_size [advise] never deny
    force`` → ``advise``), or "" when it cannot be read (no THP in this
    kernel, or no sysfs)."""
    try:
        words = Path(path).read_text().split()
    except OSError:
        return ""
    return next((w[1:-1] for w in words if w.startswith("[") and w.endswith("]")), "")


def probe(dev: str = DEV_KVM, sys_module: str = "/sys/module") -> HostInfo:
    """Can this process use *dev*?  Never raises."""
    kernel = platform.release()
    module = next((m for m in VENDOR_MODULES if os.path.isdir(f"{sys_module}/{m}")), "none")
    nodes = len([n for n in Path("/sys/devices/system/node").glob("node[0-9]*") if n.is_dir()]) or 1
    free = _read_int("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")

    def info(reason: str) -> HostInfo:
        return HostInfo(
            not reason,
            reason,
            kernel,
            module,
            free,
            nodes,
            _meminfo("MemAvailable"),
            shmem_thp_policy(),
        )

    if platform.machine() != "x86_64":
        return info(f"the host is {platform.machine()}, not x86-64")
    if not os.path.exists(dev):
        return info(f"{dev} does not exist (no KVM module loaded, or not exposed here)")
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return info(f"cannot open {dev}: {exc.strerror}")
    try:
        version = k.ioctl(fd, k.KVM_GET_API_VERSION)
        if version != k.KVM_API_VERSION:
            return info(f"{dev} has KVM API version {version}, not {k.KVM_API_VERSION}")
        if k.ioctl(fd, k.KVM_CHECK_EXTENSION, k.KVM_CAP_BINARY_STATS_FD) <= 0:
            return info(f"{dev} has no binary stats (KVM_CAP_BINARY_STATS_FD)")
    except OSError as exc:
        return info(f"{dev}: {exc.strerror}")
    finally:
        os.close(fd)
    return info("")


class Stats:
    """One binary stats file: descriptors read once, values by name."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        _, name_size, num, _, desc_off, data_off = k.STATS_HEADER.unpack(
            os.pread(fd, k.STATS_HEADER.size, 0)
        )
        size = k.STATS_DESC.size + name_size
        raw = os.pread(fd, num * size, desc_off)
        self.offsets: dict[str, int] = {}
        self.data_off = data_off
        end = 0
        for i in range(num):
            _, _, count, offset, _ = k.STATS_DESC.unpack_from(raw, i * size)
            name = raw[i * size + k.STATS_DESC.size : (i + 1) * size].split(b"\0")[0].decode()
            self.offsets[name] = offset
            end = max(end, offset + 8 * count)
        self.data_size = end

    def read(self, *names: str) -> tuple[int, ...]:
        """The current values of *names* (0 for a name this kernel lacks)."""
        data = os.pread(self.fd, self.data_size, self.data_off)
        return tuple(
            struct.unpack_from("<Q", data, self.offsets[n])[0] if n in self.offsets else 0
            for n in names
        )

    def close(self) -> None:
        os.close(self.fd)


@frozen
class Frame:
    """The host frame behind an hva: its pfn and what kpageflags says."""

    pfn: int
    zero: bool
    thp: bool


class Frames:
    """``/proc/self/pagemap`` and ``/proc/kpageflags``, opened for one run."""

    def __init__(self) -> None:
        self.pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.kpageflags: int | None = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.kpageflags = None  # not root: pfns read as 0, frames not comparable

    def at(self, hva: int) -> Frame | None:
        """The frame mapped at *hva* now, or None (not present / not readable)."""
        (entry,) = struct.unpack("<Q", os.pread(self.pagemap, 8, (hva >> 12) * 8))
        pfn = entry & PM_PFN_MASK
        if not entry & PM_PRESENT or not pfn or self.kpageflags is None:
            return None
        (flags,) = struct.unpack("<Q", os.pread(self.kpageflags, 8, pfn * 8))
        return Frame(pfn, bool(flags >> KPF_ZERO_PAGE & 1), bool(flags >> KPF_THP & 1))

    def close(self) -> None:
        os.close(self.pagemap)
        if self.kpageflags is not None:
            os.close(self.kpageflags)
