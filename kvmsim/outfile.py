"""Writing the files users name (``--output``, ``--trace``).

Atomically (a temporary file beside the target, renamed over it, so a reader
never sees half a report and a failure leaves nothing behind), with the mode
a plain ``open`` would give (the umask's for a new file, the old file's for
an existing one: ``mkstemp`` alone gives 0600), and any filesystem error as
one :class:`~kvmsim.errors.UsageError` line naming the option and the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from kvmsim.errors import UsageError

__all__ = ["atomic_write", "check_target"]


def _fail(what: str, path: Path, why: str) -> UsageError:
    return UsageError(f"{what} {path}: {why}")


def check_target(path: Path, what: str) -> None:
    """Refuse, before any work is done, a path that cannot be written: a
    directory, below a file, or in a directory this user cannot write."""
    if path.is_dir():
        raise _fail(what, path, "is a directory; name a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the directories to create start below it
    if not parent.is_dir():
        raise _fail(what, path, f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _fail(what, path, f"cannot write in {parent}: permission denied")


def _umask() -> int:
    try:  # Linux >= 4.7: no need to change the umask to read it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave the file with."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_write(path: Path, what: str, *, binary: bool = False) -> Iterator[IO[Any]]:
    """A file object whose content replaces *path* when the block ends
    without an exception; *what* (``--output``) names the option in errors."""
    check_target(path, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _fail(what, path, f"cannot write: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, _mode(path))
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _fail(what, path, f"cannot write: {exc.strerror or exc}") from None
        raise
