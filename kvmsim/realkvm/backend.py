"""Run a planned scenario on this host's ``/dev/kvm`` and observe each step.

Set-up per scenario: a VM, the system area (guest page tables and step
code, :mod:`kvmsim.realkvm.guest`), each vma as a real mapping (anonymous,
memfd, a tmpfs file, with ``MADV_HUGEPAGE``/``MADV_NOHUGEPAGE``), each
memslot as ``KVM_SET_USER_MEMORY_REGION``, a vcpu per scenario vcpu, and a
warm-up run that faults the code page in, so that stats deltas belong to
the step alone.  Everything is released on every path (an ``ExitStack``);
mappings are unmapped exactly where they still exist, so nothing this
process mapped later is touched.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import mmap as _mmap
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Final

from kvmsim.realkvm import guest
from kvmsim.realkvm import kvmapi as k
from kvmsim.realkvm.host import DEV_KVM, Frames, Stats
from kvmsim.realkvm.obs import FrameLabeller, Obs, bitmap_gpas
from kvmsim.realkvm.plan import ACCESS, DIRTY_LOG, HOST, PAGE, THP_SIZE, Plan
from kvmsim.scenario.model import HOST_WRITE_VALUE, StepSpec, VmaSpec

#: how long one KVM_RUN may take before it is reported as a hang (seconds)
RUN_TIMEOUT: Final = 2.0
#: MMIO exits one access may take before its instruction completes
MAX_MMIO_EXITS: Final = 4
_PROT = {"r": k.PROT_READ, "w": k.PROT_WRITE, "x": k.PROT_EXEC}
_UNMAPPED = 0xFF  # page state: nothing mapped (else the PROT_* bits)
_ADVICE: Final = {"dontneed": k.MADV_DONTNEED, "free": k.MADV_FREE, "remove": k.MADV_REMOVE}


def prot_bits(prot: str) -> int:
    return 0 if prot == "none" else sum(_PROT[c] for c in prot)


class RealError(Exception):
    """The host refused something the plan expected to work."""


class _Mapping:
    """One scenario vma as a real mapping, with the page states we set."""

    def __init__(self, spec: VmaSpec, addr: int, fd: int | None) -> None:
        self.spec = spec
        self.addr = addr
        self.fd = fd
        self.pages = bytearray([prot_bits(spec.prot)]) * (spec.size // PAGE)

    def unmap_all(self) -> None:
        """munmap each run of pages still mapped (never a range we gave up)."""
        i, n = 0, len(self.pages)
        while i < n:
            if self.pages[i] == _UNMAPPED:
                i += 1
                continue
            j = i
            while j < n and self.pages[j] != _UNMAPPED:
                j += 1
            k.munmap(self.addr + i * PAGE, (j - i) * PAGE)
            self.pages[i:j] = bytes([_UNMAPPED]) * (j - i)
            i = j
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Reaper:
    """Closes VM fds on a thread of its own: the last close of a VM fd runs
    kvm_destroy_vm, which waits for SRCU/RCU grace periods (about 2 ms here),
    so the next VM is set up meanwhile.  :func:`drain` waits for all of
    them; every path that closes a VM ends in a drain (the command, the
    bench, the tests' fd counts) or at interpreter exit."""

    def __init__(self) -> None:
        self.queue: queue.Queue[int] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def _work(self) -> None:
        while True:
            fd = self.queue.get()
            try:
                os.close(fd)
            except OSError:
                pass  # already closed: nothing to release
            finally:
                self.queue.task_done()

    def close(self, fd: int) -> None:
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._work, name="kvmsim-vm-close", daemon=True
                )
                self.thread.start()
        self.queue.put(fd)

    def drain(self) -> None:
        self.queue.join()


_REAPER = _Reaper()
atexit.register(_REAPER.drain)


def drain() -> None:
    """Wait until every VM closed so far is destroyed (its fd closed)."""
    _REAPER.drain()


