"""``struct rw_semaphore`` (``mmap_sem``).

A sequential run takes each task to completion, so an acquisition that
would have to wait for a holder can never be satisfied: it raises
:class:`Deadlock` instead of blocking.  In a concurrent run (``sched`` set,
:mod:`kvmsim.explore.runtime`) the task waits: it is not runnable until the
holder releases the semaphore, and it reaches the ``mmap_sem`` yield point
before every acquisition.
"""

from __future__ import annotations

from typing import Any

from kvmsim.cmodel import KernelOops

__all__ = ["Deadlock", "RwSem"]


class Deadlock(Exception):
    """An acquisition would wait for ever.

    :param lock: the lock's name.
    :param task: the task that tried to acquire it.
    :param holders: task → ``"read"``/``"write"`` at that moment.
    """

    def __init__(self, lock: str, task: str, holders: dict[str, str], mode: str = "") -> None:
        super().__init__(f"{task} would block on {mode}{lock} held by {holders}")
        self.lock = lock
        self.task = task
        self.holders = holders


class RwSem:
    """A reader/writer semaphore (``down_read``/``up_read``/``down_write``/``up_write``).

    ``readers`` counts read holds per task (a task may hold it for read more
    than once, as long as no writer is around); ``writer`` is the write
    holder or None.
    """

    __slots__ = ("name", "readers", "sched", "writer")

    def __init__(self, name: str) -> None:
        self.name = name
        self.readers: dict[str, int] = {}
        self.writer: str | None = None
        self.sched: Any = None  # the concurrent run's scheduler, if any

    def held_by(self) -> dict[str, str]:
        """task → ``"read"`` or ``"write"``."""
        out = {t: "read" for t in self.readers}
        if self.writer is not None:
            out[self.writer] = "write"
        return out

    def is_locked(self) -> bool:
        return bool(self.readers) or self.writer is not None

    def down_read(self, task: str) -> None:
        """``down_read``: waits (→ Deadlock) while a writer holds it."""
        sched = self.sched
        if sched is not None:
            sched.point("mmap_sem")
            while self.writer is not None:
                sched.block(self)
        if self.writer is not None:
            raise Deadlock(self.name, task, self.held_by(), "down_read ")
        self.readers[task] = self.readers.get(task, 0) + 1

    def down_read_trylock(self, task: str) -> bool:
        """``down_read_trylock``."""
        if self.writer is not None:
            return False
        self.readers[task] = self.readers.get(task, 0) + 1
        return True

    def up_read(self, task: str) -> None:
        """``up_read``; by a task that does not hold it for read: BUG."""
        n = self.readers.get(task, 0)
        if n <= 0:
            raise KernelOops(f"up_read({self.name}) by {task}, which does not hold it", "bug")
        if n == 1:
            del self.readers[task]
            if self.sched is not None:
                self.sched.released(self)
        else:
            self.readers[task] = n - 1

    def down_write(self, task: str) -> None:
        """``down_write``: waits (→ Deadlock) while anybody holds it."""
        sched = self.sched
        if sched is not None:
            sched.point("mmap_sem")
            while self.readers or self.writer is not None:
                sched.block(self)
        if self.readers or self.writer is not None:
            raise Deadlock(self.name, task, self.held_by(), "down_write ")
        self.writer = task

    def up_write(self, task: str) -> None:
        """``up_write``; by a task that is not the writer: BUG."""
        if self.writer != task:
            raise KernelOops(f"up_write({self.name}) by {task}, which does not hold it", "bug")
        self.writer = None
        if self.sched is not None:
            self.sched.released(self)

    def downgrade_write(self, task: str) -> None:
        """``downgrade_write``."""
        self.up_write(task)
        self.readers[task] = self.readers.get(task, 0) + 1
