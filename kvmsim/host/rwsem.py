"""``struct rw_semaphore`` (``mmap_sem``) for a single-threaded simulation.

The simulation runs each task to completion, so an acquisition that would
have to wait for a holder can never be satisfied: it raises :class:`Deadlock`
instead of blocking.
"""

from __future__ import annotations

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

    __slots__ = ("name", "readers", "writer")

    def __init__(self, name: str) -> None:
        self.name = name
        self.readers: dict[str, int] = {}
        self.writer: str | None = None

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
        else:
            self.readers[task] = n - 1

    def down_write(self, task: str) -> None:
        """``down_write``: waits (→ Deadlock) while anybody holds it."""
        if self.readers or self.writer is not None:
            raise Deadlock(self.name, task, self.held_by(), "down_write ")
        self.writer = task

    def up_write(self, task: str) -> None:
        """``up_write``; by a task that is not the writer: BUG."""
        if self.writer != task:
            raise KernelOops(f"up_write({self.name}) by {task}, which does not hold it", "bug")
        self.writer = None

    def downgrade_write(self, task: str) -> None:
        """``downgrade_write``."""
        self.up_write(task)
        self.readers[task] = self.readers.get(task, 0) + 1
