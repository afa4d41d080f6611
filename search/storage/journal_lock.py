"""The journal file's lock: `flock` on a file beside the journal, which the kernel releases when
its holder dies.

Optuna's own journal-file locks (a symbolic link, or a file made with O_EXCL) stay behind when
the process holding them is killed, and are broken only after a grace period read from the
lock's modification time. With a relative journal path (the default `mlruns/optuna.journal`)
the symbolic link points at a path relative to its own folder, which does not exist, so that
time can never be read and the stale lock is never broken: a worker killed while it appended to
the journal left every other process of the search waiting for ever (a CI run hung so). Even
with the grace period, waiters that break the lock together can each believe they hold it.

An `flock` lock has neither problem: it is the kernel's, and it goes with the last descriptor
of its holder; the journal file serves the processes of one node (search.storage.schemes),
where `flock` is exact. Written here because Optuna offers no such lock, and the `filelock`
package polls (a non-blocking try, then a sleep of its poll interval), which would add that
sleep to every append that meets another; here the waiter blocks in the kernel and wakes as the
holder lets go. A plain Optuna script that appends to the same journal while a search runs
takes Optuna's lock, not this one.
"""

from __future__ import annotations

import fcntl
import os
import threading

# The base of the locks JournalFileBackend takes (its `lock_obj`), not re-exported by Optuna.
from optuna.storages.journal._file import BaseJournalFileLock

SUFFIX = ".flock"


class FlockLock(BaseJournalFileLock):
    """An exclusive `flock` on `<journal>.flock`, held while one batch of logs is appended."""

    def __init__(self, journal: str) -> None:
        self.path = journal + SUFFIX
        self._threads = threading.Lock()  # one holder per process, too (flock is per descriptor)
        self._fd: int | None = None

    def acquire(self) -> bool:
        self._threads.acquire()
        fd = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:  # an interrupt while waiting, say: nothing is left held
            if fd is not None:
                os.close(fd)
            self._threads.release()
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"the journal lock {self.path} is not held")
        try:
            os.close(fd)  # the lock goes with its descriptor
        finally:
            self._threads.release()
