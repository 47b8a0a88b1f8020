"""What the kernel refuses for a ``madvise`` or ``punch_hole`` step, known
from the scenario alone: the vma's ``backing``, ``shared`` and ``prot``
(kernel-notes §M.1 to §M.3).  The loader reports it as bad input before
anything runs.

The host model answers the same when the step runs
(:func:`kvmsim.host.madvise.madvise_refusal`,
:func:`kvmsim.host.madvise.fallocate_refusal`; a test compares them for
every backing); what depends on earlier steps (an ``mprotect``, an
``munmap``) and a device plugin's vma are left to that.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NOT_MODELLED", "refusal"]

#: the errno word of a refusal the kernel would not give: the model lacks
#: the file system
NOT_MODELLED: Final = "not modelled"

_PFNMAP: Final = ("pfnmap_linear", "pfnmap_fault")
_DRIVER: Final = ("pfnmap_linear", "pfnmap_fault", "mixedmap")


def refusal(
    do: str, advice: str | None, backing: str, shared: bool, prot: str
) -> tuple[str, str] | None:
    """``(errno name, reason)`` when the kernel refuses the step on such a
    vma (errno :data:`NOT_MODELLED` when the model cannot run it), else None.

    :param do: ``madvise`` or ``punch_hole``.
    :param advice: the madvise ``advice`` (``dontneed``, ``free``, ``remove``).
    """
    if backing == "device":
        return None  # the device plugin's flags: decided when the step runs
    writable_shared = shared and "w" in prot
    if do == "punch_hole":
        return _fallocate(backing, shared, writable_shared)
    if advice in ("dontneed", "free"):
        # can_madv_dontneed_vma, then madvise_free_single_vma's vma_is_anonymous
        if backing == "hugetlbfs":
            return "EINVAL", "madvise refuses hugetlb vmas (VM_HUGETLB; allowed from v5.18)"
        if backing in _PFNMAP:
            return "EINVAL", "madvise refuses VM_PFNMAP vmas"
        if advice == "free" and not (backing == "anon" and not shared):
            return "EINVAL", "MADV_FREE works on private anonymous memory only"
        return None
    # MADV_REMOVE: madvise_remove, then vfs_fallocate
    if backing == "anon" and not shared:
        return "EINVAL", "an anonymous private vma has no file to punch a hole in"
    if not writable_shared:
        return "EACCES", "MADV_REMOVE needs a shared writable mapping (shared = true, prot with w)"
    return _fallocate(backing, shared, writable_shared)


def _fallocate(backing: str, shared: bool, writable_shared: bool) -> tuple[str, str] | None:
    """``vfs_fallocate(PUNCH_HOLE | KEEP_SIZE)`` on the vma's file."""
    if backing == "anon" and not shared:
        return (
            "EOPNOTSUPP",
            "anonymous private memory has no file, so no ->fallocate "
            "(use backing = 'shmem', or shared = true)",
        )
    if backing == "file":
        if not writable_shared:
            return "EBADF", "the file is open read-only (only a shared writable 'file' vma is not)"
        return NOT_MODELLED, (
            "a 'file' vma is a disk file system's file, whose ->fallocate the model does not "
            "have (use backing = 'shmem' or 'hugetlbfs')"
        )
    if backing in _DRIVER:
        return "ENODEV", "a driver's device file is not a regular file"
    return None