@contextmanager
def _alarm(timeout: float) -> Iterator[Callable[[], bool]]:
    """SIGALRM after *timeout* seconds so a KVM_RUN returns EINTR; yields
    a function telling whether it fired.  Off the main thread (where no
    signal handler can be set) there is no alarm."""
    fired = [False]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: fired[0]
        return

    def handler(signum: int, frame: object) -> None:
        fired[0] = True

    old = signal.signal(signal.SIGALRM, handler)
    signal.siginterrupt(signal.SIGALRM, True)
    try:
        yield lambda: fired[0]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class RealVm:
    """One scenario's VM; use as a context manager, then :meth:`run`."""

    def __init__(
        self, plan: Plan, *, timeout: float = RUN_TIMEOUT, code: dict[int, bytes] | None = None
    ) -> None:
        """*code*: guest code to run for some steps instead of their access
        (the bench's touch loop); it may spill into later steps' slots."""
        self.plan = plan
        self.code = code or {}
        self.sc = plan.scenario
        self.timeout = timeout
        self.stack = ExitStack()
        self.maps: dict[str, _Mapping] = {}
        self.slot_flags: dict[int, int] = {}
        self.vcpus: list[tuple[int, Any]] = []
        self.labeller = FrameLabeller()

    # --------------------------------------------------------------- set-up

    def __enter__(self) -> RealVm:
        try:
            self._setup()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _fd(self, fd: int) -> int:
        self.stack.callback(os.close, fd)
        return fd

    def _setup(self) -> None:
        kvm = self._fd(os.open(DEV_KVM, os.O_RDWR | os.O_CLOEXEC))
        self.vm = k.ioctl(kvm, k.KVM_CREATE_VM, 0)
        self.stack.callback(_REAPER.close, self.vm)
        sysmem = k.mmap(guest.SYS_SIZE, k.PROT_READ | k.PROT_WRITE, k.MAP_PRIVATE | k.MAP_ANONYMOUS)
        self.stack.callback(k.munmap, sysmem, guest.SYS_SIZE)
        tables = guest.page_tables()
        ctypes.memmove(sysmem, tables, len(tables))
        code = bytearray(guest.CODE_SIZE)
        for s, p in zip(self.sc.steps, self.plan.steps, strict=True):
            if p.action == ACCESS:
                c = self._code(s)
                code[s.index * guest.STEP_CODE : s.index * guest.STEP_CODE + len(c)] = c
        w = guest.warmup()
        at = guest.MAX_STEPS * guest.STEP_CODE
        code[at : at + len(w)] = w
        assert len(code) == guest.CODE_SIZE
        ctypes.memmove(sysmem + guest.CODE_OFFSET, bytes(code), len(code))
        self._region(guest.SYS_SLOT, 0, guest.SYS_GPA, guest.SYS_SIZE, sysmem)
        # registered first: a vma failing to map releases those mapped before it
        self.stack.callback(self._unmap_all)
        for v in self.sc.vmas:
            self.maps[v.name] = self._map(v)
        for ms in self.sc.memslots:
            flags = k.KVM_MEM_READONLY if ms.readonly else 0
            self.slot_flags[ms.index] = flags
            self._region(ms.index, flags, ms.gpa, ms.size, self.maps[ms.vma].addr + ms.offset)
        self.stats = Stats(k.ioctl(self.vm, k.KVM_GET_STATS_FD))
        self.stack.callback(self.stats.close)
        self.frames = Frames()
        self.stack.callback(self.frames.close)
        size = k.ioctl(kvm, k.KVM_GET_VCPU_MMAP_SIZE)
        sregs = guest.sregs()
        for i in range(self.plan.vcpus):
            fd = self._fd(k.ioctl(self.vm, k.KVM_CREATE_VCPU, i))
            run = _mmap.mmap(fd, size, _mmap.MAP_SHARED, _mmap.PROT_READ | _mmap.PROT_WRITE)
            self.stack.callback(run.close)
            k.ioctl(fd, k.KVM_SET_SREGS, sregs)
            st = Stats(k.ioctl(fd, k.KVM_GET_STATS_FD))
            self.stack.callback(st.close)
            self.vcpus.append((fd, (run, st)))
        # the alarm only exists on the main thread (signal handlers do); a
        # VM run on another thread has no hang detection
        self.alarmed = threading.current_thread() is threading.main_thread()
        self.is_timeout = self.stack.enter_context(_alarm(self.timeout))
        for i in range(self.plan.vcpus):
            ret, reason, port = self._enter(i, guest.warmup_gpa())
            if ret or reason != k.KVM_EXIT_IO or port != guest.WARMUP_PORT:
                raise RealError(
                    f"the warm-up run failed (errno {-ret}, exit reason {reason}): "
                    "this host cannot run the generated guest"
                )

    def _code(self, s: StepSpec) -> bytes:
        if s.index in self.code:
            return self.code[s.index]
        width = int(s.params.get("width", 8))  # type: ignore[call-overload]
        if s.op == "read":
            return guest.load(s.gpa or 0, width)
        return guest.store(s.gpa or 0, int(s.params.get("value", 0)), width)  # type: ignore[call-overload]

    def _region(self, slot: int, flags: int, gpa: int, size: int, uaddr: int) -> None:
        k.ioctl(
            self.vm,
            k.KVM_SET_USER_MEMORY_REGION,
            k.MEMORY_REGION.pack(slot, flags, gpa, size, uaddr),
        )

    def _map(self, v: VmaSpec) -> _Mapping:
        """The vma as a 2M-aligned real mapping (so THP can back it)."""
        fd: int | None = None
        flags = k.MAP_SHARED if v.shared else k.MAP_PRIVATE
        if v.backing == "anon":
            flags |= k.MAP_ANONYMOUS | k.MAP_NORESERVE
        elif v.backing == "hugetlbfs":
            flags |= k.MAP_ANONYMOUS | k.MAP_HUGETLB
        else:  # shmem: a memfd; file: an unlinked file on tmpfs
            if v.backing == "shmem" or not os.path.isdir("/dev/shm"):
                fd = os.memfd_create(f"kvmsim-{v.name}", os.MFD_CLOEXEC)
            else:
                fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, v.size + v.pgoff * PAGE)
            except OSError:
                os.close(fd)
                raise
        if v.populate:
            flags |= k.MAP_POPULATE
        # reserve size + 2M, then place the mapping at the 2M boundary inside
        try:
            res = k.mmap(
                v.size + THP_SIZE, k.PROT_NONE, k.MAP_PRIVATE | k.MAP_ANONYMOUS | k.MAP_NORESERVE
            )
        except OSError:
            if fd is not None:
                os.close(fd)
            raise
        start = (res + THP_SIZE - 1) & ~(THP_SIZE - 1)
        try:
            addr = k.mmap(
                v.size,
                prot_bits(v.prot),
                flags | k.MAP_FIXED,
                -1 if fd is None else fd,
                v.pgoff * PAGE,
                addr=start,
            )
        except OSError:
            k.munmap(res, v.size + THP_SIZE)
            if fd is not None:
                os.close(fd)
            raise
        if start > res:
            k.munmap(res, start - res)
        tail = res + v.size + THP_SIZE - (start + v.size)
        if tail:
            k.munmap(start + v.size, tail)
        m = _Mapping(v, addr, fd)
        if v.backing != "hugetlbfs":
            # anon and shmem alike: VM_HUGEPAGE for huge = "2M" (a shmem THP
            # then comes from shmem_fault's SGP_HUGE under the advise policy),
            # else VM_NOHUGEPAGE so that shmem_enabled=always or force, or a
            # THP-always host, gives no THP the model does not have
            try:
                k.madvise(addr, v.size, k.MADV_HUGEPAGE if v.huge else k.MADV_NOHUGEPAGE)
            except OSError:
                m.unmap_all()
                raise
        return m

    def _unmap_all(self) -> None:
        for m in self.maps.values():
            m.unmap_all()

    # ---------------------------------------------------------------- steps

    def _enter(self, vcpu: int, rip: int) -> tuple[int, int, int]:
        """Set rip, KVM_RUN once; (ret, exit reason, io port)."""
        fd = self.vcpus[vcpu][0]
        k.ioctl(fd, k.KVM_SET_REGS, guest.regs(rip, 0))
        return self._run(vcpu)

    def _run(self, vcpu: int) -> tuple[int, int, int]:
        fd, (run, _) = self.vcpus[vcpu]
        if not self.alarmed:
            return self._decode(k.kvm_run(fd), run)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            ret = k.kvm_run(fd)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return self._decode(ret, run)

    @staticmethod
    def _decode(ret: int, run: _mmap.mmap) -> tuple[int, int, int]:
        reason = int.from_bytes(run[8:12], "little")
        port = k.RUN_IO.unpack_from(run, k.RUN_UNION)[2] if reason == k.KVM_EXIT_IO else 0
        return ret, reason, port

    def run(self) -> list[Obs | None]:
        """Every step's observables (None for a step the plan does not run)."""
        out: list[Obs | None] = []
        for s, p in zip(self.sc.steps, self.plan.steps, strict=True):
            if p.action == ACCESS:
                out.append(self._access(s))
            elif p.action == HOST:
                out.append(self._host(s))
            elif p.action == DIRTY_LOG:
                out.append(self._dirty_log(s))
            else:
                out.append(None)
        return out

    def _hva(self, gpa: int) -> int | None:
        for ms in self.sc.memslots:
            if ms.gpa <= gpa < ms.gpa + ms.size:
                return self.maps[ms.vma].addr + ms.offset + (gpa - ms.gpa)
        return None

    def _frame(self, index: int, hva: int | None) -> str | None:
        f = None if hva is None else self.frames.at(hva)
        if f is None:
            return None
        return self.labeller.label(index, f.pfn, zero=f.zero, thp=f.thp)

    def _access(self, s: StepSpec) -> Obs:
        fd, (run, vstats) = self.vcpus[s.vcpu]
        before = self.stats.read("pages_4k", "pages_2m", "pages_1g")
        (pf0,) = vstats.read("pf_taken")
        ret, reason, port = self._enter(s.vcpu, guest.code_gpa(s.index))
        mmio = False
        for _ in range(MAX_MMIO_EXITS):
            if ret or reason != k.KVM_EXIT_MMIO:
                break
            mmio = True  # the device reply to a load is 0 (nothing is emulated here)
            run[k.RUN_UNION + 8 : k.RUN_UNION + 16] = bytes(8)
            ret, reason, port = self._run(s.vcpu)
        after = self.stats.read("pages_4k", "pages_2m", "pages_1g")
        (pf1,) = vstats.read("pf_taken")
        faulted = pf1 > pf0
        if ret == -errno.EFAULT:
            return Obs("efault", faulted=faulted)
        if ret == -errno.EINTR:
            return Obs("hang" if self.is_timeout() else "error: EINTR", faulted=faulted)
        if ret:
            return Obs(f"error: {errno.errorcode.get(-ret, -ret)}", faulted=faulted)
        if reason != k.KVM_EXIT_IO or port != guest.STEP_PORT:
            return Obs(f"error: exit reason {reason}", faulted=faulted)
        value = None
        if s.op == "read":
            regs = bytearray(k.REGS.size)
            k.ioctl(fd, k.KVM_GET_REGS, regs)
            value = k.REGS.unpack(regs)[k.REG_RAX]
            if int(s.params.get("width", 8)) == 4:  # type: ignore[call-overload]
                value &= 0xFFFFFFFF
        if mmio:
            return Obs("mmio", value=value, faulted=faulted)
        leaf = None
        if after[2] > before[2]:
            leaf = 1 << 30
        elif after[1] > before[1]:
            leaf = THP_SIZE
        elif after[0] > before[0]:
            leaf = PAGE
        frame = self._frame(s.index, self._hva(s.gpa or 0))
        return Obs("mapped", value=value, frame=frame, leaf=leaf, faulted=faulted)

    def _host(self, s: StepSpec) -> Obs | None:
        m = self.maps[s.vma or ""]
        first = s.offset // PAGE
        n = (s.size if s.size is not None else PAGE) // PAGE
        addr = m.addr + s.offset
        if s.do == "munmap":
            if all(p == _UNMAPPED for p in m.pages[first : first + n]):
                return Obs("done")
            k.munmap(addr, n * PAGE)
            m.pages[first : first + n] = bytes([_UNMAPPED]) * n
            return Obs("done")
        if s.do == "mprotect":
            if any(p == _UNMAPPED for p in m.pages[first : first + n]):
                return Obs("done")  # ENOMEM, as the model's mprotect
            bits = prot_bits(s.prot or "r")
            k.mprotect(addr, n * PAGE, bits)
            m.pages[first : first + n] = bytes([bits]) * n
            return Obs("done")
        if s.do in ("madvise", "punch_hole"):
            return self._discard(s, m, addr, first, n)
        # host_write / host_read: only where the access cannot kill this process
        width = int(s.params.get("width", 8))  # type: ignore[call-overload]
        if s.do == "host_read":
            if m.pages[first] == _UNMAPPED or not m.pages[first] & k.PROT_READ:
                return None
            value = k.peek(addr, width)
            return Obs("done", value=value, frame=self._frame(s.index, addr))
        if m.pages[first] == _UNMAPPED or not m.pages[first] & k.PROT_WRITE:
            return None
        k.poke(addr, int(s.params.get("value", HOST_WRITE_VALUE)), width)  # type: ignore[call-overload]
        return Obs("done", frame=self._frame(s.index, addr))

    def _discard(self, s: StepSpec, m: _Mapping, addr: int, first: int, n: int) -> Obs | None:
        """``madvise`` (ctypes libc) or ``fallocate(PUNCH_HOLE|KEEP_SIZE)`` on
        the vma's memfd.  Frames the step freed are forgotten by the
        labeller: the allocator may hand one out again for the refault,
        which is a new page, as the model says."""
        if any(p == _UNMAPPED for p in m.pages[first : first + n]):
            return None  # the model refuses it (ENOMEM / a hole): nothing comparable
        before = {i: self.frames.at(addr + i * PAGE) for i in range(n)}
        if s.do == "punch_hole":
            if m.fd is None:
                return None
            offset = m.spec.pgoff * PAGE + s.offset
            k.fallocate(m.fd, k.FALLOC_FL_PUNCH_HOLE | k.FALLOC_FL_KEEP_SIZE, offset, n * PAGE)
        else:
            advice = str(s.params["advice"])
            k.madvise(addr, n * PAGE, _ADVICE[advice])
        # MADV_DONTNEED on a file mapping leaves the page in the page cache
        keeps_cache = s.do == "madvise" and s.params["advice"] == "dontneed"
        if not (keeps_cache and m.spec.backing != "anon"):
            for i, f in before.items():
                if f is None:
                    continue
                now = self.frames.at(addr + i * PAGE)
                if now is None or now.pfn != f.pfn:
                    self.labeller.forget(f.pfn)
        return Obs("done")

    def _dirty_log(self, s: StepSpec) -> Obs:
        slot = int(s.params["slot"])  # type: ignore[call-overload]
        ms = next(m for m in self.sc.memslots if m.index == slot)
        action = s.params["action"]
        if action in ("enable", "disable"):
            flags = self.slot_flags[slot]
            flags = (
                flags | k.KVM_MEM_LOG_DIRTY_PAGES
                if action == "enable"
                else flags & ~k.KVM_MEM_LOG_DIRTY_PAGES
            )
            self.slot_flags[slot] = flags
            self._region(slot, flags, ms.gpa, ms.size, self.maps[ms.vma].addr + ms.offset)
            return Obs("done")
        npages = ms.size // PAGE
        buf = ctypes.create_string_buffer(((npages + 63) // 64) * 8)
        try:
            k.ioctl(self.vm, k.KVM_GET_DIRTY_LOG, k.DIRTY_LOG.pack(slot, 0, ctypes.addressof(buf)))
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # logging not enabled on the slot
                return Obs("enoent")
            return Obs(f"error: {errno.errorcode.get(exc.errno or 0, exc.errno)}")
        return Obs("done", dirty=bitmap_gpas(buf.raw, ms.gpa))
